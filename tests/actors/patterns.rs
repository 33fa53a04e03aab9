//! The seed's 15 usage patterns, run as real actors.

use serde_json::{Value, json};
use theater_store::ContentRef;
use theater_store_examples::SEED_PATTERNS;
use theater_store_host::{Access, Grants, RunOptions};

use crate::{Harness, store_at};

fn own_stores_only() -> RunOptions {
    RunOptions::default()
}

fn granted(id: &str, access: Access) -> RunOptions {
    RunOptions {
        grants: Grants::none().store(id, access),
        ..RunOptions::default()
    }
}

async fn text_at(store: &theater_store::ContentStore, label: &str) -> String {
    let bytes = store
        .get_content_by_label(label)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no label {label}"));
    String::from_utf8(bytes).unwrap()
}

async fn json_at(store: &theater_store::ContentStore, label: &str) -> Value {
    serde_json::from_str(&text_at(store, label).await).unwrap()
}

#[tokio::test]
async fn p01_creating_and_managing_stores() {
    p01_creating_and_managing_stores_on(Harness::start()).await;
}

async fn p01_creating_and_managing_stores_on(h: Harness) {
    let actor = h.load(SEED_PATTERNS);
    let out = h
        .run(
            &actor,
            granted("my-store-id", Access::ReadWrite),
            None,
            &json!({"pattern": "stores", "named": "my-store-id"}),
        )
        .await;
    assert_eq!(
        text_at(&store_at(&h, &out, "created"), "hello").await,
        "from my own store"
    );
    assert_eq!(
        text_at(&h.root().store("my-store-id").unwrap(), "hello").await,
        "from a named store"
    );
    let ids: Vec<String> = h
        .root()
        .stores()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert!(ids.contains(&out["created"].as_str().unwrap().to_owned()));
}

#[tokio::test]
async fn p02_basic_storage_and_retrieval() {
    p02_basic_storage_and_retrieval_on(Harness::start()).await;
}

async fn p02_basic_storage_and_retrieval_on(h: Harness) {
    let out = h
        .run(
            &h.load(SEED_PATTERNS),
            own_stores_only(),
            None,
            &json!({"pattern": "basic"}),
        )
        .await;
    let store = store_at(&h, &out, "store");
    let content_ref = ContentRef::new(out["ref"]["hash"].as_str().unwrap());
    assert_eq!(
        store.get(&content_ref).await.unwrap(),
        b"Important information"
    );
    assert_eq!(
        content_ref,
        ContentRef::for_content(b"Important information")
    );
    assert_eq!(out["text"], "Important information");
}

#[tokio::test]
async fn p03_labels() {
    p03_labels_on(Harness::start()).await;
}

async fn p03_labels_on(h: Harness) {
    let out = h
        .run(
            &h.load(SEED_PATTERNS),
            own_stores_only(),
            None,
            &json!({"pattern": "labels"}),
        )
        .await;
    assert_eq!(out["same"], true);
    let store = store_at(&h, &out, "store");
    assert_eq!(
        json_at(&store, "app:config").await,
        json!({"url": "http://localhost:8080", "retries": 3})
    );
    assert_eq!(
        store
            .get_by_label("app:config")
            .await
            .unwrap()
            .unwrap()
            .hash(),
        out["ref"]["hash"]
    );
}

#[tokio::test]
async fn p04_actor_specific_state_survives_restarts() {
    p04_actor_specific_state_survives_restarts_on(Harness::start()).await;
}

