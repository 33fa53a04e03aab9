//! The memory engine: a root kept in this process's memory (`mem:NAME`),
//! for unit tests of code built on the store, where a disk is beside the
//! point. Everything is in one map behind one lock; a change runs as a
//! transaction over it, with an undo log that puts back what a refused
//! change had already done. A write that finds the lock taken is queued
//! for the holder to apply ([`Queued`]).
//!
//! A named root lives until the process exits, so that opening the same
//! name again finds it; `mem:` alone opens a fresh root, gone once its last
//! handle is dropped. Content is never written anywhere, so nothing here
//! survives the process, and streamed content is held whole in memory.
//!
//! A log root (`log:DIR`) keeps the same state, writes every change to its
//! log (`journal.rs`) and keeps large content in files of its own beside
//! it (`layout.rs`, see [`Options::log_file_threshold`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError, Weak};
use std::time::SystemTime;

use hashbrown::hash_map::EntryRef;
use smol_str::SmolStr;

use super::apply::{self, HeldObject, Transaction};
use super::huge_pages::BigMap;
use super::journal::{self, BytesAt, ChangeEntry, Journal, LoggedObject, Step};
use super::layout::{self, ObjectFiles, spill_sink};
use super::{
    ChainHead, Change, ChangeLog, ChangeRow, CommitSignal, Engine, LabelRow, LinkRow, ObjectRow,
    ObjectSource, ReplacedTargets, Scan, Snapshot, Staged, StagingSink, TargetSnapshot,
    read_within, unix_now,
};
use crate::durability::Durability;
use crate::error::{Result, StoreError, io_error};
use crate::links::Links;
use crate::names::{Digest, StoreId};
use crate::options::Options;
use crate::stats::{StoreStats, change_footprint, label_footprint};
use crate::task::Progress;

/// How a memory root string starts.
pub(crate) const SCHEME: &str = "mem:";

/// A memory root, found or made when its root string is parsed: a handle
/// on an anonymous root keeps it alive even before its engine is opened.
#[derive(Clone)]
pub(crate) struct MemRoot {
    name: String,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MemRoot").field(&self.name).finish()
    }
}

impl MemRoot {
    /// The root string that opens this root again (while it lives).
    pub(crate) fn root_string(&self) -> String {
        format!("{SCHEME}{}", self.name)
    }
}

/// The memory root a root string `root` (`mem:` + `name`) names: the one
/// called `name`, made if new, or a fresh anonymous one for `mem:` alone.
pub(crate) fn find_or_make(root: &str, name: &str) -> Result<MemRoot> {
    if name.chars().any(char::is_control) || name.len() > 255 {
        return Err(StoreError::InvalidRoot {
            root: root.into(),
            reason: "a memory root's name is up to 255 bytes with no control characters".into(),
        });
    }
    let mut roots = registry();
    // Anonymous roots nobody holds any more are forgotten.
    roots.retain(|_, held| match held {
        Held::Named(_) => true,
        Held::Anonymous(state) => state.strong_count() > 0,
    });
    let name = if name.is_empty() {
        format!("{ANONYMOUS}{}", uuid::Uuid::new_v4().simple())
    } else {
        name.to_owned()
    };
    let found = match roots.get(&name) {
        Some(Held::Named(state)) => Some(Arc::clone(state)),
        Some(Held::Anonymous(state)) => state.upgrade(),
        None => None,
    };
    let state = found.unwrap_or_else(|| {
        let state = Arc::new(Mutex::new(State::default()));
        let held = if name.starts_with(ANONYMOUS) {
            Held::Anonymous(Arc::downgrade(&state))
        } else {
            Held::Named(Arc::clone(&state))
        };
        roots.insert(name.clone(), held);
        state
    });
    Ok(MemRoot { name, state })
}

/// Names given to `mem:` roots opened without one.
const ANONYMOUS: &str = "anonymous-";

/// Every memory root of the process: named ones held for the process's
/// life, anonymous ones while a handle is open.
fn registry() -> MutexGuard<'static, HashMap<String, Held>> {
    static ROOTS: OnceLock<Mutex<HashMap<String, Held>>> = OnceLock::new();
    lock(ROOTS.get_or_init(Mutex::default))
}

enum Held {
    Named(Arc<Mutex<State>>),
    Anonymous(Weak<Mutex<State>>),
}

/// Takes `mutex` even if a thread panicked holding it: a panic fails its
/// own call, not every later one.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A memory root, or a log root, opened by one [`crate::StoreRoot`].
#[derive(Clone, Debug)]
pub(crate) struct MemEngine {
    /// The root string, for messages.
    root: String,
    state: Arc<Mutex<State>>,
    /// The refresh window, in milliseconds (see [`Change::AddObject`]).
    refresh_after: i64,
    /// The root's commit signal (see [`State::commits`]).
    commits: Arc<CommitSignal>,
    /// Changes that found the root's lock taken (see [`State::queued`]).
    queued: Arc<Queued>,
    /// Whether each change waits for its log write to reach the disk
    /// (a log root in synced mode): such changes go through `flushes`.
    synced: bool,
    /// Synced changes waiting for the thread that applies them in turn
    /// and flushes the log once for all of them.
    flushes: Arc<Mutex<Flushes>>,
    /// A log root's files for large content (with this handle's
    /// durability), and the size above which content goes there.
    files: Option<(ObjectFiles, usize)>,
}

/// Buffered changes that found the root's lock taken, left for whoever
/// lets it go next to apply (flat combining): a writer that meets another
/// never sleeps on the lock, and one holder applies what queued up in a
/// row, while the others' threads go on with other tasks.
#[derive(Default)]
struct Queued {
    changes: Mutex<Vec<QueuedChange>>,
    /// Whether `changes` may hold something: looked at, without its lock,
    /// each time the root's lock is let go.
    any: AtomicBool,
}

/// How long opening a log root waits for this process's own last handle
/// of it to finish closing its log (its last reference may be dropped on
/// another thread) before calling the root in use.
const CLOSING_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a writer tries the root's lock, and how long it pauses in
/// between (in spin-loop hints), before it queues its change.
const SPIN_TRIES: usize = 64;
const SPIN_PAUSES: usize = 4;

/// One queued change, with its handle's refresh window and its answer.
struct QueuedChange {
    change: Change,
    refresh_after: i64,
    answer: tokio::sync::oneshot::Sender<Result<bool>>,
}

impl Queued {
    fn push(&self, queued: QueuedChange) {
        let mut changes = lock(&self.changes);
        changes.push(queued);
        self.any.store(true, Ordering::SeqCst);
    }

    fn take(&self) -> Vec<QueuedChange> {
        let mut changes = lock(&self.changes);
        self.any.store(false, Ordering::SeqCst);
        std::mem::take(&mut *changes)
    }
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("any", &self.any)
            .finish_non_exhaustive()
    }
}

/// The root's lock, held. Letting it go applies the changes that queued
/// up meanwhile (see [`Queued`]), whatever the holder was doing.
struct Locked<'a> {
    guard: Option<MutexGuard<'a, State>>,
    engine: &'a MemEngine,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        if !std::thread::panicking() {
            self.engine.apply_queued();
        }
    }
}

/// Synced changes waiting to be applied, and whether a thread is at it.
#[derive(Default)]
struct Flushes {
    waiting: Vec<(Change, tokio::sync::oneshot::Sender<Result<bool>>)>,
    leading: bool,
}

impl std::fmt::Debug for Flushes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flushes")
            .field("waiting", &self.waiting.len())
            .field("leading", &self.leading)
            .finish()
    }
}

/// Lets the next synced change take the lead if the thread leading
/// panicked.
struct StepDown<'a>(&'a Mutex<Flushes>);

impl Drop for StepDown<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            lock(self.0).leading = false;
        }
    }
}

impl MemEngine {
    /// Opens a memory root.
    pub(crate) fn open(root: &MemRoot, options: &Options) -> Self {
        Self::over(root.root_string(), Arc::clone(&root.state), options)
    }

    fn over(root: String, state: Arc<Mutex<State>>, options: &Options) -> Self {
        let (commits, queued, synced, files) = {
            let held = lock(&state);
            let synced = held.journal.is_some() && options.durability == Durability::Synced;
            let files = held.journal.as_ref().map(|journal| {
                let own = ObjectFiles::new(journal.dir(), options.durability);
                (own, options.log_file_threshold)
            });
            (
                Arc::clone(&held.commits),
                Arc::clone(&held.queued),
                synced,
                files,
            )
        };
        let engine = Self {
            root,
            state,
            refresh_after: i64::try_from(options.refresh_after.as_millis()).unwrap_or(i64::MAX),
            commits,
            queued,
            synced,
            flushes: Arc::default(),
            files,
        };
        // Another handle's writes may have queued while the lock was held.
        engine.apply_queued();
        engine
    }

