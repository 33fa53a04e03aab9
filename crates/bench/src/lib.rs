//! Benchmarks live in `benches/`: `store` (the Rust API against the raw
//! filesystem floor and cacache), `component` (calls across the wasm
//! component boundary, and cold start), `shared` (PostgreSQL + S3),
//! `gateway` (HTTP, beside SeaweedFS's S3 gateway), `scale` (one store
//! grown to 1,000,000 objects) and `proposal` (an append-only log's write
//! path beside the store's, for issue 32). Run them with `just bench`; the
//! results and what dominates each cost are in docs/PERFORMANCE.md.

use std::sync::atomic::{AtomicU64, Ordering};

/// Distinct content of `size` bytes, so that no write is deduplicated: a
/// counter in the first 8 bytes, the rest a fixed byte.
pub fn distinct(counter: &AtomicU64, size: usize) -> Vec<u8> {
    let mut bytes = vec![0xa5u8; size.max(8)];
    bytes[..8].copy_from_slice(&counter.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    bytes.truncate(size);
    bytes
}

/// The number in environment variable `name` (a bench's size or rounds),
/// or `default` when it is unset or not a number.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}
