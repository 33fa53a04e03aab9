//! One meter per actor on every path: chain events, streamed writers,
//! keyvalue swaps and open streams all count against the same limits,
//! whatever interface the actor uses.

use serde_json::{Value, json};
use theater_store::{MAX_EVENT_BYTES, OBJECT_OVERHEAD_BYTES};
use theater_store_examples::{HOSTILE, KV_COUNTER};
use theater_store_host::{Access, ChainRecording, CommandOutput, Grants, Limits, RunOptions};

use crate::Harness;

const MIB: u64 = 1 << 20;

/// Runs a hostile attack under `quota` bytes of store and actor quota,
/// recording in `actor`'s chain; returns the actor's final state.
async fn attack_under_quota(h: &Harness, quota: u64, actor: &str, param: Value) -> Value {
    let options = RunOptions {
        limits: Limits {
            max_actor_bytes: quota,
            max_store_bytes: quota,
            ..Limits::default()
        },
        chain: ChainRecording::Actor(actor.to_owned()),
        ..RunOptions::default()
    };
    h.run(&h.load(HOSTILE), options, None, &param).await
}

/// Runs a hostile attack granted read-write access to `store`, under
/// default limits; returns the actor's final state.
async fn attack_granted(h: &Harness, store: &str, param: Value) -> Value {
    let options = RunOptions {
        grants: Grants::none().store(store, Access::ReadWrite),
        ..RunOptions::default()
    };
    h.run(&h.load(HOSTILE), options, None, &param).await
}

