//! The per-actor context that the store and runtime imports work on.

use std::borrow::Cow;
use std::collections::HashSet;

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Instant;

use theater_store::{
    AtMost, ContentRef, ContentStore, Event, EventChain, OBJECT_OVERHEAD_BYTES, Outcome, Record,
    StoreRoot, StoreStats, label_footprint,
};

use crate::bindings::theater::simple::types::{Event as ChainEvent, MetaEvent};
use crate::error::HostError;

use crate::policy::{Access, Grants, Limits};

/// What one `get-chain` event costs against the listing byte limit
/// besides its data: its hash, parent and type.
const CHAIN_EVENT_OVERHEAD_BYTES: usize = 64;

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
    chain: Option<EventChain>,
    /// The event of the call in progress, while it is not yet recorded.
    pending: Option<Record>,
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
            chain: None,
            pending: None,
        }
    }

    /// Records every store call the actor makes in `chain` (see
    /// [`theater_store::EventChain`]); `None`, the default, records
    /// nothing. [`ActorHost`](crate::ActorHost) sets it from
    /// [`RunOptions::chain`](crate::RunOptions).
    pub fn set_chain(&mut self, chain: Option<EventChain>) {
        self.chain = chain;
    }

    /// The chain this actor's calls are recorded in, if any.
    pub fn chain(&self) -> Option<&EventChain> {
        self.chain.as_ref()
    }

    /// The newest events of the actor's chain, oldest first, as many as
    /// fit the listing limits. A chain that cannot be read gives none, and
    /// a log line saying why (`get-chain` has no error to return).
    pub(crate) async fn chain_events(&mut self) -> Vec<MetaEvent> {
        let Some(chain) = self.chain.clone() else {
            return Vec::new();
        };
        let entries = match self
            .within_deadline(chain.events(self.limits.max_list_entries))
            .await
        {
            Ok(entries) => entries,
            Err(error) => {
                self.record_log(format!("get-chain: {error}"));
                return Vec::new();
            }
        };
        let mut bytes = 0usize;
        let mut events: Vec<MetaEvent> = entries
            .into_iter()
            .take_while(|entry| {
                bytes = bytes.saturating_add(entry.bytes.len() + CHAIN_EVENT_OVERHEAD_BYTES);
                bytes <= self.limits.max_list_bytes
            })
            .map(|entry| MetaEvent {
                hash: entry.link_id(),
                event: ChainEvent {
                    parent: entry.parent_link_id(),
                    event_type: entry.event.event.event_type,
                    data: entry.bytes,
                },
            })
            .collect();
        events.reverse();
        events
    }

    /// Starts recording one store call as `event`. The store opened for
    /// the call carries the event into its write's transaction; whatever
    /// is left is recorded by [`StoreCtx::end`].
    /// `event` is only called when recording is on.
    pub(crate) fn begin(&mut self, event: impl FnOnce() -> Event) {
        self.pending = self.chain.as_ref().map(|chain| Record::new(chain, event()));
    }

    /// Adds to the event of the call in progress.
    pub(crate) fn note(&self, change: impl FnOnce(&mut Event)) {
        if let Some(record) = &self.pending {
            record.update(change);
        }
    }

    /// Finishes the call begun with [`StoreCtx::begin`]: records its event
    /// with its outcome, unless its write already did. A call whose event
    /// cannot be recorded fails, so that the chain misses no call that
    /// succeeded.
    pub(crate) async fn end<T>(&mut self, result: Result<T, HostError>) -> Result<T, HostError> {
        let Some(record) = self.pending.take() else {
            return result;
        };
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(error) => Outcome::Error {
                kind: error.kind().to_owned(),
                message: error.to_string(),
            },
        };
        let recorded = self.within_deadline(record.finish(outcome)).await;
        match (result, recorded) {
            (result, Ok(())) | (result @ Err(_), Err(_)) => result,
            (Ok(_), Err(error)) => Err(error),
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
    pub(crate) async fn create_store(&mut self) -> Result<String, HostError> {
        if self.created.len() >= self.limits.max_stores_created {
            return Err(HostError::TooManyStores {
                created: self.created.len(),
            });
        }
        let store = self.within_deadline(self.root.create_store()).await?;
        self.created.insert(store.id().to_owned());
        Ok(store.id().to_owned())
    }

    /// Opens store `id` for an operation that needs `needed` access, or
    /// explains why not. Checks the id's form, then the grants; touches no
    /// disk either way.
    pub(crate) fn open(&self, id: &str, needed: Access) -> Result<ContentStore, HostError> {
        let store = self.root.store(id)?;
        Ok(self.grant(&store, needed)?.into_owned())
    }

    /// A handle on store `id`, unchecked against the grants and carrying
    /// no event: for keeping (a keyvalue bucket), then passing to
    /// [`StoreCtx::grant`] at each use.
    pub(crate) fn store_handle(&self, id: &str) -> Result<ContentStore, HostError> {
        Ok(self.root.store(id)?)
    }

    /// [`StoreCtx::open`] for a store already opened once (a keyvalue
    /// bucket): checks the grants again, and carries the call's pending
    /// event, if any.
    pub(crate) fn grant<'s>(
        &self,
        store: &'s ContentStore,
        needed: Access,
    ) -> Result<Cow<'s, ContentStore>, HostError> {
        let id = store.id();
        let granted = if self.created.contains(id) {
            Some(Access::ReadWrite)
        } else {
            self.grants.access_to(id)
        };
        match granted {
            Some(access) if access >= needed => Ok(match &self.pending {
                Some(record) => Cow::Owned(store.with_record(record)),
                None => Cow::Borrowed(store),
            }),
            Some(_) => Err(HostError::ReadOnly {
                store: id.to_owned(),
            }),
            None => Err(HostError::NotGranted {
                store: id.to_owned(),
            }),
        }
    }

    /// Runs a host call, giving up with a timeout error once the actor's
    /// deadline passes (a change whose caller gave up is not applied).
    /// The actor itself is stopped by the deadline as soon as it runs again.
    pub(crate) async fn within_deadline<T, E: Into<HostError>>(
        &self,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, HostError> {
        let Some(deadline) = self.deadline else {
            return call.await.map_err(Into::into);
        };
        // Most calls finish without waiting (a read answered from memory, a
        // write applied on this thread): those need no timer.
        let mut call = std::pin::pin!(call);
        let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        if let Poll::Ready(result) = first {
            return result.map_err(Into::into);
        }
        match tokio::time::timeout_at(deadline.into(), call).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => {
                self.timed_out.store(true, Ordering::Relaxed);
                Err(HostError::TimedOut {
                    timeout: self.limits.timeout,
                })
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
    ) -> Result<WriteCost, HostError> {
        if let Some(content) = content
            && content.len() > self.limits.max_content_bytes
        {
            return Err(HostError::ContentTooLarge {
                store: store.id().to_owned(),
                size: content.len() as u64,
                limit: self.limits.max_content_bytes as u64,
            });
        }
        let cost = WriteCost {
            content: content.map_or(0, |c| c.len() as u64 + OBJECT_OVERHEAD_BYTES),
            label: self.label_cost(store, label).await?,
        };
        let stats = self.within_deadline(store.stats()).await?;
        let mut refusal = self.refusal(store, &stats, cost.content + cost.label, content.is_some());
        if refusal.is_some()
            && let Some(content) = content
        {
            let content_ref = ContentRef::for_content(content);
            let held = self.within_deadline(store.exists(&content_ref)).await?;
            if held {
                refusal = self.refusal(store, &stats, cost.label, false);
            }
        }
        match refusal {
            Some(refused) => Err(refused),
            None => Ok(cost),
        }
    }

    /// Checks the label of a streamed write about to finish; its content,
    /// `size` bytes, was checked piece by piece as it was written.
    pub(crate) async fn admit_stream(
        &self,
        store: &ContentStore,
        size: u64,
        label: Option<&str>,
    ) -> Result<WriteCost, HostError> {
        let cost = WriteCost {
            content: size + OBJECT_OVERHEAD_BYTES,
            label: self.label_cost(store, label).await?,
        };
        let stats = self.within_deadline(store.stats()).await?;
        match self.refusal(store, &stats, cost.label, false) {
            Some(refused) => Err(refused),
            None => Ok(cost),
        }
    }

    /// The index space setting `label` adds: nothing for a label the store
    /// has already.
    async fn label_cost(
        &self,
        store: &ContentStore,
        label: Option<&str>,
    ) -> Result<u64, HostError> {
        let Some(label) = label else {
            return Ok(0);
        };
        let held = self.within_deadline(store.get_by_label(label)).await?;
        Ok(if held.is_none() {
            label_footprint(label.len())
        } else {
            0
        })
    }

    /// Why adding `bytes` (and one object, if `new_object`) to `store`
    /// would break its quota or the actor's budget, if it would.
    pub(crate) fn refusal(
        &self,
        store: &ContentStore,
        stats: &StoreStats,
        bytes: u64,
        new_object: bool,
    ) -> Option<HostError> {
        let limits = &self.limits;
        let footprint = stats.footprint();
        if footprint.saturating_add(bytes) > limits.max_store_bytes
            || (new_object && stats.objects >= limits.max_store_objects)
        {
            return Some(HostError::StoreQuota {
                store: store.id().to_owned(),
                footprint,
                objects: stats.objects,
                labels: stats.labels,
                quota_bytes: limits.max_store_bytes,
                quota_objects: limits.max_store_objects,
                adds: bytes,
            });
        }
        if self.bytes_added.saturating_add(bytes) > limits.max_actor_bytes {
            return Some(HostError::ActorQuota {
                store: store.id().to_owned(),
                added: self.bytes_added,
                quota: limits.max_actor_bytes,
                adds: bytes,
            });
        }
        None
    }

    /// Charges a successful write to the actor's budget: its label, and its
    /// content if the store did not hold it before.
    pub(crate) fn charge(&mut self, cost: WriteCost, content_was_new: bool) {
        let content = if content_was_new { cost.content } else { 0 };
        self.bytes_added = self.bytes_added.saturating_add(content + cost.label);
    }

    /// Reads content, refusing first, without reading it, what the actor
    /// could not take in one call: over [`Limits::max_content_bytes`], or
    /// over the memory the actor may have.
    pub(crate) async fn read_within_limits(
        &self,
        store: &ContentStore,
        content_ref: &ContentRef,
    ) -> Result<Vec<u8>, HostError> {
        let read = store.get_at_most(content_ref, self.read_limit());
        let found = self.within_deadline(read).await?;
        self.admit_content(store, content_ref, found)
    }

    /// The most content one call may return: [`Limits::max_content_bytes`],
    /// and no more than the actor's memory may hold.
    pub(crate) fn read_limit(&self) -> u64 {
        (self.limits.max_content_bytes as u64).min(self.limits.max_memory_bytes as u64)
    }

    /// The content read under [`StoreCtx::read_limit`], or the refusal.
    pub(crate) fn admit_content(
        &self,
        store: &ContentStore,
        content_ref: &ContentRef,
        found: AtMost,
    ) -> Result<Vec<u8>, HostError> {
        match found {
            AtMost::Content(content) => Ok(content),
            AtMost::TooLarge { size } => Err(HostError::ReadTooLarge {
                store: store.id().to_owned(),
                reference: content_ref.to_string(),
                size,
                limit: self.read_limit(),
            }),
        }
    }

    /// Refuses a listing longer than [`Limits::max_list_entries`] or
    /// [`Limits::max_list_bytes`].
    pub(crate) fn admit_listing(
        &self,
        store: &ContentStore,
        entries: usize,
        bytes: usize,
        what: &'static str,
    ) -> Result<(), HostError> {
        let limits = &self.limits;
        if entries > limits.max_list_entries || bytes > limits.max_list_bytes {
            return Err(HostError::ListingTooLong {
                store: store.id().to_owned(),
                what,
                max_entries: limits.max_list_entries,
                max_bytes: limits.max_list_bytes,
            });
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
