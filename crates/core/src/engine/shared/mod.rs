//! The shared engine: one store root for many hosts. The index (stores,
//! object rows with small content inline, labels, totals) is in
//! PostgreSQL (`index.rs`); larger content is in an S3-compatible object
//! store, with a bounded read cache on each host's disk (`objects.rs`).
//!
//! Rules that hold across hosts (see ARCHITECTURE.md, "The shared engine"):
//! - an object is published before its row: PUT (create-if-absent), then
//!   the row, in a transaction holding the object's lock in share mode
//!   from before the PUT to the commit;
//! - a collection takes the object's lock exclusively, deletes the row
//!   (only if old enough and unlabelled), commits, and deletes the bytes
//!   before it lets go, so a publication never meets a half-done one;
//! - label writes lock their target's row in share mode, and compare-and-
//!   swap is one conditional statement on the primary.
//!
//! The engine runs its connections on a small runtime of its own, so a
//! root works the same from any caller's runtime, or none.

mod index;
pub(crate) mod location;
mod objects;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use self::index::{LabelWrite, PostgresError};
use self::location::SharedLocation;
use self::objects::{Objects, ReadCache, Uploaded};
use super::local::layout;
use super::{
    ChainAppend, ChainHead, ChainTip, Change, Expect, LabelRow, LinkRow, ObjectSource, Scan,
    Snapshot, Staged, StagingSink, unix_now,
};
use crate::engine::READ_ON_CALLER_MAX;
use crate::error::{BoxError, Result, StoreError};
use crate::links::Links;
use crate::names::{Digest, StoreId};
use crate::options::Options;
use crate::stats::StoreStats;
use crate::task::Progress;
use crate::tree::{RandomAccess, TreeHasher};

/// An opened shared root.
#[derive(Debug)]
pub(crate) struct SharedEngine {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Debug)]
struct Inner {
    location: SharedLocation,
    pool: Pool,
    objects: Objects,
    cache: ReadCache,
    inline_threshold: usize,
    /// Row-only changes applied together in one transaction, at most.
    batch: usize,
    /// The refresh window in milliseconds (see `Change::AddObject`).
    refresh_after: i64,
    /// Publications of one object in this process take turns: the first
    /// uploads, the others then find its row and upload nothing.
    publishing: std::sync::Mutex<HashMap<(StoreId, Digest), Turn>>,
}

/// One object's turn to publish (see `Inner::publishing`).
type Turn = Arc<tokio::sync::Mutex<()>>;

impl Drop for SharedEngine {
    fn drop(&mut self) {
        // Dropped from inside some async task, a runtime must not block.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl SharedEngine {
    /// Connects to the root's database and bucket, creating the schema if
    /// needed. Blocking.
    pub(crate) fn open(location: &SharedLocation, options: &Options) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("theater-store-shared")
            .enable_all()
            .build()
            .map_err(|source| StoreError::Service {
                root: location.display.clone(),
                service: "this process",
                at: "here".into(),
                action: "starting the shared engine's runtime",
                source: source.into(),
            })?;
        let manager = Manager::from_config(
            location.postgres.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.shared_connections.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|source| postgres_error(location, "configuring connections", source))?;
        let objects = Objects::connect(&location.bucket, &location.prefix).map_err(|reason| {
            StoreError::InvalidRoot {
                root: location.display.clone(),
                reason: format!("the object store is misconfigured: {reason}"),
            }
        })?;
        let inner = Arc::new(Inner {
            cache: ReadCache::new(&location.cache_dir, options.shared_cache_bytes),
            location: location.clone(),
            pool,
            objects,
            inline_threshold: options.inline_threshold,
            batch: options.shared_batch.max(1),
            refresh_after: i64::try_from(options.refresh_after.as_millis()).unwrap_or(i64::MAX),
            publishing: std::sync::Mutex::default(),
        });
        let engine = Self {
            inner,
            runtime: Some(runtime),
        };
        engine.block(|inner| async move { inner.connect().await })?;
        Ok(engine)
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("runtime until dropped")
            .handle()
    }

    /// Runs `work` on the engine's runtime and waits for it from async code.
    async fn run<T, F>(&self, work: impl FnOnce(Arc<Inner>) -> F) -> T
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let task = self.handle().spawn(work(Arc::clone(&self.inner)));
        match task.await {
            Ok(value) => value,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }

