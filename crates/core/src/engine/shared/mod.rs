//! The shared engine: one store root for many hosts. The index (stores,
//! object rows with small content inline, labels, totals) is in
//! PostgreSQL (`index.rs`); larger content is in an S3-compatible object
//! store, with a bounded read cache on each host's disk (`objects.rs`).
//!
//! Rules that hold across hosts (see docs/DESIGN.md, "The shared engine: rules across hosts"):
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

mod apply;
mod connection;
mod index;
mod listen;
pub(crate) mod location;
mod maintain;
mod objects;
mod publish;
mod read;
mod statistics;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use self::connection::postgres_error;
use self::location::SharedLocation;
use self::objects::{Objects, ReadCache};
use super::layout;
use super::{
    ChainHead, Change, ChangeLog, ChangeRow, Engine, LabelRow, LinkRow, ObjectSource,
    ReplacedTargets, Scan, Snapshot, Staged, StagingSink, TargetSnapshot,
};
use crate::error::{Result, StoreError};
use crate::names::{Digest, StoreId};
use crate::options::Options;
use crate::stats::StoreStats;
use crate::task::Progress;
use std::io::Read;
use std::path::PathBuf;
use std::time::SystemTime;

/// An opened shared root.
#[derive(Debug)]
pub(crate) struct SharedEngine {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
    /// Set once the listener is started.
    listening: std::sync::OnceLock<()>,
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
    /// Rows written since the last check of the tables' sizes, and
    /// whether a check runs now (statistics.rs).
    rows_written: std::sync::atomic::AtomicU64,
    checking_statistics: std::sync::atomic::AtomicBool,
    /// Stores whose label changes this host has yet to announce (listen.rs).
    announcements: listen::Announcements,
    /// Moved on every commit to a label: at once for this host's own,
    /// by this process's listener for other hosts' (listen.rs).
    commits: Arc<super::CommitSignal>,
}

/// One object's turn to publish (see `Inner::publishing`).
type Turn = Arc<tokio::sync::Mutex<()>>;

/// One index query: a pooled client, `query` on it, a failure named by
/// `action` (what [`SharedEngine::query`] runs on the engine's runtime).
async fn queried<T, F>(
    inner: Arc<Inner>,
    action: &'static str,
    query: impl FnOnce(deadpool_postgres::Object) -> F,
) -> Result<T>
where
    F: Future<Output = std::result::Result<T, tokio_postgres::Error>>,
{
    let client = inner.client().await?;
    let found = query(client).await;
    inner.index(found, action)
}

