//! Store totals and the space quotas charge for them.

/// Space a store is charged per object on top of its content: the file's
/// inode and partly used last block, and the object's index row. Small
/// objects cost a whole file-system block, so a flood of tiny objects is
/// charged for what it really takes on disk.
pub const OBJECT_OVERHEAD_BYTES: u64 = 4096;

/// Space a label takes in the index on top of twice its name (the label
/// table and the by-target index each hold it): the target hash twice, the
/// store id and b-tree overhead. Measured on 4 KiB pages.
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
