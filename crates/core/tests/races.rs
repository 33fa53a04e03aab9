//! Races: several OS processes, each with several tasks, hit one store at
//! once: identical content, compare-and-swap increments of one counter,
//! listing while writing, and garbage collection while writing. The final
//! state must account for every acknowledged operation: the collector runs
//! with no grace period, so it may take anything unlabelled at any moment,
//! but never anything a label reaches.
//!
//! The test re-runs this test binary as child processes, selecting the
//! ignored `race_child` test by name.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use theater_store::{ContentRef, ContentStore, GcOptions, Options, StoreError, StoreRoot};

mod common;

const WRITERS: usize = 4;
const TASKS_PER_WRITER: usize = 4;
const WRITES_PER_TASK: usize = 25;
const INCREMENTS_PER_TASK: usize = 8;

/// Unwraps a result, mapping `NotFound` to `None`: with a zero grace
/// period, the collector may take unlabelled content (an old counter value,
/// or content just stored and not yet labelled) at any moment, and the
/// caller then retries.
fn unless_collected<T>(result: theater_store::Result<T>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(StoreError::NotFound { .. }) => None,
        Err(error) => panic!("{error}"),
    }
}

async fn increment(store: &ContentStore) {
    loop {
        let current = store.get_by_label("counter").await.unwrap();
        let value: u64 = match &current {
            Some(r) => match unless_collected(store.get(r).await) {
                Some(bytes) => String::from_utf8(bytes).unwrap().parse().unwrap(),
                None => continue,
            },
            None => 0,
        };
        let next = store.store((value + 1).to_string()).await.unwrap();
        if unless_collected(
            store
                .compare_and_swap_label("counter", current.as_ref(), Some(&next))
                .await,
        ) == Some(true)
        {
            return;
        }
    }
}

/// Stores and labels, storing again if the collector took the content first.
async fn store_and_label(store: &ContentStore, label: &str, content: &str) {
    loop {
        let content_ref = store.store(content).await.unwrap();
        if unless_collected(store.label(label, &content_ref).await).is_some() {
            return;
        }
    }
}

/// What the `i`th write of a task stores under `label`. Every fourth body
/// is over the inline threshold: index rows and files race alike.
fn body(label: &str, i: usize) -> String {
    format!("{label} body ").repeat(if i.is_multiple_of(4) { 2_000 } else { 1 })
}

/// One writer task: labelled writes, shared identical content, counter
/// increments, and listings that must show everything it wrote so far.
async fn write_task(store: ContentStore, child: String, task: usize) {
    for i in 0..WRITES_PER_TASK {
        let label = format!("w:{child}:{task}:{i:03}");
        store_and_label(&store, &label, &body(&label, i)).await;
        store_and_label(
            &store,
            &format!("identical:{child}:{task}"),
            "identical in every process",
        )
        .await;
        if i < INCREMENTS_PER_TASK {
            increment(&store).await;
        }
        let prefix = format!("w:{child}:{task}:");
        let listed = store
            .list_labels_page(&prefix, None, usize::MAX)
            .await
            .unwrap();
        assert_eq!(listed.len(), i + 1, "a listing lost this task's own writes");
        assert!(
            listed.windows(2).all(|pair| pair[0].label < pair[1].label),
            "a listing is out of order"
        );
    }
}

