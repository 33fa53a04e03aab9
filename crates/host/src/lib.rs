//! Serves `theater:simple/store`, `store-streams`, `runtime` and
//! `wasi:keyvalue` to wasmtime components from a
//! [`theater_store::StoreRoot`]. Built against wasmtime 48, re-exported as
//! [`wasmtime`] and [`wasmtime_wasi`]; the imports are async, so the
//! engine runs in a Tokio runtime, as the core requires.
//!
//! Two ways in:
//! - [`ActorHost`] loads actor components, runs their `init` (or a WASI
//!   command's `main`) under grants and limits, and returns the new state
//!   and logs. The CLI uses it.
//! - Embedders with their own engine and linker keep a [`TheaterCtx`] in
//!   their `Store<T>` data, implement [`TheaterView`] (beside WASI's
//!   `WasiView`) and call [`add_to_linker_async`]. [`ActorLimiter`],
//!   [`enforce_limits`], [`start_epoch_clock`] and
//!   [`ActorFailure::of_call`] are the pieces `ActorHost` is built from, so
//!   the same [`Limits`] hold: memory over all of an actor's memories and
//!   tables, the deadline, and the classification of what went wrong.
//!
//! The host does no file I/O of its own: every call becomes a call on the
//! core store. Access is denied by default; see [`Grants`]. The stores an
//! actor creates stay its own across runs under the same actor id (its
//! chain's): call [`TheaterCtx::restore_created_stores`] when a run starts,
//! as below ([`ActorHost`] does).
//!
//! A complete embedding (`examples/embed.rs`, run as this doc test):
//!
//! ```
#![doc = include_str!("../examples/embed.rs")]
//! ```

#![warn(missing_docs)]

pub mod bindings;
mod ctx;
mod enforce;
mod error;
mod imports;
pub mod keyvalue;
mod meter;
mod observe;
mod policy;
mod resources;
mod runner;
mod streams;
mod watcher;

use wasmtime::component::{HasData, HasSelf, Linker, ResourceTable};
use wasmtime_wasi::WasiView;

/// The wasmtime this crate is built against (48.x): use it for the
/// `Engine`, `Linker` and `Store` the host is added to.
pub use wasmtime;
/// The wasmtime-wasi this crate is built against, for the WASI p2 imports
/// every actor needs beside the store's.
pub use wasmtime_wasi;

pub use bindings::{StoreActor, StoreActorPre};
pub use ctx::TheaterCtx;
pub use enforce::{ActorFailure, ActorLimiter, EPOCH_TICK, enforce_limits, start_epoch_clock};
pub use error::HostError;
pub use policy::{Access, Grants, Limits};
pub use runner::{
    ActorComponent, ActorHost, ActorRun, ChainRecording, CommandOutput, CommandRun, RunOptions,
    default_actor_id,
};
pub use watcher::{StartAt, WatchOptions, WatchProgress, WatchedBucket, WatcherRun};

/// The parts of an embedder's `Store<T>` data the store interfaces use:
/// the actor's [`TheaterCtx`], and the resource table its writers and
/// streams live in. The table must be the one WASI uses
/// (`wasmtime_wasi::WasiView`), since reads are `wasi:io` streams.
pub struct TheaterCtxView<'a> {
    /// The actor's store context.
    pub ctx: &'a mut TheaterCtx,
    /// The component's resource table, shared with WASI.
    pub table: &'a mut ResourceTable,
}

/// Access to the [`TheaterCtx`] inside an embedder's `Store<T>` data, the way
/// `wasmtime_wasi::WasiView` gives access to WASI's context. The table in
/// the view must be the one `WasiView::ctx` returns: streamed reads are
/// `wasi:io` streams, which WASI finds in its own table. The imports check
/// this at every call and panic, naming this rule, if it is broken.
pub trait TheaterView: WasiView + Send {
    /// The actor's store context and resource table.
    fn theater_view(&mut self) -> TheaterCtxView<'_>;
}

/// Marks [`TheaterCtxView`] as what the streaming interface's imports work on.
struct HasTheaterView;

impl HasData for HasTheaterView {
    type Data<'a> = TheaterCtxView<'a>;
}

/// Adds `theater:simple/store`, `theater:simple/store-streams` and
/// `theater:simple/runtime` to `linker`, for an engine with async support
/// (the imports are async; instantiate with `instantiate_async` and call
/// with `call_…` `.await`). Add WASI p2 too
/// (`wasmtime_wasi::p2::add_to_linker_async`): Rust's std on
/// `wasm32-wasip2` imports it, and streams are its `wasi:io` streams.
pub fn add_to_linker_async<T: TheaterView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    use bindings::theater::simple::{runtime, store, store_streams};
    store::add_to_linker::<T, HasSelf<TheaterCtx>>(linker, |t| t.theater_view().ctx)?;
    store_streams::add_to_linker::<T, HasTheaterView>(linker, wasi_table_view::<T>)?;
    runtime::add_to_linker::<T, HasSelf<TheaterCtx>>(linker, |t| t.theater_view().ctx)
}

/// `T`'s view, once checked to hold WASI's resource table (see
/// [`TheaterView`]): a pointer comparison per call.
fn wasi_table_view<T: TheaterView>(data: &mut T) -> TheaterCtxView<'_> {
    let wasi_table: *const ResourceTable = WasiView::ctx(data).table;
    let view = data.theater_view();
    assert!(
        std::ptr::eq(wasi_table, view.table),
        "TheaterView::theater_view must return the ResourceTable that WasiView::ctx returns: \
         streamed reads are wasi:io streams, which live in WASI's table"
    );
    view
}
