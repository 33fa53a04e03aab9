//! Sync between roots: content copied once and verified, labels moved only
//! where the destination did not change them, conflicts reported and never
//! overwritten, and two syncs in opposite directions losing nothing.

mod common;

use std::sync::Arc;

use tempfile::TempDir;
use theater_store::{ContentRef, ContentStore, StoreError, StoreRoot, SyncOptions, SyncReport};

/// Two empty roots: two directories, or (on the shared engine) a shared
/// root and a directory, so that every test syncs local to shared and
/// shared to local.
fn two_roots() -> (TempDir, StoreRoot, StoreRoot) {
    let (dir, a) = common::temp_root();
    let b = StoreRoot::new(dir.path().join("b"));
    (dir, a, b)
}

async fn sync(from: &StoreRoot, to: &StoreRoot, options: &SyncOptions) -> SyncReport {
    from.sync_store_to(to, "docs", options, Arc::new(()))
        .await
        .unwrap()
}

async fn value(store: &ContentStore, label: &str) -> Option<String> {
    let bytes = store.get_content_by_label(label).await.unwrap()?;
    Some(String::from_utf8(bytes).unwrap())
}

#[tokio::test]
async fn a_first_sync_copies_everything_and_a_second_copies_nothing() {
    let (_dir, a, b) = two_roots();
    let source = a.store("docs").unwrap();
    for i in 0..50 {
        source
            .store_at_label(&format!("doc:{i:02}"), format!("body {i}"))
            .await
            .unwrap();
    }
    let big = vec![9u8; 3 << 20];
    source.store_at_label("big", big.clone()).await.unwrap();
    let unlabelled = source.store("kept without a label").await.unwrap();

    let report = sync(&a, &b, &SyncOptions::default()).await;
    assert_eq!(report.objects_copied, 52);
    assert_eq!(report.labels_moved, 51);
    assert!(report.converged());
    let target = b.store("docs").unwrap();
    assert_eq!(value(&target, "doc:07").await.as_deref(), Some("body 7"));
    assert_eq!(target.get_content_by_label("big").await.unwrap(), Some(big));
    assert!(target.exists(&unlabelled).await.unwrap());

    let again = sync(&a, &b, &SyncOptions::default()).await;
    assert_eq!((again.objects_copied, again.objects_present), (0, 52));
    assert_eq!((again.labels_moved, again.labels_in_sync), (0, 51));
}

#[tokio::test]
async fn changes_move_only_where_the_destination_did_not_change_the_label() {
    let (_dir, a, b) = two_roots();
    let (source, target) = (a.store("docs").unwrap(), b.store("docs").unwrap());
    for label in ["same", "source-only", "dest-only", "both", "removed"] {
        source.store_at_label(label, "v1").await.unwrap();
    }
    sync(&a, &b, &SyncOptions::default()).await;

    source
        .store_at_label("source-only", "v2 from a")
        .await
        .unwrap();
    target
        .store_at_label("dest-only", "v2 from b")
        .await
        .unwrap();
    source.store_at_label("both", "v2 from a").await.unwrap();
    target.store_at_label("both", "v2 from b").await.unwrap();
    source.remove_label("removed").await.unwrap();
    source.store_at_label("new", "v1").await.unwrap();

    let report = sync(&a, &b, &SyncOptions::default()).await;
    assert_eq!(
        value(&target, "source-only").await.as_deref(),
        Some("v2 from a")
    );
    assert_eq!(
        value(&target, "dest-only").await.as_deref(),
        Some("v2 from b")
    );
    assert_eq!(value(&target, "both").await.as_deref(), Some("v2 from b"));
    assert_eq!(value(&target, "removed").await, None);
    assert_eq!(value(&target, "new").await.as_deref(), Some("v1"));
    assert_eq!(report.labels_moved, 3, "{report:?}");
    assert_eq!(report.labels_kept, 1);
    assert_eq!(report.labels_in_sync, 1);
    assert!(!report.converged());
    let [conflict] = &report.conflicts[..] else {
        panic!("one conflict expected: {report:?}");
    };
    assert_eq!(conflict.label, "both");
    assert_eq!(conflict.source, Some(ContentRef::for_content(b"v2 from a")));
    assert_eq!(
        conflict.destination,
        Some(ContentRef::for_content(b"v2 from b"))
    );
    assert_eq!(
        conflict.last_agreed,
        Some(Some(ContentRef::for_content(b"v1")))
    );

    // The other way, the destination's change comes back; the conflict stays.
    let back = sync(&b, &a, &SyncOptions::default()).await;
    assert_eq!(
        value(&source, "dest-only").await.as_deref(),
        Some("v2 from b")
    );
    assert_eq!(value(&source, "both").await.as_deref(), Some("v2 from a"));
    assert_eq!(back.conflicts.len(), 1);
}

