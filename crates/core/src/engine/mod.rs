//! The engine boundary: everything below it knows where bytes and rows
//! live; everything above it (validation, hashing, read verification,
//! verify/gc decisions, packages, progress) is written once in terms of it.
//!
//! [`Engine`] is one trait; each engine is one module implementing it:
//! `local/` (a SQLite index and object files under one directory),
//! `shared/` (PostgreSQL rows and S3 objects shared by many hosts, the
//! `shared` feature) and `mem.rs` (everything in this process's memory).
//! A root string picks one ([`Location::parse`]); nothing above this
//! module knows which it has.

mod apply;
mod huge_pages;
mod journal;
mod layout;
mod local;
mod mem;
#[cfg(feature = "shared")]
pub(crate) mod shared;
mod steps;

#[cfg(test)]
pub(crate) use local::WRITING;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use crate::error::{Result, StoreError};
use crate::links::Links;
use crate::names::{Digest, StoreId};
use crate::options::Options;
use crate::stats::{StoreQuota, StoreStats};
use crate::task::Progress;
use crate::tree::RandomAccess;

/// Content up to this size is read on the calling thread (an object file,
/// a cached copy): a round trip through a thread pool costs more than
/// reading it.
pub(crate) const READ_ON_CALLER_MAX: u64 = 64 << 10;

/// Where a root's engine keeps it.
#[derive(Clone, Debug)]
pub(crate) enum Location {
    /// A local directory.
    Dir(PathBuf),
    /// A root in this process's memory (`mem:NAME`).
    Memory(mem::MemRoot),
    /// A directory kept as one append-only log, its index in the memory
    /// of the one process that has it open (`log:DIR`).
    Log(PathBuf),
    /// A PostgreSQL database and an S3 bucket.
    #[cfg(feature = "shared")]
    Shared(Box<shared::location::SharedLocation>),
}

impl Location {
    /// A root string's location: a shared root's URL, or a directory.
    /// Settings in a shared root string's query go into `options`.
    pub(crate) fn parse(root: &str, options: &mut Options) -> Result<Location> {
        // Only shared root strings carry settings.
        #[cfg(not(feature = "shared"))]
        let _ = options;
        if root.is_empty() {
            return Err(StoreError::InvalidRoot {
                root: String::new(),
                reason:
                    "a root is a directory path, a postgres:// root string, mem:NAME or log:DIR; got nothing"
                        .into(),
            });
        }
        #[cfg(feature = "shared")]
        if crate::engine::shared::location::is_shared(root) {
            return crate::engine::shared::location::SharedLocation::parse(root, options)
                .map(|shared| Location::Shared(Box::new(shared)));
        }
        if let Some(name) = root.strip_prefix(mem::SCHEME) {
            return mem::find_or_make(root, name).map(Location::Memory);
        }
        if let Some(dir) = root.strip_prefix(journal::SCHEME) {
            if dir.is_empty() {
                return Err(StoreError::InvalidRoot {
                    root: root.into(),
                    reason: "a log root names its directory: log:DIR".into(),
                });
            }
            return Ok(Location::Log(PathBuf::from(dir)));
        }
        if root.contains("://") {
            let shown = root.split_once('@').map_or(root, |(_, host)| host);
            let reason = if cfg!(feature = "shared") {
                "the only root URLs are postgres:// ones (the shared engine)"
            } else {
                "this build opens directory roots only: the shared engine is the `shared` feature"
            };
            return Err(StoreError::InvalidRoot {
                root: format!("…{shown}"),
                reason: reason.into(),
            });
        }
        Ok(Location::Dir(PathBuf::from(root)))
    }

    /// The directory the root keeps its files in: a local or log root's.
    pub(crate) fn dir(&self) -> Option<&std::path::Path> {
        match self {
            Self::Dir(path) | Self::Log(path) => Some(path),
            Self::Memory(_) => None,
            #[cfg(feature = "shared")]
            Self::Shared(_) => None,
        }
    }

    /// How the root is named in messages: its directory, or its root
    /// string without the password.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Dir(path) => path.display().to_string(),
            Self::Memory(root) => root.root_string(),
            Self::Log(dir) => format!("{}{}", journal::SCHEME, dir.display()),
            #[cfg(feature = "shared")]
            Self::Shared(shared) => shared.display.clone(),
        }
    }

    /// The same name for the root from every host and process: its
    /// canonical directory, or a shared root's database and bucket.
    pub(crate) fn identity(&self) -> String {
        match self {
            Self::Dir(path) => {
                let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
                path.display().to_string()
            }
            Self::Memory(root) => root.root_string(),
            Self::Log(dir) => {
                let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
                format!("{}{}", journal::SCHEME, dir.display())
            }
            #[cfg(feature = "shared")]
            Self::Shared(shared) => shared.identity.clone(),
        }
    }
}

