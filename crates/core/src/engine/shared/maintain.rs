//! What maintenance asks of the shared engine: scans of the stored bytes,
//! links, leftovers and the index's own consistency.

use std::path::PathBuf;
use std::time::SystemTime;

use super::SharedEngine;
use super::connection::postgres_error;
use super::index::{self};
use super::read::HashSink;
use crate::engine::layout;
use crate::engine::{LinkRow, QuarantinedBytes, ReplacedTargets, Scan};
use crate::error::{Result, StoreError};
use crate::names::{Digest, StoreId};
use crate::task::Progress;

/// How many objects a scan asks the index about at once.
const SCAN_INLINE_ROWS: usize = 4096;
/// About how many bytes of inline content a scan holds at once, whatever
/// the store's size.
const SCAN_INLINE_BYTES: u64 = 8 << 20;

impl SharedEngine {
    pub(crate) fn scan(&self, store: &StoreId, progress: &dyn Progress) -> Result<Scan> {
        let store_id = store.clone();
        let (rows, listed) = self.block(|inner| async move {
            let client = inner.client().await?;
            let rows = index::object_rows(&client, &store_id).await;
            let rows = inner.index(rows, "listing objects")?;
            let listed = inner.objects.list(&store_id).await;
            let listed = inner.object_store(listed, "listing objects")?;
            Ok::<_, StoreError>((rows, listed))
        })?;
        let indexed: std::collections::BTreeSet<Digest> =
            rows.iter().map(|row| row.digest).collect();
        let in_objects: std::collections::HashSet<Digest> =
            listed.iter().filter_map(|(digest, ..)| *digest).collect();
        // What the index holds inline, near enough for progress: the
        // indexed objects that are not in the object store.
        let inline_bytes: u64 = rows
            .iter()
            .filter(|row| !in_objects.contains(&row.digest))
            .map(|row| row.size)
            .sum();
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
        // Inline content read a bounded amount at a time (a store of a
        // million small objects is a gigabyte of it): every row is asked
        // about, in rounds whose inline sizes fill the bound.
        let mut round: Vec<Digest> = Vec::new();
        let mut round_bytes = 0;
        let mut all_rows = rows.iter().peekable();
        while let Some(row) = all_rows.next() {
            round.push(row.digest);
            if !in_objects.contains(&row.digest) {
                round_bytes += row.size;
            }
            let full = round.len() >= SCAN_INLINE_ROWS || round_bytes >= SCAN_INLINE_BYTES;
            if !full && all_rows.peek().is_some() {
                continue;
            }
            let (store_id, asked) = (store.clone(), std::mem::take(&mut round));
            round_bytes = 0;
            let inline = self.block(|inner| async move {
                let client = inner.client().await?;
                let inline = index::inline_many(&client, &store_id, &asked, u64::MAX).await;
                let inline = inner.index(inline, "reading inline objects")?;
                Ok::<_, StoreError>(asked.into_iter().zip(inline).collect::<Vec<_>>())
            })?;
            for (digest, bytes) in inline {
                if let Some(bytes) = bytes {
                    tally(&mut scan, digest, bytes.len() as u64, Digest::of(&bytes));
                }
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

    pub(crate) fn replaced_targets(
        &self,
        store: &StoreId,
        before: i64,
        keep_last: u64,
    ) -> Result<ReplacedTargets> {
        let store = store.clone();
        self.block(|inner| async move {
            let client = inner.client().await?;
            let read = index::replaced_targets(&client, &store, before, keep_last).await;
            let (log_end, digests) = inner.index(read, "listing what the change log names")?;
            Ok(ReplacedTargets { log_end, digests })
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
        self.query_blocking(
            "listing objects not scanned for links",
            move |client| async move { index::unscanned_links(&client, &store).await },
        )
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

    pub(crate) fn quarantined(&self, store: &StoreId) -> Result<Vec<QuarantinedBytes>> {
        let store = store.clone();
        self.block(|inner| async move {
            let listed = inner.objects.quarantined(&store).await;
            let listed = inner.object_store(listed, "listing quarantine")?;
            Ok(listed.into_iter().map(|(entry, _)| entry).collect())
        })
    }

    pub(crate) fn purge_quarantine(&self, store: &StoreId, cutoff: SystemTime) -> Result<u64> {
        let store = store.clone();
        self.block(|inner| async move {
            let listed = inner.objects.quarantined(&store).await;
            let listed = inner.object_store(listed, "listing quarantine")?;
            let mut purged = 0;
            for ((_, _, moved_at), key) in listed {
                if moved_at < cutoff {
                    let deleted = inner.objects.delete(&key).await;
                    inner.object_store(deleted, "purging quarantine")?;
                    purged += 1;
                }
            }
            Ok(purged)
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
        self.query_blocking("checking totals", move |client| async move {
            index::totals_problems(&client).await
        })
    }
}
