//! `wasi:keyvalue/watcher` served from the change log: the kv-watcher
//! example (guest-examples/kv-watcher) mirrors a bucket and journals each
//! call, so what it was told, and in which order, can be read back.

use std::time::Duration;

use theater_store::{ContentStore, LabelChange};
use theater_store_examples::KV_WATCHER;
use theater_store_host::{
    Access, ActorFailure, ChainRecording, Grants, Limits, RunOptions, StartAt, WatchOptions,
    WatchProgress, WatchedBucket, WatcherRun,
};
use tokio::sync::watch;

use crate::Harness;

/// Reads `src`, writes `mirror`, records as actor `mirror-1`.
fn options() -> RunOptions {
    RunOptions {
        grants: Grants::none()
            .store("src", Access::ReadOnly)
            .store("mirror", Access::ReadWrite),
        chain: ChainRecording::Actor("mirror-1".into()),
        ..RunOptions::default()
    }
}

fn watching(prefix: &str, start: StartAt) -> WatchOptions {
    WatchOptions {
        buckets: vec![WatchedBucket {
            bucket: "src".into(),
            prefix: prefix.into(),
        }],
        start,
        output: None,
    }
}

/// Runs the watcher until it has delivered (or skipped) the change with
/// sequence `until`, then stops it between two calls.
async fn watch_until(
    h: &Harness,
    options: RunOptions,
    watch: WatchOptions,
    until: u64,
) -> WatcherRun {
    let (seen, mut seen_rx) = watch::channel(0u64);
    let stop = async move {
        let _ = seen_rx.wait_for(|seq| *seq >= until).await;
    };
    let watcher = h.load(KV_WATCHER);
    let run = h
        .host
        .run_watcher(&watcher, options, watch, stop, |progress| match progress {
            WatchProgress::Delivered { change, .. } | WatchProgress::Skipped { change, .. } => {
                seen.send_replace(change.seq);
            }
            WatchProgress::Started { after, .. } => {
                seen.send_replace(after);
            }
        });
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the watcher stops once it has delivered what was asked")
}

/// The journal lines the watcher wrote, in order.
async fn journal(mirror: &ContentStore) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in mirror
        .list_labels_page("journal/", None, 100_000)
        .await
        .unwrap()
    {
        let bytes = mirror.get(&entry.content_ref).await.unwrap();
        lines.push(String::from_utf8(bytes).unwrap());
    }
    lines
}

/// What the journal says for `change`.
fn journal_line(src: &ContentStore, change: &LabelChange) -> impl Future<Output = String> {
    let (src, change) = (src.clone(), change.clone());
    async move {
        match &change.new {
            Some(target) => format!(
                "set {} {}",
                change.label,
                src.get(target).await.unwrap().len()
            ),
            None => format!("delete {}", change.label),
        }
    }
}

