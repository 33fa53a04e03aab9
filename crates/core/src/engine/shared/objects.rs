//! The shared engine's bytes: content objects in an S3-compatible object
//! store, and this host's read cache of them on local disk.
//!
//! Object keys are `<prefix>/stores/<store dir>/objects/<2 hex>/<62 hex>`
//! (the store directory named as in the local engine). Content is
//! addressed by its digest, so a copy verified once is valid forever: the
//! cache keeps verified copies (with their outboards) under the local
//! engine's layout in the cache directory, evicts the least recently used
//! when over its budget, and is also where new content is staged.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as Key;
use object_store::{
    ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};

use crate::durability::Durability;
use crate::engine::layout::{self, ObjectFiles, store_dir_name};
use crate::names::{Digest, StoreId};
use crate::tree::{self, TreeHasher};

/// Content up to this size is uploaded in one conditional PUT; larger
/// content in parts.
const SINGLE_PUT_MAX: u64 = 64 << 20;

/// A cache hit older than this is marked used again (its mtime moved), so
/// that eviction keeps what is read often. Newer hits skip the syscall.
const TOUCH_AFTER: Duration = Duration::from_secs(60);

/// The bucket and key prefix holding one shared root's objects.
#[derive(Clone, Debug)]
pub(super) struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// `s3://bucket/prefix` and the endpoint, for messages.
    pub(super) at: String,
}

/// What an upload found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Uploaded {
    /// This call created the object.
    Created,
    /// The object was there already (create-if-absent found it).
    AlreadyThere,
}

