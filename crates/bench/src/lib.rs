//! Benchmarks live in `benches/`: `store` (the Rust API against the raw
//! filesystem floor and cacache) and `component` (calls across the wasm
//! component boundary, and cold start). Run them with `just bench`; the
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
