//! [`ContentStore`]: the API that host-side Rust code and the wasm host use.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::{Change, Engine, Expect, Staged};
use crate::error::{Result, StoreError};
use crate::links::Links;
use crate::names::{ContentRef, Digest, StoreId, validate_label};
use crate::recent::{AsOf, RecentObject};
use crate::root::{COMPONENT_CACHE_STORE, OWNERS_STORE, StoreRoot};
use crate::stats::{StoreQuota, StoreStats};
use crate::task::blocking;
use crate::tree::TreeHasher;

/// Content from this size up is hashed and staged in parallel.
const PARALLEL_WRITE_MIN: usize = 1 << 20;

/// Content up to this size is verified on the calling thread.
const VERIFY_ON_CALLER_MAX: usize = 64 << 10;

/// How old stored content must be before storing it again refreshes its
/// age. Garbage-collection grace periods should be well above this.
pub const REFRESH_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// What [`ContentStore::get_at_most`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AtMost {
    /// The content, verified.
    Content(Vec<u8>),
    /// The content is longer than asked for, and was not read.
    TooLarge {
        /// Its size in bytes.
        size: u64,
    },
}

/// One label and the content it names, as listed by
/// [`ContentStore::list_labels_page`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LabelEntry {
    /// The label.
    pub label: String,
    /// What it points at (`"ref"` in JSON).
    #[serde(rename = "ref")]
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

/// The longest actor name the change log keeps ([`ContentStore::by_actor`]).
const MAX_ACTOR_NAME_BYTES: usize = 128;

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
    record: Option<Arc<dyn WriteRecord>>,
    /// Who writes through this handle, named in the change log.
    actor: Option<Arc<str>>,
    /// The quota every write through this handle is checked against, in
    /// its transaction, and what those writes added to the footprint.
    quota: Option<(StoreQuota, Arc<AtomicU64>)>,
}

impl Default for ContentStore {
    fn default() -> Self {
        Self::new()
    }
}

/// What a write carries into its own transaction besides its change: an
/// event chain's pending event ([`crate::Record`]), defined above the store
/// so that the store needs nothing of chains.
pub(crate) trait WriteRecord: Send + Sync + std::fmt::Debug {
    /// `change`, carrying what is still pending; and, if it took
    /// something, how to give it back should the change fail.
    fn attach(&self, change: Change) -> (Change, Option<GiveBack>);
}

/// Puts back what [`WriteRecord::attach`] took, after its change failed.
pub(crate) type GiveBack = Box<dyn FnOnce() + Send>;

/// Store handles: a root opens any store by id.
impl StoreRoot {
    /// Makes a store with a fresh UUID v4 id and registers it, so that it is
    /// listed even before anything is stored in it.
    pub async fn create_store(&self) -> Result<ContentStore> {
        let store = ContentStore::in_root(self.clone(), StoreId::generate());
        let engine = self.engine().await?;
        let change = Change::CreateStore {
            store: store.store_id().clone(),
        };
        engine.apply(change).await?;
        Ok(store)
    }

    /// The store with id `id` (which need not exist yet: writes create it).
    pub fn store(&self, id: &str) -> Result<ContentStore> {
        Ok(ContentStore::in_root(self.clone(), StoreId::parse(id)?))
    }

    /// The reserved store where hosts record which actor created which
    /// store, so that a store stays its creator's across runs: one label
    /// `<actor>/<store id>` per store. No caller can name it by id.
    pub fn owners_store(&self) -> ContentStore {
        ContentStore::in_root(self.clone(), StoreId::reserved(OWNERS_STORE))
    }

    /// The reserved store where hosts keep compiled components, labelled
    /// by what they were compiled from and for. It is a cache: `gc` drops
    /// entries stored before its grace period, labels and all, and no
    /// caller can name it by id.
    pub fn component_cache(&self) -> ContentStore {
        ContentStore::in_root(self.clone(), StoreId::reserved(COMPONENT_CACHE_STORE))
    }

    /// The root's own stores that exist (the event chains, the component
    /// cache), for maintenance: `verify` and `gc` over every store should
    /// cover these too.
    pub async fn reserved_stores(&self) -> Result<Vec<ContentStore>> {
        let engine = self.engine().await?;
        let rows = blocking(move || engine.stores()).await?;
        Ok(rows
            .into_iter()
            .filter(|(id, _)| id.starts_with('_'))
            .map(|(id, _)| ContentStore::in_root(self.clone(), StoreId::reserved(id)))
            .collect())
    }

