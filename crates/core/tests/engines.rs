//! The same random change sequences through every engine: the local one,
//! the memory one, the log one, and (with `THEATER_STORE_TEST_ENGINE=shared`)
//! the shared one. Each step must have the same outcome on all of them, and
//! afterwards their labels, totals, change logs and content must be the
//! same: what a change means does not depend on where it is kept. The log
//! root, compacting as often as it can, must also reopen from its log to
//! what it held. Then the log engine's own faults: damaged bytes, a write
//! cut off by a crash.

use std::time::Duration;

use proptest::prelude::*;
use theater_store::{ContentRef, ContentStore, GcOptions, Options, StoreRoot};

mod common;

use common::{CONTENTS, LABELS, unrepeated};

#[derive(Clone, Debug)]
enum Op {
    Store(usize),
    /// Content naming another content's ref: gc follows it.
    StoreLinking(usize, usize),
    StoreAtLabel(usize, usize),
    Label(usize, usize),
    RemoveLabel(usize),
    Cas(usize, Option<usize>, Option<usize>),
    /// Several labels set or removed at once, all or nothing.
    SetLabels(Vec<(usize, Option<usize>)>),
    /// A collection with no grace period.
    Collect,
    /// A write made under a store quota (bytes, objects).
    WithinQuota(u64, u64, Box<Op>),
}

fn op() -> impl Strategy<Value = Op> {
    let write = write();
    prop_oneof![
        4 => write.clone(),
        1 => Just(Op::Collect),
        // Quotas around what a few small objects and labels take.
        1 => (0..30_000u64, 0..6u64, write)
            .prop_map(|(bytes, objects, op)| Op::WithinQuota(bytes, objects, Box::new(op))),
    ]
}

fn write() -> impl Strategy<Value = Op> + Clone {
    let content = 0..CONTENTS.len();
    let label = 0..LABELS.len();
    prop_oneof![
        content.clone().prop_map(Op::Store),
        (content.clone(), content.clone()).prop_map(|(a, b)| Op::StoreLinking(a, b)),
        (label.clone(), content.clone()).prop_map(|(l, c)| Op::StoreAtLabel(l, c)),
        (label.clone(), content.clone()).prop_map(|(l, c)| Op::Label(l, c)),
        label.clone().prop_map(Op::RemoveLabel),
        (
            label.clone(),
            proptest::option::of(content.clone()),
            proptest::option::of(content.clone())
        )
            .prop_map(|(l, e, n)| Op::Cas(l, e, n)),
        proptest::collection::vec((label, proptest::option::of(content.clone())), 1..3)
            .prop_map(Op::SetLabels),
    ]
}

/// The bytes of content `index`, or of a node naming content `target`.
fn linking(index: usize, target: usize) -> Vec<u8> {
    let named = ContentRef::for_content(CONTENTS[target]);
    format!("node {index} names {}", named.hash()).into_bytes()
}

/// What one step returned, comparable between engines (errors by kind).
async fn run(store: &ContentStore, op: &Op) -> String {
    let reference = |c: usize| ContentRef::for_content(CONTENTS[c]);
    let outcome = match op {
        Op::Store(c) => store.store(CONTENTS[*c]).await.map(|r| r.to_string()),
        Op::StoreLinking(a, b) => store.store(linking(*a, *b)).await.map(|r| r.to_string()),
        Op::StoreAtLabel(l, c) => store
            .store_at_label(LABELS[*l], CONTENTS[*c])
            .await
            .map(|r| r.to_string()),
        Op::Label(l, c) => store
            .label(LABELS[*l], &reference(*c))
            .await
            .map(|()| String::new()),
        Op::RemoveLabel(l) => store.remove_label(LABELS[*l]).await.map(|()| String::new()),
        Op::Cas(l, expected, new) => store
            .compare_and_swap_label(
                LABELS[*l],
                expected.map(reference).as_ref(),
                new.map(reference).as_ref(),
            )
            .await
            .map(|swapped| swapped.to_string()),
        Op::SetLabels(labels) => {
            let labels: Vec<(String, Option<ContentRef>)> = labels
                .iter()
                .map(|(l, c)| (LABELS[*l].to_owned(), c.map(reference)))
                .collect();
            store.set_labels(&labels).await.map(|()| String::new())
        }
        Op::WithinQuota(bytes, objects, op) => {
            let quota = theater_store::StoreQuota {
                bytes: *bytes,
                objects: *objects,
            };
            let bounded = store.within_quota(quota);
            let outcome = Box::pin(run(&bounded, op)).await;
            return format!("{outcome}, added {}", bounded.footprint_added());
        }
        Op::Collect => {
            // Past the millisecond of the last write, so that every engine
            // finds it older than the cutoff.
            tokio::time::sleep(Duration::from_millis(3)).await;
            let options = GcOptions {
                grace: Duration::ZERO,
                dry_run: false,
            };
            store
                .collect_garbage(options, std::sync::Arc::new(()))
                .await
                .map(|report| {
                    format!(
                        "removed {} ({} bytes)",
                        report.objects_removed, report.bytes_freed
                    )
                })
        }
    };
    outcome.unwrap_or_else(|error| format!("error {:?}", error.kind()))
}

