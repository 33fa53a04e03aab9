//! Runs one operation in a loop and returns how long the loop took, timed
//! inside the guest so that instantiation is not counted.
//!
//! Parameter: `OPERATION ITERATIONS SIZE`, where OPERATION is one of
//! `noop`, `exists`, `store`, `store-at-label`, `get`, `fs-write`. Result state: the loop's
//! duration in nanoseconds, as decimal text.

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
        let [operation, iterations, size] = words[..] else {
            return Err(format!("expected OPERATION ITERATIONS SIZE, got {param:?}"));
        };
        let iterations: u64 = iterations.parse().map_err(|_| "bad iteration count")?;
        let size: usize = size.parse().map_err(|_| "bad size")?;
        let id = store::new()?;
        let payload = vec![0x5a_u8; size];
        let stored = store::store(&id, &payload)?;
        // Distinct content per iteration for `store`, so nothing is deduplicated.
        let mut distinct = payload.clone();
        let started = std::time::Instant::now();
        for i in 0..iterations {
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
