//! Event chains: a durable, hash-linked record of what an actor did.
//!
//! Each actor's chain lives in the root's reserved chain store (`_chains`,
//! which no caller can name). An event is JSON; its ref is the BLAKE3 hash
//! of its bytes, and each event names its parent's ref, which makes the
//! chain a hash-linked list. The label `head/<actor>` names the newest
//! event and carries, in its row, the number of events (written only by
//! appends, so moving the head back to an older event shows), the *open
//! segment* (the newest events, one per line) and the ref of the newest
//! sealed segment. When the next event would take the open segment past
//! what the row can hold in its page, the append seals it: stores a header
//! line naming the previous sealed segment, then its events, as content
//! of the chain store, and starts a new open segment. So an append
//! rewrites one row, and adds an object only every few events.
//!
//! Events hold refs, sizes and outcomes, never content bytes. An append is
//! one engine change that reads the head row and links the new event to
//! it inside the write's transaction, so appends from many processes never
//! fork a chain. A store write recorded with [`ContentStore::with_record`]
//! carries its event in its own transaction. Chains recorded before
//! segments (one object per event) are read and continued as they are.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::engine::{ChainAppend, ChainHead, ChainTip, Change, Expect, NewLink, unix_now};
use crate::error::{Result, StoreError, shorten};
use crate::names::{ContentRef, Digest, StoreId};
use crate::root::StoreRoot;
use crate::store::{ContentStore, GiveBack, WriteRecord};

/// The reserved store that holds every actor's chain.
pub(crate) const CHAIN_STORE: &str = "_chains";

/// Longest accepted actor id, in bytes.
pub const MAX_ACTOR_ID_BYTES: usize = 128;

/// Longest store id, label, ref or call name an event records verbatim.
/// Longer ones (a refused call can name anything) are recorded by their
/// BLAKE3 hash and length, so no argument can make the chain grow by more
/// than a bounded amount per call.
pub const MAX_RECORDED_NAME_BYTES: usize = 256;

/// Longest outcome message an event records; longer ones are cut.
const MAX_RECORDED_MESSAGE_BYTES: usize = 512;

/// Most refs one event records (no call names more than three).
const MAX_RECORDED_REFS: usize = 4;

/// Most bytes one recorded event takes, as stored: every argument is
/// bounded by [`Event::bounded`] before it is appended.
pub const MAX_EVENT_BYTES: u64 = 4096;

/// One call an actor made, as recorded. The chain adds its place (`seq`,
/// `parent`) and time when it is appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The call: the interface function's name (`store-at-label`, `get`, ...).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The store the call named, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The label the call named, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Content refs involved: those the call named, in argument order,
    /// then the one it stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<String>,
    /// The size of the content written or read, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// How the call ended. Left out of the JSON when the call succeeded,
    /// the common case, which keeps three events to a head row.
    #[serde(default, skip_serializing_if = "Outcome::is_ok")]
    pub outcome: Outcome,
}

impl Event {
    /// An event of type `event_type` that succeeded, naming nothing yet.
    pub fn new(event_type: impl Into<String>) -> Self {
        Self {
            event_type: event_type.into(),
            store: None,
            label: None,
            refs: Vec::new(),
            size: None,
            outcome: Outcome::Ok,
        }
    }

    /// This event with every argument bounded (see
    /// [`MAX_RECORDED_NAME_BYTES`]): what a chain records.
    pub fn bounded(self) -> Self {
        let outcome = match self.outcome {
            Outcome::Error { kind, message } => Outcome::Error {
                kind: bound_name(kind),
                message: cut_text(message, MAX_RECORDED_MESSAGE_BYTES),
            },
            other => other,
        };
        Self {
            event_type: bound_name(self.event_type),
            store: self.store.map(bound_name),
            label: self.label.map(bound_name),
            refs: self
                .refs
                .into_iter()
                .take(MAX_RECORDED_REFS)
                .map(bound_name)
                .collect(),
            size: self.size,
            outcome,
        }
    }
}

/// `name` itself if it is short enough to record, else `blake3:HASH:LEN`.
fn bound_name(name: String) -> String {
    if name.len() <= MAX_RECORDED_NAME_BYTES {
        return name;
    }
    format!(
        "blake3:{}:{}",
        blake3::hash(name.as_bytes()).to_hex(),
        name.len()
    )
}

/// `text` cut to at most `max` bytes, at a character boundary, marked.
fn cut_text(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max - '…'.len_utf8();
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push('…');
    text
}

/// How a recorded call ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Outcome {
    /// It did what it was asked.
    #[default]
    Ok,
    /// A conditional call (compare-and-swap, `remove-from-label`) whose
    /// condition did not hold: nothing changed.
    NotApplied,
    /// It failed or was refused.
    Error {
        /// A short, stable name for the failure (`not-found`, `access-denied`, ...).
        kind: String,
        /// The message the caller got.
        message: String,
    },
}

impl Outcome {
    /// Whether the call did what it was asked.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok)
    }
}

/// An event as stored in a chain: its position, its parent's ref and when
/// it was appended, around the event itself. Its bytes are this, as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainEvent {
    /// Its position: 0 for an actor's first event.
    pub seq: u64,
    /// The previous event's ref (the full BLAKE3 hash of its bytes).
    pub parent: Option<String>,
    /// When it was appended, in unix milliseconds.
    pub at: u64,
    /// What was recorded.
    #[serde(flatten)]
    pub event: Event,
}

/// One event read back from a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainEntry {
    /// The event's ref: the BLAKE3 hash of `bytes`.
    pub content_ref: ContentRef,
    /// The event, decoded.
    pub event: ChainEvent,
    /// The event as stored (JSON), verified against `content_ref`.
    pub bytes: Vec<u8>,
    /// The object holding the event: a sealed segment (or, for an event
    /// recorded before segments, the event itself); `None` while the event
    /// is in the head label's open segment.
    pub stored_in: Option<ContentRef>,
}

