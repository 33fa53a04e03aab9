//! Bindings generated from `wit/` by wasmtime's `bindgen!`. Hand-written code
//! lives in the sibling modules; nothing here is edited by hand.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "store-actor",
    imports: { default: async },
    exports: { default: async },
});