    /// Opens (creating if needed) the log root in `dir`: the state other
    /// handles in this process share, or else the state its log replays
    /// to. Blocking.
    pub(crate) fn open_log(dir: &Path, options: &Options) -> Result<Self> {
        static ROOTS: OnceLock<Mutex<HashMap<PathBuf, Weak<Mutex<State>>>>> = OnceLock::new();
        std::fs::create_dir_all(dir).map_err(|source| {
            crate::error::io_error(&"root", "creating the log root", dir, source)
        })?;
        let dir = std::fs::canonicalize(dir).map_err(|source| {
            crate::error::io_error(&"root", "finding the log root", dir, source)
        })?;
        let root = format!("{}{}", journal::SCHEME, dir.display());
        let mut roots = lock(ROOTS.get_or_init(Mutex::default));
        // Handles of this process let go of the root, but the last of them
        // may still be closing its log on another thread. (Roots let go of
        // stay listed, so that this is known, until there are many.)
        let closing = roots
            .get(&dir)
            .is_some_and(|state| state.strong_count() == 0);
        if roots.len() > 256 {
            roots.retain(|path, state| *path == dir || state.strong_count() > 0);
        }
        if let Some(state) = roots.get(&dir).and_then(Weak::upgrade) {
            return Ok(Self::over(root, state, options));
        }
        let waited_from = std::time::Instant::now();
        let (mut state, journal) = loop {
            let mut state = State::default();
            match Journal::open(&dir, |steps| state.replay(steps)) {
                Ok(journal) => break (state, journal),
                Err(StoreError::RootInUse { .. })
                    if closing && waited_from.elapsed() < CLOSING_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(error) => return Err(error),
            }
        };
        state.compact_min = options.log_compact_min;
        state.compact_at = options.log_compact_min.max(2 * journal.len());
        state.journal = Some(journal);
        let state = Arc::new(Mutex::new(state));
        roots.insert(dir, Arc::downgrade(&state));
        Ok(Self::over(root, state, options))
    }

    fn state(&self) -> Locked<'_> {
        Locked {
            guard: Some(lock(&self.state)),
            engine: self,
        }
    }

    /// The root's lock if it is free now.
    fn try_state(&self) -> Option<MutexGuard<'_, State>> {
        match self.state.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The root's lock if it is free now or comes free within about a
    /// change's apply (a few microseconds): a short wait on another core
    /// costs less than queueing, whose answer wakes a parked thread.
    fn try_state_soon(&self) -> Option<MutexGuard<'_, State>> {
        for _ in 0..SPIN_TRIES {
            if let Some(guard) = self.try_state() {
                return Some(guard);
            }
            for _ in 0..SPIN_PAUSES {
                std::hint::spin_loop();
            }
        }
        self.try_state()
    }

    /// Applies a buffered change now if the root's lock is free, or else
    /// queues it for the lock's holder. A queued change is applied even if
    /// its caller stops waiting, as a write already handed to a writer
    /// thread would be.
    async fn apply_combined(&self, change: Change) -> Result<bool> {
        if let Some(guard) = self.try_state_soon() {
            let mut state = Locked {
                guard: Some(guard),
                engine: self,
            };
            return self.apply_then_settle(&mut state, change, self.refresh_after);
        }
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.queued.push(QueuedChange {
            change,
            refresh_after: self.refresh_after,
            answer,
        });
        // The holder may have let go since, before it saw this change.
        self.apply_queued();
        answered.await.unwrap_or_else(|_| {
            Err(StoreError::WriterStopped {
                root: PathBuf::from(&self.root),
            })
        })
    }

    /// Applies the queued changes, in turn, while the root's lock is free
    /// to take; leaves them to its holder when it is not. A change queued
    /// (then the lock tried) and the lock let go (then the queue looked
    /// at) are ordered by the fences: one side always sees the other.
    fn apply_queued(&self) {
        loop {
            fence(Ordering::SeqCst);
            if !self.queued.any.load(Ordering::SeqCst) {
                return;
            }
            let Some(mut state) = self.try_state() else {
                return;
            };
            let answers: Vec<_> = self
                .queued
                .take()
                .into_iter()
                .map(|queued| {
                    let applied =
                        self.apply_then_settle(&mut state, queued.change, queued.refresh_after);
                    (queued.answer, applied)
                })
                .collect();
            drop(state);
            for (answer, outcome) in answers {
                let _ = answer.send(outcome);
            }
        }
    }

    /// Runs `read` over one store (an empty one if it is not registered).
    fn read<T>(&self, store: &StoreId, read: impl FnOnce(&MemStore) -> T) -> T {
        let state = self.state();
        match state.stores.get(store.as_str()) {
            Some(found) => read(found),
            None => read(&MemStore::default()),
        }
    }

    /// An object's bytes, read without the root's lock held.
    fn object_bytes(&self, store: &StoreId, digest: Digest) -> Result<Option<Vec<u8>>> {
        self.object_bytes_kept(store, digest, &[Kept::Inline, Kept::InFile])
    }

    /// [`MemEngine::object_bytes`] of an object kept in one of the `kept`
    /// ways; `None` for one kept otherwise.
    fn object_bytes_kept(
        &self,
        store: &StoreId,
        digest: Digest,
        kept: &[Kept],
    ) -> Result<Option<Vec<u8>>> {
        let readable = {
            let state = self.state();
            let object = state
                .stores
                .get(store.as_str())
                .and_then(|held| held.objects.get(&digest))
                .filter(|object| kept.contains(&object.kept()));
            object.map(|object| state.readable(object))
        };
        Ok(readable
            .map(|readable| readable.bytes(store, digest, self.layout()))
            .transpose()?
            .flatten())
    }

    /// The size of an object kept in a file of its own; `None` for one
    /// in memory or the log, or not held.
    fn size_in_file(&self, store: &StoreId, digest: Digest) -> Option<u64> {
        self.read(store, |held| {
            let object = held.objects.get(&digest)?;
            (object.kept() == Kept::InFile).then_some(object.size)
        })
    }

    /// The log root's files of large content: `None` on a memory root,
    /// which keeps none.
    fn layout(&self) -> Option<&ObjectFiles> {
        self.files.as_ref().map(|(layout, _)| layout)
    }

    /// Applies one change as a transaction: all of it, or (refused) none.
    fn apply_now(&self, change: Change) -> Result<bool> {
        self.apply_then_settle(&mut self.state(), change, self.refresh_after)
    }

    /// [`MemEngine::apply_locked`], then [`MemEngine::settle`].
    fn apply_then_settle(
        &self,
        state: &mut State,
        change: Change,
        refresh_after: i64,
    ) -> Result<bool> {
        let outcome = self.apply_locked(state, change, refresh_after);
        if outcome.is_ok() {
            self.settle(state);
        }
        outcome
    }

    /// After a change: the commit signal moved, and the log compacted if
    /// it is time.
    fn settle(&self, state: &mut State) {
        self.commits.bump();
        state.compact_if_worthwhile();
    }

    /// Applies one change under the root's lock. A log root writes it to
    /// its log (not yet flushed) before the lock is let go.
    fn apply_locked(&self, state: &mut State, change: Change, refresh_after: i64) -> Result<bool> {
        let mut txn = Txn {
            state,
            undo: Vec::new(),
            acting: None,
            files: self.layout(),
        };
        let Ok(outcome) = apply::apply(&mut txn, change, refresh_after);
        if outcome.is_err() {
            txn.roll_back();
            return outcome;
        }
        if let Err(failed) = txn.write_to_journal() {
            txn.roll_back();
            return Err(failed);
        }
        outcome
    }

    /// Applies synced changes: queued, then applied by one thread in turn
    /// with everything else queued meanwhile, the log flushed once for
    /// all of them before the lock is let go (so that nothing is seen
    /// before it is durable) and before anyone is answered.
    async fn apply_synced(&self, changes: Vec<Change>) -> Vec<Result<bool>> {
        let mut answers = Vec::with_capacity(changes.len());
        let lead = {
            let mut flushes = lock(&self.flushes);
            for change in changes {
                let (answer, answered) = tokio::sync::oneshot::channel();
                flushes.waiting.push((change, answer));
                answers.push(answered);
            }
            !std::mem::replace(&mut flushes.leading, true)
        };
        if lead {
            let engine = self.clone();
            tokio::task::spawn_blocking(move || engine.flush_waiting());
        }
        let mut outcomes = Vec::with_capacity(answers.len());
        for answered in answers {
            outcomes.push(answered.await.unwrap_or_else(|_| {
                Err(StoreError::WriterStopped {
                    root: PathBuf::from(&self.root),
                })
            }));
        }
        outcomes
    }

    /// The thread leading synced changes: takes what waits, until nothing
    /// does.
    fn flush_waiting(&self) {
        let _step_down = StepDown(&self.flushes);
        loop {
            let batch = {
                let mut flushes = lock(&self.flushes);
                if flushes.waiting.is_empty() {
                    flushes.leading = false;
                    return;
                }
                std::mem::take(&mut flushes.waiting)
            };
            let (changes, answers): (Vec<Change>, Vec<_>) = batch.into_iter().unzip();
            let mut state = self.state();
            let mut outcomes: Vec<Result<bool>> = changes
                .into_iter()
                .map(|change| self.apply_locked(&mut state, change, self.refresh_after))
                .collect();
            let changed = outcomes.iter().any(Result::is_ok);
            if changed
                && let Some(journal) = state.journal.as_mut()
                && let Err(failed) = journal.sync()
            {
                let path = journal.path().to_owned();
                for outcome in outcomes.iter_mut().filter(|outcome| outcome.is_ok()) {
                    let source = std::io::Error::new(failed.kind(), failed.to_string());
                    *outcome = Err(crate::error::io_error(&"root", "flushing", &path, source));
                }
            }
            // Bumped even if the flush failed: what was applied is seen.
            if changed {
                self.settle(&mut state);
            }
            drop(state);
            for (answer, outcome) in answers.into_iter().zip(outcomes) {
                let _ = answer.send(outcome);
            }
        }
    }
}

