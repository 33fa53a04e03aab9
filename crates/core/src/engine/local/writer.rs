//! The local engine's writer: one thread that owns the index's write
//! connection and publishes every change, in batches (group commit).
//!
//! Callers stage new content first, on their own threads: small content
//! stays in memory, large content goes to a temporary file (whose contents
//! are fsync'd there, in synced mode). Then they queue the change and wait
//! for its acknowledgement, or, in buffered mode when the writer is idle
//! and no other process holds the root's lock, apply it themselves with
//! the writer's connection (no thread hand-off; the same code, one change
//! per transaction). While the thread has work, callers queue rather than
//! apply their own, so that concurrent writers share its transactions
//! instead of taking turns at one each. The thread takes up to
//! `max_batch` queued changes at once, drops those whose caller has given
//! up, and applies the rest in transactions of at most
//! `max_transaction_time` each, so that no process waits long for the
//! root's write lock. Each change gets its own
//! savepoint: one refused change does not fail its neighbours.
//!
//! Publication happens in the writer's transaction (`txn.rs` does it for
//! `engine::apply`), under the index's write lock, so that a garbage collection in this or any other process
//! never interleaves with it: inline content is inserted as a row; a
//! staged file is renamed into place.
//!
//! In synced mode the order per transaction is: rename the staged files;
//! fsync each directory a rename touched (once, however many renames it
//! got); commit, which fsyncs the write-ahead log (`synchronous=FULL`);
//! then answer the callers. An index row is therefore never durable before
//! the file it names, and nothing is acknowledged before both are.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::changes::ChangeCounter;
use super::sql::{self, Acting, index_error};
use super::txn::apply_in;
use crate::durability::Durability;
use crate::engine::layout::{ObjectFiles, remove_staged, sync_dir};
use crate::engine::steps::{Step, record};
use crate::engine::{Change, Staged};
use crate::error::{Result, StoreError};
use crate::options::Options;

struct Job {
    change: Change,
    reply: oneshot::Sender<Result<bool>>,
}

/// Handle to the writer; dropping the last handle stops the thread once
/// its queue is drained.
#[derive(Debug)]
pub(crate) struct Writer {
    queue: mpsc::Sender<Job>,
    publisher: Arc<Mutex<Publisher>>,
    /// Whether a caller may apply its own change when the writer is idle
    /// (buffered mode; in synced mode every change goes through the
    /// thread, where concurrent changes share one flush).
    direct: bool,
    /// Changes queued for the thread and not yet answered: while there are
    /// any, callers queue too (see [`Writer::try_direct`]).
    queued: Arc<AtomicUsize>,
    root: PathBuf,
}

/// The write connection and what applying changes needs. Owned by the
/// writer thread, and borrowed by a caller when the thread is idle.
#[derive(Debug)]
struct Publisher {
    connection: Connection,
    root: PathBuf,
    layout: ObjectFiles,
    durability: Durability,
    max_batch: usize,
    max_transaction_time: Duration,
    /// The refresh window, in milliseconds (see [`Change::AddObject`]).
    refresh_after: i64,
    /// Commits so far, to wake the checkpointer every [`CHECKPOINT_EVERY`].
    commits: std::cell::Cell<u64>,
    checkpoints: mpsc::SyncSender<()>,
    /// Told about every commit, so that readers know when to forget.
    changes: Arc<ChangeCounter>,
    /// Who makes the change being applied, for the log's triggers.
    acting: Acting,
}

/// Commits between two background checkpoints: a few pages each, so about
/// SQLite's default of 1000 pages of log.
const CHECKPOINT_EVERY: u64 = 256;

/// How long the log may grow (in pages) before a commit checkpoints on its
/// own: only when the background checkpointer cannot keep up.
const CHECKPOINT_FALLBACK_PAGES: i64 = 16_000;

