//! Bindings generated from `wit/` by wasmtime's `bindgen!`. Hand-written code
//! lives in the sibling modules; nothing here is edited by hand.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "store-actor",
    // Streaming calls trap only on a host fault (a handle missing from
    // the table); everything the guest can cause is an `error` value.
    imports: {
        "theater:simple/store-streams": async | trappable,
        default: async,
    },
    exports: { default: async },
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "theater:simple/store-streams.content-writer": crate::resources::WriterHandle,
    },
});

/// `wasi:keyvalue@0.2.0-draft2` (vendored under `wit/deps/keyvalue`).
pub mod keyvalue {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "wasi:keyvalue/imports",
        // Everything a guest can cause is an `error` value; a trap means a
        // host fault (a handle missing from the table).
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::resources::Bucket,
            "wasi:keyvalue/atomics.cas": crate::resources::Cas,
        },
    });
}

/// `wasi:keyvalue@0.2.0-draft2` world `watch-service`: the `watcher`
/// export this host calls on each change; its imports are those above.
pub mod watch_service {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "wasi:keyvalue/watch-service",
        exports: { default: async },
        with: {
            "wasi:keyvalue/store": super::keyvalue::wasi::keyvalue::store,
            "wasi:keyvalue/atomics": super::keyvalue::wasi::keyvalue::atomics,
            "wasi:keyvalue/batch": super::keyvalue::wasi::keyvalue::batch,
        },
    });
}
