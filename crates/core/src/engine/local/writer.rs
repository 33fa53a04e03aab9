//! The local engine's writer: one thread that owns the index's write
//! connection and publishes every change, in batches (group commit).
//!
//! Callers stage new content first, on their own threads: small content
//! stays in memory, large content goes to a temporary file (whose contents
//! are fsync'd there, in synced mode). Then they queue the change and wait
//! for its acknowledgement. The thread takes up to `max_batch` queued
//! changes at once, drops those whose caller has given up, and applies the
//! rest in transactions of at most `max_transaction_time` each, so that no
//! process waits long for the root's write lock. Each change gets its own
//! savepoint: one refused change does not fail its neighbours.
//!
//! Publication happens here, inside the transaction, under the index's
//! write lock, so that a garbage collection in this or any other process
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
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::layout::{ObjectFiles, sync_dir};
use super::sql::{self, index_error};
use super::steps::{Step, record};
use crate::durability::Durability;
use crate::engine::{Change, Expect, Staged};
use crate::error::{Result, StoreError, io_error};
use crate::names::{Digest, StoreId};
use crate::options::Options;

struct Job {
    change: Change,
    reply: oneshot::Sender<Result<bool>>,
}

/// Handle to the writer thread; dropping the last handle stops the thread
/// once its queue is drained.
#[derive(Debug)]
pub(crate) struct Writer {
    queue: mpsc::Sender<Job>,
    root: PathBuf,
}

/// What the writer thread works with.
struct Publisher {
    connection: Connection,
    root: PathBuf,
    layout: ObjectFiles,
    durability: Durability,
    max_batch: usize,
    max_transaction_time: Duration,
}

impl Writer {
    pub(crate) fn spawn(
        connection: Connection,
        root: PathBuf,
        layout: ObjectFiles,
        options: &Options,
    ) -> Self {
        let (queue, jobs) = mpsc::channel();
        let publisher = Publisher {
            connection,
            root: root.clone(),
            layout,
            durability: options.durability,
            max_batch: options.max_batch.max(1),
            max_transaction_time: options.max_transaction_time,
        };
        std::thread::Builder::new()
            .name("theater-store-writer".into())
            .spawn(move || publisher.run(jobs))
            .expect("spawning the index writer thread");
        Self { queue, root }
    }

    /// Queues `change` and waits until it is committed.
    pub(crate) async fn write(&self, change: Change) -> Result<bool> {
        let acknowledged = self.enqueue(change);
        self.wait(acknowledged).await
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

    fn enqueue(&self, change: Change) -> Option<oneshot::Receiver<Result<bool>>> {
        let (reply, acknowledged) = oneshot::channel();
        self.queue.send(Job { change, reply }).ok()?;
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

impl Publisher {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let mut batch = batch.into_iter().peekable();
            while batch.peek().is_some() {
                self.commit_some(&mut batch);
            }
        }
    }

    /// Applies jobs from `batch` in one transaction until it is empty or
    /// the transaction has run for `max_transaction_time`, makes the result
    /// durable (synced mode), commits and answers those jobs' callers.
    fn commit_some(&mut self, batch: &mut std::iter::Peekable<impl Iterator<Item = Job>>) {
        let mut replies = Vec::new();
        let (root, layout) = (&self.root, &self.layout);
        let (durability, max_time) = (self.durability, self.max_transaction_time);
        let outcome = (|| {
            let mut transaction = self
                .connection
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
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
                let savepoint = transaction.savepoint()?;
                let result = match apply(&savepoint, layout, change, &mut touched) {
                    Ok(Ok(applied)) => {
                        savepoint.commit()?;
                        Ok(applied)
                    }
                    Ok(Err(refused)) => Err(refused),
                    Err(source) => Err(index_error(root, "writing", source)),
                };
                results.push(result);
            }
            if durability == Durability::Synced
                && let Err(source) = touched.iter().try_for_each(|dir| sync_dir(dir))
            {
                // Rolled back on drop: renamed files stay as unindexed
                // leftovers, which gc removes.
                let message = format!("published objects could not be made durable: {source}");
                return Ok(Err(message));
            }
            transaction.commit()?;
            record(|| Step::Committed);
            Ok::<_, rusqlite::Error>(Ok(results))
        })();
        match outcome {
            Ok(Ok(results)) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    record(|| Step::Acknowledged);
                    let _ = reply.send(result);
                }
            }
            Ok(Err(message)) => fail_all(replies, root, "syncing to disk", &message),
            Err(source) => fail_all(replies, root, "committing", &source.to_string()),
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
    if let Change::AddObject {
        staged: Some(Staged::File(staged)),
        ..
    } = &job.change
    {
        let _ = std::fs::remove_file(staged);
    }
    true
}

