//! One actor that runs any of the seed's 15 store usage patterns.
//!
//! `init` takes a JSON parameter `{"pattern": NAME, ...}` and returns a JSON
//! state describing what it stored (store ids, refs, values read back), so
//! that the host, or the next actor in a two-actor pattern, can check and
//! continue the work. Patterns that span runs (actor state, cache,
//! append-only log) read their store id back from the previous state.
//!
//! Parameters, by pattern (`theater-store run seed_patterns.wasm --param
//! '{"pattern":"basic"}'`; grant the stores named with `--grant`):
//!
//! | pattern | other parameters |
//! | --- | --- |
//! | `stores` | `named`: a store id to use besides a new one of its own |
//! | `basic`, `labels`, `dedupe`, `linked-list` | none |
//! | `versioned` | optional `store` (else a new store) |
//! | `actor-state` | `actor_id`; the next run gets the previous state |
//! | `share` | `role`: `owner`, or any other role with `store` (a reader) |
//! | `cache` | `input` (a number, 10 if absent) |
//! | `snapshot` | `timestamps`: a list of snapshot times; optional `store` |
//! | `message` | `role`: `sender` with `size`, or any other role with `store_id` and `data_ref` (a receiver) |
//! | `inject` | `role`: `configurator`, or any other role with `store` and `environment` (a worker) |
//! | `append-log` | `log` (a name) and `entry` (any JSON); optional `store`, else the previous state's |
//! | `migrate` | `role`: `old` with `actor_id` and `state`, or any other role with `store`, `package` and `actor_id` (the new actor) |
//! | `sync` | `role`: `source` with `prefix`, or any other role with `package` (the target) |
//! | `counter` | `store`, `times`: read-modify-writes of label `count` |
//! | `publish` | `store`, `version`: head and version labels moved together |
//! | `error-kinds` | none: the kind of each failure, for tests |

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use theater_store_guest::{Actor, ContentRef, ContentStore, Error, log};

type Outcome = Result<Value, Error>;

struct SeedPatterns;

impl Actor for SeedPatterns {
    fn init(state: Option<Vec<u8>>, (param,): (String,)) -> Result<(Option<Vec<u8>>,), String> {
        let params: Value =
            serde_json::from_str(&param).map_err(|e| format!("bad parameter: {e}"))?;
        let previous: Value = match state {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("bad state: {e}"))?,
            None => Value::Null,
        };
        let pattern = text(&params, "pattern")?;
        log(&format!("running pattern {pattern}"));
        let result = match pattern.as_str() {
            "stores" => stores(&params),
            "basic" => basic(),
            "labels" => labels(),
            "actor-state" => actor_state(&params, &previous),
            "versioned" => versioned(),
            "dedupe" => dedupe(),
            "share" => share(&params),
            "linked-list" => linked_list(),
            "cache" => cache(&params, &previous),
            "snapshot" => snapshot(&params),
            "message" => message(&params),
            "inject" => inject(&params),
            "append-log" => append_log(&params, &previous),
            "migrate" => migrate(&params),
            "sync" => sync(&params),
            "counter" => counter(&params),
            "publish" => publish(&params),
            "error-kinds" => error_kinds(),
            "follow" => follow(&params),
            "history" => history(&params),
            other => return Err(format!("unknown pattern {other:?}")),
        }?;
        Ok((Some(result.to_string().into_bytes()),))
    }
}

theater_store_guest::export_actor!(SeedPatterns);

fn text(params: &Value, key: &str) -> Result<String, Error> {
    params[key]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::other(format!("parameter {key:?} is missing")))
}

/// The store named by `key` in `params` or the previous state, or a new one.
fn store_from(params: &Value, previous: &Value, key: &str) -> Result<ContentStore, Error> {
    match params[key].as_str().or(previous[key].as_str()) {
        Some(id) => Ok(ContentStore::from_id(id)),
        None => ContentStore::new(),
    }
}