/// New content made ready for publication, not yet visible to anyone.
#[derive(Debug)]
pub(crate) enum Staged {
    /// Small content, to be written as a row of the index.
    Inline(Arc<Vec<u8>>),
    /// Large content, written to this temporary file (with its outboard,
    /// when one was computed, staged beside it by the engine).
    File(PathBuf),
}

/// An object opened for reading, not yet verified.
pub(crate) enum ObjectSource {
    /// Small content, whole.
    Inline(Vec<u8>),
    /// Content in a file, read piece by piece, and its outboard when one is
    /// kept (`None`: missing or of the wrong size, to be rebuilt).
    File {
        data: Box<dyn RandomAccess>,
        outboard: Option<Box<dyn RandomAccess>>,
    },
}

/// What a label write requires of the label's current value.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
    /// Write unconditionally.
    Anything,
    /// Write only if the label currently points at this (or is absent, for `None`).
    Exactly(Option<Digest>),
}

/// One change to a store, applied atomically by the engine. Each returns a
/// `bool` whose meaning the variant states.
#[derive(Debug)]
pub(crate) enum Change {
    /// Register a store so that it shows in listings before its first
    /// write. Returns whether it was new.
    CreateStore { store: StoreId },
    /// Publish an object and point `label` at it, all or nothing. An
    /// object already held, with its bytes present, and stored within the
    /// root's refresh window is not written again: `staged` is dropped.
    /// One stored before that is written again, which heals damaged bytes
    /// and refreshes its age. A new object's links are recorded in its row,
    /// and each target it names that was stored before the refresh window
    /// has its age refreshed too: a collection that listed the objects
    /// before this write then finds the target too young to remove (its
    /// grace period is well above the window). Returns whether the object
    /// was new.
    AddObject {
        store: StoreId,
        digest: Digest,
        size: u64,
        staged: Staged,
        label: Option<String>,
        /// The refs written inside the content (`crate::links`), recorded
        /// with the object so that gc follows them.
        links: Links,
    },
    /// Record the links a later scan found in an object's content, and
    /// clear its mark as not yet scanned (objects written before links
    /// were recorded, or whose links overflowed). Returns whether the
    /// object is still held.
    SetLinks {
        store: StoreId,
        digest: Digest,
        targets: Vec<Digest>,
    },
    /// Point `label` at `target`, or remove it for `None`. Returns whether
    /// the expectation held and the write happened.
    SetLabel {
        store: StoreId,
        label: String,
        target: Option<Digest>,
        expect: Expect,
    },
    /// Point every label at its target (or remove it, for `None`), all or
    /// nothing. With `expected` (one entry per label), only if every label
    /// still points at its expected value (`None`: absent); returns whether
    /// it did.
    SetLabels {
        store: StoreId,
        labels: Vec<(String, Option<Digest>)>,
        expected: Option<Vec<Option<Digest>>>,
    },
    /// Delete an object if none of `referrers` is still held, no label
    /// points at it, no object of the store awaits a scan for links, the
    /// store's change log still ends at `log_end` (no entry made since the
    /// collection read it can name the object), and its age is still
    /// `listed_stored_at`, the one the collection's listing saw (unix
    /// milliseconds). Returns whether it did. `referrers` are the objects
    /// whose content linked to it when the collection listed them;
    /// garbage collection removes them first, so a whole unreachable
    /// structure goes in one pass, and one of them that was labelled or
    /// stored again meanwhile keeps what it names. A link written since
    /// the listing refreshed the target's age (see `AddObject`), which
    /// keeps it: the age is compared for equality, not against the
    /// collection's cutoff, because a writer reads the clock before it
    /// commits, and a collection may start in between.
    RemoveObject {
        store: StoreId,
        digest: Digest,
        referrers: Vec<Digest>,
        listed_stored_at: i64,
        log_end: u64,
    },
    /// Delete stored bytes that no index row claims, if they were last
    /// modified before `cutoff`. Returns whether it did.
    RemoveUnindexed {
        store: StoreId,
        digest: Digest,
        cutoff: SystemTime,
    },
    /// Move a corrupt object aside for inspection and forget it, unless its
    /// bytes are intact again (stored anew since they were found damaged).
    /// Returns whether it quarantined.
    QuarantineObject { store: StoreId, digest: Digest },
    /// Remove up to `limit` labels of the store. Returns whether any were left.
    RemoveLabels { store: StoreId, limit: usize },
    /// Keep a freshly computed outboard for a file object, if the object
    /// is still held as a file; otherwise drop it. Returns `true`.
    AddOutboard {
        store: StoreId,
        digest: Digest,
        staged: PathBuf,
    },
    /// Apply `change`, if any, then append one event to a chain, all or
    /// nothing: the event is linked to whatever the chain's head is inside
    /// the same transaction, so appends from many processes never fork it.
    /// Returns what `change` returned (`true` without one). A refused
    /// `change` is refused whole, with no event.
    Record {
        change: Option<Box<Change>>,
        append: ChainAppend,
    },
    /// Write a chain's head label row whole (an import), if the label now
    /// points at `expected` (`None`: absent). The sealed segment it names
    /// must be held. Returns whether it wrote.
    SetChainHead {
        store: StoreId,
        label: String,
        head: ChainHead,
        expected: Option<Digest>,
    },
    /// Index a content file found in the store's directory that no row
    /// claims (its bytes already checked against its name), and point
    /// `label` at it, after the index was lost. The object is marked for a
    /// scan for links. Returns whether it was adopted (`false`: already
    /// indexed, or the file is gone). Local roots only.
    AdoptFile {
        store: StoreId,
        digest: Digest,
        label: String,
    },
    /// Forget a store that holds no object and no label and was created
    /// before `cutoff` (unix milliseconds), and delete what it left on
    /// disk, keeping writes in flight. Returns whether it did.
    RemoveEmptyStore { store: StoreId, cutoff: i64 },
    /// Apply `change` on behalf of `actor`: the change log names it beside
    /// every label change `change` makes. Returns what `change` returns.
    ByActor {
        actor: Arc<str>,
        change: Box<Change>,
    },
    /// Apply `change`, then refuse it (undoing it whole, with any chain
    /// event it carries) if it grew its store's totals past `quota` (see
    /// `StoreQuota::refuses`); the check runs on the totals inside the
    /// write's own transaction, so concurrent writers, in this process or
    /// any other, cannot each fit alone and overflow together. What an
    /// applied change added to the store's footprint is added to `growth`.
    /// Returns what `change` returns.
    WithinQuota {
        quota: StoreQuota,
        change: Box<Change>,
        growth: Arc<AtomicU64>,
    },
    /// Drop the store's change log entries made before `before` (unix
    /// milliseconds), keeping at least the newest `keep_last`. Returns
    /// whether any went.
    TrimChanges {
        store: StoreId,
        before: i64,
        keep_last: u64,
    },
}

