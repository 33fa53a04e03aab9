//! Event chains: a durable, hash-linked record of what an actor did.
//!
//! Each actor's chain lives in the root's reserved chain store (`_chains`,
//! which no caller can name). An event is content in that store, so its
//! ref is the BLAKE3 hash of its bytes; each event names its parent's ref,
//! which makes the chain a hash-linked list. The label `head/<actor>` names
//! the newest event and carries the number of events beside its target
//! (written only by appends), so moving the head back to an older event
//! shows: the length no longer matches the head's position.
//!
//! Events hold refs, sizes and outcomes, never content bytes. An append is
//! one engine change that reads the tip and links the new event to it
//! inside the write's transaction, so appends from many processes never
//! fork a chain. A store write recorded with [`ContentStore::with_record`]
//! carries its event in its own transaction.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::engine::{ChainAppend, ChainTip, Change, Expect, NewLink, unix_now};
use crate::error::{Result, StoreError, shorten};
use crate::names::{ContentRef, Digest, StoreId};
use crate::root::StoreRoot;
use crate::store::ContentStore;

/// The reserved store that holds every actor's chain.
pub(crate) const CHAIN_STORE: &str = "_chains";

/// Longest accepted actor id, in bytes.
pub const MAX_ACTOR_ID_BYTES: usize = 128;

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
    /// How the call ended.
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
}

/// How a recorded call ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Outcome {
    /// It did what it was asked.
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

const HEAD_PREFIX: &str = "head/";

impl EventChain {
    /// The actor whose chain this is.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    fn head_label(&self) -> String {
        format!("{HEAD_PREFIX}{}", self.actor)
    }

    /// Appends `event` on its own (for calls that wrote nothing, or
    /// failed). Returns once it is committed.
    pub async fn append(&self, event: Event) -> Result<()> {
        let change = Change::Record {
            change: None,
            append: self.append_change(event, false),
        };
        self.store.root().engine().await?.apply(change).await?;
        Ok(())
    }

    /// The engine's half of an append: links `event` to the tip it finds.
    /// For a `conditional` change, a `false` result is recorded as
    /// [`Outcome::NotApplied`].
    pub(crate) fn append_change(&self, mut event: Event, conditional: bool) -> ChainAppend {
        let actor = self.actor.clone();
        let build = move |tip: ChainTip| -> Result<NewLink> {
            let damaged = |reason: String| StoreError::ChainDamaged {
                actor: actor.clone(),
                reason,
            };
            let seq = match (tip.head, tip.length) {
                (None, _) => 0,
                (Some(_), Some(length)) => length,
                (Some(_), None) => {
                    return Err(damaged(
                        "its head label was set by hand and carries no length".into(),
                    ));
                }
            };
            if conditional && !tip.applied && event.outcome == Outcome::Ok {
                event.outcome = Outcome::NotApplied;
            }
            let linked = ChainEvent {
                seq,
                parent: tip.head.map(Digest::to_hex),
                at: u64::try_from(unix_now()).unwrap_or(0),
                event,
            };
            let event = serde_json::to_vec(&linked).expect("events serialize");
            Ok(NewLink {
                event,
                length: seq + 1,
            })
        };
        ChainAppend {
            store: self.store.store_id().clone(),
            head_label: self.head_label(),
            build: Box::new(build),
        }
    }

    /// The newest event's ref and the length recorded with it (0 when the
    /// head label was set by hand); `None` for a chain with no events.
    pub async fn head(&self) -> Result<Option<(ContentRef, u64)>> {
        let engine = self.store.root().engine().await?;
        let tip = engine
            .chain_tip(self.store.store_id(), &self.head_label())
            .await?;
        Ok(tip.map(|(head, length)| (head.into(), length.unwrap_or(0))))
    }

    /// Up to `limit` events, newest first, each verified against its ref.
    /// Stops early, with an error naming the event, at a broken link.
    pub async fn events(&self, limit: usize) -> Result<Vec<ChainEntry>> {
        let mut entries = Vec::new();
        let mut next = self.store.get_by_label(&self.head_label()).await?;
        while entries.len() < limit
            && let Some(content_ref) = next
        {
            let entry = self.read(&content_ref).await?;
            next = entry.event.parent.clone().map(ContentRef::new);
            entries.push(entry);
        }
        Ok(entries)
    }

    /// Reads and decodes one event.
    async fn read(&self, content_ref: &ContentRef) -> Result<ChainEntry> {
        // From disk: verify-chain exists to look at the bytes as stored.
        let bytes = self.store.get_from_disk(content_ref).await?;
        let event = serde_json::from_slice(&bytes).map_err(|error| StoreError::ChainDamaged {
            actor: self.actor.clone(),
            reason: format!("event {content_ref} is not an event: {error}"),
        })?;
        Ok(ChainEntry {
            content_ref: content_ref.clone(),
            event,
            bytes,
        })
    }

    /// Walks the chain back from its head, checking every event's bytes
    /// against its ref, every event's position against its parent's, and
    /// the head against the recorded length. Names the first broken link.
    pub async fn verify(&self) -> Result<ChainReport> {
        let (head, recorded_length) = self.head().await?.unzip();
        let recorded_length = recorded_length.unwrap_or(0);
        let mut report = ChainReport {
            actor: self.actor.clone(),
            head: head.as_ref().map(|head| head.hash().to_owned()),
            recorded_length,
            ..ChainReport::default()
        };
        let mut expected_seq = recorded_length.checked_sub(1);
        let mut next = head;
        let broken = |seq: u64, reference: Option<&ContentRef>, problem: String| {
            Some(BrokenLink {
                seq,
                reference: reference.map(|r| r.hash().to_owned()),
                problem,
            })
        };
        while let Some(content_ref) = next.take() {
            let Some(seq) = expected_seq else {
                report.broken = broken(
                    0,
                    Some(&content_ref),
                    "the chain holds more events than its recorded length".into(),
                );
                break;
            };
            let entry = match self.read(&content_ref).await {
                Ok(entry) => entry,
                Err(StoreError::NotFound { .. }) => {
                    report.broken = broken(seq, Some(&content_ref), "the event is missing".into());
                    break;
                }
                Err(StoreError::Corrupted { actual, .. }) => {
                    let problem = format!("the event's bytes were altered (they hash to {actual})");
                    report.broken = broken(seq, Some(&content_ref), problem);
                    break;
                }
                Err(StoreError::ChainDamaged { reason, .. }) => {
                    report.broken = broken(seq, Some(&content_ref), reason);
                    break;
                }
                Err(other) => return Err(other),
            };
            report.events_checked += 1;
            if entry.event.seq != seq {
                let problem = if report.events_checked == 1 {
                    format!(
                        "the head is event #{} but the recorded length is {recorded_length}: \
                         the head label was moved",
                        entry.event.seq
                    )
                } else {
                    format!(
                        "the event says it is #{}, its child says #{seq}",
                        entry.event.seq
                    )
                };
                report.broken = broken(seq, Some(&content_ref), problem);
                break;
            }
            match (entry.event.parent, seq) {
                (None, 0) => {}
                (None, _) => {
                    let problem = format!("event #{seq} has no parent");
                    report.broken = broken(seq, Some(&content_ref), problem);
                    break;
                }
                (Some(parent), _) => match ContentRef::parse(parent) {
                    Ok(parent) => next = Some(parent),
                    Err(error) => {
                        report.broken = broken(seq, Some(&content_ref), error.to_string());
                        break;
                    }
                },
            }
            expected_seq = seq.checked_sub(1);
        }
        if report.broken.is_none() && report.events_checked < recorded_length {
            let problem = format!(
                "the recorded length is {recorded_length} but the chain holds {} events",
                report.events_checked
            );
            report.broken = broken(report.events_checked, None, problem);
        }
        Ok(report)
    }

    /// Every event's ref, newest first, for garbage collection: it stops
    /// quietly at a broken link rather than failing.
    pub(crate) async fn reachable(&self) -> Result<Vec<Digest>> {
        let mut digests = Vec::new();
        let mut next = self.store.get_by_label(&self.head_label()).await?;
        while let Some(content_ref) = next.take() {
            let Ok(entry) = self.read(&content_ref).await else {
                break;
            };
            digests.push(content_ref.digest()?);
            next = entry.event.parent.map(ContentRef::new);
        }
        Ok(digests)
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
}

