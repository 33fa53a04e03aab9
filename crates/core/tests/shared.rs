//! The shared engine's own behaviour, beyond the suites every engine runs:
//! its read cache. (Built only with the `shared` feature.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use theater_store::{ContentRef, Options, StoreRoot};
use theater_store_testing::Services;

/// A fresh shared root, and another root string for it with a cache of
/// its own (as a second host would have), both bounded to `cache_bytes`.
fn shared_roots(dir: &Path, cache_bytes: u64) -> (StoreRoot, StoreRoot) {
    let services = Services::shared();
    services.configure_environment();
    let first = services.new_root(&dir.join("cache-a"));
    let (base, _) = first.split_once("&cache=").unwrap();
    let second = format!("{base}&cache={}", dir.join("cache-b").display());
    let open = |root: String| {
        // No history kept: gc takes what no label reaches now.
        let options = Options {
            change_retention: std::time::Duration::ZERO,
            change_retention_min: 0,
            ..Options::default()
        };
        StoreRoot::at(&format!("{root}&cache_bytes={cache_bytes}"), options).unwrap()
    };
    (open(first), open(second))
}

fn cached_copy(cache: &Path, store: &str, content_ref: &ContentRef) -> PathBuf {
    let hash = content_ref.hash();
    cache.join(format!(
        "stores/{store}/objects/{}/{}",
        &hash[..2],
        &hash[2..]
    ))
}

fn bytes_below(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                bytes_below(&path)
            } else {
                entry.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

fn object(i: u8) -> Vec<u8> {
    (0..64 * 1024).map(|n| (n as u8).wrapping_mul(i)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_cache_keeps_verified_copies_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let bound = 300 * 1024;
    let (writer, reader) = shared_roots(dir.path(), bound);
    let written = writer.store("cached").unwrap();
    let mut refs = Vec::new();
    for i in 1..=10u8 {
        refs.push(
            written
                .store_at_label(&format!("o{i}"), object(i))
                .await
                .unwrap(),
        );
    }
    let objects = |cache: &str| dir.path().join(cache).join("stores/cached/objects");
    // Writing fills the writer's cache, never past its bound.
    assert!(bytes_below(&objects("cache-a")) <= bound);

    // The other host fetches, verifies and caches, within its bound too.
    let read = reader.store("cached").unwrap();
    for (i, content_ref) in (1..=10u8).zip(&refs) {
        assert_eq!(read.get(content_ref).await.unwrap(), object(i));
    }
    let held = bytes_below(&objects("cache-b"));
    assert!(held > 0 && held <= bound, "{held} bytes cached");

    // A cached copy damaged on this host's disk is never returned: the
    // object is fetched again (whole reads and ranges alike).
    let last = refs.last().unwrap();
    let copy = cached_copy(&dir.path().join("cache-b"), "cached", last);
    assert!(copy.exists(), "the last object read is cached");
    std::fs::write(&copy, vec![0u8; 64 * 1024]).unwrap();
    assert_eq!(read.get(last).await.unwrap(), object(10));
    std::fs::write(&copy, vec![0u8; 64 * 1024]).unwrap();
    let range = read.read_range(last, 1000, 100).await.unwrap();
    assert_eq!(range, object(10)[1000..1100]);

    // verify checks this host's copies too, and drops damaged ones.
    std::fs::write(&copy, vec![1u8; 64 * 1024]).unwrap();
    let report = read.verify(Arc::new(())).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(!copy.exists() || std::fs::read(&copy).unwrap() == object(10));

    // gc here forgets the cached copy of what it collects.
    written.remove_label("o1").await.unwrap();
    let options = theater_store::GcOptions {
        grace: std::time::Duration::ZERO,
        dry_run: false,
    };
    let collected = written
        .collect_garbage(options, Arc::new(()))
        .await
        .unwrap();
    assert_eq!(collected.objects_removed, 1);
    assert!(!cached_copy(&dir.path().join("cache-a"), "cached", &refs[0]).exists());
    assert!(!written.exists(&refs[0]).await.unwrap());
}

/// Content over the single-PUT limit (64 MiB) goes up in parts, and reads
/// back whole and by range on a host that never saw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_over_64_mib_is_uploaded_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader) = shared_roots(dir.path(), 1 << 30);
    let content: Vec<u8> = (0..(65u32 << 20)).map(|n| (n % 251) as u8).collect();
    let stored = writer
        .store("large")
        .unwrap()
        .store_at_label("big", content.clone())
        .await
        .unwrap();
    let read = reader.store("large").unwrap();
    let range = read.read_range(&stored, 64 << 20, 4096).await.unwrap();
    assert_eq!(range, content[64 << 20..(64 << 20) + 4096]);
    assert!(read.get(&stored).await.unwrap() == content);
    // Stored again: already there, so nothing is uploaded twice.
    let again = writer.store("large").unwrap().store(content).await.unwrap();
    assert_eq!(again, stored);
}