impl Objects {
    /// Connects to the bucket, configured from the standard `AWS_*`
    /// variables. With a custom endpoint and no access key, requests are
    /// not signed (anonymous access, as a local SeaweedFS expects).
    pub(super) fn connect(bucket: &str, prefix: &str) -> Result<Self, String> {
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .or_else(|_| std::env::var("AWS_ENDPOINT"))
            .ok();
        let has_key = std::env::var_os("AWS_ACCESS_KEY_ID").is_some_and(|key| !key.is_empty());
        // A store call should fail within seconds when the object store is
        // down, not retry for minutes: a few quick retries, then an error.
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry)
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                "5s",
            );
        if endpoint.is_some() && !has_key {
            builder = builder.with_skip_signature(true);
        }
        let store = builder.build().map_err(|error| error.to_string())?;
        let at = match &endpoint {
            Some(endpoint) => format!("s3://{bucket}/{prefix} at {endpoint}"),
            None => format!("s3://{bucket}/{prefix}"),
        };
        Ok(Self {
            store: Arc::new(store),
            prefix: prefix.to_owned(),
            at,
        })
    }

    fn store_key(&self, store: &StoreId, parts: &[&str]) -> Key {
        let dir = store_dir_name(store.as_str());
        let mut all: Vec<&str> = Vec::with_capacity(parts.len() + 3);
        all.extend(self.prefix.split('/').filter(|part| !part.is_empty()));
        all.extend(["stores", &dir]);
        all.extend(parts);
        Key::from_iter(all)
    }

    /// The key of object `digest` of `store`.
    pub(super) fn key(&self, store: &StoreId, digest: Digest) -> Key {
        let hex = digest.to_hex();
        self.store_key(store, &["objects", &hex[..2], &hex[2..]])
    }

    /// The folder of `store`'s objects.
    fn objects_folder(&self, store: &StoreId) -> Key {
        self.store_key(store, &["objects"])
    }

    /// Uploads the staged file as object `digest`. `overwrite` rewrites
    /// an object that is there (healing damaged bytes); otherwise the
    /// object is created only if absent, and finding it counts as success.
    pub(super) async fn upload(
        &self,
        store: &StoreId,
        digest: Digest,
        staged: &Path,
        overwrite: bool,
    ) -> Result<Uploaded, object_store::Error> {
        let key = self.key(store, digest);
        let size = fs::metadata(staged).map_err(local_error)?.len();
        if size > SINGLE_PUT_MAX {
            return self.upload_parts(&key, staged, overwrite).await;
        }
        let bytes = fs::read(staged).map_err(local_error)?;
        self.put(&key, bytes, overwrite).await
    }

    /// Writes `bytes` at `key`, create-if-absent unless `overwrite`.
    pub(super) async fn put(
        &self,
        key: &Key,
        bytes: Vec<u8>,
        overwrite: bool,
    ) -> Result<Uploaded, object_store::Error> {
        let mode = if overwrite {
            PutMode::Overwrite
        } else {
            PutMode::Create
        };
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(key, PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => Ok(Uploaded::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Uploaded::AlreadyThere),
            Err(error) => Err(error),
        }
    }

    /// Multipart uploads cannot be conditional: an object that is there
    /// is left alone (unless `overwrite`), which is what create-if-absent
    /// does; the object lock keeps collection out meanwhile.
    async fn upload_parts(
        &self,
        key: &Key,
        staged: &Path,
        overwrite: bool,
    ) -> Result<Uploaded, object_store::Error> {
        if !overwrite && self.exists(key).await? {
            return Ok(Uploaded::AlreadyThere);
        }
        let upload = self.store.put_multipart(key).await?;
        let mut writer = WriteMultipart::new(upload);
        let mut file = File::open(staged).map_err(local_error)?;
        let mut buffer = vec![0; 8 << 20];
        loop {
            let read = io::Read::read(&mut file, &mut buffer).map_err(local_error)?;
            if read == 0 {
                break;
            }
            writer.wait_for_capacity(4).await?;
            writer.write(&buffer[..read]);
        }
        writer.finish().await?;
        Ok(Uploaded::Created)
    }

    /// Whether an object is at `key`.
    pub(super) async fn exists(&self, key: &Key) -> Result<bool, object_store::Error> {
        match self.store.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// When the object at `key` was last written, or `None` if it is absent.
    pub(super) async fn modified(
        &self,
        key: &Key,
    ) -> Result<Option<SystemTime>, object_store::Error> {
        match self.store.head(key).await {
            Ok(meta) => Ok(Some(meta.last_modified.into())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The object's bytes, or `None` if it is absent.
    pub(super) async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, object_store::Error> {
        match self.store.get(key).await {
            Ok(result) => Ok(Some(result.bytes().await?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Streams the object into `sink` piece by piece; `false` if absent.
    pub(super) async fn get_into(
        &self,
        key: &Key,
        sink: &mut impl Write,
    ) -> Result<bool, object_store::Error> {
        let result = match self.store.get(key).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(error) => return Err(error),
        };
        let mut pieces = result.into_stream();
        while let Some(piece) = pieces.next().await {
            sink.write_all(&piece?).map_err(local_error)?;
        }
        Ok(true)
    }

    /// Deletes the object at `key`; an absent one is fine.
    pub(super) async fn delete(&self, key: &Key) -> Result<(), object_store::Error> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Copies a damaged object aside under `quarantine/` for inspection.
    pub(super) async fn quarantine(
        &self,
        store: &StoreId,
        digest: Digest,
        bytes: Vec<u8>,
    ) -> Result<Key, object_store::Error> {
        let name = format!("{}.{}", digest.to_hex(), crate::engine::unix_now());
        let key = self.store_key(store, &["quarantine", &name]);
        self.put(&key, bytes, true).await?;
        Ok(key)
    }

    /// What quarantine copied aside for `store` (keys named
    /// `<hex>.<unix millis>`; other keys there are not ours), with each key.
    pub(super) async fn quarantined(
        &self,
        store: &StoreId,
    ) -> Result<Vec<(crate::engine::QuarantinedBytes, Key)>, object_store::Error> {
        let folder = self.store_key(store, &["quarantine"]);
        let mut listing = self.store.list(Some(&folder));
        let mut found = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            let Some(name) = meta.location.filename() else {
                continue;
            };
            let Some((hex, millis)) = name.split_once('.') else {
                continue;
            };
            let (Ok(digest), Ok(millis)) = (Digest::parse(hex), millis.parse::<u64>()) else {
                continue;
            };
            let moved_at = SystemTime::UNIX_EPOCH + Duration::from_millis(millis);
            found.push(((digest, meta.size, moved_at), meta.location));
        }
        Ok(found)
    }

    /// Every object stored for `store`: its digest (`None` for a key that
    /// is not an object name), key, size and when it was written.
    pub(super) async fn list(
        &self,
        store: &StoreId,
    ) -> Result<Vec<(Option<Digest>, Key, u64, SystemTime)>, object_store::Error> {
        let folder = self.objects_folder(store);
        let mut listing = self.store.list(Some(&folder));
        let mut found = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            let parts: Vec<String> = meta
                .location
                .parts()
                .map(|part| part.as_ref().to_owned())
                .collect();
            let digest = match parts.as_slice() {
                [.., shard, rest] => Digest::parse(&format!("{shard}{rest}")).ok(),
                _ => None,
            };
            found.push((digest, meta.location, meta.size, meta.last_modified.into()));
        }
        Ok(found)
    }
}

/// Turns a local file error met during a transfer into the object store's.
fn local_error(source: io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "local staging",
        source: Box::new(source),
    }
}

/// This host's verified copies of objects, bounded in size.
#[derive(Debug)]
pub(super) struct ReadCache {
    pub(super) files: ObjectFiles,
    dir: PathBuf,
    budget: u64,
    /// Bytes held, counted on first use and kept up to date after.
    used: Mutex<Option<u64>>,
}

impl ReadCache {
    pub(super) fn new(dir: &Path, budget: u64) -> Self {
        Self {
            files: ObjectFiles::new(dir, Durability::Buffered),
            dir: dir.to_owned(),
            budget,
            used: Mutex::new(None),
        }
    }

    /// The cached copy's bytes, if there is one of at most `max` bytes and
    /// it is still intact (a damaged copy is dropped).
    pub(super) fn read(&self, store: &StoreId, digest: Digest, max: u64) -> Option<Vec<u8>> {
        let path = self.files.object_path(store, digest);
        let file = File::open(&path).ok()?;
        if file.metadata().ok()?.len() > max {
            return None;
        }
        let bytes = read_all(&file)?;
        if Digest::of(&bytes) != digest {
            self.forget(store, digest);
            return None;
        }
        touch(&file);
        Some(bytes)
    }

    /// The cached copy's file and its outboard, if there is a copy.
    pub(super) fn open(
        &self,
        store: &StoreId,
        digest: Digest,
        size: u64,
    ) -> Option<(File, Option<File>)> {
        let file = File::open(self.files.object_path(store, digest)).ok()?;
        if file.metadata().ok()?.len() != size {
            return None;
        }
        touch(&file);
        let outboard = self
            .files
            .open_outboard(store, digest, tree::outboard_len(size));
        Some((file, outboard))
    }

    /// Takes a staged file whose bytes are known to be `digest` (with its
    /// staged outboard, if any) into the cache. Returns whether it did;
    /// a file over the cache's whole budget is left where it is.
    pub(super) fn admit(&self, store: &StoreId, digest: Digest, staged: &Path) -> bool {
        let size = fs::metadata(staged).map(|m| m.len()).unwrap_or(0);
        if size > self.budget || self.files.publish(store, staged, digest).is_err() {
            return false;
        }
        self.files.place_outboard(store, staged, digest);
        self.account(size);
        true
    }

    /// Writes verified small content into the cache.
    pub(super) fn admit_bytes(&self, store: &StoreId, digest: Digest, bytes: &[u8]) {
        if bytes.len() as u64 > self.budget {
            return;
        }
        if let Ok(staged) = self.files.write_temp(store, bytes)
            && !self.admit(store, digest, &staged)
        {
            layout::remove_staged(&staged);
        }
    }

    /// A new staging file to download an object into, with a hasher
    /// writing its outboard beside it: once the digest is checked, the
    /// file goes into the cache with [`ReadCache::admit`].
    pub(super) fn stage_download(
        &self,
        store: &StoreId,
    ) -> io::Result<(
        PathBuf,
        TreeHasher<io::BufWriter<File>>,
        io::BufWriter<File>,
    )> {
        let (path, data) = self.files.create_temp(store).map_err(io::Error::other)?;
        let outboard = File::create(layout::staged_outboard(&path))?;
        Ok((
            path,
            TreeHasher::new(io::BufWriter::new(outboard)),
            io::BufWriter::with_capacity(1 << 20, data),
        ))
    }

    /// Drops the cached copy of an object, if any.
    pub(super) fn forget(&self, store: &StoreId, digest: Digest) {
        let size = fs::metadata(self.files.object_path(store, digest)).map(|m| m.len());
        if self.files.remove_object(store, digest).is_ok()
            && let Ok(size) = size
            && let Some(used) = self.used.lock().expect("cache count").as_mut()
        {
            *used = used.saturating_sub(size);
        }
    }

    /// Counts `added` bytes and evicts the least recently used copies when
    /// the cache is over budget, down to 90% of it.
    fn account(&self, added: u64) {
        let mut used = self.used.lock().expect("cache count");
        let total = match *used {
            Some(total) => total + added,
            None => self.held().iter().map(|(_, _, size)| size).sum(),
        };
        *used = Some(total);
        if total <= self.budget {
            return;
        }
        let mut held = self.held();
        held.sort_by_key(|(_, modified, _)| *modified);
        let mut total: u64 = held.iter().map(|(_, _, size)| size).sum();
        let target = self.budget / 10 * 9;
        for (path, _, size) in held {
            if total <= target {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                let _ = fs::remove_file(outboard_of(&path));
                total = total.saturating_sub(size);
            }
        }
        *used = Some(total);
    }

    /// Every cached copy: path, last use, size.
    fn held(&self) -> Vec<(PathBuf, SystemTime, u64)> {
        let mut found = Vec::new();
        let stores = fs::read_dir(self.dir.join("stores")).into_iter().flatten();
        for store in stores.flatten() {
            let shards = fs::read_dir(store.path().join("objects"))
                .into_iter()
                .flatten();
            for shard in shards.flatten() {
                for object in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                    if let Ok(metadata) = object.metadata() {
                        let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                        found.push((object.path(), modified, metadata.len()));
                    }
                }
            }
        }
        found
    }
}

/// `…/objects/ab/cdef…` → `…/outboards/ab/cdef…`.
fn outboard_of(object: &Path) -> PathBuf {
    let shard = object.parent().expect("cached objects have a shard");
    let objects = shard.parent().expect("shards are in objects/");
    objects
        .with_file_name("outboards")
        .join(shard.file_name().expect("shard name"))
        .join(object.file_name().expect("object name"))
}

/// Marks a cached copy as just used, at most once per [`TOUCH_AFTER`].
fn touch(file: &File) {
    let now = SystemTime::now();
    let stale = file
        .metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|modified| {
            now.duration_since(modified)
                .is_ok_and(|age| age > TOUCH_AFTER)
        });
    if stale {
        let _ = file.set_modified(now);
    }
}

/// All of `file`'s bytes, or `None` on any error.
fn read_all(mut file: &File) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut file, &mut bytes).ok()?;
    Some(bytes)
}
