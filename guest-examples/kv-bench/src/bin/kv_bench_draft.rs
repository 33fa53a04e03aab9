//! The timed loops against `wasi:keyvalue@0.2.0-draft`, the draft
//! wasmtime-wasi-keyvalue 48 serves (its WIT is in `wit-draft/`, copied
//! from that crate, Apache-2.0 WITH LLVM-exception).

wit_bindgen::generate!({
    path: "wit-draft",
    world: "wasi:keyvalue/imports",
});

#[macro_use]
#[path = "../timing.rs"]
mod timing;

bench_main!();