impl Writer {
    /// Starts the writer thread on `connection`, and a checkpointer thread
    /// on a connection of its own to `db`.
    pub(crate) fn spawn(
        mut connection: Connection,
        db: &Path,
        root: PathBuf,
        layout: ObjectFiles,
        changes: Arc<ChangeCounter>,
        options: &Options,
    ) -> rusqlite::Result<Self> {
        // Copying the log back into the database (a checkpoint, with its
        // fsyncs) is the writer's slowest step; a thread of its own does it
        // beside the writes instead of inside one of them.
        record_log_ends(&mut connection, db, Arc::clone(&changes))?;
        let acting = Acting::default();
        acting.answer_on(&connection)?;
        let checkpointer = sql::open_connection(db, options.durability, false)?;
        let (checkpoints, due) = mpsc::sync_channel(1);
        let counter = Arc::clone(&changes);
        std::thread::Builder::new()
            .name("theater-store-checkpointer".into())
            .spawn(move || {
                while due.recv().is_ok() {
                    // PASSIVE never waits for readers or writers; what it
                    // cannot copy now, the next one will.
                    checkpoint(&checkpointer, &counter, "PASSIVE");
                }
            })
            .expect("spawning the index checkpointer thread");
        let (queue, jobs) = mpsc::channel();
        let publisher = Arc::new(Mutex::new(Publisher {
            connection,
            root: root.clone(),
            layout,
            durability: options.durability,
            max_batch: options.max_batch.max(1),
            max_transaction_time: options.max_transaction_time,
            refresh_after: i64::try_from(options.refresh_after.as_millis()).unwrap_or(i64::MAX),
            commits: std::cell::Cell::new(0),
            checkpoints,
            changes,
            acting,
        }));
        let thread_publisher = Arc::clone(&publisher);
        let queued = Arc::new(AtomicUsize::new(0));
        let thread_queued = Arc::clone(&queued);
        std::thread::Builder::new()
            .name("theater-store-writer".into())
            .spawn(move || run(&thread_publisher, jobs, &thread_queued))
            .expect("spawning the index writer thread");
        Ok(Self {
            queue,
            publisher,
            direct: options.durability == Durability::Buffered,
            queued,
            root,
        })
    }

    /// Applies `change` and waits until it is committed: on the calling
    /// thread when the writer is idle and the root's lock is free (two
    /// thread hand-offs saved), else through the writer thread's queue.
    pub(crate) async fn write(&self, change: Change) -> Result<bool> {
        let change = match self.try_direct(change) {
            Ok(result) => return result,
            Err(change) => change,
        };
        let acknowledged = self.enqueue(change);
        self.wait(acknowledged).await
    }

    /// Folds the write-ahead log into the database and empties it, giving
    /// its disk space back (on a full disk, see `reserve.rs`).
    pub(crate) async fn fold_log(&self) {
        let publisher = Arc::clone(&self.publisher);
        let _ = tokio::task::spawn_blocking(move || {
            fold_and_empty_log(&publisher.lock().unwrap_or_else(|e| e.into_inner()));
        })
        .await;
    }

    /// Queues all of `changes` at once, so they can share commits, and
    /// waits for each.
    pub(crate) async fn write_all(&self, changes: Vec<Change>) -> Vec<Result<bool>> {
        let pending: Vec<_> = changes.into_iter().map(|c| self.enqueue(c)).collect();
        let mut results = Vec::with_capacity(pending.len());
        for acknowledged in pending {
            results.push(self.wait(acknowledged).await);
        }
        results
    }

    /// Applies `change` at once if nobody else is writing; hands it back
    /// otherwise. Never waits: not for the thread, not for another
    /// process's lock. With changes queued, it hands back at once: a
    /// caller taking the connection between two of the thread's batches
    /// would commit alone and hold those changes up.
    // The change is handed back whole, to be queued: no copy is made.
    #[allow(clippy::result_large_err)]
    fn try_direct(&self, change: Change) -> std::result::Result<Result<bool>, Change> {
        if !self.direct || self.queued.load(Ordering::Acquire) > 0 {
            return Err(change);
        }
        let Ok(mut publisher) = self.publisher.try_lock() else {
            return Err(change);
        };
        publisher.apply_now(change)
    }

    fn enqueue(&self, change: Change) -> Option<oneshot::Receiver<Result<bool>>> {
        let (reply, acknowledged) = oneshot::channel();
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.queue.send(Job { change, reply }).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(acknowledged)
    }

    async fn wait(&self, acknowledged: Option<oneshot::Receiver<Result<bool>>>) -> Result<bool> {
        let stopped = || StoreError::WriterStopped {
            root: self.root.clone(),
        };
        acknowledged
            .ok_or_else(stopped)?
            .await
            .map_err(|_| stopped())?
    }
}

/// The writer thread: takes what is queued, in batches, and publishes it;
/// counts each batch off `queued` once it is answered.
fn run(publisher: &Mutex<Publisher>, jobs: mpsc::Receiver<Job>, queued: &AtomicUsize) {
    while let Ok(first) = jobs.recv() {
        let mut publisher = publisher.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = vec![first];
        while batch.len() < publisher.max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let taken = batch.len();
        let mut batch = batch.into_iter().peekable();
        while batch.peek().is_some() {
            publisher.commit_some(&mut batch);
        }
        queued.fetch_sub(taken, Ordering::AcqRel);
    }
}

