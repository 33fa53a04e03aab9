//! verify, garbage collection, and export/import packages.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{damage, lose_bytes, temp_root, temp_root_without_history};
use theater_store::{ContentStore, GcOptions, Options, StoreError};

fn no_progress() -> Arc<dyn theater_store::Progress> {
    Arc::new(())
}

fn backdate(path: &std::path::Path, by: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - by).unwrap();
}

#[tokio::test]
async fn verify_passes_a_healthy_store() {
    let (_dir, root) = temp_root();
    let store = root.store("healthy").unwrap();
    store.store_at_label("a", "alpha").await.unwrap();
    store.store("unlabelled").await.unwrap();
    let report = store.verify(no_progress()).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!((report.objects_checked, report.bytes_checked), (2, 15));
}

#[tokio::test]
async fn verify_quarantines_corruption_and_reports_dangling_labels() {
    if common::kept_by_this_process() {
        return; // Nothing to do in memory: bytes are damaged by hand below.
    }
    // Small content is checked in the index, large content in its files.
    verify_finds_damage("damaged-small", 1).await;
    verify_finds_damage("damaged-large", 2_000).await;
}

async fn verify_finds_damage(id: &str, repeat: usize) {
    let (_dir, root) = temp_root();
    let store = root.store(id).unwrap();
    let content = |text: &str| text.repeat(repeat);
    let good = store.store_at_label("good", content("fine")).await.unwrap();
    let bad = store
        .store_at_label("bad", content("will be corrupted"))
        .await
        .unwrap();
    let gone = store
        .store_at_label("gone", content("will be deleted"))
        .await
        .unwrap();
    damage(&root, &store, &bad, b"flipped bits");
    lose_bytes(&root, &store, &gone);
    let tmp = common::staging_dir(&root, id).join("leftover");
    std::fs::create_dir_all(tmp.parent().unwrap()).unwrap();
    std::fs::write(&tmp, "half an object").unwrap();
    backdate(&tmp, Duration::from_secs(7200));

    let report = store.verify(no_progress()).await.unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.quarantined, std::slice::from_ref(&bad));
    assert_eq!(report.missing, std::slice::from_ref(&gone));
    let mut dangling: Vec<&str> = report
        .dangling_labels
        .iter()
        .map(|e| e.label.as_str())
        .collect();
    dangling.sort();
    assert_eq!(dangling, ["bad", "gone"]);
    assert_eq!(report.leftover_temp_files, [tmp]);
    assert!(report.index_problems.is_empty());

    // The corrupt bytes were moved aside, not deleted, and no longer count.
    assert_eq!(common::quarantined(&root, id), [b"flipped bits".to_vec()]);
    assert!(!store.exists(&bad).await.unwrap());
    assert_eq!(store.get(&good).await.unwrap(), content("fine").as_bytes());
    // Storing the right bytes again repairs the dangling label.
    store.store(content("will be corrupted")).await.unwrap();
    assert_eq!(
        store.get_content_by_label("bad").await.unwrap().unwrap(),
        content("will be corrupted").as_bytes()
    );

    // The quarantine is listed, kept within the purge's age, then purged.
    let quarantined = store.quarantined().await.unwrap();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].content_ref, bad);
    assert_eq!(quarantined[0].size, 12);
    let purged = store
        .purge_quarantine(Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(purged, 0);
    assert_eq!(store.quarantined().await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(store.purge_quarantine(Duration::ZERO).await.unwrap(), 1);
    assert!(store.quarantined().await.unwrap().is_empty());
    assert!(common::quarantined(&root, id).is_empty());
}

#[tokio::test]
async fn gc_removes_only_unreachable_content_past_the_grace_period() {
    let (_dir, root) = temp_root_without_history();
    let store = root.store("gc").unwrap();
    let kept = store.store_at_label("keep", "labelled").await.unwrap();
    let orphan = store.store("orphan").await.unwrap();
    let relabelled = store.store_at_label("moving", "old version").await.unwrap();
    store
        .replace_content_at_label("moving", "new version")
        .await
        .unwrap();

    // Within the grace period nothing unlabelled goes.
    let report = store
        .collect_garbage(GcOptions::default(), no_progress())
        .await
        .unwrap();
    assert_eq!(
        (
            report.objects_removed,
            report.kept_recent,
            report.kept_labelled
        ),
        (0, 2, 2)
    );

    tokio::time::sleep(Duration::from_millis(20)).await;
    let options = GcOptions {
        grace: Duration::from_millis(10),
        dry_run: true,
    };
    let dry = store.collect_garbage(options, no_progress()).await.unwrap();
    assert_eq!((dry.objects_removed, dry.bytes_freed), (2, 17));
    assert!(
        store.exists(&orphan).await.unwrap(),
        "a dry run removed content"
    );

    let options = GcOptions {
        grace: Duration::from_millis(10),
        dry_run: false,
    };
    let report = store.collect_garbage(options, no_progress()).await.unwrap();
    assert_eq!(
        (
            report.objects_removed,
            report.bytes_freed,
            report.kept_labelled
        ),
        (2, 17, 2)
    );
    assert!(!store.exists(&orphan).await.unwrap());
    assert!(!store.exists(&relabelled).await.unwrap());
    assert!(matches!(
        store.get(&orphan).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.get(&kept).await.unwrap(), b"labelled");
    assert_eq!(
        store.get_content_by_label("moving").await.unwrap().unwrap(),
        b"new version"
    );
    assert_eq!(store.calculate_total_size().await.unwrap(), 8 + 11);
    assert!(store.verify(no_progress()).await.unwrap().is_clean());
}

#[tokio::test]
async fn gc_never_takes_content_a_concurrent_writer_is_about_to_label() {
    let (_dir, root) = temp_root();
    let store = root.store("race").unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                let content_ref = store.store(format!("item {i}")).await.unwrap();
                tokio::task::yield_now().await;
                store
                    .label(&format!("item:{i}"), &content_ref)
                    .await
                    .unwrap();
            }
        })
    };
    let options = GcOptions {
        grace: Duration::from_secs(5),
        dry_run: false,
    };
    while !writer.is_finished() {
        store.collect_garbage(options, no_progress()).await.unwrap();
    }
    writer.await.unwrap();
    for i in 0..200 {
        let content = store
            .get_content_by_label(&format!("item:{i}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(content, format!("item {i}").into_bytes());
    }
}

/// Old, unlabelled content that a writer names from new labelled content,
/// or whose referrer a writer labels, while a collection with no grace
/// period runs in a loop. The collection may take such content before the
/// write (it was unreachable and old); but what is still there once the
/// write is done is never lost, whatever the collection listed before.
/// (With a refresh window of zero, every link written counts as storing
/// its target again.)
// Two threads: the writer and the collection really run at once, whatever
// the engine (a memory root's calls never wait, so on one thread the
// collection would finish before the writer started).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_never_takes_old_content_that_a_concurrent_write_links_or_labels() {
    let options = theater_store::Options {
        refresh_after: Duration::ZERO,
        ..theater_store::Options::default()
    };
    let (_dir, root) = common::temp_root_with(options);
    let store = root.store("linked-race").unwrap();
    let items = if common::shared_engine() { 40 } else { 150 };
    let mut olds = Vec::new();
    let mut pairs = Vec::new();
    for i in 0..items {
        olds.push(store.store(format!("old {i}")).await.unwrap());
        let leaf = store.store(format!("leaf {i}")).await.unwrap();
        let parent = store.store(format!("parent of {leaf}")).await.unwrap();
        pairs.push((parent, leaf));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The first item is written before any collection starts, so that the
    // race is run whatever the scheduler does; the rest race.
    let (first_written, first_done) = tokio::sync::oneshot::channel();
    let writer = {
        let (store, olds, pairs) = (store.clone(), olds.clone(), pairs.clone());
        tokio::spawn(async move {
            let (mut named, mut labelled) = (Vec::new(), Vec::new());
            let mut first_written = Some(first_written);
            for (i, (old, (parent, leaf))) in olds.iter().zip(&pairs).enumerate() {
                store
                    .store_at_label(&format!("names:{i}"), format!("names {old}"))
                    .await
                    .unwrap();
                if store.exists(old).await.unwrap() {
                    named.push((i, old.clone()));
                }
                tokio::task::yield_now().await;
                // A collection may have taken the parent already: then the
                // label write fails, naming it, and nothing is promised.
                match store.label(&format!("parent:{i}"), parent).await {
                    Ok(()) => labelled.push(leaf.clone()),
                    Err(StoreError::NotFound { .. }) => {}
                    Err(other) => panic!("{other}"),
                }
                if let Some(first_written) = first_written.take() {
                    let _ = first_written.send(());
                }
            }
            (named, labelled)
        })
    };
    let gc = GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    };
    first_done.await.unwrap();
    while !writer.is_finished() {
        store.collect_garbage(gc, no_progress()).await.unwrap();
    }
    let (named, labelled_leaves) = writer.await.unwrap();
    store.collect_garbage(gc, no_progress()).await.unwrap();
    for (i, old) in &named {
        assert_eq!(
            store.get(old).await.unwrap(),
            format!("old {i}").into_bytes()
        );
    }
    for leaf in &labelled_leaves {
        store.get(leaf).await.unwrap();
    }
    // The first item met content no collection had looked at.
    assert!(!named.is_empty() && !labelled_leaves.is_empty());
    assert!(store.verify(no_progress()).await.unwrap().is_clean());
}

