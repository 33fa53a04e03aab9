//! Every store call an actor makes lands in its event chain, in order,
//! with its fields; refusals too; and the actor reads it with `get-chain`.

use std::collections::HashMap;

use serde_json::json;
use theater_store::Outcome;
use theater_store_examples::{HOSTILE, SEED_PATTERNS, THEATER_COMPAT};
use theater_store_host::{ChainRecording, RunOptions};

use crate::{Harness, fields};

const COMPAT_CALLS: [&str; 14] = [
    "new",
    "store",
    "store-at-label",
    "label",
    "replace-at-label",
    "replace-content-at-label",
    "remove-from-label",
    "remove-label",
    "get-by-label",
    "get",
    "exists",
    "list-labels",
    "list-all-content",
    "calculate-total-size",
];

#[tokio::test]
async fn a_theater_actor_reads_its_own_calls_with_get_chain() {
    let h = Harness::start();
    let actor = h.load(THEATER_COMPAT);
    let run = h
        .host
        .run_init(&actor, RunOptions::default(), None, "one")
        .await;
    let state = fields(run.outcome.unwrap().unwrap());
    // The run's own start comes first, then every call the actor made.
    let seen = format!("run-start,{}", COMPAT_CALLS.join(","));
    assert_eq!(state["chain_types"], seen);
    assert_eq!(state["chain_linked"], "true");
    let last: serde_json::Value = serde_json::from_str(&state["chain_last_data"]).unwrap();
    assert_eq!(last["type"], "calculate-total-size");
    assert_eq!(last["store"], state["store"].as_str());
    assert_eq!(last["seq"], 14);

    // The host side sees the same chain, intact, under the component's id.
    let chain = h.root().event_chain(actor.default_actor_id()).unwrap();
    let mut events = chain.events(usize::MAX).await.unwrap();
    events.reverse();
    let store = &state["store"];
    let by_type: HashMap<&str, &theater_store::ChainEvent> = events
        .iter()
        .map(|entry| (entry.event.event.event_type.as_str(), &entry.event))
        .collect();
    let second = theater_store::ContentRef::for_content(b"second");
    let written = &by_type["store-at-label"].event;
    assert_eq!(written.store.as_deref(), Some(store.as_str()));
    assert_eq!(written.label.as_deref(), Some("doc:latest"));
    assert_eq!(written.refs, [second.hash().to_owned()]);
    assert_eq!(written.size, Some(6));
    assert_eq!(written.outcome, Outcome::Ok);
    assert_eq!(by_type["new"].event.store.as_deref(), Some(store.as_str()));
    assert_eq!(by_type["get"].event.size, Some(5));
    // `remove-from-label` named a ref the label did not point at.
    assert_eq!(
        by_type["remove-from-label"].event.outcome,
        Outcome::NotApplied
    );
    assert!(chain.verify().await.unwrap().is_intact());

    // A second run of the same component continues the same chain.
    let run = h
        .host
        .run_init(&actor, RunOptions::default(), None, "two")
        .await;
    let state = fields(run.outcome.unwrap().unwrap());
    let run = format!("run-start,{}", COMPAT_CALLS.join(","));
    assert_eq!(state["chain_types"], format!("{run},run-end,{run}"));
    let report = chain.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    // Two runs of 14 calls, each with its start and end.
    assert_eq!(report.recorded_length, 32);
}