impl ChainEntry {
    /// The event's short link id, as Theater's `get-chain` gives it: the
    /// first 8 bytes of its ref, big-endian.
    pub fn link_id(&self) -> u64 {
        short_link(self.content_ref.hash())
    }

    /// The parent's short link id, if the event has a parent.
    pub fn parent_link_id(&self) -> Option<u64> {
        self.event.parent.as_deref().map(short_link)
    }

    /// The entry as operators and scripts read it (the CLI's `chain --json`,
    /// the gateway's chain listing): the recorded fields, the outcome
    /// always (stored events leave a success out), the event's own hash
    /// as `"event"` (`"parent"` names the one before; `"refs"` the content
    /// the call named), and `"stored_in"`, the sealed segment holding it
    /// (`null` while it is in the head's row).
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(&self.event).unwrap_or_default();
        value["event"] = self.content_ref.hash().into();
        value["outcome"] = serde_json::to_value(&self.event.event.outcome).unwrap_or_default();
        value["stored_in"] = self
            .stored_in
            .as_ref()
            .map(|segment| segment.hash().to_owned())
            .into();
        value
    }
}

/// The first 8 bytes of a hex ref as a big-endian number.
fn short_link(hash: &str) -> u64 {
    hash.get(..16)
        .and_then(|prefix| u64::from_str_radix(prefix, 16).ok())
        .unwrap_or(0)
}

/// What [`EventChain::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// The actor.
    pub actor: String,
    /// The newest event's ref, if the chain has events.
    pub head: Option<String>,
    /// The number of events the length label records.
    pub recorded_length: u64,
    /// Events whose bytes and links were checked, walking back from the head.
    pub events_checked: u64,
    /// The first broken link found walking back from the head, if any.
    pub broken: Option<BrokenLink>,
    /// Where the chain was trimmed, if it was: the walk ended at this
    /// checkpoint, and events before `checkpoint.before` are gone.
    pub trimmed: Option<Checkpoint>,
}

impl ChainReport {
    /// Whether every link checked out.
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

/// Where and how a chain is broken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    /// The position the broken event should have (counting from 0 at the first event).
    pub seq: u64,
    /// The ref of the event at fault, if there is one to name.
    pub reference: Option<String>,
    /// What is wrong.
    pub problem: String,
}

impl std::fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reference {
            Some(reference) => write!(f, "event #{} ({reference}): {}", self.seq, self.problem),
            None => write!(f, "event #{}: {}", self.seq, self.problem),
        }
    }
}

/// One actor's event chain in a root. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EventChain {
    store: ContentStore,
    actor: String,
}

impl StoreRoot {
    /// The event chain of actor `actor`, which need not have events yet.
    /// Actor ids are 1 to [`MAX_ACTOR_ID_BYTES`] characters from
    /// `[A-Za-z0-9._:-]` (UUIDs qualify).
    pub fn event_chain(&self, actor: &str) -> Result<EventChain> {
        validate_actor_id(actor)?;
        Ok(EventChain {
            store: self.chain_store(),
            actor: actor.to_owned(),
        })
    }

    /// The reserved store every chain lives in, for maintenance (`verify`
    /// and `gc` over it keep every event a head label reaches).
    pub fn chain_store(&self) -> ContentStore {
        ContentStore::in_root(self.clone(), StoreId::reserved(CHAIN_STORE))
    }

    /// Every actor that has a chain in this root, in byte order.
    pub async fn chain_actors(&self) -> Result<Vec<String>> {
        let heads = self
            .chain_store()
            .list_labels_page(HEAD_PREFIX, None, usize::MAX)
            .await?;
        Ok(heads
            .into_iter()
            .filter_map(|entry| entry.label.strip_prefix(HEAD_PREFIX).map(str::to_owned))
            .collect())
    }
}

/// The start of every chain head label's name; the actor id follows.
pub(crate) const HEAD_PREFIX: &str = "head/";

/// The start of every chain checkpoint label's name; the actor id follows.
pub(crate) const CHECKPOINT_PREFIX: &str = "checkpoint/";

/// Where a trimmed chain now starts. Trimming drops the chain's oldest
/// segments and stores this, as JSON in the chain store under the label
/// `checkpoint/<actor>`: the walk back from the head stops at `boundary`,
/// and `verify-chain` accepts the chain when its oldest kept event is
/// `#before` and names `ended_at` as its parent, so the kept events stay
/// linked, by hash, to the history that was dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The oldest kept event's position: events `#0` to `#before - 1`
    /// were trimmed.
    pub before: u64,
    /// The ref of event `#before - 1`, the last trimmed event: the hash
    /// the trimmed prefix ended at.
    pub ended_at: String,
    /// The newest trimmed object (a sealed segment, or an event stored
    /// on its own before segments); the walk back stops before it.
    pub boundary: String,
    /// When the chain was trimmed, in milliseconds since the Unix epoch.
    pub trimmed_at: u64,
}

/// Which events a trim drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrimBefore {
    /// Events before this position.
    Seq(u64),
    /// Events recorded before this time, in milliseconds since the Unix
    /// epoch.
    Time(u64),
}

/// What [`EventChain::trim`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrimReport {
    /// The actor.
    pub actor: String,
    /// Events the chain has recorded, trimmed ones included.
    pub recorded_length: u64,
    /// The oldest event the chain now holds (0: never trimmed).
    pub starts_at: u64,
    /// Events this trim dropped (0: nothing was old enough, or only events
    /// in the newest segments were, which are kept).
    pub events_trimmed: u64,
    /// The checkpoint's ref, when the chain is trimmed.
    pub checkpoint: Option<String>,
}