#[tokio::test]
async fn gc_cleans_crash_leftovers() {
    if common::kept_by_this_process() {
        return; // Nothing to do in memory: crash leftovers are placed by hand below.
    }
    let (_dir, root) = temp_root();
    let store = root.store("leftovers").unwrap();
    store.store_at_label("keep", "kept").await.unwrap();
    let tmp = common::staging_dir(&root, "leftovers").join("crashed-writer");
    std::fs::create_dir_all(tmp.parent().unwrap()).unwrap();
    std::fs::write(&tmp, "partial").unwrap();
    backdate(&tmp, Duration::from_secs(7200));
    let unindexed_there = common::place_unindexed(&root, &store, b"published but never indexed");

    // No grace: an object store's write times cannot be backdated.
    let options = GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    };
    let report = store.collect_garbage(options, no_progress()).await.unwrap();
    assert_eq!(
        (report.temp_files_removed, report.unindexed_files_removed),
        (1, 1)
    );
    assert!(!tmp.exists() && !unindexed_there());
    assert_eq!(
        store.get_content_by_label("keep").await.unwrap().unwrap(),
        b"kept"
    );
}

#[tokio::test]
async fn gc_reclaims_staging_of_a_store_that_never_reached_the_index() {
    if common::kept_by_this_process() {
        return; // Nothing to do in memory: staging files are placed by hand below.
    }
    let (_dir, root) = temp_root();
    root.store("indexed").unwrap().store("x").await.unwrap();
    // A first write into "Orphan" killed before it committed: its store
    // has a directory and staging, and no entry in the index.
    let stale = common::staging_dir(&root, "Orphan").join("killed-put");
    let fresh = common::staging_dir(&root, "Orphan").join("running-put");
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, vec![0u8; 1 << 16]).unwrap();
    std::fs::write(&fresh, "still being written").unwrap();
    backdate(&stale, Duration::from_secs(7200));

    let orphans = root.unindexed_stores().await.unwrap();
    let ids: Vec<&str> = orphans.iter().map(ContentStore::id).collect();
    assert_eq!(ids, ["Orphan"]);
    let report = orphans[0]
        .collect_garbage(gc_now(), no_progress())
        .await
        .unwrap();
    assert_eq!(report.temp_files_removed, 1);
    // Staging younger than the staging grace belongs to a write at work.
    assert!(!stale.exists() && fresh.exists());
}

