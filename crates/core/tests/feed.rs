//! The change feed: every label change of every path lands in its store's
//! log once, in order, with what it replaced; watchers replay and then
//! follow, across tasks and processes; gc trims past the retention.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use theater_store::{
    ContentRef, ContentStore, ErrorKind, GcOptions, LabelChange, Options, StoreError, StoreRoot,
};

/// `(label, old, new)` of each change, in order.
fn moves(changes: &[LabelChange]) -> Vec<(String, Option<ContentRef>, Option<ContentRef>)> {
    changes
        .iter()
        .map(|change| (change.label.clone(), change.old.clone(), change.new.clone()))
        .collect()
}

async fn all_changes(store: &ContentStore) -> Vec<LabelChange> {
    store.changes(0, usize::MAX).await.unwrap().changes
}

#[tokio::test]
async fn every_label_write_is_logged_once_with_what_it_replaced() {
    let (_dir, root) = common::temp_root();
    let store = root.store("feed").unwrap();
    let a = store
        .store_at_label("config", b"one".to_vec())
        .await
        .unwrap();
    // The same value again changes nothing, and logs nothing.
    store
        .store_at_label("config", b"one".to_vec())
        .await
        .unwrap();
    let b = store.store(b"two".to_vec()).await.unwrap();
    store.replace_at_label("config", &b).await.unwrap();
    store.label("copy", &a).await.unwrap();
    // A compare-and-swap that loses logs nothing; one that wins logs its move.
    assert!(
        !store
            .compare_and_swap_label("config", Some(&a), Some(&b))
            .await
            .unwrap()
    );
    assert!(
        store
            .compare_and_swap_label("config", Some(&b), None)
            .await
            .unwrap()
    );
    store
        .set_labels(&[
            ("batch-1".to_owned(), Some(a.clone())),
            ("copy".to_owned(), None),
        ])
        .await
        .unwrap();
    // A batch refused for a missing target logs nothing of it.
    let missing = ContentRef::new("ab".repeat(32));
    let refused = store
        .set_labels(&[
            ("batch-2".to_owned(), Some(a.clone())),
            ("batch-3".to_owned(), Some(missing)),
        ])
        .await;
    assert!(refused.is_err());
    store.remove_label("batch-1").await.unwrap();
    // Removing a label that is not there changes nothing.
    store.remove_label("never-set").await.unwrap();

    let changes = all_changes(&store).await;
    let expected = vec![
        ("config".to_owned(), None, Some(a.clone())),
        ("config".to_owned(), Some(a.clone()), Some(b.clone())),
        ("copy".to_owned(), None, Some(a.clone())),
        ("config".to_owned(), Some(b.clone()), None),
        ("batch-1".to_owned(), None, Some(a.clone())),
        ("copy".to_owned(), Some(a.clone()), None),
        ("batch-1".to_owned(), Some(a.clone()), None),
    ];
    assert_eq!(moves(&changes), expected);
    let seqs: Vec<u64> = changes.iter().map(|change| change.seq).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(store.last_change().await.unwrap(), 7);
    // Times are real and in order; no actor was named.
    let now = std::time::SystemTime::now();
    for pair in changes.windows(2) {
        assert!(pair[0].time <= pair[1].time);
    }
    for change in &changes {
        assert!(change.system_time() <= now);
        assert!(now.duration_since(change.system_time()).unwrap() < Duration::from_secs(60));
        assert_eq!(change.actor, None);
    }
}