#[tokio::test]
async fn a_first_sync_never_overwrites_a_label_the_destination_already_has() {
    let (_dir, a, b) = two_roots();
    a.store("docs")
        .unwrap()
        .store_at_label("x", "from a")
        .await
        .unwrap();
    let target = b.store("docs").unwrap();
    target.store_at_label("x", "from b").await.unwrap();
    let report = sync(&a, &b, &SyncOptions::default()).await;
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(report.conflicts[0].last_agreed, None);
    assert_eq!(value(&target, "x").await.as_deref(), Some("from b"));
}

#[tokio::test]
async fn a_prefix_limits_labels_and_content_and_a_dry_run_changes_nothing() {
    let (_dir, a, b) = two_roots();
    let source = a.store("docs").unwrap();
    source.store_at_label("cfg:a", "A").await.unwrap();
    source.store_at_label("cfg:b", "B").await.unwrap();
    source.store_at_label("log:1", "L").await.unwrap();
    let target = b.store("docs").unwrap();

    let dry = SyncOptions {
        prefix: "cfg:".into(),
        dry_run: true,
        ..SyncOptions::default()
    };
    let report = sync(&a, &b, &dry).await;
    assert_eq!((report.objects_copied, report.labels_moved), (2, 2));
    assert!(report.dry_run);
    assert_eq!(target.list_labels().await.unwrap(), Vec::<String>::new());
    assert!(target.list_all_content().await.unwrap().is_empty());

    let options = SyncOptions {
        dry_run: false,
        ..dry
    };
    let report = sync(&a, &b, &options).await;
    assert_eq!((report.objects_copied, report.labels_moved), (2, 2));
    assert_eq!(target.list_labels().await.unwrap(), ["cfg:a", "cfg:b"]);
    assert!(!target.exists(&ContentRef::for_content(b"L")).await.unwrap());
}