async fn export_bytes(store: &ContentStore, prefix: Option<&str>) -> Vec<u8> {
    let (_, bytes) = store
        .export_package(prefix, Vec::new(), no_progress())
        .await
        .unwrap();
    bytes
}

#[tokio::test]
async fn packages_round_trip_labels_and_content_once_each() {
    let (_dir, root) = temp_root();
    let source = root.store("source").unwrap();
    let shared = source.store_at_label("doc:a", "same bytes").await.unwrap();
    source.label("doc:b", &shared).await.unwrap();
    source
        .store_at_label("doc:c", vec![7u8; 300_000])
        .await
        .unwrap();
    source
        .store_at_label("other", "not exported with a prefix")
        .await
        .unwrap();

    let package = export_bytes(&source, Some("doc:")).await;
    let (other_dir, other_root) = temp_root();
    let target = other_root.store("target").unwrap();
    let summary = target
        .import_package(std::io::Cursor::new(package), no_progress())
        .await
        .unwrap();
    assert_eq!(
        (
            summary.objects,
            summary.labels,
            summary.new_objects,
            summary.bytes
        ),
        (2, 3, 2, 300_010)
    );
    assert_eq!(
        target.list_labels().await.unwrap(),
        ["doc:a", "doc:b", "doc:c"]
    );
    for label in ["doc:a", "doc:b", "doc:c"] {
        assert_eq!(
            target.get_by_label(label).await.unwrap(),
            source.get_by_label(label).await.unwrap()
        );
    }
    assert_eq!(target.get(&shared).await.unwrap(), b"same bytes");

    // Importing again is idempotent.
    let again = export_bytes(&source, Some("doc:")).await;
    let summary = target
        .import_package(std::io::Cursor::new(again), no_progress())
        .await
        .unwrap();
    assert_eq!(summary.new_objects, 0);
    assert_eq!(target.stats().await.unwrap().objects, 2);
    drop(other_dir);

    // Without a prefix, everything goes, unlabelled content included.
    source.store("unlabelled").await.unwrap();
    let everything = root.store("everything").unwrap();
    let package = export_bytes(&source, None).await;
    let summary = everything
        .import_package(std::io::Cursor::new(package), no_progress())
        .await
        .unwrap();
    assert_eq!((summary.objects, summary.labels), (4, 4));
    assert_eq!(
        everything.calculate_total_size().await.unwrap(),
        source.calculate_total_size().await.unwrap()
    );
}

#[tokio::test]
async fn a_package_past_the_import_memory_waits_in_a_file_and_imports_whole() {
    let (_dir, root) = temp_root();
    let source = root.store("source").unwrap();
    let mut expected = Vec::new();
    for i in 0..200u32 {
        let mut content = vec![b'x'; 1000 + i as usize];
        content[..4].copy_from_slice(&i.to_le_bytes());
        let label = format!("small/{i:03}");
        expected.push((label.clone(), content.clone()));
        source.store_at_label(&label, content).await.unwrap();
    }
    let large = vec![9u8; 300_000];
    source.store_at_label("large", large.clone()).await.unwrap();
    expected.push(("large".to_owned(), large));
    let package = export_bytes(&source, None).await;

    // Room in memory for two small objects: the rest wait in a file.
    let (_other_dir, other) = common::temp_root_with(Options {
        import_memory_bytes: 2048,
        ..Options::default()
    });
    let target = other.store("target").unwrap();
    // A package damaged at its very end is refused after everything was
    // kept, and leaves nothing.
    let mut damaged = package.clone();
    *damaged.last_mut().unwrap() ^= 1;
    let refused = target
        .import_package(std::io::Cursor::new(damaged), no_progress())
        .await;
    assert!(
        matches!(refused, Err(StoreError::InvalidPackage { .. })),
        "{refused:?}"
    );
    assert_eq!(target.stats().await.unwrap().objects, 0);

    let summary = target
        .import_package(std::io::Cursor::new(package), no_progress())
        .await
        .unwrap();
    assert_eq!((summary.new_objects, summary.labels), (201, 201));
    for (label, content) in &expected {
        assert_eq!(
            target.get_content_by_label(label).await.unwrap().as_ref(),
            Some(content),
            "{label}"
        );
    }
    assert!(target.verify(()).await.unwrap().is_clean());
}

