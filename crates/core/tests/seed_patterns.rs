//! The host-side snippets of shared/seed/store-usage-patterns.md, written as
//! the seed writes them (with `?` on real errors), each checked.

mod common;

use std::collections::HashMap;
use std::sync::Once;

use serde::{Deserialize, Serialize};
use theater_store::{ContentRef, ContentStore};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Points the default root at a fresh root of the engine under test (a
/// temporary directory, or a new shared root), once per process, before
/// any test touches it.
fn default_root_in_temp_dir() {
    static SET: Once = Once::new();
    SET.call_once(|| {
        let (dir, root) = common::temp_root();
        let root = root.describe().unwrap();
        std::mem::forget(dir);
        // SAFETY: runs once, before any test in this binary reads the environment.
        unsafe { std::env::set_var(theater_store::ROOT_ENV_VAR, root) };
    });
}

#[tokio::test]
async fn pattern_01_creating_and_managing_stores() -> TestResult {
    default_root_in_temp_dir();
    let store = ContentStore::new();
    assert_eq!(store.id().len(), 36);
    let store = ContentStore::from_id("my-store-id")?;
    assert_eq!(store.id(), "my-store-id");
    Ok(())
}

#[tokio::test]
async fn pattern_02_basic_storage_and_retrieval() -> TestResult {
    default_root_in_temp_dir();
    let store = ContentStore::new();
    let content = "Important information".as_bytes().to_vec();
    let content_ref = store.store(content).await?;
    let retrieved = store.get(&content_ref).await?;
    let text = String::from_utf8(retrieved)?;
    assert_eq!(text, "Important information");
    Ok(())
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Config {
    url: String,
}

#[tokio::test]
async fn pattern_03_labels() -> TestResult {
    default_root_in_temp_dir();
    let store = ContentStore::new();
    let config = Config {
        url: "http://localhost:8080".into(),
    };
    let config_data = serde_json::to_vec(&config)?;
    let content_ref = store.store_at_label("app:config", config_data).await?;
    let content_ref_opt = store.get_by_label("app:config").await?;
    assert_eq!(content_ref_opt.as_ref(), Some(&content_ref));
    let config_data = store.get(&content_ref_opt.unwrap()).await?;
    assert_eq!(serde_json::from_slice::<Config>(&config_data)?, config);
    let config_data_opt = store.get_content_by_label("app:config").await?;
    assert_eq!(
        serde_json::from_slice::<Config>(&config_data_opt.unwrap())?,
        config
    );
    Ok(())
}

#[tokio::test]
async fn pattern_04_actor_specific_storage() -> TestResult {
    default_root_in_temp_dir();
    let store = ContentStore::new();
    let actor_id = "7e3f4a21-9c8b-4e5d-a6f7-1b2c3d4e5f6a";
    let label = format!("actor:{}:state", actor_id);
    store.store_at_label(&label, b"state".to_vec()).await?;
    let content_ref = store
        .get_by_label(&label)
        .await?
        .expect("state is labelled");
    assert_eq!(store.get(&content_ref).await?, b"state");
    Ok(())
}

#[tokio::test]
async fn pattern_05_versioned_content() -> TestResult {
    default_root_in_temp_dir();
    let store = ContentStore::new();
    for version in 1..=2 {
        let document = format!("Version {version} content").into_bytes();
        let version_label = format!("document:v{}", version);
        let content_ref = store
            .store_at_label(&version_label, document.clone())
            .await?;
        store
            .replace_at_label("document:latest", &content_ref)
            .await?;
    }
    let v1 = store.get_by_label("document:v1").await?.unwrap();
    let latest = store.get_by_label("document:latest").await?.unwrap();
    assert_eq!(store.get(&v1).await?, b"Version 1 content");
    assert_eq!(store.get(&latest).await?, b"Version 2 content");
    Ok(())
}

#[tokio::test]
async fn pattern_06_deduplication() -> TestResult {
    default_root_in_temp_dir();
    let store = ContentStore::new();
    let ref1 = store.store("Duplicate content".as_bytes().to_vec()).await?;
    let ref2 = store.store("Duplicate content".as_bytes().to_vec()).await?;
    assert_eq!(ref1.hash(), ref2.hash());
    store.label("reference1", &ref1).await?;
    store.label("reference2", &ref2).await?;
    assert_eq!(store.get(&ref1).await?, store.get(&ref2).await?);
    assert_eq!(store.list_all_content().await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn pattern_07_shared_resources_between_actors() -> TestResult {
    default_root_in_temp_dir();
    let store = ContentStore::new();
    let store_id = store.id().to_string();
    store
        .store_at_label("shared:resource", b"shared".to_vec())
        .await?;
    let other = ContentStore::from_id(&store_id)?;
    let content_ref = other.get_by_label("shared:resource").await?.unwrap();
    assert_eq!(other.get(&content_ref).await?, b"shared");
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Node {
    value: String,
    next: Option<String>,
}

#[tokio::test]
async fn pattern_08_linked_list() -> TestResult {
    default_root_in_temp_dir();
    let store = ContentStore::new();
    let mut next: Option<String> = None;
    for value in ["Node 3", "Node 2", "Node 1"] {
        let node = Node {
            value: value.into(),
            next: next.take(),
        };
        let node_ref = store.store(serde_json::to_vec(&node)?).await?;
        next = Some(node_ref.hash().to_string());
    }
    store
        .label("list:head", &ContentRef::new(next.unwrap()))
        .await?;
    let mut values = Vec::new();
    let mut current_ref_opt = store.get_by_label("list:head").await?;
    while let Some(current_ref) = current_ref_opt {
        let node: Node = serde_json::from_slice(&store.get(&current_ref).await?)?;
        values.push(node.value);
        current_ref_opt = node.next.map(ContentRef::new);
    }
    assert_eq!(values, ["Node 1", "Node 2", "Node 3"]);
    Ok(())
}

#[tokio::test]
async fn pattern_09_cached_computation() -> TestResult {
    default_root_in_temp_dir();
    let store = ContentStore::new();
    let mut computations = 0;
    for _ in 0..3 {
        let cache_key = format!("cache:func:{}:{}", "value1", 42);
        if let Some(result_bytes) = store.get_content_by_label(&cache_key).await? {
            assert_eq!(serde_json::from_slice::<u64>(&result_bytes)?, 84);
            continue;
        }
        computations += 1;
        store
            .store_at_label(&cache_key, serde_json::to_vec(&84u64)?)
            .await?;
    }
    assert_eq!(computations, 1);
    Ok(())
}

#[tokio::test]
async fn pattern_10_snapshot_and_restore() -> TestResult {
    default_root_in_temp_dir();
    let store = ContentStore::new();
    for (timestamp, state) in [(1, "first"), (2, "second")] {
        let snapshot_label = format!("snapshot:{}", timestamp);
        let content_ref = store
            .store_at_label(&snapshot_label, serde_json::to_vec(state)?)
            .await?;
        store
            .replace_at_label("snapshot:latest", &content_ref)
            .await?;
    }
    let content_ref = store.get_by_label("snapshot:latest").await?.unwrap();
    let state: String = serde_json::from_slice(&store.get(&content_ref).await?)?;
    assert_eq!(state, "second");
    Ok(())
}

#[tokio::test]
async fn pattern_11_content_based_messaging() -> TestResult {
    default_root_in_temp_dir();
    let store = ContentStore::new();
    let large_data = vec![42u8; 3 << 20];
    let content_ref = store.store(large_data.clone()).await?;
    let (store_id, data_ref) = (store.id().to_string(), content_ref.hash().to_string());
    let receiver = ContentStore::from_id(&store_id)?;
    assert_eq!(receiver.get(&ContentRef::new(data_ref)).await?, large_data);
    Ok(())
}

#[tokio::test]
async fn pattern_12_dependency_injection() -> TestResult {
    default_root_in_temp_dir();
    let store = ContentStore::new();
    let dev = Config {
        url: "http://localhost:8080".into(),
    };
    let prod = Config {
        url: "https://production.example.com".into(),
    };
    store
        .store_at_label("config:environment:dev", serde_json::to_vec(&dev)?)
        .await?;
    store
        .store_at_label("config:environment:prod", serde_json::to_vec(&prod)?)
        .await?;
    let actor_store = ContentStore::from_id(store.id())?;
    let config_bytes = actor_store
        .get_content_by_label("config:environment:prod")
        .await?
        .unwrap();
    assert_eq!(serde_json::from_slice::<Config>(&config_bytes)?, prod);
    Ok(())
}

async fn append_log_entry(store: &ContentStore, log_name: &str, entry: &str) -> TestResult {
    let entry_ref = store.store(serde_json::to_vec(entry)?).await?;
    let log_label = format!("log:{}", log_name);
    if let Some(log_bytes) = store.get_content_by_label(&log_label).await? {
        let mut log: Vec<String> = serde_json::from_slice(&log_bytes)?;
        log.push(entry_ref.hash().to_string());
        store
            .replace_content_at_label(&log_label, serde_json::to_vec(&log)?)
            .await?;
    } else {
        let log = vec![entry_ref.hash().to_string()];
        store
            .store_at_label(&log_label, serde_json::to_vec(&log)?)
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn pattern_13_append_only_log() -> TestResult {
    default_root_in_temp_dir();
    let store = ContentStore::new();
    for entry in ["started", "working", "stopped"] {
        append_log_entry(&store, "events", entry).await?;
    }
    let log_refs: Vec<String> =
        serde_json::from_slice(&store.get_content_by_label("log:events").await?.unwrap())?;
    let mut entries = Vec::new();
    for entry_hash in log_refs {
        let bytes = store.get(&ContentRef::new(entry_hash)).await?;
        entries.push(serde_json::from_slice::<String>(&bytes)?);
    }
    assert_eq!(entries, ["started", "working", "stopped"]);
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct MigrationPackage {
    actor_id: String,
    state_ref: String,
    version: String,
}

#[tokio::test]
async fn pattern_14_migration() -> TestResult {
    default_root_in_temp_dir();
    let store = ContentStore::new();
    store
        .store_at_label("actor:old:state", b"old state".to_vec())
        .await?;
    let state_ref = store.get_by_label("actor:old:state").await?.unwrap();
    let migration = MigrationPackage {
        actor_id: "old".into(),
        state_ref: state_ref.hash().to_string(),
        version: "1.0".into(),
    };
    let package_ref = store.store(serde_json::to_vec(&migration)?).await?;
    store.label("migration:old:1", &package_ref).await?;

    let package: MigrationPackage = serde_json::from_slice(&store.get(&package_ref).await?)?;
    let state_bytes = store.get(&ContentRef::new(package.state_ref)).await?;
    store.store_at_label("actor:new:state", state_bytes).await?;
    store
        .label("actor:new:migration-history", &package_ref)
        .await?;
    assert_eq!(
        store
            .get_content_by_label("actor:new:state")
            .await?
            .unwrap(),
        b"old state"
    );
    Ok(())
}

#[tokio::test]
async fn pattern_15_synchronization() -> TestResult {
    default_root_in_temp_dir();
    let source = ContentStore::new();
    source.store_at_label("sync:a", b"A".to_vec()).await?;
    source.store_at_label("sync:b", b"B".to_vec()).await?;
    source.store_at_label("private", b"P".to_vec()).await?;

    let mut labels = Vec::new();
    let mut content = HashMap::new();
    for label in source
        .list_labels()
        .await?
        .into_iter()
        .filter(|l| l.starts_with("sync:"))
    {
        let content_ref = source.get_by_label(&label).await?.unwrap();
        content.insert(
            content_ref.hash().to_string(),
            source.get(&content_ref).await?,
        );
        labels.push((label, content_ref.hash().to_string()));
    }

    let target = ContentStore::new();
    for (hash, bytes) in content {
        if !target.exists(&ContentRef::new(hash.clone())).await? {
            assert_eq!(target.store(bytes).await?.hash(), hash);
        }
    }
    for (label, hash) in labels {
        target.label(&label, &ContentRef::new(hash)).await?;
    }
    assert_eq!(target.list_labels().await?, ["sync:a", "sync:b"]);
    assert_eq!(target.get_content_by_label("sync:b").await?.unwrap(), b"B");
    Ok(())
}