/// Everything a memory root holds.
#[derive(Debug, Default)]
struct State {
    stores: BTreeMap<String, MemStore>,
    /// Bumped by every change to the root, through any of its engines.
    commits: Arc<CommitSignal>,
    /// Buffered changes waiting for the lock's holder (see [`Queued`]).
    queued: Arc<Queued>,
    /// A log root's file, where every change is written.
    journal: Option<Journal>,
    /// The log's size past which compacting it is next considered.
    compact_at: u64,
    /// The least size at which a log is compacted (`Options::log_compact_min`).
    compact_min: u64,
}

impl State {
    /// Where an object's bytes are, to read them once the lock is let go.
    fn readable(&self, object: &MemObject) -> Readable {
        match (&object.body, &self.journal) {
            (Body::Held(bytes), _) => Readable::Held(Arc::clone(bytes)),
            (Body::Logged(offset), Some(journal)) => {
                Readable::Logged(journal.slice(*offset, object.size))
            }
            (Body::Logged(_), None) => unreachable!("only a log root logs bodies"),
            (Body::File, _) => Readable::File,
        }
    }

    /// Applies the steps of one logged change (replaying the log).
    fn replay(&mut self, steps: Vec<Step<'_>>) {
        for step in steps {
            match step {
                Step::MakeStore { store, created_at } => {
                    self.stores
                        .entry(store.into_owned())
                        .or_insert_with(|| MemStore {
                            created_at,
                            ..MemStore::default()
                        });
                }
                Step::DropStore { store } => {
                    self.stores.remove(store.as_ref());
                }
                Step::Label { store, label, row } => {
                    if let Some(held) = self.replayed_store(store, row.is_some()) {
                        put_label_row(held, &label, row.map(|row| Row::from(row.into_owned())));
                    }
                }
                Step::Object {
                    store,
                    digest,
                    object,
                } => {
                    if let Some(held) = self.replayed_store(store, object.is_some()) {
                        let object = object.map(|logged| MemObject {
                            body: match logged.bytes {
                                BytesAt::Blob(offset) => Body::Logged(offset),
                                BytesAt::File => Body::File,
                            },
                            size: logged.size,
                            stored_at: logged.stored_at,
                            links: logged.links.map(Cow::into_owned),
                        });
                        put_object(held, digest, object);
                    }
                }
                Step::Unscanned {
                    store,
                    digest,
                    unscanned,
                } => {
                    if let Some(held) = self.stores.get_mut(store.as_ref()) {
                        if unscanned {
                            held.unscanned.insert(digest);
                        } else {
                            held.unscanned.remove(&digest);
                        }
                    }
                }
                Step::Logged { store, entry } => {
                    if let Some(held) = self.replayed_store(store, true) {
                        held.change_seq = entry.seq;
                        held.stats.changes += 1;
                        held.stats.change_footprint += change_footprint(entry.label.len());
                        held.log.push_back(entry.into_owned());
                    }
                }
                Step::Trimmed { store, through } => {
                    if let Some(held) = self.stores.get_mut(store.as_ref()) {
                        while let Some(oldest) = held.log.front()
                            && oldest.seq <= through
                        {
                            held.stats.changes -= 1;
                            held.stats.change_footprint -= change_footprint(oldest.label.len());
                            held.log.pop_front();
                        }
                        held.changes_trimmed = through;
                        held.change_seq = held.change_seq.max(through);
                    }
                }
            }
        }
    }

    /// The store a replayed step changes: registered if `make`, else
    /// `None` when it is not there.
    fn replayed_store(&mut self, store: Cow<str>, make: bool) -> Option<&mut MemStore> {
        if make {
            Some(self.stores.entry(store.into_owned()).or_default())
        } else {
            self.stores.get_mut(store.as_ref())
        }
    }

    /// Writes a log root's live state as a new log in place of the old
    /// one, when the old one has grown to more than twice what is live.
    /// A failure is logged and leaves the old log in use.
    fn compact_if_worthwhile(&mut self) {
        let Some(journal) = &self.journal else {
            return;
        };
        if journal.len() < self.compact_at {
            return;
        }
        // What the log would hold live: content in files is not in it.
        let live: u64 = self
            .stores
            .values()
            .map(|held| {
                let stats = held.stats;
                let in_files: u64 = held
                    .objects
                    .values()
                    .filter(|object| matches!(object.body, Body::File))
                    .map(|object| object.size)
                    .sum();
                stats.bytes - in_files
                    + stats.label_footprint
                    + stats.change_footprint
                    + stats.objects * 64
            })
            .sum();
        if journal.len() > 2 * live
            && let Err(failed) = self.compact()
        {
            tracing::warn!(error = %failed, "compacting the log failed; the old log stays in use");
        }
        let len = self.journal.as_ref().map_or(0, Journal::len);
        self.compact_at = self.compact_min.max(2 * len);
    }

    /// Writes the live state as a new log and reads from it from now on.
    fn compact(&mut self) -> Result<()> {
        let State {
            stores, journal, ..
        } = self;
        let Some(journal) = journal else {
            return Ok(());
        };
        let moved = journal.compact(|rewriter| {
            let mut moved = Vec::with_capacity(stores.len());
            for (id, held) in stores.iter() {
                let store = || Cow::Borrowed(id.as_str());
                rewriter.step(Step::MakeStore {
                    store: store(),
                    created_at: held.created_at,
                })?;
                rewriter.step(Step::Trimmed {
                    store: store(),
                    through: held.changes_trimmed,
                })?;
                let mut offsets = Vec::with_capacity(held.objects.len());
                for (&digest, object) in &held.objects {
                    let offset = match &object.body {
                        Body::Logged(offset) => Some(rewriter.copy_blob(*offset, object.size)?),
                        Body::Held(bytes) => Some(rewriter.blob(bytes)?),
                        Body::File => None,
                    };
                    offsets.push(offset);
                    rewriter.step(Step::Object {
                        store: store(),
                        digest,
                        object: Some(LoggedObject {
                            bytes: offset.map_or(BytesAt::File, BytesAt::Blob),
                            size: object.size,
                            stored_at: object.stored_at,
                            links: object.links.as_deref().map(Cow::Borrowed),
                        }),
                    })?;
                }
                moved.push(offsets);
                for &digest in &held.unscanned {
                    rewriter.step(Step::Unscanned {
                        store: store(),
                        digest,
                        unscanned: true,
                    })?;
                }
                for (label, row) in held.labels.unordered() {
                    rewriter.step(Step::Label {
                        store: store(),
                        label: Cow::Borrowed(label),
                        row: Some(row.chain_head()),
                    })?;
                }
                for entry in &held.log {
                    rewriter.step(Step::Logged {
                        store: store(),
                        entry: Cow::Borrowed(entry),
                    })?;
                }
            }
            Ok(moved)
        })?;
        // The objects' bytes are where the new log has them.
        for (held, offsets) in stores.values_mut().zip(moved) {
            for (object, offset) in held.objects.values_mut().zip(offsets) {
                if let Some(offset) = offset {
                    object.body = Body::Logged(offset);
                }
            }
        }
        Ok(())
    }
}

/// One registered store.
#[derive(Clone, Debug, Default)]
struct MemStore {
    created_at: i64,
    labels: Labels,
    /// By digest, hashed: a write and a read each look one up, and at a
    /// million objects a B-tree's descent cost a put 10%. Listings sort.
    objects: BigMap<Digest, MemObject>,
    /// Objects whose links are not all recorded.
    unscanned: BTreeSet<Digest>,
    /// How many plain labels (not chain heads) point at each object: such
    /// a label keeps its target from collection.
    held_by_labels: BigMap<Digest, u64>,
    stats: StoreStats,
    /// The change log's entries kept, oldest first.
    log: VecDeque<ChangeEntry>,
    /// The newest sequence given, and the newest one trimmed.
    change_seq: u64,
    changes_trimmed: u64,
}

/// One object: its bytes, when it was last stored, and its links column
/// (`crate::links`).
#[derive(Clone, Debug)]
struct MemObject {
    body: Body,
    size: u64,
    stored_at: i64,
    links: Option<Vec<u8>>,
}

/// A change log entry as the engines answer it.
fn change_row(entry: &ChangeEntry) -> ChangeRow {
    ChangeRow {
        seq: entry.seq,
        label: entry.label.to_string(),
        old: entry.old,
        new: entry.new,
        at: entry.at,
        actor: entry.actor.as_deref().map(str::to_owned),
    }
}

/// Where an object's bytes are.
#[derive(Clone, Debug)]
enum Body {
    /// In memory: every object of a memory root, and a log root's new
    /// content until its change is written.
    Held(Arc<Vec<u8>>),
    /// In a log root's file, at this offset.
    Logged(u64),
    /// In a file of its own beside a log root's log (`layout.rs`).
    File,
}

/// Where a held object's bytes are, as a change needs to know to rewrite
/// or remove them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kept {
    /// In memory or in the log.
    Inline,
    /// In a file of its own beside the log.
    InFile,
}

impl MemObject {
    fn kept(&self) -> Kept {
        match self.body {
            Body::File => Kept::InFile,
            Body::Held(_) | Body::Logged(_) => Kept::Inline,
        }
    }

