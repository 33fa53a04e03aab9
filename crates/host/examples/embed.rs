//! Embedding the store host in your own wasmtime setup: your engine, your
//! linker, your `Store<T>` data with WASI, chosen grants and limits, one
//! call of the actor's `init`, and the store read back from Rust.
//! Everything `ActorHost` does for a run, by hand, with the same limits.

use theater_store::{Options, StoreRoot};
use theater_store_host::wasmtime::component::{Component, Linker, ResourceTable};
use theater_store_host::wasmtime::{Config, Engine, Store};
use theater_store_host::wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use theater_store_host::{
    Access, ActorFailure, ActorLimiter, Grants, Limits, StoreActorPre, TheaterCtx, TheaterCtxView,
    TheaterView, enforce_limits, start_epoch_clock,
};

/// What each wasmtime `Store` holds: WASI's context and resource table,
/// the actor's store context (grants, limits, meter), and its limiter.
struct ActorData {
    wasi: WasiCtx,
    table: ResourceTable,
    theater: TheaterCtx,
    limiter: ActorLimiter,
}

impl WasiView for ActorData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl TheaterView for ActorData {
    fn theater_view(&mut self) -> TheaterCtxView<'_> {
        // The same table as WASI's: streamed reads are wasi:io streams.
        TheaterCtxView {
            ctx: &mut self.theater,
            table: &mut self.table,
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The store interfaces are async, and the deadline is an epoch
    // interrupt ticked by a clock thread.
    let mut config = Config::new();
    config.epoch_interruption(true);
    let engine = Engine::new(&config)?;
    start_epoch_clock(&engine)?;

    let mut linker = Linker::<ActorData>::new(&engine);
    theater_store_host::wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    theater_store_host::add_to_linker_async(&mut linker)?;
    theater_store_host::keyvalue::add_to_linker_async(&mut linker)?;

    // A root in memory, for this example; a directory or a postgres://
    // root string in production.
    let root = StoreRoot::at("mem:", Options::default())?;
    let component = Component::new(&engine, theater_store_examples::SEED_PATTERNS)?;
    let actor = StoreActorPre::new(linker.instantiate_pre(&component)?)?;

    // One run: the actor may use store "notes" read-write, and its own.
    let limits = Limits::default();
    let grants = Grants::none().store("notes", Access::ReadWrite);
    let data = ActorData {
        wasi: WasiCtx::builder().build(),
        table: ResourceTable::new(),
        theater: TheaterCtx::new(root.clone(), grants, limits.clone()),
        limiter: ActorLimiter::new(&limits),
    };
    let mut store = Store::new(&engine, data);
    enforce_limits(&mut store, &limits, |data| &mut data.limiter);
    // Record its calls in its chain under a stable id (one that survives
    // rebuilds; `theater_store_host::default_actor_id` gives the per-build
    // id the CLI uses when none is named), and give it back the stores it
    // created in earlier runs under that id.
    let chain = root.event_chain("embedded-example")?;
    store.data_mut().theater.set_chain(Some(chain));
    store.data_mut().theater.restore_created_stores().await?;

    let param = r#"{"pattern": "stores", "named": "notes"}"#;
    let outcome = match actor.instantiate_async(&mut store).await {
        Err(error) => Err(ActorFailure::of_instantiation(
            &error,
            &store.data().theater,
            &store.data().limiter,
        )),
        Ok(instance) => match instance
            .theater_simple_actor()
            .call_init(&mut store, None, (param,))
            .await
        {
            Ok(Ok((state,))) => Ok(state),
            Ok(Err(message)) => Err(ActorFailure::Returned(message)),
            Err(trap) => {
                let data = store.data();
                Err(ActorFailure::of_call(&trap, &data.theater, &data.limiter))
            }
        },
    };
    let state = outcome?.unwrap_or_default();
    println!("init returned {}", String::from_utf8_lossy(&state));

    // What the actor stored, read back through the core API; the stores
    // it created stay its own in later runs under the same actor id.
    let created: Vec<String> = store
        .data()
        .theater
        .created_stores()
        .map(str::to_owned)
        .collect();
    let notes = root.store("notes")?;
    let hello = notes
        .get_content_by_label("hello")
        .await?
        .unwrap_or_default();
    assert_eq!(hello, b"from a named store");
    println!(
        "notes/hello = {:?}; stores it created: {created:?}",
        String::from_utf8_lossy(&hello)
    );
    Ok(())
}
