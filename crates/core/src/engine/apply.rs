//! What each [`Change`] means, written once for the engines that apply
//! changes in their own process (local and memory): which checks a change
//! makes and in what order, which rows it writes, and what it answers.
//!
//! An engine implements [`Transaction`], the handful of reads and writes
//! its open transaction offers, and [`apply`] drives it; the engine only
//! persists. Refusals (`Ok(Err(..))`) are answers: the engine rolls back
//! what the change did before it. Faults (`Err(..)`) are the engine's own
//! storage failing.
//!
//! The shared engine carries the same meaning in PostgreSQL statements,
//! so that a label write costs one round trip instead of a read and a
//! write; the cross-engine property test (`tests/engines.rs`) holds the
//! three engines to one behaviour.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::layout::remove_staged;
use super::{ChainAppend, ChainHead, ChainTip, Change, Expect, Staged, logs_changes, unix_now};
use crate::error::{Result, StoreError};
use crate::links::Links;
use crate::names::{Digest, StoreId};
use crate::stats::{StoreQuota, StoreStats};

/// An object the index holds: when it was last stored, and where its
/// bytes are, in the engine's own terms.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeldObject<Place> {
    pub(crate) stored_at: i64,
    pub(crate) place: Place,
}

/// An engine's open write transaction, as the reads and writes that
/// [`apply`] needs. Nothing here decides: each method does one thing to
/// the engine's storage.
pub(crate) trait Transaction {
    /// The engine's storage failing (the whole transaction is abandoned).
    type Fault;
    /// Where an object's bytes are kept, as the engine needs to know to
    /// rewrite or remove them.
    type Place: Copy;

    /// Registers the store; returns whether it was new.
    fn ensure_store(&mut self, store: &StoreId) -> Result<bool, Self::Fault>;
    /// What the label points at.
    fn label_target(&mut self, store: &StoreId, label: &str)
    -> Result<Option<Digest>, Self::Fault>;
    /// The label's whole row, chain columns included.
    fn chain_tip(&mut self, store: &StoreId, label: &str)
    -> Result<Option<ChainHead>, Self::Fault>;
    /// Whether the store holds the object.
    fn has_object(&mut self, store: &StoreId, digest: Digest) -> Result<bool, Self::Fault>;
    /// The object's row, if held.
    fn object(
        &mut self,
        store: &StoreId,
        digest: Digest,
    ) -> Result<Option<HeldObject<Self::Place>>, Self::Fault>;
    /// Whether a held object's bytes are there (a crash or a hand may have
    /// removed a file; a damaged database may have lost a row).
    fn bytes_present(&mut self, store: &StoreId, digest: Digest, place: Self::Place) -> bool;
    /// Whether a plain label (not a chain head) points at the object.
    /// Asked only of reserved stores, which keep no change log.
    fn held_by_label(&mut self, store: &StoreId, digest: Digest) -> Result<bool, Self::Fault>;
    /// Whether any object of the store awaits a scan for links.
    fn awaits_scan(&mut self, store: &StoreId) -> Result<bool, Self::Fault>;
    /// The store's running totals (zero for a store not yet registered).
    fn totals(&mut self, store: &StoreId) -> Result<StoreStats, Self::Fault>;
    /// The newest sequence number of the store's change log (0: none).
    fn change_seq(&mut self, store: &StoreId) -> Result<u64, Self::Fault>;