#[tokio::test]
async fn a_batchs_changes_read_the_same_after_the_root_is_opened_again() {
    if common::memory_engine() {
        return; // nothing outlives the process's root
    }
    let (dir, root) = common::temp_root();
    let store = root.store("batches").unwrap();
    let a = store.store_at_label("single", b"a".to_vec()).await.unwrap();
    let b = store.store(b"b".to_vec()).await.unwrap();
    // One transaction of many label changes, then another that moves
    // some of them and removes others: each label changed keeps its own
    // entry, numbered in turn, with what it replaced.
    let batch: Vec<(String, Option<ContentRef>)> = (0..40)
        .map(|i| (format!("batch/{i:02}"), Some(a.clone())))
        .collect();
    store.set_labels(&batch).await.unwrap();
    let moves_back: Vec<_> = (0..40)
        .step_by(3)
        .map(|i| {
            let target = (i % 2 == 0).then(|| b.clone());
            (format!("batch/{i:02}"), Some(a.clone()), target)
        })
        .collect();
    assert!(store.compare_and_swap_labels(&moves_back).await.unwrap());
    let before = all_changes(&store).await;
    assert_eq!(before.len(), 1 + 40 + moves_back.len());
    let seqs: Vec<u64> = before.iter().map(|change| change.seq).collect();
    assert_eq!(seqs, (1..=before.len() as u64).collect::<Vec<_>>());
    // Within one change, the engine picks the order.
    let mut logged = moves(&before[41..]);
    logged.sort();
    let mut made = moves_back.clone();
    made.sort();
    assert_eq!(logged, made);
    let labels_before = store.list_labels().await.unwrap();

    let root_string = common::root_string_for(&root, dir.path(), "again");
    drop(store);
    drop(root);
    let root = StoreRoot::at(&root_string, Options::default()).unwrap();
    let store = root.store("batches").unwrap();
    let after = all_changes(&store).await;
    assert_eq!(moves(&after), moves(&before));
    let seqs_after: Vec<u64> = after.iter().map(|change| change.seq).collect();
    assert_eq!(seqs_after, seqs);
    assert_eq!(store.list_labels().await.unwrap(), labels_before);
}

#[tokio::test]
async fn a_page_starts_after_its_sequence_and_says_where_the_log_ends() {
    let (_dir, root) = common::temp_root();
    let store = root.store("paged").unwrap();
    for i in 0..25 {
        store
            .store_at_label(&format!("k{i:02}"), format!("v{i}").into_bytes())
            .await
            .unwrap();
    }
    let mut since = 0;
    let mut labels = Vec::new();
    loop {
        let page = store.changes(since, 10).await.unwrap();
        assert_eq!(page.last_seq, 25);
        assert_eq!(page.oldest_kept, 1);
        let Some(last) = page.changes.last() else {
            break;
        };
        assert!(page.changes.len() <= 10);
        since = last.seq;
        labels.extend(page.changes.iter().map(|change| change.label.clone()));
    }
    let expected: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
    assert_eq!(labels, expected);
    // A store with no change yet has an empty log at 0.
    let empty = root.store("untouched").unwrap();
    let page = empty.changes(0, 10).await.unwrap();
    assert_eq!((page.changes.len(), page.last_seq), (0, 0));
}

#[tokio::test]
async fn changes_name_the_actor_whose_handle_made_them() {
    let (_dir, root) = common::temp_root();
    let store = root.store("acted").unwrap();
    let alice = store.by_actor("alice");
    alice
        .store_at_label("by-alice", b"a".to_vec())
        .await
        .unwrap();
    store
        .store_at_label("by-nobody", b"n".to_vec())
        .await
        .unwrap();
    alice
        .set_labels(&[("by-alice-too".to_owned(), None)])
        .await
        .unwrap();
    alice.remove_label("by-nobody").await.unwrap();
    let long = "x".repeat(300);
    store
        .by_actor(&long)
        .store_at_label("by-long", b"l".to_vec())
        .await
        .unwrap();
    let actors: Vec<(String, Option<String>)> = all_changes(&store)
        .await
        .into_iter()
        .map(|change| (change.label, change.actor))
        .collect();
    assert_eq!(
        actors,
        vec![
            ("by-alice".to_owned(), Some("alice".to_owned())),
            ("by-nobody".to_owned(), None),
            ("by-nobody".to_owned(), Some("alice".to_owned())),
            ("by-long".to_owned(), Some("x".repeat(128))),
        ]
    );
    // An actor's first write, which makes the store, is named too.
    let fresh = root.store("acted-fresh").unwrap();
    fresh
        .by_actor("carol")
        .store_at_label("first", b"c".to_vec())
        .await
        .unwrap();
    let first = all_changes(&fresh).await;
    assert_eq!(first[0].actor.as_deref(), Some("carol"));
}

