//! Benchmarks live in `benches/`: `store` (the Rust API against the raw
//! filesystem floor and cacache) and `component` (calls across the wasm
//! component boundary, and cold start). Run them with `just bench`; the
//! results and what dominates each cost are in docs/PERFORMANCE.md.
