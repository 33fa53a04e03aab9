//! `theater:simple/store-streams` from a real guest: large content in
//! chunks under a small memory limit, verified reads, quotas and grants
//! while streaming, and a log shared by concurrent actors.

use serde_json::{Value, json};
use theater_store_examples::LARGE_FILES;
use theater_store_host::{Access, ActorFailure, Grants, Limits, RunOptions};

use crate::Harness;

/// The example actor's pattern (guest-examples/large-files): 8 bytes per
/// offset that is a multiple of 8.
fn pattern_bytes(seed: u64, size: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..size.div_ceil(8))
        .flat_map(|word| {
            let mixed =
                ((word * 8) ^ seed.wrapping_mul(0x9E37_79B9)).wrapping_mul(0x2545_F491_4F6C_DD1D);
            mixed.to_le_bytes()
        })
        .collect();
    bytes.truncate(size as usize);
    bytes
}

fn granted(store: &str, access: Access, limits: Limits) -> RunOptions {
    RunOptions {
        grants: Grants::none().store(store, access),
        limits,
        ..RunOptions::default()
    }
}

/// Guest memory may not pass 16 MiB, whatever the content's size.
fn small_memory() -> Limits {
    Limits {
        max_memory_bytes: 16 << 20,
        ..Limits::default()
    }
}

async fn run(h: &Harness, options: RunOptions, param: Value) -> Result<Value, String> {
    run_actor(h, LARGE_FILES, options, param).await
}