impl Change {
    /// A copy of the change if all it does is free space (removing labels,
    /// objects, stale bytes, old log entries), so that it can be tried
    /// again once a full disk has been given room; `None` for any change
    /// that adds.
    pub(crate) fn freeing_copy(&self) -> Option<Change> {
        Some(match self {
            Self::SetLabel {
                store,
                label,
                target: None,
                expect,
            } => Self::SetLabel {
                store: store.clone(),
                label: label.clone(),
                target: None,
                expect: *expect,
            },
            Self::SetLabels {
                store,
                labels,
                expected,
            } if labels.iter().all(|(_, target)| target.is_none()) => Self::SetLabels {
                store: store.clone(),
                labels: labels.clone(),
                expected: expected.clone(),
            },
            Self::RemoveObject {
                store,
                digest,
                referrers,
                listed_stored_at,
                log_end,
            } => Self::RemoveObject {
                store: store.clone(),
                digest: *digest,
                referrers: referrers.clone(),
                listed_stored_at: *listed_stored_at,
                log_end: *log_end,
            },
            Self::RemoveUnindexed {
                store,
                digest,
                cutoff,
            } => Self::RemoveUnindexed {
                store: store.clone(),
                digest: *digest,
                cutoff: *cutoff,
            },
            Self::RemoveLabels { store, limit } => Self::RemoveLabels {
                store: store.clone(),
                limit: *limit,
            },
            Self::RemoveEmptyStore { store, cutoff } => Self::RemoveEmptyStore {
                store: store.clone(),
                cutoff: *cutoff,
            },
            Self::TrimChanges {
                store,
                before,
                keep_last,
            } => Self::TrimChanges {
                store: store.clone(),
                before: *before,
                keep_last: *keep_last,
            },
            Self::ByActor { actor, change } => Self::ByActor {
                actor: Arc::clone(actor),
                change: Box::new(change.freeing_copy()?),
            },
            Self::WithinQuota {
                quota,
                change,
                growth,
            } => Self::WithinQuota {
                quota: *quota,
                change: Box::new(change.freeing_copy()?),
                growth: Arc::clone(growth),
            },
            _ => return None,
        })
    }

