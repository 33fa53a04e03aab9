//! Small content lives in the root's index, larger content in files: every
//! operation must behave the same on both sides of the threshold, whatever
//! the threshold, and roots written before content went inline must keep
//! all their data.

mod common;

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use common::{object_path, temp_root_without_history};
use theater_store::{ContentRef, GcOptions, Options, StoreError, StoreRoot};

const THRESHOLD: usize = 16 << 10;

fn no_progress() -> Arc<dyn theater_store::Progress> {
    Arc::new(())
}

fn zero_grace() -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    }
}

/// Distinct content of exactly `size` bytes.
fn content_of(size: usize) -> Vec<u8> {
    let mut bytes = format!("{size}:").into_bytes();
    bytes.resize(size.max(bytes.len()), b'x');
    bytes.truncate(size);
    bytes
}

#[tokio::test]
async fn every_operation_behaves_alike_on_both_sides_of_the_threshold() {
    assert_eq!(Options::default().inline_threshold, THRESHOLD);
    let (_dir, root) = temp_root_without_history();
    let store = root.store("sizes").unwrap();
    // 1, 2 and 4 KiB keep their last bytes in the object's index row, so
    // that their content rows fill whole pages (local engine).
    let sizes = [
        0,
        1,
        1024,
        2048,
        4096,
        THRESHOLD - 1,
        THRESHOLD,
        THRESHOLD + 1,
        1 << 20,
    ];
    let mut total = 0;
    for size in sizes {
        let content = content_of(size);
        let label = format!("size:{size}");
        let written = store.write(content.clone(), Some(&label)).await.unwrap();
        assert!(written.new, "{size}");
        let content_ref = written.content_ref;
        assert_eq!(content_ref, ContentRef::for_content(&content));
        assert_eq!(store.get(&content_ref).await.unwrap(), content, "{size}");
        assert!(store.exists(&content_ref).await.unwrap());
        assert_eq!(store.content_size(&content_ref).await.unwrap(), size as u64);
        // A range over the last bytes, and the whole content as a stream.
        let from = size.saturating_sub(100);
        let end = store
            .read_range(&content_ref, from as u64, (size - from) as u64)
            .await
            .unwrap();
        assert_eq!(end, content[from..], "{size}");
        let mut streamed = Vec::new();
        let mut reader = store.reader(&content_ref).await.unwrap();
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut streamed)
            .await
            .unwrap();
        assert_eq!(streamed, content, "{size}");
        // Storing it again keeps one copy.
        let again = store.write(content.clone(), None).await.unwrap();
        assert!(!again.new, "{size}");
        // Only content over the threshold gets a file.
        let file = object_path(&root, &store, &content_ref);
        assert_eq!(file.is_file(), size > THRESHOLD, "{size}");
        total += size as u64;
    }
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.objects, stats.bytes), (sizes.len() as u64, total));
    let report = store.verify(no_progress()).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.objects_checked, sizes.len() as u64);
    assert_eq!(report.bytes_checked, total);

    // Export and import carry both kinds.
    let (summary, package) = store
        .export_package(None, Vec::new(), no_progress())
        .await
        .unwrap();
    assert_eq!(
        (summary.objects, summary.bytes),
        (sizes.len() as u64, total)
    );
    let copy = root.store("sizes-copy").unwrap();
    let imported = copy
        .import_package(Cursor::new(package), no_progress())
        .await
        .unwrap();
    assert_eq!(imported.new_objects, sizes.len() as u64);
    for size in sizes {
        let got = copy
            .get_content_by_label(&format!("size:{size}"))
            .await
            .unwrap();
        assert_eq!(got, Some(content_of(size)), "{size}");
    }
    assert_eq!(copy.stats().await.unwrap(), store.stats().await.unwrap());

    // Collection removes unlabelled content of both kinds, and the totals follow.
    for size in sizes {
        store.remove_label(&format!("size:{size}")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let gc = store
        .collect_garbage(zero_grace(), no_progress())
        .await
        .unwrap();
    assert_eq!(
        (gc.objects_removed, gc.bytes_freed),
        (sizes.len() as u64, total)
    );
    assert_eq!(store.stats().await.unwrap().objects, 0);
    for size in sizes {
        let gone = ContentRef::for_content(&content_of(size));
        assert!(!store.exists(&gone).await.unwrap());
        assert!(matches!(
            store.get(&gone).await,
            Err(StoreError::NotFound { .. })
        ));
    }
}

#[tokio::test]
async fn the_threshold_is_an_option_and_may_change_between_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root");
    let small = b"small content".to_vec();
    let medium = content_of(100_000);
    {
        // Threshold 0: every object is a file.
        let options = Options {
            inline_threshold: 0,
            ..Options::default()
        };
        let root = StoreRoot::with_options(&path, options);
        let store = root.store("s").unwrap();
        let small_ref = store.store_at_label("small", small.clone()).await.unwrap();
        assert!(object_path(&root, &store, &small_ref).is_file());
    }
    {
        // Threshold 1 MiB: 100 kB goes inline; the small file stays a file.
        let options = Options {
            inline_threshold: 1 << 20,
            ..Options::default()
        };
        let root = StoreRoot::with_options(&path, options);
        let store = root.store("s").unwrap();
        let medium_ref = store
            .store_at_label("medium", medium.clone())
            .await
            .unwrap();
        assert!(!object_path(&root, &store, &medium_ref).is_file());
        let small_ref = store.store(small.clone()).await.unwrap();
        assert!(object_path(&root, &store, &small_ref).is_file());
        assert_eq!(store.get(&small_ref).await.unwrap(), small);
    }
    let root = StoreRoot::new(&path);
    let store = root.store("s").unwrap();
    assert_eq!(
        store.get_content_by_label("small").await.unwrap(),
        Some(small)
    );
    assert_eq!(
        store.get_content_by_label("medium").await.unwrap(),
        Some(medium)
    );
    assert!(store.verify(no_progress()).await.unwrap().is_clean());
}

