//! Store totals and the space quotas charge for them.

/// Space a store is charged per object on top of its content: the file's
/// inode and partly used last block, and the object's index row. Small
/// objects cost a whole file-system block, so a flood of tiny objects is
/// charged for what it really takes on disk.
pub const OBJECT_OVERHEAD_BYTES: u64 = 4096;

/// Space a label takes in the index on top of twice its name (the label
/// table and the by-target index each hold it): the target hash twice, the
/// store id and b-tree overhead. Measured on 4 KiB pages. Every engine
/// charges this, so that one quota means the same on each; it is the
/// shared engine's cost, and more than the local engine takes since it
/// stopped indexing ordinary stores' labels by target (schema 11).
pub const LABEL_OVERHEAD_BYTES: u64 = 200;

/// Space a change log entry takes on top of its label's name: two refs,
/// its sequence, time and actor, and b-tree overhead.
pub const CHANGE_OVERHEAD_BYTES: u64 = 128;

/// Labels longer than this no longer fit in a b-tree cell: each of their
/// two index entries spills into an overflow page of its own.
pub(crate) const LABEL_SPILL_BYTES: u64 = 900;

/// What a spilled label takes: two overflow pages plus the parts kept in
/// the b-trees (measured: 9.4 KiB per 1,020-byte label).
pub(crate) const LABEL_SPILLED_COST: u64 = 2 * (4096 + 512) + LABEL_OVERHEAD_BYTES;

/// Space a label of `length` bytes takes in the index, as quotas count it:
/// twice its name plus [`LABEL_OVERHEAD_BYTES`], or 9.2 KiB for a label
/// over 900 bytes, which spills into overflow pages.
pub fn label_footprint(length: usize) -> u64 {
    let length = length as u64;
    if length > LABEL_SPILL_BYTES {
        LABEL_SPILLED_COST
    } else {
        2 * length + LABEL_OVERHEAD_BYTES
    }
}

/// Space a change log entry for a label of `length` bytes takes, as
/// quotas count it: the label plus [`CHANGE_OVERHEAD_BYTES`].
pub fn change_footprint(length: usize) -> u64 {
    length as u64 + CHANGE_OVERHEAD_BYTES
}

/// Totals for one store, read in O(1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// Distinct objects stored.
    pub objects: u64,
    /// Sum of their sizes in bytes, each distinct content counted once.
    pub bytes: u64,
    /// Labels defined.
    pub labels: u64,
    /// Space the labels take in the index, summed over labels as
    /// [`label_footprint`] estimates it.
    pub label_footprint: u64,
    /// Entries kept in the store's change log.
    pub changes: u64,
    /// Space the change log takes, summed over its entries as
    /// [`change_footprint`] estimates each.
    pub change_footprint: u64,
}

impl StoreStats {
    /// What the store takes on disk, as quotas count it: content, plus
    /// [`OBJECT_OVERHEAD_BYTES`] per object, plus its labels'
    /// [`label_footprint`]s, plus its change log.
    pub fn footprint(&self) -> u64 {
        self.bytes
            .saturating_add(self.objects.saturating_mul(OBJECT_OVERHEAD_BYTES))
            .saturating_add(self.label_footprint)
            .saturating_add(self.change_footprint)
    }
}

/// A store quota: the most a store may take, as [`StoreStats::footprint`]
/// counts it, and the most objects it may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreQuota {
    /// Footprint in bytes.
    pub bytes: u64,
    /// Distinct objects.
    pub objects: u64,
}

impl StoreQuota {
    /// Whether a write that took a store's totals from `before` to
    /// `after` breaks the quota: it grew the footprint past
    /// [`StoreQuota::bytes`] or the objects past [`StoreQuota::objects`].
    /// A write that grows neither passes even in a store already over its
    /// quota (one whose quota was lowered), so space can always be freed.
    pub fn refuses(&self, before: &StoreStats, after: &StoreStats) -> bool {
        let (was, is) = (before.footprint(), after.footprint());
        (is > was && is > self.bytes)
            || (after.objects > before.objects && after.objects > self.objects)
    }
}

/// Why [`InFlightWrites::hold`] refused: where the store stands with
/// every write in progress counted, and what the refused one would add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverQuota {
    /// The store's footprint, with what writes in progress hold.
    pub footprint: u64,
    /// Its objects, with the new ones writes in progress will add.
    pub objects: u64,
    /// What the refused write would have added.
    pub adds: u64,
}