    /// Runs `work` on the engine's runtime and waits for it, blocking.
    fn block<T, F>(&self, work: impl FnOnce(Arc<Inner>) -> F) -> T
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let work = work(Arc::clone(&self.inner));
        self.handle().spawn(async move {
            let _ = reply.send(work.await);
        });
        answer
            .recv()
            .expect("the shared engine's runtime ended a task without an answer")
    }

    pub(crate) fn stages_to_file(&self, size: usize) -> bool {
        size > self.inner.inline_threshold
    }

    pub(crate) fn stage(&self, store: &StoreId, content: Arc<Vec<u8>>) -> Result<Staged> {
        if !self.stages_to_file(content.len()) {
            return Ok(Staged::Inline(content));
        }
        self.inner
            .cache
            .files
            .write_temp(store, &content)
            .map(Staged::File)
    }

    pub(crate) fn attach_outboard(&self, staged: &Staged, outboard: &[u8]) {
        if let Staged::File(path) = staged
            && !outboard.is_empty()
        {
            let _ = std::fs::write(layout::staged_outboard(path), outboard);
        }
    }

    pub(crate) fn staging_sink(&self, store: &StoreId) -> Box<dyn StagingSink> {
        super::local::spill_sink(
            store,
            self.inner.cache.files.clone(),
            self.inner.inline_threshold,
        )
    }

    pub(crate) fn discard(&self, staged: Staged) {
        if let Staged::File(path) = staged {
            layout::remove_staged(&path);
        }
    }

    pub(crate) fn settled(&self) -> Option<u64> {
        // Other hosts announce nothing here: reads are never remembered.
        None
    }

    pub(crate) async fn apply(&self, change: Change) -> Result<bool> {
        self.run(|inner| async move { inner.apply(change).await })
            .await
    }

    pub(crate) async fn apply_all(&self, changes: Vec<Change>) -> Vec<Result<bool>> {
        self.run(|inner| async move { inner.apply_all(changes).await })
            .await
    }

    pub(crate) async fn object_size(&self, store: &StoreId, digest: Digest) -> Result<Option<u64>> {
        let store = store.clone();
        self.run(|inner| async move {
            let client = inner.client().await?;
            let held = index::object(&client, &store, digest, false).await;
            Ok(inner
                .index(held, "looking up object")?
                .map(|held| held.size))
        })
        .await
    }

    pub(crate) async fn has_object(&self, store: &StoreId, digest: Digest) -> Result<bool> {
        Ok(self.object_size(store, digest).await?.is_some())
    }

    pub(crate) async fn read_object(
        &self,
        store: &StoreId,
        digest: Digest,
    ) -> Result<Option<Vec<u8>>> {
        // Content is addressed by its digest: a verified copy here is the
        // answer, without asking the index.
        if let Some(bytes) = self.inner.cache.read(store, digest, READ_ON_CALLER_MAX) {
            return Ok(Some(bytes));
        }
        let store = store.clone();
        self.run(|inner| async move { inner.read_object(&store, digest).await })
            .await
    }

    pub(crate) async fn read_inline_many(
        &self,
        store: &StoreId,
        digests: &[Digest],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let (store, digests) = (store.clone(), digests.to_vec());
        self.run(|inner| async move {
            let client = inner.client().await?;
            let found = index::inline_many(&client, &store, &digests).await;
            inner.index(found, "reading objects")
        })
        .await
    }

    pub(crate) async fn label_target(
        &self,
        store: &StoreId,
        label: &str,
    ) -> Result<Option<Digest>> {
        Ok(self.chain_tip(store, label).await?.map(|row| row.head))
    }

    pub(crate) async fn chain_tip(
        &self,
        store: &StoreId,
        label: &str,
    ) -> Result<Option<ChainHead>> {
        let (store, label) = (store.clone(), label.to_owned());
        self.run(|inner| async move {
            let client = inner.client().await?;
            let found = index::label(&client, &store, &label).await;
            inner.index(found, "looking up label")
        })
        .await
    }

    pub(crate) async fn labels_page(
        &self,
        store: &StoreId,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LabelRow>> {
        let (store, prefix) = (store.clone(), prefix.to_owned());
        let after = after.map(str::to_owned);
        self.run(|inner| async move {
            let client = inner.client().await?;
            let page = index::labels_page(&client, &store, &prefix, after.as_deref(), limit).await;
            inner.index(page, "listing labels")
        })
        .await
    }

    pub(crate) async fn objects(&self, store: &StoreId) -> Result<Vec<Digest>> {
        let store = store.clone();
        self.run(|inner| async move {
            let client = inner.client().await?;
            let digests = index::digests(&client, &store).await;
            inner.index(digests, "listing objects")
        })
        .await
    }

    pub(crate) async fn store_stats(&self, store: &StoreId) -> Result<StoreStats> {
        let store = store.clone();
        self.run(|inner| async move {
            let client = inner.client().await?;
            let stats = index::store_stats(&client, &store).await;
            inner.index(stats, "reading totals")
        })
        .await
    }

    pub(crate) async fn store_created_at(&self, store: &StoreId) -> Result<Option<i64>> {
        let store = store.clone();
        self.run(|inner| async move {
            let client = inner.client().await?;
            let created = index::store_created_at(&client, &store).await;
            inner.index(created, "looking up store")
        })
        .await
    }

    pub(crate) fn stores(&self) -> Result<Vec<(String, StoreStats)>> {
        self.block(|inner| async move {
            let client = inner.client().await?;
            let stores = index::stores(&client).await;
            inner.index(stores, "listing stores")
        })
    }

    pub(crate) fn snapshot(&self, store: &StoreId, prefix: &str) -> Result<Snapshot> {
        let (store, prefix) = (store.clone(), prefix.to_owned());
        self.block(|inner| async move {
            let mut client = inner.client().await?;
            let taken = async {
                let transaction = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await?;
                let labels =
                    index::labels_page(&transaction, &store, &prefix, None, usize::MAX).await?;
                let objects = index::object_rows(&transaction, &store).await?;
                transaction.commit().await?;
                Ok(Snapshot { labels, objects })
            };
            inner.index(taken.await, "listing labels and objects")
        })
    }

    pub(crate) fn open_source(
        &self,
        store: &StoreId,
        digest: Digest,
    ) -> Result<Option<(u64, ObjectSource)>> {
        let store = store.clone();
        self.block(|inner| async move { inner.open_source(&store, digest).await })
    }

    pub(crate) fn build_outboard(
        &self,
        store: &StoreId,
        digest: Digest,
    ) -> Result<Option<(Digest, PathBuf)>> {
        let store = store.clone();
        self.block(|inner| async move {
            // Asked for when reading found the bytes or their outboard
            // wrong: this host's copy is not trusted, the bucket's is
            // fetched again (and cached if intact).
            inner.cache.forget(&store, digest);
            let Some(copy) = inner.local_copy(&store, digest).await? else {
                return Ok(None);
            };
            let staged = inner.cache.files.new_temp_path(&store);
            let outboard_path = layout::staged_outboard(&staged);
            let built = inner
                .cache
                .files
                .create_temp_at(&outboard_path)
                .and_then(|outboard| {
                    let (actual, outboard) =
                        layout::hash_tree(copy.path(), io::BufWriter::new(outboard))?;
                    outboard
                        .into_inner()
                        .map_err(io::IntoInnerError::into_error)?;
                    Ok(actual)
                });
            copy.release();
            match built {
                Ok(actual) => Ok(Some((actual, staged))),
                Err(source) => {
                    layout::remove_staged(&staged);
                    Err(crate::error::io_error(
                        &store,
                        "building outboard",
                        &outboard_path,
                        source,
                    ))
                }
            }
        })
    }

    pub(crate) fn scan(&self, store: &StoreId, progress: &dyn Progress) -> Result<Scan> {
        let store_id = store.clone();
        let (rows, inline, listed) = self.block(|inner| async move {
            let client = inner.client().await?;
            let rows = index::object_rows(&client, &store_id).await;
            let rows = inner.index(rows, "listing objects")?;
            let digests: Vec<Digest> = rows.iter().map(|row| row.digest).collect();
            let inline = index::inline_many(&client, &store_id, &digests).await;
            let inline = inner.index(inline, "reading inline objects")?;
            let listed = inner.objects.list(&store_id).await;
            let listed = inner.object_store(listed, "listing objects")?;
            Ok::<_, StoreError>((rows, inline, listed))
        })?;
        let indexed: std::collections::BTreeSet<Digest> =
            rows.iter().map(|row| row.digest).collect();
        let inline_bytes: u64 = inline.iter().flatten().map(|b| b.len() as u64).sum();
        let listed_bytes: u64 = listed.iter().map(|(_, _, size, _)| size).sum();
        progress.start(inline_bytes + listed_bytes);
        let mut scan = Scan::default();
        let tally = |scan: &mut Scan, digest: Digest, size: u64, actual: Digest| {
            scan.objects_checked += 1;
            scan.bytes_checked += size;
            progress.advance(size);
            if actual != digest {
                scan.corrupt.push(digest);
            } else if indexed.contains(&digest) {
                scan.intact.push(digest);
            } else {
                scan.unindexed.push(digest);
            }
        };
        for (row, bytes) in rows.iter().zip(&inline) {
            if let Some(bytes) = bytes {
                tally(&mut scan, row.digest, bytes.len() as u64, Digest::of(bytes));
            }
        }
        for (digest, key, size, _) in listed {
            let Some(digest) = digest else {
                scan.stray.push(PathBuf::from(key.to_string()));
                continue;
            };
            let hashed = self.block(|inner| async move {
                let mut hasher = HashSink(blake3::Hasher::new());
                let found = inner.objects.get_into(&key, &mut hasher).await;
                let found = inner.object_store(found, "reading object")?;
                Ok::<_, StoreError>(found.then(|| Digest(*hasher.0.finalize().as_bytes())))
            })?;
            // An object that vanished since the listing was collected.
            if let Some(actual) = hashed {
                tally(&mut scan, digest, size, actual);
                if actual != digest {
                    self.inner.cache.forget(store, digest);
                }
            }
        }
        // This host's cached copies must be intact too: a damaged one is
        // dropped (it would be fetched again when needed).
        for file in self.inner.cache.files.object_files(store)? {
            if let Some(digest) = file.digest
                && self.inner.cache.files.hash_file(store, &file.path)? != Some(digest)
            {
                self.inner.cache.forget(store, digest);
            }
        }
        Ok(scan)
    }

    pub(crate) fn is_present(&self, store: &StoreId, digest: Digest) -> Result<bool> {
        let store = store.clone();
        self.block(|inner| async move {
            let client = inner.client().await?;
            let held = index::object(&client, &store, digest, false).await;
            match inner.index(held, "looking up object")? {
                None => Ok(false),
                Some(held) if held.inline.is_some() => Ok(true),
                Some(_) => {
                    let key = inner.objects.key(&store, digest);
                    let exists = inner.objects.exists(&key).await;
                    inner.object_store(exists, "looking up object")
                }
            }
        })
    }

    pub(crate) fn links(&self, store: &StoreId) -> Result<Vec<LinkRow>> {
        let store = store.clone();
        self.block(|inner| async move {
            let client = inner.client().await?;
            let links = index::links(&client, &store).await;
            let links = inner.index(links, "listing links")?;
            links
                .into_iter()
                .map(|(source, column)| {
                    let targets = crate::links::column_targets(&store, source, &column);
                    let targets = targets.map_err(|damaged| {
                        postgres_error(&inner.location, "listing links", damaged)
                    })?;
                    Ok((source, targets))
                })
                .collect()
        })
    }

    pub(crate) fn unscanned_links(&self, store: &StoreId) -> Result<Vec<Digest>> {
        let store = store.clone();
        self.block(|inner| async move {
            let client = inner.client().await?;
            let unscanned = index::unscanned_links(&client, &store).await;
            inner.index(unscanned, "listing objects not scanned for links")
        })
    }

    pub(crate) fn unindexed(&self, store: &StoreId, cutoff: SystemTime) -> Result<Vec<Digest>> {
        let store = store.clone();
        self.block(|inner| async move {
            let client = inner.client().await?;
            let digests = index::digests(&client, &store).await;
            let indexed: std::collections::BTreeSet<Digest> = inner
                .index(digests, "listing objects")?
                .into_iter()
                .collect();
            let listed = inner.objects.list(&store).await;
            Ok(inner
                .object_store(listed, "listing objects")?
                .into_iter()
                .filter(|(_, _, _, modified)| *modified < cutoff)
                .filter_map(|(digest, ..)| digest)
                .filter(|digest| !indexed.contains(digest))
                .collect())
        })
    }

    pub(crate) fn stale_staging(
        &self,
        store: &StoreId,
        cutoff: SystemTime,
    ) -> Result<Vec<PathBuf>> {
        self.inner.cache.files.stale_temp_files(store, cutoff)
    }

    pub(crate) fn remove_staging(&self, leftovers: &[PathBuf]) -> u64 {
        layout::remove_files(leftovers)
    }

    pub(crate) fn store_dir_ids(&self) -> std::io::Result<Vec<String>> {
        self.inner.cache.files.store_dir_ids()
    }

    pub(crate) fn check_integrity(&self) -> Result<Vec<String>> {
        self.block(|inner| async move {
            let client = inner.client().await?;
            let problems = index::totals_problems(&client).await;
            inner.index(problems, "checking totals")
        })
    }

    pub(crate) fn open_object(
        &self,
        store: &StoreId,
        digest: Digest,
    ) -> Result<Option<Box<dyn Read + Send>>> {
        let store = store.clone();
        self.block(|inner| async move {
            let client = inner.client().await?;
            let held = index::object(&client, &store, digest, true).await;
            drop(client);
            let Some(held) = inner.index(held, "reading object")? else {
                return Ok(None);
            };
            if let Some(bytes) = held.inline {
                return Ok(Some(
                    Box::new(io::Cursor::new(bytes)) as Box<dyn Read + Send>
                ));
            }
            let Some(copy) = inner.fetch(&store, digest, held.size).await? else {
                return Ok(None);
            };
            copy.release();
            Ok(Some(Box::new(copy.data) as Box<dyn Read + Send>))
        })
    }
}