#[tokio::test]
async fn damaged_packages_are_refused_and_change_nothing() {
    if common::kept_by_this_process() {
        return; // Nothing to do in memory: bytes are damaged by hand below.
    }
    let (_dir, root) = temp_root();
    let source = root.store("source").unwrap();
    source.store_at_label("a", "alpha content").await.unwrap();
    source.store_at_label("b", "beta content").await.unwrap();
    let package = export_bytes(&source, None).await;

    let target = root.store("target").unwrap();
    target
        .store_at_label("existing", "untouched")
        .await
        .unwrap();
    let before = (
        target.list_labels().await.unwrap(),
        target.list_all_content().await.unwrap(),
    );

    let mut tampered = package.clone();
    let position = tampered.windows(5).position(|w| w == b"alpha").unwrap();
    tampered[position] = b'A';
    let mut bad_magic = package.clone();
    bad_magic[0] = b'X';
    let mut trailing = package.clone();
    trailing.push(0);
    let mut bad_checksum = package.clone();
    *bad_checksum.last_mut().unwrap() ^= 1;
    // An object twice, new to the store and one it holds: each refused
    // wherever the importer keeps what it has seen.
    let twice = |content: &[u8]| {
        let object = object_record(content);
        package_of(&[object.clone(), object].concat(), 2, 0)
    };
    let cases = [
        (
            "truncated in an object",
            package[..40].to_vec(),
            "truncated",
        ),
        (
            "truncated before the end",
            package[..package.len() - 10].to_vec(),
            "truncated",
        ),
        ("empty", Vec::new(), "truncated"),
        ("tampered content", tampered, "altered"),
        ("bad magic", bad_magic, "not a theater-store package"),
        ("bytes after the end", trailing, "after the end record"),
        ("bad checksum", bad_checksum, "checksum"),
        (
            "a new object twice",
            twice(b"gamma content"),
            "appears twice",
        ),
        ("a held object twice", twice(b"untouched"), "appears twice"),
    ];
    for (case, bytes, expected) in cases {
        match target
            .import_package(std::io::Cursor::new(bytes), no_progress())
            .await
        {
            Err(error @ StoreError::InvalidPackage { .. }) => {
                assert!(error.to_string().contains(expected), "{case}: {error}");
                assert!(error.to_string().contains("target"), "{case}: {error}");
            }
            other => panic!("{case}: expected InvalidPackage, got {other:?}"),
        }
        let after = (
            target.list_labels().await.unwrap(),
            target.list_all_content().await.unwrap(),
        );
        assert_eq!(after, before, "{case} changed the store");
    }
    let tmp = common::staging_dir(&root, "target");
    let staged_left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(staged_left.is_empty(), "staged files were left behind");
}

/// An object record of a package (docs/PACKAGE-FORMAT.md).
fn object_record(content: &[u8]) -> Vec<u8> {
    let mut record = vec![b'O'];
    record.extend_from_slice(&(content.len() as u64).to_le_bytes());
    record.extend_from_slice(blake3::hash(content).as_bytes());
    record.extend_from_slice(content);
    record
}

/// A version 1 package of `records`, its end record counting `objects`
/// and `labels`, with a checksum that matches.
fn package_of(records: &[u8], objects: u64, labels: u64) -> Vec<u8> {
    let mut package = b"THEATER-STORE-PK".to_vec();
    package.extend_from_slice(&1u32.to_le_bytes());
    package.extend_from_slice(records);
    package.push(b'E');
    package.extend_from_slice(&objects.to_le_bytes());
    package.extend_from_slice(&labels.to_le_bytes());
    let checksum = blake3::hash(&package);
    package.extend_from_slice(checksum.as_bytes());
    package
}

// ---- Refs written inside content keep what they name -------------------

fn gc_now() -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    }
}

/// Collects with no grace, once everything stored so far is in the past
/// (ages are kept in milliseconds).
async fn collect_now(store: &ContentStore, options: GcOptions) -> theater_store::GcReport {
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.collect_garbage(options, no_progress()).await.unwrap()
}