/// The newest entries of a store's log wait in the store's own row and
/// are filed in groups (local engine, schema 12): whichever side of that
/// an entry is on, every read of the log sees the same one log.
#[tokio::test]
async fn a_long_log_reads_the_same_page_by_page_by_label_and_by_actor() {
    let (_dir, root) = common::temp_root();
    let store = root.store("long").unwrap();
    let bob = store.by_actor("bob");
    let mut model: Vec<(String, ContentRef, Option<String>)> = Vec::new();
    for i in 0..150u32 {
        let label = format!("label/{}", i % 4);
        let (content, actor) = (format!("value {i}").into_bytes(), i % 3 == 0);
        let made = if actor {
            bob.store_at_label(&label, content).await.unwrap()
        } else {
            store.store_at_label(&label, content).await.unwrap()
        };
        model.push((label, made, actor.then(|| "bob".to_owned())));
    }
    let seen = |changes: &[LabelChange]| -> Vec<(u64, String, Option<ContentRef>, Option<String>)> {
        changes
            .iter()
            .map(|c| (c.seq, c.label.clone(), c.new.clone(), c.actor.clone()))
            .collect()
    };
    let expected: Vec<_> = model
        .iter()
        .enumerate()
        .map(|(i, (label, made, actor))| {
            (
                i as u64 + 1,
                label.clone(),
                Some(made.clone()),
                actor.clone(),
            )
        })
        .collect();
    assert_eq!(seen(&all_changes(&store).await), expected);
    for size in [1, 7, 64] {
        let (mut since, mut paged) = (0, Vec::new());
        loop {
            let page = store.changes(since, size).await.unwrap();
            let Some(last) = page.changes.last() else {
                break;
            };
            since = last.seq;
            paged.extend(seen(&page.changes));
        }
        assert_eq!(paged, expected, "pages of {size}");
    }
    for label in (0..4).map(|i| format!("label/{i}")) {
        let history = store.history(&label, usize::MAX).await.unwrap();
        let mut wanted: Vec<_> = expected.iter().filter(|e| e.1 == label).cloned().collect();
        wanted.reverse();
        assert_eq!(seen(&history), wanted, "history of {label}");
        for (i, entry) in expected.iter().enumerate().filter(|(_, e)| e.1 == label) {
            let at = store.label_at(&label, i as u64 + 1).await.unwrap();
            assert_eq!(at, entry.2, "{label} at {}", i + 1);
        }
    }
    // The same from a root opened afresh, as another process would see it.
    if !common::kept_by_this_process()
        && let Some(path) = root.path()
    {
        let again = StoreRoot::new(path).store("long").unwrap();
        assert_eq!(seen(&all_changes(&again).await), expected);
    }
}

#[tokio::test]
async fn reserved_stores_keep_no_log_and_the_log_counts_against_quota() {
    let (_dir, root) = common::temp_root();
    let owners = root.owners_store();
    let target = owners.store(b"owner record".to_vec()).await.unwrap();
    owners.label("someone/some-store", &target).await.unwrap();
    assert_eq!(owners.changes(0, 10).await.unwrap().last_seq, 0);

    let store = root.store("counted").unwrap();
    let before = store.stats().await.unwrap();
    store.store_at_label("label", b"x".to_vec()).await.unwrap();
    store.remove_label("label").await.unwrap();
    let after = store.stats().await.unwrap();
    assert_eq!(after.labels, 0);
    assert_eq!(after.changes, 2);
    let per_change = "label".len() as u64 + theater_store::CHANGE_OVERHEAD_BYTES;
    assert_eq!(after.change_footprint, 2 * per_change);
    assert_eq!(
        after.footprint() - before.footprint(),
        after.bytes + after.objects * theater_store::OBJECT_OVERHEAD_BYTES + 2 * per_change
    );
}

