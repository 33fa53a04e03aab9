//! [`ContentStore`]: the API that host-side Rust code and the wasm host use.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Result, StoreError};
use crate::index::{self, Expect, StoreStats, WriteOp};
use crate::names::{ContentRef, Digest, StoreId, validate_label};
use crate::root::{Engine, StoreRoot, blocking};

/// Whether the store holds `digest`, stored within [`REFRESH_AFTER`].
/// Recently stored content is left alone; older content is written again,
/// which refreshes its age, so that a garbage collection with a grace
/// period cannot take content from under a caller who just stored it.
fn recently_stored(engine: &Engine, store: &StoreId, digest: Digest) -> Result<bool> {
    if !engine.objects.is_present(store, digest) {
        return Ok(false);
    }
    let stored_at = engine.readers.read("looking up object", |db| {
        index::object_stored_at(db, store, digest)
    })?;
    let fresh_since = index::unix_now() - REFRESH_AFTER.as_millis() as i64;
    Ok(stored_at.is_some_and(|at| at >= fresh_since))
}

/// Hashes `content` and writes it to a temporary file of `store`, unless
/// the store holds it already (and `force_write` is off). Returns the digest
/// and the staged file, if one was written.
fn stage(
    engine: &Engine,
    store: &StoreId,
    content: &[u8],
    force_write: bool,
) -> Result<(Digest, Option<PathBuf>)> {
    if content.len() >= PARALLEL_WRITE_MIN {
        // Large content: hash on a second thread while this one writes the
        // temporary file, so the cost is the slower of the two rather than
        // their sum.
        let (digest, staged) = std::thread::scope(|scope| {
            let hashing = scope.spawn(|| Digest::of(content));
            let staged = engine.objects.write_temp(store, content);
            (hashing.join().expect("hashing does not panic"), staged)
        });
        let staged = staged?;
        if !force_write && recently_stored(engine, store, digest)? {
            let _ = std::fs::remove_file(&staged);
            return Ok((digest, None));
        }
        return Ok((digest, Some(staged)));
    }
    let digest = Digest::of(content);
    if !force_write && recently_stored(engine, store, digest)? {
        return Ok((digest, None));
    }
    Ok((digest, Some(engine.objects.write_temp(store, content)?)))
}

/// Content from this size up is hashed and written in parallel.
const PARALLEL_WRITE_MIN: usize = 1 << 20;

/// Objects up to this size are read without leaving the calling thread.
const INLINE_READ_MAX: u64 = 64 << 10;

/// How old stored content must be before storing it again refreshes its
/// age. Garbage-collection grace periods should be well above this.
pub const REFRESH_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// One label and the content it names, as listed by
/// [`ContentStore::list_labels_page`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LabelEntry {
    /// The label.
    pub label: String,
    /// What it points at.
    pub content_ref: ContentRef,
}

/// What [`ContentStore::write`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The content's ref.
    pub content_ref: ContentRef,
    /// Whether the store did not hold the content before.
    pub new: bool,
}

/// A named content-addressed store inside a [`StoreRoot`].
///
/// Content is stored once per store under its BLAKE3 digest; labels are
/// mutable names that each point at one piece of content. Removing a label
/// never deletes content. Handles are cheap to clone and safe to share
/// across tasks and processes: the same store can be open in many places.
#[derive(Clone, Debug)]
pub struct ContentStore {
    root: StoreRoot,
    id: StoreId,
}

impl Default for ContentStore {
    fn default() -> Self {
        Self::new()
    }
}

impl ContentStore {
    /// A store with a fresh UUID v4 id in the default root
    /// ([`StoreRoot::global`]). It is created on first write.
    pub fn new() -> Self {
        Self::in_root(StoreRoot::global(), StoreId::generate())
    }

    /// The store `id` in the default root. Fails with
    /// [`StoreError::InvalidStoreId`] for an id that could not be a store.
    pub fn from_id(id: &str) -> Result<Self> {
        StoreRoot::global().store(id)
    }

    pub(crate) fn in_root(root: StoreRoot, id: StoreId) -> Self {
        Self { root, id }
    }

    /// The store id.
    pub fn id(&self) -> &str {
        self.id.as_str()
    }

    pub(crate) fn store_id(&self) -> &StoreId {
        &self.id
    }

    /// The root this store lives in.
    pub fn root(&self) -> &StoreRoot {
        &self.root
    }