    fn held(bytes: Arc<Vec<u8>>, stored_at: i64, links: Option<Vec<u8>>) -> Self {
        Self {
            size: bytes.len() as u64,
            body: Body::Held(bytes),
            stored_at,
            links,
        }
    }
}

/// An object's bytes, found under the root's lock and read after it.
enum Readable {
    Held(Arc<Vec<u8>>),
    Logged(journal::Slice),
    /// In the object's file (of the log root's `files`), read whole.
    File,
}

impl Readable {
    /// The bytes; `None` when the object's file is gone.
    fn bytes(
        self,
        store: &StoreId,
        digest: Digest,
        files: Option<&ObjectFiles>,
    ) -> Result<Option<Vec<u8>>> {
        match self {
            Self::Held(bytes) => Ok(Some(Arc::unwrap_or_clone(bytes))),
            Self::Logged(slice) => slice.read().map(Some).map_err(|source| {
                crate::error::io_error(store, "reading content from", slice.path(), source)
            }),
            Self::File => match files {
                Some(files) => files.read(store, digest),
                None => unreachable!("only a log root keeps files"),
            },
        }
    }
}

/// One step of a transaction, undone by putting the old value back.
enum Undo {
    /// The store was registered by this transaction.
    Store(StoreId),
    /// The store was forgotten by this transaction.
    Dropped(StoreId, Box<MemStore>),
    /// A label's row before.
    Label(StoreId, SmolStr, Option<Row>),
    /// An object before.
    Object(StoreId, Digest, Option<MemObject>),
    /// Whether an object awaited a scan for links before.
    Unscanned(StoreId, Digest, bool),
    /// A change log entry was added.
    Logged(StoreId),
    /// Change log entries were trimmed (oldest first), and where the
    /// trimmed mark stood before.
    Trimmed(StoreId, Vec<ChangeEntry>, u64),
    /// A file was renamed into place for an object new to its store.
    Published(StoreId, Digest),
    /// An object's file was moved aside for its removal.
    Doomed(StoreId, Digest),
}

/// A change in progress over the locked state.
struct Txn<'a> {
    state: &'a mut State,
    undo: Vec<Undo>,
    /// Who makes the changes now being applied (see `act_as`).
    acting: Option<Arc<str>>,
    /// A log root's files of large content, with the durability of the
    /// handle applying the change.
    files: Option<&'a ObjectFiles>,
}

impl Txn<'_> {
    fn store(&self, store: &StoreId) -> Option<&MemStore> {
        self.state.stores.get(store.as_str())
    }

    fn label(&self, store: &StoreId, label: &str) -> Option<&Row> {
        self.store(store)?.labels.get(label)
    }

    fn object_row(&self, store: &StoreId, digest: Digest) -> Option<&MemObject> {
        self.store(store)?.objects.get(&digest)
    }

    /// Registers the store; returns whether it was new.
    fn register(&mut self, store: &StoreId) -> bool {
        if self.state.stores.contains_key(store.as_str()) {
            return false;
        }
        let created = MemStore {
            created_at: unix_now(),
            ..MemStore::default()
        };
        self.state.stores.insert(store.to_string(), created);
        self.undo.push(Undo::Store(store.clone()));
        true
    }

    /// Writes or removes a label's row, keeping the store's totals and
    /// its change log.
    fn set_label_row(&mut self, store: &StoreId, label: &str, row: Option<ChainHead>) {
        if row.is_some() {
            self.register(store);
        }
        let Some(held) = self.state.stores.get_mut(store.as_str()) else {
            return;
        };
        let new = row.as_ref().map(|row| row.head);
        let (old, held_name) = put_label_row(held, label, row.map(Row::from));
        // The name as the label's row holds it: the undo step and the
        // change log entry copy it if short, share it if long.
        let name = held_name.unwrap_or_else(|| SmolStr::new(label));
        let moved = old.as_ref().map(Row::head) != new;
        self.undo
            .push(Undo::Label(store.clone(), name.clone(), old.clone()));
        if moved && super::logs_changes(store) {
            held.change_seq += 1;
            held.stats.changes += 1;
            held.stats.change_footprint += change_footprint(label.len());
            held.log.push_back(ChangeEntry {
                seq: held.change_seq,
                label: name,
                old: old.map(|row| row.head()),
                new,
                at: unix_now(),
                actor: self.acting.clone(),
            });
            self.undo.push(Undo::Logged(store.clone()));
        }
    }

    /// Writes or removes an object, keeping the store's totals.
    fn set_object(&mut self, store: &StoreId, digest: Digest, object: Option<MemObject>) {
        if object.is_some() {
            self.register(store);
        }
        let Some(held) = self.state.stores.get_mut(store.as_str()) else {
            return;
        };
        let old = put_object(held, digest, object);
        self.undo.push(Undo::Object(store.clone(), digest, old));
    }

    /// Writes what this transaction changed to the root's log (for a log
    /// root): each piece of state it touched, with the value it holds now,
    /// and the bytes of objects new to the log.
    fn write_to_journal(&mut self) -> Result<()> {
        let State {
            stores, journal, ..
        } = &mut *self.state;
        let Some(journal) = journal else {
            return Ok(());
        };
        if self.undo.is_empty() {
            return Ok(());
        }
        let mut batch = journal.batch();
        // A change touches one store and an object or two as a rule:
        // lists searched in turn cost less than maps here.
        let mut blobs: Vec<(&StoreId, Digest, u64)> = Vec::new();
        fn name(id: &StoreId) -> Cow<'_, str> {
            Cow::Borrowed(id.as_str())
        }
        // The entries this transaction added to a store's change log are
        // the newest of it, in order: counted once per store here, so
        // that a transaction of many label changes finds each entry in
        // constant time.
        let mut unwritten_entries: Vec<(&StoreId, usize)> = Vec::new();
        for step in &self.undo {
            if let Undo::Logged(id) = step {
                match unwritten_entries.iter_mut().find(|(store, _)| *store == id) {
                    Some((_, count)) => *count += 1,
                    None => unwritten_entries.push((id, 1)),
                }
            }
        }
        for step in &self.undo {
            let found = |id: &StoreId| stores.get(id.as_str());
            let step = match step {
                Undo::Store(id) => match found(id) {
                    Some(held) => Step::MakeStore {
                        store: name(id),
                        created_at: held.created_at,
                    },
                    None => continue,
                },
                Undo::Dropped(id, _) => Step::DropStore { store: name(id) },
                Undo::Label(id, label, _) => Step::Label {
                    store: name(id),
                    label: Cow::Borrowed(&**label),
                    row: found(id)
                        .and_then(|held| held.labels.get(label))
                        .map(Row::chain_head),
                },
                Undo::Object(id, digest, _) => {
                    let object = found(id).and_then(|held| held.objects.get(digest));
                    Step::Object {
                        store: name(id),
                        digest: *digest,
                        object: object.map(|object| LoggedObject {
                            bytes: match &object.body {
                                Body::File => BytesAt::File,
                                Body::Logged(offset) => BytesAt::Blob(*offset),
                                Body::Held(bytes) => {
                                    let written = blobs
                                        .iter()
                                        .find(|(store, at, _)| *store == id && at == digest);
                                    BytesAt::Blob(match written {
                                        Some(&(.., offset)) => offset,
                                        None => {
                                            let offset = batch.blob(bytes);
                                            blobs.push((id, *digest, offset));
                                            offset
                                        }
                                    })
                                }
                            },
                            size: object.size,
                            stored_at: object.stored_at,
                            links: object.links.as_deref().map(Cow::Borrowed),
                        }),
                    }
                }
                Undo::Unscanned(id, digest, _) => Step::Unscanned {
                    store: name(id),
                    digest: *digest,
                    unscanned: found(id).is_some_and(|held| held.unscanned.contains(digest)),
                },
                Undo::Logged(id) => {
                    let Some((_, unwritten)) =
                        unwritten_entries.iter_mut().find(|(store, _)| *store == id)
                    else {
                        continue;
                    };
                    let newer = *unwritten;
                    *unwritten -= 1;
                    let Some(held) = found(id) else {
                        continue;
                    };
                    Step::Logged {
                        store: name(id),
                        entry: Cow::Borrowed(&held.log[held.log.len() - newer]),
                    }
                }
                Undo::Trimmed(id, ..) => match found(id) {
                    Some(held) => Step::Trimmed {
                        store: name(id),
                        through: held.changes_trimmed,
                    },
                    None => continue,
                },
                // Files are in place already; the object's step says so.
                Undo::Published(..) | Undo::Doomed(..) => continue,
            };
            batch.step(step);
        }
        journal.write(batch)?;
        for (id, digest, offset) in blobs {
            if let Some(object) = stores
                .get_mut(id.as_str())
                .and_then(|held| held.objects.get_mut(&digest))
            {
                object.body = Body::Logged(offset);
            }
        }
        Ok(())
    }

    /// Puts everything this transaction changed back, newest first.
    fn roll_back(self) {
        for step in self.undo.into_iter().rev() {
            match step {
                Undo::Store(id) => {
                    self.state.stores.remove(id.as_str());
                }
                Undo::Dropped(id, store) => {
                    self.state.stores.insert(id.to_string(), *store);
                }
                Undo::Label(id, label, row) => {
                    if let Some(held) = self.state.stores.get_mut(id.as_str()) {
                        put_label_row(held, &label, row);
                    }
                }
                Undo::Object(id, digest, object) => {
                    if let Some(held) = self.state.stores.get_mut(id.as_str()) {
                        put_object(held, digest, object);
                    }
                }
                Undo::Logged(id) => {
                    if let Some(held) = self.state.stores.get_mut(id.as_str())
                        && let Some(entry) = held.log.pop_back()
                    {
                        held.change_seq -= 1;
                        held.stats.changes -= 1;
                        held.stats.change_footprint -= change_footprint(entry.label.len());
                    }
                }
                Undo::Trimmed(id, entries, was) => {
                    if let Some(held) = self.state.stores.get_mut(id.as_str()) {
                        for entry in entries.into_iter().rev() {
                            held.stats.changes += 1;
                            held.stats.change_footprint += change_footprint(entry.label.len());
                            held.log.push_front(entry);
                        }
                        held.changes_trimmed = was;
                    }
                }
                Undo::Unscanned(id, digest, was) => {
                    if let Some(held) = self.state.stores.get_mut(id.as_str()) {
                        if was {
                            held.unscanned.insert(digest);
                        } else {
                            held.unscanned.remove(&digest);
                        }
                    }
                }
                Undo::Published(id, digest) => {
                    if let Some(files) = self.files {
                        // A leftover would only wait for gc's sweep.
                        let _ = files.remove_object(&id, digest);
                    }
                }
                Undo::Doomed(id, digest) => {
                    if let Some(files) = self.files {
                        files.restore_doomed(&id, digest);
                    }
                }
            }
        }
    }

    /// Renames a staged file into place as object `digest` (made durable
    /// in synced mode before the change's commit is); on failure the
    /// staged file is removed.
    fn publish(
        &mut self,
        files: &ObjectFiles,
        store: &StoreId,
        digest: Digest,
        staged: &Path,
        new: bool,
    ) -> Result<()> {
        let published = files.publish(store, staged, digest).and_then(|shard| {
            if new {
                self.undo.push(Undo::Published(store.clone(), digest));
            }
            match files.is_synced() {
                true => layout::sync_dir(&shard),
                false => Ok(()),
            }
        });
        published.map_err(|source| {
            layout::remove_staged(staged);
            let at = files.object_path(store, digest);
            io_error(store, "publishing object", &at, source)
        })
    }
}

