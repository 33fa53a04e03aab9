//! Serves `theater:simple/store` and `theater:simple/runtime` to wasmtime
//! components from a [`theater_store::StoreRoot`].
//!
//! Two ways in:
//! - Embedders with their own wasmtime setup keep a [`StoreCtx`] in their
//!   `Store<T>` data, implement [`StoreView`] for `T`, and call
//!   [`add_to_linker`].
//! - Everyone else uses [`ActorHost`], which loads actor components, runs
//!   their `init` under grants and limits, and returns the new state and logs.
//!
//! The host does no file I/O of its own: every call becomes a call on the
//! core store. Access is denied by default; see [`Grants`].

#![warn(missing_docs)]

mod bindings;
mod ctx;
mod error;
mod imports;
mod policy;
mod runner;

use wasmtime::component::{HasSelf, Linker};

pub use bindings::StoreActor;
pub use ctx::StoreCtx;
pub use error::HostError;
pub use policy::{Access, Grants, Limits};
pub use runner::{ActorComponent, ActorFailure, ActorHost, ActorRun, RunOptions};

/// Access to the [`StoreCtx`] inside an embedder's `Store<T>` data, the way
/// `wasmtime_wasi::WasiView` gives access to WASI's context.
pub trait StoreView: Send {
    /// The actor's store context.
    fn store_ctx(&mut self) -> &mut StoreCtx;
}

/// Adds `theater:simple/store` and `theater:simple/runtime` to `linker`.
/// Add WASI p2 too (`wasmtime_wasi::p2::add_to_linker_async`): Rust's std on
/// `wasm32-wasip2` imports it.
pub fn add_to_linker<T: StoreView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    bindings::theater::simple::store::add_to_linker::<T, HasSelf<StoreCtx>>(linker, T::store_ctx)?;
    bindings::theater::simple::runtime::add_to_linker::<T, HasSelf<StoreCtx>>(linker, T::store_ctx)
}