impl Drop for Writer {
    /// Folds the write-ahead log into the database file and empties it when
    /// the root is closed, so that acknowledged commits do not live only in
    /// the log between runs (a damaged or lost log would take them along).
    /// Another process still using the root keeps its log; this never
    /// waits for it.
    fn drop(&mut self) {
        let publisher = self.publisher.lock().unwrap_or_else(|e| e.into_inner());
        fold_and_empty_log(&publisher);
    }
}

/// Folds the write-ahead log into the database file and empties it,
/// unless a reader of this or another process still needs it; never waits.
fn fold_and_empty_log(publisher: &Publisher) {
    let connection = &publisher.connection;
    let _ = connection.busy_timeout(Duration::ZERO);
    // Folded first and recorded as folded, then emptied: a process killed
    // between emptying the log and recording it would otherwise leave an
    // empty log with commits not known to be folded, which the next open
    // reports as lost.
    checkpoint(connection, &publisher.changes, "PASSIVE");
    checkpoint(connection, &publisher.changes, "TRUNCATE");
    let _ = connection.busy_timeout(sql::BUSY_TIMEOUT);
}

/// After each commit, records where the log ends (its generation's salt
/// and frame count) in the shared count, so that a flipped byte in the
/// last commits is told from a write torn by a crash (`wal.rs`); and
/// checkpoints on the writer's own thread once the log passes
/// [`CHECKPOINT_FALLBACK_PAGES`] (the hook replaces SQLite's automatic
/// checkpoint, which does the same).
fn record_log_ends(
    connection: &mut Connection,
    db: &Path,
    changes: Arc<ChangeCounter>,
) -> rusqlite::Result<()> {
    use std::os::unix::fs::FileExt;
    let log_path = {
        let mut name = db.as_os_str().to_owned();
        name.push("-wal");
        PathBuf::from(name)
    };
    let mut log: Option<std::fs::File> = None;
    // The salt read last, and the frame count then: a log only grows until
    // it restarts (fewer frames) with a new salt, so the salt is read again
    // only then, not at every commit. (Another process's restart between
    // two of ours is missed: the record then names an old generation,
    // which only weakens the check, see `wal.rs`.)
    let mut known: Option<(u32, i32)> = None;
    connection.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, frames: i32| {
        let salt = match known {
            Some((salt, before)) if frames > before => Some(salt),
            _ => {
                if log.is_none() {
                    log = std::fs::File::open(&log_path).ok();
                }
                let mut salt = [0; 4];
                log.as_ref()
                    .filter(|file| file.read_exact_at(&mut salt, 16).is_ok())
                    .map(|_| u32::from_be_bytes(salt))
            }
        };
        known = salt.map(|salt| (salt, frames));
        if let Some(salt) = salt {
            changes.record_log_end(salt, u64::try_from(frames).unwrap_or(0));
        }
        if i64::from(frames) >= CHECKPOINT_FALLBACK_PAGES {
            let _ = wal.checkpoint();
        }
        Ok(())
    }))
}

/// Runs a checkpoint in `mode`; when it takes in the whole log, records
/// that every commit finished before it is in the database file.
fn checkpoint(connection: &Connection, changes: &ChangeCounter, mode: &str) {
    let upto = changes.acknowledged_log_end();
    let done = connection.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
        ))
    });
    if let Ok((0, log, taken)) = done
        && log == taken
    {
        changes.mark_folded(upto);
        if mode == "TRUNCATE" {
            changes.forget_log_end();
        }
    }
}

impl Publisher {
    /// Applies one change in a transaction of its own, unless another
    /// process holds the root's write lock: then the change is handed back
    /// for the thread, which waits for the lock without holding up the
    /// caller's thread.
    #[allow(clippy::result_large_err)]
    fn apply_now(&mut self, change: Change) -> std::result::Result<Result<bool>, Change> {
        let db = &self.connection;
        let _ = db.busy_timeout(Duration::ZERO);
        let begun = sql::run_cached(db, "BEGIN IMMEDIATE");
        let _ = db.busy_timeout(sql::BUSY_TIMEOUT);
        match begun {
            Err(error) if sql::is_busy(&error) => return Err(change),
            Err(source) => return Ok(Err(index_error(&self.root, "writing", source))),
            Ok(()) => {}
        }
        let mut touched = BTreeSet::new();
        let outcome = match apply_in(
            db,
            &self.acting,
            &self.layout,
            self.refresh_after,
            change,
            &mut touched,
        ) {
            Ok(Ok(applied)) => commit(db, &self.changes).map(|()| {
                self.committed();
                Ok(applied)
            }),
            Ok(Err(refused)) => sql::run_cached(db, "ROLLBACK").map(|()| Err(refused)),
            Err(source) => Err(source),
        };
        Ok(outcome.unwrap_or_else(|source| {
            let _ = sql::run_cached(db, "ROLLBACK");
            Err(index_error(&self.root, "committing", source))
        }))
    }