    /// Writes an object's bytes and row: a new one (`held` is `None`) with
    /// `links` as its links column, or a held one again, which rewrites
    /// its bytes and refreshes its age and keeps its links.
    fn write_object(
        &mut self,
        store: &StoreId,
        digest: Digest,
        size: u64,
        staged: Staged,
        links: &Links,
        held: Option<Self::Place>,
    ) -> Result<Result<()>, Self::Fault>;
    /// Drops staged content that will not be written.
    fn discard(&mut self, staged: Staged);
    /// Refreshes the age of each of `targets` held and last stored before
    /// `fresh_after` (unix milliseconds).
    fn refresh_targets(
        &mut self,
        store: &StoreId,
        targets: &[Digest],
        fresh_after: i64,
    ) -> Result<(), Self::Fault>;
    /// Marks an object as awaiting a scan for links, or as scanned.
    fn mark_unscanned(
        &mut self,
        store: &StoreId,
        digest: Digest,
        unscanned: bool,
    ) -> Result<(), Self::Fault>;
    /// Points a label of a registered store at `target`; a chain head's
    /// other columns stay.
    fn put_label(
        &mut self,
        store: &StoreId,
        label: &str,
        target: Digest,
    ) -> Result<(), Self::Fault>;
    /// Removes a label (removing a missing one is no error).
    fn delete_label(&mut self, store: &StoreId, label: &str) -> Result<(), Self::Fault>;
    /// Removes up to `limit` labels of the store; returns how many went.
    fn delete_labels(&mut self, store: &StoreId, limit: usize) -> Result<usize, Self::Fault>;
    /// Writes a chain head's row whole (`exists`: the row is there now).
    fn set_chain_head(
        &mut self,
        store: &StoreId,
        label: &str,
        head: ChainHead,
        exists: bool,
    ) -> Result<(), Self::Fault>;
    /// Adds a sealed chain segment as an object, unless already held.
    fn add_segment(
        &mut self,
        store: &StoreId,
        digest: Digest,
        segment: Vec<u8>,
    ) -> Result<(), Self::Fault>;
    /// Sets a held object's links column; returns whether it is held.
    fn set_links(
        &mut self,
        store: &StoreId,
        digest: Digest,
        column: Option<Vec<u8>>,
    ) -> Result<bool, Self::Fault>;
    /// Removes an object's row and bytes.
    fn delete_object(
        &mut self,
        store: &StoreId,
        digest: Digest,
        place: Self::Place,
    ) -> Result<Result<()>, Self::Fault>;
    /// Names `actor` (`None`: no one) as the maker of the change log
    /// entries this transaction writes to `store` from now on.
    fn act_as(&mut self, store: &StoreId, actor: Option<&str>) -> Result<(), Self::Fault>;
    /// Drops change log entries made before `before`, keeping the newest
    /// `keep_last`; returns whether any went.
    fn trim_changes(
        &mut self,
        store: &StoreId,
        before: i64,
        keep_last: u64,
    ) -> Result<bool, Self::Fault>;
    /// Forgets a store holding no object and no label, created before
    /// `cutoff`, with whatever it left on disk; returns whether it did.
    fn delete_empty_store(
        &mut self,
        store: &StoreId,
        cutoff: i64,
    ) -> Result<Result<bool>, Self::Fault>;

    /// Moves an object's bytes aside and forgets it, unless they check out
    /// intact again; returns whether it did.
    fn quarantine(&mut self, store: &StoreId, digest: Digest) -> Result<Result<bool>, Self::Fault>;
    /// Deletes bytes no row claims, if last modified before `cutoff`;
    /// returns whether it did.
    fn remove_unindexed(
        &mut self,
        store: &StoreId,
        digest: Digest,
        cutoff: SystemTime,
    ) -> Result<Result<bool>, Self::Fault>;
    /// Keeps a staged outboard beside a held object whose bytes are a
    /// file, if the engine keeps outboards (the staged copy is removed
    /// after, either way).
    fn keep_outboard(&mut self, store: &StoreId, digest: Digest, place: Self::Place, staged: &Path);
    /// Indexes a content file found in the store's directory with no row;
    /// returns whether it did (`false`: the file is gone).
    fn index_file(&mut self, store: &StoreId, digest: Digest) -> Result<Result<bool>, Self::Fault>;
}