/// The memory engine's side of applying a change (what a change means is
/// decided in `engine::apply`). Nothing here can fail; refusals are
/// answers.
impl Transaction for Txn<'_> {
    type Fault = Infallible;
    /// Whether the bytes are in a file of their own (a log root's large
    /// content) rather than in memory or the log.
    type Place = Kept;

    fn ensure_store(&mut self, store: &StoreId) -> Result<bool, Infallible> {
        Ok(self.register(store))
    }

    fn label_target(&mut self, store: &StoreId, label: &str) -> Result<Option<Digest>, Infallible> {
        Ok(self.label(store, label).map(Row::head))
    }

    fn chain_tip(&mut self, store: &StoreId, label: &str) -> Result<Option<ChainHead>, Infallible> {
        Ok(self
            .label(store, label)
            .map(|row| row.chain_head().into_owned()))
    }

    fn has_object(&mut self, store: &StoreId, digest: Digest) -> Result<bool, Infallible> {
        Ok(self.object_row(store, digest).is_some())
    }

    fn object(
        &mut self,
        store: &StoreId,
        digest: Digest,
    ) -> Result<Option<HeldObject<Kept>>, Infallible> {
        let held = self.object_row(store, digest);
        Ok(held.map(|object| HeldObject {
            stored_at: object.stored_at,
            place: object.kept(),
        }))
    }

    fn bytes_present(&mut self, store: &StoreId, digest: Digest, place: Kept) -> bool {
        match (place, self.files) {
            (Kept::InFile, Some(files)) => files.is_present(store, digest),
            _ => true,
        }
    }

    fn held_by_label(&mut self, store: &StoreId, digest: Digest) -> Result<bool, Infallible> {
        Ok(self
            .store(store)
            .is_some_and(|held| held.held_by_labels.contains_key(&digest)))
    }

    fn awaits_scan(&mut self, store: &StoreId) -> Result<bool, Infallible> {
        Ok(self
            .store(store)
            .is_some_and(|held| !held.unscanned.is_empty()))
    }

    fn totals(&mut self, store: &StoreId) -> Result<StoreStats, Infallible> {
        Ok(self
            .store(store)
            .map_or_else(StoreStats::default, |held| held.stats))
    }

    fn change_seq(&mut self, store: &StoreId) -> Result<u64, Infallible> {
        Ok(self.store(store).map_or(0, |held| held.change_seq))
    }

    fn write_object(
        &mut self,
        store: &StoreId,
        digest: Digest,
        size: u64,
        staged: Staged,
        links: &Links,
        held: Option<Kept>,
    ) -> Result<Result<()>, Infallible> {
        let links = match held {
            Some(_) => self
                .object_row(store, digest)
                .and_then(|object| object.links.clone()),
            None => links.column(),
        };
        // `None`: the bytes stay where they are, only the age is new.
        let body = match (self.files, staged, held) {
            (Some(_), Staged::File(path), Some(Kept::Inline)) => {
                // Held in the log (written under a larger threshold): the
                // file is not needed.
                layout::remove_staged(&path);
                None
            }
            (Some(files), Staged::File(path), _) => {
                // Renamed over a held file: a damaged or lost one heals.
                if let Err(refused) = self.publish(files, store, digest, &path, held.is_none()) {
                    return Ok(Err(refused));
                }
                Some(Body::File)
            }
            (Some(files), Staged::Inline(bytes), Some(Kept::InFile)) => {
                // Held as a file (under a smaller threshold): an intact
                // file stays; a lost or damaged one gives way to the bytes.
                match files.is_intact(store, digest) {
                    Ok(true) => None,
                    Ok(false) => {
                        let _ = files.quarantine(store, digest);
                        Some(Body::Held(bytes))
                    }
                    Err(refused) => return Ok(Err(refused)),
                }
            }
            (_, staged, _) => match staged_bytes(staged, store) {
                Ok(bytes) => Some(Body::Held(bytes)),
                Err(refused) => return Ok(Err(refused)),
            },
        };
        let body = match body {
            Some(body) => body,
            None => self
                .object_row(store, digest)
                .expect("bytes kept where they are belong to a held object")
                .body
                .clone(),
        };
        let object = MemObject {
            body,
            size,
            stored_at: unix_now(),
            links,
        };
        self.set_object(store, digest, Some(object));
        Ok(Ok(()))
    }

    fn discard(&mut self, staged: Staged) {
        if let Staged::File(path) = staged {
            layout::remove_staged(&path);
        }
    }

    fn refresh_targets(
        &mut self,
        store: &StoreId,
        targets: &[Digest],
        fresh_after: i64,
    ) -> Result<(), Infallible> {
        for &target in targets {
            if let Some(old) = self.object_row(store, target)
                && old.stored_at < fresh_after
            {
                let refreshed = MemObject {
                    stored_at: unix_now(),
                    ..old.clone()
                };
                self.set_object(store, target, Some(refreshed));
            }
        }
        Ok(())
    }

    fn mark_unscanned(
        &mut self,
        store: &StoreId,
        digest: Digest,
        unscanned: bool,
    ) -> Result<(), Infallible> {
        let Some(held) = self.state.stores.get_mut(store.as_str()) else {
            return Ok(());
        };
        let was = if unscanned {
            !held.unscanned.insert(digest)
        } else {
            held.unscanned.remove(&digest)
        };
        self.undo.push(Undo::Unscanned(store.clone(), digest, was));
        Ok(())
    }

    fn put_label(
        &mut self,
        store: &StoreId,
        label: &str,
        target: Digest,
    ) -> Result<(), Infallible> {
        let row = match self.label(store, label) {
            Some(row) => ChainHead {
                head: target,
                ..row.chain_head().into_owned()
            },
            None => ChainHead {
                head: target,
                length: None,
                open: None,
                sealed: None,
            },
        };
        self.set_label_row(store, label, Some(row));
        Ok(())
    }

    fn delete_label(&mut self, store: &StoreId, label: &str) -> Result<(), Infallible> {
        self.set_label_row(store, label, None);
        Ok(())
    }

    fn delete_labels(&mut self, store: &StoreId, limit: usize) -> Result<usize, Infallible> {
        let doomed: Vec<String> = self
            .store(store)
            .map(|held| {
                // In byte order, as the other engines remove them: the
                // change log records the removals in this order.
                let labels = held.labels.from(std::ops::Bound::Unbounded).take(limit);
                labels.map(|(label, _)| label.to_owned()).collect()
            })
            .unwrap_or_default();
        for label in &doomed {
            self.set_label_row(store, label, None);
        }
        Ok(doomed.len())
    }

    fn set_chain_head(
        &mut self,
        store: &StoreId,
        label: &str,
        head: ChainHead,
        _exists: bool,
    ) -> Result<(), Infallible> {
        self.set_label_row(store, label, Some(head));
        Ok(())
    }

    fn add_segment(
        &mut self,
        store: &StoreId,
        digest: Digest,
        segment: Vec<u8>,
    ) -> Result<(), Infallible> {
        if self.object_row(store, digest).is_none() {
            let object = MemObject::held(Arc::new(segment), unix_now(), None);
            self.set_object(store, digest, Some(object));
        }
        Ok(())
    }

    fn set_links(
        &mut self,
        store: &StoreId,
        digest: Digest,
        column: Option<Vec<u8>>,
    ) -> Result<bool, Infallible> {
        let Some(held) = self.object_row(store, digest) else {
            return Ok(false);
        };
        let updated = MemObject {
            links: column,
            ..held.clone()
        };
        self.set_object(store, digest, Some(updated));
        Ok(true)
    }

    fn delete_object(
        &mut self,
        store: &StoreId,
        digest: Digest,
        place: Kept,
    ) -> Result<Result<()>, Infallible> {
        self.set_object(store, digest, None);
        let (Kept::InFile, Some(files)) = (place, self.files) else {
            return Ok(Ok(()));
        };
        // Moved aside, not deleted: the removal's commit may still fail,
        // and the collection deletes it once the commit is written
        // (`Engine::finish_removals`).
        match files.doom_object(store, digest) {
            Ok(()) => {
                self.undo.push(Undo::Doomed(store.clone(), digest));
                Ok(Ok(()))
            }
            Err(source) => {
                let path = files.object_path(store, digest);
                Ok(Err(io_error(store, "removing object", &path, source)))
            }
        }
    }

    fn act_as(&mut self, _store: &StoreId, actor: Option<&str>) -> Result<(), Infallible> {
        self.acting = actor.map(Arc::from);
        Ok(())
    }

    fn trim_changes(
        &mut self,
        store: &StoreId,
        before: i64,
        keep_last: u64,
    ) -> Result<bool, Infallible> {
        let Some(held) = self.state.stores.get_mut(store.as_str()) else {
            return Ok(false);
        };
        let through = held.change_seq.saturating_sub(keep_last);
        let was = held.changes_trimmed;
        let mut trimmed = Vec::new();
        while let Some(oldest) = held.log.front()
            && oldest.seq <= through
            && oldest.at < before
        {
            let entry = held.log.pop_front().expect("an entry");
            held.stats.changes -= 1;
            held.stats.change_footprint -= change_footprint(entry.label.len());
            held.changes_trimmed = entry.seq;
            trimmed.push(entry);
        }
        if trimmed.is_empty() {
            return Ok(false);
        }
        self.undo.push(Undo::Trimmed(store.clone(), trimmed, was));
        Ok(true)
    }

    fn delete_empty_store(
        &mut self,
        store: &StoreId,
        cutoff: i64,
    ) -> Result<Result<bool>, Infallible> {
        let empty = self.store(store).is_some_and(|held| {
            held.objects.is_empty() && held.labels.is_empty() && held.created_at < cutoff
        });
        if empty && let Some(removed) = self.state.stores.remove(store.as_str()) {
            self.undo
                .push(Undo::Dropped(store.clone(), Box::new(removed)));
        }
        if empty
            && let Some(files) = self.files
            && let Err(refused) = files.remove_store_files(store)
        {
            return Ok(Err(refused));
        }
        Ok(Ok(empty))
    }

    /// verify found the object damaged a while ago; the same bytes may
    /// have been stored since, which healed them, so they are checked
    /// again here, under the root's lock. Damaged bytes in the log are
    /// forgotten (compaction drops them); a damaged file is moved aside
    /// into the store's `quarantine/`.
    fn quarantine(&mut self, store: &StoreId, digest: Digest) -> Result<Result<bool>, Infallible> {
        let Some(object) = self.object_row(store, digest) else {
            return Ok(Ok(false));
        };
        if let (Kept::InFile, Some(files)) = (object.kept(), self.files) {
            match files.is_intact(store, digest) {
                Ok(true) => return Ok(Ok(false)),
                Ok(false) => {}
                Err(refused) => return Ok(Err(refused)),
            }
            if let Err(source) = files.quarantine(store, digest)
                && source.kind() != std::io::ErrorKind::NotFound
            {
                let path = files.object_path(store, digest);
                return Ok(Err(io_error(store, "quarantining object", &path, source)));
            }
        } else {
            let readable = self.state.readable(object);
            match readable.bytes(store, digest, self.files) {
                Ok(Some(bytes)) if Digest::of(&bytes) == digest => return Ok(Ok(false)),
                Ok(_) => {}
                Err(failed) => return Ok(Err(failed)),
            }
        }
        self.set_object(store, digest, None);
        Ok(Ok(true))
    }

    /// A log root's object file no object claims (a crash between its
    /// rename and its change's commit), once old enough.
    fn remove_unindexed(
        &mut self,
        store: &StoreId,
        digest: Digest,
        cutoff: SystemTime,
    ) -> Result<Result<bool>, Infallible> {
        Ok(match self.files {
            Some(files) => files.remove_unindexed(store, digest, cutoff),
            None => Ok(false),
        })
    }

    /// Only a log root's files have outboards; the rest is read whole.
    fn keep_outboard(&mut self, store: &StoreId, digest: Digest, place: Kept, staged: &Path) {
        if let (Kept::InFile, Some(files)) = (place, self.files)
            && files.is_present(store, digest)
        {
            files.place_outboard(store, staged, digest);
        }
    }

    fn index_file(&mut self, store: &StoreId, digest: Digest) -> Result<Result<bool>, Infallible> {
        let Some(files) = self.files else {
            return Ok(Err(StoreError::InvalidRoot {
                root: SCHEME.into(),
                reason: "a memory root keeps no content files to re-index".into(),
            }));
        };
        let Ok(metadata) = std::fs::metadata(files.object_path(store, digest)) else {
            return Ok(Ok(false));
        };
        let object = MemObject {
            body: Body::File,
            size: metadata.len(),
            stored_at: unix_now(),
            links: None,
        };
        self.set_object(store, digest, Some(object));
        Ok(Ok(true))
    }
}

