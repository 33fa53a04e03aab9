use std::time::Duration;
use theater_store::StoreRoot;
use theater_store_examples::BENCH_ACTOR;
use theater_store_host::{Grants, Limits, StoreActor, StoreCtx, StoreCtxView, StoreView};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

struct S { wasi: WasiCtx, table: ResourceTable, store: StoreCtx }
impl WasiView for S { fn ctx(&mut self) -> WasiCtxView<'_> { WasiCtxView { ctx: &mut self.wasi, table: &mut self.table } } }
impl StoreView for S { fn store_view(&mut self) -> StoreCtxView<'_> { StoreCtxView { ctx: &mut self.store, table: &mut self.table } } }

#[tokio::main]
async fn main() {
    let mut config = Config::new();
    config.epoch_interruption(true);
    let engine = Engine::new(&config).unwrap();
    let mut linker: Linker<S> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    theater_store_host::add_to_linker(&mut linker).unwrap();
    linker.instance("theater:bench/probe").unwrap().func_wrap("noop", |_, (): ()| Ok(())).unwrap();
    let component = Component::new(&engine, BENCH_ACTOR).unwrap();
    let dir = tempfile::tempdir_in("/work").unwrap();
    let root = StoreRoot::new(dir.path().join("root"));
    let mode = std::env::args().nth(1).unwrap();
    let n: u64 = std::env::args().nth(2).unwrap().parse().unwrap();
    for _ in 0..3 {
    for rec in [false, true] {
        let limits = Limits { max_store_bytes: u64::MAX, max_actor_bytes: u64::MAX, timeout: Duration::from_secs(3600), ..Limits::default() };
        let mut ctx = StoreCtx::new(root.clone(), Grants::none(), limits);
        if rec { ctx.set_chain(Some(root.event_chain("probe").unwrap())); }
        let mut store = Store::new(&engine, S { wasi: WasiCtx::builder().build(), table: ResourceTable::new(), store: ctx });
        store.set_epoch_deadline(u64::MAX / 2);
        let actor = StoreActor::instantiate_async(&mut store, &component, &linker).await.unwrap();
        let (state,) = actor.theater_simple_actor().call_init(&mut store, None, (&format!("{mode} {n} 1024"),)).await.unwrap().unwrap();
        let ns: u64 = String::from_utf8(state.unwrap()).unwrap().parse().unwrap();
        println!("{mode} recorded={rec}: {:.1} µs", ns as f64 / n as f64 / 1000.0);
    }
    }
}