/// A linked list as the seed's pattern 8 builds it: each node names the
/// next by its ref; only the head is labelled. Returns the nodes, head first.
async fn linked_list(store: &ContentStore, nodes: usize) -> Vec<theater_store::ContentRef> {
    let mut next: Option<theater_store::ContentRef> = None;
    let mut refs = Vec::new();
    for i in (0..nodes).rev() {
        let node = serde_json::json!({
            "value": format!("item {i}"),
            "next": next.as_ref().map(|r| r.hash().to_owned()),
        });
        let node_ref = store
            .store(serde_json::to_vec(&node).unwrap())
            .await
            .unwrap();
        refs.push(node_ref.clone());
        next = Some(node_ref);
    }
    refs.reverse();
    store.label("list:head", &refs[0]).await.unwrap();
    refs
}

#[tokio::test]
async fn gc_keeps_everything_a_labelled_structure_names_and_takes_it_all_once_unlabelled() {
    let (_dir, root) = temp_root_without_history();
    let store = root.store("linked").unwrap();
    let nodes = linked_list(&store, 3).await;
    // A large node (a file, not a row) named in upper case by a small one.
    let big = store.store(vec![b'x'; 100_000]).await.unwrap();
    let holder = format!("attachment: {}.", big.hash().to_uppercase());
    let holder = store.store_at_label("doc", holder).await.unwrap();
    store.store("loose").await.unwrap();

    let report = collect_now(&store, gc_now()).await;
    assert_eq!(report.objects_removed, 1, "{report:?}");
    assert_eq!(report.kept_labelled, 5, "{report:?}");
    for node in nodes.iter().chain([&big, &holder]) {
        store.get(node).await.unwrap();
    }
    // The list walked from its label to its last node.
    let mut at = store.get_by_label("list:head").await.unwrap();
    let mut walked = 0;
    while let Some(node) = at {
        let value: serde_json::Value =
            serde_json::from_slice(&store.get(&node).await.unwrap()).unwrap();
        walked += 1;
        at = value["next"].as_str().map(theater_store::ContentRef::new);
    }
    assert_eq!(walked, 3);

    // Once nothing labels them, one pass takes the whole structure.
    store.remove_label("list:head").await.unwrap();
    store.remove_label("doc").await.unwrap();
    let report = collect_now(&store, gc_now()).await;
    assert_eq!(report.objects_removed, 5, "{report:?}");
    assert_eq!(store.stats().await.unwrap().objects, 0);
}

#[tokio::test]
async fn content_stored_within_the_grace_period_keeps_what_it_names() {
    let (_dir, root) = temp_root_without_history();
    let store = root.store("recent").unwrap();
    let nodes = linked_list(&store, 2).await;
    store.remove_label("list:head").await.unwrap();
    let grace = GcOptions {
        grace: Duration::from_secs(3600),
        dry_run: false,
    };
    let report = store.collect_garbage(grace, no_progress()).await.unwrap();
    assert_eq!(
        (report.objects_removed, report.kept_recent),
        (0, 2),
        "{report:?}"
    );
    // A writer that stored a node and labels its parent a moment later
    // finds both.
    store.label("list:head", &nodes[0]).await.unwrap();
    store.get(&nodes[1]).await.unwrap();
}

#[tokio::test]
async fn a_deep_chain_of_links_is_kept_whole() {
    // Deep enough that a recursive walk would overflow the stack.
    let depth = if common::shared_engine() {
        2_000
    } else {
        100_000
    };
    let (_dir, root) = temp_root();
    let store = root.store("deep").unwrap();
    let mut previous = String::from("start");
    let mut first = None;
    for i in 0..depth {
        let node = store.store(format!("{i} {previous}")).await.unwrap();
        first.get_or_insert(node.clone());
        previous = node.hash().to_owned();
    }
    store
        .label("tip", &theater_store::ContentRef::new(&previous))
        .await
        .unwrap();
    let report = collect_now(&store, gc_now()).await;
    assert_eq!(
        (report.objects_removed, report.kept_labelled),
        (0, depth),
        "{report:?}"
    );
    store.get(&first.unwrap()).await.unwrap();
}

#[tokio::test]
async fn export_with_a_prefix_carries_what_the_labels_reach_through_content() {
    let (_dir, root) = temp_root();
    let store = root.store("listed").unwrap();
    let nodes = linked_list(&store, 3).await;
    store
        .store_at_label("other", "not under the prefix")
        .await
        .unwrap();
    let (summary, package) = store
        .export_package(Some("list:"), Vec::new(), no_progress())
        .await
        .unwrap();
    assert_eq!((summary.objects, summary.labels), (3, 1), "{summary:?}");

    let (_dir2, elsewhere) = temp_root();
    let copy = elsewhere.store("listed").unwrap();
    copy.import_package(std::io::Cursor::new(package), no_progress())
        .await
        .unwrap();
    for node in &nodes {
        copy.get(node).await.unwrap();
    }
    // The import recorded the refs inside the content: only the list's
    // head is labelled, and gc keeps the rest through it.
    let report = collect_now(&copy, gc_now()).await;
    assert_eq!(
        (report.objects_removed, report.kept_labelled),
        (0, 3),
        "{report:?}"
    );
    for node in &nodes {
        copy.get(node).await.unwrap();
    }
}

