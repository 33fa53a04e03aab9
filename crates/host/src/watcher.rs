//! Keyvalue watchers: a component exporting `wasi:keyvalue/watcher`
//! (world `watch-service`) is kept instantiated and called with `on-set`
//! or `on-delete` for each change to the buckets it watches, in the order
//! of each bucket's change log, under the run's grants and limits.
//!
//! How far it got is kept per bucket in a [`ChangeCursor`] named after the
//! run's actor, advanced after each call returns. A watcher stopped
//! between calls, or killed, carries on where it was: each change is
//! delivered once, except one whose call was cut short by a crash, which
//! is delivered again.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use futures_util::stream::{self, StreamExt};
use theater_store::{
    AtMost, ChangeCursor, ContentStore, Event, LabelChange, OutageBackoff, StoreError,
    through_outages,
};
use wasmtime::Store;
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::HostError;
use crate::bindings::watch_service::WatchService;
use crate::enforce::{ActorFailure, deadline_ticks};
use crate::policy::{Access, Limits};
use crate::resources::Bucket;
use crate::runner::{
    ActorComponent, ActorHost, ActorState, CommandOutput, Kind, RunOptions, end_run, record_start,
    restore_created, run_outcome,
};

/// How much of a watcher's stdout and stderr is kept when captured.
const OUTPUT_CAPACITY: usize = 1 << 20;

/// One bucket a watcher follows: the store, and the keys (labels) in it
/// that start with `prefix` (empty: all of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedBucket {
    /// The bucket identifier, which is a store id.
    pub bucket: String,
    /// Only keys starting with this.
    pub prefix: String,
}

/// Where a watcher starts in each bucket's change log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartAt {
    /// Where the run's actor got to last time; for a bucket it never
    /// watched, with the changes made from now on.
    #[default]
    Resume,
    /// With the changes after sequence number `seq` (0: every change
    /// the log still holds), whatever was delivered before.
    After(u64),
}

/// What a watcher run does, beyond [`RunOptions`].
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    /// The buckets to follow.
    pub buckets: Vec<WatchedBucket>,
    /// Where to start in each.
    pub start: StartAt,
    /// Where its stdout and stderr go.
    pub output: Option<CommandOutput>,
}

/// What happens during a watcher run, as it happens, for the embedder to
/// show or log.
#[derive(Debug)]
pub enum WatchProgress<'a> {
    /// The watcher follows `bucket` from after change `after`.
    Started {
        /// The bucket.
        bucket: &'a WatchedBucket,
        /// The last change it will not be given.
        after: u64,
    },
    /// A change was handed to the watcher and its call returned.
    Delivered {
        /// The bucket.
        bucket: &'a WatchedBucket,
        /// The change.
        change: &'a LabelChange,
    },
    /// A change could not be delivered because its value is no longer
    /// stored (collected after the key moved on); the newer change that
    /// moved it comes next.
    Skipped {
        /// The bucket.
        bucket: &'a WatchedBucket,
        /// The change.
        change: &'a LabelChange,
    },
}

/// What a watcher run produced.
#[derive(Debug)]
pub struct WatcherRun {
    /// `Ok` when it was stopped by the embedder; otherwise why it ended.
    pub outcome: Result<(), ActorFailure>,
    /// How many changes were delivered (calls that returned).
    pub delivered: u64,
    /// Its stdout, when captured.
    pub stdout: Vec<u8>,
    /// Its stderr, when captured; then any notes from the host.
    pub stderr: String,
}

impl WatcherRun {
    fn refused(failure: ActorFailure) -> Self {
        Self {
            outcome: Err(failure),
            delivered: 0,
            stdout: Vec::new(),
            stderr: String::new(),
        }
    }
}

/// A bucket being followed: what the guest gets a handle on, and where
/// its position is kept.
struct Followed {
    watched: WatchedBucket,
    store: ContentStore,
    cursor: ChangeCursor,
}