#[tokio::test]
async fn an_inline_threshold_over_the_maximum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        inline_threshold: Options::MAX_INLINE_THRESHOLD + 1,
        ..Options::default()
    };
    let root = StoreRoot::with_options(dir.path().join("root"), options);
    let error = root.store("s").unwrap().store("x").await.unwrap_err();
    assert!(matches!(error, StoreError::Index { .. }), "{error:?}");
    assert!(error.to_string().contains("inline threshold"), "{error}");
}

/// The index schema as the previous release (schema version 2) created
/// new roots: no inline content, every object a file.
const V2_SCHEMA: &str = "
CREATE TABLE stores (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL,
    object_count INTEGER NOT NULL DEFAULT 0, total_bytes INTEGER NOT NULL DEFAULT 0,
    label_count INTEGER NOT NULL DEFAULT 0,
    label_footprint INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE objects (store TEXT NOT NULL, hash BLOB NOT NULL, size INTEGER NOT NULL,
    stored_at INTEGER NOT NULL, PRIMARY KEY (store, hash)) WITHOUT ROWID;
CREATE TABLE labels (store TEXT NOT NULL, name TEXT NOT NULL, hash BLOB NOT NULL,
    PRIMARY KEY (store, name)) WITHOUT ROWID;
CREATE INDEX labels_by_target ON labels (store, hash);
CREATE TRIGGER object_added AFTER INSERT ON objects BEGIN
    UPDATE stores SET object_count = object_count + 1, total_bytes = total_bytes + NEW.size
    WHERE id = NEW.store;
END;
CREATE TRIGGER object_removed AFTER DELETE ON objects BEGIN
    UPDATE stores SET object_count = object_count - 1, total_bytes = total_bytes - OLD.size
    WHERE id = OLD.store;
END;
CREATE TRIGGER label_added AFTER INSERT ON labels BEGIN
    UPDATE stores SET label_count = label_count + 1,
        label_footprint = label_footprint + 2 * length(CAST(NEW.name AS BLOB)) + 200
    WHERE id = NEW.store;
END;
CREATE TRIGGER label_removed AFTER DELETE ON labels BEGIN
    UPDATE stores SET label_count = label_count - 1,
        label_footprint = label_footprint - 2 * length(CAST(OLD.name AS BLOB)) - 200
    WHERE id = OLD.store;
END;
PRAGMA user_version = 2;
";

/// Lays out a root as the previous release wrote it: the v2 index, and
/// every object, however small, in a file under a case-safe directory.
fn previous_release_root(path: &std::path::Path, objects: &[(&str, &str, &[u8])]) {
    std::fs::create_dir_all(path).unwrap();
    let db = rusqlite::Connection::open(path.join("index.sqlite")).unwrap();
    db.execute_batch(V2_SCHEMA).unwrap();
    for (id, label, content) in objects {
        common::write_legacy_object(
            &db,
            &path.join("stores").join(common::store_dir_name(id)),
            (id, label, content),
        );
    }
}

#[tokio::test]
async fn roots_of_the_previous_release_open_with_all_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2-root");
    let large = content_of(50_000);
    previous_release_root(
        &path,
        &[
            ("Mixed", "small", b"a small object in a file"),
            ("Mixed", "large", &large),
            ("plain", "config", b"{\"debug\":true}"),
        ],
    );
    let root = StoreRoot::with_options(&path, no_history());
    let mixed = root.store("Mixed").unwrap();
    assert_eq!(
        mixed.get_content_by_label("small").await.unwrap().unwrap(),
        b"a small object in a file"
    );
    assert_eq!(
        mixed.get_content_by_label("large").await.unwrap().unwrap(),
        large
    );
    let plain = root.store("plain").unwrap();
    let config = plain.get_by_label("config").await.unwrap().unwrap();
    assert_eq!(plain.get(&config).await.unwrap(), b"{\"debug\":true}");
    assert_eq!(mixed.stats().await.unwrap().objects, 2);
    assert!(mixed.verify(no_progress()).await.unwrap().is_clean());

    // Old small objects stay where they are, and new ones go inline beside them.
    assert!(object_path(&root, &plain, &config).is_file());
    let fresh = plain
        .store_at_label("fresh", "new and small")
        .await
        .unwrap();
    assert!(!object_path(&root, &plain, &fresh).is_file());
    assert_eq!(plain.stats().await.unwrap().objects, 2);
    assert!(plain.verify(no_progress()).await.unwrap().is_clean());

    // Collection handles both kinds in an upgraded root.
    plain.remove_label("config").await.unwrap();
    plain.remove_label("fresh").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let gc = plain
        .collect_garbage(zero_grace(), no_progress())
        .await
        .unwrap();
    assert_eq!(gc.objects_removed, 2);
    assert!(!object_path(&root, &plain, &config).exists());
    // A second opener finds the upgrade done.
    let again = StoreRoot::new(&path).store("Mixed").unwrap();
    assert!(again.get_content_by_label("large").await.unwrap().is_some());
}

/// Options whose change logs keep nothing past a collection.
fn no_history() -> theater_store::Options {
    theater_store::Options {
        change_retention: Duration::ZERO,
        change_retention_min: 0,
        ..theater_store::Options::default()
    }
}