    /// Counts a commit, and wakes the checkpointer every [`CHECKPOINT_EVERY`].
    fn committed(&self) {
        self.commits.set(self.commits.get() + 1);
        if self.commits.get().is_multiple_of(CHECKPOINT_EVERY) {
            let _ = self.checkpoints.try_send(());
        }
    }

    /// Applies jobs from `batch` in one transaction until it is empty or
    /// the transaction has run for `max_transaction_time`, makes the result
    /// durable (synced mode), commits and answers those jobs' callers.
    fn commit_some(&mut self, batch: &mut std::iter::Peekable<impl Iterator<Item = Job>>) {
        let mut replies = Vec::new();
        let (db, root, layout) = (&self.connection, &self.root, &self.layout);
        let acting = &self.acting;
        let refresh_after = self.refresh_after;
        let (durability, max_time) = (self.durability, self.max_transaction_time);
        let changes = &self.changes;
        let outcome = (|| {
            sql::run_cached(db, "BEGIN IMMEDIATE")?;
            // The clock starts once the lock is held: waiting for it is not
            // holding it, and a transaction always gets at least one change.
            let started = Instant::now();
            let mut touched = BTreeSet::new();
            let mut results = Vec::new();
            while (results.is_empty() || started.elapsed() < max_time)
                && let Some(job) = batch.next()
            {
                if abandoned(&job) {
                    continue;
                }
                let Job { change, reply } = job;
                replies.push(reply);
                sql::run_cached(db, "SAVEPOINT change")?;
                let result = match apply_in(db, acting, layout, refresh_after, change, &mut touched)
                {
                    Ok(Ok(applied)) => Ok(applied),
                    Ok(Err(refused)) => {
                        sql::run_cached(db, "ROLLBACK TO change")?;
                        Err(refused)
                    }
                    Err(source) => {
                        sql::run_cached(db, "ROLLBACK TO change")?;
                        Err(index_error(root, "writing", source))
                    }
                };
                sql::run_cached(db, "RELEASE change")?;
                results.push(result);
            }
            if durability == Durability::Synced
                && let Err(source) = touched.iter().try_for_each(|dir| sync_dir(dir))
            {
                // Renamed files stay as unindexed leftovers, which gc removes.
                let message = format!("published objects could not be made durable: {source}");
                return Ok(Err(message));
            }
            commit(db, changes)?;
            record(|| Step::Committed);
            Ok::<_, rusqlite::Error>(Ok(results))
        })();
        if matches!(outcome, Ok(Ok(_))) {
            self.committed();
        }
        match outcome {
            Ok(Ok(results)) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    record(|| Step::Acknowledged);
                    let _ = reply.send(result);
                }
            }
            Ok(Err(message)) => {
                let _ = sql::run_cached(db, "ROLLBACK");
                fail_all(replies, root, "syncing to disk", &message)
            }
            Err(source) => {
                let _ = sql::run_cached(db, "ROLLBACK");
                fail_all(replies, root, "committing", &source.to_string())
            }
        }
    }
}

/// Commits the open transaction, telling `changes` before and after.
fn commit(db: &Connection, changes: &ChangeCounter) -> rusqlite::Result<()> {
    let ticket = changes.start();
    let committed = sql::run_cached(db, "COMMIT");
    changes.finish(ticket);
    committed
}

/// Whether the job's caller gave up (its call timed out, its task was
/// dropped). Its change was never acknowledged, so it is dropped rather
/// than applied behind the caller's back, staged file and all.
fn abandoned(job: &Job) -> bool {
    if !job.reply.is_closed() {
        return false;
    }
    remove_staged_of(&job.change);
    true
}

/// Removes the files a change that will not be applied had staged.
fn remove_staged_of(change: &Change) {
    match change {
        Change::AddObject {
            staged: Staged::File(staged),
            ..
        }
        | Change::AddOutboard { staged, .. } => remove_staged(staged),
        Change::Record {
            change: Some(change),
            ..
        }
        | Change::ByActor { change, .. }
        | Change::WithinQuota { change, .. } => remove_staged_of(change),
        _ => {}
    }
}

fn fail_all(
    replies: Vec<oneshot::Sender<Result<bool>>>,
    root: &Path,
    action: &'static str,
    message: &str,
) {
    for reply in replies {
        let _ = reply.send(Err(index_error(root, action, message.to_owned())));
    }
}
