//! Runs one operation in a loop and returns how long the loop took, timed
//! inside the guest so that instantiation is not counted.
//!
//! Parameter: `OPERATION ITERATIONS SIZE [STORE FIRST]`, where OPERATION is
//! one of `noop`, `exists`, `store`, `store-at-label`, `get`, `fs-write`.
//! The loop runs in a new store, or in STORE (which the host must grant)
//! with its distinct contents numbered from FIRST, so that runs in turn
//! keep adding to one long-lived store. Result state: the loop's duration
//! in nanoseconds, as decimal text.

wit_bindgen::generate!({
    path: ["../../wit", "wit"],
    world: "theater:bench/bench-actor",
    generate_all,
});

use exports::theater::simple::actor::Guest;
use theater::bench::probe;
use theater::simple::store;

struct Bench;

impl Guest for Bench {
    fn init(_state: Option<Vec<u8>>, (param,): (String,)) -> Result<(Option<Vec<u8>>,), String> {
        let words: Vec<&str> = param.split_whitespace().collect();
        let (operation, iterations, size, store_id, first) = match words[..] {
            [operation, iterations, size] => (operation, iterations, size, None, "0"),
            [operation, iterations, size, store_id, first] => {
                (operation, iterations, size, Some(store_id), first)
            }
            _ => {
                return Err(format!(
                    "expected OPERATION ITERATIONS SIZE [STORE FIRST], got {param:?}"
                ));
            }
        };
        let iterations: u64 = iterations.parse().map_err(|_| "bad iteration count")?;
        let size: usize = size.parse().map_err(|_| "bad size")?;
        let first: u64 = first.parse().map_err(|_| "bad first number")?;
        let id = match store_id {
            Some(id) => id.to_owned(),
            None => store::new()?,
        };
        let payload = vec![0x5a_u8; size];
        let stored = store::store(&id, &payload)?;
        // Distinct content per iteration for `store`, so nothing is deduplicated.
        let mut distinct = payload.clone();
        let started = std::time::Instant::now();
        for i in first..first + iterations {
            match operation {
                "noop" => probe::noop(),
                "exists" => {
                    store::exists(&id, &stored)?;
                }
                "store" => {
                    distinct[..8.min(size)].copy_from_slice(&i.to_le_bytes()[..8.min(size)]);
                    store::store(&id, &distinct)?;
                }
                "store-at-label" => {
                    distinct[..8.min(size)].copy_from_slice(&i.to_le_bytes()[..8.min(size)]);
                    store::store_at_label(&id, "bench:latest", &distinct)?;
                }
                "get" => {
                    store::get(&id, &stored)?;
                }
                "fs-write" => {
                    distinct[..8.min(size)].copy_from_slice(&i.to_le_bytes()[..8.min(size)]);
                    let path = format!("/data/{i}");
                    std::fs::write(&path, &distinct).map_err(|e| format!("{path}: {e}"))?;
                }
                other => return Err(format!("unknown operation {other:?}")),
            }
        }
        let elapsed = started.elapsed().as_nanos();
        Ok((Some(elapsed.to_string().into_bytes()),))
    }
}

export!(Bench);