impl Drop for SharedEngine {
    fn drop(&mut self) {
        // The last writes' announcements run on the runtime about to stop.
        self.inner.finish_announcing();
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
            rows_written: std::sync::atomic::AtomicU64::new(0),
            checking_statistics: std::sync::atomic::AtomicBool::new(false),
            announcements: listen::Announcements::default(),
            commits: Arc::default(),
        });
        let engine = Self {
            inner,
            runtime: Some(runtime),
            listening: std::sync::OnceLock::new(),
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

    /// Runs one index query on the engine's runtime and waits for it: a
    /// pooled client, `query` on it, a failure named by `action`.
    async fn query<T, F>(
        &self,
        action: &'static str,
        query: impl FnOnce(deadpool_postgres::Object) -> F + Send + 'static,
    ) -> Result<T>
    where
        F: Future<Output = std::result::Result<T, tokio_postgres::Error>> + Send + 'static,
        T: Send + 'static,
    {
        self.run(move |inner| queried(inner, action, query)).await
    }

    /// [`SharedEngine::query`], waiting by blocking.
    fn query_blocking<T, F>(
        &self,
        action: &'static str,
        query: impl FnOnce(deadpool_postgres::Object) -> F + Send + 'static,
    ) -> Result<T>
    where
        F: Future<Output = std::result::Result<T, tokio_postgres::Error>> + Send + 'static,
        T: Send + 'static,
    {
        self.block(move |inner| queried(inner, action, query))
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
}

#[async_trait::async_trait]
impl Engine for SharedEngine {
    fn stages_to_file(&self, size: usize) -> bool {
        size > self.inner.inline_threshold
    }

    fn stage(&self, store: &StoreId, content: Arc<Vec<u8>>) -> Result<Staged> {
        if !self.stages_to_file(content.len()) {
            return Ok(Staged::Inline(content));
        }
        self.inner
            .cache
            .files
            .write_temp(store, &content)
            .map(Staged::File)
    }

    fn attach_outboard(&self, staged: &Staged, outboard: &[u8]) {
        if let Staged::File(path) = staged
            && !outboard.is_empty()
        {
            let _ = std::fs::write(layout::staged_outboard(path), outboard);
        }
    }

    fn staging_sink(&self, store: &StoreId) -> Box<dyn StagingSink> {
        layout::spill_sink(
            store,
            self.inner.cache.files.clone(),
            self.inner.inline_threshold,
        )
    }

    fn discard(&self, staged: Staged) {
        if let Staged::File(path) = staged {
            layout::remove_staged(&path);
        }
    }

    fn settled(&self) -> Option<u64> {
        // Other hosts announce nothing here: reads are never remembered.
        None
    }

    async fn changes(&self, store: &StoreId, since: u64, limit: usize) -> Result<ChangeLog> {
        let store = store.clone();
        self.query("reading the change log", move |client| async move {
            index::changes(&client, &store, since, limit).await
        })
        .await
    }

    async fn label_change_after(
        &self,
        store: &StoreId,
        label: &str,
        seq: u64,
    ) -> Result<Option<ChangeRow>> {
        let (store, label) = (store.clone(), label.to_owned());
        self.query("reading a label's change log", move |client| async move {
            index::label_change_after(&client, &store, &label, seq).await
        })
        .await
    }

    async fn label_changes_before(
        &self,
        store: &StoreId,
        label: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ChangeRow>> {
        let (store, label) = (store.clone(), label.to_owned());
        self.query("reading a label's change log", move |client| async move {
            index::label_changes_before(&client, &store, &label, before, limit).await
        })
        .await
    }

    fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commit_receiver()
    }

    async fn apply(&self, change: Change) -> Result<bool> {
        self.run(|inner| async move {
            let rows = statistics::rows_added(&change);
            let announced = listen::announced_store(&change).cloned();
            let applied = inner.apply(change).await;
            inner.wrote(rows);
            if applied.is_ok() {
                inner.announce(announced);
            }
            applied
        })
        .await
    }

    async fn apply_all(&self, changes: Vec<Change>) -> Vec<Result<bool>> {
        self.run(|inner| async move {
            let rows = changes.iter().map(statistics::rows_added).sum();
            let announced: Vec<Option<StoreId>> = changes
                .iter()
                .map(|change| listen::announced_store(change).cloned())
                .collect();
            let applied = inner.apply_all(changes).await;
            inner.wrote(rows);
            inner.announce(
                announced
                    .into_iter()
                    .zip(&applied)
                    .filter(|(_, applied)| applied.is_ok())
                    .filter_map(|(store, _)| store),
            );
            applied
        })
        .await
    }

    // The rest live beside the code of their job (read.rs, maintain.rs).
    fn quarantined(&self, store: &StoreId) -> Result<Vec<super::QuarantinedBytes>> {
        SharedEngine::quarantined(self, store)
    }

    fn purge_quarantine(&self, store: &StoreId, cutoff: SystemTime) -> Result<u64> {
        SharedEngine::purge_quarantine(self, store, cutoff)
    }

    async fn object_size(&self, store: &StoreId, digest: Digest) -> Result<Option<u64>> {
        SharedEngine::object_size(self, store, digest).await
    }

    async fn has_object(&self, store: &StoreId, digest: Digest) -> Result<bool> {
        SharedEngine::has_object(self, store, digest).await
    }

    async fn read_object(&self, store: &StoreId, digest: Digest) -> Result<Option<Vec<u8>>> {
        SharedEngine::read_object(self, store, digest).await
    }

    async fn read_inline_many(
        &self,
        store: &StoreId,
        digests: &[Digest],
        budget: u64,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        SharedEngine::read_inline_many(self, store, digests, budget).await
    }

    async fn label_target(&self, store: &StoreId, label: &str) -> Result<Option<Digest>> {
        SharedEngine::label_target(self, store, label).await
    }

    async fn chain_tip(&self, store: &StoreId, label: &str) -> Result<Option<ChainHead>> {
        SharedEngine::chain_tip(self, store, label).await
    }

    async fn labels_page(
        &self,
        store: &StoreId,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LabelRow>> {
        SharedEngine::labels_page(self, store, prefix, after, limit).await
    }

    async fn objects(&self, store: &StoreId) -> Result<Vec<Digest>> {
        SharedEngine::objects(self, store).await
    }

    async fn store_stats(&self, store: &StoreId) -> Result<StoreStats> {
        SharedEngine::store_stats(self, store).await
    }

    async fn store_created_at(&self, store: &StoreId) -> Result<Option<i64>> {
        SharedEngine::store_created_at(self, store).await
    }

    fn stores(&self) -> Result<Vec<(String, StoreStats)>> {
        SharedEngine::stores(self)
    }

    fn snapshot(&self, store: &StoreId, prefix: &str) -> Result<Snapshot> {
        SharedEngine::snapshot(self, store, prefix)
    }

    fn target_snapshot(&self, store: &StoreId) -> Result<TargetSnapshot> {
        SharedEngine::target_snapshot(self, store)
    }

    fn open_source(&self, store: &StoreId, digest: Digest) -> Result<Option<(u64, ObjectSource)>> {
        SharedEngine::open_source(self, store, digest)
    }

    fn build_outboard(&self, store: &StoreId, digest: Digest) -> Result<Option<(Digest, PathBuf)>> {
        SharedEngine::build_outboard(self, store, digest)
    }

    fn open_object(&self, store: &StoreId, digest: Digest) -> Result<Option<Box<dyn Read + Send>>> {
        SharedEngine::open_object(self, store, digest)
    }

    fn scan(&self, store: &StoreId, progress: &dyn Progress) -> Result<Scan> {
        SharedEngine::scan(self, store, progress)
    }

    fn is_present(&self, store: &StoreId, digest: Digest) -> Result<bool> {
        SharedEngine::is_present(self, store, digest)
    }

    fn replaced_targets(
        &self,
        store: &StoreId,
        before: i64,
        keep_last: u64,
    ) -> Result<ReplacedTargets> {
        SharedEngine::replaced_targets(self, store, before, keep_last)
    }

    fn links(&self, store: &StoreId) -> Result<Vec<LinkRow>> {
        SharedEngine::links(self, store)
    }

    fn unscanned_links(&self, store: &StoreId) -> Result<Vec<Digest>> {
        SharedEngine::unscanned_links(self, store)
    }

    fn unindexed(&self, store: &StoreId, cutoff: SystemTime) -> Result<Vec<Digest>> {
        SharedEngine::unindexed(self, store, cutoff)
    }

    fn stale_staging(&self, store: &StoreId, cutoff: SystemTime) -> Result<Vec<PathBuf>> {
        SharedEngine::stale_staging(self, store, cutoff)
    }

    fn remove_staging(&self, leftovers: &[PathBuf]) -> u64 {
        SharedEngine::remove_staging(self, leftovers)
    }

    fn store_dir_ids(&self) -> std::io::Result<Vec<String>> {
        SharedEngine::store_dir_ids(self)
    }

    fn check_integrity(&self) -> Result<Vec<String>> {
        SharedEngine::check_integrity(self)
    }
}

/// A fresh shared root on the test services, with what this engine's unit
/// tests need to look at its database.
#[cfg(test)]
struct TestRoot {
    services: &'static theater_store_testing::Services,
    root_string: String,
    database: String,
    root: crate::StoreRoot,
    _cache: tempfile::TempDir,
}

#[cfg(test)]
impl TestRoot {
    fn new() -> Self {
        let services = theater_store_testing::Services::shared();
        services.configure_environment();
        let cache = tempfile::tempdir().unwrap();
        let (root_string, database) = services.new_database_root(&cache.path().join("cache"));
        let root = crate::StoreRoot::at(&root_string, Options::default()).unwrap();
        Self {
            services,
            root_string,
            database,
            root,
            _cache: cache,
        }
    }

    /// Runs `sql` in the root's database; its output.
    fn psql(&self, sql: &str) -> String {
        self.services.psql(&self.database, sql)
    }
}
