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
