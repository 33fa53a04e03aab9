//! Limits that must hold against a hostile actor: memory over all its
//! memories, stores created, space across stores, labels, reads larger
//! than the actor can hold, listings, and time spent waiting in host calls.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use theater_store_examples::{HOSTILE, SEED_PATTERNS};
use theater_store_host::{Access, ActorFailure, Grants, Limits, RunOptions};

use crate::Harness;

/// A component whose core module declares `extra` memories besides its
/// main one, and whose `init` grows each of them by `pages` 64 KiB pages,
/// trapping if a grow is refused. Its signature is the actor world's.
pub(crate) fn multi_memory_actor(extra: usize, pages: u32) -> Vec<u8> {
    let memories: String = (0..extra).map(|i| format!("(memory $m{i} 0)\n")).collect();
    let grows: String = (0..extra)
        .map(|i| {
            format!(
                "(if (i32.eq (memory.grow $m{i} (i32.const {pages})) (i32.const -1)) (then unreachable))\n"
            )
        })
        .collect();
    let text = format!(
        r#"(component
  (core module $m
    (memory (export "memory") 1)
    {memories}
    (global $heap (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
      (global.set $heap (i32.add (local.get $at) (local.get 3)))
      (local.get $at))
    (func (export "init") (param i32 i32 i32 i32 i32) (result i32)
      {grows}
      ;; The zeroed return area at 0 reads as ok(none).
      (i32.const 0)))
  (core instance $i (instantiate $m))
  (func $init
    (param "state" (option (list u8)))
    (param "params" (tuple string))
    (result (result (tuple (option (list u8))) (error string)))
    (canon lift (core func $i "init") (memory (core memory $i "memory"))
      (realloc (core func $i "realloc"))))
  (instance $actor (export "init" (func $init)))
  (export "theater:simple/actor" (instance $actor)))"#
    );
    wat::parse_str(&text).expect("the test component is valid text")
}

#[tokio::test]
async fn the_memory_limit_covers_all_of_an_actors_memories_together() {
    let h = Harness::start();
    let limits = Limits {
        max_memory_bytes: 64 << 20,
        ..Limits::default()
    };
    // Within the limit all together: it runs.
    let small = h.host.load(&multi_memory_actor(4, 100)).unwrap();
    let options = RunOptions {
        limits: limits.clone(),
        ..RunOptions::default()
    };
    let run = h.run_raw(&small, options.clone(), &json!(null)).await;
    assert!(run.outcome.is_ok(), "{:?}", run.outcome);

    // Each memory alone within the limit, together twelve times over it.
    let greedy = h.host.load(&multi_memory_actor(12, 900)).unwrap();
    let run = h.run_raw(&greedy, options, &json!(null)).await;
    match run.outcome {
        Err(ActorFailure::OutOfMemory { limit, .. }) => assert_eq!(limit, 64 << 20),
        other => panic!("expected OutOfMemory, got {other:?}"),
    }

    // More memories than allowed at all: refused at instantiation.
    let many = h.host.load(&multi_memory_actor(40, 0)).unwrap();
    let run = h.run_raw(&many, RunOptions::default(), &json!(null)).await;
    assert!(
        matches!(run.outcome, Err(ActorFailure::Instantiation(_))),
        "{:?}",
        run.outcome
    );
}

/// The one attempt an attack reports, which must have been refused.
async fn refusal(h: &Harness, options: RunOptions, param: Value) -> (String, String, Vec<String>) {
    let run = h.run_raw(&h.load(HOSTILE), options, &param).await;
    let state = run
        .outcome
        .unwrap_or_else(|failure| panic!("{param}: {failure}\n{}", run.stderr))
        .expect("the attack reports its attempts");
    let state: Value = serde_json::from_slice(&state).unwrap();
    let attempt = &state["attempts"][0];
    let error = attempt["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{param}: {} was allowed", attempt["what"]));
    (
        attempt["what"].as_str().unwrap().to_owned(),
        error.to_owned(),
        run.created_stores,
    )
}

#[tokio::test]
async fn an_actor_creates_at_most_its_quota_of_stores() {
    let h = Harness::start();
    let (what, error, created) =
        refusal(&h, RunOptions::default(), json!({"attack": "store-flood"})).await;
    assert_eq!(what, "new after 100 stores");
    assert!(error.contains("has created 100 stores"), "{error}");
    assert_eq!(created.len(), 100);
    assert_eq!(h.root().stores().await.unwrap().len(), 100);
}

