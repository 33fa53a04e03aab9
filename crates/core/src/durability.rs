//! [`Durability`]: what an acknowledged write survives.

/// How hard a write works to survive failures before it is acknowledged.
///
/// Either way, a write is atomic: no reader and no crash ever sees part of an
/// object or a half-made label change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// An acknowledged write survives the process being killed; a power loss
    /// or kernel crash may lose the last moments of writes (a lost object
    /// then reads as [`crate::StoreError::Corrupted`] or `NotFound`, never as
    /// wrong bytes). No fsync on the write path.
    #[default]
    Buffered,
    /// An acknowledged write also survives power loss. Exactly what a batch
    /// of writes touched is flushed before any of them is acknowledged: the
    /// staged object files, the directories they are renamed into, and the
    /// index's write-ahead log. Concurrent writes share one batch (group
    /// commit), so they share the directory and log flushes.
    Synced,
}
