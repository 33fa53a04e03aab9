//! A hostile actor tries every attack on the host; each must be refused
//! cleanly, the host must keep serving, and nothing outside the root may change.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use theater_store_examples::{HOSTILE, SEED_PATTERNS};
use theater_store_host::{Access, ActorFailure, Grants, Limits, RunOptions};

use crate::Harness;

/// Every file under `dir` except the store root, with its contents.
fn outside_root(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path == dir.join("root") {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else {
                found.insert(path.display().to_string(), std::fs::read(&path).unwrap());
            }
        }
    }
    found
}

/// Plants files around the root that a traversal would hit.
fn plant_canaries(dir: &Path) {
    std::fs::create_dir_all(dir.join("neighbour/objects")).unwrap();
    std::fs::write(dir.join("neighbour/secret.txt"), "do not touch").unwrap();
    std::fs::write(dir.join("x"), "sibling file").unwrap();
}

/// Runs one attack and returns each attempt's error message; every attempt
/// must have been refused.
async fn refused(h: &Harness, options: RunOptions, param: Value) -> Vec<String> {
    let state = h.run(&h.load(HOSTILE), options, None, &param).await;
    let attempts = state["attempts"]
        .as_array()
        .expect("attempts are reported")
        .clone();
    assert!(!attempts.is_empty());
    attempts
        .into_iter()
        .map(|attempt| match attempt["error"].as_str() {
            Some(error) => error.to_owned(),
            None => panic!("{param}: {} was allowed", attempt["what"]),
        })
        .collect()
}

fn assert_all_mention(errors: &[String], needles: &[&str]) {
    for error in errors {
        assert!(
            needles.iter().any(|n| error.contains(n)),
            "unexpected message: {error}"
        );
    }
}

#[tokio::test]
async fn path_traversal_in_store_ids_and_refs_is_refused() {
    let h = Harness::start();
    plant_canaries(h.dir.path());
    let before = outside_root(h.dir.path());
    let errors = refused(&h, RunOptions::default(), json!({"attack": "traversal"})).await;
    assert_all_mention(&errors, &["invalid store id", "invalid content ref"]);
    assert_eq!(
        outside_root(h.dir.path()),
        before,
        "files outside the root changed"
    );
}

#[tokio::test]
async fn nul_empty_and_oversize_labels_are_refused() {
    let h = Harness::start();
    let errors = refused(&h, RunOptions::default(), json!({"attack": "bad-labels"})).await;
    assert_eq!(errors.len(), 9);
    assert_all_mention(&errors, &["invalid label"]);
    assert!(
        errors.iter().any(|e| e.contains("NUL")) && errors.iter().any(|e| e.contains("1024 bytes"))
    );
}

#[tokio::test]
async fn malformed_refs_are_refused() {
    let h = Harness::start();
    let errors = refused(
        &h,
        RunOptions::default(),
        json!({"attack": "malformed-refs"}),
    )
    .await;
    assert_eq!(errors.len(), 15);
    assert_all_mention(&errors, &["invalid content ref"]);
}

#[tokio::test]
async fn stores_not_granted_are_denied_without_changes() {
    let h = Harness::start();
    let victim = h.root().store("victim").unwrap();
    let secret = victim.store_at_label("secret", "classified").await.unwrap();
    let errors = refused(
        &h,
        RunOptions::default(),
        json!({"attack": "ungranted", "store": "victim"}),
    )
    .await;
    assert_all_mention(&errors, &["access denied: store victim"]);
    assert_eq!(victim.get_by_label("secret").await.unwrap(), Some(secret));
    assert_eq!(victim.stats().await.unwrap().objects, 1);
}

#[tokio::test]
async fn read_only_grants_refuse_every_write() {
    let h = Harness::start();
    let shared = h.root().store("shared").unwrap();
    let secret = shared
        .store_at_label("secret", "read me, do not change me")
        .await
        .unwrap();
    let options = RunOptions {
        grants: Grants::none().store("shared", Access::ReadOnly),
        ..RunOptions::default()
    };
    let errors = refused(
        &h,
        options,
        json!({"attack": "read-only", "store": "shared"}),
    )
    .await;
    assert_eq!(errors.len(), 6);
    assert_all_mention(
        &errors,
        &["store shared is granted to this actor read-only"],
    );
    assert_eq!(shared.list_labels().await.unwrap(), ["secret"]);
    assert_eq!(shared.get_by_label("secret").await.unwrap(), Some(secret));
    assert_eq!(shared.stats().await.unwrap().objects, 1);
}

