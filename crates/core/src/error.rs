//! The one error type of the store. Every variant names the store, label,
//! ref or path it concerns, so a message is useful without a backtrace.

use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Boxed source error, so that no dependency's error type leaks into our API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in a store operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A content ref is not 64 lowercase hex digits (a BLAKE3 digest).
    #[error("invalid content ref \"{reference}\": {reason}")]
    InvalidRef {
        /// The ref as given, escaped and shortened for display.
        reference: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A label is empty, too long or contains NUL.
    #[error("invalid label \"{label}\": {reason}")]
    InvalidLabel {
        /// The label as given, escaped and shortened for display.
        label: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A store id is empty, too long or uses characters outside `[A-Za-z0-9._-]`.
    #[error("invalid store id \"{id}\": {reason}")]
    InvalidStoreId {
        /// The id as given, escaped and shortened for display.
        id: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The store holds no content with this ref.
    #[error("store {store}: content {reference} not found")]
    NotFound {
        /// The store that was asked.
        store: String,
        /// The ref that is missing.
        reference: String,
    },
    /// A write was refused inside its transaction because it would have
    /// grown the store past the quota it was made under
    /// ([`crate::ContentStore::within_quota`]). Nothing of it was kept.
    #[error(
        "store {store} quota exceeded: it takes {footprint} bytes on disk in {objects} objects \
         and {labels} labels, the quota is {quota_bytes} bytes and {quota_objects} objects, and \
         this call adds {adds} bytes"
    )]
    QuotaExceeded {
        /// The store.
        store: String,
        /// What it takes, as [`crate::StoreStats::footprint`] counts it.
        footprint: u64,
        /// Its objects.
        objects: u64,
        /// Its labels.
        labels: u64,
        /// The quota in bytes.
        quota_bytes: u64,
        /// The quota in objects.
        quota_objects: u64,
        /// What the write would have added.
        adds: u64,
    },
    /// A read of a store's change log from a point older than what is
    /// kept: the log was trimmed past it (see [`crate::Options::change_retention`]).
    #[error(
        "store {store}: the change log no longer holds what came after change {since}; \
         the oldest change kept is {oldest}, so resume from there or copy the store whole"
    )]
    ChangesTrimmed {
        /// The store whose log was asked.
        store: String,
        /// The sequence asked to read after.
        since: u64,
        /// The oldest sequence the log still holds (or will hold next).
        oldest: u64,
    },
    /// A change cursor's record does not decode (changed by hand, or
    /// damaged): the consumer cannot know where to resume.
    #[error(
        "store {store}: the change cursor of {consumer} is damaged ({reason}); start that \
         consumer again from a chosen point (`theater-store run … --watch-since SEQ`), which \
         writes the cursor anew"
    )]
    CursorDamaged {
        /// The store the cursor follows.
        store: String,
        /// The consumer whose cursor it is.
        consumer: String,
        /// What is wrong.
        reason: String,
    },
    /// Other writers kept changing the labels an operation had to move
    /// together, try after try.
    #[error("store {store}: {action} gave up: other writers kept changing the same labels")]
    Contended {
        /// The store.
        store: String,
        /// What gave up.
        action: &'static str,
    },
    /// The bytes on disk no longer hash to their ref.
    #[error(
        "store {store}: content {reference} is corrupted on disk (its bytes hash to {actual}); \
         run `theater-store verify {store}` to quarantine it"
    )]
    Corrupted {
        /// The store holding the object.
        store: String,
        /// The ref the object is filed under.
        reference: String,
        /// What the bytes on disk actually hash to.
        actual: String,
    },
    /// The index holds the content but its bytes are gone (deleted by
    /// hand, lost in a crash of the disk): damage, like
    /// [`StoreError::Corrupted`], and not a ref the store never held.
    #[error(
        "store {store}: content {reference} is indexed but its bytes are gone; run \
         `theater-store verify {store}`, then restore it from a package (`import`) or by \
         storing the same bytes again"
    )]
    Missing {
        /// The store holding the object.
        store: String,
        /// The ref the object is filed under.
        reference: String,
    },
    /// A range read reaches past the end of the content.
    #[error("store {store}: range {start}..{end} is outside content {reference} of {size} bytes")]
    InvalidRange {
        /// The store that was asked.
        store: String,
        /// The content's ref.
        reference: String,
        /// The range asked for.
        start: u64,
        /// Its end (exclusive).
        end: u64,
        /// The content's size.
        size: u64,
    },
    /// An actor id is empty, too long or uses characters outside `[A-Za-z0-9._:-]`.
    #[error("invalid actor id \"{id}\": {reason}")]
    InvalidActorId {
        /// The id as given, escaped and shortened for display.
        id: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An actor's event chain is not as its appends leave it: its head
    /// label was set by hand and carries no length, or an event does not
    /// decode. No event is appended to such a chain, so that the damage
    /// stays visible (a head merely moved back is caught by verify-chain).
    #[error(
        "event chain of actor {actor} is damaged: {reason}; run `theater-store verify-chain {actor}`"
    )]
    ChainDamaged {
        /// The actor whose chain it is.
        actor: String,
        /// What is wrong.
        reason: String,
    },
    /// Two trims of one chain ran at once; the other one's checkpoint
    /// stands and this one changed nothing.
    #[error(
        "event chain of actor {actor}: another trim moved its checkpoint meanwhile; nothing was \
         trimmed, trim again"
    )]
    ChainTrimRaced {
        /// The actor whose chain it is.
        actor: String,
    },
    /// A filesystem operation failed.
    #[error("store {store}: {action} {path} failed: {source}")]
    Io {
        /// The store concerned (or `root` for root-wide work).
        store: String,
        /// What was being done, e.g. "writing object".
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The label index (SQLite) is damaged: its pages or its write-ahead
    /// log fail SQLite's own checks.
    #[error(
        "store root {root}: the label index (index.sqlite) is damaged ({action}: {reason}). \
         The content files under stores/ are not affected. To recover, restore the root from \
         a package (`theater-store --root NEW import --all BACKUP`), or move index.sqlite, \
         index.sqlite-wal and index.sqlite-shm aside and run `theater-store reindex` to index \
         the content files again (see docs/RELIABILITY.md, \"Index damage\")"
    )]
    IndexDamaged {
        /// The root whose index is damaged.
        root: PathBuf,
        /// What was being done.
        action: &'static str,
        /// SQLite's words.
        reason: String,
    },
    /// The root's index is gone (missing or empty) while its store
    /// directories hold content files: opening it would start an empty
    /// index and hide them, so it is refused until an operator decides.
    #[error(
        "store root {root}: its label index (index.sqlite) is missing, but the content files \
         of {stores} store(s) remain under stores/. Nothing was changed. Restore the root \
         from a package (`theater-store --root NEW import --all BACKUP`), or run \
         `theater-store reindex` to index the content files again (labels, chains and content \
         of up to 16 KiB lived only in the index and cannot be rebuilt; see \
         docs/RELIABILITY.md, \"Index damage\")"
    )]
    IndexMissing {
        /// The root.
        root: PathBuf,
        /// Store directories holding content files.
        stores: usize,
    },
    /// The disk holding a local root is full. Removing labels and
    /// collecting garbage still work: they may use the root's space
    /// reserve ([`crate::Options::space_reserve`]).
    #[error(
        "store root {root}: {action} failed: the disk is full. Free space with \
         `theater-store unlabel` and `theater-store gc` (they may use the root's space reserve), \
         or elsewhere on the disk"
    )]
    DiskFull {
        /// The root whose disk is full.
        root: PathBuf,
        /// What was being done.
        action: &'static str,
    },
    /// The label index (SQLite) failed.
    #[error("store root {root}: label index {action} failed: {source}")]
    Index {
        /// The root whose index failed.
        root: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The database's error.
        #[source]
        source: BoxError,
    },
    /// An import package is truncated, altered or malformed; nothing was imported.
    #[error("store {store}: package refused, nothing was imported: {reason}")]
    InvalidPackage {
        /// The store the package was being imported into.
        store: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No root was given and none could be found in the environment.
    #[error(
        "no default store root: set THEATER_STORE_ROOT or give a root directory explicitly \
         (the platform data directory is unknown here)"
    )]
    NoDefaultRoot,
    /// A store call made outside a Tokio runtime: the store runs its file
    /// and database work on Tokio's blocking pool.
    #[error(
        "the store was called outside a Tokio runtime: theater-store runs its work on Tokio \
         (call it from within `#[tokio::main]`, a `tokio::runtime::Runtime`'s `block_on`, or a \
         task it spawned)"
    )]
    NoRuntime,
    /// A root string that names no usable root.
    #[error("invalid store root {root}: {reason}")]
    InvalidRoot {
        /// The root string, without any password.
        root: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A server the shared engine depends on failed or could not be reached.
    #[error("store root {root}: {service} at {at}: {action} failed: {source}")]
    Service {
        /// The root string, without any password.
        root: String,
        /// Which service: PostgreSQL or the object store.
        service: &'static str,
        /// Where it was expected (host and port, or bucket and endpoint).
        at: String,
        /// What was being done.
        action: &'static str,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// A log root (`log:DIR`) is open in another process, which has it to
    /// itself while it runs.
    #[error(
        "store root {root} is open in another process: a log root belongs to one process at a \
         time. Stop that process, or reach the root through it (for example its \
         `theater-store serve`)"
    )]
    RootInUse {
        /// The root string.
        root: String,
    },
    /// The root's background writer has stopped (the process is shutting down
    /// or the writer panicked).
    #[error("store root {root}: the index writer has stopped")]
    WriterStopped {
        /// The root whose writer stopped.
        root: PathBuf,
    },
}