    /// The store whose labels the change may move (a recorded change's
    /// own store, not its chain's), if it moves any.
    pub(crate) fn store(&self) -> Option<&StoreId> {
        match self {
            Self::AddObject { store, .. }
            | Self::SetLabel { store, .. }
            | Self::SetLabels { store, .. }
            | Self::RemoveLabels { store, .. }
            | Self::SetChainHead { store, .. }
            | Self::AdoptFile { store, .. } => Some(store),
            Self::Record { change, .. } => change.as_deref().and_then(Change::store),
            Self::ByActor { change, .. } | Self::WithinQuota { change, .. } => change.store(),
            _ => None,
        }
    }
}

/// One entry of a store's change log: a label's move, in the order the
/// store's commits made them. Every engine writes one for each label row
/// that changes in a store that is not reserved, in the transaction that
/// changes it, so the log and the labels never disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChangeRow {
    /// The store's sequence number for it: 1, 2, 3, ... with no gaps.
    pub(crate) seq: u64,
    pub(crate) label: String,
    /// What the label named before (`None`: it did not exist).
    pub(crate) old: Option<Digest>,
    /// What it names after (`None`: it was removed).
    pub(crate) new: Option<Digest>,
    /// When, in unix milliseconds.
    pub(crate) at: i64,
    /// The actor that made it, when one did.
    pub(crate) actor: Option<String>,
}

/// A page of a store's change log, and where the log stands.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChangeLog {
    /// Entries after the asked-for sequence, oldest first.
    pub(crate) entries: Vec<ChangeRow>,
    /// The newest sequence number given so far (0: none yet).
    pub(crate) last: u64,
    /// Every entry up to this sequence was trimmed (0: none was).
    pub(crate) trimmed_through: u64,
}

/// Whether changes to a store's labels go into its change log: those of
/// reserved stores (chains, the component cache, store owners) do not.
pub(crate) fn logs_changes(store: &StoreId) -> bool {
    !store.as_str().starts_with('_')
}

/// Reads `digests` in order with `read` for [`Engine::read_inline_many`],
/// stopping after the answer that brings the bytes read to `budget`.
pub(crate) fn read_within<E>(
    digests: &[Digest],
    budget: u64,
    mut read: impl FnMut(Digest) -> std::result::Result<Option<Vec<u8>>, E>,
) -> std::result::Result<Vec<Option<Vec<u8>>>, E> {
    let mut found = Vec::new();
    let mut bytes = 0;
    for &digest in digests {
        if bytes >= budget && !found.is_empty() {
            break;
        }
        let answer = read(digest)?;
        bytes += answer.as_ref().map_or(0, |content| content.len() as u64);
        found.push(answer);
    }
    Ok(found)
}

/// A label and its target.
pub(crate) type LabelRow = (String, Digest);

/// Bytes quarantine moved aside: the object they were filed under, their
/// size, and when they were moved.
pub(crate) type QuarantinedBytes = (Digest, u64, SystemTime);

/// An event to add to a chain (see [`Change::Record`]). The engine knows
/// nothing of the event's format: it reads the chain's head row, lets
/// `build` make the new event from it, stores a sealed segment if `build`
/// sealed one, and writes the head row anew.
pub(crate) struct ChainAppend {
    /// The store that holds the chain.
    pub(crate) store: StoreId,
    /// The label naming the newest event; its row also carries the length
    /// and the open segment.
    pub(crate) head_label: String,
    /// Makes the new event from the tip; called once, inside the transaction.
    #[allow(clippy::type_complexity)]
    pub(crate) build: Box<dyn FnOnce(ChainTip) -> Result<NewLink> + Send>,
}

impl std::fmt::Debug for ChainAppend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainAppend")
            .field("store", &self.store)
            .field("head_label", &self.head_label)
            .finish_non_exhaustive()
    }
}

/// A chain's head label row: what the chain format keeps beside the label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChainHead {
    /// The newest event's ref (the label's target).
    pub(crate) head: Digest,
    /// The length recorded with the head label (`None`: the label was set
    /// by an ordinary label write, not by an append).
    pub(crate) length: Option<u64>,
    /// The open segment: the newest events, not yet sealed into content of
    /// their own (`None` for chains last appended before segments).
    pub(crate) open: Option<Vec<u8>>,
    /// The newest sealed segment, which the open segment continues.
    pub(crate) sealed: Option<Digest>,
}