#[tokio::test]
async fn refusals_are_recorded_and_chains_are_per_actor() {
    let h = Harness::start();
    let victim = h.root().store("victim").unwrap();
    victim.store_at_label("secret", "classified").await.unwrap();
    let options = RunOptions {
        chain: ChainRecording::Actor("intruder".into()),
        ..RunOptions::default()
    };
    h.run(
        &h.load(HOSTILE),
        options,
        None,
        &json!({"attack": "ungranted", "store": "victim"}),
    )
    .await;
    let chain = h.root().event_chain("intruder").unwrap();
    let events = chain.events(usize::MAX).await.unwrap();
    assert!(!events.is_empty());
    // Newest first: the run's end, its calls, its start.
    assert_eq!(events.first().unwrap().event.event.event_type, "run-end");
    assert_eq!(events.last().unwrap().event.event.event_type, "run-start");
    for entry in &events[1..events.len() - 1] {
        let event = &entry.event.event;
        assert_eq!(event.store.as_deref(), Some("victim"), "{event:?}");
        match &event.outcome {
            Outcome::Error { kind, message } => {
                assert_eq!(kind, "access-denied");
                assert!(message.contains("access denied: store victim"), "{message}");
            }
            other => panic!("{} was recorded as {other:?}", event.event_type),
        }
    }
    // Nothing was recorded under the component's own id, and a run with
    // recording off records nothing at all.
    let actor = h.load(THEATER_COMPAT);
    let default_chain = h.root().event_chain(actor.default_actor_id()).unwrap();
    let off = RunOptions {
        chain: ChainRecording::Off,
        ..RunOptions::default()
    };
    let run = h.host.run_init(&actor, off, None, "quiet").await;
    let state = fields(run.outcome.unwrap().unwrap());
    assert_eq!(state["chain_types"], "");
    assert_eq!(default_chain.head().await.unwrap(), None);
    assert_eq!(h.root().chain_actors().await.unwrap(), ["intruder"]);

    // An actor id that could not be one is refused before the run starts.
    let bad = RunOptions {
        chain: ChainRecording::Actor("../escape".into()),
        ..RunOptions::default()
    };
    let run = h.host.run_init(&actor, bad, None, "").await;
    let failure = run.outcome.unwrap_err().to_string();
    assert!(failure.contains("invalid actor id"), "{failure}");
}

/// Every run is delimited in its chain: `run-start` names the component,
/// `run-end` says how it ended, even when the actor was stopped for
/// memory or time, which its own calls could never record.
#[tokio::test]
async fn runs_are_delimited_with_their_outcome_even_when_stopped() {
    let h = Harness::start();
    let chain = |id: &str| ChainRecording::Actor(id.into());
    let bomb = RunOptions {
        chain: chain("bomber"),
        limits: theater_store_host::Limits {
            max_memory_bytes: 32 << 20,
            ..theater_store_host::Limits::default()
        },
        ..RunOptions::default()
    };
    let run = h
        .run_raw(&h.load(HOSTILE), bomb, &json!({"attack": "memory-bomb"}))
        .await;
    assert!(run.outcome.is_err());
    let events = h
        .root()
        .event_chain("bomber")
        .unwrap()
        .events(usize::MAX)
        .await
        .unwrap();
    let start = &events.last().unwrap().event.event;
    assert_eq!(start.event_type, "run-start");
    assert_eq!(start.label.as_deref(), Some("init"));
    assert_eq!(start.refs.len(), 1, "the component's hash");
    let end = &events.first().unwrap().event.event;
    assert_eq!(end.event_type, "run-end");
    match &end.outcome {
        Outcome::Error { kind, message } => {
            assert_eq!(kind, "out-of-memory");
            assert!(message.contains("33554432"), "{message}");
        }
        other => panic!("run-end recorded {other:?}"),
    }
    // A good run ends ok, its state's size recorded.
    let good = RunOptions {
        chain: chain("good"),
        ..RunOptions::default()
    };
    h.run(
        &h.load(SEED_PATTERNS),
        good,
        None,
        &json!({"pattern": "basic"}),
    )
    .await;
    let events = h
        .root()
        .event_chain("good")
        .unwrap()
        .events(1)
        .await
        .unwrap();
    let end = &events[0].event.event;
    assert_eq!(end.event_type, "run-end");
    assert_eq!(end.outcome, Outcome::Ok);
    assert!(end.size.unwrap() > 0);
}