/// Applies `change` in `txn` (see each [`Change`] variant for what it
/// does). `refresh_after` is the root's refresh window in milliseconds.
pub(crate) fn apply<T: Transaction>(
    txn: &mut T,
    change: Change,
    refresh_after: i64,
) -> Result<Result<bool>, T::Fault> {
    match change {
        Change::CreateStore { store } => txn.ensure_store(&store).map(Ok),
        Change::AddObject {
            store,
            digest,
            size,
            staged,
            label,
            links,
        } => add_object(
            txn,
            &store,
            (digest, size),
            staged,
            label,
            &links,
            refresh_after,
        ),
        Change::SetLinks {
            store,
            digest,
            targets,
        } => {
            let column = (!targets.is_empty()).then(|| crate::links::targets_column(&targets));
            if !txn.set_links(&store, digest, column)? {
                return Ok(Ok(false));
            }
            txn.mark_unscanned(&store, digest, false)?;
            Ok(Ok(true))
        }
        Change::SetLabel {
            store,
            label,
            target,
            expect,
        } => {
            if let Some(target) = target
                && !txn.has_object(&store, target)?
            {
                return Ok(Err(not_found(&store, target)));
            }
            if let Expect::Exactly(expected) = expect
                && txn.label_target(&store, &label)? != expected
            {
                return Ok(Ok(false));
            }
            match target {
                Some(target) => {
                    txn.ensure_store(&store)?;
                    txn.put_label(&store, &label, target)?;
                }
                None => txn.delete_label(&store, &label)?,
            }
            Ok(Ok(true))
        }
        Change::SetLabels {
            store,
            labels,
            expected,
        } => {
            for ((label, _), expected) in labels.iter().zip(expected.iter().flatten()) {
                if txn.label_target(&store, label)? != *expected {
                    return Ok(Ok(false));
                }
            }
            txn.ensure_store(&store)?;
            for (label, target) in &labels {
                match *target {
                    Some(target) => {
                        if !txn.has_object(&store, target)? {
                            return Ok(Err(not_found(&store, target)));
                        }
                        txn.put_label(&store, label, target)?;
                    }
                    None => txn.delete_label(&store, label)?,
                }
            }
            Ok(Ok(true))
        }
        Change::RemoveObject {
            store,
            digest,
            referrers,
            listed_stored_at,
            log_end,
        } => {
            // Every check the collection's listing relied on, again, under
            // the write lock: anything written since keeps the object.
            if txn.change_seq(&store)? != log_end {
                return Ok(Ok(false));
            }
            for &referrer in &referrers {
                if txn.has_object(&store, referrer)? {
                    return Ok(Ok(false));
                }
            }
            let Some(held) = txn.object(&store, digest)? else {
                return Ok(Ok(false));
            };
            // A logged store's labels moved since the collection's listing
            // only if its log did (checked above; a store removed and made
            // again starts its log over, but then holds only objects
            // stored since, whose age differs). A reserved store keeps no
            // log, so its labels are asked.
            if held.stored_at != listed_stored_at
                || (!logs_changes(&store) && txn.held_by_label(&store, digest)?)
                || txn.awaits_scan(&store)?
            {
                return Ok(Ok(false));
            }
            Ok(txn
                .delete_object(&store, digest, held.place)?
                .map(|()| true))
        }
        Change::RemoveUnindexed {
            store,
            digest,
            cutoff,
        } => {
            if txn.has_object(&store, digest)? {
                return Ok(Ok(false));
            }
            txn.remove_unindexed(&store, digest, cutoff)
        }
        Change::QuarantineObject { store, digest } => txn.quarantine(&store, digest),
        Change::RemoveLabels { store, limit } => Ok(Ok(txn.delete_labels(&store, limit)? > 0)),
        Change::AddOutboard {
            store,
            digest,
            staged,
        } => {
            // One collected or quarantined meanwhile gets no outboard back.
            if let Some(held) = txn.object(&store, digest)? {
                txn.keep_outboard(&store, digest, held.place, &staged);
            }
            remove_staged(&staged);
            Ok(Ok(true))
        }
        Change::Record { change, append } => {
            let applied = match change {
                Some(change) => match apply(txn, *change, refresh_after)? {
                    Ok(applied) => applied,
                    Err(refused) => return Ok(Err(refused)),
                },
                None => true,
            };
            Ok(append_event(txn, append, applied)?.map(|()| applied))
        }
        Change::SetChainHead {
            store,
            label,
            head,
            expected,
        } => {
            let current = txn.label_target(&store, &label)?;
            if current != expected {
                return Ok(Ok(false));
            }
            if let Some(sealed) = head.sealed
                && !txn.has_object(&store, sealed)?
            {
                return Ok(Err(not_found(&store, sealed)));
            }
            txn.ensure_store(&store)?;
            txn.set_chain_head(&store, &label, head, current.is_some())?;
            Ok(Ok(true))
        }
        Change::AdoptFile {
            store,
            digest,
            label,
        } => {
            txn.ensure_store(&store)?;
            if txn.has_object(&store, digest)? {
                return Ok(Ok(false));
            }
            match txn.index_file(&store, digest)? {
                Ok(true) => {}
                other => return Ok(other),
            }
            txn.mark_unscanned(&store, digest, true)?;
            txn.put_label(&store, &label, digest)?;
            Ok(Ok(true))
        }
        Change::ByActor { actor, change } => {
            let Some(store) = change.store().filter(|store| logs_changes(store)).cloned() else {
                return apply(txn, *change, refresh_after);
            };
            txn.act_as(&store, Some(&actor))?;
            let applied = apply(txn, *change, refresh_after);
            txn.act_as(&store, None)?;
            applied
        }
        Change::WithinQuota {
            quota,
            change,
            growth,
        } => {
            let Some(store) = change.store().cloned() else {
                return apply(txn, *change, refresh_after);
            };
            let before = txn.totals(&store)?;
            let applied = apply(txn, *change, refresh_after)?;
            if applied.is_err() {
                return Ok(applied);
            }
            let after = txn.totals(&store)?;
            if quota.refuses(&before, &after) {
                return Ok(Err(over_quota(&store, quota, &before, &after)));
            }
            growth.fetch_add(
                after.footprint().saturating_sub(before.footprint()),
                Ordering::Relaxed,
            );
            Ok(applied)
        }
        Change::TrimChanges {
            store,
            before,
            keep_last,
        } => txn.trim_changes(&store, before, keep_last).map(Ok),
        Change::RemoveEmptyStore { store, cutoff } => txn.delete_empty_store(&store, cutoff),
    }
}

