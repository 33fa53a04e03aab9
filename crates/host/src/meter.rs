//! The one place where what an actor keeps is charged to its budget.
//!
//! Every byte an actor causes to be kept (content, labels, chain events,
//! streamed writes in progress) passes through [`Meter`]: a write first
//! *reserves* the most it could add against the actor's budget, counting
//! what its other writes in progress hold; then it is *settled*, charged
//! exactly what it added (what the store's totals grew by, which the
//! write's own transaction measured), the rest given back. Parallel writes
//! therefore cannot each fit on their own and overflow the budget
//! together.
//!
//! The store quota is not checked here but inside each write's transaction
//! (`ContentStore::within_quota`), where every writer of the store, in any
//! process, is counted. Only a streamed write's staging is held against
//! it here as it grows ([`Meter::reserve_staging`]), so that a stream
//! cannot stage far past the quota before its final, checked, commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use theater_store::{ContentStore, InFlightWrites, StoreError, StoreQuota, StoreStats};

use crate::error::HostError;
use crate::policy::Limits;

/// The actor's running account: what it has added, and what its writes
/// in progress hold.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    /// Footprint charged so far, across stores and the chain.
    charged: u64,
    /// Footprint reserved by writes not yet settled, across stores.
    reserved: u64,
    /// What streamed writes in progress have staged, per store.
    staging: InFlightWrites,
}

/// Budget held for one write until it is settled. Not `Clone`: each
/// reservation is given back exactly once.
#[derive(Debug)]
#[must_use = "a reservation is settled"]
pub(crate) struct Reservation {
    store: String,
    /// Held on the actor's budget.
    bytes: u64,
    /// Held on the store's quota for staging (streams only).
    staged_bytes: u64,
    staged_objects: u64,
}

#[cfg(test)]
impl Reservation {
    /// The bytes held on the actor's budget.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// A write admitted by `TheaterCtx::admit` or `TheaterCtx::reserve_stream`:
/// the handle to write through, and the budget held until it is settled.
#[derive(Debug)]
#[must_use = "an admitted write is settled"]
pub(crate) struct Admitted {
    /// The store under the actor's store quota, which the core checks in
    /// each write's transaction; it also counts what the writes added.
    pub(crate) store: ContentStore,
    pub(crate) reservation: Reservation,
}

impl Meter {
    /// Footprint charged so far.
    pub(crate) fn charged(&self) -> u64 {
        self.charged
    }

    /// Reserves `bytes` of the actor's budget for a write into `store`.
    pub(crate) fn reserve(
        &mut self,
        limits: &Limits,
        store: &str,
        bytes: u64,
    ) -> Result<Reservation, HostError> {
        self.actor_room(limits, store, bytes)?;
        self.reserved += bytes;
        Ok(Reservation {
            store: store.to_owned(),
            bytes,
            staged_bytes: 0,
            staged_objects: 0,
        })
    }

    /// Adds `bytes` of the actor's budget to `reservation`; refused like
    /// [`Meter::reserve`], leaving it as it was.
    pub(crate) fn reserve_more(
        &mut self,
        limits: &Limits,
        reservation: &mut Reservation,
        bytes: u64,
    ) -> Result<(), HostError> {
        self.actor_room(limits, &reservation.store, bytes)?;
        self.reserved += bytes;
        reservation.bytes += bytes;
        Ok(())
    }

    /// Reserves room for a streamed write to stage `bytes` (and one
    /// object, if `new_object`) in `store`, whose committed totals are
    /// `stats`: on the actor's budget, and on the store's quota beside
    /// what the actor's other streams have staged. Refused like
    /// [`Meter::reserve`], or with [`StoreError::QuotaExceeded`], leaving
    /// the reservation as it was.
    pub(crate) fn reserve_staging(
        &mut self,
        limits: &Limits,
        reservation: &mut Reservation,
        stats: &StoreStats,
        bytes: u64,
        new_object: bool,
    ) -> Result<(), HostError> {
        let store = reservation.store.as_str();
        let quota = store_quota(limits);
        let admitted = self.staging.hold(store, stats, quota, bytes, new_object);
        if let Err(over) = admitted {
            return Err(HostError::Store(StoreError::QuotaExceeded {
                store: store.to_owned(),
                footprint: over.footprint,
                objects: over.objects,
                labels: stats.labels,
                quota_bytes: quota.bytes,
                quota_objects: quota.objects,
                adds: over.adds,
            }));
        }
        let objects = u64::from(new_object);
        if let Err(refused) = self.actor_room(limits, store, bytes) {
            self.staging.give_back(store, bytes, objects);
            return Err(refused);
        }
        self.reserved += bytes;
        reservation.bytes += bytes;
        reservation.staged_bytes += bytes;
        reservation.staged_objects += objects;
        Ok(())
    }

