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
