//! Calls across the component boundary, timed inside a guest actor, and
//! the cold start of an actor.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use theater_store::StoreRoot;
use theater_store_examples::BENCH_ACTOR;
use theater_store_host::{Grants, Limits, StoreActor, StoreCtx, StoreCtxView, StoreView};
use tokio::runtime::Runtime;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

/// The benchmark's store data: WASI with one preopened directory (for the
/// filesystem comparison) and the store context, as an embedder would have.
struct BenchState {
    wasi: WasiCtx,
    table: ResourceTable,
    store: StoreCtx,
}

impl WasiView for BenchState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl StoreView for BenchState {
    fn store_view(&mut self) -> StoreCtxView<'_> {
        StoreCtxView {
            ctx: &mut self.store,
            table: &mut self.table,
        }
    }
}

struct Bench {
    engine: Engine,
    linker: Linker<BenchState>,
    component: Component,
    root: StoreRoot,
    data_dir: tempfile::TempDir,
    _root_dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Self {
        // The same engine settings as ActorHost: epoch deadlines on.
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        theater_store_host::add_to_linker(&mut linker).unwrap();
        linker
            .instance("theater:bench/probe")
            .unwrap()
            .func_wrap("noop", |_, (): ()| Ok(()))
            .unwrap();
        let component = Component::new(&engine, BENCH_ACTOR).unwrap();
        let root_dir = tempfile::tempdir().unwrap();
        Self {
            root: StoreRoot::new(root_dir.path()),
            engine,
            linker,
            component,
            data_dir: tempfile::tempdir().unwrap(),
            _root_dir: root_dir,
        }
    }

    fn store(&self) -> Store<BenchState> {
        let mut wasi = WasiCtx::builder();
        wasi.preopened_dir(self.data_dir.path(), "/data", FsPerms::ReadWrite)
            .unwrap();
        let wasi = wasi.build();
        let limits = Limits {
            // Benchmarks store far more than an actor's default budget.
            max_store_bytes: u64::MAX,
            max_actor_bytes: u64::MAX,
            timeout: Duration::from_secs(3600),
            ..Limits::default()
        };
        let state = BenchState {
            wasi,
            table: ResourceTable::new(),
            store: StoreCtx::new(self.root.clone(), Grants::none(), limits),
        };
        let mut store = Store::new(&self.engine, state);
        store.set_epoch_deadline(u64::MAX / 2);
        store
    }

    /// Runs `operation` `iterations` times inside the guest; the guest's own timing.
    async fn guest_loop(
        &self,
        component: &Component,
        operation: &str,
        iterations: u64,
        size: usize,
    ) -> Duration {
        let mut store = self.store();
        let actor = StoreActor::instantiate_async(&mut store, component, &self.linker)
            .await
            .unwrap();
        let param = format!("{operation} {iterations} {size}");
        let (state,) = actor
            .theater_simple_actor()
            .call_init(&mut store, None, (&param,))
            .await
            .unwrap()
            .unwrap();
        Duration::from_nanos(String::from_utf8(state.unwrap()).unwrap().parse().unwrap())
    }
}

fn boundary(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let bench = Bench::new();
    let mut group = c.benchmark_group("component");
    group.throughput(Throughput::Elements(1));
    for (name, operation, size) in [
        ("noop_import", "noop", 0),
        ("exists", "exists", 0),
        ("store_1KiB", "store", 1 << 10),
        ("fs_write_1KiB", "fs-write", 1 << 10),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(bench.guest_loop(&bench.component, operation, iters, size))
            })
        });
    }
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(1 << 20));
    for (name, operation) in [
        ("store_1MiB", "store"),
        ("get_1MiB", "get"),
        ("fs_write_1MiB", "fs-write"),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(bench.guest_loop(&bench.component, operation, iters, 1 << 20))
            })
        });
    }
    group.finish();
}

fn cold_start(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let bench = Bench::new();
    let mut group = c.benchmark_group("cold_start");
    group.sample_size(10);
    group.bench_function("compile_and_instantiate", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                let component = Component::new(&bench.engine, BENCH_ACTOR).unwrap();
                runtime.block_on(bench.guest_loop(&component, "noop", 0, 0));
            }
            started.elapsed()
        })
    });
    group.sample_size(50);
    group.bench_function("instantiate_compiled", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                runtime.block_on(bench.guest_loop(&bench.component, "noop", 0, 0));
            }
            started.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, boundary, cold_start);
criterion_main!(benches);
