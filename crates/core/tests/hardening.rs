//! Attacks on the store's promises found by hostile testing: each test here
//! failed before its fix.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{damage, store_dir_name, temp_root};
use theater_store::{
    ContentRef, ContentStore, GcOptions, OBJECT_OVERHEAD_BYTES, Progress, StoreRoot,
    label_footprint,
};

/// Makes every object of the root look stored long ago, as if the root
/// had been in use for a while.
fn age_all_objects(root: &StoreRoot) {
    let db = rusqlite::Connection::open(root.path().unwrap().join("index.sqlite")).unwrap();
    db.execute("UPDATE objects SET stored_at = 0", []).unwrap();
}

fn no_progress() -> Arc<dyn Progress> {
    Arc::new(())
}

fn zero_grace() -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    }
}

/// Runs `action` once, on the `nth` progress report (counting from 0), on
/// the blocking thread that reports progress, as a concurrent caller would.
struct OnProgress<F: Fn() + Send + Sync> {
    nth: usize,
    calls: AtomicUsize,
    action: F,
}

impl<F: Fn() + Send + Sync> Progress for OnProgress<F> {
    fn advance(&self, _done: u64) {
        if self.calls.fetch_add(1, Ordering::SeqCst) == self.nth {
            (self.action)();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_never_quarantines_content_stored_again_during_its_scan() {
    let (_dir, root) = temp_root();
    let store = root.store("healing").unwrap();
    let mut stored = Vec::new();
    for i in 0..20 {
        // Half of exactly 1 KiB, whose last bytes the local index keeps
        // in the object's row: both parts are rewritten.
        let mut content = format!("object {i} ").repeat(120);
        if i % 2 == 0 {
            content.truncate(1024);
        }
        let content_ref = store
            .store_at_label(&format!("l{i}"), content.clone())
            .await
            .unwrap();
        stored.push((content_ref, content));
    }
    for (content_ref, _) in &stored {
        damage(&root, &store, content_ref, b"damaged");
    }
    // Old enough that storing the bytes again rewrites the file.
    age_all_objects(&root);

    // The first file scanned is found damaged; then, before the scan ends,
    // an actor stores every object again, which heals them.
    let runtime = tokio::runtime::Handle::current();
    let healer = {
        let store = store.clone();
        let contents: Vec<String> = stored.iter().map(|(_, c)| c.clone()).collect();
        move || {
            for content in &contents {
                runtime.block_on(store.store(content.clone())).unwrap();
            }
        }
    };
    let progress = Arc::new(OnProgress {
        nth: 1,
        calls: AtomicUsize::new(0),
        action: healer,
    });
    let report = store.verify(progress).await.unwrap();
    assert!(report.quarantined.is_empty(), "{report:?}");
    for (i, (content_ref, content)) in stored.iter().enumerate() {
        assert_eq!(store.get(content_ref).await.unwrap(), content.as_bytes());
        assert_eq!(
            store.get_by_label(&format!("l{i}")).await.unwrap().as_ref(),
            Some(content_ref)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_at_label_is_one_transaction_under_a_zero_grace_collector() {
    let (_dir, root) = temp_root();
    let store = root.store("racing").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut runs = 0;
            while !stop.load(Ordering::SeqCst) {
                store
                    .collect_garbage(zero_grace(), no_progress())
                    .await
                    .unwrap();
                runs += 1;
            }
            runs
        })
    };
    for i in 0..200 {
        // Half the contents repeat, so the path that finds content already
        // stored (and must still keep it while labelling) is raced too.
        let content = format!("value {}", i % 100);
        let label = format!("label {}", i % 20);
        let content_ref = store
            .store_at_label(&label, content.clone())
            .await
            .unwrap_or_else(|error| panic!("store_at_label {i}: {error}"));
        assert_eq!(store.get(&content_ref).await.unwrap(), content.as_bytes());
    }
    stop.store(true, Ordering::SeqCst);
    assert!(collector.await.unwrap() > 0);
    for entry in store.list_labels_page("", None, 100).await.unwrap() {
        store.get(&entry.content_ref).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_skips_unlabelled_content_a_concurrent_collection_removes() {
    let (_dir, root) = temp_root();
    let source = root.store("exported").unwrap();
    let kept = source.store_at_label("keep", "labelled").await.unwrap();
    // More than an export reads at once (256 small objects), so that the
    // collection runs before it reads the later ones.
    for i in 0..600 {
        source.store(format!("unlabelled {i}")).await.unwrap();
    }
    let runtime = tokio::runtime::Handle::current();
    let collect = {
        let source = source.clone();
        move || {
            let report = runtime
                .block_on(source.collect_garbage(zero_grace(), no_progress()))
                .unwrap();
            assert!(report.objects_removed > 0);
        }
    };
    let progress = Arc::new(OnProgress {
        nth: 0,
        calls: AtomicUsize::new(0),
        action: collect,
    });
    let (summary, package) = source
        .export_package(None, Vec::new(), progress)
        .await
        .unwrap();
    assert!(!summary.vanished.is_empty(), "{summary:?}");
    assert!(!summary.vanished.contains(&kept));
    assert_eq!(summary.labels, 1);

    let target = root.store("imported").unwrap();
    target
        .import_package(std::io::Cursor::new(package), no_progress())
        .await
        .unwrap();
    assert_eq!(target.get_by_label("keep").await.unwrap(), Some(kept));
}

#[tokio::test]
async fn store_ids_differing_only_in_case_never_share_a_directory() {
    let (_dir, root) = temp_root();
    let ids = ["casey", "CASEY", "Casey"];
    // Content large enough to get files, so that each store has a directory.
    let owned = |id: &str| id.repeat(5_000);
    for id in ids {
        let store = root.store(id).unwrap();
        store.store_at_label("owner", owned(id)).await.unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(root.path().unwrap().join("stores"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut folded: Vec<String> = names.iter().map(|n| n.to_lowercase()).collect();
    folded.dedup();
    assert_eq!(folded.len(), ids.len(), "directories {names:?}");
    // Collecting one store never touches another's content.
    for id in ids {
        let report = root
            .store(id)
            .unwrap()
            .collect_garbage(zero_grace(), no_progress())
            .await
            .unwrap();
        assert_eq!(report.unindexed_files_removed, 0);
    }
    for id in ids {
        let store = root.store(id).unwrap();
        let owner = store.get_content_by_label("owner").await.unwrap().unwrap();
        assert_eq!(owner, owned(id).as_bytes());
    }
}

/// The first release's index schema, as it created new roots.
const V1_SCHEMA: &str = "
CREATE TABLE stores (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL,
    object_count INTEGER NOT NULL DEFAULT 0, total_bytes INTEGER NOT NULL DEFAULT 0,
    label_count INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
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
    UPDATE stores SET label_count = label_count + 1 WHERE id = NEW.store;
END;
CREATE TRIGGER label_removed AFTER DELETE ON labels BEGIN
    UPDATE stores SET label_count = label_count - 1 WHERE id = OLD.store;
END;
PRAGMA user_version = 1;
";

/// Lays out a root exactly as the first release wrote it: the v1 index and
/// store directories named by the id verbatim.
fn first_release_root(path: &std::path::Path, stores: &[(&str, &str, &[u8])]) {
    std::fs::create_dir_all(path).unwrap();
    let db = rusqlite::Connection::open(path.join("index.sqlite")).unwrap();
    db.execute_batch(V1_SCHEMA).unwrap();
    for (id, label, content) in stores {
        common::write_legacy_object(&db, &path.join("stores").join(id), (id, label, content));
    }
}

#[tokio::test]
async fn roots_of_the_first_release_open_with_all_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old-root");
    first_release_root(
        &path,
        &[
            ("MixedCase", "config", b"mixed case store"),
            ("lower", "state", b"lower case store"),
        ],
    );
    let root = StoreRoot::new(&path);
    for (id, label, content) in [
        ("MixedCase", "config", &b"mixed case store"[..]),
        ("lower", "state", &b"lower case store"[..]),
    ] {
        let store = root.store(id).unwrap();
        assert_eq!(
            store.get_content_by_label(label).await.unwrap().unwrap(),
            content
        );
        let stats = store.stats().await.unwrap();
        assert_eq!(
            (stats.objects, stats.labels, stats.label_footprint),
            (1, 1, label_footprint(label.len()))
        );
        assert!(store.verify(no_progress()).await.unwrap().is_clean());
    }
    assert!(
        path.join("stores")
            .join(store_dir_name("MixedCase"))
            .is_dir()
    );
    assert!(!path.join("stores/MixedCase").exists());
    // A second process opening the upgraded root finds nothing to do.
    let again = StoreRoot::new(&path);
    let store = again.store("MixedCase").unwrap();
    assert!(
        store
            .get_content_by_label("config")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn footprints_count_object_overhead_and_label_space() {
    let (_dir, root) = temp_root();
    let store = root.store("footprint").unwrap();
    let content_ref = store.store("8 bytes!").await.unwrap();
    let long = "l".repeat(1020);
    store.label("a label", &content_ref).await.unwrap();
    store.label(&long, &content_ref).await.unwrap();
    store.label("a label", &content_ref).await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(
        stats.label_footprint,
        label_footprint(7) + label_footprint(1020)
    );
    // Two changes logged (setting a label to what it names is none).
    assert_eq!(
        stats.change_footprint,
        7 + 1020 + 2 * theater_store::CHANGE_OVERHEAD_BYTES
    );
    assert_eq!(
        stats.footprint(),
        8 + OBJECT_OVERHEAD_BYTES + stats.label_footprint + stats.change_footprint
    );
    // A long label spills out of its b-tree cells and costs pages.
    assert!(label_footprint(1020) > 8 << 10 && label_footprint(7) < 256);
    store.remove_label(&long).await.unwrap();
    assert_eq!(
        store.stats().await.unwrap().label_footprint,
        label_footprint(7)
    );
}

async fn store_ids(root: &StoreRoot) -> Vec<String> {
    let stores = root.stores().await.unwrap();
    stores.into_iter().map(|summary| summary.id).collect()
}

#[tokio::test]
async fn stores_can_be_removed_and_gc_drops_empty_ones() {
    let (_dir, root) = temp_root();
    let doomed = root.store("doomed").unwrap();
    doomed.store_at_label("a", "alpha").await.unwrap();
    doomed.store("unlabelled").await.unwrap();
    let kept = root.store("kept").unwrap();
    kept.store_at_label("a", "alpha").await.unwrap();

    let dry = root.remove_store("doomed", true).await.unwrap();
    assert_eq!((dry.labels_removed, dry.objects_removed), (1, 2));
    assert_eq!(doomed.stats().await.unwrap().objects, 2);

    let report = root.remove_store("doomed", false).await.unwrap();
    assert_eq!((report.labels_removed, report.objects_removed), (1, 2));
    assert_eq!(store_ids(&root).await, ["kept"]);
    assert!(!root.path().unwrap().join("stores/doomed").exists());
    assert_eq!(
        kept.get_content_by_label("a").await.unwrap().unwrap(),
        b"alpha"
    );

    // An abandoned empty store goes with the next collection past its
    // grace period; one with labels stays.
    let abandoned: ContentStore = root.create_store().await.unwrap();
    let within_grace = GcOptions {
        grace: Duration::from_secs(3600),
        dry_run: false,
    };
    let report = abandoned
        .collect_garbage(within_grace, no_progress())
        .await
        .unwrap();
    assert!(!report.store_removed);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = abandoned
        .collect_garbage(zero_grace(), no_progress())
        .await
        .unwrap();
    assert!(report.store_removed);
    let report = kept
        .collect_garbage(zero_grace(), no_progress())
        .await
        .unwrap();
    assert!(!report.store_removed);
    assert_eq!(store_ids(&root).await, ["kept"]);
    let _: ContentRef = kept.get_by_label("a").await.unwrap().unwrap();
}