    /// Stores that have a directory under the root but no entry in its
    /// index: a write killed before its store's first commit leaves one,
    /// holding only staging. [`ContentStore::collect_garbage`] on them
    /// removes that staging once it is stale, as for any store.
    pub async fn unindexed_stores(&self) -> Result<Vec<ContentStore>> {
        let engine = self.engine().await?;
        let indexed: std::collections::HashSet<String> = blocking({
            let engine = Arc::clone(&engine);
            move || engine.stores()
        })
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
        let on_disk = blocking(move || {
            engine.store_dir_ids().map_err(|source| StoreError::Io {
                store: String::new(),
                action: "listing store directories",
                path: "stores".into(),
                source,
            })
        })
        .await?;
        Ok(on_disk
            .into_iter()
            .filter(|id| !indexed.contains(id))
            .filter_map(|id| StoreId::parse(&id).ok())
            .map(|id| ContentStore::in_root(self.clone(), id))
            .collect())
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
        Self {
            root,
            id,
            record: None,
            actor: None,
            quota: None,
        }
    }

    /// This store, with every label change made through the returned
    /// handle recorded in the change log as made by `actor` (an actor's
    /// name, a user, a service: any text). Hosts give each actor such a
    /// handle, so that `changes` and `watch` say who changed what. Names
    /// are cut to their first 128 bytes (at a character boundary).
    pub fn by_actor(&self, actor: &str) -> Self {
        let mut end = actor.len().min(MAX_ACTOR_NAME_BYTES);
        while !actor.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            actor: Some(Arc::from(&actor[..end])),
            ..self.clone()
        }
    }

    /// This store, with every write made through the returned handle (and
    /// its clones) refused with [`StoreError::QuotaExceeded`] if it would
    /// grow the store past `quota`: content, labels, label moves, streamed
    /// writes. The check reads the store's totals inside the write's own
    /// transaction, so writers in other tasks, processes or hosts cannot
    /// each fit alone and overflow together, and a refused write leaves
    /// nothing behind. Writes that free space are never refused. Hosts
    /// give each call of a guest such a handle; see
    /// [`ContentStore::footprint_added`] for what it cost.
    pub fn within_quota(&self, quota: StoreQuota) -> Self {
        Self {
            quota: Some((quota, Arc::new(AtomicU64::new(0)))),
            ..self.clone()
        }
    }

    /// What the writes made through this handle (and its clones) since
    /// [`ContentStore::within_quota`] added to the store's footprint, as
    /// [`StoreStats::footprint`] counts it: new content with its object
    /// overhead, new labels, change log entries. 0 for a handle without a
    /// quota.
    pub fn footprint_added(&self) -> u64 {
        self.quota
            .as_ref()
            .map_or(0, |(_, growth)| growth.load(Ordering::Relaxed))
    }

    /// Who writes through this handle, if it was given one
    /// ([`ContentStore::by_actor`]).
    pub fn actor(&self) -> Option<&str> {
        self.actor.as_deref()
    }

    /// This store, with `record` carried by the next write made through
    /// it ([`crate::ContentStore::with_record`]).
    pub(crate) fn with_write_record(&self, record: Arc<dyn WriteRecord>) -> Self {
        Self {
            record: Some(record),
            ..self.clone()
        }
    }

    /// Applies one change, with the pending record's event if there is one.
    pub(crate) async fn apply(&self, engine: &dyn Engine, change: Change) -> Result<bool> {
        // The actor wraps the record, which wraps the quota, so that an
        // engine meets them in that order; a write refused for the quota
        // is refused whole, with its event.
        let change = match &self.quota {
            Some((quota, growth)) => Change::WithinQuota {
                quota: *quota,
                change: Box::new(change),
                growth: Arc::clone(growth),
            },
            None => change,
        };
        let by_actor = |change| match &self.actor {
            Some(actor) => Change::ByActor {
                actor: Arc::clone(actor),
                change: Box::new(change),
            },
            None => change,
        };
        let Some(record) = &self.record else {
            return engine.apply(by_actor(change)).await;
        };
        let (change, give_back) = record.attach(change);
        let applied = engine.apply(by_actor(change)).await;
        if let (Err(_), Some(give_back)) = (&applied, give_back) {
            give_back();
        }
        applied
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
    #[tracing::instrument(level = "trace", skip_all, fields(store = %self.id, label = label.unwrap_or_default()))]
    pub async fn write(&self, content: impl Into<Vec<u8>>, label: Option<&str>) -> Result<Stored> {
        if let Some(label) = label {
            validate_label(label)?;
        }
        let content = Arc::new(content.into());
        let engine = self.root.engine().await?;
        let size = content.len() as u64;
        let (digest, staged, links) = self.stage(&engine, content).await?;
        // The engine drops the staged bytes if it holds them already,
        // recently stored; that is deduplication.
        let change = Change::AddObject {
            store: self.id.clone(),
            digest,
            size,
            staged,
            label: label.map(str::to_owned),
            links,
        };
        let new = self.apply(&*engine, change).await?;
        Ok(Stored {
            content_ref: digest.into(),
            new,
        })
    }

    /// Hashes `content`, finds the refs written inside it, and stages it
    /// for [`Change::AddObject`]: small content here, in memory; larger
    /// content into a staging file on a blocking thread.
    async fn stage(
        &self,
        engine: &Arc<dyn Engine>,
        content: Arc<Vec<u8>>,
    ) -> Result<(Digest, Staged, Links)> {
        if !engine.stages_to_file(content.len()) {
            let digest = Digest::of(&content);
            let links = Links::of(&content, digest);
            return Ok((digest, Staged::Inline(content), links));
        }
        let (engine, store) = (Arc::clone(engine), self.id.clone());
        blocking(move || {
            let (digest, links, staged) = hash_and_stage(&*engine, &store, content);
            Ok((digest, staged?, links))
        })
        .await
    }

    /// The size of the content behind `content_ref`, without reading it.
    /// Fails with [`StoreError::NotFound`] when the store does not hold it.
    #[tracing::instrument(level = "trace", skip_all, fields(store = %self.id, content_ref = %content_ref))]
    pub async fn content_size(&self, content_ref: &ContentRef) -> Result<u64> {
        let digest = content_ref.digest()?;
        let engine = self.root.engine().await?;
        let recent = self.root.recent(&*engine);
        if let Some(object) = recent.object(&self.id, digest) {
            return Ok(object.size);
        }
        let size = engine.object_size(&self.id, digest).await?;
        let size = size.ok_or_else(|| self.not_found(digest))?;
        recent.remember_size(&self.id, digest, size);
        Ok(size)
    }

    /// The content behind `content_ref`, re-hashed on the way out: bytes that
    /// no longer match their ref give [`StoreError::Corrupted`], never data.
    #[tracing::instrument(level = "trace", skip_all, fields(store = %self.id, content_ref = %content_ref))]
    pub async fn get(&self, content_ref: &ContentRef) -> Result<Vec<u8>> {
        let digest = content_ref.digest()?;
        self.get_digest(digest).await
    }

    async fn get_digest(&self, digest: Digest) -> Result<Vec<u8>> {
        let engine = self.root.engine().await?;
        let recent = self.root.recent(&*engine);
        if let Some(bytes) = recent
            .object(&self.id, digest)
            .and_then(|object| object.bytes)
        {
            return Ok(bytes.to_vec());
        }
        let bytes = self.read_verified(&*engine, digest).await?;
        recent.remember_bytes(&self.id, digest, &bytes);
        Ok(bytes)
    }

    /// The content behind `content_ref` if it is at most `max_bytes` long,
    /// verified like [`ContentStore::get`]; otherwise only its size, without
    /// reading it. For callers that must not take in more than they can hold.
    #[tracing::instrument(level = "trace", skip_all, fields(store = %self.id, content_ref = %content_ref))]
    pub async fn get_at_most(&self, content_ref: &ContentRef, max_bytes: u64) -> Result<AtMost> {
        let digest = content_ref.digest()?;
        let engine = self.root.engine().await?;
        let recent = self.root.recent(&*engine);
        let known = recent.object(&self.id, digest);
        self.read_at_most(&*engine, &recent, digest, known, max_bytes)
            .await
    }

    /// What `label` points at, and that content as
    /// [`ContentStore::get_at_most`] gives it; `None` when the label is not
    /// defined. One call for the commonest read of all.
    #[tracing::instrument(level = "trace", skip_all, fields(store = %self.id, label = label))]
    pub async fn get_label_at_most(
        &self,
        label: &str,
        max_bytes: u64,
    ) -> Result<Option<(ContentRef, AtMost)>> {
        validate_label(label)?;
        let engine = self.root.engine().await?;
        let recent = self.root.recent(&*engine);
        let (digest, known) = match recent.label_and_object(&self.id, label) {
            Some((target, known)) => (target, known),
            None => {
                let target = engine.label_target(&self.id, label).await?;
                recent.remember_label(&self.id, label, target);
                (target, None)
            }
        };
        let Some(digest) = digest else {
            return Ok(None);
        };
        let content = self
            .read_at_most(&*engine, &recent, digest, known, max_bytes)
            .await?;
        Ok(Some((digest.into(), content)))
    }

    /// [`ContentStore::get_at_most`] once the digest is known, and what
    /// the root remembers of the object, if anything.
    async fn read_at_most(
        &self,
        engine: &dyn Engine,
        recent: &AsOf<'_>,
        digest: Digest,
        known: Option<RecentObject>,
        max_bytes: u64,
    ) -> Result<AtMost> {
        let size = match known {
            Some(RecentObject {
                size,
                bytes: Some(bytes),
            }) if size <= max_bytes => return Ok(AtMost::Content(bytes.to_vec())),
            Some(object) => object.size,
            None => {
                let size = engine.object_size(&self.id, digest).await?;
                size.ok_or_else(|| self.not_found(digest))?
            }
        };
        if size > max_bytes {
            recent.remember_size(&self.id, digest, size);
            return Ok(AtMost::TooLarge { size });
        }
        let bytes = self.read_verified(engine, digest).await?;
        recent.remember_bytes(&self.id, digest, &bytes);
        Ok(AtMost::Content(bytes))
    }

    async fn read_verified(&self, engine: &dyn Engine, digest: Digest) -> Result<Vec<u8>> {
        let Some(bytes) = engine.read_object(&self.id, digest).await? else {
            return Err(absent(engine, &self.id, digest).await);
        };
        // Small content is verified on the calling thread: a round trip
        // through the blocking pool costs more than hashing it.
        if bytes.len() <= VERIFY_ON_CALLER_MAX {
            return verified(&self.id, digest, bytes);
        }
        let store = self.id.clone();
        blocking(move || verified(&store, digest, bytes)).await
    }

    fn not_found(&self, digest: Digest) -> StoreError {
        StoreError::NotFound {
            store: self.id.to_string(),
            reference: digest.to_hex(),
        }
    }

    /// Whether this store holds `content_ref`.
    #[tracing::instrument(level = "trace", skip_all, fields(store = %self.id, content_ref = %content_ref))]
    pub async fn exists(&self, content_ref: &ContentRef) -> Result<bool> {
        let digest = content_ref.digest()?;
        self.root.engine().await?.has_object(&self.id, digest).await
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
    #[tracing::instrument(level = "trace", skip_all, fields(store = %self.id, label = label))]
    pub async fn get_by_label(&self, label: &str) -> Result<Option<ContentRef>> {
        validate_label(label)?;
        let engine = self.root.engine().await?;
        let recent = self.root.recent(&*engine);
        if let Some(target) = recent.label(&self.id, label) {
            return Ok(target.map(ContentRef::from));
        }
        let target = engine.label_target(&self.id, label).await?;
        recent.remember_label(&self.id, label, target);
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

    /// Points each label at its ref, or removes it for `None`, all in one
    /// index transaction: either every label changes or none does. Fails
    /// with [`StoreError::NotFound`] (changing nothing) when a ref is not
    /// stored.
    #[tracing::instrument(level = "trace", skip_all, fields(store = %self.id, labels = labels.len()))]
    pub async fn set_labels(&self, labels: &[(String, Option<ContentRef>)]) -> Result<()> {
        let mut rows = Vec::with_capacity(labels.len());
        for (label, target) in labels {
            validate_label(label)?;
            rows.push((
                label.clone(),
                target.as_ref().map(ContentRef::digest).transpose()?,
            ));
        }
        let change = Change::SetLabels {
            store: self.id.clone(),
            labels: rows,
            expected: None,
        };
        self.apply(&*self.root.engine().await?, change)
            .await
            .map(drop)
    }

    /// Moves each label from its expected value to its new one (`None`:
    /// absent), all in one index transaction, and only if every label still
    /// has its expected value; returns whether it did. Many labels at once
    /// for the price of one write (what a sync needs), or a structure's
    /// head and its version label moved together. Fails with
    /// [`StoreError::NotFound`], moving none, when a new ref is not stored.
    #[tracing::instrument(level = "trace", skip_all, fields(store = %self.id, labels = moves.len()))]
    pub async fn compare_and_swap_labels(
        &self,
        moves: &[(String, Option<ContentRef>, Option<ContentRef>)],
    ) -> Result<bool> {
        let digest = |r: &Option<ContentRef>| r.as_ref().map(ContentRef::digest).transpose();
        let mut labels = Vec::with_capacity(moves.len());
        let mut expected = Vec::with_capacity(moves.len());
        for (label, from, to) in moves {
            validate_label(label)?;
            labels.push((label.clone(), digest(to)?));
            expected.push(digest(from)?);
        }
        let change = Change::SetLabels {
            store: self.id.clone(),
            labels,
            expected: Some(expected),
        };
        self.apply(&*self.root.engine().await?, change).await
    }

    /// The verified content of each ref whose object is small enough to
    /// be kept in the index, read together; `None` for the others, to be
    /// read one by one. Answers only a prefix of `refs` once their content
    /// passes `budget` bytes (see
    /// [`crate::engine::Engine::read_inline_many`]): ask again for the
    /// rest. Not remembered: this is for bulk copies.
    pub(crate) async fn get_many_small(
        &self,
        refs: &[ContentRef],
        budget: u64,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let digests = refs
            .iter()
            .map(ContentRef::digest)
            .collect::<Result<Vec<_>>>()?;
        let engine = self.root.engine().await?;
        let found = engine.read_inline_many(&self.id, &digests, budget).await?;
        digests
            .into_iter()
            .zip(found)
            .map(|(digest, bytes)| bytes.map(|b| verified(&self.id, digest, b)).transpose())
            .collect()
    }

    /// Stores every piece of `contents`, letting the writes share commits,
    /// and returns their refs in order: far cheaper than storing many
    /// small pieces one by one. Not recorded in an event chain.
    pub(crate) async fn store_all(&self, contents: Vec<Vec<u8>>) -> Result<Vec<ContentRef>> {
        let engine = self.root.engine().await?;
        let mut refs = Vec::with_capacity(contents.len());
        let mut changes = Vec::with_capacity(contents.len());
        for content in contents {
            let size = content.len() as u64;
            let (digest, staged, links) = self.stage(&engine, Arc::new(content)).await?;
            refs.push(digest.into());
            changes.push(Change::AddObject {
                store: self.id.clone(),
                digest,
                size,
                staged,
                label: None,
                links,
            });
        }
        for applied in engine.apply_all(changes).await {
            applied?;
        }
        Ok(refs)
    }

    /// Every label in the store, in byte order.
    pub async fn list_labels(&self) -> Result<Vec<String>> {
        let page = self.list_labels_page("", None, usize::MAX).await?;
        Ok(page.into_iter().map(|entry| entry.label).collect())
    }

    /// Up to `limit` labels that start with `prefix`, strictly after `after`,
    /// in byte order, with their targets. Pass the last label of one page as
    /// `after` to get the next. Costs O(log n + limit).
    #[tracing::instrument(level = "trace", skip_all, fields(store = %self.id, prefix = prefix))]
    pub async fn list_labels_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LabelEntry>> {
        let engine = self.root.engine().await?;
        let rows = engine.labels_page(&self.id, prefix, after, limit).await?;
        Ok(rows
            .into_iter()
            .map(|(label, digest)| LabelEntry {
                label,
                content_ref: digest.into(),
            })
            .collect())
    }

    /// Every content ref in the store, in hash order.
    #[tracing::instrument(level = "trace", skip_all, fields(store = %self.id))]
    pub async fn list_all_content(&self) -> Result<Vec<ContentRef>> {
        let digests = self.object_digests().await?;
        Ok(digests.into_iter().map(ContentRef::from).collect())
    }

    /// Every object's digest, in digest order: 32 bytes each, for callers
    /// that hold every object of a large store at once.
    pub(crate) async fn object_digests(&self) -> Result<Vec<Digest>> {
        self.root.engine().await?.objects(&self.id).await
    }

    /// Total bytes of distinct content in the store. O(1): kept as a running
    /// total by the index.
    pub async fn calculate_total_size(&self) -> Result<u64> {
        Ok(self.stats().await?.bytes)
    }

    /// Object count, total bytes and label count. O(1).
    #[tracing::instrument(level = "trace", skip_all, fields(store = %self.id))]
    pub async fn stats(&self) -> Result<StoreStats> {
        self.root.engine().await?.store_stats(&self.id).await
    }

    /// Whether the store exists yet. A store comes into being with its
    /// first write (or [`StoreRoot::create_store`]), so a handle to a
    /// store no one has written to is valid but names nothing.
    pub async fn is_created(&self) -> Result<bool> {
        let engine = self.root.engine().await?;
        Ok(engine.store_created_at(&self.id).await?.is_some())
    }

    #[tracing::instrument(level = "trace", skip_all, fields(store = %self.id, label = label))]
    async fn set_label(&self, label: &str, target: Option<Digest>, expect: Expect) -> Result<bool> {
        validate_label(label)?;
        let change = Change::SetLabel {
            store: self.id.clone(),
            label: label.to_owned(),
            target,
            expect,
        };
        self.apply(&*self.root.engine().await?, change).await
    }
}

/// Hashes `content` (finding the refs written inside it) and stages it in
/// a file, at the same time for large content: the cost is then the
/// slower of the two rather than their sum. Blocking.
fn hash_and_stage(
    engine: &dyn Engine,
    store: &StoreId,
    content: Arc<Vec<u8>>,
) -> (Digest, Links, Result<Staged>) {
    let hash = |content: &[u8]| {
        let mut hasher = TreeHasher::new(Vec::new());
        hasher
            .update(content)
            .expect("hashing into memory cannot fail");
        let (digest, outboard) = hasher.finish().expect("hashing into memory cannot fail");
        (digest, outboard, Links::of(content, digest))
    };
    if content.len() < PARALLEL_WRITE_MIN {
        let (digest, outboard, links) = hash(&content);
        let staged = engine.stage(store, content);
        if let Ok(staged) = &staged {
            engine.attach_outboard(staged, &outboard);
        }
        return (digest, links, staged);
    }
    // The outboard comes with the hash; it is written once the file is.
    std::thread::scope(|scope| {
        let hashing = scope.spawn(|| hash(&content));
        let staged = engine.stage(store, Arc::clone(&content));
        let (digest, outboard, links) = hashing.join().expect("hashing does not panic");
        if let Ok(staged) = &staged {
            engine.attach_outboard(staged, &outboard);
        }
        (digest, links, staged)
    })
}

/// `bytes` if they hash to `digest`; [`StoreError::Corrupted`] otherwise.
fn verified(store: &StoreId, digest: Digest, bytes: Vec<u8>) -> Result<Vec<u8>> {
    let actual = Digest::of(&bytes);
    if actual != digest {
        return Err(StoreError::Corrupted {
            store: store.to_string(),
            reference: digest.to_hex(),
            actual: actual.to_hex(),
        });
    }
    Ok(bytes)
}

/// Why the engine returned no bytes for `digest`: the store never held it
/// ([`StoreError::NotFound`]), or it is indexed and its bytes are gone
/// ([`StoreError::Missing`]).
pub(crate) async fn absent(engine: &dyn Engine, store: &StoreId, digest: Digest) -> StoreError {
    match engine.has_object(store, digest).await {
        Ok(true) => StoreError::Missing {
            store: store.to_string(),
            reference: digest.to_hex(),
        },
        Ok(false) => StoreError::NotFound {
            store: store.to_string(),
            reference: digest.to_hex(),
        },
        Err(error) => error,
    }
}