#[test]
fn gc_removes_exactly_what_no_label_reaches_through_links() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    // Each object names some earlier ones; some objects are labelled, and
    // some of those labels are then removed.
    let graph = (2usize..24).prop_flat_map(|n| {
        (
            proptest::collection::vec(
                proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
                n,
            ),
            proptest::collection::vec(any::<bool>(), n),
            proptest::collection::vec(any::<bool>(), n),
        )
    });
    let cases = if common::shared_engine() { 6 } else { 24 };
    let mut runner = TestRunner::new(Config::with_cases(cases));
    runner
        .run(&graph, |(links, labelled, unlabel)| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let (_dir, root) = temp_root_without_history();
            runtime.block_on(async {
                let store = root.store("graph").unwrap();
                let mut refs: Vec<theater_store::ContentRef> = Vec::new();
                let mut targets: Vec<Vec<usize>> = Vec::new();
                for (i, picks) in links.iter().enumerate() {
                    let named: Vec<usize> = if i == 0 {
                        Vec::new()
                    } else {
                        picks.iter().map(|pick| pick.index(i)).collect()
                    };
                    let body: Vec<String> =
                        named.iter().map(|&j| refs[j].hash().to_owned()).collect();
                    let content = format!("node {i}: [{}]", body.join(","));
                    refs.push(store.store(content).await.unwrap());
                    targets.push(named);
                }
                let mut roots = Vec::new();
                for i in 0..refs.len() {
                    if labelled[i] {
                        store.label(&format!("l{i}"), &refs[i]).await.unwrap();
                        if unlabel[i] {
                            store.remove_label(&format!("l{i}")).await.unwrap();
                        } else {
                            roots.push(i);
                        }
                    }
                }
                // The model: what the remaining labels reach.
                let mut reached = vec![false; refs.len()];
                while let Some(i) = roots.pop() {
                    if !std::mem::replace(&mut reached[i], true) {
                        roots.extend(&targets[i]);
                    }
                }
                let report = collect_now(&store, gc_now()).await;
                let kept = reached.iter().filter(|&&r| r).count() as u64;
                prop_assert_eq!(report.objects_removed, refs.len() as u64 - kept);
                for (i, content_ref) in refs.iter().enumerate() {
                    prop_assert_eq!(
                        store.exists(content_ref).await.unwrap(),
                        reached[i],
                        "object {}",
                        i
                    );
                }
                Ok(())
            })
        })
        .unwrap();
}

#[tokio::test]
async fn objects_stored_before_links_were_recorded_are_scanned_before_anything_goes() {
    if common::shared_engine() || common::kept_by_this_process() {
        return; // The local index is edited by hand below.
    }
    let (_dir, root) = temp_root();
    let store = root.store("upgraded").unwrap();
    let nodes = linked_list(&store, 3).await;
    store.store("loose").await.unwrap();
    // As a root from before links were recorded looks once upgraded:
    // no links, every object awaiting a scan.
    let db = rusqlite::Connection::open(root.path().unwrap().join("index.sqlite")).unwrap();
    db.execute_batch(
        "UPDATE objects SET links = NULL; INSERT OR IGNORE INTO links_unscanned SELECT store, hash FROM objects;",
    )
    .unwrap();
    drop(db);
    let dry = GcOptions {
        grace: Duration::ZERO,
        dry_run: true,
    };
    let report = collect_now(&store, dry).await;
    assert_eq!(
        (report.objects_removed, report.kept_labelled),
        (1, 3),
        "{report:?}"
    );
    let report = collect_now(&store, gc_now()).await;
    assert_eq!(
        (report.objects_removed, report.kept_labelled),
        (1, 3),
        "{report:?}"
    );
    for node in &nodes {
        store.get(node).await.unwrap();
    }
}

#[tokio::test]
async fn usage_groups_labels_by_prefix_and_counts_shared_content_once_per_group() {
    let (_dir, root) = temp_root();
    let store = root.store("du").unwrap();
    let alpha = store.store_at_label("v1/a", "alpha").await.unwrap();
    store.store_at_label("v1/b", "beta!").await.unwrap();
    store.label("v1/again", &alpha).await.unwrap();
    store.label("v2/x/a", &alpha).await.unwrap();
    store.store_at_label("top", "12345678").await.unwrap();
    store.store("unlabelled content").await.unwrap();
    let usage = |prefix: &'static str, depth| {
        let store = store.clone();
        async move {
            store
                .usage(prefix, depth)
                .await
                .unwrap()
                .into_iter()
                .map(|group| (group.prefix, group.labels, group.objects, group.bytes))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        usage("", 1).await,
        [
            ("top".to_owned(), 1, 1, 8),
            ("v1/".to_owned(), 3, 2, 10),
            ("v2/".to_owned(), 1, 1, 5),
        ]
    );
    assert_eq!(usage("v2/", 2).await, [("v2/x/".to_owned(), 1, 1, 5)]);
    // Depth 0 groups as depth 1.
    assert_eq!(usage("v", 0).await, usage("v", 1).await);
    assert!(usage("nothing/", 1).await.is_empty());
}

