//! The timed loops against `wasi:keyvalue@0.2.0-draft2` (this project's host).

wit_bindgen::generate!({
    path: "../../wit/deps/keyvalue",
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
