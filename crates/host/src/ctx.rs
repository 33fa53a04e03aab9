//! The per-actor context that the store and runtime imports work on.

use std::collections::HashSet;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use theater_store::{
    ContentRef, ContentStore, OBJECT_OVERHEAD_BYTES, StoreError, StoreRoot, StoreStats,
    label_footprint,
};

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
    bytes_added: u64,
    deadline: Option<Instant>,
    timed_out: AtomicBool,
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
            bytes_added: 0,
            deadline: None,
            timed_out: AtomicBool::new(false),
        }
    }

    /// Host calls still waiting for the store when `deadline` passes give
    /// up with a timeout error. [`ActorHost`](crate::ActorHost) sets it from
    /// [`Limits::timeout`] at the start of each run.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Whether a host call gave up because the deadline passed.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// Footprint this actor has added across its stores so far (see
    /// [`Limits::max_actor_bytes`]).
    pub fn bytes_added(&self) -> u64 {
        self.bytes_added
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

    /// Makes a new store owned by this actor, up to
    /// [`Limits::max_stores_created`] per run.
    pub(crate) async fn create_store(&mut self) -> Result<String, String> {
        if self.created.len() >= self.limits.max_stores_created {
            return Err(format!(
                "this actor has created {} stores, the most one run may create",
                self.created.len()
            ));
        }
        let store = self
            .within_deadline(async { self.root.create_store().await.map_err(message) })
            .await?;
        self.created.insert(store.id().to_owned());
        Ok(store.id().to_owned())
    }

    /// Opens store `id` for an operation that needs `needed` access, or
    /// explains why not. Checks the id's form, then the grants; touches no
    /// disk either way.
    pub(crate) fn open(&self, id: &str, needed: Access) -> Result<ContentStore, String> {
        let store = self.root.store(id).map_err(message)?;
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

    /// Runs a host call, giving up with a timeout error once the actor's
    /// deadline passes (a change whose caller gave up is not applied).
    /// The actor itself is stopped by the deadline as soon as it runs again.
    pub(crate) async fn within_deadline<T>(
        &self,
        call: impl Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        let Some(deadline) = self.deadline else {
            return call.await;
        };
        match tokio::time::timeout_at(deadline.into(), call).await {
            Ok(result) => result,
            Err(_) => {
                self.timed_out.store(true, Ordering::Relaxed);
                Err(format!(
                    "timed out: the actor's {:?} deadline passed while this call waited for the store",
                    self.limits.timeout
                ))
            }
        }
    }

    /// Checks a write into `store` against the size limit, the store's
    /// quota and the actor's budget. `content` is the content written, if
    /// any; `label` the label set, if any. A label the store has already
    /// costs nothing. Content is first taken to be new; only when that would
    /// not fit is it hashed, to see whether the store holds it already (and
    /// it then costs nothing). Charge the result with [`StoreCtx::charge`]
    /// once the write succeeds.
    pub(crate) async fn admit(
        &self,
        store: &ContentStore,
        content: Option<&[u8]>,
        label: Option<&str>,
    ) -> Result<WriteCost, String> {
        if let Some(content) = content
            && content.len() > self.limits.max_content_bytes
        {
            return Err(format!(
                "content of {} bytes is over the limit of {} bytes per call (store {})",
                content.len(),
                self.limits.max_content_bytes,
                store.id()
            ));
        }
        let label_is_new = match label {
            Some(label) => self
                .within_deadline(async { store.get_by_label(label).await.map_err(message) })
                .await?
                .is_none(),
            None => false,
        };
        let cost = WriteCost {
            content: content.map_or(0, |c| c.len() as u64 + OBJECT_OVERHEAD_BYTES),
            label: match label {
                Some(label) if label_is_new => label_footprint(label.len()),
                _ => 0,
            },
        };
        let stats = self
            .within_deadline(async { store.stats().await.map_err(message) })
            .await?;
        let mut refusal = self.refusal(store, &stats, cost.content + cost.label, content.is_some());
        if refusal.is_some()
            && let Some(content) = content
        {
            let content_ref = ContentRef::for_content(content);
            let held = self
                .within_deadline(async { store.exists(&content_ref).await.map_err(message) })
                .await?;
            if held {
                refusal = self.refusal(store, &stats, cost.label, false);
            }
        }
        match refusal {
            Some(refused) => Err(refused),
            None => Ok(cost),
        }
    }

    /// Why adding `bytes` (and one object, if `new_object`) to `store`
    /// would break its quota or the actor's budget, if it would.
    fn refusal(
        &self,
        store: &ContentStore,
        stats: &StoreStats,
        bytes: u64,
        new_object: bool,
    ) -> Option<String> {
        let limits = &self.limits;
        let footprint = stats.footprint();
        if footprint.saturating_add(bytes) > limits.max_store_bytes
            || (new_object && stats.objects >= limits.max_store_objects)
        {
            return Some(format!(
                "store {} quota exceeded: it takes {footprint} bytes on disk in {} objects and \
                 {} labels, the quota is {} bytes and {} objects, and this call adds {bytes} bytes",
                store.id(),
                stats.objects,
                stats.labels,
                limits.max_store_bytes,
                limits.max_store_objects,
            ));
        }
        if self.bytes_added.saturating_add(bytes) > limits.max_actor_bytes {
            return Some(format!(
                "actor quota exceeded: this actor has added {} bytes across its stores in this \
                 run, the quota is {} bytes, and this call to store {} adds {bytes} bytes",
                self.bytes_added,
                limits.max_actor_bytes,
                store.id(),
            ));
        }
        None
    }

    /// Charges a successful write to the actor's budget: its label, and its
    /// content if the store did not hold it before.
    pub(crate) fn charge(&mut self, cost: WriteCost, content_was_new: bool) {
        let content = if content_was_new { cost.content } else { 0 };
        self.bytes_added = self.bytes_added.saturating_add(content + cost.label);
    }

    /// Refuses to read content that the actor could not take in one call,
    /// before reading it: over [`Limits::max_content_bytes`], or over the
    /// memory the actor may have.
    pub(crate) async fn admit_read(
        &self,
        store: &ContentStore,
        content_ref: &ContentRef,
    ) -> Result<(), String> {
        let size = self
            .within_deadline(async { store.content_size(content_ref).await.map_err(message) })
            .await?;
        let limit = (self.limits.max_content_bytes as u64).min(self.limits.max_memory_bytes as u64);
        if size > limit {
            return Err(format!(
                "store {}: content {content_ref} is {size} bytes, over the {limit} bytes one call \
                 may return to this actor; store large content in parts (streamed reads are planned)",
                store.id()
            ));
        }
        Ok(())
    }

    /// Refuses a listing longer than [`Limits::max_list_entries`] or
    /// [`Limits::max_list_bytes`].
    pub(crate) fn admit_listing(
        &self,
        store: &ContentStore,
        entries: usize,
        bytes: usize,
        what: &str,
    ) -> Result<(), String> {
        let limits = &self.limits;
        if entries > limits.max_list_entries || bytes > limits.max_list_bytes {
            return Err(format!(
                "store {} has too many {what} to list in one call (the limit is {} entries and \
                 {} bytes); list them page by page from the host (`theater-store labels \
                 --limit N --after LAST`)",
                store.id(),
                limits.max_list_entries,
                limits.max_list_bytes
            ));
        }
        Ok(())
    }
}

/// What a write admitted by [`StoreCtx::admit`] may add to a store's
/// footprint.
pub(crate) struct WriteCost {
    /// The content and its per-object overhead, should it be new.
    content: u64,
    /// A new label's index space.
    label: u64,
}

/// The text a guest gets for a core error: the core's message, which names
/// the store, label or ref.
pub(crate) fn message(error: StoreError) -> String {
    error.to_string()
}