/// Two syncs at once in opposite directions, with changes on both sides:
/// every label ends either carried over or reported, and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_in_opposite_directions_lose_no_label() {
    let (_dir, a, b) = two_roots();
    let (store_a, store_b) = (a.store("docs").unwrap(), b.store("docs").unwrap());
    for i in 0..100 {
        store_a
            .store_at_label(&format!("shared:{i:03}"), "v1")
            .await
            .unwrap();
    }
    sync(&a, &b, &SyncOptions::default()).await;
    for i in 0..100 {
        let label = format!("shared:{i:03}");
        match i % 4 {
            0 => drop(store_a.store_at_label(&label, "a").await.unwrap()),
            1 => drop(store_b.store_at_label(&label, "b").await.unwrap()),
            2 => {
                store_a.store_at_label(&label, "a").await.unwrap();
                store_b.store_at_label(&label, "b").await.unwrap();
            }
            _ => {}
        }
        store_a
            .store_at_label(&format!("a-only:{i:03}"), format!("a{i}"))
            .await
            .unwrap();
        store_b
            .store_at_label(&format!("b-only:{i:03}"), format!("b{i}"))
            .await
            .unwrap();
    }
    let options = SyncOptions::default();
    let (forth, back) = tokio::join!(sync(&a, &b, &options), sync(&b, &a, &options));
    // And once more each way, sequentially, to finish what the race left.
    let (forth_again, back_again) = (sync(&a, &b, &options).await, sync(&b, &a, &options).await);

    for i in 0..100 {
        let label = format!("shared:{i:03}");
        let (in_a, in_b) = (value(&store_a, &label).await, value(&store_b, &label).await);
        match i % 4 {
            0 => assert_eq!((in_a.as_deref(), in_b.as_deref()), (Some("a"), Some("a"))),
            1 => assert_eq!((in_a.as_deref(), in_b.as_deref()), (Some("b"), Some("b"))),
            2 => {
                // Both kept their own value, and every sync reported it.
                assert_eq!((in_a.as_deref(), in_b.as_deref()), (Some("a"), Some("b")));
                for report in [&forth, &back, &forth_again, &back_again] {
                    assert!(report.conflicts.iter().any(|c| c.label == label), "{label}");
                }
            }
            _ => assert_eq!((in_a.as_deref(), in_b.as_deref()), (Some("v1"), Some("v1"))),
        }
        let a_only = format!("a-only:{i:03}");
        assert_eq!(value(&store_b, &a_only).await, Some(format!("a{i}")));
        let b_only = format!("b-only:{i:03}");
        assert_eq!(value(&store_a, &b_only).await, Some(format!("b{i}")));
    }
    assert_eq!(forth_again.conflicts.len(), 25);
    assert_eq!(back_again.conflicts.len(), 25);
}

/// Damaged content at the source, small or large, stops the sync with an
/// error naming it, and it is neither copied nor labelled.
#[tokio::test]
async fn damaged_source_content_is_never_copied() {
    if common::memory_engine() {
        return; // Nothing to do in memory: bytes are damaged by hand below.
    }
    for (label, content) in [
        ("small", b"small bytes".to_vec()),
        ("large", vec![3u8; 2 << 20]),
    ] {
        let (_dir, a, b) = two_roots();
        let source = a.store("docs").unwrap();
        let content_ref = source.store_at_label(label, content).await.unwrap();
        common::damage(&a, &source, &content_ref, b"tampered");
        let result = a
            .sync_store_to(&b, "docs", &SyncOptions::default(), Arc::new(()))
            .await;
        // Small content is re-hashed whole; a large object cut short fails
        // its read, naming the object.
        match result {
            Err(StoreError::Corrupted {
                store, reference, ..
            }) => assert_eq!(
                (store.as_str(), reference.as_str()),
                ("docs", content_ref.hash())
            ),
            Err(error @ StoreError::Io { .. }) if label == "large" => {
                assert!(error.to_string().contains(content_ref.hash()), "{error}");
            }
            other => panic!("expected Corrupted for {label}, got {other:?}"),
        }
        let target = b.store("docs").unwrap();
        assert_eq!(target.get_by_label(label).await.unwrap(), None);
        assert!(!target.exists(&content_ref).await.unwrap());
    }
}

async fn labels_of(store: &ContentStore) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for entry in store.list_labels_page("", None, 10_000).await.unwrap() {
        all.push((entry.label, entry.content_ref.hash().to_owned()));
    }
    all
}

#[tokio::test]
async fn a_wiped_destination_gets_everything_back_and_deletes_nothing_at_the_source() {
    let (dir, a, b) = two_roots();
    let source = a.store("docs").unwrap();
    for i in 0..20 {
        source
            .store_at_label(&format!("doc:{i:02}"), format!("body {i}"))
            .await
            .unwrap();
    }
    assert!(
        sync(&a, &b, &SyncOptions::default())
            .await
            .first_sync
            .is_some()
    );
    let before = labels_of(&source).await;
    drop(b);

    // B is lost and set up anew (beside the old one, whose files this
    // process may still have open): not the peer the record was made with.
    let b = StoreRoot::new(dir.path().join("b-anew"));
    let report = sync(&a, &b, &SyncOptions::default()).await;
    assert!(report.first_sync.is_some(), "{report:?}");
    assert_eq!(report.labels_moved, 20);
    let back = sync(&b, &a, &SyncOptions::default()).await;
    assert!(back.converged(), "{back:?}");
    assert_eq!(labels_of(&source).await, before);
    assert_eq!(labels_of(&b.store("docs").unwrap()).await, before);
}