/// What one writer's streamed writes hold while they stage, per store
/// (the host's meter keeps one per actor). A stream's bytes are admitted
/// only if the store's committed footprint, plus everything held, plus
/// them fits the quota, so that a stream cannot stage far past the quota
/// before its commit, which [`crate::ContentStore::within_quota`] checks
/// exactly. For one-shot writes use that check alone: it counts every
/// writer, this only one.
#[derive(Debug, Default)]
pub struct InFlightWrites {
    held: std::collections::HashMap<String, (u64, u64)>,
}

impl InFlightWrites {
    /// Holds `bytes`, and one object if `new_object`, for a write into
    /// `store` whose committed totals are `stats`, if it fits `quota`.
    pub fn hold(
        &mut self,
        store: &str,
        stats: &StoreStats,
        quota: StoreQuota,
        bytes: u64,
        new_object: bool,
    ) -> Result<(), OverQuota> {
        let (held_bytes, held_objects) = self.held.get(store).copied().unwrap_or_default();
        let footprint = stats.footprint().saturating_add(held_bytes);
        let objects = stats.objects.saturating_add(held_objects);
        if footprint.saturating_add(bytes) > quota.bytes || (new_object && objects >= quota.objects)
        {
            return Err(OverQuota {
                footprint,
                objects,
                adds: bytes,
            });
        }
        let entry = self.held.entry(store.to_owned()).or_default();
        entry.0 += bytes;
        entry.1 += u64::from(new_object);
        Ok(())
    }

    /// Gives back what a write held in `store`, once it ended.
    pub fn give_back(&mut self, store: &str, bytes: u64, objects: u64) {
        if let Some((held_bytes, held_objects)) = self.held.get_mut(store) {
            *held_bytes = held_bytes.saturating_sub(bytes);
            *held_objects = held_objects.saturating_sub(objects);
            if *held_bytes == 0 && *held_objects == 0 {
                self.held.remove(store);
            }
        }
    }

    /// Bytes writes in progress hold in `store`.
    pub fn held_bytes(&self, store: &str) -> u64 {
        self.held.get(store).map_or(0, |held| held.0)
    }

    /// Whether no write holds anything.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_in_progress_count_against_each_other_per_store() {
        let quota = StoreQuota {
            bytes: 100,
            objects: 2,
        };
        let stats = StoreStats::default();
        let mut writes = InFlightWrites::default();
        writes.hold("s", &stats, quota, 60, true).unwrap();
        // Alone, 60 more would fit; beside the first write it does not.
        let refused = writes.hold("s", &stats, quota, 60, true).unwrap_err();
        assert_eq!((refused.footprint, refused.adds), (60, 60));
        // Another store has its own quota.
        writes.hold("t", &stats, quota, 60, true).unwrap();
        writes.hold("s", &stats, quota, 40, true).unwrap();
        // Two objects held: a third is refused whatever its size.
        assert!(writes.hold("s", &stats, quota, 0, true).is_err());
        writes.give_back("s", 100, 2);
        writes.give_back("t", 60, 1);
        assert!(writes.is_empty());
        // Committed totals count too.
        let full = StoreStats {
            bytes: 90,
            ..StoreStats::default()
        };
        assert!(writes.hold("s", &full, quota, 11, false).is_err());
        writes.hold("s", &full, quota, 10, false).unwrap();
    }

    #[test]
    fn a_quota_refuses_growth_past_it_never_shrinking() {
        let quota = StoreQuota {
            bytes: 10_000,
            objects: 2,
        };
        let at = |objects, bytes| StoreStats {
            objects,
            bytes,
            ..StoreStats::default()
        };
        assert!(!quota.refuses(&at(0, 0), &at(1, 5_000)));
        // 4096 of overhead per object: the second object's bytes do not fit.
        assert!(quota.refuses(&at(1, 5_000), &at(2, 6_000)));
        assert!(quota.refuses(&at(2, 0), &at(3, 0)));
        // Over the quota already (lowered since): freeing passes, as does
        // a write that adds nothing.
        assert!(!quota.refuses(&at(5, 90_000), &at(4, 80_000)));
        assert!(!quota.refuses(&at(5, 90_000), &at(5, 90_000)));
        assert!(quota.refuses(&at(5, 90_000), &at(5, 90_001)));
    }
}