impl ActorHost {
    /// Instantiates a keyvalue watcher once and calls its `on-set` or
    /// `on-delete` for each change to the keys it watches, one call at a
    /// time, each bucket's changes in their log order, until `stop`
    /// resolves (between calls) or the run fails. Each call gets
    /// [`crate::Limits::timeout`] of its own; memory and quotas are the
    /// run's, as for any actor. Every bucket must be granted at least
    /// read-only.
    ///
    /// Positions are kept per bucket under the run's actor id (the
    /// chain's, or the component's when recording is off; see
    /// [`RunOptions::chain`]): another run as the same actor resumes.
    /// `progress` hears of each start and delivery.
    pub async fn run_watcher(
        &self,
        watcher: &ActorComponent,
        options: RunOptions,
        watch: WatchOptions,
        stop: impl Future<Output = ()>,
        mut progress: impl FnMut(WatchProgress<'_>),
    ) -> WatcherRun {
        let limits = options.limits.clone();
        let Kind::Watcher(pre) = &watcher.kind else {
            return WatcherRun::refused(ActorFailure::InvalidOptions(
                "the component does not export wasi:keyvalue/watcher (world watch-service)".into(),
            ));
        };
        if watch.buckets.is_empty() {
            return WatcherRun::refused(ActorFailure::InvalidOptions(
                "a watcher needs at least one bucket to watch".into(),
            ));
        }
        let consumer = options
            .chain
            .actor_id(watcher)
            .unwrap_or(watcher.default_actor_id())
            .to_owned();
        let output = watch.output.unwrap_or(CommandOutput::Capture);
        let stdout = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let stderr = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let mut wasi = WasiCtx::builder();
        wasi.envs(&options.env);
        match output {
            CommandOutput::Inherit => wasi.inherit_stdout().inherit_stderr(),
            CommandOutput::Capture => wasi.stdout(stdout.clone()).stderr(stderr.clone()),
        };
        let mut store = match self.new_store(watcher, options, wasi.build()) {
            Ok(store) => store,
            Err(failure) => return WatcherRun::refused(failure),
        };
        let followed = match follow(&store, &consumer, &watch.buckets) {
            Ok(followed) => followed,
            Err(failure) => return WatcherRun::refused(failure),
        };
        let chain = store.data().theater.chain().cloned();
        let mut host_notes = record_start(chain.as_ref(), watcher, "watch", &limits).await;
        host_notes.extend(restore_created(&mut store).await);

        let mut delivered = 0;
        let outcome = async {
            let mut stop = std::pin::pin!(stop);
            let mut feeds = Vec::with_capacity(followed.len());
            for (index, bucket) in followed.iter().enumerate() {
                let started = outage_or_stop(&mut stop, || start_position(bucket, watch.start));
                let Some(after) = started.await else {
                    return Ok(());
                };
                let after = after.map_err(|error| watch_failed(bucket, &error))?;
                progress(WatchProgress::Started {
                    bucket: &bucket.watched,
                    after,
                });
                let changes = bucket.store.watch(&bucket.watched.prefix, after);
                feeds.push(changes.map(move |change| (index, change)));
            }
            let mut changes = stream::select_all(feeds);
            let instance = pre
                .instantiate_async(&mut store)
                .await
                .map_err(|error| store.data().failure(&error, ActorFailure::of_instantiation))?;
            loop {
                let next = tokio::select! {
                    () = &mut stop => return Ok(()),
                    next = changes.next() => next,
                };
                let Some((index, change)) = next else {
                    // Watches end only after an error, which came first.
                    return Ok(());
                };
                let bucket = &followed[index];
                let change = change.map_err(|error| watch_failed(bucket, &error))?;
                // The host's own reads and writes wait out a shared root's
                // server outage and carry on; a stop during an outage ends
                // the run (before the call, or with the cursor left before
                // this change, which is then delivered again).
                let read_limit = store.data().theater.read_limit();
                let read = outage_or_stop(&mut stop, || read_value(bucket, &change, read_limit));
                let Some(value) = read.await else {
                    return Ok(());
                };
                let value = match value.map_err(|error| watch_failed(bucket, &error))? {
                    Value::Gone => None,
                    Value::TooLarge { size } => {
                        return Err(ActorFailure::WatchStopped(format!(
                            "bucket {}: the value of key {:?} at change {} is {size} bytes, more \
                             than the {read_limit} bytes this watcher may read",
                            bucket.watched.bucket, change.label, change.seq
                        )));
                    }
                    value => Some(value),
                };
                if let Some(value) = value {
                    let recorded =
                        record_delivery(&mut store, &mut stop, bucket, &change, &value, &limits);
                    if !recorded.await? {
                        return Ok(());
                    }
                    deliver(&mut store, &instance, bucket, &change, value, &limits).await?;
                    delivered += 1;
                    progress(WatchProgress::Delivered {
                        bucket: &bucket.watched,
                        change: &change,
                    });
                } else {
                    progress(WatchProgress::Skipped {
                        bucket: &bucket.watched,
                        change: &change,
                    });
                }
                let advanced = outage_or_stop(&mut stop, || bucket.cursor.advance(change.seq));
                let Some(advanced) = advanced.await else {
                    return Ok(());
                };
                advanced.map_err(|error| watch_failed(bucket, &error))?;
            }
        }
        .await;

        let outcome = match outcome {
            Err(_) if store.data().theater.timed_out() => {
                Err(ActorFailure::TimedOut(limits.timeout))
            }
            outcome => outcome,
        };
        let end = run_outcome(outcome.as_ref().err());
        let stderr = end_run(chain.as_ref(), end, &limits, host_notes, &stderr).await;
        WatcherRun {
            outcome,
            delivered,
            stdout: stdout.contents().to_vec(),
            stderr,
        }
    }
}

/// Opens each watched bucket, checking the grants, and its cursor.
fn follow(
    store: &Store<ActorState>,
    consumer: &str,
    buckets: &[WatchedBucket],
) -> Result<Vec<Followed>, ActorFailure> {
    let ctx = &store.data().theater;
    buckets
        .iter()
        .map(|watched| {
            let refused = |error: &dyn std::fmt::Display| {
                ActorFailure::InvalidOptions(format!(
                    "cannot watch bucket {}: {error}",
                    watched.bucket
                ))
            };
            let handle = ctx.store_handle(&watched.bucket).map_err(|e| refused(&e))?;
            ctx.grant(&handle, Access::ReadOnly)
                .map_err(|e| refused(&e))?;
            let cursor = handle
                .cursor(consumer, &watched.prefix)
                .map_err(|e| refused(&e))?;
            Ok(Followed {
                watched: watched.clone(),
                store: handle,
                cursor,
            })
        })
        .collect()
}

/// The last change not to deliver: the one `start` names, else the
/// cursor's, else the newest now. Recorded at once, so that a watcher
/// that stops before its first change still misses none made meanwhile.
async fn start_position(bucket: &Followed, start: StartAt) -> Result<u64, StoreError> {
    let position = match start {
        StartAt::After(seq) => seq,
        StartAt::Resume => match bucket.cursor.position().await? {
            Some(seq) => return Ok(seq),
            None => bucket.store.last_change().await?,
        },
    };
    bucket.cursor.advance(position).await?;
    Ok(position)
}

/// What a change hands the watcher.
enum Value {
    /// A key set to these bytes.
    Set(Vec<u8>),
    /// A key deleted.
    Deleted,
    /// A key set to a value no longer stored: nothing to deliver.
    Gone,
    /// A value larger than the watcher may read.
    TooLarge { size: u64 },
}

/// Reads what `change` set (at most `read_limit` bytes).
async fn read_value(
    bucket: &Followed,
    change: &LabelChange,
    read_limit: u64,
) -> Result<Value, StoreError> {
    let Some(target) = &change.new else {
        return Ok(Value::Deleted);
    };
    match bucket.store.get_at_most(target, read_limit).await {
        Ok(AtMost::Content(value)) => Ok(Value::Set(value)),
        Ok(AtMost::TooLarge { size }) => Ok(Value::TooLarge { size }),
        Err(StoreError::NotFound { .. }) => Ok(Value::Gone),
        Err(error) => Err(error),
    }
}

/// Runs `attempt`; if a shared root's server is down, tries again until
/// it is back ([`through_outages`]) or `stop` comes (`None`). Only an
/// outage is raced with the stop: work that can finish, finishes.
async fn outage_or_stop<T, S, F, Fut>(
    stop: &mut Pin<&mut S>,
    mut attempt: F,
) -> Option<Result<T, StoreError>>
where
    S: Future<Output = ()>,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    match attempt().await {
        Err(error) if error.is_outage() => tokio::select! {
            () = stop.as_mut() => None,
            done = through_outages(attempt) => Some(done),
        },
        done => Some(done),
    }
}