/// [`run`]'s outcome, and the change log entries the step made: the
/// same set on every engine (the order of one atomic change's entries is
/// the engine's to pick), numbered on from the same place.
async fn run_logged(store: &ContentStore, op: &Op) -> String {
    let before = store.last_change().await.unwrap();
    let mut outcome = run(store, op).await;
    let page = match store.changes(before, usize::MAX).await {
        Ok(page) => page,
        // The step removed the store (a collection of an empty one), and
        // its log started over.
        Err(error) if error.kind() == theater_store::ErrorKind::Trimmed => {
            outcome += "; log started over";
            store.changes(0, usize::MAX).await.unwrap()
        }
        Err(error) => panic!("reading the log: {error}"),
    };
    let mut entries: Vec<String> = page
        .changes
        .iter()
        .map(|change| {
            format!(
                "\n  {}: {:?} -> {:?} by {:?}",
                change.label, change.old, change.new, change.actor
            )
        })
        .collect();
    entries.sort();
    outcome += &format!("; log {}..={}", before + 1, page.last_seq);
    outcome.extend(entries);
    outcome
}

/// Everything a store holds: labels and targets, totals, content.
async fn contents(store: &ContentStore) -> String {
    let mut held = String::new();
    for label in store.list_labels().await.unwrap() {
        let target = store.get_by_label(&label).await.unwrap().unwrap();
        held += &format!("label {label} -> {target}\n");
    }
    let stats = store.stats().await.unwrap();
    held += &format!("{stats:?}\n");
    // The log: the sequences it keeps, and each label's changes in order.
    // Which of one atomic change's labels is numbered first is the
    // engine's to pick (PostgreSQL writes them in its plan's order), and
    // `run_logged` checks each change's entries as a set.
    let page = store.changes(0, 10_000).await.unwrap();
    let seqs: Vec<u64> = page.changes.iter().map(|change| change.seq).collect();
    held += &format!("changes {seqs:?}\n");
    let mut by_label = std::collections::BTreeMap::<String, Vec<String>>::new();
    for change in page.changes {
        let refs = (
            change.old.map(|r| r.to_string()),
            change.new.map(|r| r.to_string()),
        );
        by_label
            .entry(change.label)
            .or_default()
            .push(format!("{refs:?}"));
    }
    for (label, changes) in by_label {
        held += &format!("changes of {label}: {changes:?}\n");
    }
    for content_ref in store.list_all_content().await.unwrap() {
        let bytes = store.get(&content_ref).await.unwrap();
        held += &format!("{content_ref}: {} bytes\n", bytes.len());
    }
    held
}

/// The log root of [`roots`], compacted whenever it is more than half
/// dead, its content over the local root's inline threshold in files (as
/// on the local root).
fn log_root(dir: &std::path::Path) -> StoreRoot {
    let options = Options {
        log_compact_min: 0,
        log_file_threshold: Options::default().inline_threshold,
        ..Options::default()
    };
    StoreRoot::at(&format!("log:{}", dir.join("log").display()), options).unwrap()
}