async fn all_changes(src: &ContentStore) -> Vec<LabelChange> {
    src.changes(0, 10_000).await.unwrap().changes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_is_told_each_change_once_in_order_and_resumes_where_it_stopped() {
    let h = Harness::start();
    let src = h.root().store("src").unwrap();
    let mirror = h.root().store("mirror").unwrap();
    src.store_at_label("before", b"made before any watcher".to_vec())
        .await
        .unwrap();

    // Four writers at once while the watcher runs: sets, overwrites and
    // removals, interleaved in whatever order they commit.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let src = src.clone();
            tokio::spawn(async move {
                for i in 0..30 {
                    let key = format!("w{w}/k{}", i % 7);
                    if i % 5 == 4 {
                        src.remove_label(&key).await.unwrap();
                    } else {
                        let value = format!("writer {w} round {i}").repeat(i + 1);
                        src.store_at_label(&key, value.into_bytes()).await.unwrap();
                    }
                }
            })
        })
        .collect();
    // From the start of the log, stopping part way.
    let first = watch_until(&h, options(), watching("", StartAt::After(0)), 60).await;
    first.outcome.unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    // Changes made while no watcher runs come on the next run.
    src.store_at_label("after", b"made while stopped".to_vec())
        .await
        .unwrap();
    src.remove_label("before").await.unwrap();
    let last = src.last_change().await.unwrap();
    assert!(last > 60, "{last}");
    let second = watch_until(&h, options(), watching("", StartAt::Resume), last).await;
    second.outcome.unwrap();

    let changes = all_changes(&src).await;
    let mut expected = Vec::new();
    for change in &changes {
        expected.push(journal_line(&src, change).await);
    }
    assert_eq!(journal(&mirror).await, expected);
    assert_eq!(first.delivered + second.delivered, changes.len() as u64);
    // The mirror holds what the source holds (and its journal).
    let labels = src.list_labels_page("", None, 10_000).await.unwrap();
    for entry in &labels {
        assert_eq!(
            mirror.get_by_label(&entry.label).await.unwrap(),
            Some(entry.content_ref.clone()),
            "{}",
            entry.label
        );
    }
    let mirrored = mirror.list_labels_page("", None, 10_000).await.unwrap();
    let copies = mirrored
        .iter()
        .filter(|e| !e.label.starts_with("journal"))
        .count();
    assert_eq!(copies, labels.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_watcher_starts_with_the_changes_made_from_then_on_and_only_under_its_prefix() {
    let h = Harness::start();
    let src = h.root().store("src").unwrap();
    let mirror = h.root().store("mirror").unwrap();
    src.store_at_label("keep/old", b"before the watcher".to_vec())
        .await
        .unwrap();

    let host = h.host.clone();
    let watcher = h.load(KV_WATCHER);
    let (started, mut started_rx) = watch::channel(false);
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        host.run_watcher(
            &watcher,
            options(),
            watching("keep/", StartAt::Resume),
            async move {
                let _ = stop_rx.await;
            },
            move |progress| {
                if let WatchProgress::Started { .. } = progress {
                    started.send_replace(true);
                }
            },
        )
        .await
    });
    started_rx.wait_for(|s| *s).await.unwrap();
    src.store_at_label("skip/x", b"not watched".to_vec())
        .await
        .unwrap();
    src.store_at_label("keep/new", b"watched".to_vec())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while mirror.get_by_label("keep/new").await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "keep/new never mirrored"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    let run = run.await.unwrap();
    run.outcome.unwrap();
    assert_eq!(run.delivered, 1);
    assert_eq!(journal(&mirror).await, ["set keep/new 7"]);
    assert_eq!(mirror.get_by_label("skip/x").await.unwrap(), None);
    assert_eq!(mirror.get_by_label("keep/old").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_needs_a_grant_on_each_bucket_it_watches() {
    let h = Harness::start();
    h.root().store("src").unwrap();
    let refused = h
        .host
        .run_watcher(
            &h.load(KV_WATCHER),
            RunOptions {
                grants: Grants::none().store("mirror", Access::ReadWrite),
                ..RunOptions::default()
            },
            watching("", StartAt::Resume),
            std::future::pending(),
            |_| panic!("a refused watcher starts nothing"),
        )
        .await;
    let Err(ActorFailure::InvalidOptions(message)) = refused.outcome else {
        panic!("{:?}", refused.outcome);
    };
    assert!(
        message.contains("bucket src") && message.contains("grant"),
        "{message}"
    );

    // A component that is no watcher is refused too, naming what it lacks.
    let not_a_watcher = h
        .host
        .run_watcher(
            &h.load(theater_store_examples::KV_COUNTER),
            options(),
            watching("", StartAt::Resume),
            std::future::pending(),
            |_| {},
        )
        .await;
    let Err(ActorFailure::InvalidOptions(message)) = not_a_watcher.outcome else {
        panic!("{:?}", not_a_watcher.outcome);
    };
    assert!(message.contains("wasi:keyvalue/watcher"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_traps_is_stopped_and_is_given_the_same_change_next_time() {
    let h = Harness::start();
    let src = h.root().store("src").unwrap();
    let mirror = h.root().store("mirror").unwrap();
    src.store_at_label("a", b"fine".to_vec()).await.unwrap();
    src.store_at_label("bad", b"panic".to_vec()).await.unwrap();
    src.store_at_label("c", b"after".to_vec()).await.unwrap();

    for _ in 0..2 {
        let run = watch_until(&h, options(), watching("", StartAt::After(0)), 3).await;
        let Err(ActorFailure::Trapped(message)) = &run.outcome else {
            panic!("{:?}", run.outcome);
        };
        assert!(
            run.stderr.contains("told to panic by key bad"),
            "{message}\n{}",
            run.stderr
        );
        // Resuming meets the same change: it was never marked delivered.
        let again = watch_until(&h, options(), watching("", StartAt::Resume), 3).await;
        assert!(matches!(again.outcome, Err(ActorFailure::Trapped(_))));
        assert_eq!(again.delivered, 0);
    }
    assert_eq!(journal(&mirror).await, ["set a 4", "set a 4"]);
    // The operator moves it past the change that fails.
    let past = watch_until(&h, options(), watching("", StartAt::After(2)), 3).await;
    past.outcome.unwrap();
    assert_eq!(journal(&mirror).await, ["set a 4", "set a 4", "set c 5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_has_the_timeout_of_its_own_and_a_call_past_it_stops_the_watcher() {
    let h = Harness::start();
    let src = h.root().store("src").unwrap();
    let mirror = h.root().store("mirror").unwrap();
    let timeout = Duration::from_millis(400);
    let limited = RunOptions {
        limits: Limits {
            timeout,
            ..Limits::default()
        },
        ..options()
    };
    let host = h.host.clone();
    let watcher = h.load(KV_WATCHER);
    let run = tokio::spawn(async move {
        host.run_watcher(
            &watcher,
            limited,
            watching("", StartAt::After(0)),
            std::future::pending(),
            |_| {},
        )
        .await
    });
    // The run outlives its timeout several times over; each call is quick.
    for i in 0..3 {
        tokio::time::sleep(timeout).await;
        src.store_at_label(&format!("k{i}"), b"quick".to_vec())
            .await
            .unwrap();
    }
    src.store_at_label("slow", b"spin".to_vec()).await.unwrap();
    let run = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("a spinning call is stopped at its deadline")
        .unwrap();
    assert!(
        matches!(run.outcome, Err(ActorFailure::TimedOut(t)) if t == timeout),
        "{:?}",
        run.outcome
    );
    assert_eq!(run.delivered, 3);
    assert_eq!(journal(&mirror).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_behind_a_trimmed_log_is_stopped_with_the_oldest_change_kept() {
    let h = Harness::start();
    let src = h.root().store("src").unwrap();
    h.root().store("mirror").unwrap();
    src.store_at_label("a", b"1".to_vec()).await.unwrap();
    // A position past the end of the log: as after the store was removed
    // and made again.
    let run = watch_until(&h, options(), watching("", StartAt::After(5)), 6).await;
    let Err(ActorFailure::WatchStopped(message)) = &run.outcome else {
        panic!("{:?}", run.outcome);
    };
    assert!(
        message.contains("bucket src") && message.contains("oldest change kept"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_follows_a_shared_root() {
    let h = Harness::start_shared();
    let src = h.root().store("src").unwrap();
    let mirror = h.root().store("mirror").unwrap();
    for i in 0..5 {
        src.store_at_label(&format!("k{i}"), vec![b'x'; i + 1])
            .await
            .unwrap();
    }
    src.remove_label("k0").await.unwrap();
    let run = watch_until(&h, options(), watching("", StartAt::After(0)), 6).await;
    run.outcome.unwrap();
    assert_eq!(
        journal(&mirror).await,
        [
            "set k0 1",
            "set k1 2",
            "set k2 3",
            "set k3 4",
            "set k4 5",
            "delete k0"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_waits_out_an_object_store_outage_and_misses_nothing() {
    let _alone = crate::servers_to_myself();
    let services = theater_store_testing::Services::shared();
    services.configure_environment();
    let dir = tempfile::tempdir().unwrap();
    let root_string = services.new_root(&dir.path().join("writer-cache"));
    let writer =
        theater_store::StoreRoot::at(&root_string, theater_store::Options::default()).unwrap();
    let src = writer.store("src").unwrap();
    // Values over the inline size live in the object store, not in rows.
    for i in 0..3 {
        src.store_at_label(&format!("k{i}"), vec![b'x'; (64 << 10) + i])
            .await
            .unwrap();
    }
    // The watcher's host has a cache of its own (empty): it must read each
    // value from the object store, which is down when it starts.
    services.kill_s3();
    let h = Harness::on_shared_root(
        tempfile::tempdir().unwrap(),
        &format!("{root_string}-watcher"),
        None,
    );
    let run = tokio::spawn(async move {
        let run = watch_until(&h, options(), watching("", StartAt::After(0)), 3).await;
        (h, run)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!run.is_finished(), "the watcher waits for the object store");
    services.restart_s3();
    let (h, run) = run.await.unwrap();
    assert_eq!(run.delivered, 3, "{:?}", run.outcome);
    run.outcome.unwrap();
    let mirror = h.root().store("mirror").unwrap();
    assert_eq!(
        journal(&mirror).await,
        ["set k0 65536", "set k1 65537", "set k2 65538"]
    );
}