/// The delivery is an input of the actor's: its chain records it before
/// the call, charged to the actor's budget as its own calls are. Waits out
/// a server outage (returning `false` if `stop` comes meanwhile); any
/// other failure stops the watcher.
async fn record_delivery<S: Future<Output = ()>>(
    store: &mut Store<ActorState>,
    stop: &mut Pin<&mut S>,
    bucket: &Followed,
    change: &LabelChange,
    value: &Value,
    limits: &Limits,
) -> Result<bool, ActorFailure> {
    let (call, size) = match value {
        Value::Set(value) => ("wasi:keyvalue/watcher.on-set", Some(value.len() as u64)),
        _ => ("wasi:keyvalue/watcher.on-delete", None),
    };
    let event = |op| Event {
        store: Some(bucket.watched.bucket.clone()),
        label: Some(change.label.clone()),
        refs: change.new.iter().map(|r| r.hash().to_owned()).collect(),
        size,
        ..Event::new(op)
    };
    let mut backoff = OutageBackoff::default();
    let failed = loop {
        let ctx = &mut store.data_mut().theater;
        ctx.set_deadline(Instant::now().checked_add(limits.timeout));
        ctx.begin(call, event);
        match ctx.end(Ok(())).await {
            Ok(()) => return Ok(true),
            Err(HostError::Store(error)) if error.is_outage() => tokio::select! {
                () = stop.as_mut() => return Ok(false),
                () = backoff.wait(&error) => {}
            },
            Err(error) => break error,
        }
    };
    Err(ActorFailure::WatchStopped(format!(
        "bucket {}: the delivery of change {} could not be recorded: {failed}",
        bucket.watched.bucket, change.seq
    )))
}