impl Record {
    /// `event`, to be recorded in `chain`.
    pub fn new(chain: &EventChain, event: Event) -> Self {
        Self {
            pending: Arc::new(Mutex::new(Some((chain.clone(), event)))),
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
                chain.append(event).await
            }
            None => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(EventChain, Event)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wraps `change` so that it carries the pending event, if it is still
    /// pending; `None` if there is nothing to record. Give the event back
    /// with [`Record::restore`] if the change fails.
    pub(crate) fn attach(&self, change: Change) -> (Change, Option<(EventChain, Event)>) {
        let Some((chain, event)) = self.lock().take() else {
            return (change, None);
        };
        let mut recorded = event.clone();
        let conditional = matches!(
            change,
            Change::SetLabel {
                expect: Expect::Exactly(_),
                ..
            }
        );
        if let Change::AddObject { digest, size, .. } = &change {
            recorded.refs.push(digest.to_hex());
            recorded.size = Some(*size);
        }
        let change = Change::Record {
            append: chain.append_change(recorded, conditional),
            change: Some(Box::new(change)),
        };
        (change, Some((chain, event)))
    }

    /// Puts back an event whose write failed, so that
    /// [`Record::finish`] records the failure.
    pub(crate) fn restore(&self, pending: (EventChain, Event)) {
        *self.lock() = Some(pending);
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
        assert_eq!(json["outcome"]["status"], "ok");
        assert_eq!(json["seq"], 3);
        let back: ChainEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
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
