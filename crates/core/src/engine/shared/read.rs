//! Reads: point lookups and listings from the index, object bytes from
//! this host's verified cache or fetched from S3 into it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use super::connection::generic;
use super::index::{self};
use super::{Inner, SharedEngine};
use crate::engine::layout;
use crate::engine::{
    ChainHead, LabelRow, ObjectSource, READ_ON_CALLER_MAX, Snapshot, TargetSnapshot,
};
use crate::error::Result;
use crate::names::{Digest, StoreId};
use crate::stats::StoreStats;
use crate::tree::{RandomAccess, TreeHasher};

impl SharedEngine {
    pub(crate) async fn object_size(&self, store: &StoreId, digest: Digest) -> Result<Option<u64>> {
        let store = store.clone();
        self.query("looking up object", move |client| async move {
            let held = index::object(&client, &store, digest, false).await?;
            Ok(held.map(|held| held.size))
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
        budget: u64,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let (store, digests) = (store.clone(), digests.to_vec());
        self.query("reading objects", move |client| async move {
            index::inline_many(&client, &store, &digests, budget).await
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
        self.query("looking up label", move |client| async move {
            index::label(&client, &store, &label).await
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
        self.query("listing labels", move |client| async move {
            index::labels_page(&client, &store, &prefix, after.as_deref(), limit).await
        })
        .await
    }

    pub(crate) async fn objects(&self, store: &StoreId) -> Result<Vec<Digest>> {
        let store = store.clone();
        self.query("listing objects", move |client| async move {
            index::digests(&client, &store).await
        })
        .await
    }

    pub(crate) async fn store_stats(&self, store: &StoreId) -> Result<StoreStats> {
        let store = store.clone();
        self.query("reading totals", move |client| async move {
            index::store_stats(&client, &store).await
        })
        .await
    }

    pub(crate) async fn store_created_at(&self, store: &StoreId) -> Result<Option<i64>> {
        let store = store.clone();
        self.query("looking up store", move |client| async move {
            index::store_created_at(&client, &store).await
        })
        .await
    }

    pub(crate) fn stores(&self) -> Result<Vec<(String, StoreStats)>> {
        self.query_blocking("listing stores", move |client| async move {
            index::stores(&client).await
        })
    }

    pub(crate) fn snapshot(&self, store: &StoreId, prefix: &str) -> Result<Snapshot> {
        let (store, prefix) = (store.clone(), prefix.to_owned());
        self.block(|inner| async move {
            let mut client = inner.client().await?;
            let taken = async {
                let transaction = snapshot_transaction(&mut client).await?;
                let labels =
                    index::labels_page(&transaction, &store, &prefix, None, usize::MAX).await?;
                let objects = index::object_rows(&transaction, &store).await?;
                transaction.commit().await?;
                Ok(Snapshot { labels, objects })
            };
            inner.index(taken.await, "listing labels and objects")
        })
    }

    pub(crate) fn target_snapshot(&self, store: &StoreId) -> Result<TargetSnapshot> {
        let store = store.clone();
        self.block(|inner| async move {
            let mut client = inner.client().await?;
            let taken = async {
                let transaction = snapshot_transaction(&mut client).await?;
                let targets = index::label_targets(&transaction, &store).await?;
                let objects = index::object_rows(&transaction, &store).await?;
                transaction.commit().await?;
                Ok(TargetSnapshot { targets, objects })
            };
            inner.index(taken.await, "listing label targets and objects")
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
    pub(super) async fn read_object(
        &self,
        store: &StoreId,
        digest: Digest,
    ) -> Result<Option<Vec<u8>>> {
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

    pub(super) async fn open_source(
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
    pub(super) async fn local_copy(
        &self,
        store: &StoreId,
        digest: Digest,
    ) -> Result<Option<LocalCopy>> {
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
    pub(super) async fn fetch(
        &self,
        store: &StoreId,
        digest: Digest,
        size: u64,
    ) -> Result<Option<LocalCopy>> {
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
pub(super) struct LocalCopy {
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
pub(super) struct DownloadSink {
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
pub(super) struct HashSink(pub(super) blake3::Hasher);

impl Write for HashSink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A read-only transaction that sees one moment of the index throughout.
async fn snapshot_transaction(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
}