async fn p04_actor_specific_state_survives_restarts_on(h: Harness) {
    let actor = h.load(SEED_PATTERNS);
    let param =
        json!({"pattern": "actor-state", "actor_id": "7e3f4a21-9c8b-4e5d-a6f7-1b2c3d4e5f6a"});
    let first = h.run(&actor, own_stores_only(), None, &param).await;
    let store_id = first["store"].as_str().unwrap();
    // The restarted actor gets its previous state (holding its store id);
    // the store it created in its previous life is still its own (the root
    // records it under the actor's id), with no grant.
    let second = h.run(&actor, own_stores_only(), Some(&first), &param).await;
    let third = h
        .run(&actor, own_stores_only(), Some(&second), &param)
        .await;
    assert_eq!(third["runs"], 3);
    // Under another actor id the store is not its own: it must be granted.
    let stranger = RunOptions {
        chain: theater_store_host::ChainRecording::Actor("stranger".into()),
        ..own_stores_only()
    };
    let refused = h
        .host
        .run_init(
            &actor,
            stranger.clone(),
            Some(third.to_string().into_bytes()),
            &param.to_string(),
        )
        .await;
    let message = refused.outcome.unwrap_err().to_string();
    assert!(
        message.contains(&format!("access denied: store {store_id}")),
        "{message}"
    );
    let granted_run = RunOptions {
        grants: theater_store_host::Grants::none().store(store_id, Access::ReadWrite),
        ..stranger
    };
    let fourth = h.run(&actor, granted_run, Some(&third), &param).await;
    assert_eq!(fourth["runs"], 4);
    let store = store_at(&h, &first, "store");
    assert_eq!(
        json_at(&store, "actor:7e3f4a21-9c8b-4e5d-a6f7-1b2c3d4e5f6a:state").await,
        json!(4)
    );
}

#[tokio::test]
async fn p05_versioned_content() {
    p05_versioned_content_on(Harness::start()).await;
}

async fn p05_versioned_content_on(h: Harness) {
    let out = h
        .run(
            &h.load(SEED_PATTERNS),
            own_stores_only(),
            None,
            &json!({"pattern": "versioned"}),
        )
        .await;
    let store = store_at(&h, &out, "store");
    for version in 1..=3 {
        assert_eq!(
            text_at(&store, &format!("document:v{version}")).await,
            format!("Version {version} content")
        );
    }
    assert_eq!(
        store.get_by_label("document:latest").await.unwrap(),
        store.get_by_label("document:v3").await.unwrap()
    );
    assert_eq!(out["v1"], "Version 1 content");
}

#[tokio::test]
async fn p06_deduplication() {
    p06_deduplication_on(Harness::start()).await;
}

async fn p06_deduplication_on(h: Harness) {
    let out = h
        .run(
            &h.load(SEED_PATTERNS),
            own_stores_only(),
            None,
            &json!({"pattern": "dedupe"}),
        )
        .await;
    assert_eq!(out["same_ref"], true);
    let store = store_at(&h, &out, "store");
    assert_eq!(store.list_all_content().await.unwrap().len(), 1);
    assert_eq!(
        store.calculate_total_size().await.unwrap(),
        "Duplicate content".len() as u64
    );
    assert_eq!(
        store.get_by_label("reference1").await.unwrap(),
        store.get_by_label("reference2").await.unwrap()
    );
}

#[tokio::test]
async fn p07_shared_resources_between_two_actors() {
    p07_shared_resources_between_two_actors_on(Harness::start()).await;
}

async fn p07_shared_resources_between_two_actors_on(h: Harness) {
    let actor = h.load(SEED_PATTERNS);
    let owner = h
        .run(
            &actor,
            own_stores_only(),
            None,
            &json!({"pattern": "share", "role": "owner"}),
        )
        .await;
    let id = owner["store"].as_str().unwrap();
    let reader = h
        .run(
            &actor,
            granted(id, Access::ReadOnly),
            None,
            &json!({"pattern": "share", "role": "reader", "store": id}),
        )
        .await;
    let expected = json!({"name": "shared dataset", "rows": [1, 2, 3]});
    assert_eq!(reader["read"], expected);
    assert_eq!(
        json_at(&store_at(&h, &owner, "store"), "shared:resource").await,
        expected
    );
}

#[tokio::test]
async fn p08_linked_list_of_refs() {
    p08_linked_list_of_refs_on(Harness::start()).await;
}