/// The roots compared: a local one, a memory one, a log one (third), and a
/// shared one when the suite runs on the shared engine.
fn roots(dir: &std::path::Path) -> Vec<StoreRoot> {
    let mut roots = vec![
        StoreRoot::with_options(dir.join("local"), Options::default()),
        StoreRoot::at("mem:", Options::default()).unwrap(),
        log_root(dir),
    ];
    if common::shared_engine() {
        roots.push(common::temp_root().1);
    }
    roots
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn every_engine_gives_a_change_the_same_meaning(ops in proptest::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let roots = roots(dir.path());
        let stores: Vec<ContentStore> =
            roots.iter().map(|root| root.store("same").unwrap()).collect();
        runtime.block_on(async {
            for (step, op) in ops.iter().enumerate() {
                let first = run_logged(&stores[0], op).await;
                for (engine, store) in stores.iter().enumerate().skip(1) {
                    let outcome = run_logged(store, op).await;
                    prop_assert_eq!(&outcome, &first, "step {} ({:?}), engine {}", step, op, engine);
                }
            }
            let first = contents(&stores[0]).await;
            for store in &stores[1..] {
                prop_assert_eq!(contents(store).await, first.clone());
            }
            Ok(())
        })?;
        let held = runtime.block_on(contents(&stores[2]));
        drop((stores, roots));
        let reopened = log_root(dir.path()).store("same").unwrap();
        prop_assert_eq!(runtime.block_on(contents(&reopened)), held);
    }
}

/// The log file of a log root made by [`log_root`].
fn log_file(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("log").join("log")
}

#[tokio::test]
async fn a_damaged_byte_in_a_log_root_is_found_by_verify_and_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let store = log_root(dir.path()).store("damaged").unwrap();
    let content = b"bytes a disk fault will flip".repeat(10);
    let stored = store.store_at_label("kept", content.clone()).await.unwrap();
    let other = store.store(b"untouched".to_vec()).await.unwrap();
    // Flip one byte of the content where the log holds it.
    let log = std::fs::read(log_file(dir.path())).unwrap();
    let at = log
        .windows(content.len())
        .position(|window| window == content)
        .unwrap();
    let file = std::fs::File::options()
        .write(true)
        .open(log_file(dir.path()))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"X", (at + 3) as u64).unwrap();
    let refused = store.get(&stored).await.unwrap_err();
    assert!(
        matches!(refused, theater_store::StoreError::Corrupted { .. }),
        "{refused}"
    );
    let report = store.verify(std::sync::Arc::new(())).await.unwrap();
    assert_eq!(report.quarantined, vec![stored.clone()]);
    let dangling: Vec<&str> = report
        .dangling_labels
        .iter()
        .map(|e| e.label.as_str())
        .collect();
    assert_eq!(dangling, ["kept"]);
    assert_eq!(store.get(&other).await.unwrap(), b"untouched");
    // What verify found is in the log: a reopened root agrees.
    drop(store);
    let reopened = log_root(dir.path()).store("damaged").unwrap();
    assert!(!reopened.exists(&stored).await.unwrap());
    assert_eq!(reopened.get(&other).await.unwrap(), b"untouched");
}

#[tokio::test]
async fn a_log_root_cut_off_mid_write_keeps_every_change_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let written: Vec<ContentRef> = {
        let store = log_root(dir.path()).store("cut").unwrap();
        let mut written = Vec::new();
        for n in 0..5 {
            let content = format!("change {n}").repeat(100).into_bytes();
            written.push(
                store
                    .store_at_label(&format!("l{n}"), content)
                    .await
                    .unwrap(),
            );
        }
        written
    };
    // A crash in the middle of the last change's write.
    let file = std::fs::File::options()
        .write(true)
        .open(log_file(dir.path()))
        .unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len - 40).unwrap();
    let store = log_root(dir.path()).store("cut").unwrap();
    for (n, target) in written.iter().enumerate().take(4) {
        assert_eq!(
            store.get_by_label(&format!("l{n}")).await.unwrap().as_ref(),
            Some(target)
        );
    }
    assert_eq!(store.get_by_label("l4").await.unwrap(), None);
    assert_eq!(store.changes(0, 100).await.unwrap().last_seq, 4);
    // The cut-off bytes are kept aside, and the log goes on.
    assert_eq!(
        std::fs::read_dir(dir.path().join("log").join("damaged"))
            .unwrap()
            .count(),
        1
    );
    let again = store.store_at_label("l4", b"again".to_vec()).await.unwrap();
    drop(store);
    let store = log_root(dir.path()).store("cut").unwrap();
    assert_eq!(store.get_by_label("l4").await.unwrap(), Some(again));
    assert!(
        store
            .verify(std::sync::Arc::new(()))
            .await
            .unwrap()
            .quarantined
            .is_empty()
    );
}

