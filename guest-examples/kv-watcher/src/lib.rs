//! A `wasi:keyvalue` watcher built from the keyvalue WIT alone: any host
//! serving world `watch-service` of `wasi:keyvalue@0.2.0-draft2` can run
//! it. Run it with `theater-store run kv_watcher.wasm --grant SOURCE:ro
//! --grant MIRROR --env MIRROR --watch SOURCE`.
//!
//! For each change to the watched buckets it
//! - copies the change into the bucket `$MIRROR` (default `mirror`):
//!   `on-set` sets the same key to the same value, `on-delete` removes it;
//! - appends a line to the mirror's journal: key `journal/NNNNNNNNNN`
//!   (numbered from 1 by `atomics.increment` of `journal-next`) holding
//!   `set KEY LEN` or `delete KEY`, so the order of the calls can be read
//!   back.
//!
//! Values `panic` and `spin` make it panic or loop forever, for testing
//! what a host does with a watcher that fails. It must not watch its
//! own mirror: each of its writes there would call it again.

wit_bindgen::generate!({
    path: "../../wit/deps/keyvalue",
    world: "wasi:keyvalue/watch-service",
});

use exports::wasi::keyvalue::watcher::Guest;
use wasi::keyvalue::{atomics, store};

struct Mirror;

impl Guest for Mirror {
    fn on_set(_bucket: store::Bucket, key: String, value: Vec<u8>) {
        match value.as_slice() {
            b"panic" => panic!("kv-watcher: told to panic by key {key}"),
            b"spin" => loop {
                std::hint::spin_loop();
            },
            _ => {}
        }
        let mirror = mirror();
        must(mirror.set(&key, &value), "set", &key);
        journal(&mirror, &format!("set {key} {}", value.len()));
    }

    fn on_delete(_bucket: store::Bucket, key: String) {
        let mirror = mirror();
        must(mirror.delete(&key), "delete", &key);
        journal(&mirror, &format!("delete {key}"));
    }
}

/// The bucket changes are copied into.
fn mirror() -> store::Bucket {
    let name = std::env::var("MIRROR").unwrap_or_else(|_| "mirror".to_owned());
    match store::open(&name) {
        Ok(bucket) => bucket,
        Err(error) => panic!(
            "kv-watcher: opening mirror bucket {name}: {}",
            describe(&error)
        ),
    }
}

/// Appends `line` as the journal's next entry.
fn journal(mirror: &store::Bucket, line: &str) {
    let next = atomics::increment(mirror, "journal-next", 1);
    let next = must(next, "increment", "journal-next");
    let key = format!("journal/{next:010}");
    must(mirror.set(&key, line.as_bytes()), "set", &key);
}

/// A failed call panics: the host then stops the watcher before the
/// change is marked delivered, so it comes again on the next run.
fn must<T>(result: Result<T, store::Error>, call: &str, key: &str) -> T {
    result.unwrap_or_else(|error| panic!("kv-watcher: {call} {key}: {}", describe(&error)))
}

fn describe(error: &store::Error) -> String {
    match error {
        store::Error::NoSuchStore => "no such store".to_owned(),
        store::Error::AccessDenied => "access denied".to_owned(),
        store::Error::Other(message) => message.clone(),
    }
}

export!(Mirror);