#[tokio::test]
async fn content_over_the_size_limit_is_refused() {
    let h = Harness::start();
    let options = RunOptions {
        limits: Limits {
            max_content_bytes: 1 << 20,
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let errors = refused(
        &h,
        options,
        json!({"attack": "oversize-content", "bytes": 2 << 20}),
    )
    .await;
    assert_eq!(errors.len(), 2);
    assert_all_mention(
        &errors,
        &["content of 2097152 bytes is over the limit of 1048576 bytes"],
    );
}

#[tokio::test]
async fn quotas_stop_a_store_from_growing() {
    let h = Harness::start();
    let options = RunOptions {
        limits: Limits {
            max_store_objects: 50,
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let run = h
        .run_raw(&h.load(HOSTILE), options, &json!({"attack": "quota"}))
        .await;
    let state: Value = serde_json::from_slice(&run.outcome.unwrap().unwrap()).unwrap();
    let attempt = &state["attempts"][0];
    assert_eq!(attempt["what"], "store after 50 objects");
    assert!(
        attempt["error"]
            .as_str()
            .unwrap()
            .contains("quota exceeded"),
        "{attempt}"
    );
    let store = h.root().store(&run.created_stores[0]).unwrap();
    assert_eq!(store.stats().await.unwrap().objects, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_while_other_actors_keep_running() {
    let h = std::sync::Arc::new(Harness::start());
    let options = RunOptions {
        limits: Limits {
            timeout: Duration::from_millis(500),
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let looping = {
        let h = h.clone();
        tokio::spawn(async move {
            let actor = h.load(HOSTILE);
            h.run_raw(&actor, options, &json!({"attack": "infinite-loop"}))
                .await
        })
    };
    // Meanwhile another actor is served.
    let out = h
        .run(
            &h.load(SEED_PATTERNS),
            RunOptions::default(),
            None,
            &json!({"pattern": "basic"}),
        )
        .await;
    assert_eq!(out["text"], "Important information");
    let run = looping.await.unwrap();
    assert!(
        matches!(run.outcome, Err(ActorFailure::TimedOut(_))),
        "{:?}",
        run.outcome
    );
    assert_eq!(run.logs, ["looping forever"]);
    // And after it.
    let out = h
        .run(
            &h.load(SEED_PATTERNS),
            RunOptions::default(),
            None,
            &json!({"pattern": "dedupe"}),
        )
        .await;
    assert_eq!(out["same_ref"], true);
}

#[tokio::test]
async fn a_memory_bomb_traps_only_that_actor() {
    let h = Harness::start();
    let options = RunOptions {
        limits: Limits {
            max_memory_bytes: 64 << 20,
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let run = h
        .run_raw(&h.load(HOSTILE), options, &json!({"attack": "memory-bomb"}))
        .await;
    match run.outcome {
        Err(ActorFailure::OutOfMemory { limit, .. }) => assert_eq!(limit, 64 << 20),
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    let out = h
        .run(
            &h.load(SEED_PATTERNS),
            RunOptions::default(),
            None,
            &json!({"pattern": "basic"}),
        )
        .await;
    assert_eq!(out["text"], "Important information");
}

#[tokio::test]
async fn a_log_flood_is_capped() {
    let h = Harness::start();
    let run = h
        .run_raw(
            &h.load(HOSTILE),
            RunOptions::default(),
            &json!({"attack": "log-flood"}),
        )
        .await;
    assert!(run.outcome.is_ok());
    assert_eq!(run.logs.len(), Limits::default().max_log_lines);
    assert_eq!(
        run.dropped_log_lines,
        50_000 - Limits::default().max_log_lines
    );
    assert_eq!(run.logs[0], "line 0");
}

#[tokio::test]
async fn any_store_grants_restore_share_by_id() {
    let h = Harness::start();
    let victim = h.root().store("anyone").unwrap();
    victim
        .store_at_label("secret", "shared by id")
        .await
        .unwrap();
    let options = RunOptions {
        grants: Grants::none().any_store(Access::ReadOnly),
        ..RunOptions::default()
    };
    let errors = refused(
        &h,
        options,
        json!({"attack": "read-only", "store": "anyone"}),
    )
    .await;
    assert_all_mention(&errors, &["read-only"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_storm_is_bounded_by_the_deadline_and_starves_no_one() {
    let h = std::sync::Arc::new(Harness::start());
    let storm = {
        let h = h.clone();
        tokio::spawn(async move {
            let options = RunOptions {
                limits: Limits {
                    timeout: Duration::from_secs(2),
                    ..Limits::default()
                },
                ..RunOptions::default()
            };
            h.run_raw(&h.load(HOSTILE), options, &json!({"attack": "call-storm"}))
                .await
        })
    };
    // Other actors are served while the storm rages.
    for _ in 0..3 {
        let out = h
            .run(
                &h.load(SEED_PATTERNS),
                RunOptions::default(),
                None,
                &json!({"pattern": "dedupe"}),
            )
            .await;
        assert_eq!(out["same_ref"], true);
    }
    let run = storm.await.unwrap();
    assert!(
        matches!(run.outcome, Err(ActorFailure::TimedOut(_))),
        "{:?}",
        run.outcome
    );
    // A bounded storm completes and every call was answered.
    let out = h
        .run(
            &h.load(HOSTILE),
            RunOptions::default(),
            None,
            &json!({"attack": "call-storm", "calls": 20_000}),
        )
        .await;
    assert_eq!(out["attempts"][0]["what"], "20000 calls");
}
