//! The root's index writer: one thread that owns the write connection and
//! applies queued writes in batches (group commit).
//!
//! Callers publish their object files first, then queue the index change and
//! wait for its acknowledgement. The thread takes every queued change at
//! once, applies each in its own savepoint (so one failing change does not
//! fail its neighbours), fsyncs the object directories the batch touched
//! (synced mode only) and commits once. In synced mode that is one WAL fsync
//! and one fsync per touched directory for the whole batch, instead of per
//! call: the more concurrent writers, the cheaper each write.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use crate::error::{Result, StoreError};
use crate::index::{self, WriteOp, index_error};
use crate::objects::sync_dir;
use crate::root::Durability;

/// The most changes committed in one transaction.
const MAX_BATCH: usize = 1024;

struct Job {
    op: WriteOp,
    /// A directory that must be fsync'd before the commit (synced mode).
    sync_dir: Option<PathBuf>,
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
    pub(crate) fn spawn(connection: Connection, root: PathBuf, durability: Durability) -> Self {
        let (queue, jobs) = mpsc::channel();
        let thread_root = root.clone();
        std::thread::Builder::new()
            .name("theater-store-writer".into())
            .spawn(move || run(connection, jobs, &thread_root, durability))
            .expect("spawning the index writer thread");
        Self { queue, root }
    }

    /// Queues `op` and waits until it is committed.
    pub(crate) async fn write(&self, op: WriteOp, sync_dir: Option<PathBuf>) -> Result<bool> {
        let (reply, acknowledged) = oneshot::channel();
        let stopped = || StoreError::WriterStopped {
            root: self.root.clone(),
        };
        self.queue
            .send(Job {
                op,
                sync_dir,
                reply,
            })
            .map_err(|_| stopped())?;
        acknowledged.await.map_err(|_| stopped())?
    }
}

fn run(mut connection: Connection, jobs: mpsc::Receiver<Job>, root: &Path, durability: Durability) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(&mut connection, batch, root, durability);
    }
}

fn commit_batch(connection: &mut Connection, batch: Vec<Job>, root: &Path, durability: Durability) {
    if durability == Durability::Synced {
        let dirs: BTreeSet<PathBuf> = batch
            .iter()
            .filter_map(|job| job.sync_dir.clone())
            .collect();
        for dir in dirs {
            if let Err(source) = sync_dir(&dir) {
                let message = format!("fsync of {} failed: {source}", dir.display());
                return fail_all(batch, root, "syncing object directory", &message);
            }
        }
    }
    let outcome = (|| {
        let mut transaction =
            connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(batch.len());
        for job in &batch {
            let savepoint = transaction.savepoint()?;
            let result = match index::apply(&savepoint, &job.op) {
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
        Ok::<_, rusqlite::Error>(results)
    })();
    match outcome {
        Ok(results) => {
            for (job, result) in batch.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        Err(source) => fail_all(batch, root, "committing", &source.to_string()),
    }
}

fn fail_all(batch: Vec<Job>, root: &Path, action: &'static str, message: &str) {
    for job in batch {
        let _ = job
            .reply
            .send(Err(index_error(root, action, message.to_owned())));
    }
}
