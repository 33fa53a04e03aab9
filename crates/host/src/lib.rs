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
pub mod keyvalue;
mod meter;
mod policy;
mod resources;
mod runner;
mod streams;

use wasmtime::component::{HasData, HasSelf, Linker, ResourceTable};

pub use bindings::StoreActor;
pub use ctx::StoreCtx;
pub use error::HostError;
pub use policy::{Access, Grants, Limits};
pub use resources::WriterHandle;
pub use runner::{
    ActorComponent, ActorFailure, ActorHost, ActorRun, ChainRecording, CommandOutput, CommandRun,
    RunOptions,
};

/// The parts of an embedder's `Store<T>` data the store interfaces use:
/// the actor's [`StoreCtx`], and the resource table its writers and
/// streams live in. The table must be the one WASI uses
/// (`wasmtime_wasi::WasiView`), since reads are `wasi:io` streams.
pub struct StoreCtxView<'a> {
    /// The actor's store context.
    pub ctx: &'a mut StoreCtx,
    /// The component's resource table, shared with WASI.
    pub table: &'a mut ResourceTable,
}

/// Access to the [`StoreCtx`] inside an embedder's `Store<T>` data, the way
/// `wasmtime_wasi::WasiView` gives access to WASI's context.
pub trait StoreView: Send {
    /// The actor's store context and resource table.
    fn store_view(&mut self) -> StoreCtxView<'_>;
}

/// Marks [`StoreCtxView`] as what the streaming interface's imports work on.
struct HasStoreView;

impl HasData for HasStoreView {
    type Data<'a> = StoreCtxView<'a>;
}

/// Adds `theater:simple/store`, `theater:simple/store-streams` and
/// `theater:simple/runtime` to `linker`. Add WASI p2 too
/// (`wasmtime_wasi::p2::add_to_linker_async`): Rust's std on
/// `wasm32-wasip2` imports it, and streams are its `wasi:io` streams.
pub fn add_to_linker<T: StoreView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    use bindings::theater::simple::{runtime, store, store_streams};
    store::add_to_linker::<T, HasSelf<StoreCtx>>(linker, |t| t.store_view().ctx)?;
    store_streams::add_to_linker::<T, HasStoreView>(linker, T::store_view)?;
    runtime::add_to_linker::<T, HasSelf<StoreCtx>>(linker, |t| t.store_view().ctx)
}