/// Runs one of the example actors: its new state as JSON, or the error it
/// returned; any other failure fails the test.
async fn run_actor(
    h: &Harness,
    wasm: &'static [u8],
    options: RunOptions,
    param: Value,
) -> Result<Value, String> {
    let actor = h.load(wasm);
    let run = h.run_raw(&actor, options, &param).await;
    match run.outcome {
        Ok(state) => Ok(serde_json::from_slice(&state.unwrap()).unwrap()),
        Err(ActorFailure::Returned(message)) => Err(message),
        Err(other) => panic!("{param}: {other}\nstderr: {}", run.stderr),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_content_streams_in_and_out_in_small_memory() {
    let h = Harness::start();
    let size = 96u64 << 20;
    let options = || granted("media", Access::ReadWrite, small_memory());
    let write = json!({"op": "write", "store": "media", "label": "video", "size": size, "chunk": 65536, "seed": 3});
    let written = run(&h, options(), write).await.unwrap();
    let expected = pattern_bytes(3, size);
    assert_eq!(written["ref"], blake3::hash(&expected).to_hex().as_str());

    let store = h.root().store("media").unwrap();
    let content_ref = store.get_by_label("video").await.unwrap().unwrap();
    assert_eq!(store.get(&content_ref).await.unwrap(), expected);

    let read = json!({"op": "read", "store": "media", "label": "video", "chunk": 65536, "seed": 3});
    assert_eq!(run(&h, options(), read).await.unwrap()["bytes"], size);

    let offset = size / 2 + 12345;
    let range =
        json!({"op": "range", "store": "media", "label": "video", "offset": offset, "len": 4096});
    let got = run(&h, options(), range).await.unwrap();
    let got: Vec<u8> = serde_json::from_value(got["bytes"].clone()).unwrap();
    assert_eq!(got, expected[offset as usize..offset as usize + 4096]);

    let past_end =
        json!({"op": "range", "store": "media", "label": "video", "offset": size - 1, "len": 2});
    let error = run(&h, options(), past_end).await.unwrap_err();
    assert!(
        error.contains("Invalid: ") && error.contains("outside content"),
        "{error}"
    );
}

#[tokio::test]
async fn a_damaged_object_ends_the_guest_stream_with_corrupted() {
    let h = Harness::start();
    let store = h.root().store("media").unwrap();
    let bytes = pattern_bytes(5, 2 << 20);
    let content_ref = store.store_at_label("clip", bytes).await.unwrap();
    let hash = content_ref.hash();
    let object = h
        .root()
        .path()
        .unwrap()
        .join("stores/media/objects")
        .join(&hash[..2])
        .join(&hash[2..]);
    let mut damaged = std::fs::read(&object).unwrap();
    damaged[1 << 20] ^= 1;
    std::fs::write(&object, damaged).unwrap();

    let options = || granted("media", Access::ReadOnly, small_memory());
    let read = json!({"op": "read", "store": "media", "label": "clip", "chunk": 65536, "seed": 5});
    let error = run(&h, options(), read).await.unwrap_err();
    assert!(
        error.contains("corrupted") && error.contains(hash),
        "{error}"
    );
    let range =
        json!({"op": "range", "store": "media", "label": "clip", "offset": 1 << 20, "len": 10});
    let error = run(&h, options(), range).await.unwrap_err();
    assert!(
        error.contains("Corrupted") && error.contains("store media"),
        "{error}"
    );
    let elsewhere =
        json!({"op": "range", "store": "media", "label": "clip", "offset": 0, "len": 10});
    assert!(run(&h, options(), elsewhere).await.is_ok());
}

#[tokio::test]
async fn grants_and_quotas_hold_while_streaming() {
    let h = Harness::start();
    let write = |store: &str| json!({"op": "write", "store": store, "label": "big", "size": 4 << 20, "chunk": 65536, "seed": 1});

    let read_only = granted("shared", Access::ReadOnly, small_memory());
    let error = run(&h, read_only, write("shared")).await.unwrap_err();
    assert!(
        error.contains("AccessDenied") && error.contains("read-only"),
        "{error}"
    );
    let error = run(&h, RunOptions::default(), write("other"))
        .await
        .unwrap_err();
    assert!(error.contains("AccessDenied"), "{error}");

    let tight = Limits {
        max_store_bytes: 1 << 20,
        ..small_memory()
    };
    let error = run(
        &h,
        granted("tight", Access::ReadWrite, tight),
        write("tight"),
    )
    .await
    .unwrap_err();
    assert!(
        error.contains("quota exceeded") && error.contains("tight"),
        "{error}"
    );
    // A refused stream leaves nothing: no object, no staged file.
    let store = h.root().store("tight").unwrap();
    assert_eq!(store.stats().await.unwrap().objects, 0);
    let tmp = h.root().path().unwrap().join("stores/tight/tmp");
    let leftovers = std::fs::read_dir(&tmp).map(|dir| dir.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "staged files left in {}", tmp.display());
}

#[tokio::test]
async fn a_writer_the_actor_drops_stores_nothing() {
    let h = Harness::start();
    let store = h.root().store("drafts").unwrap();
    store
        .store_at_label("anchor", b"kept".to_vec())
        .await
        .unwrap();
    let abandon = json!({"op": "abandon", "store": "drafts", "size": 3 << 20});
    let options = granted("drafts", Access::ReadWrite, small_memory());
    let run = run(&h, options, abandon).await.unwrap();
    assert_eq!(run["written"], 3 << 20);
    assert_eq!(store.stats().await.unwrap().objects, 1);
    // The staging worker removes its files once it sees the writer gone.
    let tmp = h.root().path().unwrap().join("stores/drafts/tmp");
    let leftovers = || std::fs::read_dir(&tmp).map(|dir| dir.count()).unwrap_or(0);
    for _ in 0..200 {
        if leftovers() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(leftovers(), 0, "staged files left in {}", tmp.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_actors_append_to_one_log_without_losing_an_entry() {
    let h = std::sync::Arc::new(Harness::start());
    let options = || granted("log", Access::ReadWrite, small_memory());
    let appenders: Vec<_> = (0..8)
        .map(|actor| {
            let h = std::sync::Arc::clone(&h);
            tokio::spawn(async move {
                let append = json!({"op": "append", "store": "log", "prefix": "entry/", "count": 1000, "actor": actor});
                run(&h, options(), append).await
            })
        })
        .collect();
    for appender in appenders {
        assert_eq!(appender.await.unwrap().unwrap()["appended"], 1000);
    }
    let count = json!({"op": "count", "store": "log", "prefix": "entry/"});
    assert_eq!(run(&h, options(), count).await.unwrap()["entries"], 8000);

    let store = h.root().store("log").unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for entry in store
        .list_labels_page("entry/", None, usize::MAX)
        .await
        .unwrap()
    {
        let text = String::from_utf8(store.get(&entry.content_ref).await.unwrap()).unwrap();
        assert!(seen.insert(text), "an entry appears twice");
    }
    assert_eq!(seen.len(), 8000);
}

/// The seed-patterns actor's `follow` pattern: it blocks on the host's
/// pollable until `count` changes under `prefix` follow `since`.
async fn follow(h: &Harness, options: RunOptions, since: u64, count: u64) -> Result<Value, String> {
    let param = json!({"pattern": "follow", "store": "feed", "prefix": "jobs/", "since": since, "count": count});
    run_actor(h, theater_store_examples::SEED_PATTERNS, options, param).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_reads_and_waits_on_a_stores_change_log() {
    let h = Harness::start();
    let store = h.root().store("feed").unwrap();
    store
        .store_at_label("jobs/1", b"one".to_vec())
        .await
        .unwrap();
    store.store_at_label("other", b"x".to_vec()).await.unwrap();
    let read_only = || granted("feed", Access::ReadOnly, Limits::default());

    // What is there already: read, not waited for.
    let read = follow(&h, read_only(), 0, 1).await.unwrap();
    assert_eq!(read["changes"].as_array().unwrap().len(), 1);
    assert_eq!(read["changes"][0]["label"], "jobs/1");
    assert_eq!(read["changes"][0]["old"], Value::Null);
    assert_eq!(read["next"], 2);
    assert_eq!(read["waits"], 0);

    // Waiting: the actor blocks until the host writes three more jobs.
    let since = store.last_change().await.unwrap();
    let waiting = {
        let (root, component) = (
            h.host.clone(),
            h.load(theater_store_examples::SEED_PATTERNS),
        );
        let param = json!({"pattern": "follow", "store": "feed", "prefix": "jobs/", "since": since, "count": 3});
        tokio::spawn(async move {
            root.run_init(&component, read_only(), None, &param.to_string())
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the actor did not wait");
    for job in 2..5 {
        store
            .store_at_label(&format!("jobs/{job}"), format!("job {job}").into_bytes())
            .await
            .unwrap();
        store
            .store_at_label("other", format!("{job}").into_bytes())
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let run = tokio::time::timeout(std::time::Duration::from_secs(20), waiting)
        .await
        .expect("the actor woke up")
        .unwrap();
    let state: Value = serde_json::from_slice(&run.outcome.unwrap().unwrap()).unwrap();
    let labels: Vec<&str> = state["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|change| change["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["jobs/2", "jobs/3", "jobs/4"]);
    assert!(state["waits"].as_u64().unwrap() >= 1);

    // No grant, no log.
    let refused = follow(&h, RunOptions::default(), 0, 0).await.unwrap_err();
    assert!(
        refused.contains("not granted") || refused.contains("access"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_actor_is_stopped_by_its_timeout() {
    let h = Harness::start();
    h.root()
        .store("feed")
        .unwrap()
        .store_at_label("seed", b"s".to_vec())
        .await
        .unwrap();
    let options = RunOptions {
        grants: Grants::none().store("feed", Access::ReadOnly),
        limits: Limits {
            timeout: std::time::Duration::from_millis(500),
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let started = std::time::Instant::now();
    let actor = h.load(theater_store_examples::SEED_PATTERNS);
    let param =
        json!({"pattern": "follow", "store": "feed", "prefix": "jobs/", "since": 1, "count": 1});
    let run = h.run_raw(&actor, options, &param).await;
    assert!(
        run.outcome.is_err(),
        "a run that waits past its timeout fails"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_reads_a_labels_history_and_its_value_at_a_point() {
    let h = Harness::start();
    let store = h.root().store("docs").unwrap();
    let mut refs = Vec::new();
    for version in 1..=3 {
        refs.push(
            store
                .store_at_label("readme", format!("version {version}").into_bytes())
                .await
                .unwrap(),
        );
    }
    store.remove_label("readme").await.unwrap();
    let options = granted("docs", Access::ReadOnly, Limits::default());
    let param = json!({"pattern": "history", "store": "docs", "label": "readme", "at": 2});
    let read = run_actor(&h, theater_store_examples::SEED_PATTERNS, options, param)
        .await
        .unwrap();
    let versions: Vec<(u64, Value)> = read["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["seq"].as_u64().unwrap(), v["ref"].clone()))
        .collect();
    assert_eq!(
        versions,
        [
            (4, Value::Null),
            (3, json!(refs[2].hash())),
            (2, json!(refs[1].hash())),
            (1, json!(refs[0].hash())),
        ]
    );
    assert_eq!(read["at"], json!(refs[1].hash()));
    assert_eq!(read["content_at"], "version 2");
    // Not granted: refused like any read.
    let param = json!({"pattern": "history", "store": "docs", "label": "readme", "at": 2});
    let refused = run_actor(
        &h,
        theater_store_examples::SEED_PATTERNS,
        RunOptions::default(),
        param,
    )
    .await
    .unwrap_err();
    assert!(
        refused.contains("not granted") || refused.contains("access"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_piece_a_writer_takes_is_a_recorded_call() {
    let h = Harness::start();
    let options = RunOptions {
        chain: theater_store_host::ChainRecording::Actor("streamer".into()),
        ..granted("media", Access::ReadWrite, small_memory())
    };
    let size = 3 * 65536 + 8192;
    let write = json!({"op": "write", "store": "media", "label": "clip", "size": size, "chunk": 65536, "seed": 5});
    let written = run(&h, options, write).await.unwrap();

    let chain = h.root().event_chain("streamer").unwrap();
    let mut events = chain.events(usize::MAX).await.unwrap();
    events.reverse();
    let calls: Vec<_> = events
        .iter()
        .map(|entry| &entry.event.event)
        .filter(|event| event.event_type.starts_with("content-writer."))
        .collect();
    let pieces: Vec<_> = calls
        .iter()
        .filter(|event| event.event_type == "content-writer.write")
        .map(|event| (event.store.as_deref(), event.size))
        .collect();
    let piece = |size| (Some("media"), Some(size));
    assert_eq!(
        pieces,
        [piece(65536), piece(65536), piece(65536), piece(8192)]
    );
    let finish = calls.last().unwrap();
    assert!(
        finish.event_type.starts_with("content-writer.finish"),
        "{finish:?}"
    );
    assert_eq!(finish.size, Some(size));
    assert_eq!(finish.refs, [written["ref"].as_str().unwrap()]);
    assert!(chain.verify().await.unwrap().is_intact());
}