/// Escapes caller-supplied text (control characters, quotes) and shortens
/// it for error messages, so that a 4 KiB label does not turn into a 4 KiB
/// log line and a NUL or newline cannot garble one.
pub(crate) fn shorten(text: &str) -> String {
    const MAX_BYTES: usize = 100;
    let escaped: String = text.escape_debug().collect();
    if escaped.len() <= MAX_BYTES {
        return escaped;
    }
    let mut cut = MAX_BYTES;
    while !escaped.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &escaped[..cut], text.len())
}

/// What kind of failure an error is, for code that acts on the kind
/// rather than the message: each interface maps kinds to its own error
/// type in one place, and event chains record the kind's name.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The content or label is not there.
    NotFound,
    /// The caller may not do this (not granted, read-only, a store id
    /// that could not be one).
    AccessDenied,
    /// Content, a read, a range, a batch or a listing is over its limit.
    TooLarge,
    /// A quota or a count limit would be passed.
    QuotaExceeded,
    /// Stored bytes no longer match their ref, or are gone.
    Corrupted,
    /// A label that could not be one.
    InvalidLabel,
    /// A ref (or a range of one) that could not be one.
    InvalidRef,
    /// A store id that could not be one.
    InvalidStoreId,
    /// The call ran past its deadline.
    TimedOut,
    /// A value is not what the operation needs (a number, say).
    BadValue,
    /// Other writers kept changing what the operation needed.
    Contended,
    /// History asked for is older than what is kept.
    Trimmed,
    /// Anything else: storage, the index, a server.
    Io,
}