/// A chain's tip as the transaction that appends to it sees it.
pub(crate) struct ChainTip {
    /// The head row, if the chain has events.
    pub(crate) head: Option<ChainHead>,
    /// What the change recorded with the event returned.
    pub(crate) applied: bool,
}

/// What an append writes: the head row anew, and possibly a sealed segment.
pub(crate) struct NewLink {
    /// The new head row.
    pub(crate) head: ChainHead,
    /// A full segment to store as an object of the chain store, in the
    /// same transaction, if this append sealed one.
    pub(crate) sealed: Option<Vec<u8>>,
}

/// One indexed object.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ObjectRow {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    /// When it was last stored, in unix milliseconds.
    pub(crate) stored_at: i64,
}

/// An object whose content links to others, with the prefixes of the
/// digests it names (see links.rs).
pub(crate) type LinkRow = (Digest, Vec<crate::links::LinkPrefix>);

/// What [`Engine::replaced_targets`] found.
#[derive(Debug, Default)]
pub(crate) struct ReplacedTargets {
    /// The newest sequence the store's log had given when read.
    pub(crate) log_end: u64,
    /// Every distinct `old` of the entries kept then (or since).
    pub(crate) digests: Vec<Digest>,
}

/// A store's labels and objects as of one moment.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) labels: Vec<LabelRow>,
    /// In digest order (exports search it).
    pub(crate) objects: Vec<ObjectRow>,
}

/// What a store's labels point at (not their names) and its objects, as
/// of one moment: what a collection needs, in a third of the memory of a
/// [`Snapshot`] for a store of short labels.
#[derive(Debug, Default)]
pub(crate) struct TargetSnapshot {
    /// One per label, in no particular order.
    pub(crate) targets: Vec<Digest>,
    pub(crate) objects: Vec<ObjectRow>,
}

/// What an engine's scan of a store's stored bytes found. Every stored
/// object was re-hashed.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Objects re-hashed, and their total size.
    pub(crate) objects_checked: u64,
    pub(crate) bytes_checked: u64,
    /// Stored bytes that hash to the name they are stored under.
    pub(crate) intact: Vec<Digest>,
    /// Stored bytes that do not.
    pub(crate) corrupt: Vec<Digest>,
    /// Things in the store's object area that are not objects at all.
    pub(crate) stray: Vec<PathBuf>,
    /// Intact stored bytes that no index row claims: a crash between
    /// publishing and indexing leaves these.
    pub(crate) unindexed: Vec<Digest>,
    /// Intact objects whose kept outboard was wrong, and was removed.
    pub(crate) damaged_outboards: Vec<Digest>,
}

impl Scan {
    /// Counts one object re-hashed: `actual` is what its `size` bytes hash
    /// to, `indexed` whether a row claims it.
    pub(crate) fn tally(
        &mut self,
        digest: Digest,
        size: u64,
        actual: Digest,
        indexed: bool,
        progress: &dyn Progress,
    ) {
        self.objects_checked += 1;
        self.bytes_checked += size;
        progress.advance(size);
        if actual != digest {
            self.corrupt.push(digest);
        } else if indexed {
            self.intact.push(digest);
        } else {
            self.unindexed.push(digest);
        }
    }
}

/// A place to write new content into while it is read from a stream (a
/// streamed write, an import). It keeps small content in memory and moves
/// to a file once the content outgrows the inline threshold. Writing fills
/// it; [`StagingSink::finish`] hands it over for publication.
pub(crate) trait StagingSink: Write + Send {
    /// Appends hash pairs of the content's outboard (`crate::tree`), kept
    /// only if the content ends up in a file.
    fn write_outboard(&mut self, pairs: &[u8]) -> std::io::Result<()>;
    /// The staged content, ready for [`Change::AddObject`].
    fn finish(self: Box<Self>) -> Result<Staged>;
    /// Gives up, removing whatever was written.
    fn abandon(self: Box<Self>);
}

/// Opens (creating if needed) the root at `location` with the engine that
/// keeps it, migrating it to this build's layout. Blocking.
pub(crate) fn open(location: &Location, options: &Options) -> Result<Arc<dyn Engine>> {
    Ok(match location {
        Location::Dir(path) => Arc::new(local::LocalEngine::open(path, options)?),
        Location::Memory(root) => Arc::new(mem::MemEngine::open(root, options)),
        Location::Log(dir) => Arc::new(mem::MemEngine::open_log(dir, options)?),
        #[cfg(feature = "shared")]
        Location::Shared(shared) => Arc::new(shared::SharedEngine::open(shared, options)?),
    })
}