    /// Stores `content` and returns its ref. Storing the same bytes again
    /// returns the same ref and keeps one copy (large content is written to
    /// a temporary file while it is hashed, then dropped if already held).
    pub async fn store(&self, content: impl Into<Vec<u8>>) -> Result<ContentRef> {
        Ok(self.write(content, None).await?.content_ref)
    }

    /// The general form of [`ContentStore::store`] and
    /// [`ContentStore::store_at_label`]: stores `content` and, when `label`
    /// is given, points it at the content in the same index transaction, so
    /// that no collection can come between the two. Also tells whether the
    /// content was new to the store, for callers that account for space.
    pub async fn write(&self, content: impl Into<Vec<u8>>, label: Option<&str>) -> Result<Stored> {
        if let Some(label) = label {
            validate_label(label)?;
        }
        let content = content.into();
        let engine = self.root.engine().await?;
        let size = content.len() as u64;
        let content = Arc::new(content);
        // Content already held is not written again, only re-recorded with
        // the label. If a collection removes it in between, the writer says
        // so, and the second attempt writes it.
        let mut force_write = false;
        loop {
            let (digest, staged) = blocking({
                let engine = Arc::clone(&engine);
                let store = self.id.clone();
                let content = Arc::clone(&content);
                move || stage(&engine, &store, &content, force_write)
            })
            .await?;
            let content_ref = ContentRef::from(digest);
            if staged.is_none() && label.is_none() {
                return Ok(Stored {
                    content_ref,
                    new: false,
                });
            }
            let op = WriteOp::AddObject {
                store: self.id.clone(),
                digest,
                size,
                staged,
                label: label.map(str::to_owned),
            };
            match engine.writer.write(op).await {
                Err(StoreError::NotFound { .. }) if !force_write => force_write = true,
                outcome => return outcome.map(|new| Stored { content_ref, new }),
            }
        }
    }

    /// The size of the content behind `content_ref`, without reading it.
    /// Fails with [`StoreError::NotFound`] when the store does not hold it.
    pub async fn content_size(&self, content_ref: &ContentRef) -> Result<u64> {
        let digest = content_ref.digest()?;
        let size = self
            .read("looking up object", move |db, store| {
                index::object_size(db, store, digest)
            })
            .await?;
        size.ok_or_else(|| StoreError::NotFound {
            store: self.id.to_string(),
            reference: digest.to_hex(),
        })
    }

    /// The content behind `content_ref`, re-hashed on the way out: bytes that
    /// no longer match their ref give [`StoreError::Corrupted`], never data.
    pub async fn get(&self, content_ref: &ContentRef) -> Result<Vec<u8>> {
        let digest = content_ref.digest()?;
        self.get_digest(digest).await
    }

    async fn get_digest(&self, digest: Digest) -> Result<Vec<u8>> {
        let engine = self.root.engine().await?;
        // Small objects are read on the calling thread: a round trip through
        // the blocking pool costs more than reading and hashing them.
        if engine.objects.size(&self.id, digest)? <= INLINE_READ_MAX {
            return engine.objects.read_verified(&self.id, digest);
        }
        let store = self.id.clone();
        blocking(move || engine.objects.read_verified(&store, digest)).await
    }

    /// Whether this store holds `content_ref`.
    pub async fn exists(&self, content_ref: &ContentRef) -> Result<bool> {
        let digest = content_ref.digest()?;
        self.read("looking up object", move |db, store| {
            index::has_object(db, store, digest)
        })
        .await
    }

    /// Points `label` at existing content, replacing what it pointed at.
    /// Fails with [`StoreError::NotFound`] when the content is not stored.
    pub async fn label(&self, label: &str, content_ref: &ContentRef) -> Result<()> {
        let digest = content_ref.digest()?;
        self.set_label(label, Some(digest), Expect::Anything)
            .await
            .map(drop)
    }

    /// Same as [`ContentStore::label`]; the name reads better when the label
    /// already exists.
    pub async fn replace_at_label(&self, label: &str, content_ref: &ContentRef) -> Result<()> {
        self.label(label, content_ref).await
    }

    /// What `label` points at, or `None` when it is not defined.
    pub async fn get_by_label(&self, label: &str) -> Result<Option<ContentRef>> {
        validate_label(label)?;
        let label = label.to_owned();
        let target = self
            .read("looking up label", move |db, store| {
                index::label_target(db, store, &label)
            })
            .await?;
        Ok(target.map(ContentRef::from))
    }

