//! The one place where what an actor keeps is admitted and charged.
//!
//! Every byte an actor causes to be kept (content, labels, chain events,
//! streamed writes in progress) passes through [`Meter`]: a write is first
//! *reserved* against the store's quota and the actor's budget, counting
//! everything other writes of this actor have reserved and not yet
//! finished; then it is *settled* (charged for what it really added) or
//! *released* (a refused or failed write, which leaves nothing charged).
//! Parallel writers therefore cannot each fit on their own and overflow
//! together. The store-quota half of the rule is the core's
//! [`InFlightWrites`], which the HTTP gateway follows too.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use theater_store::{InFlightWrites, StoreQuota, StoreStats};

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
    /// The same, per store, admitted by the core's store-quota rule.
    in_flight: InFlightWrites,
}

/// Space held for one write until it is settled or released. Not `Clone`:
/// each reservation is given back exactly once.
#[derive(Debug)]
#[must_use = "a reservation is settled or released"]
pub(crate) struct Reservation {
    store: String,
    bytes: u64,
    objects: u64,
}

impl Reservation {
    /// The bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Meter {
    /// Footprint charged so far.
    pub(crate) fn charged(&self) -> u64 {
        self.charged
    }

    /// Reserves `bytes` (and one object, if `new_object`) in `store`, whose
    /// totals are `stats`, or says which quota it would break.
    pub(crate) fn reserve(
        &mut self,
        limits: &Limits,
        store: &str,
        stats: &StoreStats,
        bytes: u64,
        new_object: bool,
    ) -> Result<Reservation, HostError> {
        let mut reservation = Reservation {
            store: store.to_owned(),
            bytes: 0,
            objects: 0,
        };
        self.grow(limits, &mut reservation, stats, bytes, new_object)?;
        Ok(reservation)
    }

    /// Adds `bytes` (and one object, if `new_object`) to `reservation`, as
    /// a streamed write grows; refused like [`Meter::reserve`], leaving the
    /// reservation as it was.
    pub(crate) fn grow(
        &mut self,
        limits: &Limits,
        reservation: &mut Reservation,
        stats: &StoreStats,
        bytes: u64,
        new_object: bool,
    ) -> Result<(), HostError> {
        let store = reservation.store.as_str();
        let quota = StoreQuota {
            bytes: limits.max_store_bytes,
            objects: limits.max_store_objects,
        };
        let admitted = self.in_flight.hold(store, stats, quota, bytes, new_object);
        if let Err(over) = admitted {
            return Err(HostError::StoreQuota {
                store: store.to_owned(),
                footprint: over.footprint,
                objects: over.objects,
                labels: stats.labels,
                quota_bytes: quota.bytes,
                quota_objects: quota.objects,
                adds: over.adds,
            });
        }
        let objects = u64::from(new_object);
        if let Err(refused) = self.actor_room(limits, store, bytes) {
            self.in_flight.give_back(store, bytes, objects);
            return Err(refused);
        }
        self.reserved += bytes;
        reservation.bytes += bytes;
        reservation.objects += objects;
        Ok(())
    }

    /// Ends `reservation`, charging `kept` bytes: what the write really
    /// added (nothing for content the store already held).
    pub(crate) fn settle(&mut self, reservation: Reservation, kept: u64) {
        self.release(reservation);
        self.charged = self.charged.saturating_add(kept);
    }

    /// Ends `reservation` with nothing charged: the write was refused or
    /// failed.
    pub(crate) fn release(&mut self, reservation: Reservation) {
        self.reserved = self.reserved.saturating_sub(reservation.bytes);
        self.in_flight
            .give_back(&reservation.store, reservation.bytes, reservation.objects);
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
        let limits = limits(100, 1000);
        let stats = StoreStats::default();
        let mut meter = Meter::default();
        let first = meter.reserve(&limits, "s", &stats, 60, true).unwrap();
        // Alone, 60 more would fit; beside the first write it does not.
        assert!(meter.reserve(&limits, "s", &stats, 60, true).is_err());
        // Another store has its own quota.
        let other = meter.reserve(&limits, "t", &stats, 60, true).unwrap();
        meter.release(first);
        let again = meter.reserve(&limits, "s", &stats, 60, true).unwrap();
        meter.settle(again, 60);
        meter.settle(other, 0);
        assert_eq!(meter.charged(), 60);
        assert_eq!(meter.reserved, 0);
        assert!(meter.in_flight.is_empty());
    }

    #[test]
    fn the_actor_budget_covers_reservations_and_the_chain() {
        let limits = limits(1000, 100);
        let stats = StoreStats::default();
        let mut meter = Meter::default();
        let mut writer = meter.reserve(&limits, "s", &stats, 40, true).unwrap();
        meter.grow(&limits, &mut writer, &stats, 40, false).unwrap();
        assert!(meter.actor_room(&limits, "s", 21).is_err());
        meter.actor_room(&limits, "s", 20).unwrap();
        // A refused growth leaves the reservation as it was.
        assert!(meter.grow(&limits, &mut writer, &stats, 30, false).is_err());
        assert_eq!(writer.bytes(), 80);
        meter.settle(writer, 80);
        meter.charge_chain(20);
        assert!(meter.reserve(&limits, "t", &stats, 1, true).is_err());
    }
}