impl EventChain {
    /// The actor whose chain this is.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    fn head_label(&self) -> String {
        format!("{HEAD_PREFIX}{}", self.actor)
    }

    pub(crate) fn checkpoint_label(&self) -> String {
        format!("{CHECKPOINT_PREFIX}{}", self.actor)
    }

    /// Where the chain was trimmed, if it was.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        Ok(self
            .checkpoint_row()
            .await?
            .map(|(_, checkpoint)| checkpoint))
    }

    /// The checkpoint label's target and the checkpoint it holds.
    pub(crate) async fn checkpoint_row(&self) -> Result<Option<(Digest, Checkpoint)>> {
        let engine = self.store.root().engine().await?;
        let label = self.checkpoint_label();
        let Some(target) = engine.label_target(self.store.store_id(), &label).await? else {
            return Ok(None);
        };
        Ok(Some((target, self.read_checkpoint(target).await?)))
    }

    /// Reads and checks the checkpoint stored as object `digest`.
    pub(crate) async fn read_checkpoint(&self, digest: Digest) -> Result<Checkpoint> {
        let engine = self.store.root().engine().await?;
        let damaged = |reason: String| StoreError::ChainDamaged {
            actor: self.actor.clone(),
            reason: format!("its checkpoint ({}) {reason}", digest.to_hex()),
        };
        let bytes = engine
            .read_object(self.store.store_id(), digest)
            .await?
            .ok_or_else(|| damaged("is missing".into()))?;
        if Digest::of(&bytes) != digest {
            return Err(damaged("was altered".into()));
        }
        let checkpoint: Checkpoint = serde_json::from_slice(&bytes)
            .map_err(|error| damaged(format!("is not a checkpoint: {error}")))?;
        for reference in [&checkpoint.ended_at, &checkpoint.boundary] {
            ContentRef::parse(reference.clone()).map_err(|error| damaged(error.to_string()))?;
        }
        if checkpoint.before == 0 {
            return Err(damaged("trims nothing".into()));
        }
        Ok(checkpoint)
    }

    /// Drops the chain's oldest events, as `before` says, keeping every
    /// event from the first one not old enough: whole segments go, so a
    /// few older events in the segment that holds the first kept one stay,
    /// and the newest segment (in the head's row) always stays. The kept
    /// events are checked link by link first; a chain that does not check
    /// out is not trimmed. What was trimmed is stored as a [`Checkpoint`];
    /// the dropped segments are removed by the chain store's next garbage
    /// collection. A trim only moves the start forward.
    pub async fn trim(&self, before: TrimBefore) -> Result<TrimReport> {
        let current = self.checkpoint_row().await?;
        let row = self.head_row().await?;
        let mut report = TrimReport {
            actor: self.actor.clone(),
            recorded_length: row.as_ref().and_then(|row| row.length).unwrap_or(0),
            starts_at: current
                .as_ref()
                .map_or(0, |(_, checkpoint)| checkpoint.before),
            checkpoint: current.as_ref().map(|(digest, _)| digest.to_hex()),
            ..TrimReport::default()
        };
        // Walking back: the first group boundary below which every event
        // is old enough is where the chain is cut.
        let mut keep_from = match before {
            TrimBefore::Seq(seq) => Some(seq),
            TrimBefore::Time(_) => None,
        };
        let mut newer: Option<(u64, Option<ContentRef>)> = None;
        let mut cut = None;
        let checked = self
            .walk_checked_from(row, current.clone().map(|c| c.1), u64::MAX, |entry| {
                if let TrimBefore::Time(time) = before
                    && keep_from.is_none()
                    && entry.event.at < time
                {
                    keep_from = Some(entry.event.seq + 1);
                }
                if let Some((seq, holder)) = &newer
                    && *holder != entry.stored_in
                    && keep_from.is_some_and(|keep_from| *seq <= keep_from)
                    && let Some(boundary) = &entry.stored_in
                {
                    cut = Some(Checkpoint {
                        before: *seq,
                        ended_at: entry.content_ref.hash().to_owned(),
                        boundary: boundary.hash().to_owned(),
                        trimmed_at: u64::try_from(unix_now()).unwrap_or(0),
                    });
                    return false;
                }
                newer = Some((entry.event.seq, entry.stored_in));
                true
            })
            .await?;
        if let Some(broken) = checked.broken {
            return Err(StoreError::ChainDamaged {
                actor: self.actor.clone(),
                reason: format!("{broken}; nothing was trimmed"),
            });
        }
        let Some(cut) = cut else {
            return Ok(report);
        };
        let bytes = serde_json::to_vec(&cut).expect("checkpoints serialize");
        let stored = self.store.store(bytes).await?;
        let expected = current
            .as_ref()
            .map(|(digest, _)| ContentRef::from(*digest));
        let moved = self
            .store
            .compare_and_swap_label(&self.checkpoint_label(), expected.as_ref(), Some(&stored))
            .await?;
        if !moved {
            return Err(StoreError::ChainTrimRaced {
                actor: self.actor.clone(),
            });
        }
        report.events_trimmed = cut.before - report.starts_at;
        report.starts_at = cut.before;
        report.checkpoint = Some(stored.hash().to_owned());
        Ok(report)
    }

    /// Appends `event` on its own (for calls that wrote nothing, or
    /// failed). Returns once it is committed.
    pub async fn append(&self, event: Event) -> Result<()> {
        let change = Change::Record {
            change: None,
            append: self.append_change(event, false, None),
        };
        self.store.root().engine().await?.apply(change).await?;
        Ok(())
    }

    /// The engine's half of an append: links `event` to the tip it finds.
    /// For a `conditional` change, a `false` result is recorded as
    /// [`Outcome::NotApplied`].
    /// The event is bounded first ([`Event::bounded`]); its size as
    /// stored is put in `size`, when given, once it is known.
    pub(crate) fn append_change(
        &self,
        event: Event,
        conditional: bool,
        size: Option<Arc<AtomicU64>>,
    ) -> ChainAppend {
        let mut event = event.bounded();
        let actor = self.actor.clone();
        let build = move |tip: ChainTip| -> Result<NewLink> {
            let (seq, parent, open, sealed) = match tip.head {
                None => (0, None, None, None),
                Some(ChainHead {
                    head,
                    length: Some(length),
                    open,
                    sealed,
                }) => (length, Some(head), open, sealed),
                Some(ChainHead { length: None, .. }) => {
                    return Err(StoreError::ChainDamaged {
                        actor: actor.clone(),
                        reason: "its head label was set by hand and carries no length".into(),
                    });
                }
            };
            if conditional && !tip.applied && event.outcome == Outcome::Ok {
                event.outcome = Outcome::NotApplied;
            }
            let linked = ChainEvent {
                seq,
                parent: parent.map(Digest::to_hex),
                at: u64::try_from(unix_now()).unwrap_or(0),
                event,
            };
            let event = serde_json::to_vec(&linked).expect("events serialize");
            let budget = open_segment_budget(&actor);
            let open_len = open.as_ref().map_or(0, Vec::len);
            let appended = add_to_open_segment(open, sealed, &event, budget);
            if let Some(size) = &size {
                // What the chain grows by: the event and its line break,
                // and the header of a segment this append sealed.
                let header = appended
                    .sealed
                    .as_ref()
                    .map_or(0, |segment| segment.len() - open_len);
                size.store((event.len() + 1 + header) as u64, Ordering::Relaxed);
            }
            Ok(NewLink {
                head: ChainHead {
                    head: Digest::of(&event),
                    length: Some(seq + 1),
                    open: Some(appended.open),
                    sealed: appended.previous,
                },
                sealed: appended.sealed,
            })
        };
        ChainAppend {
            store: self.store.store_id().clone(),
            head_label: self.head_label(),
            build: Box::new(build),
        }
    }

    /// The head label's row: the newest event's ref, the length recorded
    /// with it, the open segment and the newest sealed segment's ref.
    async fn head_row(&self) -> Result<Option<ChainHead>> {
        let engine = self.store.root().engine().await?;
        engine
            .chain_tip(self.store.store_id(), &self.head_label())
            .await
    }

    /// The newest event's ref and the length recorded with it (0 when the
    /// head label was set by hand); `None` for a chain with no events.
    pub async fn head(&self) -> Result<Option<(ContentRef, u64)>> {
        Ok(self
            .head_row()
            .await?
            .map(|row| (row.head.into(), row.length.unwrap_or(0))))
    }

    /// Up to `limit` events, newest first, each checked against the link
    /// that names it. Stops, with an error naming the event, at a broken
    /// link.
    pub async fn events(&self, limit: usize) -> Result<Vec<ChainEntry>> {
        let mut entries = Vec::new();
        self.for_each_event(limit, |entry| {
            entries.push(entry);
            true
        })
        .await?;
        Ok(entries)
    }

    /// Gives up to `limit` events to `visit`, newest first, each checked
    /// against the link that names it, until `visit` returns `false`; so a
    /// caller can stream a long chain, or stop at a byte budget, holding one
    /// segment at a time. Fails, with an error naming the event, at a broken
    /// link.
    pub async fn for_each_event(
        &self,
        limit: usize,
        visit: impl FnMut(ChainEntry) -> bool,
    ) -> Result<()> {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let report = self.walk_checked(limit, visit).await?;
        match report.broken {
            Some(broken) => Err(StoreError::ChainDamaged {
                actor: self.actor.clone(),
                reason: broken.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Walks the chain back from its head, checking every event's bytes
    /// against the ref its child (or the head label) names, every event's
    /// position against its parent's, and the head against the recorded
    /// length. Names the first broken link.
    pub async fn verify(&self) -> Result<ChainReport> {
        self.walk_checked(u64::MAX, |_| true).await
    }

    /// Walks back from the head through at most `limit` events, checking
    /// each as [`EventChain::verify`] says and handing each one that
    /// checks out to `visit`.
    async fn walk_checked(
        &self,
        limit: u64,
        visit: impl FnMut(ChainEntry) -> bool,
    ) -> Result<ChainReport> {
        let checkpoint = self.checkpoint().await?;
        let row = self.head_row().await?;
        self.walk_checked_from(row, checkpoint, limit, visit).await
    }

    /// Checks `row` as [`EventChain::verify`] checks the chain's own head
    /// row, before it is written (an import), trimmed at `checkpoint`;
    /// returns the report and the ref of every event that checked out.
    pub(crate) async fn verify_row(
        &self,
        row: ChainHead,
        checkpoint: Option<Checkpoint>,
    ) -> Result<(ChainReport, Vec<ContentRef>)> {
        let mut refs = Vec::new();
        let report = self
            .walk_checked_from(Some(row), checkpoint, u64::MAX, |entry| {
                refs.push(entry.content_ref);
                true
            })
            .await?;
        Ok((report, refs))
    }

    /// Walks back from `row` (see [`EventChain::walk_checked`]), stopping
    /// at `checkpoint`'s boundary if the chain passes through it.
    async fn walk_checked_from(
        &self,
        row: Option<ChainHead>,
        checkpoint: Option<Checkpoint>,
        limit: u64,
        mut visit: impl FnMut(ChainEntry) -> bool,
    ) -> Result<ChainReport> {
        let recorded_length = row.as_ref().and_then(|row| row.length).unwrap_or(0);
        let mut report = ChainReport {
            actor: self.actor.clone(),
            head: row.as_ref().map(|row| row.head.to_hex()),
            recorded_length,
            ..ChainReport::default()
        };
        let Some(row) = row else {
            return Ok(report);
        };
        let mut expected: ContentRef = row.head.into();
        let mut expected_seq = recorded_length.checked_sub(1);
        let mut stored = StoredEvents::from_head(self, row, checkpoint.as_ref());
        let broken = |seq: u64, reference: &ContentRef, problem: String| {
            Some(BrokenLink {
                seq,
                reference: Some(reference.hash().to_owned()),
                problem,
            })
        };
        // A sealed segment whose bytes changed where no event sits (its
        // header): reported once every event has checked out.
        let mut altered_segment = None;
        // Set when `visit` asked to stop: the rest is not checked.
        let mut stopped = false;
        while report.events_checked < limit {
            let found = match stored.next().await {
                Ok(found) => found,
                Err(StoreError::NotFound { reference, .. }) => {
                    let problem = format!("the object holding it ({reference}) is missing");
                    report.broken = broken(expected_seq.unwrap_or(0), &expected, problem);
                    break;
                }
                Err(StoreError::ChainDamaged { reason, .. }) => {
                    report.broken = broken(expected_seq.unwrap_or(0), &expected, reason);
                    break;
                }
                Err(other) => return Err(other),
            };
            let Some(found) = found else { break };
            let Some(seq) = expected_seq else {
                let problem = "the chain holds more events than its recorded length".into();
                report.broken = broken(0, &expected, problem);
                break;
            };
            let content_ref = ContentRef::for_content(&found.bytes);
            if content_ref != expected {
                let problem = if report.events_checked == 0 {
                    format!(
                        "the head label names it, but the newest event stored hashes to \
                         {content_ref}: the head label was moved, or the event's bytes were \
                         altered"
                    )
                } else {
                    format!(
                        "its child names it as parent, but the event stored before the child \
                         hashes to {content_ref}: the event's bytes were altered, or the \
                         chain was cut"
                    )
                };
                report.broken = broken(seq, &expected, problem);
                break;
            }
            let event: ChainEvent = match serde_json::from_slice(&found.bytes) {
                Ok(event) => event,
                Err(error) => {
                    report.broken = broken(seq, &expected, format!("it is not an event: {error}"));
                    break;
                }
            };
            if event.seq != seq {
                let problem = if report.events_checked == 0 {
                    format!(
                        "the head is event #{} but the recorded length is {recorded_length}: \
                         the head label was moved",
                        event.seq
                    )
                } else {
                    format!("the event says it is #{}, its child says #{seq}", event.seq)
                };
                report.broken = broken(seq, &expected, problem);
                break;
            }
            let parent = match (&event.parent, seq) {
                (None, 0) => None,
                (None, _) => {
                    report.broken = broken(seq, &expected, format!("event #{seq} has no parent"));
                    break;
                }
                (Some(parent), _) => match ContentRef::parse(parent.clone()) {
                    Ok(parent) => Some(parent),
                    Err(error) => {
                        report.broken = broken(seq, &expected, error.to_string());
                        break;
                    }
                },
            };
            if altered_segment.is_none() && !found.holder_intact {
                altered_segment = found.stored_in.clone().map(|segment| (segment, seq));
            }
            report.events_checked += 1;
            let more = visit(ChainEntry {
                content_ref: expected.clone(),
                event,
                bytes: found.bytes,
                stored_in: found.stored_in,
            });
            expected_seq = seq.checked_sub(1);
            match parent {
                Some(parent) if more => expected = parent,
                Some(_) => {
                    stopped = true;
                    break;
                }
                None => break,
            }
        }
        if report.broken.is_none() && !stopped && report.events_checked < limit {
            // A trimmed chain starts where its checkpoint says, and its
            // oldest kept event names the last trimmed one as parent.
            let starts_at = match checkpoint {
                Some(checkpoint) if stored.reached_boundary => {
                    let oldest = expected_seq.map_or(0, |seq| seq + 1);
                    if oldest != checkpoint.before {
                        report.broken = Some(BrokenLink {
                            seq: oldest,
                            reference: None,
                            problem: format!(
                                "the checkpoint says the chain starts at event #{}, but its \
                                 oldest stored event is #{oldest}",
                                checkpoint.before
                            ),
                        });
                    } else if expected.hash() != checkpoint.ended_at {
                        report.broken = broken(
                            oldest,
                            &expected,
                            format!(
                                "the oldest kept event names this parent, but the checkpoint \
                                 says the trimmed events ended at {}",
                                checkpoint.ended_at
                            ),
                        );
                    }
                    let before = checkpoint.before;
                    report.trimmed = Some(checkpoint);
                    before
                }
                _ => 0,
            };
            if report.broken.is_none() && report.events_checked + starts_at < recorded_length {
                let problem = format!(
                    "the recorded length is {recorded_length} but the chain holds {} events",
                    report.events_checked
                );
                report.broken = Some(BrokenLink {
                    seq: recorded_length - 1 - report.events_checked,
                    reference: None,
                    problem,
                });
            } else if report.broken.is_none()
                && let Some((segment, seq)) = altered_segment
            {
                report.broken = broken(
                    seq,
                    &segment,
                    "the sealed segment holding this event was altered outside its events".into(),
                );
            }
        }
        Ok(report)
    }

    /// Every object holding events (sealed segments, and events stored one
    /// per object before segments), for garbage collection: it follows the
    /// storage back from the head without judging links. Where the storage
    /// breaks off (a segment missing or unreadable), what lies beyond is
    /// unknown, so it fails rather than let gc remove it.
    /// A trimmed chain's walk ends at its checkpoint, which it includes.
    pub(crate) async fn reachable(&self) -> Result<Vec<Digest>> {
        let checkpoint = self.checkpoint_row().await?;
        let Some(row) = self.head_row().await? else {
            return Ok(checkpoint
                .map(|(digest, _)| vec![digest])
                .unwrap_or_default());
        };
        self.reachable_from(row, checkpoint).await
    }

    /// [`EventChain::reachable`] from a head row and checkpoint (its
    /// object's digest, and what it says) already read.
    pub(crate) async fn reachable_from(
        &self,
        row: ChainHead,
        checkpoint: Option<(Digest, Checkpoint)>,
    ) -> Result<Vec<Digest>> {
        let mut stored = StoredEvents::from_head(self, row, checkpoint.as_ref().map(|(_, c)| c));
        stored.holders.extend(checkpoint.map(|(digest, _)| digest));
        let broken_off = loop {
            match stored.next().await {
                Ok(Some(_)) => {}
                Ok(None) => break stored.damaged.take(),
                Err(StoreError::NotFound { reference, .. }) => {
                    break Some(format!("object {reference} of the chain is missing"));
                }
                Err(StoreError::ChainDamaged { reason, .. }) => break Some(reason),
                Err(other) => return Err(other),
            }
        };
        match broken_off {
            None => Ok(stored.holders),
            Some(reason) => Err(StoreError::ChainDamaged {
                actor: self.actor.clone(),
                reason: format!(
                    "{reason}; the chain cannot be followed to its start, so nothing in the \
                     chain store is collected (see verify-chain)"
                ),
            }),
        }
    }
}

/// Most bytes actor `actor`'s open segment may hold. It is rewritten with
/// the head label's row by every append, so it is kept small enough for
/// the row to stay in its index page: SQLite keeps up to 1,002 bytes of
/// such a row there (with 4 KiB pages) and spills the rest to overflow
/// pages, which made appends slower than sealing more often does. The row
/// also holds the store id, the label (`head/` and the actor id), the
/// target, the length and the sealed segment's ref: 87 bytes and the actor
/// id, with a few to spare. Three events of a typical 290 bytes fit.
fn open_segment_budget(actor: &str) -> usize {
    905 - actor.len()
}

/// A sealed segment's first line: where the chain goes on before its
/// events.
#[derive(Serialize, Deserialize)]
struct SegmentHeader {
    /// The previous sealed segment's ref; `None` for a chain's first
    /// segment (whose first event's parent, if any, is an event stored as
    /// an object of its own, before segments).
    previous: Option<String>,
}

/// A chain's open segment after an append.
struct Appended {
    /// The newest events, one per line.
    open: Vec<u8>,
    /// The newest sealed segment's ref, which `open` continues.
    previous: Option<Digest>,
    /// The segment this append sealed, to store, if it sealed one.
    sealed: Option<Vec<u8>>,
}

/// Adds `event` to the chain's open segment (events one per line, after
/// the sealed segment `previous`), sealing the open segment first when the
/// event would take it past `budget` bytes: the sealed segment is a header
/// naming `previous`, then the open segment's events.
fn add_to_open_segment(
    open: Option<Vec<u8>>,
    previous: Option<Digest>,
    event: &[u8],
    budget: usize,
) -> Appended {
    match open {
        Some(mut open) if open.len() + 1 + event.len() <= budget => {
            open.push(b'\n');
            open.extend_from_slice(event);
            Appended {
                open,
                previous,
                sealed: None,
            }
        }
        Some(full) => {
            let header = SegmentHeader {
                previous: previous.map(Digest::to_hex),
            };
            let mut segment = serde_json::to_vec(&header).expect("headers serialize");
            segment.push(b'\n');
            segment.extend_from_slice(&full);
            Appended {
                open: event.to_vec(),
                previous: Some(Digest::of(&segment)),
                sealed: Some(segment),
            }
        }
        None => Appended {
            open: event.to_vec(),
            previous,
            sealed: None,
        },
    }
}

/// Events stored one per line, oldest first.
fn event_lines(events: &[u8]) -> Vec<Vec<u8>> {
    events
        .split(|&byte| byte == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

/// The `parent` field alone, to go on from a segment's oldest event.
#[derive(Deserialize)]
struct ParentOnly {
    parent: Option<String>,
}

/// Where the walk back through a chain's storage goes next.
enum Next {
    /// A sealed segment.
    Segment(ContentRef),
    /// An event stored as an object of its own (recorded before segments).
    Event(ContentRef),
    /// Nothing before.
    Start,
}

/// One event's bytes as stored, and where.
struct StoredEvent {
    bytes: Vec<u8>,
    /// The object holding them; `None` in the open segment.
    stored_in: Option<ContentRef>,
    /// Whether that object's bytes hash to its ref.
    holder_intact: bool,
}

/// A chain's stored events, newest first, without judging their links:
/// the head's open segment, the sealed segments before it, then any
/// events stored one per object before segments. Reads bytes as stored,
/// from disk, for the caller to check.
struct StoredEvents<'a> {
    chain: &'a EventChain,
    /// The current group's events, oldest first.
    group: Vec<Vec<u8>>,
    /// The object holding the current group (`None`: the open segment).
    holder: Option<ContentRef>,
    holder_intact: bool,
    then: Next,
    /// Every object read so far.
    holders: Vec<Digest>,
    /// Why the walk could not tell what comes next, if it could not.
    damaged: Option<String>,
    /// A trimmed chain's boundary: the walk ends before this object.
    boundary: Option<ContentRef>,
    /// Whether the walk ended at `boundary`.
    reached_boundary: bool,
}

impl<'a> StoredEvents<'a> {
    /// The walk back from `row`, ending before `checkpoint`'s boundary
    /// if it gets there.
    fn from_head(chain: &'a EventChain, row: ChainHead, checkpoint: Option<&Checkpoint>) -> Self {
        let mut walk = Self {
            chain,
            group: Vec::new(),
            holder: None,
            holder_intact: true,
            then: Next::Start,
            holders: Vec::new(),
            damaged: None,
            boundary: checkpoint.and_then(|c| ContentRef::parse(c.boundary.clone()).ok()),
            reached_boundary: false,
        };
        match row.open {
            Some(open) => {
                walk.group = event_lines(&open);
                walk.then = match row.sealed {
                    Some(sealed) => Next::Segment(sealed.into()),
                    None => walk.continue_from_oldest(),
                };
            }
            None => walk.then = Next::Event(row.head.into()),
        }
        walk
    }

    /// Makes `segment` the current group.
    fn take_segment(&mut self, segment: &[u8]) -> std::result::Result<(), String> {
        let (header, events) = match segment.iter().position(|&byte| byte == b'\n') {
            Some(at) => (&segment[..at], Some(&segment[at + 1..])),
            None => (segment, None),
        };
        let header: SegmentHeader = serde_json::from_slice(header)
            .map_err(|error| format!("a segment's header is damaged: {error}"))?;
        self.group = events.map(event_lines).unwrap_or_default();
        self.then = match header.previous {
            Some(previous) => {
                Next::Segment(ContentRef::parse(previous).map_err(|e| e.to_string())?)
            }
            None => self.continue_from_oldest(),
        };
        Ok(())
    }

    /// Before a group with no previous segment: the oldest event's parent,
    /// an event stored as an object of its own, if it has one.
    fn continue_from_oldest(&mut self) -> Next {
        let Some(oldest) = self.group.first() else {
            return Next::Start;
        };
        match serde_json::from_slice::<ParentOnly>(oldest) {
            Ok(ParentOnly { parent: None }) => Next::Start,
            Ok(ParentOnly {
                parent: Some(parent),
            }) => match ContentRef::parse(parent) {
                Ok(parent) => Next::Event(parent),
                Err(error) => {
                    self.damaged = Some(format!("an event's parent: {error}"));
                    Next::Start
                }
            },
            Err(error) => {
                self.damaged = Some(format!("an event is not an event: {error}"));
                Next::Start
            }
        }
    }

    async fn next(&mut self) -> Result<Option<StoredEvent>> {
        loop {
            if let Some(bytes) = self.group.pop() {
                return Ok(Some(StoredEvent {
                    bytes,
                    stored_in: self.holder.clone(),
                    holder_intact: self.holder_intact,
                }));
            }
            let (holder, is_segment) = match std::mem::replace(&mut self.then, Next::Start) {
                Next::Start => return Ok(None),
                Next::Segment(holder) => (holder, true),
                Next::Event(holder) => (holder, false),
            };
            if self.boundary.as_ref() == Some(&holder) {
                self.reached_boundary = true;
                return Ok(None);
            }
            let digest = holder.digest()?;
            let store = &self.chain.store;
            let engine = store.root().engine().await?;
            let bytes = engine
                .read_object(store.store_id(), digest)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    store: store.store_id().to_string(),
                    reference: holder.hash().to_owned(),
                })?;
            self.holders.push(digest);
            self.holder_intact = Digest::of(&bytes) == digest;
            if is_segment {
                self.take_segment(&bytes)
                    .map_err(|reason| StoreError::ChainDamaged {
                        actor: self.chain.actor.clone(),
                        reason: format!("segment {holder}: {reason}"),
                    })?;
            } else {
                self.group = vec![bytes];
                self.then = self.continue_from_oldest();
            }
            self.holder = Some(holder);
        }
    }
}

/// A pending record: the event a store call adds to a chain. Attached to
/// a store handle with [`ContentStore::with_record`], it rides in the
/// transaction of the first write made through that handle; a call that
/// writes nothing, or fails, records it on its own with
/// [`Record::finish`]. Clones share the one event.
#[derive(Clone, Debug)]
pub struct Record {
    pending: Arc<Mutex<Option<(EventChain, Event)>>>,
    /// The recorded event's size, once it is built.
    recorded_bytes: Arc<AtomicU64>,
}

impl Record {
    /// `event`, to be recorded in `chain`.
    pub fn new(chain: &EventChain, event: Event) -> Self {
        Self {
            pending: Arc::new(Mutex::new(Some((chain.clone(), event)))),
            recorded_bytes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Changes the event while it is still pending (to name a store only
    /// known once the call has run, say).
    pub fn update(&self, change: impl FnOnce(&mut Event)) {
        if let Some((_, event)) = self.lock().as_mut() {
            change(event);
        }
    }

    /// Records the event with `outcome`, unless a write already recorded
    /// it (a write's event is recorded only when the write succeeds).
    pub async fn finish(self, outcome: Outcome) -> Result<()> {
        let pending = self.lock().take();
        match pending {
            Some((chain, mut event)) => {
                event.outcome = outcome;
                let change = Change::Record {
                    change: None,
                    append: chain.append_change(
                        event,
                        false,
                        Some(Arc::clone(&self.recorded_bytes)),
                    ),
                };
                chain.store.root().engine().await?.apply(change).await?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The bytes the chain grew by when the event was recorded (by a
    /// write's transaction or by [`Record::finish`]): the event, its line
    /// break, and the header of a segment its append sealed; 0 while it
    /// is not recorded.
    pub fn recorded_bytes(&self) -> u64 {
        self.recorded_bytes.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(EventChain, Event)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wraps `change` so that it carries the pending event, if it is still
    /// pending; `None` if there is nothing to record. Give the event back
    /// with [`Record::restore`] if the change fails.
    fn take_into(&self, change: Change) -> (Change, Option<(EventChain, Event)>) {
        let Some((chain, event)) = self.lock().take() else {
            return (change, None);
        };
        let mut recorded = event.clone();
        // What the write is, under the quota it may carry.
        let write = match &change {
            Change::WithinQuota { change, .. } => change,
            write => write,
        };
        let conditional = matches!(
            write,
            Change::SetLabel {
                expect: Expect::Exactly(_),
                ..
            }
        );
        if let Change::AddObject { digest, size, .. } = write {
            recorded.refs.push(digest.to_hex());
            recorded.size = Some(*size);
        }
        let change = Change::Record {
            append: chain.append_change(
                recorded,
                conditional,
                Some(Arc::clone(&self.recorded_bytes)),
            ),
            change: Some(Box::new(change)),
        };
        (change, Some((chain, event)))
    }

    /// Puts back an event whose write failed, so that
    /// [`Record::finish`] records the failure.
    fn restore(&self, pending: (EventChain, Event)) {
        *self.lock() = Some(pending);
    }
}

impl WriteRecord for Record {
    fn attach(&self, change: Change) -> (Change, Option<GiveBack>) {
        let (change, pending) = self.take_into(change);
        let give_back = pending.map(|pending| {
            let record = self.clone();
            Box::new(move || record.restore(pending)) as GiveBack
        });
        (change, give_back)
    }
}

impl ContentStore {
    /// This store, with `record`'s event carried by the next write made
    /// through it: the event is appended to its chain inside the write's
    /// own transaction, so a recorded write costs one commit. Reads do not
    /// take it; finish the record to record those.
    pub fn with_record(&self, record: &Record) -> Self {
        self.with_write_record(Arc::new(record.clone()))
    }
}

/// Checks an actor id: 1 to [`MAX_ACTOR_ID_BYTES`] characters from
/// `[A-Za-z0-9._:-]`.
pub fn validate_actor_id(id: &str) -> Result<()> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > MAX_ACTOR_ID_BYTES {
        "it is longer than 128 bytes"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        "only letters, digits, '.', '_', ':' and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidActorId {
        id: shorten(id),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_event_is_bounded_whatever_the_call_named() {
        let huge = "\u{e9}".repeat(1 << 19);
        let event = Event {
            store: Some(huge.clone()),
            label: Some(huge.clone()),
            refs: vec![huge.clone(); 100],
            size: Some(u64::MAX),
            outcome: Outcome::Error {
                kind: huge.clone(),
                message: huge.clone(),
            },
            ..Event::new(huge.clone())
        }
        .bounded();
        let linked = ChainEvent {
            seq: u64::MAX,
            parent: Some("f".repeat(64)),
            at: u64::MAX,
            event: event.clone(),
        };
        let bytes = serde_json::to_vec(&linked).unwrap().len() as u64;
        assert!(bytes <= MAX_EVENT_BYTES, "{bytes} bytes");
        // A long name is recorded by hash and length, so it stays
        // recognisable; a short one verbatim.
        let expected = format!(
            "blake3:{}:{}",
            blake3::hash(huge.as_bytes()).to_hex(),
            huge.len()
        );
        assert_eq!(event.label.as_deref(), Some(expected.as_str()));
        let short = Event {
            label: Some("config".into()),
            ..Event::new("get")
        };
        assert_eq!(short.clone().bounded(), short);
    }

    #[test]
    fn link_ids_are_the_first_eight_bytes_of_the_ref() {
        let hash = "0123456789abcdef".repeat(4);
        assert_eq!(short_link(&hash), 0x0123_4567_89ab_cdef);
    }

    #[test]
    fn events_encode_as_flat_json() {
        let event = ChainEvent {
            seq: 3,
            parent: Some("ab".repeat(32)),
            at: 5,
            event: Event {
                store: Some("s".into()),
                label: Some("l".into()),
                refs: vec!["cd".repeat(32)],
                size: Some(1024),
                ..Event::new("store-at-label")
            },
        };
        let json: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "store-at-label");
        // A successful outcome is left out, and read back as one.
        assert!(json.get("outcome").is_none());
        assert_eq!(json["seq"], 3);
        let back: ChainEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
        let mut refused = event.clone();
        refused.event.outcome = Outcome::NotApplied;
        let json = serde_json::to_value(&refused).unwrap();
        assert_eq!(json["outcome"]["status"], "not-applied");
        assert_eq!(serde_json::from_value::<ChainEvent>(json).unwrap(), refused);
    }

    #[test]
    fn open_segments_seal_before_they_pass_their_budget() {
        let event = |n: u8| vec![b'a' + n; 100];
        let first = add_to_open_segment(None, None, &event(0), 350);
        assert_eq!(
            (first.open.clone(), first.previous, first.sealed),
            (event(0), None, None)
        );
        let second = add_to_open_segment(Some(first.open), None, &event(1), 350);
        assert_eq!(second.open, [&event(0)[..], b"\n", &event(1)].concat());
        let third = add_to_open_segment(Some(second.open), None, &event(2), 350);
        assert!(third.sealed.is_none() && third.open.len() == 302);
        // A fourth would take it past 350: the three are sealed, after a
        // header naming no previous segment, and the fourth starts anew.
        let fourth = add_to_open_segment(Some(third.open.clone()), None, &event(3), 350);
        let sealed = fourth.sealed.expect("sealed");
        assert_eq!(
            sealed,
            [&br#"{"previous":null}"#[..], b"\n", &third.open].concat()
        );
        assert_eq!(fourth.previous, Some(Digest::of(&sealed)));
        assert_eq!(fourth.open, event(3));
        // The next seal names that one.
        let fifth = add_to_open_segment(Some(vec![b'x'; 300]), fourth.previous, &event(4), 350);
        let header = format!(r#"{{"previous":"{}"}}"#, Digest::of(&sealed).to_hex());
        assert!(fifth.sealed.unwrap().starts_with(header.as_bytes()));
        // Three typical events fit beside the longest actor id the ids allow
        // but one: ids of up to 32 bytes (UUIDs, `component-` and 16 hex).
        assert!(open_segment_budget(&"a".repeat(32)) >= 3 * 291);
        assert!(open_segment_budget(&"a".repeat(MAX_ACTOR_ID_BYTES)) >= 2 * 291);
    }

    #[test]
    fn actor_ids_accept_uuids_and_refuse_paths() {
        validate_actor_id("6f1c2d3e-0000-4000-8000-000000000000").unwrap();
        validate_actor_id("component-0123abcd").unwrap();
        for bad in ["", "a/b", "../x", "a b", &"x".repeat(129)] {
            assert!(matches!(
                validate_actor_id(bad),
                Err(StoreError::InvalidActorId { .. })
            ));
        }
    }
}
