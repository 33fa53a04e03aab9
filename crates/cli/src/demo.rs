//! `theater-store demo`: the seed's 15 usage patterns, run as the bundled
//! example actor against the chosen root, with what each stored shown.

use std::process::ExitCode;

use serde_json::{Value, json};
use theater_store::StoreRoot;
use theater_store_examples::SEED_PATTERNS;
use theater_store_host::{Access, ActorHost, Grants, RunOptions};

use crate::out::outln;
use crate::stores::print_json;

/// The named store pattern 1 opens by id (granted to it).
const NAMED_STORE: &str = "demo-named-store";

/// One run of the actor: its parameter, built from earlier runs' outputs,
/// and whether it continues from the previous run's state.
struct Step {
    param: fn(&[Value]) -> Value,
    resumes: bool,
}

struct Pattern {
    title: &'static str,
    steps: Vec<Step>,
}

fn step(param: fn(&[Value]) -> Value) -> Step {
    Step {
        param,
        resumes: false,
    }
}

fn resume(param: fn(&[Value]) -> Value) -> Step {
    Step {
        param,
        resumes: true,
    }
}

fn patterns() -> Vec<Pattern> {
    let p = |title, steps| Pattern { title, steps };
    vec![
        p(
            "Creating and managing stores",
            vec![step(|_| json!({"pattern": "stores", "named": NAMED_STORE}))],
        ),
        p(
            "Basic storage and retrieval",
            vec![step(|_| json!({"pattern": "basic"}))],
        ),
        p("Labels", vec![step(|_| json!({"pattern": "labels"}))]),
        p("Actor-specific storage (three restarts)", {
            let param = |_: &[Value]| json!({"pattern": "actor-state", "actor_id": "7e3f4a21-9c8b-4e5d-a6f7-1b2c3d4e5f6a"});
            vec![step(param), resume(param), resume(param)]
        }),
        p(
            "Versioned content",
            vec![step(|_| json!({"pattern": "versioned"}))],
        ),
        p(
            "Deduplication",
            vec![step(|_| json!({"pattern": "dedupe"}))],
        ),
        p(
            "Shared resources between two actors",
            vec![
                step(|_| json!({"pattern": "share", "role": "owner"})),
                step(|out| json!({"pattern": "share", "role": "reader", "store": out[0]["store"]})),
            ],
        ),
        p(
            "A linked list of refs",
            vec![step(|_| json!({"pattern": "linked-list"}))],
        ),
        p("Cached computation (second run hits the cache)", {
            let param = |_: &[Value]| json!({"pattern": "cache", "input": 50});
            vec![step(param), resume(param)]
        }),
        p(
            "Snapshot and restore",
            vec![step(
                |_| json!({"pattern": "snapshot", "timestamps": [1, 2, 3]}),
            )],
        ),
        p(
            "Messaging with a 1 MiB payload",
            vec![
                step(|_| json!({"pattern": "message", "role": "sender", "size": 1 << 20})),
                step(
                    |out| json!({"pattern": "message", "role": "receiver", "store_id": out[0]["store_id"], "data_ref": out[0]["data_ref"]}),
                ),
            ],
        ),
        p(
            "Dependency injection",
            vec![
                step(|_| json!({"pattern": "inject", "role": "configurator"})),
                step(
                    |out| json!({"pattern": "inject", "role": "worker", "store": out[0]["store"], "environment": "prod"}),
                ),
            ],
        ),
        p(
            "Append-only log",
            vec![
                step(|_| json!({"pattern": "append-log", "log": "events", "entry": "boot"})),
                resume(|_| json!({"pattern": "append-log", "log": "events", "entry": "work"})),
                resume(|_| json!({"pattern": "append-log", "log": "events", "entry": "halt"})),
            ],
        ),
        p(
            "Migration between actors",
            vec![
                step(
                    |_| json!({"pattern": "migrate", "role": "old", "actor_id": "old-actor", "state": {"balance": 42}}),
                ),
                step(
                    |out| json!({"pattern": "migrate", "role": "new", "store": out[0]["store"], "package": out[0]["package"], "actor_id": "new-actor"}),
                ),
            ],
        ),
        p(
            "Synchronization between stores",
            vec![
                step(|_| json!({"pattern": "sync", "role": "source", "prefix": "sync:"})),
                step(
                    |out| json!({"pattern": "sync", "role": "target", "package": out[0]["package"]}),
                ),
            ],
        ),
    ]
}

