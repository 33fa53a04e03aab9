//! [`Options`]: every tunable of a store root, with documented defaults.

use std::time::Duration;

use crate::durability::Durability;

/// How a [`crate::StoreRoot`] stores and writes. `Options::default()` is
/// what [`crate::StoreRoot::new`] uses; change single fields with struct
/// update syntax:
///
/// ```
/// use theater_store::{Durability, Options};
/// let options = Options { durability: Durability::Synced, ..Options::default() };
/// assert_eq!(options.inline_threshold, 16 * 1024);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// What an acknowledged write survives. Default: [`Durability::Buffered`].
    pub durability: Durability,
    /// Content up to this many bytes is kept inside the root's index
    /// database rather than in a file of its own: one row instead of a
    /// file, a temporary file and a rename. At most
    /// [`Options::MAX_INLINE_THRESHOLD`]; 0 keeps every object in a file.
    /// Default: 16 KiB. Changing it later is safe: each object stays where
    /// it was written, and reads find it either way.
    pub inline_threshold: usize,
    /// The most queued writes the writer takes at once; they share
    /// transactions and, in synced mode, flushes. Default: 1024.
    pub max_batch: usize,
    /// How long one write transaction may keep the root's write lock
    /// before it commits and lets other processes in. Default: 50 ms.
    pub max_transaction_time: Duration,
    /// Read connections kept open between reads; bursts beyond this open
    /// more and close them afterwards. Default: 16.
    pub max_idle_readers: usize,
    /// How old stored content must be before storing it again rewrites it
    /// and refreshes its age, so that a garbage collection with a grace
    /// period cannot take content from under a caller who just stored it.
    /// Grace periods should be well above it. Default:
    /// [`crate::REFRESH_AFTER`] (60 s).
    pub refresh_after: Duration,
    /// Memory for answering repeated reads (a label's target, a small
    /// object's verified bytes) without the index, for as long as nothing
    /// in the root changes; any commit by any process makes them be read
    /// again. 0 turns it off. Default: 16 MiB.
    pub read_cache_bytes: usize,
    /// How long each store's change log keeps an entry: garbage
    /// collection trims entries older than this, except the newest
    /// [`Options::change_retention_min`]. Readers of the log (watchers,
    /// incremental syncs) that fall further behind must start again from
    /// a whole copy. Default: 7 days.
    pub change_retention: Duration,
    /// The fewest change log entries a store keeps, however old.
    /// Default: 10,000.
    pub change_retention_min: u64,
    /// Shared roots: connections each process keeps to PostgreSQL at
    /// most. Default: 16.
    pub shared_connections: usize,
    /// Shared roots: changes applied together share one transaction (one
    /// commit, one flush of PostgreSQL's log), up to this many. Default:
    /// 256.
    pub shared_batch: usize,
    /// Shared roots: how many bytes this host's read cache of objects may
    /// hold. A root string's `cache_bytes=N` sets it. Default: 1 GiB.
    pub shared_cache_bytes: u64,
    /// Local roots: disk space kept aside in a file of the root
    /// (`space.reserve`), so that removing labels and collecting garbage
    /// still work once the disk is full: a change that only frees space
    /// and finds the disk full gives the file up and is tried again. The
    /// file is made again once there is room for it twice over. 0 keeps
    /// none. Default: 16 MiB.
    pub space_reserve: u64,
    /// How much small content (kept in the index once published) a
    /// package import holds in memory while it checks the package; the
    /// rest waits in a temporary file in the root's directory (the
    /// system's for other roots), so that a package of any size imports
    /// in bounded memory. Default: 64 MiB.
    pub import_memory_bytes: u64,
    /// Log roots (`log:DIR`): the size below which the log is never
    /// compacted. Past it, a log holding more than twice what is live
    /// (after labels moved on and garbage was collected) is rewritten
    /// with only the live state, writers waiting meanwhile. Default:
    /// 64 MiB.
    pub log_compact_min: u64,
    /// Log roots: content larger than this many bytes is kept in a file of
    /// its own beside the log (with its outboard, as on a local root)
    /// rather than in the log: it streams in through a temporary file
    /// instead of memory, reads by range without being read whole, and
    /// compaction never copies it. Smaller content is appended to the log,
    /// which costs no file to be made. 0 keeps every object in a file.
    /// Default: 1 MiB.
    pub log_file_threshold: usize,
}

impl Options {
    /// The largest allowed [`Options::inline_threshold`]: bigger values
    /// would make index pages, and every reader's cache, churn.
    pub const MAX_INLINE_THRESHOLD: usize = 1 << 20;
}

impl Default for Options {
    fn default() -> Self {
        Self {
            durability: Durability::default(),
            inline_threshold: 16 << 10,
            max_batch: 1024,
            max_transaction_time: Duration::from_millis(50),
            max_idle_readers: 16,
            refresh_after: crate::REFRESH_AFTER,
            read_cache_bytes: 16 << 20,
            change_retention: Duration::from_secs(7 * 24 * 60 * 60),
            change_retention_min: 10_000,
            shared_connections: 16,
            shared_batch: 256,
            shared_cache_bytes: 1 << 30,
            space_reserve: 16 << 20,
            import_memory_bytes: 64 << 20,
            log_compact_min: 64 << 20,
            log_file_threshold: 1 << 20,
        }
    }
}