/// Writes or removes a label's row in `store`, keeping its totals and
/// the count of plain labels per target. Returns the row it replaced,
/// and the name as the map holds it when the label is set.
fn put_label_row(
    store: &mut MemStore,
    label: &str,
    row: Option<Row>,
) -> (Option<Row>, Option<SmolStr>) {
    let new = row.as_ref().map(|row| (row.is_plain(), row.head()));
    let (old, name) = match row {
        Some(row) => {
            let (old, name) = store.labels.insert(label, row);
            (old, Some(name))
        }
        None => (store.labels.remove(label), None),
    };
    if let Some(old) = &old {
        store.stats.labels -= 1;
        store.stats.label_footprint -= label_footprint(label.len());
        if old.is_plain() {
            release_target(&mut store.held_by_labels, old.head());
        }
    }
    if let Some((plain, head)) = new {
        store.stats.labels += 1;
        store.stats.label_footprint += label_footprint(label.len());
        if plain {
            *store.held_by_labels.entry(head).or_default() += 1;
        }
    }
    (old, name)
}

fn release_target(held: &mut BigMap<Digest, u64>, target: Digest) {
    if let Some(count) = held.get_mut(&target) {
        *count -= 1;
        if *count == 0 {
            held.remove(&target);
        }
    }
}

/// Writes or removes an object in `store`, keeping its totals; returns
/// the old one.
fn put_object(
    store: &mut MemStore,
    digest: Digest,
    object: Option<MemObject>,
) -> Option<MemObject> {
    let old = match object {
        Some(object) => store.objects.insert(digest, object),
        None => {
            store.unscanned.remove(&digest);
            store.objects.remove(&digest)
        }
    };
    if let Some(old) = &old {
        store.stats.objects -= 1;
        store.stats.bytes -= old.size;
    }
    if let Some(new) = store.objects.get(&digest) {
        store.stats.objects += 1;
        store.stats.bytes += new.size;
    }
    old
}

/// The bytes of staged content: in memory, or (content staged by another
/// engine's sink) read from its file, which is then removed.
fn staged_bytes(staged: Staged, store: &StoreId) -> Result<Arc<Vec<u8>>> {
    match staged {
        Staged::Inline(bytes) => Ok(bytes),
        Staged::File(path) => {
            let read = std::fs::read(&path);
            super::layout::remove_staged(&path);
            read.map(Arc::new).map_err(|source| {
                crate::error::io_error(store, "reading staged content", &path, source)
            })
        }
    }
}

/// Streamed content, held in memory until it is published.
struct MemorySink(Vec<u8>);

impl Write for MemorySink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl StagingSink for MemorySink {
    fn write_outboard(&mut self, _pairs: &[u8]) -> std::io::Result<()> {
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Staged> {
        Ok(Staged::Inline(Arc::new(self.0)))
    }

    fn abandon(self: Box<Self>) {}
}

#[async_trait::async_trait]
impl Engine for MemEngine {
    fn settled(&self) -> Option<u64> {
        // Every change bumps the count under the root's lock, so a read
        // made after taking it is current for as long as it is unchanged.
        Some(self.commits.current())
    }

    async fn changes(&self, store: &StoreId, since: u64, limit: usize) -> Result<ChangeLog> {
        Ok(self.read(store, |held| {
            // Sequences have no gaps, so the entry after `since` is found
            // by its distance from the oldest kept.
            let skip = held
                .log
                .front()
                .map_or(0, |oldest| since.saturating_sub(oldest.seq - 1) as usize);
            ChangeLog {
                entries: held
                    .log
                    .iter()
                    .skip(skip)
                    .take(limit)
                    .map(change_row)
                    .collect(),
                last: held.change_seq,
                trimmed_through: held.changes_trimmed,
            }
        }))
    }