/// Applies one change inside the writer's open transaction. Directories
/// that got a new entry are added to `touched`, for fsync in synced mode.
/// An `Ok(Err(_))` is a refusal: the caller rolls this change back alone.
fn apply(
    db: &Connection,
    layout: &ObjectFiles,
    change: Change,
    touched: &mut BTreeSet<PathBuf>,
) -> rusqlite::Result<Result<bool>> {
    match change {
        Change::CreateStore { store } => sql::ensure_store(db, &store).map(Ok),
        Change::AddObject {
            store,
            digest,
            size,
            staged,
            label,
        } => {
            sql::ensure_store(db, &store)?;
            let held = sql::inline_id(db, &store, digest)?;
            let inline_id = match (held, staged) {
                (None, None) => return Ok(Err(not_found(&store, digest))),
                (None, Some(Staged::Inline(bytes))) => Some(sql::insert_inline(db, &bytes)?),
                (Some(Some(_)), Some(Staged::File(path))) => {
                    // Held inline already: the file is not needed.
                    let _ = std::fs::remove_file(&path);
                    None
                }
                (None | Some(None), Some(Staged::File(path))) => {
                    // New, or held as a file: publishing rewrites the file,
                    // which also heals a damaged copy.
                    match layout.publish(&store, &path, digest) {
                        Ok(shard) => touched.insert(shard),
                        Err(source) => {
                            let _ = std::fs::remove_file(&path);
                            let at = layout.object_path(&store, digest);
                            return Ok(Err(io_error(&store, "publishing object", &at, source)));
                        }
                    };
                    None
                }
                (Some(Some(id)), Some(Staged::Inline(bytes))) => {
                    // Stored again: rewriting heals a damaged copy.
                    sql::rewrite_inline(db, id, &bytes)?;
                    None
                }
                (Some(None), Some(Staged::Inline(bytes))) => {
                    // Held as a file (written before content went inline,
                    // or under a smaller threshold). An intact file stays;
                    // a missing or damaged one is replaced by the row.
                    match layout.is_intact(&store, digest) {
                        Ok(true) => None,
                        Ok(false) => {
                            let _ = layout.quarantine(&store, digest);
                            Some(sql::insert_inline(db, &bytes)?)
                        }
                        Err(refused) => return Ok(Err(refused)),
                    }
                }
                (Some(_), None) => None,
            };
            sql::upsert_object(db, &store, digest, size, inline_id)?;
            if let Some(label) = label {
                sql::upsert_label(db, &store, &label, digest)?;
            }
            Ok(Ok(held.is_none()))
        }
        Change::SetLabel {
            store,
            label,
            target,
            expect,
        } => {
            if let Some(target) = target
                && !sql::has_object(db, &store, target)?
            {
                return Ok(Err(not_found(&store, target)));
            }
            if let Expect::Exactly(expected) = expect
                && sql::label_target(db, &store, &label)? != expected
            {
                return Ok(Ok(false));
            }
            match target {
                Some(target) => sql::upsert_label(db, &store, &label, target)?,
                None => sql::delete_label(db, &store, &label)?,
            }
            Ok(Ok(true))
        }
        Change::SetLabels { store, labels } => {
            for (label, target) in &labels {
                if !sql::has_object(db, &store, *target)? {
                    return Ok(Err(not_found(&store, *target)));
                }
                sql::upsert_label(db, &store, label, *target)?;
            }
            Ok(Ok(true))
        }
        Change::RemoveObject {
            store,
            digest,
            cutoff,
        } => match sql::remove_unreachable_object(db, &store, digest, cutoff)? {
            None => Ok(Ok(false)),
            Some(true) => Ok(Ok(true)),
            Some(false) => {
                let path = layout.object_path(&store, digest);
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok(Ok(true)),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Ok(true)),
                    Err(source) => Ok(Err(io_error(&store, "removing object", &path, source))),
                }
            }
        },
        Change::RemoveUnindexed {
            store,
            digest,
            cutoff,
        } => {
            if sql::has_object(db, &store, digest)? {
                return Ok(Ok(false));
            }
            let path = layout.object_path(&store, digest);
            let old_enough = std::fs::symlink_metadata(&path)
                .and_then(|metadata| metadata.modified())
                .is_ok_and(|modified| modified < cutoff);
            if !old_enough {
                return Ok(Ok(false));
            }
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(Ok(true)),
                Err(source) => Ok(Err(io_error(
                    &store,
                    "removing unindexed object",
                    &path,
                    source,
                ))),
            }
        }
        Change::QuarantineObject { store, digest } => quarantine(db, layout, &store, digest),
        Change::RemoveLabels { store, limit } => Ok(Ok(sql::delete_labels(db, &store, limit)? > 0)),
        Change::RemoveEmptyStore { store, cutoff } => {
            if !sql::delete_empty_store(db, &store, cutoff)? {
                return Ok(Ok(false));
            }
            match layout.remove_store_files(&store) {
                Ok(()) => Ok(Ok(true)),
                Err(refused) => Ok(Err(refused)),
            }
        }
    }
}

/// Moves a damaged object aside and forgets it. verify found it damaged a
/// while ago; someone may have stored the same bytes since, which rewrote
/// them. So it is checked again, here, under the write lock, and healed
/// content is never taken away.
fn quarantine(
    db: &Connection,
    layout: &ObjectFiles,
    store: &StoreId,
    digest: Digest,
) -> rusqlite::Result<Result<bool>> {
    if let Some((_, Some(bytes))) = sql::object_content(db, store, digest)? {
        if Digest::of(&bytes) == digest {
            return Ok(Ok(false));
        }
        if let Err(source) = layout.quarantine_bytes(store, digest, &bytes) {
            let path = layout.store_dir(store).join("quarantine");
            return Ok(Err(io_error(store, "quarantining object", &path, source)));
        }
        sql::forget_object(db, store, digest)?;
        return Ok(Ok(true));
    }
    match layout.is_intact(store, digest) {
        Ok(true) => return Ok(Ok(false)),
        Ok(false) => {}
        Err(refused) => return Ok(Err(refused)),
    }
    sql::forget_object(db, store, digest)?;
    match layout.quarantine(store, digest) {
        Ok(_) => Ok(Ok(true)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Ok(false)),
        Err(source) => {
            let path = layout.object_path(store, digest);
            Ok(Err(io_error(store, "quarantining object", &path, source)))
        }
    }
}

fn not_found(store: &StoreId, digest: Digest) -> StoreError {
    StoreError::NotFound {
        store: store.to_string(),
        reference: digest.to_hex(),
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