#[tokio::test]
async fn handles_on_one_log_root_in_a_process_share_it_and_other_processes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = log_root(dir.path()).store("shared").unwrap();
    let second = log_root(dir.path()).store("shared").unwrap();
    let stored = first
        .store_at_label("seen", b"by both".to_vec())
        .await
        .unwrap();
    assert_eq!(second.get_by_label("seen").await.unwrap(), Some(stored));
    // Another process: its open takes the same lock, from a file of its own.
    let lock = std::fs::File::open(dir.path().join("log").join("lock")).unwrap();
    assert!(
        lock.try_lock().is_err(),
        "the lock is held while the root is open"
    );
    drop((first, second));
    // A child another test thread forks shares the lock's open file until
    // its exec closes it: give such a moment time to pass.
    let released = (0..500).any(|_| {
        lock.try_lock().is_ok() || {
            std::thread::sleep(Duration::from_millis(10));
            false
        }
    });
    assert!(released, "the lock is let go with the last handle");
    drop(lock);
    // The directory is not mistaken for a local root, nor a local one for it.
    let local = StoreRoot::new(dir.path().join("log"))
        .store("shared")
        .unwrap();
    let refused = local.get_by_label("seen").await.unwrap_err();
    assert!(refused.to_string().contains("open it as log:"), "{refused}");
    let local = StoreRoot::new(dir.path().join("local"))
        .store("shared")
        .unwrap();
    local
        .store_at_label("here", b"local".to_vec())
        .await
        .unwrap();
    let at = format!("log:{}", dir.path().join("local").display());
    let refused = StoreRoot::at(&at, Options::default())
        .unwrap()
        .stores()
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("holds a local root"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_at_once_on_a_log_root_are_all_answered_and_all_kept() {
    for durability in [
        theater_store::Durability::Buffered,
        theater_store::Durability::Synced,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            durability,
            ..Options::default()
        };
        let at = format!("log:{}", dir.path().join("log").display());
        // Two handles on the root: a writer that finds the lock taken by
        // the other's leaves its change to be applied by whoever holds it.
        let handles: Vec<ContentStore> = (0..2)
            .map(|_| {
                let root = StoreRoot::at(&at, options.clone()).unwrap();
                root.store("many").unwrap()
            })
            .collect();
        let writers: Vec<_> = (0..32)
            .map(|writer| {
                let store = handles[writer % 2].clone();
                tokio::spawn(async move {
                    let mut written = Vec::new();
                    for n in 0..10 {
                        let label = format!("w{writer}/{n}");
                        let content = format!("{label} content").into_bytes();
                        written.push((
                            label.clone(),
                            store.store_at_label(&label, content).await.unwrap(),
                        ));
                    }
                    written
                })
            })
            .collect();
        // A reader holding the lock in between lets queued changes through
        // too.
        let reader = {
            let store = handles[0].clone();
            tokio::spawn(async move {
                while store.last_change().await.unwrap() < 320 {
                    store.list_labels_page("w", None, 10).await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut written = Vec::new();
        for writer in writers {
            written.extend(writer.await.unwrap());
        }
        reader.await.unwrap();
        drop(handles);
        let reopened = StoreRoot::at(&at, options).unwrap().store("many").unwrap();
        for (label, target) in &written {
            assert_eq!(
                reopened.get_by_label(label).await.unwrap().as_ref(),
                Some(target),
                "{label} ({durability:?})"
            );
        }
        assert_eq!(reopened.changes(0, 1000).await.unwrap().last_seq, 320);
    }
}

/// A log root that keeps no history past a collection, compacted whenever
/// it is more than half dead.
fn log_root_without_history(dir: &std::path::Path) -> StoreRoot {
    let options = Options {
        log_compact_min: 0,
        change_retention: Duration::ZERO,
        change_retention_min: 0,
        ..Options::default()
    };
    StoreRoot::at(&format!("log:{}", dir.join("log").display()), options).unwrap()
}

/// Every file under a log root's store's `objects/`.
fn object_files(dir: &std::path::Path, store: &str) -> Vec<std::path::PathBuf> {
    let objects = dir.join("log").join("stores").join(store).join("objects");
    let Ok(shards) = std::fs::read_dir(objects) else {
        return Vec::new();
    };
    shards
        .flat_map(|shard| std::fs::read_dir(shard.unwrap().path()).unwrap())
        .map(|entry| entry.unwrap().path())
        .collect()
}

/// Collects every object no label reaches, however new.
async fn collect_now(store: &ContentStore) -> theater_store::GcReport {
    let options = GcOptions {
        grace: Duration::ZERO,
        ..GcOptions::default()
    };
    store
        .collect_garbage(options, std::sync::Arc::new(()))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_log_roots_large_content_stays_out_of_its_log_and_goes_with_gc() {
    let dir = tempfile::tempdir().unwrap();
    let big = unrepeated(3 << 20, 7);
    let big_ref = {
        let root = log_root_without_history(dir.path());
        let store = root.store("large").unwrap();
        let stored = store
            .store_reader_at_label("big", std::io::Cursor::new(big.clone()))
            .await
            .unwrap();
        // Enough small changes to make the log worth compacting, twice.
        for n in 0..300 {
            store
                .store_at_label("small", format!("small {n}").into_bytes())
                .await
                .unwrap();
        }
        let range = store.read_range(&stored, 2 << 20, 100).await.unwrap();
        assert_eq!(range, big[2 << 20..(2 << 20) + 100]);
        stored
    };
    let log_len = std::fs::metadata(log_file(dir.path())).unwrap().len();
    assert!(log_len < 1 << 20, "the log holds {log_len} bytes");
    assert_eq!(object_files(dir.path(), "large").len(), 1);

    // Opened again: the object is where its file is.
    let root = log_root_without_history(dir.path());
    let store = root.store("large").unwrap();
    assert_eq!(
        store.get_by_label("big").await.unwrap(),
        Some(big_ref.clone())
    );
    assert_eq!(store.get(&big_ref).await.unwrap(), big);
    assert!(
        store
            .verify(std::sync::Arc::new(()))
            .await
            .unwrap()
            .is_clean()
    );

    // Unlabelled and collected: its file (and outboard) go too.
    store.remove_label("big").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = collect_now(&store).await;
    // The big object and the 299 small ones labels moved off.
    assert_eq!(report.objects_removed, 300);
    assert!(report.bytes_freed > big.len() as u64);
    assert!(!store.exists(&big_ref).await.unwrap());
    assert!(object_files(dir.path(), "large").is_empty());
    drop((store, root));
    let reopened = log_root_without_history(dir.path()).store("large").unwrap();
    assert!(!reopened.exists(&big_ref).await.unwrap());
    assert_eq!(reopened.stats().await.unwrap().objects, 1);
}

#[tokio::test]
async fn a_file_a_log_root_renamed_in_but_never_committed_is_collected() {
    let dir = tempfile::tempdir().unwrap();
    let root = log_root_without_history(dir.path());
    let store = root.store("leftover").unwrap();
    store
        .store_at_label("kept", b"kept".to_vec())
        .await
        .unwrap();
    // As a write killed between its file's rename and its commit leaves.
    let lost = unrepeated(100 << 10, 3);
    let hash = ContentRef::for_content(&lost).hash().to_owned();
    let shard = dir
        .path()
        .join("log/stores/leftover/objects")
        .join(&hash[..2]);
    std::fs::create_dir_all(&shard).unwrap();
    std::fs::write(shard.join(&hash[2..]), &lost).unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = collect_now(&store).await;
    assert_eq!(report.unindexed_files_removed, 1);
    assert!(object_files(dir.path(), "leftover").is_empty());
    assert_eq!(
        store.get_by_label("kept").await.unwrap(),
        Some(ContentRef::for_content(b"kept"))
    );
}
