//! Every store call an actor makes lands in its event chain, in order,
//! with its fields; refusals too; and the actor reads it with `get-chain`.

use std::collections::HashMap;

use serde_json::json;
use theater_store::Outcome;
use theater_store_examples::{HOSTILE, THEATER_COMPAT};
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
    assert_eq!(state["chain_types"], COMPAT_CALLS.join(","));
    assert_eq!(state["chain_linked"], "true");
    let last: serde_json::Value = serde_json::from_str(&state["chain_last_data"]).unwrap();
    assert_eq!(last["type"], "calculate-total-size");
    assert_eq!(last["store"], state["store"].as_str());
    assert_eq!(last["seq"], 13);

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
    assert_eq!(
        state["chain_types"],
        [COMPAT_CALLS, COMPAT_CALLS].concat().join(",")
    );
    let report = chain.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.recorded_length, 28);
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
    for entry in &events {
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