async fn p08_linked_list_of_refs_on(h: Harness) {
    let out = h
        .run(
            &h.load(SEED_PATTERNS),
            own_stores_only(),
            None,
            &json!({"pattern": "linked-list"}),
        )
        .await;
    assert_eq!(out["values"], json!(["Node 1", "Node 2", "Node 3"]));
    // Walk the list again from the host side.
    let store = store_at(&h, &out, "store");
    let mut cursor = store.get_by_label("list:head").await.unwrap();
    let mut values = Vec::new();
    while let Some(node_ref) = cursor {
        let node: Value = serde_json::from_slice(&store.get(&node_ref).await.unwrap()).unwrap();
        values.push(node["value"].as_str().unwrap().to_owned());
        cursor = node["next"].as_str().map(ContentRef::new);
    }
    assert_eq!(values, ["Node 1", "Node 2", "Node 3"]);
}

#[tokio::test]
async fn p09_cached_computation_is_computed_once() {
    p09_cached_computation_is_computed_once_on(Harness::start()).await;
}

async fn p09_cached_computation_is_computed_once_on(h: Harness) {
    let actor = h.load(SEED_PATTERNS);
    let param = json!({"pattern": "cache", "input": 50});
    let first = h.run(&actor, own_stores_only(), None, &param).await;
    let id = first["store"].as_str().unwrap();
    let second = h
        .run(&actor, granted(id, Access::ReadWrite), Some(&first), &param)
        .await;
    assert_eq!(
        (first["computed"].clone(), second["computed"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(second["result"], 12_586_269_025u64);
    assert_eq!(
        json_at(&store_at(&h, &first, "store"), "cache:fib:50").await,
        json!(12_586_269_025u64)
    );
}

#[tokio::test]
async fn p10_snapshot_and_restore() {
    p10_snapshot_and_restore_on(Harness::start()).await;
}

async fn p10_snapshot_and_restore_on(h: Harness) {
    let param = json!({"pattern": "snapshot", "timestamps": [1700000000, 1700000060, 1700000120]});
    let out = h
        .run(&h.load(SEED_PATTERNS), own_stores_only(), None, &param)
        .await;
    assert_eq!(out["restored"], json!({"counter": 3}));
    let store = store_at(&h, &out, "store");
    assert_eq!(
        json_at(&store, "snapshot:1700000000").await,
        json!({"counter": 1})
    );
    assert_eq!(
        store.get_by_label("snapshot:latest").await.unwrap(),
        store.get_by_label("snapshot:1700000120").await.unwrap()
    );
}

#[tokio::test]
async fn p11_messaging_with_a_large_payload() {
    p11_messaging_with_a_large_payload_on(Harness::start()).await;
}

async fn p11_messaging_with_a_large_payload_on(h: Harness) {
    let actor = h.load(SEED_PATTERNS);
    let sent = h
        .run(
            &actor,
            own_stores_only(),
            None,
            &json!({"pattern": "message", "role": "sender", "size": 3 << 20}),
        )
        .await;
    let id = sent["store_id"].as_str().unwrap();
    let param = json!({"pattern": "message", "role": "receiver", "store_id": id, "data_ref": sent["data_ref"]});
    let received = h
        .run(&actor, granted(id, Access::ReadOnly), None, &param)
        .await;
    assert_eq!(
        received,
        json!({"received_bytes": 3 << 20, "well_formed": true})
    );
    let payload = store_at(&h, &sent, "store_id")
        .get(&ContentRef::new(sent["data_ref"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(payload.len(), 3 << 20);
}

#[tokio::test]
async fn p12_dependency_injection() {
    p12_dependency_injection_on(Harness::start()).await;
}

async fn p12_dependency_injection_on(h: Harness) {
    let actor = h.load(SEED_PATTERNS);
    let configured = h
        .run(
            &actor,
            own_stores_only(),
            None,
            &json!({"pattern": "inject", "role": "configurator"}),
        )
        .await;
    let id = configured["store"].as_str().unwrap();
    for (environment, url, retries) in [
        ("dev", "http://localhost:8080", 1),
        ("prod", "https://production.example.com", 5),
    ] {
        let param =
            json!({"pattern": "inject", "role": "worker", "store": id, "environment": environment});
        let run = h
            .host
            .run_init(
                &actor,
                granted(id, Access::ReadOnly),
                None,
                &param.to_string(),
            )
            .await;
        assert!(
            run.logs.contains(&format!("configured for {url}")),
            "{:?}",
            run.logs
        );
        let out: Value = serde_json::from_slice(&run.outcome.unwrap().unwrap()).unwrap();
        assert_eq!(out, json!({"url": url, "retries": retries}));
    }
}

#[tokio::test]
async fn p13_append_only_log_keeps_order() {
    p13_append_only_log_keeps_order_on(Harness::start()).await;
}

async fn p13_append_only_log_keeps_order_on(h: Harness) {
    let actor = h.load(SEED_PATTERNS);
    let mut state: Option<Value> = None;
    for entry in ["boot", "work", "halt"] {
        let param = json!({"pattern": "append-log", "log": "events", "entry": {"event": entry}});
        let options = match &state {
            Some(s) => granted(s["store"].as_str().unwrap(), Access::ReadWrite),
            None => own_stores_only(),
        };
        state = Some(h.run(&actor, options, state.as_ref(), &param).await);
    }
    let state = state.unwrap();
    let store = store_at(&h, &state, "store");
    let index: Vec<String> = serde_json::from_value(json_at(&store, "log:events").await).unwrap();
    let mut events = Vec::new();
    for hash in index {
        let entry: Value =
            serde_json::from_slice(&store.get(&ContentRef::new(hash)).await.unwrap()).unwrap();
        events.push(entry["event"].as_str().unwrap().to_owned());
    }
    assert_eq!(events, ["boot", "work", "halt"]);
}

#[tokio::test]
async fn p14_migration_between_actors() {
    p14_migration_between_actors_on(Harness::start()).await;
}

async fn p14_migration_between_actors_on(h: Harness) {
    let actor = h.load(SEED_PATTERNS);
    let param = json!({"pattern": "migrate", "role": "old", "actor_id": "old-actor", "state": {"balance": 42}});
    let old = h.run(&actor, own_stores_only(), None, &param).await;
    let id = old["store"].as_str().unwrap();
    let param = json!({"pattern": "migrate", "role": "new", "store": id, "package": old["package"], "actor_id": "new-actor"});
    let new = h
        .run(&actor, granted(id, Access::ReadWrite), None, &param)
        .await;
    assert_eq!(new["migrated_from"], "old-actor");
    let store = store_at(&h, &old, "store");
    assert_eq!(
        json_at(&store, "actor:new-actor:state").await,
        json!({"balance": 42})
    );
    assert_eq!(
        store
            .get_by_label("actor:new-actor:migration-history")
            .await
            .unwrap()
            .unwrap()
            .hash(),
        old["package"]
    );
    assert!(
        store
            .get_by_label("migration:old-actor:1")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn p15_synchronization_between_stores() {
    p15_synchronization_between_stores_on(Harness::start()).await;
}

async fn p15_synchronization_between_stores_on(h: Harness) {
    let actor = h.load(SEED_PATTERNS);
    let source = h
        .run(
            &actor,
            own_stores_only(),
            None,
            &json!({"pattern": "sync", "role": "source", "prefix": "sync:"}),
        )
        .await;
    let target = h
        .run(
            &actor,
            own_stores_only(),
            None,
            &json!({"pattern": "sync", "role": "target", "package": source["package"]}),
        )
        .await;
    assert_eq!(target["labels"], json!(["sync:a", "sync:b"]));
    let (from, to) = (
        store_at(&h, &source, "store"),
        store_at(&h, &target, "store"),
    );
    for label in ["sync:a", "sync:b"] {
        assert_eq!(
            from.get_by_label(label).await.unwrap(),
            to.get_by_label(label).await.unwrap()
        );
        assert_eq!(text_at(&from, label).await, text_at(&to, label).await);
    }
    assert_eq!(to.get_by_label("local:c").await.unwrap(), None);
}

/// All 15 patterns once more, on the shared engine (PostgreSQL + S3 on
/// private servers this test process starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_15_patterns_on_the_shared_engine() {
    p01_creating_and_managing_stores_on(Harness::start_shared()).await;
    p02_basic_storage_and_retrieval_on(Harness::start_shared()).await;
    p03_labels_on(Harness::start_shared()).await;
    p04_actor_specific_state_survives_restarts_on(Harness::start_shared()).await;
    p05_versioned_content_on(Harness::start_shared()).await;
    p06_deduplication_on(Harness::start_shared()).await;
    p07_shared_resources_between_two_actors_on(Harness::start_shared()).await;
    p08_linked_list_of_refs_on(Harness::start_shared()).await;
    p09_cached_computation_is_computed_once_on(Harness::start_shared()).await;
    p10_snapshot_and_restore_on(Harness::start_shared()).await;
    p11_messaging_with_a_large_payload_on(Harness::start_shared()).await;
    p12_dependency_injection_on(Harness::start_shared()).await;
    p13_append_only_log_keeps_order_on(Harness::start_shared()).await;
    p14_migration_between_actors_on(Harness::start_shared()).await;
    p15_synchronization_between_stores_on(Harness::start_shared()).await;
}

/// `update_json_at_label` (the guest's read-modify-write helper) loses no
/// update while four runs of the actor increment one counter at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_modify_writes_lose_no_update() {
    let h = std::sync::Arc::new(Harness::start());
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move {
                let actor = h.load(SEED_PATTERNS);
                let param = json!({"pattern": "counter", "store": "counters", "times": 25});
                h.run(&actor, granted("counters", Access::ReadWrite), None, &param)
                    .await
            })
        })
        .collect();
    for run in runs {
        let out = run.await.unwrap();
        assert!(out["last"].as_u64().unwrap() <= 100);
    }
    let counters = h.root().store("counters").unwrap();
    assert_eq!(json_at(&counters, "count").await, json!(100));
}

/// A guest moves a document's head and version labels in one
/// `compare-and-swap-labels`; a stale publish moves neither.
#[tokio::test]
async fn a_guest_moves_several_labels_at_once_or_none() {
    let h = Harness::start();
    let actor = h.load(SEED_PATTERNS);
    let docs = h.root().store("docs").unwrap();
    for version in 1..=2 {
        let param = json!({"pattern": "publish", "store": "docs", "version": version});
        let out = h
            .run(&actor, granted("docs", Access::ReadWrite), None, &param)
            .await;
        assert_eq!(out["moved"], true);
        assert_eq!(out["stale_moved"], false);
        let doc = ContentRef::new(out["doc"].as_str().unwrap());
        assert_eq!(docs.get_by_label("head").await.unwrap(), Some(doc.clone()));
        assert_eq!(
            docs.get_by_label(&format!("version/{version}"))
                .await
                .unwrap(),
            Some(doc)
        );
    }
    assert_eq!(docs.get_by_label("version/stale").await.unwrap(), None);
    // The labels moved are charged to the store quota like any other.
    assert_eq!(docs.stats().await.unwrap().labels, 3);
}

/// A guest tells failures apart by kind through both interfaces, and the
/// message it gets carries no kind tag.
#[tokio::test]
async fn a_guest_sees_the_kind_of_every_failure() {
    let h = Harness::start();
    let out = h
        .run(
            &h.load(SEED_PATTERNS),
            own_stores_only(),
            None,
            &json!({"pattern": "error-kinds"}),
        )
        .await;
    assert_eq!(out["get_missing"], "NotFound");
    assert_eq!(out["range_missing"], "NotFound");
    assert_eq!(out["not_granted"], "AccessDenied");
    assert_eq!(out["not_granted_stream"], "AccessDenied");
    assert_eq!(out["bad_label"], "Invalid");
    assert_eq!(out["bad_ref"], "Invalid");
    let message = out["message"].as_str().unwrap();
    assert!(message.contains(&"0".repeat(64)), "{message}");
    assert!(!message.contains('['), "{message}");
}