/// Creates an empty index in local root `path` if its index is missing,
/// so that the root opens for [`crate::StoreRoot::reindex`]. Blocking.
pub(crate) fn create_missing_index(path: &std::path::Path) -> Result<()> {
    local::create_index(path)
}

/// What every engine does: keep a root's stores, labels and objects, and
/// apply [`Change`]s to them atomically. Everything above works through
/// `Arc<dyn Engine>` and never learns which engine it has.
///
/// Point reads and writes are `async`; the other methods may block and
/// are called from a blocking thread ([`crate::task::blocking`]).
#[async_trait::async_trait]
pub(crate) trait Engine: Send + Sync + std::fmt::Debug {
    /// A token for the index's state, when no write is being committed:
    /// reads made after taking it stay current while later calls return
    /// the same token. `None` means nothing read may be remembered now.
    /// Shared by every process that has the root open, and checked in
    /// nanoseconds, so that [`crate::recent::RecentReads`] can answer
    /// repeated reads from memory.
    fn settled(&self) -> Option<u64>;

    /// Whether content of `size` bytes is staged by writing a file, which
    /// belongs on a blocking thread (small content is staged in memory).
    fn stages_to_file(&self, size: usize) -> bool;

    /// Stages `content` for [`Change::AddObject`]. May block (see
    /// [`Engine::stages_to_file`]).
    fn stage(&self, store: &StoreId, content: Arc<Vec<u8>>) -> Result<Staged>;

    /// Stages the outboard (`crate::tree`) of staged content, to be
    /// published with it; kept only for content staged in a file. Best
    /// effort: a missing outboard is rebuilt when needed. Blocking.
    fn attach_outboard(&self, staged: &Staged, outboard: &[u8]);

    /// A sink to stream new content into. Blocking.
    fn staging_sink(&self, store: &StoreId) -> Box<dyn StagingSink>;

    /// An indexed object's size and bytes, opened for reading; `None` when
    /// it is not indexed or its bytes are gone. Blocking.
    fn open_source(&self, store: &StoreId, digest: Digest) -> Result<Option<(u64, ObjectSource)>>;

    /// Re-hashes a file object, staging the outboard of what its bytes are
    /// now. Returns the digest they hash to and the staged outboard (for
    /// [`Change::AddOutboard`] if the digest is right, for
    /// [`Engine::discard`] if not), or `None` when the bytes are gone.
    /// Blocking.
    fn build_outboard(&self, store: &StoreId, digest: Digest) -> Result<Option<(Digest, PathBuf)>>;

    /// Drops staged content that will not be published.
    fn discard(&self, staged: Staged);

    /// Applies one change and waits until it is committed (and durable, in
    /// synced mode). `Err` is a refusal or a failure; nothing of the change
    /// was applied.
    async fn apply(&self, change: Change) -> Result<bool>;

    /// Applies many changes, each on its own, letting them share commits.
    async fn apply_all(&self, changes: Vec<Change>) -> Vec<Result<bool>>;

    /// The size of an indexed object, or `None`; reads no content.
    async fn object_size(&self, store: &StoreId, digest: Digest) -> Result<Option<u64>>;

    /// Whether the store's index lists the object.
    async fn has_object(&self, store: &StoreId, digest: Digest) -> Result<bool>;

    /// An indexed object's bytes as stored, not yet verified; `None` when
    /// it is not indexed or its bytes are gone.
    async fn read_object(&self, store: &StoreId, digest: Digest) -> Result<Option<Vec<u8>>>;

    /// The bytes of each object that the index holds inline, read
    /// together, not yet verified, in the order asked; `None` for any
    /// other (not indexed, or in a file), for the caller to read on its
    /// own. Answers only a prefix of `digests` when their bytes pass
    /// `budget`: it stops after the answer that brings the bytes read to
    /// `budget` (one answer at least), so that a bulk copy holds bounded
    /// memory whatever the inline threshold; the caller asks again for
    /// the rest.
    async fn read_inline_many(
        &self,
        store: &StoreId,
        digests: &[Digest],
        budget: u64,
    ) -> Result<Vec<Option<Vec<u8>>>>;

    /// What `label` points at.
    async fn label_target(&self, store: &StoreId, label: &str) -> Result<Option<Digest>>;

    /// A chain's head label row.
    async fn chain_tip(&self, store: &StoreId, label: &str) -> Result<Option<ChainHead>>;