pub async fn demo(root: &StoreRoot, json: bool) -> anyhow::Result<ExitCode> {
    let host = ActorHost::new(root.clone())?;
    let actor = host.load(SEED_PATTERNS)?;
    if !json {
        let location = root.describe().unwrap_or_else(|| "?".into());
        outln!("Running the 15 seed patterns as wasm actors against {location}\n");
    }
    let mut report = Vec::new();
    for (number, pattern) in patterns().into_iter().enumerate() {
        let mut outputs: Vec<Value> = Vec::new();
        let mut touched: Vec<String> = Vec::new();
        let mut logs = Vec::new();
        for step in &pattern.steps {
            // Each run may use the stores earlier runs of this pattern created,
            // as a runtime handing store ids between actors would allow.
            let mut grants = Grants::none().store(NAMED_STORE, Access::ReadWrite);
            for id in &touched {
                grants = grants.store(id.clone(), Access::ReadWrite);
            }
            let state = match (step.resumes, outputs.last()) {
                (true, Some(previous)) => Some(previous.to_string().into_bytes()),
                _ => None,
            };
            let param = (step.param)(&outputs);
            let run = host
                .run_init(
                    &actor,
                    RunOptions {
                        grants,
                        ..RunOptions::default()
                    },
                    state,
                    &param.to_string(),
                )
                .await;
            logs.extend(run.logs);
            let new_state = run.outcome.map_err(|failure| {
                anyhow::anyhow!(
                    "pattern {} ({}): {failure}\n{}",
                    number + 1,
                    pattern.title,
                    run.stderr
                )
            })?;
            outputs.push(new_state.map_or(Value::Null, |bytes| {
                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
            }));
            for id in run.created_stores {
                if !touched.contains(&id) {
                    touched.push(id);
                }
            }
        }
        if number == 0 {
            touched.push(NAMED_STORE.to_owned());
        }
        let mut stores = Vec::new();
        for id in &touched {
            let store = root.store(id)?;
            let mut labels = Vec::new();
            for entry in store.list_labels_page("", None, usize::MAX).await? {
                let bytes = store.get(&entry.content_ref).await?.len();
                labels.push(
                    json!({"label": entry.label, "ref": entry.content_ref.hash(), "bytes": bytes}),
                );
            }
            let stats = store.stats().await?;
            stores.push(json!({"store": id, "objects": stats.objects, "bytes": stats.bytes, "labels": labels}));
        }
        let entry = json!({
            "pattern": number + 1,
            "title": pattern.title,
            "result": outputs.last(),
            "stores": stores,
            "logs": logs,
        });
        if !json {
            print_pattern(&entry);
        }
        report.push(entry);
    }
    if json {
        print_json(&report)?;
    } else {
        outln!(
            "Inspect with: theater-store stores, theater-store labels STORE, theater-store cat STORE --label LABEL, theater-store changes STORE"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_pattern(entry: &Value) {
    outln!(
        "{:>2}. {}",
        entry["pattern"],
        entry["title"].as_str().unwrap_or_default()
    );
    for store in entry["stores"].as_array().into_iter().flatten() {
        outln!(
            "    store {}: {}, {} bytes",
            store["store"].as_str().unwrap_or_default(),
            crate::out::count(store["objects"].as_u64().unwrap_or_default(), "object"),
            store["bytes"]
        );
        for label in store["labels"].as_array().into_iter().flatten() {
            let hash = label["ref"].as_str().unwrap_or_default();
            outln!(
                "      {:<44} -> {}… ({} bytes)",
                label["label"].as_str().unwrap_or_default(),
                &hash[..hash.len().min(16)],
                label["bytes"]
            );
        }
    }
    let mut result = entry["result"].to_string();
    if result.len() > 160 {
        result.truncate(result.floor_char_boundary(157));
        result.push_str("...");
    }
    outln!("    actor returned: {result}\n");
}
