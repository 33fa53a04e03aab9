//! The per-actor context that the store and runtime imports work on.

use std::collections::HashSet;

use theater_store::{ContentRef, ContentStore, StoreRoot};

use crate::policy::{Access, Grants, Limits};

/// Longest log line kept, in bytes; longer lines are cut.
const MAX_LOG_LINE_BYTES: usize = 4096;

/// Per-actor state behind `theater:simple/store` and `theater:simple/runtime`:
/// the root, what the actor may reach, its limits, and what it logged.
///
/// Embedders keep one in their `Store<T>` data and expose it through
/// [`StoreView`](crate::StoreView).
#[derive(Debug)]
pub struct StoreCtx {
    root: StoreRoot,
    grants: Grants,
    limits: Limits,
    created: HashSet<String>,
    logs: Vec<String>,
    dropped_log_lines: usize,
    shutdown: Option<Option<Vec<u8>>>,
}

impl StoreCtx {
    /// A context serving stores from `root` under `grants` and `limits`.
    pub fn new(root: StoreRoot, grants: Grants, limits: Limits) -> Self {
        Self {
            root,
            grants,
            limits,
            created: HashSet::new(),
            logs: Vec::new(),
            dropped_log_lines: 0,
            shutdown: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Ids of the stores this actor created with `new`.
    pub fn created_stores(&self) -> impl Iterator<Item = &str> {
        self.created.iter().map(String::as_str)
    }

    /// Takes the log lines recorded so far, with the count of lines dropped
    /// over [`Limits::max_log_lines`].
    pub fn take_logs(&mut self) -> (Vec<String>, usize) {
        let dropped = std::mem::take(&mut self.dropped_log_lines);
        (std::mem::take(&mut self.logs), dropped)
    }

    /// The data passed to `shutdown`, if the actor asked to stop.
    pub fn shutdown_requested(&self) -> Option<&Option<Vec<u8>>> {
        self.shutdown.as_ref()
    }

    pub(crate) fn record_log(&mut self, mut line: String) {
        if self.logs.len() >= self.limits.max_log_lines {
            self.dropped_log_lines += 1;
            return;
        }
        if line.len() > MAX_LOG_LINE_BYTES {
            let mut cut = MAX_LOG_LINE_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        self.logs.push(line);
    }

    pub(crate) fn record_shutdown(&mut self, data: Option<Vec<u8>>) {
        self.shutdown = Some(data);
    }

    /// Makes a new store owned by this actor.
    pub(crate) async fn create_store(&mut self) -> Result<String, String> {
        let store = self.root.create_store().await.map_err(|e| e.to_string())?;
        self.created.insert(store.id().to_owned());
        Ok(store.id().to_owned())
    }

    /// Opens store `id` for an operation that needs `needed` access, or
    /// explains why not. Checks the id's form, then the grants; touches no
    /// disk either way.
    pub(crate) fn open(&self, id: &str, needed: Access) -> Result<ContentStore, String> {
        let store = self.root.store(id).map_err(|e| e.to_string())?;
        let granted = if self.created.contains(id) {
            Some(Access::ReadWrite)
        } else {
            self.grants.access_to(id)
        };
        match granted {
            Some(access) if access >= needed => Ok(store),
            Some(_) => Err(format!(
                "access denied: store {id} is granted to this actor read-only, and this call writes"
            )),
            None => Err(format!(
                "access denied: store {id} was neither created by this actor nor granted to it"
            )),
        }
    }

    /// Checks a write of `content` into `store` against the size limit and
    /// the store's quota. Content the store already holds costs nothing.
    pub(crate) async fn admit(&self, store: &ContentStore, content: &[u8]) -> Result<(), String> {
        let limits = &self.limits;
        if content.len() > limits.max_content_bytes {
            return Err(format!(
                "content of {} bytes is over the limit of {} bytes per call (store {})",
                content.len(),
                limits.max_content_bytes,
                store.id()
            ));
        }
        let stats = store.stats().await.map_err(|e| e.to_string())?;
        let over_bytes = stats.bytes.saturating_add(content.len() as u64) > limits.max_store_bytes;
        let over_objects = stats.objects >= limits.max_store_objects;
        if !(over_bytes || over_objects) {
            return Ok(());
        }
        let already_stored = store
            .exists(&ContentRef::for_content(content))
            .await
            .map_err(|e| e.to_string())?;
        if already_stored {
            return Ok(());
        }
        Err(format!(
            "store {} quota exceeded: it holds {} bytes in {} objects, the quota is {} bytes \
             and {} objects, and this call adds {} bytes",
            store.id(),
            stats.bytes,
            stats.objects,
            limits.max_store_bytes,
            limits.max_store_objects,
            content.len()
        ))
    }
}