    /// Up to `limit` labels starting with `prefix`, strictly after `after`,
    /// in byte order.
    async fn labels_page(
        &self,
        store: &StoreId,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LabelRow>>;

    /// Every indexed object's digest, in digest order.
    async fn objects(&self, store: &StoreId) -> Result<Vec<Digest>>;

    /// A store's totals, O(1).
    async fn store_stats(&self, store: &StoreId) -> Result<StoreStats>;

    /// When the store was registered (unix milliseconds), if it is.
    async fn store_created_at(&self, store: &StoreId) -> Result<Option<i64>>;

    /// Every store with its totals, by id. Blocking.
    fn stores(&self) -> Result<Vec<(String, StoreStats)>>;

    /// Labels starting with `prefix` and every indexed object, as of one
    /// moment. Blocking.
    fn snapshot(&self, store: &StoreId, prefix: &str) -> Result<Snapshot>;

    /// Every label's target and every indexed object, as of one moment.
    /// Blocking.
    fn target_snapshot(&self, store: &StoreId) -> Result<TargetSnapshot>;

    /// Every object of `store` with links recorded, and their targets.
    /// Blocking.
    fn links(&self, store: &StoreId) -> Result<Vec<LinkRow>>;

    /// What the store's change log still names: the newest sequence, read
    /// first, then every distinct ref some entry says a label pointed at
    /// before it moved (`old`), so that gc keeps what a past point can
    /// read. (An entry's `new` is the label's value now, or the `old` of a
    /// later entry.) Only entries a trim with the same arguments as
    /// `Change::TrimChanges` would keep count: made at or after `before`,
    /// or among the newest `keep_last`. Blocking.
    fn replaced_targets(
        &self,
        store: &StoreId,
        before: i64,
        keep_last: u64,
    ) -> Result<ReplacedTargets>;

    /// Objects of `store` whose links are not (all) recorded: written
    /// before links were, or with more than one object may record.
    /// Blocking.
    fn unscanned_links(&self, store: &StoreId) -> Result<Vec<Digest>>;

    /// Re-hashes every stored object of `store`, reporting progress in
    /// bytes. Blocking.
    fn scan(&self, store: &StoreId, progress: &dyn Progress) -> Result<Scan>;

    /// Whether the object is indexed and its bytes are there now. Blocking.
    fn is_present(&self, store: &StoreId, digest: Digest) -> Result<bool>;

    /// Stored bytes no index row claims, last modified before `cutoff`
    /// (crash leftovers). Blocking.
    fn unindexed(&self, store: &StoreId, cutoff: SystemTime) -> Result<Vec<Digest>>;

    /// Staging leftovers last modified before `cutoff`: writes that crashed
    /// rather than writes in progress. Blocking.
    fn stale_staging(&self, store: &StoreId, cutoff: SystemTime) -> Result<Vec<PathBuf>>;

    /// Removes staging leftovers found by [`Engine::stale_staging`];
    /// returns how many went. Blocking.
    fn remove_staging(&self, leftovers: &[PathBuf]) -> u64;

    /// The ids of every store with a directory on this host, indexed or
    /// not (staging of writes killed before their store's first commit).
    /// Blocking.
    fn store_dir_ids(&self) -> std::io::Result<Vec<String>>;

    /// Finishes or undoes the object removals an interrupted collection
    /// left half done; returns how many were finished and undone. (The
    /// shared engine deletes a row before its bytes, so it leaves none.)
    /// Blocking.
    fn finish_removals(&self, store: &StoreId) -> Result<(u64, u64)> {
        let _ = store;
        Ok((0, 0))
    }

    /// Checks the engine's own structures (the index database's pages);
    /// returns the problems found, none when healthy. Blocking.
    fn check_integrity(&self) -> Result<Vec<String>>;

    /// The labels of `store` whose index rows fail their checksums. The
    /// shared engine leaves this to PostgreSQL's own checks. Blocking.
    fn damaged_labels(&self, store: &StoreId) -> Result<Vec<String>> {
        let _ = store;
        Ok(Vec::new())
    }

    /// What quarantine moved aside in `store`: each piece's object, size
    /// and when it was moved. Blocking.
    fn quarantined(&self, store: &StoreId) -> Result<Vec<QuarantinedBytes>>;

    /// Deletes what quarantine moved aside in `store` before `cutoff`;
    /// returns how many went. Blocking.
    fn purge_quarantine(&self, store: &StoreId, cutoff: SystemTime) -> Result<u64>;

    /// A reader over an object's stored bytes, not verified; `None` when
    /// the object is gone. Blocking.
    fn open_object(&self, store: &StoreId, digest: Digest) -> Result<Option<Box<dyn Read + Send>>>;

    /// Up to `limit` entries of the store's change log after sequence
    /// `since`, with the log's bounds, read as of one moment.
    async fn changes(&self, store: &StoreId, since: u64, limit: usize) -> Result<ChangeLog>;

    /// The first entry of the store's change log for `label` after
    /// sequence `seq`, if any (an index seek, however long the log).
    async fn label_change_after(
        &self,
        store: &StoreId,
        label: &str,
        seq: u64,
    ) -> Result<Option<ChangeRow>>;

    /// Up to `limit` entries of the store's change log for `label` before
    /// sequence `before`, newest first.
    async fn label_changes_before(
        &self,
        store: &StoreId,
        label: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ChangeRow>>;

    /// A counter that moves soon after any commit to the root, by this or
    /// any other process or host (within milliseconds on one machine), so
    /// that watchers wait without reading the log in a loop. It may also
    /// move when nothing changed.
    fn commits(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// The counter behind [`Engine::commits`]. An engine bumps it itself on
/// commits it sees (the memory engine, notifications from PostgreSQL), or
/// hands it a count other processes move (the local engine's shared
/// commit count), which a thread of its own reads and waits on while
/// anyone is watching.
#[derive(Debug)]
pub(crate) struct CommitSignal {
    sender: Arc<tokio::sync::watch::Sender<u64>>,
    poller: std::sync::OnceLock<()>,
}

/// How long the thread sleeps between looks while no one watches.
const UNWATCHED_NAP: std::time::Duration = std::time::Duration::from_millis(50);

/// The least time between two moves of a waited-on count: the first
/// commit after a quiet spell wakes watchers at once, and under a steady
/// stream of commits they wake at most this often, each time reading
/// what all those commits wrote, so that a watcher does not cost every
/// write a wake-up and a read of its own.
const LEAST_GAP: std::time::Duration = std::time::Duration::from_millis(1);

impl Default for CommitSignal {
    fn default() -> Self {
        Self {
            sender: Arc::new(tokio::sync::watch::Sender::new(0)),
            poller: std::sync::OnceLock::new(),
        }
    }
}

impl CommitSignal {
    /// The count now.
    pub(crate) fn current(&self) -> u64 {
        *self.sender.borrow()
    }

    /// Moves the counter: something may have changed.
    pub(crate) fn bump(&self) {
        self.sender
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// A receiver, starting (once) a thread that, while any receiver is
    /// held, reads `probe`, copies it into the counter, then calls
    /// `wait_past` with what it read, which returns once the count may
    /// have moved (or after a while, so that the thread notices when no
    /// one watches any more). The thread ends when the signal is dropped.
    pub(crate) fn subscribe_waiting(
        &self,
        probe: impl Fn() -> u64 + Send + 'static,
        wait_past: impl Fn(u64) + Send + 'static,
    ) -> tokio::sync::watch::Receiver<u64> {
        let receiver = self.sender.subscribe();
        self.poller.get_or_init(|| {
            let sender = Arc::downgrade(&self.sender);
            std::thread::Builder::new()
                .name("theater-store-commit-watch".into())
                .spawn(move || {
                    let mut moved = std::time::Instant::now();
                    while let Some(sender) = sender.upgrade() {
                        if sender.receiver_count() == 0 {
                            drop(sender);
                            std::thread::sleep(UNWATCHED_NAP);
                            continue;
                        }
                        let now = probe();
                        if move_to(&sender, now) {
                            moved = std::time::Instant::now();
                        }
                        drop(sender);
                        wait_past(now);
                        std::thread::sleep(LEAST_GAP.saturating_sub(moved.elapsed()));
                    }
                })
                .expect("spawning the commit watch thread");
        });
        receiver
    }

    /// A receiver, for an engine that bumps the counter itself.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sender.subscribe()
    }
}

/// Sets the counter to a probed count, waking receivers only if it moved;
/// returns whether it did.
fn move_to(sender: &tokio::sync::watch::Sender<u64>, now: u64) -> bool {
    sender.send_if_modified(|count| {
        let moved = *count != now;
        *count = now;
        moved
    })
}

/// Milliseconds since the Unix epoch: the unit of `stored_at`.
pub(crate) fn unix_millis(time: SystemTime) -> i64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Now, in unix milliseconds.
pub(crate) fn unix_now() -> i64 {
    unix_millis(SystemTime::now())
}