#[tokio::test]
async fn many_stores_each_under_quota_cannot_exceed_the_actor_budget() {
    let h = Harness::start();
    let options = RunOptions {
        limits: Limits {
            max_actor_bytes: 8 << 20,
            max_store_bytes: 4 << 20,
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let (_, error, created) = refusal(
        &h,
        options,
        json!({"attack": "fill-stores", "chunk": 256 << 10}),
    )
    .await;
    assert!(error.contains("actor quota exceeded"), "{error}");
    let mut total = 0;
    for id in &created {
        let stats = h.root().store(id).unwrap().stats().await.unwrap();
        assert!(stats.footprint() <= 4 << 20);
        total += stats.footprint();
    }
    assert!(total <= 8 << 20, "{total} bytes written");
    assert!(created.len() >= 2, "the budget spans stores");
}

#[tokio::test]
async fn a_label_flood_is_charged_to_the_store_quota() {
    let h = Harness::start();
    let quota = 1 << 20;
    let options = RunOptions {
        limits: Limits {
            max_store_bytes: quota,
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let (what, error, created) = refusal(&h, options, json!({"attack": "label-flood"})).await;
    assert!(error.contains("quota exceeded"), "{what}: {error}");
    let stats = h.root().store(&created[0]).unwrap().stats().await.unwrap();
    assert!(stats.footprint() <= quota, "{stats:?}");
    // Each 1020-byte label takes over 9 KiB of index: about a hundred fit.
    assert!((80..120).contains(&stats.labels), "{stats:?}");
    let index = std::fs::metadata(h.root().path().unwrap().join("index.sqlite"))
        .unwrap()
        .len();
    assert!(index < 2 * quota, "the index grew to {index} bytes");
}

#[tokio::test]
async fn a_get_larger_than_the_actor_can_hold_is_refused_before_reading() {
    let h = Harness::start();
    let shared = h.root().store("big").unwrap();
    let big = shared.store(vec![7u8; 24 << 20]).await.unwrap();
    let options = RunOptions {
        grants: Grants::none().store("big", Access::ReadOnly),
        limits: Limits {
            max_memory_bytes: 16 << 20,
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let (_, error, _) = refusal(
        &h,
        options,
        json!({"attack": "get-huge", "store": "big", "ref": big.hash()}),
    )
    .await;
    assert!(error.contains(&format!("is {} bytes", 24 << 20)), "{error}");
    assert!(error.contains("16777216 bytes"), "{error}");
}

#[tokio::test]
async fn listings_are_capped_and_point_to_paging() {
    let h = Harness::start();
    let shared = h.root().store("listed").unwrap();
    for i in 0..30 {
        shared
            .store_at_label(&format!("entry {i}"), format!("content {i}"))
            .await
            .unwrap();
    }
    let options = RunOptions {
        grants: Grants::none().store("listed", Access::ReadOnly),
        limits: Limits {
            max_list_entries: 20,
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let run = h
        .run(
            &h.load(HOSTILE),
            options,
            None,
            &json!({"attack": "list-flood", "store": "listed"}),
        )
        .await;
    for attempt in run["attempts"].as_array().unwrap() {
        let error = attempt["error"].as_str().expect("the listing is refused");
        assert!(error.contains("page by page"), "{error}");
    }
    // Within the cap, listings work as before.
    let options = RunOptions {
        grants: Grants::none().store("listed", Access::ReadOnly),
        ..RunOptions::default()
    };
    let run = h
        .run(
            &h.load(HOSTILE),
            options,
            None,
            &json!({"attack": "list-flood", "store": "listed"}),
        )
        .await;
    assert!(run["attempts"][0]["error"].is_null(), "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_calls_give_up_at_the_deadline_while_another_process_holds_the_lock() {
    let h = Harness::start();
    h.root()
        .store("warm")
        .unwrap()
        .store("open the root")
        .await
        .unwrap();
    // Compiled before the clock starts: under a loaded test run, compiling
    // (or waiting for another test's compile) is not what is measured.
    let actor = h.load(SEED_PATTERNS);
    // Another process takes the root's write lock and keeps it.
    let index = h.root().path().unwrap().join("index.sqlite");
    let holder = std::thread::spawn(move || {
        let db = rusqlite::Connection::open(index).unwrap();
        db.execute_batch("BEGIN IMMEDIATE").unwrap();
        std::thread::sleep(Duration::from_secs(4));
        db.execute_batch("ROLLBACK").unwrap();
    });
    std::thread::sleep(Duration::from_millis(200));
    let options = RunOptions {
        limits: Limits {
            timeout: Duration::from_secs(1),
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let started = Instant::now();
    let run = h
        .run_raw(&actor, options, &json!({"pattern": "basic"}))
        .await;
    let took = started.elapsed();
    assert!(
        matches!(run.outcome, Err(ActorFailure::TimedOut(_))),
        "{:?}",
        run.outcome
    );
    // The busy timeout is 30 s; the deadline is what bounds the wait.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    holder.join().unwrap();
    // The write the actor gave up on is not applied behind its back.
    let stores: Vec<String> = h
        .root()
        .stores()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(stores, ["warm"]);
}