impl Inner {
    /// A pooled connection, naming the server when it cannot be reached.
    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|source| {
            let source: BoxError = match source {
                deadpool_postgres::PoolError::Backend(error) => Box::new(PostgresError(error)),
                other => other.to_string().into(),
            };
            StoreError::Service {
                root: self.location.display.clone(),
                service: "PostgreSQL",
                at: self.location.postgres_at.clone(),
                action: "connecting",
                source,
            }
        })
    }

    /// Checks both services at open, and brings the schema up to date.
    async fn connect(&self) -> Result<()> {
        let mut client = self.client().await?;
        index::create_schema(&mut client)
            .await
            .map_err(|reason| StoreError::Service {
                root: self.location.display.clone(),
                service: "PostgreSQL",
                at: self.location.postgres_at.clone(),
                action: "creating or upgrading the schema",
                source: reason.into(),
            })?;
        // A key that is never written: finding it absent proves the bucket
        // is there and answers.
        let probe = object_store::path::Path::from("theater-store-probe");
        let reached = self.objects.exists(&probe).await;
        self.object_store(reached, "reaching the bucket")?;
        std::fs::create_dir_all(&self.location.cache_dir).map_err(|source| StoreError::Io {
            store: "root".into(),
            action: "creating the read cache",
            path: self.location.cache_dir.clone(),
            source,
        })
    }

    fn index<T>(
        &self,
        result: Result<T, tokio_postgres::Error>,
        action: &'static str,
    ) -> Result<T> {
        result.map_err(|source| postgres_error(&self.location, action, PostgresError(source)))
    }

    fn object_store<T>(
        &self,
        result: Result<T, object_store::Error>,
        action: &'static str,
    ) -> Result<T> {
        result.map_err(|source| StoreError::Service {
            root: self.location.display.clone(),
            service: "the object store",
            at: self.objects.at.clone(),
            action,
            source: Box::new(source),
        })
    }

    fn now_and_fresh_after(&self) -> (i64, i64) {
        let now = unix_now();
        (now, now.saturating_sub(self.refresh_after))
    }

    async fn apply(self: &Arc<Self>, change: Change) -> Result<bool> {
        let mut client = self.client().await?;
        let applied = self.apply_on(&mut client, change).await;
        if let Err(StoreError::Service { .. }) = applied {
            // A failure may leave a session lock or a transaction behind.
            drop(deadpool_postgres::Object::take(client));
        }
        applied
    }

    /// Applies changes, one transaction per batch of those that only write
    /// rows; the rest (which move bytes) one by one. A batch that fails
    /// applies none of its changes, and each of them gets the error.
    async fn apply_all(self: &Arc<Self>, changes: Vec<Change>) -> Vec<Result<bool>> {
        let mut answers: Vec<Option<Result<bool>>> = changes.iter().map(|_| None).collect();
        let (rows_only, others): (Vec<_>, Vec<_>) = changes
            .into_iter()
            .enumerate()
            .partition(|(_, change)| writes_rows_only(change));
        let mut rows_only = rows_only.into_iter().peekable();
        while rows_only.peek().is_some() {
            let batch: Vec<(usize, Change)> = rows_only.by_ref().take(self.batch).collect();
            let indexes: Vec<usize> = batch.iter().map(|(index, _)| *index).collect();
            match self.apply_batch(batch).await {
                Ok(results) => {
                    for (index, result) in results {
                        answers[index] = Some(result);
                    }
                }
                // Nothing of the batch was applied: each change says why.
                Err(error) => {
                    let message = error.to_string();
                    let mut error = Some(error);
                    for index in indexes {
                        answers[index] =
                            Some(Err(error.take().unwrap_or_else(|| StoreError::Service {
                                root: self.location.display.clone(),
                                service: "PostgreSQL",
                                at: self.location.postgres_at.clone(),
                                action: "writing a batch",
                                source: message.clone().into(),
                            })));
                    }
                }
            }
        }
        for (index, change) in others {
            answers[index] = Some(self.apply(change).await);
        }
        answers
            .into_iter()
            .map(|answer| answer.expect("every change answered"))
            .collect()
    }

    /// Row-only changes in one transaction, sent together.
    async fn apply_batch(
        self: &Arc<Self>,
        batch: Vec<(usize, Change)>,
    ) -> Result<Vec<(usize, Result<bool>)>> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await;
        let transaction = self.index(transaction, "starting a transaction")?;
        let (now, fresh_after) = self.now_and_fresh_after();
        // Small objects that name distinct objects and labels go in one
        // statement; the rest (repeats, registrations, label writes) one
        // by one after it, sent together.
        let mut objects = HashSet::new();
        let mut labels = HashSet::new();
        let (together, alone): (Vec<_>, Vec<_>) =
            batch.into_iter().partition(|(_, change)| match change {
                Change::AddObject {
                    store,
                    digest,
                    staged: Staged::Inline(_),
                    label,
                    ..
                } => {
                    objects.insert((store.clone(), *digest))
                        && label
                            .as_ref()
                            .is_none_or(|label| labels.insert((store.clone(), label.clone())))
                }
                _ => false,
            });
        let mut answers = Vec::with_capacity(together.len() + alone.len());
        if !together.is_empty() {
            let rows: Vec<index::NewObject<'_>> = together
                .iter()
                .filter_map(|(_, change)| match change {
                    Change::AddObject {
                        store,
                        digest,
                        size,
                        staged: Staged::Inline(bytes),
                        label,
                        links,
                    } => Some((store, *digest, *size, &bytes[..], label.as_deref(), links)),
                    _ => None,
                })
                .collect();
            let added = index::add_objects(&transaction, &rows, (now, fresh_after)).await;
            let added = self.index(added, "writing rows")?;
            answers.extend(
                together
                    .iter()
                    .map(|(index, _)| *index)
                    .zip(added.into_iter().map(Ok)),
            );
        }
        let pending = alone.into_iter().map(|(index, change)| {
            let transaction = &transaction;
            async move {
                (
                    index,
                    self.apply_row_change(transaction, change, now, fresh_after)
                        .await,
                )
            }
        });
        let results = futures_util::future::join_all(pending).await;
        for (index, result) in results {
            answers.push((index, self.index(result, "writing rows")?));
        }
        let committed = transaction.commit().await;
        self.index(committed, "committing")?;
        Ok(answers)
    }

    /// A change that writes rows only (see [`writes_rows_only`]).
    async fn apply_row_change(
        &self,
        client: &impl GenericClient,
        change: Change,
        now: i64,
        fresh_after: i64,
    ) -> Result<Result<bool>, tokio_postgres::Error> {
        match change {
            Change::CreateStore { store } => {
                Ok(Ok(index::ensure_store(client, &store, now).await?))
            }
            Change::AddObject {
                store,
                digest,
                size,
                staged: Staged::Inline(bytes),
                label,
                links,
            } => {
                let new = index::add_object(
                    client,
                    &store,
                    digest,
                    size,
                    Some(&bytes),
                    label.as_deref(),
                    &links,
                    (now, fresh_after),
                )
                .await?;
                Ok(Ok(new))
            }
            Change::SetLabel {
                store,
                label,
                target,
                expect,
            } => {
                let expected = match expect {
                    Expect::Anything => None,
                    Expect::Exactly(expected) => Some(expected),
                };
                let written = index::set_label(client, &store, &label, target, expected).await?;
                Ok(match written {
                    LabelWrite::Written => Ok(true),
                    LabelWrite::ExpectationFailed => Ok(false),
                    LabelWrite::TargetMissing => Err(not_found(&store, target)),
                })
            }
            other => unreachable!("not a row-only change: {other:?}"),
        }
    }

    /// Applies one change on `client`.
    async fn apply_on(
        self: &Arc<Self>,
        client: &mut deadpool_postgres::Object,
        change: Change,
    ) -> Result<bool> {
        let (now, fresh_after) = self.now_and_fresh_after();
        if writes_rows_only(&change) {
            let applied = self
                .apply_row_change(&*client, change, now, fresh_after)
                .await;
            return self.index(applied, "writing rows")?;
        }
        match change {
            Change::AddObject {
                store,
                digest,
                size,
                staged: Staged::File(path),
                label,
                links,
            } => {
                let _turn = self.publishing_turn(&store, digest).await;
                let object = (digest, size, &*path);
                let published = self
                    .publish_file_alone(client, &store, object, label.as_deref(), &links)
                    .await;
                let new = match published {
                    Ok(new) => new,
                    Err(error) => {
                        layout::remove_staged(&path);
                        return Err(error);
                    }
                };
                // Bytes this host just hashed are a verified copy.
                if !self.cache.admit(&store, digest, &path) {
                    layout::remove_staged(&path);
                }
                Ok(new)
            }
            Change::AddObject { .. } | Change::CreateStore { .. } | Change::SetLabel { .. } => {
                unreachable!("row-only changes are applied above")
            }
            Change::SetLinks {
                store,
                digest,
                targets,
            } => {
                let transaction = client.transaction().await;
                let transaction = self.index(transaction, "starting a transaction")?;
                let held = index::set_links(&transaction, &store, digest, &targets).await;
                let held = self.index(held, "recording links")?;
                let committed = transaction.commit().await;
                self.index(committed, "committing")?;
                Ok(held)
            }
            Change::SetLabels {
                store,
                labels,
                expected,
            } => self.set_labels(client, &store, labels, expected).await,
            Change::RemoveObject {
                store,
                digest,
                referrers,
                cutoff,
            } => {
                self.remove_object(client, &store, digest, &referrers, cutoff)
                    .await
            }
            Change::RemoveUnindexed {
                store,
                digest,
                cutoff,
            } => self.remove_unindexed(client, &store, digest, cutoff).await,
            Change::QuarantineObject { store, digest } => {
                self.quarantine(client, &store, digest).await
            }
            Change::RemoveLabels { store, limit } => {
                let removed = index::delete_labels(&*client, &store, limit).await;
                Ok(self.index(removed, "removing labels")? > 0)
            }
            Change::AddOutboard {
                store,
                digest,
                staged,
            } => {
                if self.cache.files.is_present(&store, digest) {
                    self.cache.files.place_outboard(&store, &staged, digest);
                }
                layout::remove_staged(&staged);
                Ok(true)
            }
            Change::Record { change, append } => self.record(client, change, append).await,
            Change::SetChainHead {
                store,
                label,
                head,
                expected,
            } => {
                let transaction = client.transaction().await;
                let transaction = self.index(transaction, "starting a transaction")?;
                let locked = transaction
                    .execute(
                        "SELECT 1 FROM pg_advisory_xact_lock($1)",
                        &[&index::chain_lock(&store, &label)],
                    )
                    .await;
                self.index(locked, "locking chain head")?;
                let current = index::label(&transaction, &store, &label).await;
                let current = self.index(current, "reading chain head")?;
                if current.map(|row| row.head) != expected {
                    return Ok(false);
                }
                if let Some(sealed) = head.sealed {
                    let held = index::object(&transaction, &store, sealed, false).await;
                    if self.index(held, "looking up chain segment")?.is_none() {
                        return Err(not_found(&store, Some(sealed)));
                    }
                }
                let registered = index::ensure_store(&transaction, &store, unix_now()).await;
                self.index(registered, "registering store")?;
                let moved = index::set_chain_head(&transaction, &store, &label, &head).await;
                self.index(moved, "writing chain head")?;
                let committed = transaction.commit().await;
                self.index(committed, "committing")?;
                Ok(true)
            }
            Change::AdoptFile { .. } => Err(StoreError::InvalidRoot {
                root: self.location.display.clone(),
                reason: "re-indexing content files rebuilds a local root's index; a shared \
                         root's index is PostgreSQL's (restore it from PostgreSQL's backups)"
                    .into(),
            }),
            Change::RemoveEmptyStore { store, cutoff } => {
                let removed = index::delete_empty_store(&*client, &store, cutoff).await;
                if !self.index(removed, "removing store")? {
                    return Ok(false);
                }
                self.cache.files.remove_store_files(&store)?;
                Ok(true)
            }
        }
    }

    /// Waits for this process's turn to publish object `digest`.
    async fn publishing_turn(
        &self,
        store: &StoreId,
        digest: Digest,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = {
            let mut publishing = self.publishing.lock().expect("publishing turns");
            publishing.retain(|_, turn| Arc::strong_count(turn) > 1);
            Arc::clone(publishing.entry((store.clone(), digest)).or_default())
        };
        turn.lock_owned().await
    }

    /// Publishes a staged file: the object's lock (a session lock, shared)
    /// and the read of its row, sent together (the read always runs after
    /// the lock's statement); the upload, unless a recent row says the bytes are
    /// there; the row (and label), committed; then the lock let go. Any failure
    /// is a service error, on which the caller drops the connection, and
    /// with it the lock. Returns whether the object is new.
    async fn publish_file_alone(
        &self,
        client: &deadpool_postgres::Object,
        store: &StoreId,
        (digest, size, staged): (Digest, u64, &std::path::Path),
        label: Option<&str>,
        links: &Links,
    ) -> Result<bool> {
        let times = self.now_and_fresh_after();
        let key = index::object_lock(store, digest);
        let lock = client
            .prepare_cached("SELECT 1 FROM pg_advisory_lock_shared($1)")
            .await;
        let lock = self.index(lock, "locking object")?;
        let unlock = client
            .prepare_cached("SELECT 1 FROM pg_advisory_unlock_shared($1)")
            .await;
        let unlock = self.index(unlock, "unlocking object")?;
        // The row is read by a statement that starts after the lock is
        // held, so it sees any collection that finished meanwhile.
        let key_param: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
        let (locked, held) = futures_util::join!(
            client.execute(&lock, &key_param),
            index::object(client, store, digest, false)
        );
        self.index(locked, "locking object")?;
        let held = self.index(held, "looking up object")?;
        self.upload_unless_held(store, digest, staged, held, times.1)
            .await?;
        // Not sent together: the row's statement may need preparing first,
        // which would let the unlock overtake it.
        let added = index::add_object(client, store, digest, size, None, label, links, times).await;
        let added = self.index(added, "indexing object")?;
        let unlocked = client.execute(&unlock, &key_param).await;
        self.index(unlocked, "unlocking object")?;
        Ok(added)
    }

    /// Uploads a staged file unless its row (`held`, read under the
    /// object's lock) says the bytes are there: held inline, or stored
    /// after `fresh_after`. An older row's bytes are written again, which
    /// heals damaged ones.
    async fn upload_unless_held(
        &self,
        store: &StoreId,
        digest: Digest,
        staged: &std::path::Path,
        held: Option<index::HeldObject>,
        fresh_after: i64,
    ) -> Result<()> {
        let overwrite = match held {
            None => false,
            Some(held) if held.inline.is_some() || held.stored_at >= fresh_after => return Ok(()),
            Some(_) => true,
        };
        let uploaded = self.objects.upload(store, digest, staged, overwrite).await;
        let _: Uploaded = self.object_store(uploaded, "publishing object")?;
        Ok(())
    }

    /// Publishes a staged file inside `transaction`: takes the object's
    /// lock in share mode, uploads unless a recent row says the bytes are
    /// there, then writes the row (and label). Returns whether it is new.
    async fn publish_file(
        &self,
        transaction: &deadpool_postgres::Transaction<'_>,
        store: &StoreId,
        (digest, size, staged): (Digest, u64, &std::path::Path),
        label: Option<&str>,
        links: &Links,
    ) -> Result<bool> {
        let (now, fresh_after) = self.now_and_fresh_after();
        let locked = transaction
            .execute(
                "SELECT 1 FROM pg_advisory_xact_lock_shared($1)",
                &[&index::object_lock(store, digest)],
            )
            .await;
        self.index(locked, "locking object")?;
        let held = index::object(transaction, store, digest, false).await;
        let held = self.index(held, "looking up object")?;
        self.upload_unless_held(store, digest, staged, held, fresh_after)
            .await?;
        let added = index::add_object(
            transaction,
            store,
            digest,
            size,
            None,
            label,
            links,
            (now, fresh_after),
        )
        .await;
        self.index(added, "indexing object")
    }

    async fn set_labels(
        &self,
        client: &mut deadpool_postgres::Object,
        store: &StoreId,
        labels: Vec<(String, Option<Digest>)>,
        expected: Option<Vec<Option<Digest>>>,
    ) -> Result<bool> {
        let transaction = client.transaction().await;
        let transaction = self.index(transaction, "starting a transaction")?;
        let now = unix_now();
        let registered = index::ensure_store(&transaction, store, now).await;
        self.index(registered, "registering store")?;
        let names: std::collections::HashSet<&str> =
            labels.iter().map(|(name, _)| name.as_str()).collect();
        if names.len() == labels.len() {
            // Distinct names: a few statements for the whole set.
            let written =
                index::set_labels(&transaction, store, &labels, expected.as_deref()).await;
            return match self.index(written, "writing labels")? {
                Ok(false) => Ok(false),
                Err(missing) => Err(not_found(store, Some(missing))),
                Ok(true) => {
                    let committed = transaction.commit().await;
                    self.index(committed, "committing")?;
                    Ok(true)
                }
            };
        }
        let writes = labels.iter().enumerate().map(|(index, (label, target))| {
            let expected = expected.as_ref().map(|expected| expected[index]);
            index::set_label(&transaction, store, label, *target, expected)
        });
        let written = futures_util::future::join_all(writes).await;
        for (write, (_, target)) in written.into_iter().zip(&labels) {
            match self.index(write, "writing labels")? {
                LabelWrite::Written => {}
                // Dropping the transaction rolls every label back.
                LabelWrite::ExpectationFailed => return Ok(false),
                LabelWrite::TargetMissing => return Err(not_found(store, *target)),
            }
        }
        let committed = transaction.commit().await;
        self.index(committed, "committing")?;
        Ok(true)
    }

    /// Runs `work` holding the object's lock exclusively (a session lock,
    /// kept across the commit and the deletion of bytes that follows).
    async fn exclusively<T>(
        &self,
        client: &mut deadpool_postgres::Object,
        store: &StoreId,
        digest: Digest,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T>,
    ) -> Result<T> {
        let key = index::object_lock(store, digest);
        let locked = client
            .execute("SELECT 1 FROM pg_advisory_lock($1)", &[&key])
            .await;
        self.index(locked, "locking object")?;
        let result = work(client).await?;
        let unlocked = client
            .execute("SELECT 1 FROM pg_advisory_unlock($1)", &[&key])
            .await;
        self.index(unlocked, "unlocking object")?;
        Ok(result)
    }

    /// Garbage collection of one object: the row goes first (only if still
    /// old and unlabelled), then the bytes, all under the exclusive lock.
    async fn remove_object(
        &self,
        client: &mut deadpool_postgres::Object,
        store: &StoreId,
        digest: Digest,
        referrers: &[Digest],
        cutoff: i64,
    ) -> Result<bool> {
        self.exclusively(client, store, digest, async |client| {
            let transaction = client.transaction().await;
            let transaction = self.index(transaction, "starting a transaction")?;
            let removed =
                index::remove_unreachable(&transaction, store, digest, referrers, cutoff).await;
            let removed = self.index(removed, "removing object")?;
            let committed = transaction.commit().await;
            self.index(committed, "committing")?;
            match removed {
                None => Ok(false),
                Some(inline) => {
                    self.cache.forget(store, digest);
                    if !inline {
                        let deleted = self.objects.delete(&self.objects.key(store, digest)).await;
                        self.object_store(deleted, "removing object")?;
                    }
                    Ok(true)
                }
            }
        })
        .await
    }

    async fn remove_unindexed(
        &self,
        client: &mut deadpool_postgres::Object,
        store: &StoreId,
        digest: Digest,
        cutoff: SystemTime,
    ) -> Result<bool> {
        self.exclusively(client, store, digest, async |client| {
            let held = index::object(&*client, store, digest, false).await;
            if self.index(held, "looking up object")?.is_some() {
                return Ok(false);
            }
            let key = self.objects.key(store, digest);
            let modified = self.objects.modified(&key).await;
            match self.object_store(modified, "looking up object")? {
                Some(modified) if modified < cutoff => {
                    let deleted = self.objects.delete(&key).await;
                    self.object_store(deleted, "removing unindexed object")?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
        .await
    }

    /// Moves damaged bytes aside and forgets the object, unless its bytes
    /// are intact again (stored anew since they were found damaged).
    async fn quarantine(
        &self,
        client: &mut deadpool_postgres::Object,
        store: &StoreId,
        digest: Digest,
    ) -> Result<bool> {
        self.exclusively(client, store, digest, async |client| {
            let held = index::object(&*client, store, digest, true).await;
            let Some(held) = self.index(held, "looking up object")? else {
                return Ok(false);
            };
            let key = self.objects.key(store, digest);
            let in_objects = held.inline.is_none();
            let bytes = match held.inline {
                Some(bytes) => Some(bytes),
                None => {
                    let fetched = self.objects.get(&key).await;
                    self.object_store(fetched, "reading object")?
                }
            };
            let quarantined = match bytes {
                Some(bytes) if Digest::of(&bytes) == digest => return Ok(false),
                Some(bytes) => {
                    let moved = self.objects.quarantine(store, digest, bytes).await;
                    self.object_store(moved, "quarantining object")?;
                    true
                }
                None => false,
            };
            let forgotten = index::forget_object(&*client, store, digest).await;
            self.index(forgotten, "forgetting object")?;
            self.cache.forget(store, digest);
            if in_objects && quarantined {
                let deleted = self.objects.delete(&key).await;
                self.object_store(deleted, "removing quarantined object")?;
            }
            Ok(quarantined)
        })
        .await
    }

    /// Applies `change` (if any) and appends one event to a chain, in one
    /// transaction holding the chain's lock, so appends never fork it.
    async fn record(
        self: &Arc<Self>,
        client: &mut deadpool_postgres::Object,
        change: Option<Box<Change>>,
        append: ChainAppend,
    ) -> Result<bool> {
        let transaction = client.transaction().await;
        let transaction = self.index(transaction, "starting a transaction")?;
        let ChainAppend {
            store,
            head_label,
            build,
        } = append;
        let locked = transaction
            .execute(
                "SELECT 1 FROM pg_advisory_xact_lock($1)",
                &[&index::chain_lock(&store, &head_label)],
            )
            .await;
        self.index(locked, "locking chain")?;
        let (now, fresh_after) = self.now_and_fresh_after();
        let applied = match change.map(|change| *change) {
            None => true,
            Some(
                change @ (Change::CreateStore { .. }
                | Change::SetLabel { .. }
                | Change::AddObject {
                    staged: Staged::Inline(_),
                    ..
                }),
            ) => {
                let applied = self
                    .apply_row_change(&transaction, change, now, fresh_after)
                    .await;
                self.index(applied, "writing rows")??
            }
            Some(Change::AddObject {
                store,
                digest,
                size,
                staged: Staged::File(path),
                label,
                links,
            }) => {
                let object = (digest, size, &*path);
                let published = self
                    .publish_file(&transaction, &store, object, label.as_deref(), &links)
                    .await;
                layout::remove_staged(&path);
                published?
            }
            Some(other) => unreachable!("changes recorded in chains write rows: {other:?}"),
        };
        let head = index::label(&transaction, &store, &head_label).await;
        let head = self.index(head, "reading chain head")?;
        if head.is_none() {
            // The chain's first event may be the store's first row.
            let created = index::ensure_store(&transaction, &store, now).await;
            self.index(created, "registering store")?;
        }
        let link = build(ChainTip { head, applied })?;
        if let Some(segment) = &link.sealed {
            let stored = index::add_object(
                &transaction,
                &store,
                Digest::of(segment),
                segment.len() as u64,
                Some(segment),
                None,
                &Links::default(),
                (now, fresh_after),
            )
            .await;
            self.index(stored, "storing chain segment")?;
        }
        let moved = index::set_chain_head(&transaction, &store, &head_label, &link.head).await;
        self.index(moved, "moving chain head")?;
        let committed = transaction.commit().await;
        self.index(committed, "committing")?;
        Ok(applied)
    }

    async fn read_object(&self, store: &StoreId, digest: Digest) -> Result<Option<Vec<u8>>> {
        if let Some(bytes) = self.cache.read(store, digest, u64::MAX) {
            return Ok(Some(bytes));
        }
        let client = self.client().await?;
        let held = index::object(&client, store, digest, true).await;
        drop(client);
        let Some(held) = self.index(held, "reading object")? else {
            return Ok(None);
        };
        let bytes = match held.inline {
            Some(bytes) => bytes,
            None => {
                let fetched = self.objects.get(&self.objects.key(store, digest)).await;
                match self.object_store(fetched, "reading object")? {
                    Some(bytes) => bytes,
                    None => return Ok(None),
                }
            }
        };
        if Digest::of(&bytes) == digest {
            self.cache.admit_bytes(store, digest, &bytes);
        }
        Ok(Some(bytes))
    }

    async fn open_source(
        &self,
        store: &StoreId,
        digest: Digest,
    ) -> Result<Option<(u64, ObjectSource)>> {
        let client = self.client().await?;
        let held = index::object(&client, store, digest, true).await;
        drop(client);
        let Some(held) = self.index(held, "reading object")? else {
            return Ok(None);
        };
        if let Some(bytes) = held.inline {
            return Ok(Some((held.size, ObjectSource::Inline(bytes))));
        }
        let Some(copy) = self.fetch(store, digest, held.size).await? else {
            return Ok(None);
        };
        copy.release();
        let outboard = copy
            .outboard
            .map(|file| Box::new(file) as Box<dyn RandomAccess>);
        Ok(Some((
            held.size,
            ObjectSource::File {
                data: Box::new(copy.data),
                outboard,
            },
        )))
    }

    /// A local copy of a file object's bytes: the cached one, fetched into
    /// the cache if needed; `None` when the object or its bytes are gone.
    async fn local_copy(&self, store: &StoreId, digest: Digest) -> Result<Option<LocalCopy>> {
        let client = self.client().await?;
        let held = index::object(&client, store, digest, false).await;
        drop(client);
        match self.index(held, "looking up object")? {
            Some(held) if held.inline.is_none() => self.fetch(store, digest, held.size).await,
            _ => Ok(None),
        }
    }

    /// The cached copy of a file object, downloaded (and its outboard
    /// computed) if this host has none. Bytes that do not hash to `digest`
    /// are not cached: they come back as a temporary copy, for the
    /// caller's verification to report; so do bytes too big for the cache.
    async fn fetch(&self, store: &StoreId, digest: Digest, size: u64) -> Result<Option<LocalCopy>> {
        let cached = self.cache.files.object_path(store, digest);
        if let Some((data, outboard)) = self.cache.open(store, digest, size) {
            return Ok(Some(LocalCopy {
                path: cached,
                data,
                outboard,
                transient: false,
            }));
        }
        let (path, hasher, data) = self
            .cache
            .stage_download(store)
            .map_err(|source| crate::error::io_error(store, "staging download", &cached, source))?;
        let mut sink = DownloadSink { data, hasher };
        let key = self.objects.key(store, digest);
        let fetched = self.objects.get_into(&key, &mut sink).await;
        let finished = fetched.and_then(|found| {
            let DownloadSink { data, hasher } = sink;
            let (actual, outboard) = hasher.finish().map_err(generic)?;
            outboard.into_inner().map_err(|e| generic(e.into_error()))?;
            data.into_inner().map_err(|e| generic(e.into_error()))?;
            Ok(found.then_some(actual))
        });
        let actual = match self.object_store(finished, "reading object") {
            Ok(Some(actual)) => actual,
            Ok(None) => {
                layout::remove_staged(&path);
                return Ok(None);
            }
            Err(error) => {
                layout::remove_staged(&path);
                return Err(error);
            }
        };
        if actual == digest
            && self.cache.admit(store, digest, &path)
            && let Some((data, outboard)) = self.cache.open(store, digest, size)
        {
            return Ok(Some(LocalCopy {
                path: cached,
                data,
                outboard,
                transient: false,
            }));
        }
        // Damaged, or not kept by the cache: a copy for this read only.
        let outboard_path = layout::staged_outboard(&path);
        let outboard = (actual == digest)
            .then(|| File::open(&outboard_path).ok())
            .flatten();
        let _ = std::fs::remove_file(&outboard_path);
        let data = File::open(&path).map_err(|source| {
            crate::error::io_error(store, "reading downloaded object", &path, source)
        })?;
        Ok(Some(LocalCopy {
            path,
            data,
            outboard,
            transient: true,
        }))
    }
}

/// A local copy of a file object's bytes, open for reading.
struct LocalCopy {
    path: PathBuf,
    data: File,
    /// Its outboard, when one is kept and of the right size.
    outboard: Option<File>,
    /// Not in the cache: removed on release (open handles stay valid).
    transient: bool,
}

impl LocalCopy {
    fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Done with the path: a transient copy is removed.
    fn release(&self) {
        if self.transient {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes a download to its staging file and hashes it on the way.
struct DownloadSink {
    data: io::BufWriter<File>,
    hasher: TreeHasher<io::BufWriter<File>>,
}

impl Write for DownloadSink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.data.write_all(bytes)?;
        self.hasher.update(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.data.flush()
    }
}

/// Hashes what is written to it.
struct HashSink(blake3::Hasher);

impl Write for HashSink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Changes that only write rows: applied in one round trip each, and
/// batched into shared transactions by `apply_all`.
fn writes_rows_only(change: &Change) -> bool {
    matches!(
        change,
        Change::CreateStore { .. }
            | Change::SetLabel { .. }
            | Change::AddObject {
                staged: Staged::Inline(_),
                ..
            }
    )
}

fn generic(source: io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "local staging",
        source: Box::new(source),
    }
}

fn postgres_error(
    location: &SharedLocation,
    action: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::Service {
        root: location.display.clone(),
        service: "PostgreSQL",
        at: location.postgres_at.clone(),
        action,
        source: Box::new(source),
    }
}

fn not_found(store: &StoreId, target: Option<Digest>) -> StoreError {
    StoreError::NotFound {
        store: store.to_string(),
        reference: target.map(Digest::to_hex).unwrap_or_default(),
    }
}
