//! The timed loops against `wasi:keyvalue@0.2.0-draft2` (this project's host).

wit_bindgen::generate!({
    path: "../../wit/deps/keyvalue",
    world: "wasi:keyvalue/imports",
});

#[macro_use]
#[path = "../timing.rs"]
mod timing;

bench_main!();