    /// Ends `reservation`, charging `kept` bytes: what the write really
    /// added to the store (nothing for a write refused or failed).
    pub(crate) fn settle(&mut self, reservation: Reservation, kept: u64) {
        self.reserved = self.reserved.saturating_sub(reservation.bytes);
        self.staging.give_back(
            &reservation.store,
            reservation.staged_bytes,
            reservation.staged_objects,
        );
        self.charged = self.charged.saturating_add(kept);
    }

    /// Whether the actor's budget still has `bytes` free, counting what is
    /// reserved (a write into `store`, or one of its chain events).
    pub(crate) fn actor_room(
        &self,
        limits: &Limits,
        store: &str,
        bytes: u64,
    ) -> Result<(), HostError> {
        let added = self.charged.saturating_add(self.reserved);
        if added.saturating_add(bytes) > limits.max_actor_bytes {
            return Err(HostError::ActorQuota {
                store: store.to_owned(),
                added,
                quota: limits.max_actor_bytes,
                adds: bytes,
            });
        }
        Ok(())
    }

    /// Charges `bytes` the actor's chain grew by.
    pub(crate) fn charge_chain(&mut self, bytes: u64) {
        self.charged = self.charged.saturating_add(bytes);
    }
}

/// The store quota `limits` set, as the core checks it.
pub(crate) fn store_quota(limits: &Limits) -> StoreQuota {
    StoreQuota {
        bytes: limits.max_store_bytes,
        objects: limits.max_store_objects,
    }
}

/// One of an actor's open-stream slots, given back when dropped (with
/// the reader or writer that holds it).
#[derive(Debug)]
pub(crate) struct StreamSlot {
    open: Arc<AtomicUsize>,
}

impl StreamSlot {
    /// The slot just taken from `open`, the actor's count of open streams.
    pub(crate) fn taken_from(open: Arc<AtomicUsize>) -> Self {
        Self { open }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(store: u64, actor: u64) -> Limits {
        Limits {
            max_store_bytes: store,
            max_actor_bytes: actor,
            ..Limits::default()
        }
    }

    #[test]
    fn writes_in_progress_count_against_each_other() {
        let limits = limits(1000, 100);
        let mut meter = Meter::default();
        let first = meter.reserve(&limits, "s", 60).unwrap();
        // Alone, 60 more would fit the budget; beside the first write not.
        assert!(meter.reserve(&limits, "t", 60).is_err());
        // Settled for less than it held, the rest is free again.
        meter.settle(first, 10);
        let second = meter.reserve(&limits, "t", 90).unwrap();
        meter.settle(second, 0);
        assert_eq!(meter.charged(), 10);
        assert_eq!(meter.reserved, 0);
    }

    #[test]
    fn streams_stage_against_the_store_quota_beside_each_other() {
        let limits = limits(100, 1000);
        let stats = StoreStats::default();
        let mut meter = Meter::default();
        let mut first = meter.reserve(&limits, "s", 0).unwrap();
        meter
            .reserve_staging(&limits, &mut first, &stats, 60, true)
            .unwrap();
        let mut second = meter.reserve(&limits, "s", 0).unwrap();
        let refused = meter.reserve_staging(&limits, &mut second, &stats, 60, true);
        assert!(matches!(
            refused,
            Err(HostError::Store(StoreError::QuotaExceeded { adds: 60, .. }))
        ));
        assert_eq!(second.bytes(), 0);
        meter.settle(first, 0);
        meter
            .reserve_staging(&limits, &mut second, &stats, 60, true)
            .unwrap();
        meter.settle(second, 60);
        assert!(meter.staging.is_empty());
        assert_eq!(meter.charged(), 60);
    }

    #[test]
    fn the_actor_budget_covers_reservations_and_the_chain() {
        let limits = limits(1000, 100);
        let stats = StoreStats::default();
        let mut meter = Meter::default();
        let mut writer = meter.reserve(&limits, "s", 40).unwrap();
        meter
            .reserve_staging(&limits, &mut writer, &stats, 40, false)
            .unwrap();
        assert!(meter.actor_room(&limits, "s", 21).is_err());
        meter.actor_room(&limits, "s", 20).unwrap();
        // A refused growth leaves the reservation as it was.
        let refused = meter.reserve_staging(&limits, &mut writer, &stats, 30, false);
        assert!(matches!(refused, Err(HostError::ActorQuota { .. })));
        assert_eq!(writer.bytes(), 80);
        meter.settle(writer, 80);
        meter.charge_chain(20);
        assert!(meter.reserve(&limits, "t", 1).is_err());
    }
}