impl ErrorKind {
    /// The kind's name, as event chains record it (`not-found`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not-found",
            Self::AccessDenied => "access-denied",
            Self::TooLarge => "too-large",
            Self::QuotaExceeded => "quota-exceeded",
            Self::Corrupted => "corrupted",
            Self::InvalidLabel => "invalid-label",
            Self::InvalidRef => "invalid-ref",
            Self::InvalidStoreId => "invalid-store-id",
            Self::TimedOut => "timed-out",
            Self::Trimmed => "trimmed",
            Self::BadValue => "bad-value",
            Self::Contended => "contended",
            Self::Io => "io",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StoreError {
    /// Whether the disk ran out of space: the index reported it full, or a
    /// file operation failed with no space left.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::DiskFull { .. } => true,
            Self::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        }
    }

    /// Whether a server a shared root depends on could not be reached or
    /// failed: worth trying again once it is back, unlike every other
    /// error, which trying again would only repeat.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Service { .. })
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::QuotaExceeded { .. } => ErrorKind::QuotaExceeded,
            Self::ChangesTrimmed { .. } => ErrorKind::Trimmed,
            Self::Contended { .. } => ErrorKind::Contended,
            Self::Corrupted { .. } | Self::Missing { .. } | Self::CursorDamaged { .. } => {
                ErrorKind::Corrupted
            }
            Self::InvalidLabel { .. } => ErrorKind::InvalidLabel,
            Self::InvalidRef { .. } | Self::InvalidRange { .. } => ErrorKind::InvalidRef,
            Self::InvalidStoreId { .. } => ErrorKind::InvalidStoreId,
            _ => ErrorKind::Io,
        }
    }
}

/// A [`StoreError::Io`] about `path` in `store` (a store id).
pub(crate) fn io_error(
    store: &impl std::fmt::Display,
    action: &'static str,
    path: &Path,
    source: std::io::Error,
) -> StoreError {
    StoreError::Io {
        store: store.to_string(),
        action,
        path: path.to_owned(),
        source,
    }
}
