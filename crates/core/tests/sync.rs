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

    // The next sync reads the change logs: nothing changed, nothing read.
    let again = sync(&a, &b, &SyncOptions::default()).await;
    assert!(again.incremental && again.first_sync.is_none());
    assert_eq!((again.objects_copied, again.labels_moved), (0, 0));
    assert_eq!((again.changes_read, again.labels_in_sync), (0, 0));
    // A whole comparison finds everything there.
    let full = SyncOptions {
        full: true,
        ..SyncOptions::default()
    };
    let whole = sync(&a, &b, &full).await;
    assert!(!whole.incremental);
    assert_eq!((whole.objects_copied, whole.objects_present), (0, 52));
    assert_eq!((whole.labels_moved, whole.labels_in_sync), (0, 51));
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
    assert!(report.incremental);
    assert_eq!(report.labels_moved, 3, "{report:?}");
    assert_eq!(report.labels_kept, 1);
    // Only what changed is looked at: "same" is not counted.
    assert_eq!(report.labels_in_sync, 0);
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
    if common::kept_by_this_process() {
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

/// An index may keep objects of up to 1 MiB inline; a sync reads them a
/// bounded amount at a time (a few batches here), not a batch of 256
/// objects at once, and still copies every one of them.
#[tokio::test]
async fn inline_content_past_a_reads_budget_is_copied_whole_in_rounds() {
    let (dir, a) = common::temp_root_with(theater_store::Options {
        inline_threshold: theater_store::Options::MAX_INLINE_THRESHOLD,
        ..theater_store::Options::default()
    });
    let b = StoreRoot::new(dir.path().join("b"));
    let source = a.store("docs").unwrap();
    let mut expected = Vec::new();
    for i in 0..30u64 {
        // Large inline objects with small ones and a missing-inline
        // (file) one between them, so that rounds end anywhere.
        let size = match i % 3 {
            0 => (1 << 20) - 1,
            1 => 100 + i as usize,
            _ if i == 5 => (1 << 20) + 1,
            _ => 700 << 10,
        };
        let content = common::unrepeated(size, i);
        let label = format!("doc:{i:02}");
        source
            .store_at_label(&label, content.clone())
            .await
            .unwrap();
        expected.push((label, content));
    }
    let report = sync(&a, &b, &SyncOptions::default()).await;
    assert_eq!(report.objects_copied, 30, "{report:?}");
    assert!(report.converged(), "{report:?}");
    let target = b.store("docs").unwrap();
    for (label, content) in expected {
        let copied = target.get_content_by_label(&label).await.unwrap();
        assert!(copied.as_ref() == Some(&content), "{label} copied whole");
    }
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

#[tokio::test]
async fn a_sync_after_a_few_changes_reads_only_those_from_the_change_logs() {
    let (_dir, a, b) = two_roots();
    let (source, target) = (a.store("docs").unwrap(), b.store("docs").unwrap());
    for i in 0..300 {
        source
            .store_at_label(&format!("doc:{i:03}"), format!("v1 {i}"))
            .await
            .unwrap();
    }
    let first = sync(&a, &b, &SyncOptions::default()).await;
    assert!(!first.incremental && first.first_sync.is_some());

    for i in 0..10 {
        source
            .store_at_label(&format!("doc:{i:03}"), format!("v2 {i}"))
            .await
            .unwrap();
    }
    source.remove_label("doc:299").await.unwrap();
    target.store_at_label("doc:100", "from b").await.unwrap();
    source.store_at_label("doc:200", "a says").await.unwrap();
    target.store_at_label("doc:200", "b says").await.unwrap();

    let report = sync(&a, &b, &SyncOptions::default()).await;
    assert!(
        report.incremental && report.first_sync.is_none(),
        "{report:?}"
    );
    assert_eq!(report.changes_read, 14);
    assert_eq!(report.labels_moved, 11);
    assert_eq!(report.labels_kept, 1);
    assert_eq!(report.objects_copied, 10);
    assert_eq!(value(&target, "doc:005").await.as_deref(), Some("v2 5"));
    assert_eq!(value(&target, "doc:299").await, None);
    assert_eq!(value(&target, "doc:100").await.as_deref(), Some("from b"));
    let [conflict] = &report.conflicts[..] else {
        panic!("one conflict expected: {report:?}");
    };
    assert_eq!(conflict.label, "doc:200");
    assert_eq!(
        conflict.last_agreed,
        Some(Some(ContentRef::for_content(b"v1 200")))
    );

    // The other way: the destination's change comes back, the conflict
    // is reported again (and on every sync until the sides agree).
    let back = sync(&b, &a, &SyncOptions::default()).await;
    assert!(back.incremental);
    assert_eq!(value(&source, "doc:100").await.as_deref(), Some("from b"));
    assert_eq!(back.labels_moved, 1, "{back:?}");
    assert_eq!(back.conflicts.len(), 1);
    let again = sync(&a, &b, &SyncOptions::default()).await;
    assert_eq!((again.labels_moved, again.conflicts.len()), (0, 1));
    // Someone settles it on one side; the next sync carries it over.
    target.store_at_label("doc:200", "a says").await.unwrap();
    let settled = sync(&a, &b, &SyncOptions::default()).await;
    assert!(settled.converged(), "{settled:?}");
    let quiet = sync(&b, &a, &SyncOptions::default()).await;
    assert!(quiet.converged() && quiet.labels_moved == 0, "{quiet:?}");
    assert_eq!(labels_of(&source).await, labels_of(&target).await);
}

#[tokio::test]
async fn an_incremental_sync_copies_what_moved_labels_reach_through_refs() {
    let (_dir, a, b) = two_roots();
    let (source, target) = (a.store("docs").unwrap(), b.store("docs").unwrap());
    source.store_at_label("seed", "first").await.unwrap();
    sync(&a, &b, &SyncOptions::default()).await;

    let leaf = source
        .store("a leaf, named only by the tree")
        .await
        .unwrap();
    let tree = format!("{{\"children\":[\"{leaf}\"]}}");
    source.store_at_label("tree", tree.clone()).await.unwrap();
    let unlabelled = source.store("stored, never labelled").await.unwrap();
    let report = sync(&a, &b, &SyncOptions::default()).await;
    assert!(report.incremental);
    assert_eq!(report.objects_copied, 2, "{report:?}");
    assert!(target.exists(&leaf).await.unwrap());
    assert_eq!(value(&target, "tree").await, Some(tree));
    // Content no label reaches comes with a whole comparison only.
    assert!(!target.exists(&unlabelled).await.unwrap());
    let full = SyncOptions {
        full: true,
        ..SyncOptions::default()
    };
    let whole = sync(&a, &b, &full).await;
    assert_eq!(whole.objects_copied, 1);
    assert!(target.exists(&unlabelled).await.unwrap());
}

#[tokio::test]
async fn a_log_trimmed_past_the_last_sync_makes_it_compare_whole() {
    let options = theater_store::Options {
        change_retention: std::time::Duration::ZERO,
        change_retention_min: 0,
        ..theater_store::Options::default()
    };
    let (dir, a) = common::temp_root_with(options);
    let b = StoreRoot::new(dir.path().join("b"));
    let (source, target) = (a.store("docs").unwrap(), b.store("docs").unwrap());
    source.store_at_label("kept", "v1").await.unwrap();
    source.store_at_label("changed", "v1").await.unwrap();
    sync(&a, &b, &SyncOptions::default()).await;
    source.store_at_label("changed", "v2").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let gc = theater_store::GcOptions {
        grace: std::time::Duration::from_secs(3600),
        dry_run: false,
    };
    assert!(
        source
            .collect_garbage(gc, ())
            .await
            .unwrap()
            .changes_trimmed
            > 0
    );

    let report = sync(&a, &b, &SyncOptions::default()).await;
    assert!(!report.incremental);
    let why = report.first_sync.clone().unwrap();
    assert!(why.contains("trimmed"), "{why}");
    // As in a first sync, a label both sides hold differently is a
    // conflict: nothing is overwritten on a guess.
    assert_eq!(report.conflicts.len(), 1, "{report:?}");
    assert_eq!(value(&target, "changed").await.as_deref(), Some("v1"));
    assert_eq!(value(&target, "kept").await.as_deref(), Some("v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_syncs_both_ways_converge_while_both_sides_are_written() {
    let (_dir, a, b) = two_roots();
    let (at_a, at_b) = (a.store("docs").unwrap(), b.store("docs").unwrap());
    at_a.store_at_label("start", "s").await.unwrap();
    let follow = |from: &StoreRoot, to: &StoreRoot| {
        let (from, to) = (from.clone(), to.clone());
        tokio::spawn(async move {
            from.follow_store_to(&to, "docs", &SyncOptions::default(), |_| {})
                .await
        })
    };
    let forward = follow(&a, &b);
    let backward = follow(&b, &a);
    let writes = |store: ContentStore, side: &'static str| {
        tokio::spawn(async move {
            for i in 0..40 {
                store
                    .store_at_label(&format!("{side}/{i:02}"), format!("{side} {i}"))
                    .await
                    .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
    };
    let (one, two) = (writes(at_a.clone(), "a"), writes(at_b.clone(), "b"));
    one.await.unwrap();
    two.await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (left, right) = (labels_of(&at_a).await, labels_of(&at_b).await);
        if left == right && left.len() == 81 {
            break;
        }
        if std::time::Instant::now() > deadline {
            let only_a: Vec<_> = left.iter().filter(|l| !right.contains(l)).collect();
            let only_b: Vec<_> = right.iter().filter(|l| !left.contains(l)).collect();
            panic!("not converged after 30 s: only at a {only_a:?}, only at b {only_b:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!forward.is_finished() && !backward.is_finished());
    forward.abort();
    backward.abort();
}

#[tokio::test]
async fn a_store_removed_and_made_again_is_compared_whole_not_skipped() {
    let (_dir, a, b) = two_roots();
    let source = a.store("docs").unwrap();
    for i in 0..5 {
        source
            .store_at_label(&format!("old/{i}"), format!("old {i}"))
            .await
            .unwrap();
    }
    sync(&a, &b, &SyncOptions::default()).await;
    a.remove_store("docs", false).await.unwrap();
    // Made again: its log starts over, behind where the last sync read.
    source.store_at_label("new", "fresh").await.unwrap();
    let report = sync(&a, &b, &SyncOptions::default()).await;
    assert!(report.first_sync.is_some(), "{report:?}");
    let target = b.store("docs").unwrap();
    assert_eq!(value(&target, "new").await.as_deref(), Some("fresh"));
    // As in a first sync, nothing is deleted at the destination.
    assert_eq!(value(&target, "old/0").await.as_deref(), Some("old 0"));
}

#[tokio::test]
async fn a_sync_is_history_too_and_a_revert_after_a_conflict_resolves_it() {
    let (_dir, a, b) = two_roots();
    let (source, target) = (a.store("docs").unwrap(), b.store("docs").unwrap());
    source.store_at_label("config", "v1").await.unwrap();
    source.store_at_label("notes", "n1").await.unwrap();
    sync(&a, &b, &SyncOptions::default()).await;
    let agreed = target.last_change().await.unwrap();

    // Both sides change config; the source also changes notes.
    source.store_at_label("config", "v2 from a").await.unwrap();
    source.store_at_label("notes", "n2").await.unwrap();
    target.store_at_label("config", "v2 from b").await.unwrap();
    let report = sync(&a, &b, &SyncOptions::default()).await;
    assert_eq!(report.conflicts.len(), 1, "{report:?}");
    assert_eq!(value(&target, "notes").await.as_deref(), Some("n2"));

    // The destination's log holds what the syncs did, named as theirs.
    let notes = target.history("notes", 10).await.unwrap();
    assert_eq!(notes.len(), 2);
    assert!(
        notes
            .iter()
            .all(|c| c.actor.as_deref().is_some_and(|a| a.starts_with("sync:"))),
        "{notes:?}"
    );
    // Resolving the conflict by going back to what both agreed on: the
    // revert moves config and notes back, as new changes.
    let moved = target.revert_to("", agreed, false).await.unwrap();
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert_eq!(value(&target, "config").await.as_deref(), Some("v1"));
    assert_eq!(value(&target, "notes").await.as_deref(), Some("n1"));
    // The next sync no longer conflicts: config is back where both last
    // agreed, so the source's change comes over; notes moved back here
    // after they agreed on n2, a change of the destination's, kept.
    let report = sync(&a, &b, &SyncOptions::default()).await;
    assert!(report.conflicts.is_empty(), "{report:?}");
    assert_eq!(report.labels_kept, 1, "{report:?}");
    assert_eq!(value(&target, "config").await.as_deref(), Some("v2 from a"));
    assert_eq!(value(&target, "notes").await.as_deref(), Some("n1"));
    // And every step stays readable at its point.
    let then = target
        .at(theater_store::Point::After(agreed))
        .await
        .unwrap();
    assert_eq!(
        then.get_content_by_label("config")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"v1"[..])
    );
}