#[tokio::test]
async fn gc_trims_past_retention_and_a_trimmed_read_says_so() {
    let options = Options {
        change_retention: Duration::ZERO,
        change_retention_min: 3,
        ..Options::default()
    };
    let (_dir, root) = common::temp_root_with(options);
    let store = root.store("trimmed").unwrap();
    for i in 0..10 {
        store
            .store_at_label("counter", format!("{i}").into_bytes())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = store
        .collect_garbage(
            GcOptions {
                grace: Duration::from_secs(3600),
                dry_run: false,
            },
            (),
        )
        .await
        .unwrap();
    assert_eq!(report.changes_trimmed, 7);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.changes, 3);
    let page = store.changes(7, 100).await.unwrap();
    assert_eq!(page.oldest_kept, 8);
    assert_eq!(
        page.changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [8, 9, 10]
    );
    let error = store.changes(6, 100).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Trimmed);
    assert!(
        matches!(
            error,
            StoreError::ChangesTrimmed {
                since: 6,
                oldest: 8,
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("trimmed") && message.contains("8"),
        "{message}"
    );
    // New changes carry on from where the log was.
    store.remove_label("counter").await.unwrap();
    assert_eq!(store.last_change().await.unwrap(), 11);
    // A watch from a trimmed point ends with the error.
    let mut watch = store.watch("", 0);
    let first = watch.next().await.unwrap();
    assert_eq!(first.unwrap_err().kind(), ErrorKind::Trimmed);
    assert!(watch.next().await.is_none());
}

#[tokio::test]
async fn the_default_retention_keeps_recent_changes() {
    let (_dir, root) = common::temp_root();
    let store = root.store("kept").unwrap();
    for i in 0..5 {
        store
            .store_at_label(&format!("k{i}"), b"v".to_vec())
            .await
            .unwrap();
    }
    let report = store
        .collect_garbage(
            GcOptions {
                grace: Duration::ZERO,
                dry_run: false,
            },
            (),
        )
        .await
        .unwrap();
    assert_eq!(report.changes_trimmed, 0);
    assert_eq!(all_changes(&store).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_replays_then_follows_in_order_and_resumes_without_repeats() {
    let (_dir, root) = common::temp_root();
    let store = root.store("watched").unwrap();
    store.store_at_label("app/a", b"1".to_vec()).await.unwrap();
    store.store_at_label("other", b"1".to_vec()).await.unwrap();
    store.store_at_label("app/b", b"1".to_vec()).await.unwrap();

    let mut watch = store.watch("app/", 0);
    let replayed = [
        watch.next().await.unwrap().unwrap(),
        watch.next().await.unwrap().unwrap(),
    ];
    assert_eq!(
        replayed
            .iter()
            .map(|c| (c.seq, c.label.as_str()))
            .collect::<Vec<_>>(),
        [(1, "app/a"), (3, "app/b")]
    );
    // Writers in other tasks, after the watcher is waiting.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..50 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let label = if i % 2 == 0 { "app/even" } else { "noise" };
                store
                    .store_at_label(label, format!("{i}").into_bytes())
                    .await
                    .unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    while seen.len() < 25 {
        let change = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("a change within 10 s")
            .unwrap()
            .unwrap();
        seen.push(change);
    }
    writer.await.unwrap();
    assert!(seen.iter().all(|change| change.label == "app/even"));
    assert!(seen.windows(2).all(|pair| pair[0].seq < pair[1].seq));
    let contents: Vec<ContentRef> = seen.iter().map(|c| c.new.clone().unwrap()).collect();
    let mut expected = Vec::new();
    for i in (0..50).step_by(2) {
        expected.push(store.store(format!("{i}").into_bytes()).await.unwrap());
    }
    assert_eq!(contents, expected);

    // Resuming from the last seq seen gives what came after it only.
    let resume_from = seen[10].seq;
    let mut resumed = store.watch("app/", resume_from);
    let next = resumed.next().await.unwrap().unwrap();
    assert_eq!(next, seen[11]);
}

/// A child process that makes labelled writes to the root in `FEED_ROOT`.
#[tokio::test]
#[ignore = "run as a child process by a_watch_sees_writes_of_another_process"]
async fn feed_writer_child() {
    let root = std::env::var("FEED_ROOT").expect("started by the parent test");
    let name = std::env::var("FEED_CHILD").unwrap_or_else(|_| "child".into());
    let count: usize = std::env::var("FEED_COUNT").map_or(20, |n| n.parse().unwrap());
    let store = StoreRoot::at(&root, Options::default())
        .unwrap()
        .store("across")
        .unwrap()
        .by_actor(&name);
    for i in 0..count {
        store
            .store_at_label(
                &format!("from-{name}/{i:02}"),
                format!("{name} {i}").into_bytes(),
            )
            .await
            .unwrap();
    }
}

fn spawn_writer(
    root: &StoreRoot,
    dir: &std::path::Path,
    name: &str,
    count: usize,
) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "feed_writer_child", "--ignored", "--quiet"])
        .env("FEED_ROOT", common::root_string_for(root, dir, name))
        .env("FEED_CHILD", name)
        .env("FEED_COUNT", count.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_in_several_processes_are_watched_in_order_each_change_once() {
    if common::kept_by_this_process() {
        return; // Other processes cannot open a memory root.
    }
    let (dir, root) = common::temp_root();
    let store = root.store("across").unwrap();
    store.store_at_label("before", b"b".to_vec()).await.unwrap();
    let mut watch = store.watch("", 1);
    let children: Vec<_> = ["one", "two", "three"]
        .iter()
        .map(|name| spawn_writer(&root, dir.path(), name, 40))
        .collect();
    let mut seen = Vec::new();
    while seen.len() < 120 {
        let change = tokio::time::timeout(Duration::from_secs(60), watch.next())
            .await
            .expect("every change within 60 s")
            .unwrap()
            .unwrap();
        seen.push(change);
    }
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    // Sequences follow one another with no gap and no repeat.
    let seqs: Vec<u64> = seen.iter().map(|change| change.seq).collect();
    assert_eq!(seqs, (2..122).collect::<Vec<_>>());
    // Each writer's changes, in its own order, each named by its writer.
    for name in ["one", "two", "three"] {
        let labels: Vec<&str> = seen
            .iter()
            .filter(|change| change.actor.as_deref() == Some(name))
            .map(|change| change.label.as_str())
            .collect();
        let expected: Vec<String> = (0..40).map(|i| format!("from-{name}/{i:02}")).collect();
        assert_eq!(labels, expected);
    }
    // Nothing more comes.
    let more = tokio::time::timeout(Duration::from_millis(200), watch.next()).await;
    assert!(more.is_err(), "an extra change: {more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_writes_of_another_process() {
    if common::kept_by_this_process() {
        return; // Other processes cannot open a memory root.
    }
    let (dir, root) = common::temp_root();
    let store = root.store("across").unwrap();
    // The store exists, and the watch waits from its current end.
    store.store_at_label("before", b"b".to_vec()).await.unwrap();
    let since = store.last_change().await.unwrap();
    let mut watch = store.watch("from-child/", since);
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "feed_writer_child", "--ignored", "--quiet"])
        .env(
            "FEED_ROOT",
            common::root_string_for(&root, dir.path(), "child"),
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut labels = Vec::new();
    while labels.len() < 20 {
        let change = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("the child's changes within 30 s")
            .unwrap()
            .unwrap();
        assert_eq!(change.actor.as_deref(), Some("child"));
        labels.push(change.label);
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let expected: Vec<String> = (0..20).map(|i| format!("from-child/{i:02}")).collect();
    assert_eq!(labels, expected);
}

#[tokio::test]
async fn a_labels_history_lists_its_past_values_newest_first() {
    let (_dir, root) = common::temp_root();
    let store = root.store("versions").unwrap().by_actor("editor");
    let mut refs = Vec::new();
    for version in 0..5 {
        refs.push(
            store
                .store_at_label("doc", format!("version {version}").into_bytes())
                .await
                .unwrap(),
        );
        store
            .store_at_label("other", format!("noise {version}").into_bytes())
            .await
            .unwrap();
    }
    store.remove_label("doc").await.unwrap();
    let history = store.history("doc", 100).await.unwrap();
    let values: Vec<Option<ContentRef>> = history.iter().map(|c| c.new.clone()).collect();
    let mut expected: Vec<Option<ContentRef>> = refs.iter().cloned().map(Some).collect();
    expected.push(None);
    expected.reverse();
    assert_eq!(values, expected);
    assert!(history.windows(2).all(|pair| pair[0].seq > pair[1].seq));
    assert!(history.iter().all(|c| c.actor.as_deref() == Some("editor")));
    // Limited, and empty for a label never set.
    assert_eq!(store.history("doc", 2).await.unwrap(), history[..2]);
    assert!(store.history("never", 10).await.unwrap().is_empty());
    assert!(store.history("", 10).await.is_err());
}

#[tokio::test]
async fn history_reaches_back_across_many_other_changes() {
    let (_dir, root) = common::temp_root();
    let store = root.store("busy").unwrap();
    let first = store
        .store_at_label("doc", b"first".to_vec())
        .await
        .unwrap();
    let noise = store.store(b"noise".to_vec()).await.unwrap();
    let batch: Vec<(String, Option<ContentRef>)> = (0..9_000)
        .map(|i| (format!("noise/{i:05}"), Some(noise.clone())))
        .collect();
    store.set_labels(&batch).await.unwrap();
    let second = store
        .store_at_label("doc", b"second".to_vec())
        .await
        .unwrap();
    let history = store.history("doc", 10).await.unwrap();
    let values: Vec<(u64, Option<ContentRef>)> =
        history.into_iter().map(|c| (c.seq, c.new)).collect();
    assert_eq!(values, [(9_002, Some(second)), (1, Some(first))]);
}

#[tokio::test]
async fn labels_read_as_of_a_point_and_a_revert_puts_them_back_as_new_changes() {
    let (_dir, root) = common::temp_root();
    let store = root.store("config").unwrap();
    let one = store.store_at_label("app/a", b"a1".to_vec()).await.unwrap();
    let b = store.store_at_label("app/b", b"b1".to_vec()).await.unwrap();
    store.store_at_label("other", b"o1".to_vec()).await.unwrap();
    let good = store.last_change().await.unwrap();
    // A bad deploy: a changed, b removed, c added; outside the prefix too.
    let two = store.store_at_label("app/a", b"a2".to_vec()).await.unwrap();
    store.remove_label("app/b").await.unwrap();
    store.store_at_label("app/c", b"c1".to_vec()).await.unwrap();
    store.store_at_label("other", b"o2".to_vec()).await.unwrap();

    let then = store.labels_at("app/", good).await.unwrap();
    let then: Vec<(String, ContentRef)> =
        then.into_iter().map(|e| (e.label, e.content_ref)).collect();
    assert_eq!(
        then,
        [
            ("app/a".to_owned(), one.clone()),
            ("app/b".to_owned(), b.clone())
        ]
    );
    assert!(store.labels_at("app/", 0).await.unwrap().is_empty());
    assert_eq!(
        store.label_at("app/a", good).await.unwrap(),
        Some(one.clone())
    );
    assert_eq!(store.label_at("app/c", good).await.unwrap(), None);
    assert_eq!(
        store.label_at("app/a", u64::MAX).await.unwrap(),
        Some(two.clone())
    );

    // A dry run says what would move and moves nothing.
    let planned = store.revert_to("app/", good, true).await.unwrap();
    assert_eq!(planned.len(), 3);
    assert_eq!(
        store.get_by_label("app/a").await.unwrap(),
        Some(two.clone())
    );
    let before_revert = store.last_change().await.unwrap();
    let moved = store
        .by_actor("operator")
        .revert_to("app/", good, false)
        .await
        .unwrap();
    assert_eq!(moved, planned);
    assert_eq!(
        store.get_by_label("app/a").await.unwrap(),
        Some(one.clone())
    );
    assert_eq!(store.get_by_label("app/b").await.unwrap(), Some(b.clone()));
    assert_eq!(store.get_by_label("app/c").await.unwrap(), None);
    // Outside the prefix, nothing moved.
    assert_eq!(
        store
            .get_content_by_label("other")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"o2"[..])
    );
    // The revert is in the log, named, and can itself be reverted.
    let logged = store.changes(before_revert, 10).await.unwrap().changes;
    assert_eq!(logged.len(), 3);
    assert!(
        logged
            .iter()
            .all(|c| c.actor.as_deref() == Some("operator"))
    );
    store.revert_to("app/", before_revert, false).await.unwrap();
    assert_eq!(store.get_by_label("app/a").await.unwrap(), Some(two));
    assert!(
        store
            .revert_to("app/", before_revert, false)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_point_older_than_the_log_keeps_is_refused_naming_the_oldest_kept() {
    let options = Options {
        change_retention: Duration::ZERO,
        change_retention_min: 2,
        ..Options::default()
    };
    let (_dir, root) = common::temp_root_with(options);
    let store = root.store("old").unwrap();
    for i in 0..6 {
        store
            .store_at_label("x", format!("{i}").into_bytes())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let gc = GcOptions {
        grace: Duration::from_secs(3600),
        dry_run: false,
    };
    store.collect_garbage(gc, ()).await.unwrap();
    let error = store.labels_at("", 1).await.unwrap_err();
    assert!(
        matches!(error, StoreError::ChangesTrimmed { oldest: 5, .. }),
        "{error:?}"
    );
    assert_eq!(
        store.revert_to("", 2, false).await.unwrap_err().kind(),
        ErrorKind::Trimmed
    );
    assert_eq!(store.labels_at("", 4).await.unwrap().len(), 1);
}

/// A small deterministic generator, so that a failing run can be replayed.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test]
async fn reads_at_random_points_agree_with_a_model_of_every_point() {
    let (_dir, root) = common::temp_root();
    let store = root.store("points").unwrap();
    let mut rng = XorShift(0x5eed_1234_abcd_0001);
    // The model: the labels right after each change (index = seq).
    let mut model: Vec<std::collections::BTreeMap<String, ContentRef>> = vec![Default::default()];
    for _ in 0..300 {
        let label = format!("k/{}", rng.below(12));
        let mut now = model.last().unwrap().clone();
        let seq_before = store.last_change().await.unwrap();
        match rng.below(4) {
            0 => {
                store.remove_label(&label).await.unwrap();
                now.remove(&label);
            }
            // A value that may come again, so that labels revisit content.
            _ => {
                let value = format!("value {}", rng.below(20));
                let stored = store
                    .store_at_label(&label, value.into_bytes())
                    .await
                    .unwrap();
                now.insert(label, stored);
            }
        }
        // A write that changes nothing logs nothing.
        if store.last_change().await.unwrap() > seq_before {
            model.push(now);
        }
    }
    assert_eq!(store.last_change().await.unwrap() as usize, model.len() - 1);
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Collected with no grace: history keeps what every point names.
    collect_now(&store).await;
    for _ in 0..60 {
        let seq = rng.below(model.len() as u64);
        let then = store.at(theater_store::Point::After(seq)).await.unwrap();
        let expected = &model[seq as usize];
        let listed = then.list_labels_page("k/", None, 100).await.unwrap();
        let listed: std::collections::BTreeMap<String, ContentRef> = listed
            .into_iter()
            .map(|entry| (entry.label, entry.content_ref))
            .collect();
        assert_eq!(&listed, expected, "labels right after change {seq}");
        let label = format!("k/{}", rng.below(12));
        let value = then.get_content_by_label(&label).await.unwrap();
        let wanted = match expected.get(&label) {
            Some(content_ref) => Some(store.get(content_ref).await.unwrap()),
            None => None,
        };
        assert_eq!(value, wanted, "{label} right after change {seq}");
        // Paging goes on after the last label of a page.
        let first = then.list_labels_page("k/", None, 2).await.unwrap();
        if let Some(last) = first.last() {
            let rest = then
                .list_labels_page("k/", Some(&last.label), 100)
                .await
                .unwrap();
            assert_eq!(first.len() + rest.len(), expected.len());
        }
    }
}

#[tokio::test]
async fn a_time_names_the_last_change_made_by_then() {
    let (_dir, root) = common::temp_root();
    let store = root.store("times").unwrap();
    let before_any = std::time::SystemTime::now() - Duration::from_secs(1);
    let mut between = Vec::new();
    for i in 0..6 {
        store
            .store_at_label("clock", format!("tick {i}").into_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
        between.push(std::time::SystemTime::now());
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    use theater_store::Point;
    assert_eq!(
        store.resolve_point(Point::Time(before_any)).await.unwrap(),
        0
    );
    for (i, time) in between.iter().enumerate() {
        assert_eq!(
            store.resolve_point(Point::Time(*time)).await.unwrap(),
            i as u64 + 1
        );
        let then = store.at(Point::Time(*time)).await.unwrap();
        assert_eq!(
            then.get_content_by_label("clock").await.unwrap().unwrap(),
            format!("tick {i}").into_bytes()
        );
    }
    assert_eq!(
        store.resolve_point(Point::After(4)).await.unwrap(),
        4,
        "a sequence names itself"
    );
    // A store exported as it was at a point holds its labels then.
    let (summary, package) = store
        .export_package_at(2, None, Vec::new(), ())
        .await
        .unwrap();
    assert_eq!(summary.labels, 1);
    let copy = root.store("times-copy").unwrap();
    copy.import_package(std::io::Cursor::new(package), ())
        .await
        .unwrap();
    assert_eq!(
        copy.get_content_by_label("clock").await.unwrap().unwrap(),
        b"tick 1"
    );
}

#[tokio::test]
async fn a_time_before_the_trimmed_log_is_refused_naming_the_oldest_kept() {
    let (_dir, root) = common::temp_root_with(Options {
        change_retention: Duration::ZERO,
        change_retention_min: 2,
        ..Options::default()
    });
    let store = root.store("trimmed").unwrap();
    let early = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    for i in 0..5 {
        store
            .store_at_label("l", format!("{i}").into_bytes())
            .await
            .unwrap();
    }
    collect_now(&store).await;
    for point in [
        theater_store::Point::Time(early),
        theater_store::Point::After(1),
    ] {
        let error = store.at(point).await.unwrap_err();
        assert!(
            matches!(error, StoreError::ChangesTrimmed { oldest: 4, .. }),
            "{point:?}: {error}"
        );
    }
    assert_eq!(
        store
            .at(theater_store::Point::After(3))
            .await
            .unwrap()
            .get_content_by_label("l")
            .await
            .unwrap()
            .unwrap(),
        b"2"
    );
}

/// Garbage collection with no grace period.
async fn collect_now(store: &ContentStore) {
    let gc = GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    };
    store
        .collect_garbage(gc, std::sync::Arc::new(()))
        .await
        .unwrap();
}