#[tokio::test]
async fn many_stores_are_verified_against_one_check_of_the_whole_index() {
    if common::shared_engine() || common::kept_by_this_process() {
        return; // The local index is edited by hand below.
    }
    let (_dir, root) = temp_root();
    let mut stores = Vec::new();
    for id in ["a", "b", "c"] {
        let store = root.store(id).unwrap();
        store.store_at_label("doc", id).await.unwrap();
        stores.push(store);
    }
    let healthy = root.check_index().await.unwrap();
    assert!(healthy.problems().is_empty(), "{healthy:?}");
    // Store b's running totals no longer agree with its rows.
    let db = rusqlite::Connection::open(root.path().unwrap().join("index.sqlite")).unwrap();
    db.execute(
        "UPDATE stores SET object_count = object_count + 5 WHERE id = 'b'",
        [],
    )
    .unwrap();
    drop(db);
    let damaged = root.check_index().await.unwrap();
    assert_eq!(damaged.problems().len(), 1, "{damaged:?}");
    assert!(damaged.problems()[0].contains("store b"), "{damaged:?}");
    // The root-wide finding is in every store's report, as `verify` alone
    // gives it, though the index was checked once.
    for store in &stores {
        let report = store.verify_with(&damaged, ()).await.unwrap();
        assert_eq!(report.index_problems, damaged.problems(), "{}", store.id());
        assert!(!report.is_clean());
    }
    assert_eq!(
        stores[0].verify(()).await.unwrap().index_problems,
        damaged.problems()
    );
    // `verify_with` reports the check it is handed and reads no more of
    // the index than its own store.
    let report = stores[2].verify_with(&healthy, ()).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test]
async fn a_root_restored_from_a_whole_root_package_holds_the_same_labels_content_and_chains() {
    let (_dir, original) = temp_root();
    let docs = original.store("docs").unwrap();
    let nodes = linked_list(&docs, 3).await;
    docs.store("unlabelled").await.unwrap();
    docs.store_at_label("big", vec![7u8; 200_000])
        .await
        .unwrap();
    original
        .store("other")
        .unwrap()
        .store_at_label("cfg", "v1")
        .await
        .unwrap();
    let chain = original.event_chain("actor-1").unwrap();
    for _ in 0..9 {
        chain
            .append(theater_store::Event::new("store"))
            .await
            .unwrap();
    }
    let (summaries, package) = original
        .export_root(Vec::new(), no_progress())
        .await
        .unwrap();
    let stores: Vec<&str> = summaries.iter().map(|s| s.store.as_str()).collect();
    assert_eq!(stores, ["docs", "other", "_chains"]);

    let (_dir2, restored) = temp_root();
    let imported = restored
        .import_root(
            std::io::Cursor::new(package),
            Default::default(),
            no_progress(),
        )
        .await
        .unwrap();
    assert!(
        imported.iter().all(|s| s.conflicts.is_empty()),
        "{imported:?}"
    );
    for id in ["docs", "other"] {
        let (from, to) = (original.store(id).unwrap(), restored.store(id).unwrap());
        let labels = |store: ContentStore| async move {
            store.list_labels_page("", None, 1000).await.unwrap()
        };
        assert_eq!(labels(from.clone()).await, labels(to.clone()).await);
        let mut held = from.list_all_content().await.unwrap();
        let mut copied = to.list_all_content().await.unwrap();
        held.sort();
        copied.sort();
        assert_eq!(held, copied);
        for content_ref in &held {
            assert_eq!(
                from.get(content_ref).await.unwrap(),
                to.get(content_ref).await.unwrap()
            );
        }
    }
    for node in &nodes {
        restored.store("docs").unwrap().get(node).await.unwrap();
    }
    let copy = restored.event_chain("actor-1").unwrap();
    let report = copy.verify().await.unwrap();
    assert!(
        report.is_intact() && report.events_checked == 9,
        "{report:?}"
    );
    assert_eq!(copy.head().await.unwrap(), chain.head().await.unwrap());
    // Sync records stay behind: the restored root is a new peer.
    assert_ne!(
        restored.sync_identity().await.unwrap(),
        original.sync_identity().await.unwrap()
    );
    // A store's import refuses a whole root's package.
    let (_, package) = original
        .export_root(Vec::new(), no_progress())
        .await
        .unwrap();
    let refused = restored
        .store("docs")
        .unwrap()
        .import_package(std::io::Cursor::new(package), no_progress())
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("import --all"), "{refused}");
}

