//! The per-actor context that the store and runtime imports work on.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Instant;

use theater_store::{
    AtMost, ContentRef, ContentStore, Event, EventChain, MAX_EVENT_BYTES, OBJECT_OVERHEAD_BYTES,
    Outcome, Record, StoreRoot, change_footprint, label_footprint,
};
use tracing::Instrument;

use crate::bindings::theater::simple::types::{Event as ChainEvent, MetaEvent};
use crate::error::HostError;
use crate::meter::{Admitted, Meter, Reservation, StreamSlot, store_quota};
use crate::observe::{CallMetrics, CallObserver};
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
/// [`TheaterView`](crate::TheaterView).
#[derive(Debug)]
pub struct TheaterCtx {
    root: StoreRoot,
    grants: Grants,
    limits: Limits,
    created: HashSet<String>,
    /// Stores this actor created in earlier runs (see
    /// [`TheaterCtx::restore_created_stores`]).
    owned: HashSet<String>,
    logs: Vec<String>,
    dropped_log_lines: usize,
    shutdown: Option<Option<Vec<u8>>>,
    meter: Meter,
    /// Readers and writers open now (see [`Limits::max_open_streams`]).
    open_streams: Arc<AtomicUsize>,
    deadline: Option<Instant>,
    timed_out: AtomicBool,
    chain: Option<EventChain>,
    /// The event of the call in progress, while it is not yet recorded.
    pending: Option<Record>,
    /// The call in progress, as operators see it (span and metrics).
    observed: Option<CallObserver>,
    call_metrics: CallMetrics,
}

impl TheaterCtx {
    /// A context serving stores from `root` under `grants` and `limits`,
    /// for one run starting now: host calls still waiting for the store
    /// once [`Limits::timeout`] has passed give up (see
    /// [`TheaterCtx::set_deadline`]).
    pub fn new(root: StoreRoot, grants: Grants, limits: Limits) -> Self {
        let deadline = Instant::now().checked_add(limits.timeout);
        Self {
            root,
            grants,
            limits,
            created: HashSet::new(),
            owned: HashSet::new(),
            logs: Vec::new(),
            dropped_log_lines: 0,
            shutdown: None,
            meter: Meter::default(),
            open_streams: Arc::new(AtomicUsize::new(0)),
            deadline,
            timed_out: AtomicBool::new(false),
            chain: None,
            pending: None,
            observed: None,
            call_metrics: CallMetrics::default(),
        }
    }