/// Calls the watcher for one change, under a deadline of its own.
async fn deliver(
    store: &mut Store<ActorState>,
    instance: &WatchService,
    bucket: &Followed,
    change: &LabelChange,
    value: Value,
    limits: &Limits,
) -> Result<(), ActorFailure> {
    store.set_epoch_deadline(deadline_ticks(limits.timeout));
    store
        .data_mut()
        .theater
        .set_deadline(Instant::now().checked_add(limits.timeout));
    let handle = store
        .data_mut()
        .table
        .push(Bucket {
            store: bucket.store.clone(),
        })
        .map_err(|error| ActorFailure::Trapped(format!("{error:#}")))?;
    let watcher = instance.wasi_keyvalue_watcher();
    let called = match &value {
        Value::Set(value) => {
            watcher
                .call_on_set(&mut *store, handle, &change.label, value)
                .await
        }
        _ => {
            watcher
                .call_on_delete(&mut *store, handle, &change.label)
                .await
        }
    };
    called.map_err(|trap| store.data().failure(&trap, ActorFailure::of_call))?;
    Ok(())
}

/// A watch that cannot go on because reading the store failed.
fn watch_failed(bucket: &Followed, error: &StoreError) -> ActorFailure {
    ActorFailure::WatchStopped(format!(
        "bucket {} (keys starting {:?}): {error}",
        bucket.watched.bucket, bucket.watched.prefix
    ))
}