/// `unreachable` lists exactly what no label reaches, and says which of
/// it gc would take now and which only the grace period keeps; a dry run
/// of gc agrees with it.
#[tokio::test]
async fn unreachable_lists_what_gc_would_take_and_what_the_grace_period_keeps() {
    let (_dir, root) = temp_root_without_history();
    let store = root.store("census").unwrap();
    let leaf = store.store("a leaf").await.unwrap();
    store
        .store_at_label("top", format!("names {}", leaf.hash()))
        .await
        .unwrap();
    let loose = store.store("loose").await.unwrap();
    let dropped = store.store_at_label("gone", "dropped").await.unwrap();
    store.remove_label("gone").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;

    let now = store.unreachable(Duration::ZERO).await.unwrap();
    let mut refs: Vec<theater_store::ContentRef> =
        now.iter().map(|entry| entry.content_ref.clone()).collect();
    refs.sort();
    let mut expected = vec![loose.clone(), dropped.clone()];
    expected.sort();
    assert_eq!(refs, expected);
    assert!(now.iter().all(|entry| !entry.kept_by_grace));
    assert_eq!(now.iter().map(|entry| entry.size).sum::<u64>(), 12);
    let dry = GcOptions {
        grace: Duration::ZERO,
        dry_run: true,
    };
    let report = store.collect_garbage(dry, no_progress()).await.unwrap();
    assert_eq!(report.objects_removed, 2);

    let within_grace = store.unreachable(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(within_grace.len(), 2);
    assert!(within_grace.iter().all(|entry| entry.kept_by_grace));
    // Listing changed nothing.
    assert!(store.exists(&loose).await.unwrap());
}

fn zero_grace() -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    }
}

#[tokio::test]
async fn gc_keeps_what_the_kept_change_log_names_and_takes_it_once_trimmed() {
    // Every entry kept here (at least the newest 2, none by age).
    let (_dir, root) = common::temp_root_with(theater_store::Options {
        change_retention: Duration::ZERO,
        change_retention_min: 2,
        ..theater_store::Options::default()
    });
    let store = root.store("history").unwrap();
    let leaf = store.store("a leaf v1 names").await.unwrap();
    let v1 = store
        .store_at_label("config", format!("v1 names {}", leaf.hash()))
        .await
        .unwrap();
    store.store_at_label("config", "v2").await.unwrap(); // 2
    let brief = store.store_at_label("temp", "short-lived").await.unwrap(); // 3
    store.remove_label("temp").await.unwrap(); // 4
    let orphan = store.store("never labelled").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;

    // Entries 3 and 4 are kept: the removed label's content stays, for
    // reads at point 3. Entry 2 (config's v1) goes with what only it named.
    let dry = GcOptions {
        dry_run: true,
        ..zero_grace()
    };
    let predicted = store.collect_garbage(dry, no_progress()).await.unwrap();
    let report = store
        .collect_garbage(zero_grace(), no_progress())
        .await
        .unwrap();
    assert_eq!(
        (
            report.objects_removed,
            report.kept_for_history,
            report.kept_labelled
        ),
        (3, 1, 1),
        "{report:?}"
    );
    assert_eq!(predicted.objects_removed, report.objects_removed);
    assert_eq!(report.changes_trimmed, 2);
    for gone in [&v1, &leaf, &orphan] {
        assert!(!store.exists(gone).await.unwrap());
    }
    assert_eq!(
        store.label_at("temp", 3).await.unwrap(),
        Some(brief.clone())
    );
    assert_eq!(store.get(&brief).await.unwrap(), b"short-lived");

    // Two more changes push entry 4 (the last to name it) out of the kept
    // two, and config's v2 into history: the short-lived content goes, v2
    // stays.
    let v2 = store.get_by_label("config").await.unwrap().unwrap();
    store.store_at_label("config", "v3").await.unwrap(); // 5
    store.store_at_label("other", "x").await.unwrap(); // 6
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = store
        .collect_garbage(zero_grace(), no_progress())
        .await
        .unwrap();
    assert_eq!(
        (report.objects_removed, report.kept_for_history),
        (1, 1),
        "{report:?}"
    );
    assert!(!store.exists(&brief).await.unwrap());
    assert_eq!(store.label_at("config", 4).await.unwrap(), Some(v2.clone()));
    assert!(
        store.label_at("temp", 3).await.is_err(),
        "point 3 is trimmed"
    );
    assert_eq!(store.get(&v2).await.unwrap(), b"v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn content_a_label_passes_through_during_a_collection_stays_readable_at_that_point() {
    let (_dir, root) = temp_root();
    let store = root.store("passing").unwrap();
    let mut pool = Vec::new();
    for i in 0..20 {
        pool.push(store.store(format!("pool {i}")).await.unwrap());
    }
    store
        .store_at_label("resting", "where the label rests")
        .await
        .unwrap();
    let resting = store.get_by_label("resting").await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // A label visits unlabelled content and moves on, again and again,
    // while collections with no grace period run.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for round in 0..1000 {
                let visited = &pool[round % pool.len()];
                // The collector may have taken it already: that is fine.
                if store.label("visitor", visited).await.is_ok() {
                    store.label("visitor", &resting).await.unwrap();
                }
            }
        })
    };
    while !writer.is_finished() {
        store
            .collect_garbage(zero_grace(), no_progress())
            .await
            .unwrap();
    }
    writer.await.unwrap();
    store
        .collect_garbage(zero_grace(), no_progress())
        .await
        .unwrap();
    // Every point the log can go back to still reads.
    let mut since = 0;
    loop {
        let page = store.changes(since, 1000).await.unwrap();
        for change in &page.changes {
            for named in change.old.iter().chain(&change.new) {
                assert!(
                    store.get(named).await.is_ok(),
                    "change {} names {named}, which gc took",
                    change.seq
                );
            }
        }
        match page.changes.last() {
            Some(last) => since = last.seq,
            None => break,
        }
    }
}