/// 1. A store of our own, and a store the host granted by name.
fn stores(params: &Value) -> Outcome {
    let own = ContentStore::new()?;
    let named = ContentStore::from_id(text(params, "named")?);
    own.store_at_label("hello", "from my own store")?;
    named.store_at_label("hello", "from a named store")?;
    Ok(json!({"created": own.id(), "named": named.id()}))
}

/// 2. Store bytes, keep the ref, read them back.
fn basic() -> Outcome {
    let store = ContentStore::new()?;
    let content_ref = store.store("Important information")?;
    let text =
        String::from_utf8(store.get(&content_ref)?).map_err(|e| Error::other(e.to_string()))?;
    Ok(json!({"store": store.id(), "ref": content_ref, "text": text}))
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Config {
    url: String,
    retries: u32,
}

/// 3. Store under a label; read by label two ways.
fn labels() -> Outcome {
    let store = ContentStore::new()?;
    let config = Config {
        url: "http://localhost:8080".into(),
        retries: 3,
    };
    let content_ref = store.store_json_at_label("app:config", &config)?;
    let by_ref: Config = store.get_json(
        &store
            .get_by_label("app:config")?
            .ok_or(Error::other("label vanished"))?,
    )?;
    let by_label: Option<Config> = store.get_json_by_label("app:config")?;
    let same = by_label.as_ref() == Some(&by_ref) && by_ref == config;
    Ok(json!({"store": store.id(), "ref": content_ref, "same": same}))
}

/// 4. State under `actor:<id>:state`, carried across runs.
fn actor_state(params: &Value, previous: &Value) -> Outcome {
    let store = store_from(params, previous, "store")?;
    let actor_id = text(params, "actor_id")?;
    let label = format!("actor:{actor_id}:state");
    let runs: u64 = store.get_json_by_label(&label)?.unwrap_or(0) + 1;
    store.store_json_at_label(&label, &runs)?;
    Ok(json!({"store": store.id(), "label": label, "runs": runs}))
}

/// 5. Versions under `document:vN`, with `document:latest` moved along.
fn versioned() -> Outcome {
    let store = ContentStore::new()?;
    for version in 1..=3 {
        let content_ref = store.store_at_label(
            &format!("document:v{version}"),
            format!("Version {version} content"),
        )?;
        store.replace_at_label("document:latest", &content_ref)?;
    }
    let v1 = store
        .get_content_by_label("document:v1")?
        .unwrap_or_default();
    Ok(json!({"store": store.id(), "v1": String::from_utf8_lossy(&v1)}))
}

/// 6. Identical bytes stored twice share one ref and one copy.
fn dedupe() -> Outcome {
    let store = ContentStore::new()?;
    let ref1 = store.store("Duplicate content")?;
    let ref2 = store.store("Duplicate content")?;
    store.label("reference1", &ref1)?;
    store.label("reference2", &ref2)?;
    Ok(
        json!({"store": store.id(), "same_ref": ref1 == ref2, "objects": store.list_all_content()?.len()}),
    )
}

/// 7. One actor shares a resource; another, given the store id, reads it.
fn share(params: &Value) -> Outcome {
    match text(params, "role")?.as_str() {
        "owner" => {
            let store = ContentStore::new()?;
            let resource = json!({"name": "shared dataset", "rows": [1, 2, 3]});
            store.store_json_at_label("shared:resource", &resource)?;
            Ok(json!({"store": store.id()}))
        }
        _ => {
            let store = ContentStore::from_id(text(params, "store")?);
            let resource: Option<Value> = store.get_json_by_label("shared:resource")?;
            Ok(json!({"read": resource}))
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Node {
    value: String,
    next: Option<String>,
}

/// 8. A linked list whose links are content refs.
fn linked_list() -> Outcome {
    let store = ContentStore::new()?;
    let mut next = None;
    for value in ["Node 3", "Node 2", "Node 1"] {
        let node_ref = store.store_json(&Node {
            value: value.into(),
            next: next.take(),
        })?;
        next = Some(node_ref.hash().to_owned());
    }
    let head = ContentRef::new(next.expect("three nodes were stored"));
    store.label("list:head", &head)?;
    let mut values = Vec::new();
    let mut cursor = store.get_by_label("list:head")?;
    while let Some(node_ref) = cursor {
        let node: Node = store.get_json(&node_ref)?;
        values.push(node.value);
        cursor = node.next.map(ContentRef::new);
    }
    Ok(json!({"store": store.id(), "head": head, "values": values}))
}

/// 9. Memoise a computation under a label derived from its inputs.
fn cache(params: &Value, previous: &Value) -> Outcome {
    let store = store_from(params, previous, "store")?;
    let input = params["input"].as_u64().unwrap_or(10);
    let key = format!("cache:fib:{input}");
    if let Some(result) = store.get_json_by_label::<u64>(&key)? {
        return Ok(json!({"store": store.id(), "result": result, "computed": false}));
    }
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..input {
        (a, b) = (b, a.wrapping_add(b));
    }
    store.store_json_at_label(&key, &a)?;
    Ok(json!({"store": store.id(), "result": a, "computed": true}))
}

/// 10. Timestamped snapshots with a `snapshot:latest` pointer; restore the latest.
fn snapshot(params: &Value) -> Outcome {
    let store = ContentStore::new()?;
    let mut state = json!({"counter": 0});
    for timestamp in params["timestamps"].as_array().cloned().unwrap_or_default() {
        state["counter"] = json!(state["counter"].as_u64().unwrap_or(0) + 1);
        let content_ref = store.store_json_at_label(&format!("snapshot:{timestamp}"), &state)?;
        store.replace_at_label("snapshot:latest", &content_ref)?;
    }
    let restored: Option<Value> = store.get_json_by_label("snapshot:latest")?;
    Ok(json!({"store": store.id(), "restored": restored}))
}

/// 11. Send a large payload as a store id plus a ref.
fn message(params: &Value) -> Outcome {
    match text(params, "role")?.as_str() {
        "sender" => {
            let store = ContentStore::new()?;
            let size = params["size"].as_u64().unwrap_or(1 << 20) as usize;
            let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let data_ref = store.store(&payload)?;
            Ok(json!({"store_id": store.id(), "data_ref": data_ref.hash()}))
        }
        _ => {
            let store = ContentStore::from_id(text(params, "store_id")?);
            let data = store.get(&ContentRef::new(text(params, "data_ref")?))?;
            let well_formed = data.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8);
            Ok(json!({"received_bytes": data.len(), "well_formed": well_formed}))
        }
    }
}

/// 12. A configurator stores per-environment configs; a worker picks its own.
fn inject(params: &Value) -> Outcome {
    match text(params, "role")?.as_str() {
        "configurator" => {
            let store = ContentStore::new()?;
            let dev = Config {
                url: "http://localhost:8080".into(),
                retries: 1,
            };
            let prod = Config {
                url: "https://production.example.com".into(),
                retries: 5,
            };
            store.store_json_at_label("config:environment:dev", &dev)?;
            store.store_json_at_label("config:environment:prod", &prod)?;
            Ok(json!({"store": store.id()}))
        }
        _ => {
            let store = ContentStore::from_id(text(params, "store")?);
            let label = format!("config:environment:{}", text(params, "environment")?);
            let config: Config = store
                .get_json_by_label(&label)?
                .ok_or_else(|| Error::other(format!("no configuration under {label}")))?;
            log(&format!("configured for {}", config.url));
            Ok(json!({"url": config.url, "retries": config.retries}))
        }
    }
}

/// 13. An append-only log: entries by ref, the ordered index under `log:<name>`.
fn append_log(params: &Value, previous: &Value) -> Outcome {
    let store = store_from(params, previous, "store")?;
    let label = format!("log:{}", text(params, "log")?);
    let entry_ref = store.store_json(&params["entry"])?;
    let mut index: Vec<String> = store.get_json_by_label(&label)?.unwrap_or_default();
    index.push(entry_ref.hash().to_owned());
    store.replace_content_at_label(&label, serde_json::to_vec(&index)?)?;
    let mut entries = Vec::new();
    for hash in &index {
        entries.push(store.get_json::<Value>(&ContentRef::new(hash))?);
    }
    Ok(json!({"store": store.id(), "entries": entries}))
}

#[derive(Serialize, Deserialize)]
struct MigrationPackage {
    actor_id: String,
    state_ref: String,
    version: String,
}

/// 14. The old actor packages its state; the new one adopts it.
fn migrate(params: &Value) -> Outcome {
    match text(params, "role")?.as_str() {
        "old" => {
            let store = ContentStore::new()?;
            let actor_id = text(params, "actor_id")?;
            let state_ref =
                store.store_json_at_label(&format!("actor:{actor_id}:state"), &params["state"])?;
            let package = MigrationPackage {
                actor_id: actor_id.clone(),
                state_ref: state_ref.hash().into(),
                version: "1.0".into(),
            };
            let package_ref = store.store_json(&package)?;
            store.label(&format!("migration:{actor_id}:1"), &package_ref)?;
            Ok(json!({"store": store.id(), "package": package_ref.hash()}))
        }
        _ => {
            let store = ContentStore::from_id(text(params, "store")?);
            let package_ref = ContentRef::new(text(params, "package")?);
            let package: MigrationPackage = store.get_json(&package_ref)?;
            let state = store.get(&ContentRef::new(package.state_ref))?;
            let new_id = text(params, "actor_id")?;
            store.store_at_label(&format!("actor:{new_id}:state"), state)?;
            store.label(&format!("actor:{new_id}:migration-history"), &package_ref)?;
            Ok(json!({"migrated_from": package.actor_id}))
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
struct SyncPackage {
    labels: Vec<(String, String)>,
    content: Vec<(String, Vec<u8>)>,
}

/// 15. Export labels under a prefix with their content; import into another store.
fn sync(params: &Value) -> Outcome {
    match text(params, "role")?.as_str() {
        "source" => {
            let store = ContentStore::new()?;
            for (label, body) in [
                ("sync:a", "alpha"),
                ("sync:b", "beta"),
                ("local:c", "not synced"),
            ] {
                store.store_at_label(label, body)?;
            }
            let prefix = text(params, "prefix")?;
            let mut package = SyncPackage::default();
            for label in store
                .list_labels()?
                .into_iter()
                .filter(|l| l.starts_with(&prefix))
            {
                if let Some(content_ref) = store.get_by_label(&label)? {
                    package
                        .content
                        .push((content_ref.hash().into(), store.get(&content_ref)?));
                    package.labels.push((label, content_ref.hash().into()));
                }
            }
            Ok(json!({"store": store.id(), "package": package}))
        }
        _ => {
            let package: SyncPackage = serde_json::from_value(params["package"].clone())?;
            let store = ContentStore::new()?;
            for (hash, content) in package.content {
                if !store.exists(&ContentRef::new(&hash))? && store.store(content)?.hash() != hash {
                    return Err(Error::other(format!(
                        "content for {hash} did not match its hash"
                    )));
                }
            }
            for (label, hash) in package.labels {
                store.label(&label, &ContentRef::new(hash))?;
            }
            Ok(json!({"store": store.id(), "labels": store.list_labels()?}))
        }
    }
}

/// Beyond the seed: `times` read-modify-writes of a JSON counter at label
/// `count` of store `store`, safe while other runs do the same.
fn counter(params: &Value) -> Outcome {
    let store = ContentStore::from_id(text(params, "store")?);
    let times = params["times"].as_u64().unwrap_or(1);
    let mut last = 0;
    for _ in 0..times {
        (last, _) =
            store.update_json_at_label("count", |count: Option<u64>| count.unwrap_or(0) + 1)?;
    }
    Ok(json!({ "last": last }))
}

/// Beyond the seed: publishes version `version` of a document, moving the
/// `head` label and a `version/N` label together, only if `head` still
/// points where the previous version left it. A stale publisher (one that
/// read `head` before another's publish) is refused, and moves neither.
fn publish(params: &Value) -> Outcome {
    let store = ContentStore::from_id(text(params, "store")?);
    let version = params["version"].as_u64().unwrap_or(1);
    let seen_head = store.get_by_label("head")?;
    let doc = store.store(format!("document, version {version}"))?;
    let version_label = format!("version/{version}");
    let moved = store.compare_and_swap_labels(&[
        ("head", seen_head.as_ref(), Some(&doc)),
        (&version_label, None, Some(&doc)),
    ])?;
    // The same publish again, now stale: refused as a whole.
    let stale = store.store(format!("document, version {version}, stale copy"))?;
    let stale_moved = store.compare_and_swap_labels(&[
        ("head", seen_head.as_ref(), Some(&stale)),
        ("version/stale", None, Some(&stale)),
    ])?;
    Ok(json!({ "moved": moved, "stale_moved": stale_moved, "doc": doc.hash() }))
}

/// Beyond the seed: following a store's change log. Waits (blocking on the
/// host's pollable, not spinning) until `count` changes to labels under
/// `prefix` have come after `since`, and returns them; `count` 0 only
/// reads what is there.
fn follow(params: &Value) -> Outcome {
    let store = ContentStore::from_id(text(params, "store")?);
    let prefix = params["prefix"].as_str().unwrap_or("");
    let want = params["count"].as_u64().unwrap_or(0) as usize;
    let mut since = params["since"].as_u64().unwrap_or(0);
    let mut seen = Vec::new();
    let mut waits = 0;
    loop {
        let page = store.read_changes(prefix, since, 100)?;
        since = page.next;
        seen.extend(page.changes.into_iter().map(|change| {
            json!({
                "seq": change.seq,
                "label": change.label,
                "old": change.old.map(|r| r.hash().to_owned()),
                "new": change.new.map(|r| r.hash().to_owned()),
                "actor": change.actor,
            })
        }));
        if seen.len() >= want {
            break;
        }
        if since == page.last_seq {
            store.wait_for_change(since)?;
            waits += 1;
        }
    }
    Ok(json!({ "changes": seen, "next": since, "waits": waits }))
}

/// Beyond the seed: a label's past values and its value at a point of the
/// store's change log, read back through `store-streams`.
fn history(params: &Value) -> Outcome {
    let store = ContentStore::from_id(text(params, "store")?);
    let label = text(params, "label")?;
    let seq = params["at"].as_u64().unwrap_or(0);
    let versions: Vec<Value> = store
        .label_history(&label, 100)?
        .into_iter()
        .map(|change| json!({ "seq": change.seq, "ref": change.new.map(|r| r.hash().to_owned()) }))
        .collect();
    let then = store.get_label_at(&label, seq)?;
    let then_content = match &then {
        Some(content_ref) => Some(String::from_utf8_lossy(&store.get(content_ref)?).into_owned()),
        None => None,
    };
    Ok(
        json!({ "versions": versions, "at": then.map(|r| r.hash().to_owned()), "content_at": then_content }),
    )
}

/// Beyond the seed: the kind of each failure, through both interfaces
/// (`store`'s strings and `store-streams`' typed errors), for the host's
/// tests to check.
fn error_kinds() -> Outcome {
    let own = ContentStore::new()?;
    let missing = ContentRef::new("0".repeat(64));
    let not_granted = ContentStore::from_id("not-granted");
    let kind = |result: Result<(), Error>| match result {
        Ok(()) => "ok".to_owned(),
        Err(error) => format!("{:?}", error.kind()),
    };
    Ok(json!({
        "get_missing": kind(own.get(&missing).map(drop)),
        "range_missing": kind(own.read_range(&missing, 0, 1).map(drop)),
        "not_granted": kind(not_granted.store("x").map(drop)),
        "not_granted_stream": kind(not_granted.writer().map(drop)),
        "bad_label": kind(own.store_at_label("", "x").map(drop)),
        "bad_ref": kind(own.get(&ContentRef::new("not a ref")).map(drop)),
        "message": own.get(&missing).unwrap_err().to_string(),
    }))
}