/// [`Change::AddObject`]: an object held, present and stored within the
/// refresh window is not written again; anything else is written (which
/// heals damaged bytes and refreshes the age). A new object refreshes the
/// age of the old targets it links to. Returns whether it was new.
fn add_object<T: Transaction>(
    txn: &mut T,
    store: &StoreId,
    (digest, size): (Digest, u64),
    staged: Staged,
    label: Option<String>,
    links: &Links,
    refresh_after: i64,
) -> Result<Result<bool>, T::Fault> {
    txn.ensure_store(store)?;
    let fresh_after = unix_now().saturating_sub(refresh_after);
    let held = txn.object(store, digest)?;
    let recent = match held {
        Some(held) => held.stored_at >= fresh_after && txn.bytes_present(store, digest, held.place),
        None => false,
    };
    if recent {
        txn.discard(staged);
    } else {
        let place = held.map(|held| held.place);
        if let Err(refused) = txn.write_object(store, digest, size, staged, links, place)? {
            return Ok(Err(refused));
        }
        if held.is_none() {
            txn.refresh_targets(store, &links.targets, fresh_after)?;
            if links.overflowed {
                txn.mark_unscanned(store, digest, true)?;
            }
        }
    }
    if let Some(label) = label {
        txn.put_label(store, &label, digest)?;
    }
    Ok(Ok(held.is_none()))
}

/// Links a new event to the chain's current head and writes the head row
/// anew, with the segment the append sealed, if any.
fn append_event<T: Transaction>(
    txn: &mut T,
    append: ChainAppend,
    applied: bool,
) -> Result<Result<()>, T::Fault> {
    let ChainAppend {
        store,
        head_label,
        build,
    } = append;
    let head = txn.chain_tip(&store, &head_label)?;
    let exists = head.is_some();
    let link = match build(ChainTip { head, applied }) {
        Ok(link) => link,
        Err(refused) => return Ok(Err(refused)),
    };
    if !exists {
        // The chain's first event may be the store's first row.
        txn.ensure_store(&store)?;
    }
    if let Some(segment) = link.sealed {
        txn.add_segment(&store, Digest::of(&segment), segment)?;
    }
    txn.set_chain_head(&store, &head_label, link.head, exists)?;
    Ok(Ok(()))
}

