//! The actors of `guest-examples/`, compiled for `wasm32-wasip2` by this
//! crate's build script and embedded here as component bytes.

/// The seed's 15 usage patterns as one actor; its JSON parameter's
/// `pattern` field picks the pattern (see guest-examples/seed-patterns).
pub const SEED_PATTERNS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seed_patterns.wasm"));

/// An actor that attacks the host; its parameter names the attack.
pub const HOSTILE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hostile.wasm"));

/// An actor built from an unmodified copy of Theater's own WIT.
pub const THEATER_COMPAT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/theater_compat.wasm"));

/// Times store calls in a loop from inside the guest, for the benchmarks;
/// it also imports `theater:bench/probe.noop`, which the benchmark provides.
pub const BENCH_ACTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bench_actor.wasm"));

/// Streams large content in chunks and appends to a shared log through
/// `theater:simple/store-streams` (see guest-examples/large-files).
pub const LARGE_FILES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/large_files.wasm"));

/// A plain WASI command (`fn main()`) keeping counters, compare-and-swap
/// appends and batches in `wasi:keyvalue`, built from the keyvalue WIT
/// alone (see guest-examples/kv-counter).
pub const KV_COUNTER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kv_counter.wasm"));

/// Times `wasi:keyvalue@0.2.0-draft2` `get` and `set` from inside a plain
/// WASI command, for the benchmarks (see guest-examples/kv-bench).
pub const KV_BENCH: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kv_bench.wasm"));

/// The same loops built against `wasi:keyvalue@0.2.0-draft`, the draft
/// wasmtime-wasi-keyvalue serves, so that the benchmarks can run both.
pub const KV_BENCH_DRAFT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kv_bench_draft.wasm"));

/// A `wasi:keyvalue` watcher (world `watch-service`) that mirrors each
/// change into another bucket and journals its calls in order (see
/// guest-examples/kv-watcher).
pub const KV_WATCHER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kv_watcher.wasm"));
