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
                // Its own store, or a granted one shared with other actors,
                // whose content `salt` keeps apart from theirs.
                let own = match params["store"].as_str() {
                    Some(store) => store.to_owned(),
                    None => wit::new()?,
                };
                let salt = params["salt"].as_u64().unwrap_or(0) as u8;
                let mut stored = 0u32;
                loop {
                    let content = [&[salt][..], &stored.to_le_bytes().repeat(256)].concat();
                    match wit::store(&own, &content) {
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
            "call-flood" => {
                // Cheap reads until something stops them: each is recorded
                // in the chain, which the actor's quota must cover.
                let own = wit::new()?;
                let content = wit::store(&own, b"flood")?;
                let mut made = 0u64;
                loop {
                    if let Err(error) = wit::exists(&own, &content) {
                        attempts.record(format!("exists after {made} calls"), Err::<(), _>(error));
                        break;
                    }
                    made += 1;
                    if made >= 10_000_000 {
                        attempts.record("calls never limited", Ok::<_, String>(()));
                        break;
                    }
                }
            }
            "huge-arguments" => {
                // Calls naming enormous ids, labels and refs: refused, and
                // recorded in bounded size.
                let own = wit::new()?;
                let huge = "x".repeat(params["bytes"].as_u64().unwrap_or(1 << 20) as usize);
                let content = wit::store(&own, b"x")?;
                for _ in 0..params["times"].as_u64().unwrap_or(10) {
                    attempts.record("store into a huge id", wit::store(&huge, b"x"));
                    attempts.record("label huge", wit::label(&own, &huge, &content));
                    attempts.record("get a huge ref", wit::get(&own, &reference(&huge)));
                }
            }
            "parallel-writers" => {
                // Many writers open at once, each alone under the quotas,
                // together far over them.
                let own = wit::new()?;
                let store = theater_store_guest::ContentStore::from_id(own.clone());
                let writers = params["writers"].as_u64().unwrap_or(8);
                let piece = vec![0x5Au8; 1 << 20];
                let pieces = params["pieces"].as_u64().unwrap_or(7);
                let mut open = Vec::new();
                for _ in 0..writers {
                    open.push(store.writer().map_err(|e| format!("{e:?}"))?);
                }
                let mut refused = 0;
                for round in 0..pieces {
                    for (w, writer) in open.iter_mut().enumerate() {
                        let mut bytes = piece.clone();
                        bytes[0] = w as u8;
                        bytes[1] = round as u8;
                        if std::io::Write::write_all(writer, &bytes).is_err() {
                            refused += 1;
                        }
                    }
                }
                let mut finished = 0;
                for writer in open {
                    match writer.finish() {
                        Ok(_) => finished += 1,
                        Err(error) => {
                            attempts.record("finish", Err::<(), _>(format!("{error:?}")));
                        }
                    }
                }
                attempts.record(
                    format!("{finished} finished, {refused} pieces refused"),
                    Ok::<_, String>(()),
                );
                let size = wit::calculate_total_size(&own)?;
                return Ok((Some(
                    json!({"attempts": attempts.0, "store": own, "size": size})
                        .to_string()
                        .into_bytes(),
                ),));
            }
            "many-readers" => {
                // Readers opened and left open, one byte read from each.
                let store = theater_store_guest::ContentStore::from_id(target.to_owned());
                let hash = params["ref"].as_str().unwrap_or_default();
                let content = theater_store_guest::ContentRef::new(hash);
                let mut readers = Vec::new();
                for opened in 0..params["readers"].as_u64().unwrap_or(1000) {
                    match store.reader(&content) {
                        Ok(mut reader) => {
                            let mut byte = [0u8; 1];
                            let _ = std::io::Read::read(&mut reader, &mut byte);
                            readers.push(reader);
                        }
                        Err(error) => {
                            attempts.record(
                                format!("reader after {opened} open"),
                                Err::<(), _>(format!("{error:?}")),
                            );
                            break;
                        }
                    }
                }
                hold(&params);
                // Another call still answers while the readers stay open.
                attempts.record("store beside open readers", wit::store(target, b"beside"));
                drop(readers);
                attempts.record(
                    "reader once they are dropped",
                    store
                        .reader(&content)
                        .map(drop)
                        .map_err(|e| format!("{e:?}")),
                );
            }
            "many-writers" => {
                // Writers past the inline threshold, left open.
                let store = theater_store_guest::ContentStore::from_id(target.to_owned());
                let piece = vec![0x42u8; 32 << 10];
                let mut writers = Vec::new();
                for opened in 0..params["writers"].as_u64().unwrap_or(600) {
                    match store.writer() {
                        Ok(mut writer) => {
                            let _ = std::io::Write::write_all(&mut writer, &piece);
                            writers.push(writer);
                        }
                        Err(error) => {
                            attempts.record(
                                format!("writer after {opened} open"),
                                Err::<(), _>(format!("{error:?}")),
                            );
                            break;
                        }
                    }
                }
                hold(&params);
                attempts.record("store beside open writers", wit::store(target, b"beside"));
            }
            other => return Err(format!("unknown attack {other:?}")),
        }
        Ok((Some(
            json!({"attempts": attempts.0}).to_string().into_bytes(),
        ),))
    }
}

/// Keeps what an attack opened open for `hold_ms` milliseconds, so that a
/// test can measure the host meanwhile.
fn hold(params: &Value) {
    if let Some(millis) = params["hold_ms"].as_u64() {
        std::thread::sleep(std::time::Duration::from_millis(millis));
    }
}

theater_store_guest::export_actor!(Hostile);