/// The attempts an attack reported, as (what, error) pairs.
fn attempts(state: &Value) -> Vec<(String, Option<String>)> {
    state["attempts"]
        .as_array()
        .expect("attempts are reported")
        .iter()
        .map(|attempt| {
            (
                attempt["what"].as_str().unwrap().to_owned(),
                attempt["error"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_cheap_calls_stops_at_the_actor_quota_because_each_is_recorded() {
    let h = Harness::start();
    let quota = MIB;
    let state = attack_under_quota(&h, quota, "flooder", json!({"attack": "call-flood"})).await;
    let attempts = attempts(&state);
    let (what, error) = &attempts[0];
    let error = error
        .as_deref()
        .unwrap_or_else(|| panic!("{what} was allowed"));
    assert!(what.starts_with("exists after "), "{what}");
    assert!(error.contains("actor quota exceeded"), "{error}");
    let calls: u64 = what["exists after ".len()..]
        .trim_end_matches(" calls")
        .parse()
        .unwrap();
    assert!(calls > 1000, "only {calls} calls before the quota");
    // What the chain holds stays within the quota, whatever the actor does.
    let chain = h.root().chain_store().stats().await.unwrap();
    assert!(
        chain.bytes <= quota + MAX_EVENT_BYTES,
        "the chain holds {} bytes under a {quota}-byte quota",
        chain.bytes
    );
    let events = h
        .root()
        .event_chain("flooder")
        .unwrap()
        .head()
        .await
        .unwrap();
    assert!(events.unwrap().1 >= calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_calls_with_huge_arguments_are_recorded_in_bounded_size() {
    let h = Harness::start();
    let param = json!({"attack": "huge-arguments", "bytes": MIB, "times": 10});
    let state = attack_under_quota(&h, Limits::default().max_actor_bytes, "huge-args", param).await;
    for (what, error) in attempts(&state) {
        assert!(error.is_some(), "{what} was allowed");
    }
    let events = h
        .root()
        .event_chain("huge-args")
        .unwrap()
        .events(usize::MAX)
        .await
        .unwrap();
    // The run's start and end, new, store, and 30 refused calls.
    assert_eq!(events.len(), 34);
    let total: u64 = events.iter().map(|entry| entry.bytes.len() as u64).sum();
    for entry in &events {
        assert!(entry.bytes.len() as u64 <= MAX_EVENT_BYTES);
    }
    assert!(total < 64 << 10, "30 refused calls took {total} bytes");
    // A long label is recorded by its hash and length.
    let labelled = events
        .iter()
        .find(|entry| entry.event.event.event_type == "label")
        .unwrap();
    let label = labelled.event.event.label.as_deref().unwrap();
    assert!(
        label.starts_with("blake3:") && label.ends_with(":1048576"),
        "{label}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_writers_cannot_together_pass_the_quotas_each_fits_alone() {
    let h = Harness::start();
    let quota = 8 * MIB;
    let param = json!({"attack": "parallel-writers", "writers": 8, "pieces": 7});
    let state = attack_under_quota(&h, quota, "writers", param).await;
    let attempts = attempts(&state);
    let (summary, _) = attempts.last().unwrap();
    let finished: u64 = summary.split(' ').next().unwrap().parse().unwrap();
    assert!((1..8).contains(&finished), "{summary}");
    // Before the meter: 8 × 7 MiB written against the totals each writer
    // saw when it opened, 14 MiB stored. Now everything in flight counts.
    let size = state["size"].as_u64().unwrap();
    assert!(
        size <= quota - finished * OBJECT_OVERHEAD_BYTES,
        "{size} bytes stored"
    );
    let store = crate::store_at(&h, &state, "store");
    let stats = store.stats().await.unwrap();
    assert!(stats.footprint() <= quota, "{stats:?}");
    assert_eq!(stats.objects, finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_writers_are_capped_and_the_actor_is_still_served() {
    let h = Harness::start();
    let store = h.root().create_store().await.unwrap();
    let param = json!({"attack": "many-writers", "store": store.id(), "writers": 600});
    let state = attack_granted(&h, store.id(), param).await;
    let attempts = attempts(&state);
    let limit = Limits::default().max_open_streams;
    assert_eq!(attempts[0].0, format!("writer after {limit} open"));
    let error = attempts[0].1.as_deref().unwrap();
    assert!(error.contains("readers and writers open"), "{error}");
    assert_eq!(attempts[1], ("store beside open writers".to_owned(), None));
    // The writers left open went with the actor, and their staging with
    // them (removed in the background once each last piece is written).
    let staging = || {
        std::fs::read_dir(h.dir.path().join("root/stores"))
            .unwrap()
            .flat_map(|dir| {
                std::fs::read_dir(dir.unwrap().path().join("tmp"))
                    .into_iter()
                    .flatten()
            })
            .count()
    };
    for _ in 0..100 {
        if staging() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(staging(), 0, "staging files left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_readers_are_capped_and_given_back_when_dropped() {
    let h = Harness::start();
    let store = h.root().create_store().await.unwrap();
    let content = store.store(vec![7u8; 4 << 20]).await.unwrap();
    let param = json!({
        "attack": "many-readers",
        "store": store.id(),
        "ref": content.hash(),
        "readers": 1000,
    });
    let state = attack_granted(&h, store.id(), param).await;
    let attempts = attempts(&state);
    let limit = Limits::default().max_open_streams;
    assert_eq!(attempts[0].0, format!("reader after {limit} open"));
    assert!(
        attempts[0]
            .1
            .as_deref()
            .unwrap()
            .contains("readers and writers open")
    );
    assert_eq!(attempts[1], ("store beside open readers".to_owned(), None));
    assert_eq!(
        attempts[2],
        ("reader once they are dropped".to_owned(), None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_lost_before_they_start_store_nothing() {
    let h = Harness::start();
    let bucket = h.root().create_store().await.unwrap();
    let options = RunOptions {
        grants: Grants::none().store(bucket.id(), Access::ReadWrite),
        limits: Limits {
            max_actor_bytes: 16 * MIB,
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let argv: Vec<String> = [
        "kv_counter",
        bucket.id(),
        "stale-swaps",
        "k",
        "4194304",
        "16",
    ]
    .map(str::to_owned)
    .to_vec();
    let run = h
        .host
        .run_command(&h.load(KV_COUNTER), options, &argv, CommandOutput::Capture)
        .await;
    assert_eq!(run.outcome.unwrap(), 0, "stderr: {}", run.stderr);
    assert_eq!(crate::fields(run.stdout)["lost"], "16");
    // Only the 16 small values that moved the key were stored.
    let stats = bucket.stats().await.unwrap();
    assert!(stats.bytes < 1024, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increment_refuses_a_long_value_without_reading_it() {
    let h = Harness::start();
    let bucket = h.root().create_store().await.unwrap();
    // All digits, but far longer than any 64-bit number.
    bucket
        .store_at_label("n", vec![b'1'; 32 << 20])
        .await
        .unwrap();
    let options = RunOptions {
        grants: Grants::none().store(bucket.id(), Access::ReadWrite),
        limits: Limits {
            max_memory_bytes: 16 << 20,
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let argv: Vec<String> = ["kv_counter", bucket.id(), "increment", "n", "1"]
        .map(str::to_owned)
        .to_vec();
    let run = h
        .host
        .run_command(&h.load(KV_COUNTER), options, &argv, CommandOutput::Capture)
        .await;
    assert_ne!(run.outcome.unwrap(), 0);
    assert!(
        run.stderr.contains("does not hold a decimal integer"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_actor_is_served_while_one_holds_its_stream_cap() {
    let h = Harness::start();
    h.load(HOSTILE);
    let store = h.root().create_store().await.unwrap();
    let holder_done = std::sync::atomic::AtomicBool::new(false);
    // One actor opens writers until the cap refuses it, and holds them.
    let holder = async {
        let param = json!({"attack": "many-writers", "store": store.id(),
                           "writers": 600, "hold_ms": 4000});
        let state = attack_granted(&h, store.id(), param).await;
        holder_done.store(true, std::sync::atomic::Ordering::SeqCst);
        state
    };
    // Another, on the same host, writes meanwhile, through a writer and a
    // plain store, and finishes while the first still holds its writers.
    let other = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let param = json!({"attack": "many-writers", "store": store.id(), "writers": 1});
        let state = attack_granted(&h, store.id(), param).await;
        (state, holder_done.load(std::sync::atomic::Ordering::SeqCst))
    };
    let (held, (served, holder_finished_first)) = tokio::join!(holder, other);
    assert!(
        !holder_finished_first,
        "the other actor waited for the holder"
    );
    assert_eq!(
        attempts(&served),
        [("store beside open writers".to_owned(), None)]
    );
    let limit = Limits::default().max_open_streams;
    assert_eq!(attempts(&held)[0].0, format!("writer after {limit} open"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_writing_one_store_at_once_cannot_overflow_its_quota_together() {
    let h = Harness::start();
    h.load(HOSTILE);
    let store = h.root().create_store().await.unwrap();
    let quota = 256 * 1024;
    // Each actor alone would fit: only the store's quota, checked in each
    // write's transaction, stops them.
    let h = &h;
    let flood = |salt: u64| {
        let options = RunOptions {
            grants: Grants::none().store(store.id(), Access::ReadWrite),
            limits: Limits {
                max_store_bytes: quota,
                ..Limits::default()
            },
            ..RunOptions::default()
        };
        let param = json!({"attack": "quota", "store": store.id(), "salt": salt});
        let component = h.load(HOSTILE);
        async move { h.run(&component, options, None, &param).await }
    };
    let (first, second) = tokio::join!(flood(1), flood(2));
    for state in [first, second] {
        let (what, error) = &attempts(&state)[0];
        let error = error.as_deref().unwrap_or_else(|| panic!("{what}"));
        assert!(
            error.contains(&format!("store {} quota exceeded", store.id())),
            "{error}"
        );
    }
    let stats = store.stats().await.unwrap();
    assert!(
        stats.footprint() <= quota,
        "the store takes {} bytes under a {quota}-byte quota",
        stats.footprint()
    );
    // Nearly full: the last write that fit left less than one more.
    let one_write = 1 + 1024 + OBJECT_OVERHEAD_BYTES;
    assert!(stats.footprint() + one_write > quota, "{stats:?}");
}