    async fn label_change_after(
        &self,
        store: &StoreId,
        label: &str,
        seq: u64,
    ) -> Result<Option<ChangeRow>> {
        Ok(self.read(store, |held| {
            held.log
                .iter()
                .find(|entry| entry.seq > seq && &*entry.label == label)
                .map(change_row)
        }))
    }

    async fn label_changes_before(
        &self,
        store: &StoreId,
        label: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ChangeRow>> {
        Ok(self.read(store, |held| {
            held.log
                .iter()
                .rev()
                .filter(|entry| entry.seq < before && &*entry.label == label)
                .take(limit)
                .map(change_row)
                .collect()
        }))
    }

    fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    fn stages_to_file(&self, size: usize) -> bool {
        self.files
            .as_ref()
            .is_some_and(|(_, threshold)| size > *threshold)
    }

    fn stage(&self, store: &StoreId, content: Arc<Vec<u8>>) -> Result<Staged> {
        match self.layout() {
            Some(files) if self.stages_to_file(content.len()) => {
                files.write_temp(store, &content).map(Staged::File)
            }
            _ => Ok(Staged::Inline(content)),
        }
    }

    fn attach_outboard(&self, staged: &Staged, outboard: &[u8]) {
        layout::attach_outboard(staged, outboard);
    }

    fn staging_sink(&self, store: &StoreId) -> Box<dyn StagingSink> {
        match &self.files {
            Some((files, threshold)) => spill_sink(store, files.clone(), *threshold),
            None => Box::new(MemorySink(Vec::new())),
        }
    }

    fn open_source(&self, store: &StoreId, digest: Digest) -> Result<Option<(u64, ObjectSource)>> {
        if let (Some(files), Some(size)) = (self.layout(), self.size_in_file(store, digest)) {
            let source = files.open_source(store, digest, size)?;
            return Ok(source.map(|source| (size, source)));
        }
        let bytes = self.object_bytes(store, digest)?;
        Ok(bytes.map(|bytes| (bytes.len() as u64, ObjectSource::Inline(bytes))))
    }

    fn build_outboard(&self, store: &StoreId, digest: Digest) -> Result<Option<(Digest, PathBuf)>> {
        // Only content kept in a file has an outboard.
        match self.layout() {
            Some(files) if self.size_in_file(store, digest).is_some() => {
                files.build_outboard(store, digest)
            }
            _ => Ok(None),
        }
    }

    fn discard(&self, staged: Staged) {
        if let Staged::File(path) = staged {
            layout::remove_staged(&path);
        }
    }

    async fn apply(&self, change: Change) -> Result<bool> {
        if self.synced {
            let mut outcomes = self.apply_synced(vec![change]).await;
            return outcomes.pop().expect("one answer per change");
        }
        self.apply_combined(change).await
    }

    async fn apply_all(&self, changes: Vec<Change>) -> Vec<Result<bool>> {
        if self.synced {
            return self.apply_synced(changes).await;
        }
        changes
            .into_iter()
            .map(|change| self.apply_now(change))
            .collect()
    }

    async fn object_size(&self, store: &StoreId, digest: Digest) -> Result<Option<u64>> {
        Ok(self.read(store, |held| held.objects.get(&digest).map(|o| o.size)))
    }

    async fn has_object(&self, store: &StoreId, digest: Digest) -> Result<bool> {
        Ok(self.read(store, |held| held.objects.contains_key(&digest)))
    }

    async fn read_object(&self, store: &StoreId, digest: Digest) -> Result<Option<Vec<u8>>> {
        self.object_bytes(store, digest)
    }

    async fn read_inline_many(
        &self,
        store: &StoreId,
        digests: &[Digest],
        budget: u64,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        // Content in a file of its own is for the caller to stream.
        read_within(digests, budget, |digest| {
            self.object_bytes_kept(store, digest, &[Kept::Inline])
        })
    }

    async fn label_target(&self, store: &StoreId, label: &str) -> Result<Option<Digest>> {
        Ok(self.read(store, |held| held.labels.get(label).map(Row::head)))
    }

    async fn chain_tip(&self, store: &StoreId, label: &str) -> Result<Option<ChainHead>> {
        Ok(self.read(store, |held| {
            held.labels
                .get(label)
                .map(|row| row.chain_head().into_owned())
        }))
    }

    async fn labels_page(
        &self,
        store: &StoreId,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LabelRow>> {
        Ok(self.read(store, |held| labels_page(held, prefix, after, limit)))
    }

    async fn objects(&self, store: &StoreId) -> Result<Vec<Digest>> {
        let mut digests: Vec<Digest> =
            self.read(store, |held| held.objects.keys().copied().collect());
        digests.sort_unstable();
        Ok(digests)
    }

    async fn store_stats(&self, store: &StoreId) -> Result<StoreStats> {
        Ok(self.read(store, |held| held.stats))
    }

    async fn store_created_at(&self, store: &StoreId) -> Result<Option<i64>> {
        Ok(self
            .state()
            .stores
            .get(store.as_str())
            .map(|held| held.created_at))
    }

    fn stores(&self) -> Result<Vec<(String, StoreStats)>> {
        let state = self.state();
        Ok(state
            .stores
            .iter()
            .map(|(id, held)| (id.clone(), held.stats))
            .collect())
    }

    fn target_snapshot(&self, store: &StoreId) -> Result<TargetSnapshot> {
        Ok(self.read(store, |held| TargetSnapshot {
            targets: held.labels.heads().collect(),
            objects: object_rows(held),
        }))
    }

    fn snapshot(&self, store: &StoreId, prefix: &str) -> Result<Snapshot> {
        Ok(self.read(store, |held| Snapshot {
            labels: labels_page(held, prefix, None, usize::MAX),
            objects: object_rows(held),
        }))
    }

    fn replaced_targets(
        &self,
        store: &StoreId,
        before: i64,
        keep_last: u64,
    ) -> Result<ReplacedTargets> {
        Ok(self.read(store, |held| {
            let by_count = held.change_seq.saturating_sub(keep_last);
            let replaced: BTreeSet<Digest> = held
                .log
                .iter()
                .filter(|row| row.seq > by_count || row.at >= before)
                .filter_map(|row| row.old)
                .collect();
            ReplacedTargets {
                log_end: held.change_seq,
                digests: replaced.into_iter().collect(),
            }
        }))
    }

    fn links(&self, store: &StoreId) -> Result<Vec<LinkRow>> {
        let columns: Vec<(Digest, Vec<u8>)> = self.read(store, |held| {
            held.objects
                .iter()
                .filter_map(|(&digest, object)| Some((digest, object.links.clone()?)))
                .collect()
        });
        columns
            .into_iter()
            .map(|(source, column)| {
                crate::links::column_targets(store, source, &column)
                    .map(|targets| (source, targets))
                    .map_err(|damaged| StoreError::Index {
                        root: PathBuf::from(&self.root),
                        action: "listing links",
                        source: damaged.into(),
                    })
            })
            .collect()
    }

    fn unscanned_links(&self, store: &StoreId) -> Result<Vec<Digest>> {
        Ok(self.read(store, |held| held.unscanned.iter().copied().collect()))
    }

    fn scan(&self, store: &StoreId, progress: &dyn Progress) -> Result<Scan> {
        // Objects in memory or the log; those in files are found by
        // listing the files, as on a local root.
        let (objects, bytes): (Vec<(Digest, Readable)>, u64) = {
            let state = self.state();
            let held = state.stores.get(store.as_str());
            held.map_or_else(Default::default, |held| {
                let objects = held.objects.iter();
                let objects = objects
                    .filter(|(_, object)| object.kept() == Kept::Inline)
                    .map(|(&digest, object)| (digest, state.readable(object)));
                (objects.collect(), held.stats.bytes)
            })
        };
        let mut objects = objects;
        objects.sort_unstable_by_key(|(digest, _)| *digest);
        progress.start(bytes);
        let mut scan = Scan::default();
        if let Some(files) = self.layout() {
            let listed = files.object_files(store)?;
            let indexed =
                |digest: &Digest| self.read(store, |held| held.objects.contains_key(digest));
            files.scan_files(store, listed, &indexed, &mut scan, progress)?;
        }
        for (digest, readable) in objects {
            let bytes = readable
                .bytes(store, digest, self.layout())?
                .unwrap_or_default();
            let actual = Digest::of(&bytes);
            scan.tally(digest, bytes.len() as u64, actual, true, progress);
        }
        Ok(scan)
    }

    fn is_present(&self, store: &StoreId, digest: Digest) -> Result<bool> {
        let held = self.read(store, |held| held.objects.get(&digest).map(MemObject::kept));
        Ok(match (held, self.layout()) {
            (None, _) => false,
            (Some(Kept::InFile), Some(files)) => {
                files.is_present(store, digest) || files.restore_doomed(store, digest)
            }
            (Some(_), _) => true,
        })
    }

    fn unindexed(&self, store: &StoreId, cutoff: SystemTime) -> Result<Vec<Digest>> {
        let Some(files) = self.layout() else {
            return Ok(Vec::new());
        };
        // Looked up file by file: a log root has few files, and may have
        // a million objects in its log.
        files.unindexed(store, cutoff, |digest| {
            self.read(store, |held| held.objects.contains_key(digest))
        })
    }

    fn stale_staging(&self, store: &StoreId, cutoff: SystemTime) -> Result<Vec<PathBuf>> {
        match self.layout() {
            Some(files) => files.stale_temp_files(store, cutoff),
            None => Ok(Vec::new()),
        }
    }

    fn remove_staging(&self, leftovers: &[PathBuf]) -> u64 {
        layout::remove_files(leftovers)
    }

    fn store_dir_ids(&self) -> std::io::Result<Vec<String>> {
        match self.layout() {
            Some(files) => files.store_dir_ids(),
            None => Ok(Vec::new()),
        }
    }

    fn finish_removals(&self, store: &StoreId) -> Result<(u64, u64)> {
        let Some(files) = self.layout() else {
            return Ok((0, 0));
        };
        files.finish_removals(store, |digest| {
            Ok(self.read(store, |held| held.objects.contains_key(&digest)))
        })
    }

    fn check_integrity(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Only a log root's files are moved aside; damaged bytes in memory
    /// or the log are forgotten.
    fn quarantined(&self, store: &StoreId) -> Result<Vec<super::QuarantinedBytes>> {
        match self.layout() {
            Some(files) => files.quarantined_bytes(store),
            None => Ok(Vec::new()),
        }
    }

    fn purge_quarantine(&self, store: &StoreId, cutoff: SystemTime) -> Result<u64> {
        match self.layout() {
            Some(files) => files.purge_quarantine(store, cutoff),
            None => Ok(0),
        }
    }

    fn open_object(&self, store: &StoreId, digest: Digest) -> Result<Option<Box<dyn Read + Send>>> {
        if let (Some(files), Some(_)) = (self.layout(), self.size_in_file(store, digest)) {
            return files.open_reader(store, digest);
        }
        let bytes = self.object_bytes(store, digest)?;
        Ok(bytes.map(|bytes| Box::new(std::io::Cursor::new(bytes)) as Box<dyn Read + Send>))
    }
}

/// Every object of `store`, as a listing gives them: in digest order.
fn object_rows(store: &MemStore) -> Vec<ObjectRow> {
    let mut rows: Vec<ObjectRow> = store
        .objects
        .iter()
        .map(|(&digest, object)| ObjectRow {
            digest,
            size: object.size,
            stored_at: object.stored_at,
        })
        .collect();
    rows.sort_unstable_by_key(|row| row.digest);
    rows
}

/// Up to `limit` labels of `store` starting with `prefix`, strictly after
/// `after`, in byte order.
fn labels_page(store: &MemStore, prefix: &str, after: Option<&str>, limit: usize) -> Vec<LabelRow> {
    let start = match after {
        Some(after) if after >= prefix => std::ops::Bound::Excluded(after),
        _ => std::ops::Bound::Included(prefix),
    };
    store
        .labels
        .from(start)
        .take_while(|(name, _)| name.starts_with(prefix))
        .take(limit)
        .map(|(name, row)| (name.to_owned(), row.head()))
        .collect()
}

/// A store's labels: each found by one hash lookup however many there
/// are, and listed in byte order. A name of up to 23 bytes (most labels)
/// is kept inside the map's entry, so that finding a label among a
/// million reads no other memory to compare its name.
#[derive(Clone, Debug, Default)]
struct Labels {
    rows: BigMap<SmolStr, Row>,
    /// The names in byte order, sorted at the first listing and kept
    /// from then on. Until then a new label costs no ordered insert: a
    /// log root replaying a million of them, or writers that never list,
    /// pay for no order they do not use.
    order: OnceLock<BTreeSet<SmolStr>>,
}

/// A label's row as a memory root keeps it: a plain label (the most of
/// them) as its target alone, a chain head with the rest boxed. A map
/// entry, with a short name inline, is then 64 bytes rather than 128
/// and a name elsewhere: less memory, and one cache line for a lookup
/// among a million labels.
#[derive(Clone, Debug)]
enum Row {
    Plain(Digest),
    Chain(Box<ChainHead>),
}

impl Row {
    fn head(&self) -> Digest {
        match self {
            Self::Plain(head) => *head,
            Self::Chain(row) => row.head,
        }
    }

    /// Whether the label is a plain one (set by a label write, not by an
    /// append), which keeps its target from collection.
    fn is_plain(&self) -> bool {
        match self {
            Self::Plain(_) => true,
            Self::Chain(row) => row.length.is_none(),
        }
    }

    fn chain_head(&self) -> Cow<'_, ChainHead> {
        match self {
            Self::Plain(head) => Cow::Owned(ChainHead {
                head: *head,
                length: None,
                open: None,
                sealed: None,
            }),
            Self::Chain(row) => Cow::Borrowed(row),
        }
    }
}

impl From<ChainHead> for Row {
    fn from(row: ChainHead) -> Self {
        match row {
            ChainHead {
                head,
                length: None,
                open: None,
                sealed: None,
            } => Self::Plain(head),
            row => Self::Chain(Box::new(row)),
        }
    }
}

impl Labels {
    fn get(&self, label: &str) -> Option<&Row> {
        self.rows.get(label)
    }

    /// Sets a label's row; returns the one it replaced and the name as
    /// kept.
    fn insert(&mut self, label: &str, row: Row) -> (Option<Row>, SmolStr) {
        match self.rows.entry_ref(label) {
            EntryRef::Occupied(mut held) => {
                let old = std::mem::replace(held.get_mut(), row);
                (Some(old), held.key().clone())
            }
            EntryRef::Vacant(vacant) => {
                let name = vacant
                    .insert_entry_with_key(SmolStr::new(label), row)
                    .key()
                    .clone();
                if let Some(order) = self.order.get_mut() {
                    order.insert(name.clone());
                }
                (None, name)
            }
        }
    }

    fn remove(&mut self, label: &str) -> Option<Row> {
        let row = self.rows.remove(label)?;
        if let Some(order) = self.order.get_mut() {
            order.remove(label);
        }
        Some(row)
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Every label's target, in no order.
    fn heads(&self) -> impl Iterator<Item = Digest> {
        self.rows.values().map(Row::head)
    }

    /// Every label and its row, in no order.
    fn unordered(&self) -> impl Iterator<Item = (&str, &Row)> {
        self.rows.iter().map(|(name, row)| (name.as_str(), row))
    }

    /// The labels from `start` on, in byte order.
    fn from(&self, start: std::ops::Bound<&str>) -> impl Iterator<Item = (&str, &Row)> {
        let order = self
            .order
            .get_or_init(|| self.rows.keys().cloned().collect());
        order
            .range::<str, _>((start, std::ops::Bound::Unbounded))
            .map(|name| (&**name, &self.rows[name]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that finds the root's lock taken waits without holding a
    /// thread, and is applied as soon as the lock is let go, even by a
    /// holder that only read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_meeting_a_held_lock_is_applied_when_it_is_let_go() {
        let root = find_or_make(SCHEME, "").unwrap();
        let engine = MemEngine::open(&root, &Options::default());
        let store = StoreId::parse("queued").unwrap();
        let content = Arc::new(b"written while the lock was held".to_vec());
        let digest = Digest::of(&content);
        let change = Change::AddObject {
            store: store.clone(),
            digest,
            size: content.len() as u64,
            links: Links::of(&content, digest),
            staged: Staged::Inline(content),
            label: Some("kept".to_owned()),
        };
        let reading = engine.state();
        let writer = tokio::spawn({
            let engine = engine.clone();
            async move { engine.apply(change).await }
        });
        while !engine.queued.any.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        assert!(!writer.is_finished(), "the write waits for the lock");
        drop(reading);
        let answered = tokio::time::timeout(std::time::Duration::from_secs(10), writer).await;
        let applied = answered.expect("letting the lock go applies the queued write");
        assert!(applied.unwrap().unwrap(), "the object is new");
        let target = engine.label_target(&store, "kept").await.unwrap();
        assert_eq!(target, Some(digest));
    }

    /// Bulk readers (export, sync) get the bytes of content in the log
    /// read together, and stream content kept in a file on their own, so
    /// that a copy of a log root holds no large object whole in memory.
    #[tokio::test]
    async fn reads_together_leave_content_in_files_to_be_streamed() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            log_file_threshold: 1024,
            ..Options::default()
        };
        let engine = MemEngine::open_log(dir.path(), &options).unwrap();
        let store = StoreId::parse("bulk").unwrap();
        let mut digests = Vec::new();
        for content in [vec![1u8; 1024], vec![2u8; 1025]] {
            let digest = Digest::of(&content);
            let staged = engine.stage(&store, Arc::new(content.clone())).unwrap();
            let change = Change::AddObject {
                store: store.clone(),
                digest,
                size: content.len() as u64,
                links: Links::of(&content, digest),
                staged,
                label: None,
            };
            assert!(engine.apply(change).await.unwrap());
            digests.push(digest);
        }
        let read = engine
            .read_inline_many(&store, &digests, u64::MAX)
            .await
            .unwrap();
        assert_eq!(read, vec![Some(vec![1u8; 1024]), None]);
        // A budget the first answer fills leaves the rest to the next call.
        let read = engine.read_inline_many(&store, &digests, 1000).await;
        assert_eq!(read.unwrap(), vec![Some(vec![1u8; 1024])]);
        let read = engine.read_inline_many(&store, &digests[1..], 0).await;
        assert_eq!(read.unwrap(), vec![None], "one answer at least");
        let whole = engine.read_object(&store, digests[1]).await.unwrap();
        assert_eq!(whole, Some(vec![2u8; 1025]), "still read whole when asked");
    }
}