#[tokio::test]
async fn a_peer_restored_from_an_older_package_causes_conflicts_not_rollbacks() {
    let (dir, x, y) = two_roots();
    let source = x.store("docs").unwrap();
    source.store_at_label("cfg", "v1").await.unwrap();
    sync(&x, &y, &SyncOptions::default()).await;
    let (_, package) = y
        .store("docs")
        .unwrap()
        .export_package(None, Vec::new(), Arc::new(()))
        .await
        .unwrap();
    source.store_at_label("cfg", "v2").await.unwrap();
    sync(&x, &y, &SyncOptions::default()).await;

    // Y is lost and restored from the older package, into a new root.
    drop(y);
    let y = StoreRoot::new(dir.path().join("b-restored"));
    y.store("docs")
        .unwrap()
        .import_package(std::io::Cursor::new(package), Arc::new(()))
        .await
        .unwrap();
    let there = sync(&x, &y, &SyncOptions::default()).await;
    let back = sync(&y, &x, &SyncOptions::default()).await;
    assert_eq!(there.conflicts.len(), 1, "{there:?}");
    assert_eq!(back.conflicts.len(), 1, "{back:?}");
    assert_eq!(value(&source, "cfg").await.as_deref(), Some("v2"));
}

#[tokio::test]
async fn a_copied_root_does_not_take_deletions_from_a_record_it_does_not_share() {
    if common::shared_engine() {
        return; // Copies a directory root.
    }
    let (dir, a, b) = two_roots();
    let source = a.store("docs").unwrap();
    source.store_at_label("x", "kept").await.unwrap();
    source
        .store_at_label("y", "removed at the source")
        .await
        .unwrap();
    sync(&a, &b, &SyncOptions::default()).await;
    // A copy of B, made while nothing writes to it.
    let copy_path = dir.path().join("c");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(dir.path().join("b"))
        .arg(&copy_path)
        .status()
        .unwrap();
    assert!(copied.success());
    source.remove_label("y").await.unwrap();
    let report = sync(&a, &b, &SyncOptions::default()).await;
    assert_eq!(report.labels_moved, 1);
    assert_eq!(value(&b.store("docs").unwrap(), "y").await, None);

    // The copy still holds the record B held before that sync.
    let c = StoreRoot::new(&copy_path);
    let report = sync(&a, &c, &SyncOptions::default()).await;
    assert!(report.first_sync.is_some(), "{report:?}");
    assert_eq!(
        value(&c.store("docs").unwrap(), "y").await.as_deref(),
        Some("removed at the source")
    );
}

#[tokio::test]
async fn a_sync_by_prefix_carries_what_the_labels_reach_through_content() {
    let (_dir, a, b) = two_roots();
    let source = a.store("docs").unwrap();
    let tail = source.store("the last node").await.unwrap();
    let middle = source
        .store(format!("{{\"next\":\"{}\"}}", tail.hash()))
        .await
        .unwrap();
    let head = source
        .store(format!("{{\"next\":\"{}\"}}", middle.hash()))
        .await
        .unwrap();
    source.label("list:head", &head).await.unwrap();
    source.store_at_label("other", "not synced").await.unwrap();
    let options = SyncOptions {
        prefix: "list:".into(),
        ..SyncOptions::default()
    };
    let report = sync(&a, &b, &options).await;
    assert_eq!(report.objects_copied, 3, "{report:?}");
    let target = b.store("docs").unwrap();
    for node in [&head, &middle, &tail] {
        target.get(node).await.unwrap();
    }
}