    /// Records every store call the actor makes in `chain` (see
    /// [`theater_store::EventChain`]), and names the chain's actor in the
    /// change log of every label it changes; `None`, the default of a new
    /// context, records nothing and names no one. [`ActorHost`](crate::ActorHost)
    /// (and so the CLI) sets it from [`RunOptions::chain`](crate::RunOptions),
    /// by default the chain of [`default_actor_id`](crate::default_actor_id):
    /// call this with that chain to record as they do. The actor id is also
    /// whose created stores [`TheaterCtx::restore_created_stores`] gives back.
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
        // Walked newest first, one segment at a time, stopping at the
        // listing limits: a long chain is never read whole.
        let (max_entries, max_bytes) = (self.limits.max_list_entries, self.limits.max_list_bytes);
        let mut events = Vec::new();
        let mut bytes = 0usize;
        let walk = chain.for_each_event(max_entries, |entry| {
            bytes = bytes.saturating_add(entry.bytes.len() + CHAIN_EVENT_OVERHEAD_BYTES);
            if bytes > max_bytes {
                return false;
            }
            events.push(MetaEvent {
                hash: entry.link_id(),
                event: ChainEvent {
                    parent: entry.parent_link_id(),
                    event_type: entry.event.event.event_type,
                    data: entry.bytes,
                },
            });
            true
        });
        if let Err(error) = self.within_deadline(walk).await {
            self.record_log(format!("get-chain: {error}"));
            return Vec::new();
        }
        events.reverse();
        events
    }

    /// Starts one store call of operation `op`, described by `event`: its
    /// span and metrics start now, and when recording is on its event is
    /// recorded. The store opened for the call carries the event into its
    /// write's transaction; whatever is left is recorded by
    /// [`TheaterCtx::end`]. `event` is only called when recording is on or
    /// the call's span is traced.
    ///
    /// Each event is charged to the actor's budget (see
    /// [`Limits::max_actor_bytes`]). When the budget has no room left for
    /// one, nothing is recorded, and the call is refused when it opens its
    /// store ([`TheaterCtx::open`]).
    pub(crate) fn begin(&mut self, op: &'static str, event: impl FnOnce(&'static str) -> Event) {
        self.pending = None;
        let observed = CallObserver::start(op, self.chain.as_ref().map(EventChain::actor));
        let recording = self.chain.is_some() && self.room_for_event("").is_ok();
        if recording || observed.wants_details() {
            let event = event(op);
            observed.describe(&event);
            if let (true, Some(chain)) = (recording, &self.chain) {
                self.pending = Some(Record::new(chain, event));
            }
        }
        self.observed = Some(observed);
    }

    /// Whether the actor's budget can take one more chain event (always,
    /// when nothing is recorded). Calls that open no store (a writer's
    /// finish) check it themselves.
    pub(crate) fn room_for_event(&self, store: &str) -> Result<(), HostError> {
        if self.chain.is_none() {
            return Ok(());
        }
        self.meter.actor_room(&self.limits, store, MAX_EVENT_BYTES)
    }

    /// Adds to the event of the call in progress.
    pub(crate) fn note(&self, change: impl FnOnce(&mut Event)) {
        if let Some(record) = &self.pending {
            record.update(change);
        }
    }

    /// Finishes the call begun with [`TheaterCtx::begin`]: records its event
    /// with its outcome, unless its write already did. A call whose event
    /// cannot be recorded fails, so that the chain misses no call that
    /// succeeded.
    pub(crate) async fn end<T>(&mut self, result: Result<T, HostError>) -> Result<T, HostError> {
        let result = self.record_end(result).await;
        if let Some(observed) = self.observed.take() {
            let failure = result.as_ref().err().map(HostError::kind);
            observed.finish(failure, &mut self.call_metrics);
        }
        result
    }

    /// The chain's side of [`TheaterCtx::end`].
    async fn record_end<T>(&mut self, result: Result<T, HostError>) -> Result<T, HostError> {
        let Some(record) = self.pending.take() else {
            return result;
        };
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(error) => Outcome::Error {
                kind: error.kind().as_str().to_owned(),
                message: error.to_string(),
            },
        };
        let recorded = self.within_deadline(record.clone().finish(outcome)).await;
        self.meter.charge_chain(record.recorded_bytes());
        match (result, recorded) {
            (result, Ok(())) | (result @ Err(_), Err(_)) => result,
            (Ok(_), Err(error)) => Err(error),
        }
    }

    /// Host calls still waiting for the store when `deadline` passes give
    /// up with a timeout error. [`TheaterCtx::new`] sets it to
    /// [`Limits::timeout`] from then; a context made well before its run
    /// starts sets it again here (`None`: no deadline).
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Whether a host call gave up because the deadline passed.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// Footprint this actor has added so far, across its stores and its
    /// event chain (see [`Limits::max_actor_bytes`]).
    pub fn bytes_added(&self) -> u64 {
        self.meter.charged()
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
    /// [`Limits::max_stores_created`] per run. With a chain (the actor's
    /// identity), the root records the store as this actor's, so that it
    /// stays its own in later runs.
    pub(crate) async fn create_store(&mut self) -> Result<String, HostError> {
        self.room_for_event("")?;
        if self.created.len() >= self.limits.max_stores_created {
            return Err(HostError::TooManyStores {
                created: self.created.len(),
            });
        }
        let store = self.within_deadline(self.root.create_store()).await?;
        let id = store.id().to_owned();
        self.created.insert(id.clone());
        if let Some(actor) = self.chain.as_ref().map(|chain| chain.actor().to_owned()) {
            let owners = self.root.owners_store();
            let label = format!("{actor}/{id}");
            let recorded = self
                .within_deadline(owners.store_at_label(&label, id.as_bytes()))
                .await;
            if let Err(error) = recorded {
                // The store is the actor's for this run all the same.
                self.record_log(format!(
                    "host: store {id} could not be recorded as actor {actor}'s for later runs: {error}"
                ));
            }
        }
        Ok(id)
    }

    /// Makes the stores this actor created in earlier runs its own again,
    /// as the root recorded them when they were created, keyed by
    /// the actor's id: the chain's ([`TheaterCtx::set_chain`]). Call it once
    /// the chain is set, before the actor runs; without a chain there is
    /// no identity and nothing to restore. Returns how many were restored.
    pub async fn restore_created_stores(&mut self) -> Result<usize, HostError> {
        let Some(actor) = self.chain.as_ref().map(|chain| chain.actor().to_owned()) else {
            return Ok(0);
        };
        let prefix = format!("{actor}/");
        let owners = self.root.owners_store();
        let page = self
            .within_deadline(owners.list_labels_page(&prefix, None, usize::MAX))
            .await?;
        for entry in page {
            if let Some(id) = entry.label.strip_prefix(&prefix) {
                self.owned.insert(id.to_owned());
            }
        }
        Ok(self.owned.len())
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
    /// [`TheaterCtx::grant`] at each use.
    pub(crate) fn store_handle(&self, id: &str) -> Result<ContentStore, HostError> {
        Ok(self.root.store(id)?)
    }

    /// [`TheaterCtx::open`] for a store already opened once (a keyvalue
    /// bucket): checks the grants again, and carries the call's pending
    /// event, if any.
    pub(crate) fn grant<'s>(
        &self,
        store: &'s ContentStore,
        needed: Access,
    ) -> Result<Cow<'s, ContentStore>, HostError> {
        let id = store.id();
        self.room_for_event(id)?;
        let granted = if self.created.contains(id) || self.owned.contains(id) {
            Some(Access::ReadWrite)
        } else {
            self.grants.access_to(id)
        };
        match granted {
            Some(access) if access >= needed => Ok(match (&self.pending, &self.chain) {
                (Some(record), Some(chain)) => {
                    Cow::Owned(store.with_record(record).by_actor(chain.actor()))
                }
                (None, Some(chain)) => Cow::Owned(store.by_actor(chain.actor())),
                (Some(record), None) => Cow::Owned(store.with_record(record)),
                (None, None) => Cow::Borrowed(store),
            }),
            Some(_) => Err(HostError::ReadOnly {
                store: id.to_owned(),
            }),
            None => Err(HostError::NotGranted {
                store: id.to_owned(),
            }),
        }
    }

    /// When host calls stop waiting for the store, if they ever do.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Runs a host call, giving up with a timeout error once the actor's
    /// deadline passes (a change whose caller gave up is not applied).
    /// The actor itself is stopped by the deadline as soon as it runs again.
    pub(crate) async fn within_deadline<T, E: Into<HostError>>(
        &self,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, HostError> {
        // The core's work is traced inside the call's span.
        let span = self
            .observed
            .as_ref()
            .map_or_else(tracing::Span::none, |o| o.span().clone());
        let call = call.instrument(span);
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

    /// Admits a write into `store` of each of `contents` (each checked
    /// against the size limit) and of each of `labels`: reserves on the
    /// actor's budget the most it could add (every content new, every
    /// label new), and returns the handle to write through, on which the
    /// core checks the store's quota inside each write's transaction.
    /// Content is first taken to be new; only when the budget would not
    /// have room is it hashed, to see whether the store holds it already
    /// (it then costs nothing). Nothing is read from the store otherwise.
    /// Give the result to [`TheaterCtx::settle`] once the write is done,
    /// whether it succeeded or not.
    pub(crate) async fn admit(
        &mut self,
        store: &ContentStore,
        contents: &[&[u8]],
        labels: &[&str],
    ) -> Result<Admitted, HostError> {
        for content in contents {
            if content.len() > self.limits.max_content_bytes {
                return Err(HostError::ContentTooLarge {
                    store: store.id().to_owned(),
                    size: content.len() as u64,
                    limit: self.limits.max_content_bytes as u64,
                });
            }
        }
        let content_cost = |content: &&[u8]| content.len() as u64 + OBJECT_OVERHEAD_BYTES;
        let label_cost: u64 = labels.iter().map(|label| Self::label_cost(label)).sum();
        let most = contents.iter().map(content_cost).sum::<u64>() + label_cost;
        let refusal = match self.meter.reserve(&self.limits, store.id(), most) {
            Ok(reservation) => return Ok(self.admitted(store, reservation)),
            Err(refusal) => refusal,
        };
        let mut new_content = 0;
        for content in contents {
            let content_ref = ContentRef::for_content(content);
            if !self.within_deadline(store.exists(&content_ref)).await? {
                new_content += content_cost(content);
            }
        }
        if new_content + label_cost == most {
            return Err(refusal);
        }
        let reservation = self
            .meter
            .reserve(&self.limits, store.id(), new_content + label_cost)?;
        Ok(self.admitted(store, reservation))
    }

    fn admitted(&self, store: &ContentStore, reservation: Reservation) -> Admitted {
        Admitted {
            store: store.within_quota(store_quota(&self.limits)),
            reservation,
        }
    }

    /// The most setting `label` can add to a store: the label's index
    /// space, should it be new, and its change log entry.
    pub(crate) fn label_cost(label: &str) -> u64 {
        label_footprint(label.len()) + change_footprint(label.len())
    }

    /// Refuses a batch of more keys or labels than a listing may return.
    pub(crate) fn admit_batch(
        &self,
        store: &ContentStore,
        entries: usize,
    ) -> Result<(), HostError> {
        let limit = self.limits.max_list_entries;
        if entries > limit {
            return Err(HostError::BatchTooLarge {
                store: store.id().to_owned(),
                what: "keys",
                amount: entries as u64,
                limit: limit as u64,
            });
        }
        Ok(())
    }

    /// Ends an admitted write, whatever its outcome: charges what its
    /// writes added to the store (measured in their transactions), and
    /// gives back the rest of the reservation.
    pub(crate) fn settle(&mut self, admitted: Admitted) {
        let kept = admitted.store.footprint_added();
        self.meter.settle(admitted.reservation, kept);
    }

    /// Reserves room for a streamed write into `store`: its per-object
    /// overhead now, each piece with [`TheaterCtx::reserve_piece`] as it
    /// comes. Write through the returned handle, which the core checks
    /// against the store's quota when the stream commits.
    pub(crate) async fn reserve_stream(
        &mut self,
        store: &ContentStore,
    ) -> Result<Admitted, HostError> {
        let stats = self.within_deadline(store.stats()).await?;
        let mut reservation = self.meter.reserve(&self.limits, store.id(), 0)?;
        let staged = self.meter.reserve_staging(
            &self.limits,
            &mut reservation,
            &stats,
            OBJECT_OVERHEAD_BYTES,
            true,
        );
        if let Err(refused) = staged {
            self.meter.settle(reservation, 0);
            return Err(refused);
        }
        Ok(self.admitted(store, reservation))
    }

    /// Reserves on the actor's budget the most setting `label` at the end
    /// of a streamed write can add, or refuses (the reservation is then as
    /// it was).
    pub(crate) fn reserve_label(
        &mut self,
        admitted: &mut Admitted,
        label: &str,
    ) -> Result<(), HostError> {
        self.meter.reserve_more(
            &self.limits,
            &mut admitted.reservation,
            Self::label_cost(label),
        )
    }

    /// Adds `bytes` to a streamed write's reservation, or refuses them (the
    /// reservation is then as it was).
    pub(crate) async fn reserve_piece(
        &mut self,
        admitted: &mut Admitted,
        bytes: u64,
    ) -> Result<(), HostError> {
        let stats = self.within_deadline(admitted.store.stats()).await?;
        self.meter.reserve_staging(
            &self.limits,
            &mut admitted.reservation,
            &stats,
            bytes,
            false,
        )
    }

    /// Takes one of the actor's [`Limits::max_open_streams`] slots for a
    /// reader or writer; the slot is given back when the guard drops.
    pub(crate) fn open_stream(&self, store: &ContentStore) -> Result<StreamSlot, HostError> {
        let limit = self.limits.max_open_streams;
        let taken = self
            .open_streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            });
        match taken {
            Ok(_) => Ok(StreamSlot::taken_from(Arc::clone(&self.open_streams))),
            Err(open) => Err(HostError::TooManyStreams {
                store: store.id().to_owned(),
                open,
                limit,
            }),
        }
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

    /// The content read under [`TheaterCtx::read_limit`], or the refusal.
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
