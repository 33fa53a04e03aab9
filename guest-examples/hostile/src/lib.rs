//! An actor that tries everything an actor should not be able to do.
//!
//! `init` takes `{"attack": NAME, "store": ID?}`. Attacks that the host
//! should refuse with an error return `{"attempts": [{"what", "error"}]}`,
//! one entry per call tried, with `error: null` where a call unexpectedly
//! succeeded. Attacks that must end the actor (loops, memory) never return.

use serde_json::{Value, json};
use theater_store_guest::bindings::theater::simple::store as wit;
use theater_store_guest::{Actor, log};

struct Hostile;

/// Records what happened to one attempt.
struct Attempts(Vec<Value>);

impl Attempts {
    fn record<T>(&mut self, what: impl Into<String>, result: Result<T, String>) {
        self.0
            .push(json!({"what": what.into(), "error": result.err()}));
    }
}

fn reference(hash: &str) -> wit::ContentRef {
    wit::ContentRef { hash: hash.into() }
}

impl Actor for Hostile {
    fn init(_state: Option<Vec<u8>>, (param,): (String,)) -> Result<(Option<Vec<u8>>,), String> {
        let params: Value = serde_json::from_str(&param).map_err(|e| e.to_string())?;
        let attack = params["attack"].as_str().unwrap_or_default();
        let target = params["store"].as_str().unwrap_or_default();
        let mut attempts = Attempts(Vec::new());
        match attack {
            "traversal" => {
                for id in [
                    "../x",
                    "/etc/passwd",
                    "..",
                    "a/../../b",
                    "",
                    ".",
                    "stores/../..",
                ] {
                    attempts.record(format!("store into store id {id:?}"), wit::store(id, b"x"));
                    attempts.record(
                        format!("list labels of store id {id:?}"),
                        wit::list_labels(id),
                    );
                }
                let own = wit::new()?;
                for hash in [
                    "../../../../etc/passwd",
                    "/etc/passwd",
                    "../index.sqlite",
                    "..",
                    "",
                ] {
                    attempts.record(
                        format!("get ref {hash:?}"),
                        wit::get(&own, &reference(hash)),
                    );
                    attempts.record(
                        format!("label ref {hash:?}"),
                        wit::label(&own, "l", &reference(hash)),
                    );
                }
            }
            "bad-labels" => {
                let own = wit::new()?;
                let content = wit::store(&own, b"x")?;
                let huge = "x".repeat(4096);
                for label in ["nul\0label", "", huge.as_str()] {
                    let shown: String = label.chars().take(12).collect();
                    attempts.record(
                        format!("label {shown:?}"),
                        wit::label(&own, label, &content),
                    );
                    attempts.record(
                        format!("store-at-label {shown:?}"),
                        wit::store_at_label(&own, label, b"y"),
                    );
                    attempts.record(
                        format!("get-by-label {shown:?}"),
                        wit::get_by_label(&own, label),
                    );
                }
            }
            "malformed-refs" => {
                let own = wit::new()?;
                let upper = "A".repeat(64);
                let short = "a".repeat(63);
                let long = "a".repeat(65);
                for hash in [
                    "not-a-hash",
                    upper.as_str(),
                    short.as_str(),
                    long.as_str(),
                    "g".repeat(64).as_str(),
                ] {
                    attempts.record(format!("get {hash:?}"), wit::get(&own, &reference(hash)));
                    attempts.record(
                        format!("exists {hash:?}"),
                        wit::exists(&own, &reference(hash)),
                    );
                    attempts.record(
                        format!("remove-from-label {hash:?}"),
                        wit::remove_from_label(&own, "l", &reference(hash)),
                    );
                }
            }
            "ungranted" => {
                attempts.record("list labels", wit::list_labels(target));
                attempts.record("get-by-label", wit::get_by_label(target, "secret"));
                attempts.record("store", wit::store(target, b"intrusion"));
                attempts.record("remove-label", wit::remove_label(target, "secret"));
                attempts.record("total size", wit::calculate_total_size(target));
            }
            "read-only" => {
                let listed = wit::list_labels(target);
                log(&format!("read-only listing: {listed:?}"));
                let secret = wit::get_by_label(target, "secret")?.ok_or("no secret label")?;
                attempts.record("store", wit::store(target, b"overwrite"));
                attempts.record(
                    "store-at-label",
                    wit::store_at_label(target, "secret", b"overwrite"),
                );
                attempts.record(
                    "replace-content-at-label",
                    wit::replace_content_at_label(target, "secret", b"o"),
                );
                attempts.record("label", wit::label(target, "stolen", &secret));
                attempts.record("remove-label", wit::remove_label(target, "secret"));
                attempts.record(
                    "remove-from-label",
                    wit::remove_from_label(target, "secret", &secret),
                );
            }
            "oversize-content" => {
                let own = wit::new()?;
                let size = params["bytes"].as_u64().unwrap_or(2 << 20) as usize;
                attempts.record("store oversize content", wit::store(&own, &vec![1u8; size]));
                attempts.record(
                    "store-at-label oversize content",
                    wit::store_at_label(&own, "big", &vec![2u8; size]),
                );
            }
            "quota" => {
                let own = wit::new()?;
                let mut stored = 0u32;
                loop {
                    match wit::store(&own, stored.to_le_bytes().repeat(256).as_slice()) {
                        Ok(_) => stored += 1,
                        Err(error) => {
                            attempts.record(
                                format!("store after {stored} objects"),
                                Err::<(), _>(error),
                            );
                            break;
                        }
                    }
                    if stored > 100_000 {
                        attempts.record("quota never enforced", Ok::<_, String>(()));
                        break;
                    }
                }
            }
            "infinite-loop" => {
                log("looping forever");
                let mut counter = 0u64;
                loop {
                    counter = std::hint::black_box(counter.wrapping_add(1));
                }
            }
            "memory-bomb" => {
                log("allocating without bound");
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0xAB; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "call-storm" => {
                let own = wit::new()?;
                let content = wit::store(&own, b"storm")?;
                let calls = params["calls"].as_u64().unwrap_or(u64::MAX);
                let mut made = 0u64;
                while made < calls {
                    wit::exists(&own, &content)?;
                    wit::get_by_label(&own, "nothing")?;
                    made += 2;
                }
                attempts.record(format!("{made} calls"), Ok::<_, String>(()));
            }
            "store-flood" => {
                let mut created = 0u32;
                loop {
                    match wit::new() {
                        Ok(_) => created += 1,
                        Err(error) => {
                            attempts
                                .record(format!("new after {created} stores"), Err::<(), _>(error));
                            break;
                        }
                    }
                    if created >= 100_000 {
                        attempts.record("store creation never limited", Ok::<_, String>(()));
                        break;
                    }
                }
            }
            "fill-stores" => {
                // Many stores, each kept under its quota, to fill the disk.
                let chunk = params["chunk"].as_u64().unwrap_or(1 << 20) as usize;
                let mut written = 0u64;
                'stores: loop {
                    let own = wit::new()?;
                    for _ in 0..8 {
                        let mut content = written.to_le_bytes().to_vec();
                        content.resize(chunk, 0xEE);
                        if let Err(error) = wit::store(&own, &content) {
                            attempts.record(
                                format!("store after {written} bytes"),
                                Err::<(), _>(error),
                            );
                            break 'stores;
                        }
                        written += chunk as u64;
                    }
                    if written > 1 << 40 {
                        attempts.record("never limited", Ok::<_, String>(()));
                        break;
                    }
                }
            }
            "label-flood" => {
                let own = wit::new()?;
                let content = wit::store(&own, b"x")?;
                let mut labelled = 0u32;
                loop {
                    let label = format!("{labelled:0>1020}");
                    if let Err(error) = wit::label(&own, &label, &content) {
                        attempts.record(
                            format!("label after {labelled} labels"),
                            Err::<(), _>(error),
                        );
                        break;
                    }
                    labelled += 1;
                    if labelled >= 1_000_000 {
                        attempts.record("labels never limited", Ok::<_, String>(()));
                        break;
                    }
                }
            }
            "list-flood" => {
                attempts.record("list labels", wit::list_labels(target));
                attempts.record("list content", wit::list_all_content(target));
            }
            "get-huge" => {
                let hash = params["ref"].as_str().unwrap_or_default();
                attempts.record("get huge content", wit::get(target, &reference(hash)));
            }
            "log-flood" => {
                for i in 0..50_000 {
                    log(&format!("line {i}"));
                }
            }
            other => return Err(format!("unknown attack {other:?}")),
        }
        Ok((Some(
            json!({"attempts": attempts.0}).to_string().into_bytes(),
        ),))
    }
}

theater_store_guest::export_actor!(Hostile);