    /// The content `label` points at, or `None` when it is not defined.
    pub async fn get_content_by_label(&self, label: &str) -> Result<Option<Vec<u8>>> {
        match self.get_by_label(label).await? {
            Some(content_ref) => Ok(Some(self.get(&content_ref).await?)),
            None => Ok(None),
        }
    }

    /// Stores `content` and points `label` at it, in one index transaction.
    pub async fn store_at_label(
        &self,
        label: &str,
        content: impl Into<Vec<u8>>,
    ) -> Result<ContentRef> {
        Ok(self.write(content, Some(label)).await?.content_ref)
    }

    /// Same as [`ContentStore::store_at_label`]; reads better for updates.
    pub async fn replace_content_at_label(
        &self,
        label: &str,
        content: impl Into<Vec<u8>>,
    ) -> Result<ContentRef> {
        self.store_at_label(label, content).await
    }

    /// Removes `label`. Removing a missing label succeeds. Content stays.
    pub async fn remove_label(&self, label: &str) -> Result<()> {
        self.set_label(label, None, Expect::Anything)
            .await
            .map(drop)
    }

    /// Removes `label` only if it points at `content_ref`; returns whether it
    /// did.
    pub async fn remove_from_label(&self, label: &str, content_ref: &ContentRef) -> Result<bool> {
        let digest = content_ref.digest()?;
        self.set_label(label, None, Expect::Exactly(Some(digest)))
            .await
    }

    /// Atomically sets `label` to `new` (or removes it, for `None`) only if
    /// it currently points at `expected` (or is absent, for `None`). Returns
    /// whether the swap happened; on `false` nothing changed, so re-read and
    /// retry. This is how concurrent writers update a label without losing
    /// each other's updates.
    pub async fn compare_and_swap_label(
        &self,
        label: &str,
        expected: Option<&ContentRef>,
        new: Option<&ContentRef>,
    ) -> Result<bool> {
        let expected = expected.map(ContentRef::digest).transpose()?;
        let new = new.map(ContentRef::digest).transpose()?;
        self.set_label(label, new, Expect::Exactly(expected)).await
    }

    /// Every label in the store, in byte order.
    pub async fn list_labels(&self) -> Result<Vec<String>> {
        let page = self.list_labels_page("", None, usize::MAX).await?;
        Ok(page.into_iter().map(|entry| entry.label).collect())
    }

    /// Up to `limit` labels that start with `prefix`, strictly after `after`,
    /// in byte order, with their targets. Pass the last label of one page as
    /// `after` to get the next. Costs O(log n + limit).
    pub async fn list_labels_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LabelEntry>> {
        let prefix = prefix.to_owned();
        let after = after.map(str::to_owned);
        let rows = self
            .read("listing labels", move |db, store| {
                index::labels_page(db, store, &prefix, after.as_deref(), limit)
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(label, digest)| LabelEntry {
                label,
                content_ref: digest.into(),
            })
            .collect())
    }

    /// Every content ref in the store, in hash order.
    pub async fn list_all_content(&self) -> Result<Vec<ContentRef>> {
        let digests = self.read("listing objects", index::objects).await?;
        Ok(digests.into_iter().map(ContentRef::from).collect())
    }

    /// Total bytes of distinct content in the store. O(1): kept as a running
    /// total by the index.
    pub async fn calculate_total_size(&self) -> Result<u64> {
        Ok(self.stats().await?.bytes)
    }

    /// Object count, total bytes and label count. O(1).
    pub async fn stats(&self) -> Result<StoreStats> {
        self.read("reading totals", index::store_stats).await
    }

    async fn set_label(&self, label: &str, target: Option<Digest>, expect: Expect) -> Result<bool> {
        validate_label(label)?;
        let engine = self.root.engine().await?;
        let op = WriteOp::SetLabel {
            store: self.id.clone(),
            label: label.to_owned(),
            target,
            expect,
        };
        engine.writer.write(op).await
    }

    /// Runs an index query on the calling thread. Point queries and pages
    /// take microseconds (WAL readers never wait for writers), far less than
    /// a hop to the blocking pool and back.
    pub(crate) async fn read<T>(
        &self,
        action: &'static str,
        query: impl FnOnce(&rusqlite::Connection, &StoreId) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let engine: Arc<Engine> = self.root.engine().await?;
        engine.readers.read(action, |db| query(db, &self.id))
    }
}