/// The refusal of a write that took `store` from `before` to `after`,
/// past `quota`.
pub(crate) fn over_quota(
    store: &StoreId,
    quota: StoreQuota,
    before: &StoreStats,
    after: &StoreStats,
) -> StoreError {
    StoreError::QuotaExceeded {
        store: store.to_string(),
        footprint: before.footprint(),
        objects: before.objects,
        labels: before.labels,
        quota_bytes: quota.bytes,
        quota_objects: quota.objects,
        adds: after.footprint().saturating_sub(before.footprint()),
    }
}

fn not_found(store: &StoreId, digest: Digest) -> StoreError {
    StoreError::NotFound {
        store: store.to_string(),
        reference: digest.to_hex(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::engine::{Change, Engine, Location, Staged, open};
    use crate::links::Links;
    use crate::names::{Digest, StoreId};
    use crate::options::Options;

    async fn add(
        engine: &dyn Engine,
        store: &StoreId,
        content: &[u8],
        label: Option<&str>,
    ) -> Digest {
        let digest = Digest::of(content);
        let change = Change::AddObject {
            store: store.clone(),
            digest,
            size: content.len() as u64,
            links: Links::of(content, digest),
            staged: Staged::Inline(Arc::new(content.to_vec())),
            label: label.map(str::to_owned),
        };
        engine.apply(change).await.unwrap();
        digest
    }

    /// A collection listed an old, unreachable object; then a write named
    /// it from new labelled content, with a clock read before the
    /// collection's cutoff (a host whose clock is behind, or a write slow
    /// to commit), so the object's new age is still older than the cutoff.
    /// Its removal is refused all the same: the age moved since the
    /// listing. An object nothing touched goes.
    #[tokio::test]
    async fn an_object_linked_since_a_collection_listed_it_stays_whatever_the_clocks_say() {
        // Its local root's writes would show in another test's record of
        // a local root's steps.
        let _alone = crate::engine::WRITING.lock().await;
        let dir = tempfile::tempdir().unwrap();
        #[allow(unused_mut)] // Only a build with the shared engine adds one.
        let mut roots = vec![
            dir.path().join("local").display().to_string(),
            "mem:linked-since-listed".to_owned(),
            format!("log:{}", dir.path().join("log").display()),
        ];
        #[cfg(feature = "shared")]
        {
            let services = theater_store_testing::Services::shared();
            services.configure_environment();
            roots.push(services.new_database_root(&dir.path().join("cache")).0);
        }
        for root in roots {
            let mut options = Options {
                refresh_after: Duration::ZERO,
                ..Options::default()
            };
            let engine = open(&Location::parse(&root, &mut options).unwrap(), &options).unwrap();
            let store = StoreId::parse("listed").unwrap();
            let old = add(&*engine, &store, b"old", None).await;
            let untouched = add(&*engine, &store, b"untouched", None).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
            let listing = engine.snapshot(&store, "").unwrap().objects;
            let listed_at = |digest| {
                let row = listing.iter().find(|row| row.digest == digest);
                row.unwrap().stored_at
            };
            let naming = format!("names {}", old.to_hex());
            add(&*engine, &store, naming.as_bytes(), Some("head")).await;
            // The collection read the log after the label moved, as its
            // retries do, so only the age can keep the object.
            let log_end = engine.changes(&store, 0, 0).await.unwrap().last;
            for (digest, kept) in [(old, true), (untouched, false)] {
                let removal = Change::RemoveObject {
                    store: store.clone(),
                    digest,
                    referrers: Vec::new(),
                    listed_stored_at: listed_at(digest),
                    log_end,
                };
                let removed = engine.apply(removal).await.unwrap();
                assert_eq!(removed, !kept, "{root}: {}", digest.to_hex());
                assert_eq!(engine.has_object(&store, digest).await.unwrap(), kept);
            }
        }
    }
}
