//! The timed loops against `wasi:keyvalue@0.2.0-draft`, the draft
//! wasmtime-wasi-keyvalue 48 serves (its WIT is in `wit-draft/`, copied
//! from that crate, Apache-2.0 WITH LLVM-exception).

wit_bindgen::generate!({
    path: "wit-draft",
    world: "wasi:keyvalue/imports",
});

#[path = "../timing.rs"]
mod timing;

fn main() {
    let (operation, iterations, size, bucket) = timing::arguments();
    let bucket = wasi::keyvalue::store::open(&bucket).expect("opening the bucket");
    timing::time(
        &operation,
        iterations,
        size,
        |key| bucket.get(key).expect("get"),
        |key, value| bucket.set(key, value).expect("set"),
    );
}
