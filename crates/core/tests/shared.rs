//! The shared engine's own behaviour, beyond the suites every engine runs:
//! its read cache, and bringing an older schema up. (Built only with the
//! `shared` feature.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use theater_store::{CHANGE_OVERHEAD_BYTES, ContentRef, LABEL_OVERHEAD_BYTES, Options, StoreRoot};
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

/// Version 7's way of filing change log entries: a trigger per label row
/// that updates its store's row, and totals triggers that log nothing.
const SCHEMA_7_LOG_TRIGGERS: &str = r#"
DROP TRIGGER theater_labels_retargeted ON theater_labels;
CREATE OR REPLACE FUNCTION theater_labels_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE theater_stores s SET label_count = s.label_count + n.count,
        label_footprint = s.label_footprint + n.footprint
    FROM (SELECT store, count(*) AS count, sum(2 * octet_length(name) + 200) AS footprint
          FROM added GROUP BY store) n
    WHERE s.id = n.store;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION theater_label_logged() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    next_seq bigint;
BEGIN
    UPDATE theater_stores SET change_seq = change_seq + 1, change_count = change_count + 1,
        change_footprint = change_footprint + octet_length(NEW.name) + 128
    WHERE id = NEW.store RETURNING change_seq INTO next_seq;
    INSERT INTO theater_changes (store, seq, label, old, new, at, actor)
    VALUES (NEW.store, next_seq, NEW.name, NULL, NEW.target,
        (extract(epoch FROM clock_timestamp()) * 1000)::bigint, NULL);
    RETURN NULL;
END $$;
CREATE TRIGGER theater_label_logged AFTER INSERT ON theater_labels
    FOR EACH ROW EXECUTE FUNCTION theater_label_logged();
UPDATE theater_meta SET value = 7 WHERE key = 'schema_version';
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_schema_7_is_brought_up_and_logs_each_change_once() {
    let dir = tempfile::tempdir().unwrap();
    let services = Services::shared();
    services.configure_environment();
    let root_string = services.new_root(&dir.path().join("cache"));
    let (address, _) = root_string.split_once('?').unwrap();
    let (_, database) = address.rsplit_once('/').unwrap();
    let root = StoreRoot::at(&root_string, Options::default()).unwrap();
    let store = root.store("docs").unwrap();
    let first = store.store_at_label("a", b"one".to_vec()).await.unwrap();
    // A host of the version before files the next entry its own way.
    services.psql(database, SCHEMA_7_LOG_TRIGGERS);
    let second = store.store_at_label("b", b"two".to_vec()).await.unwrap();
    drop(store);
    drop(root);

    // Opening the root brings the database up: the row trigger is gone,
    // and the log goes on from where that host left it, each change once.
    let root = StoreRoot::at(&root_string, Options::default()).unwrap();
    let store = root.store("docs").unwrap();
    store.label("c", &first).await.unwrap();
    store.replace_at_label("a", &second).await.unwrap();
    store.remove_label("b").await.unwrap();
    let changes = store.changes(0, 100).await.unwrap().changes;
    let logged: Vec<(u64, &str, Option<&ContentRef>, Option<&ContentRef>)> = changes
        .iter()
        .map(|c| (c.seq, c.label.as_str(), c.old.as_ref(), c.new.as_ref()))
        .collect();
    assert_eq!(
        logged,
        [
            (1, "a", None, Some(&first)),
            (2, "b", None, Some(&second)),
            (3, "c", None, Some(&first)),
            (4, "a", Some(&first), Some(&second)),
            (5, "b", Some(&second), None),
        ]
    );
    // The totals agree with what was written: two labels of one byte,
    // five entries naming one.
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.labels, stats.label_footprint),
        (2, 2 * (2 + LABEL_OVERHEAD_BYTES))
    );
    assert_eq!(
        (stats.changes, stats.change_footprint),
        (5, 5 * (1 + CHANGE_OVERHEAD_BYTES))
    );
    assert_eq!(
        services.psql(
            database,
            "SELECT value FROM theater_meta WHERE key = 'schema_version'"
        ),
        "9"
    );
    // Version 9: no label write notifies inside its own transaction (the
    // writing host announces after its commit).
    assert_eq!(
        services.psql(
            database,
            "SELECT count(*) FROM pg_proc
             WHERE proname LIKE 'theater%' AND prosrc LIKE '%pg_notify%'"
        ),
        "0"
    );
}