/// A child process: a writer with several tasks, or a garbage collector that
/// runs until the stop file appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by processes_and_tasks_racing_lose_nothing"]
async fn race_child() {
    let root = std::env::var("RACE_ROOT").expect("started by the parent test");
    let dir = std::env::var("RACE_DIR").unwrap();
    let role = std::env::var("RACE_ROLE").unwrap();
    // The collector keeps no history: content a label moved off is
    // collectable at once, so collections race every relabel too.
    let options = match role.as_str() {
        "gc" => Options {
            change_retention: Duration::ZERO,
            change_retention_min: 0,
            ..Options::default()
        },
        _ => Options::default(),
    };
    let store = StoreRoot::at(&root, options)
        .unwrap()
        .store("shared")
        .unwrap();
    if role == "gc" {
        let stop = std::path::Path::new(&dir).join("stop-gc");
        // No grace at all: everything unlabelled is fair game at once, so
        // collections race every publish and every relabel.
        let options = GcOptions {
            grace: Duration::ZERO,
            dry_run: false,
        };
        let collected = std::path::Path::new(&dir).join("gc-collected");
        let mut removed = 0;
        while !stop.exists() {
            removed += store
                .collect_garbage(options, Arc::new(()))
                .await
                .unwrap()
                .objects_removed;
            if removed > 0 && !collected.exists() {
                std::fs::write(&collected, "").unwrap();
            }
        }
        println!("collector removed {removed} objects");
        assert!(removed > 0, "the collector never collected anything");
        return;
    }
    let tasks: Vec<_> = (0..TASKS_PER_WRITER)
        .map(|task| tokio::spawn(write_task(store.clone(), role.clone(), task)))
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// A child process on `root` (each with its own connections and, on the
/// shared engine, its own read cache, as on another host).
fn spawn_child(root: &StoreRoot, dir: &std::path::Path, role: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "race_child", "--ignored", "--quiet"])
        .env("RACE_ROOT", common::root_string_for(root, dir, role))
        .env("RACE_DIR", dir)
        .env("RACE_ROLE", role)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(child: std::process::Child) {
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "a child process failed:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[tokio::test]
async fn processes_and_tasks_racing_lose_nothing() {
    if common::kept_by_this_process() {
        return; // Nothing to do in memory: other processes cannot open a memory root.
    }
    let (dir, root) = common::temp_root();
    let collector = spawn_child(&root, dir.path(), "gc");
    let writers: Vec<_> = (0..WRITERS)
        .map(|n| spawn_child(&root, dir.path(), &n.to_string()))
        .collect();
    for writer in writers {
        wait_for(writer);
    }
    // Writers can finish before the collector has removed anything (old
    // counter values stay unreachable, so it will): let it, then stop it.
    let collected = dir.path().join("gc-collected");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !collected.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(dir.path().join("stop-gc"), "").unwrap();
    wait_for(collector);

    let store = root.store("shared").unwrap();
    for child in 0..WRITERS {
        for task in 0..TASKS_PER_WRITER {
            for i in 0..WRITES_PER_TASK {
                let label = format!("w:{child}:{task}:{i:03}");
                let content = store.get_content_by_label(&label).await.unwrap();
                assert_eq!(content, Some(body(&label, i).into_bytes()), "{label} lost");
            }
            let shared = store
                .get_content_by_label(&format!("identical:{child}:{task}"))
                .await
                .unwrap();
            assert_eq!(shared.as_deref(), Some(&b"identical in every process"[..]));
        }
    }
    let counter = store
        .get_content_by_label("counter")
        .await
        .unwrap()
        .unwrap();
    let increments = WRITERS * TASKS_PER_WRITER * INCREMENTS_PER_TASK;
    assert_eq!(
        String::from_utf8(counter).unwrap(),
        increments.to_string(),
        "a compare-and-swap update was lost"
    );

    // One copy of the shared content, totals that match what is listed, and a clean verify.
    let identical = ContentRef::for_content(b"identical in every process");
    assert!(store.exists(&identical).await.unwrap());
    let stats = store.stats().await.unwrap();
    assert_eq!(
        stats.labels as usize,
        WRITERS * TASKS_PER_WRITER * (WRITES_PER_TASK + 1) + 1
    );
    let listed = store.list_all_content().await.unwrap();
    assert_eq!(listed.len() as u64, stats.objects);
    let mut total = 0;
    for content_ref in &listed {
        total += store.get(content_ref).await.unwrap().len() as u64;
    }
    assert_eq!(store.calculate_total_size().await.unwrap(), total);
    assert!(store.verify(Arc::new(())).await.unwrap().is_clean());
}

/// Reads are answered from memory while nothing changes, so a second root
/// on the same directory (as another process would open it: its own
/// connections, its own remembered reads) must still see every write the
/// moment it is acknowledged, and never go back to an older value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_reads_see_every_acknowledged_write_from_another_root() {
    let (dir, root) = common::temp_root();
    let writer = root.store("shared").unwrap();
    let other = common::root_string_for(&root, dir.path(), "reader");
    let reader = StoreRoot::at(&other, Options::default())
        .unwrap()
        .store("shared")
        .unwrap();
    let value = |bytes: Option<Vec<u8>>| -> u64 {
        bytes.map_or(0, |b| String::from_utf8(b).unwrap().parse().unwrap())
    };
    for i in 1..=200u64 {
        writer.store_at_label("tick", i.to_string()).await.unwrap();
        // Twice: the second read is answered from memory.
        for _ in 0..2 {
            let seen = value(reader.get_content_by_label("tick").await.unwrap());
            assert_eq!(seen, i, "a read missed an acknowledged write");
        }
    }

    // Now concurrently: the reader's view only moves forward, and after
    // the writer is done it sees the last value.
    let last = 2_000u64;
    let writing = tokio::spawn(async move {
        for i in 201..=last {
            writer.store_at_label("tick", i.to_string()).await.unwrap();
        }
    });
    let mut seen = 200;
    while !writing.is_finished() {
        let now = value(reader.get_content_by_label("tick").await.unwrap());
        assert!(now >= seen, "a read went back from {seen} to {now}");
        seen = now;
    }
    writing.await.unwrap();
    assert_eq!(
        value(reader.get_content_by_label("tick").await.unwrap()),
        last
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_collections_and_verifies_never_fail_on_each_others_removals() {
    let (_dir, root) = common::temp_root();
    // The race is in listing files another collection is removing: a few
    // rounds give it its chances.
    for round in 0..4 {
        let store = root.store(&format!("s{round}")).unwrap();
        for i in 0..300 {
            let content = format!("garbage {i} ").repeat(2_000);
            store.store(content).await.unwrap();
        }
        let kept = store
            .store_at_label("keep", "kept ".repeat(5_000))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let options = GcOptions {
            grace: Duration::ZERO,
            dry_run: false,
        };
        let (a, b, c) = tokio::join!(
            store.collect_garbage(options, Arc::new(())),
            store.collect_garbage(options, Arc::new(())),
            store.verify(Arc::new(())),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.objects_removed + b.objects_removed, 300, "{a:?} {b:?}");
        let verified = c.unwrap();
        assert!(verified.missing.is_empty(), "{verified:?}");
        assert_eq!(store.get(&kept).await.unwrap().len(), 25_000);
        assert!(store.verify(Arc::new(())).await.unwrap().is_clean());
    }
}
