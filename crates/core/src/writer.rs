//! The root's index writer: one thread that owns the write connection and
//! applies queued writes in batches (group commit).
//!
//! Callers write new content to temporary files, then queue the change and
//! wait for its acknowledgement. The thread takes up to [`MAX_BATCH`]
//! queued changes at once, drops those whose caller has given up, and
//! applies the rest in transactions of at most [`MAX_TRANSACTION_TIME`]
//! each, so that no process waits long for the root's write lock. Each
//! change gets its own savepoint (one failing change does not fail its
//! neighbours). Publishing renames the temporary file into place inside
//! the transaction, under the index's write lock, so that a garbage
//! collection in this or any other process never interleaves with it.
//!
//! In synced mode on Linux the order is: one `syncfs` per batch before the
//! write lock is taken (the staged files' contents); then, per
//! transaction, the renames and index rows, the commit, and one more
//! `syncfs` (the renames and the WAL); only then are its callers answered.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use crate::error::{Result, StoreError};
use crate::index::{self, WriteOp, index_error};
use crate::objects::ObjectFiles;
use crate::root::Durability;

/// The most changes taken from the queue at once.
const MAX_BATCH: usize = 1024;

/// How long one transaction keeps applying changes before it commits and
/// lets other processes at the root's write lock.
const MAX_TRANSACTION_TIME: Duration = Duration::from_millis(50);

struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<bool>>,
}

/// Handle to the writer thread; dropping the last handle stops the thread
/// once its queue is drained.
#[derive(Debug)]
pub(crate) struct Writer {
    queue: mpsc::Sender<Job>,
    root: PathBuf,
}

impl Writer {
    pub(crate) fn spawn(
        connection: Connection,
        root: PathBuf,
        objects: ObjectFiles,
        durability: Durability,
    ) -> Self {
        let (queue, jobs) = mpsc::channel();
        let thread_root = root.clone();
        std::thread::Builder::new()
            .name("theater-store-writer".into())
            .spawn(move || run(connection, jobs, &thread_root, &objects, durability))
            .expect("spawning the index writer thread");
        Self { queue, root }
    }

    /// Queues `op` and waits until it is committed.
    pub(crate) async fn write(&self, op: WriteOp) -> Result<bool> {
        let acknowledged = self.enqueue(op);
        self.wait(acknowledged).await
    }

    /// Queues all of `ops` at once, so they can share commits, and waits for
    /// each.
    pub(crate) async fn write_all(&self, ops: Vec<WriteOp>) -> Vec<Result<bool>> {
        let pending: Vec<_> = ops.into_iter().map(|op| self.enqueue(op)).collect();
        let mut results = Vec::with_capacity(pending.len());
        for acknowledged in pending {
            results.push(self.wait(acknowledged).await);
        }
        results
    }

    fn enqueue(&self, op: WriteOp) -> Option<oneshot::Receiver<Result<bool>>> {
        let (reply, acknowledged) = oneshot::channel();
        self.queue.send(Job { op, reply }).ok()?;
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

fn run(
    mut connection: Connection,
    jobs: mpsc::Receiver<Job>,
    root: &Path,
    objects: &ObjectFiles,
    durability: Durability,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Synced mode: staged files' contents must be durable before they
        // are renamed into place, so that a crash never exposes a renamed
        // but empty object. Every job was staged before it was queued, so
        // one flush, before the write lock is taken, covers the batch.
        let stages_files = batch.iter().any(|job| {
            matches!(
                job.op,
                WriteOp::AddObject {
                    staged: Some(_),
                    ..
                }
            )
        });
        if durability == Durability::Synced
            && stages_files
            && cfg!(target_os = "linux")
            && let Err(source) = make_durable(root, &BTreeSet::new())
        {
            let message = format!("staged objects could not be made durable: {source}");
            let replies = batch.into_iter().map(|job| job.reply).collect();
            fail_all(replies, root, "syncing to disk", &message);
            continue;
        }
        let mut batch = batch.into_iter().peekable();
        while batch.peek().is_some() {
            commit_some(&mut connection, &mut batch, root, objects, durability);
        }
    }
}

/// Whether the job's caller gave up (its call timed out, its task was
/// dropped). Its change was never acknowledged, so it is dropped rather
/// than applied behind the caller's back, staged file and all.
fn abandoned(job: &Job) -> bool {
    if !job.reply.is_closed() {
        return false;
    }
    if let WriteOp::AddObject {
        staged: Some(staged),
        ..
    } = &job.op
    {
        let _ = std::fs::remove_file(staged);
    }
    true
}

/// Applies jobs from `batch` in one transaction until it is empty or the
/// transaction has run for [`MAX_TRANSACTION_TIME`], commits, makes the
/// result durable (synced mode) and answers those jobs' callers.
fn commit_some(
    connection: &mut Connection,
    batch: &mut std::iter::Peekable<impl Iterator<Item = Job>>,
    root: &Path,
    objects: &ObjectFiles,
    durability: Durability,
) {
    let mut replies = Vec::new();
    let outcome = (|| {
        let mut transaction =
            connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // The clock starts once the lock is held: waiting for it is not
        // holding it, and a transaction always gets at least one change.
        let started = Instant::now();
        let mut touched = BTreeSet::new();
        let mut results = Vec::new();
        while (results.is_empty() || started.elapsed() < MAX_TRANSACTION_TIME)
            && let Some(job) = batch.next()
        {
            if abandoned(&job) {
                continue;
            }
            let Job { op, reply } = job;
            replies.push(reply);
            let savepoint = transaction.savepoint()?;
            let result = match index::apply(&savepoint, objects, op, &mut touched) {
                Ok(Ok(applied)) => {
                    savepoint.commit()?;
                    Ok(applied)
                }
                Ok(Err(refused)) => Err(refused),
                Err(source) => Err(index_error(root, "writing", source)),
            };
            results.push(result);
        }
        transaction.commit()?;
        if durability == Durability::Synced
            && let Err(source) = make_durable(root, &touched)
        {
            let message = format!("the batch is committed but could not be made durable: {source}");
            return Ok(Err(message));
        }
        Ok::<_, rusqlite::Error>(Ok(results))
    })();
    match outcome {
        Ok(Ok(results)) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Ok(Err(message)) => fail_all(replies, root, "syncing to disk", &message),
        Err(source) => fail_all(replies, root, "committing", &source.to_string()),
    }
}

/// Makes everything the batch wrote durable: object files (already
/// fsync'd by their writers), their directory entries and the index's WAL.
/// On Linux one `syncfs` covers all of it, whatever the batch size; that is
/// the group commit. Elsewhere each touched directory is fsync'd and the
/// index runs with `synchronous=FULL`.
fn make_durable(root: &Path, touched: &BTreeSet<PathBuf>) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let _ = touched;
        let dir = std::fs::File::open(root)?;
        // SAFETY: syncfs only reads the descriptor, which `dir` keeps open.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = root;
        touched
            .iter()
            .try_for_each(|dir| crate::objects::sync_dir(dir))
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
