//! Calls across the component boundary, timed inside a guest actor, and
//! the cold start of an actor. `THEATER_STORE_BENCH_ENGINE=log` runs them
//! on log roots instead of local ones.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;

use theater_store::{Durability, GcOptions, Options, StoreRoot};
use theater_store_examples::{BENCH_ACTOR, KV_BENCH, KV_BENCH_DRAFT, KV_COUNTER, LARGE_FILES};
use theater_store_host::{
    Access, ActorHost, ChainRecording, CommandOutput, Grants, Limits, RunOptions, StoreActor,
    TheaterCtx, TheaterCtxView, TheaterView,
};
use tokio::runtime::Runtime;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_keyvalue::{WasiKeyValue, WasiKeyValueCtx};

/// The benchmark's store data: WASI with one preopened directory (for the
/// filesystem comparison) and the store context, as an embedder would have.
struct BenchState {
    wasi: WasiCtx,
    table: ResourceTable,
    theater: TheaterCtx,
}

impl WasiView for BenchState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl TheaterView for BenchState {
    fn theater_view(&mut self) -> TheaterCtxView<'_> {
        TheaterCtxView {
            ctx: &mut self.theater,
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
        Self::with_durability(Durability::Buffered)
    }

    fn with_durability(durability: Durability) -> Self {
        // The same engine settings as ActorHost: epoch deadlines on.
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        theater_store_host::add_to_linker_async(&mut linker).unwrap();
        linker
            .instance("theater:bench/probe")
            .unwrap()
            .func_wrap("noop", |_, (): ()| Ok(()))
            .unwrap();
        let component = Component::new(&engine, BENCH_ACTOR).unwrap();
        let root_dir = tempfile::tempdir().unwrap();
        // `THEATER_STORE_BENCH_ENGINE=log`: the same on a log root.
        let root = if std::env::var("THEATER_STORE_BENCH_ENGINE").is_ok_and(|e| e == "log") {
            let options = theater_store::Options {
                durability,
                ..theater_store::Options::default()
            };
            StoreRoot::at(&format!("log:{}", root_dir.path().display()), options).unwrap()
        } else {
            StoreRoot::with_durability(root_dir.path(), durability)
        };
        Self {
            root,
            engine,
            linker,
            component,
            data_dir: tempfile::tempdir().unwrap(),
            _root_dir: root_dir,
        }
    }

    /// A store whose calls are recorded in `actor`'s event chain, if given,
    /// and whose actor may use store `granted`, if given.
    fn store_recording(&self, actor: Option<&str>, granted: Option<&str>) -> Store<BenchState> {
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
        let grants = match granted {
            Some(id) => Grants::none().store(id, Access::ReadWrite),
            None => Grants::none(),
        };
        let mut store_ctx = TheaterCtx::new(self.root.clone(), grants, limits);
        store_ctx.set_chain(actor.map(|actor| self.root.event_chain(actor).unwrap()));
        let state = BenchState {
            wasi,
            table: ResourceTable::new(),
            theater: store_ctx,
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
        self.guest_loop_recording(component, operation, iterations, size, None, LoopStore::New)
            .await
    }

    /// [`Bench::guest_loop`], with every call recorded in `actor`'s chain,
    /// in the store `target` says.
    async fn guest_loop_recording(
        &self,
        component: &Component,
        operation: &str,
        iterations: u64,
        size: usize,
        actor: Option<&str>,
        target: LoopStore<'_>,
    ) -> Duration {
        let (granted, param) = match target {
            LoopStore::New => (None, format!("{operation} {iterations} {size}")),
            LoopStore::LongLived { id, first } => (
                Some(id),
                format!("{operation} {iterations} {size} {id} {first}"),
            ),
        };
        let mut store = self.store_recording(actor, granted);
        let actor = StoreActor::instantiate_async(&mut store, component, &self.linker)
            .await
            .unwrap();
        let (state,) = actor
            .theater_simple_actor()
            .call_init(&mut store, None, (&param,))
            .await
            .unwrap()
            .unwrap();
        Duration::from_nanos(String::from_utf8(state.unwrap()).unwrap().parse().unwrap())
    }
}

/// Where a guest loop writes.
#[derive(Clone, Copy)]
enum LoopStore<'a> {
    /// A store the guest creates for the loop.
    New,
    /// Store `id`, granted to the guest, which may hold earlier loops'
    /// content: this loop's distinct contents are numbered from `first`.
    LongLived { id: &'a str, first: u64 },
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

/// Calls made in chunks of 1,024.
const CHUNK: u64 = 1024;

/// Two variants of a call measured side by side: every sample of either
/// runs both, in alternating chunks, so that this machine's drift lands on
/// both alike. Keeps the totals over all samples, and how many calls each
/// variant made.
#[derive(Default)]
struct SideBySide {
    totals: std::cell::Cell<(Duration, Duration)>,
    calls: std::cell::Cell<u64>,
}

impl SideBySide {
    /// Runs `iters` calls of each variant; `chunk(first, calls)` runs
    /// `calls` of both, numbered from `first`, and returns their times.
    fn run(
        &self,
        iters: u64,
        mut chunk: impl FnMut(u64, u64) -> (Duration, Duration),
    ) -> (Duration, Duration) {
        let (mut first_time, mut second_time) = (Duration::ZERO, Duration::ZERO);
        let mut left = iters;
        while left > 0 {
            let (calls, first) = (left.min(CHUNK), self.calls.get());
            let (one, two) = chunk(first, calls);
            first_time += one;
            second_time += two;
            self.calls.set(first + calls);
            left -= calls;
        }
        let (first_total, second_total) = self.totals.get();
        self.totals
            .set((first_total + first_time, second_total + second_time));
        (first_time, second_time)
    }

    /// Microseconds per call of each variant over everything run.
    fn per_call(&self) -> (f64, f64) {
        let (first, second) = self.totals.get();
        let calls = self.calls.get().max(1) as f64;
        (
            first.as_secs_f64() * 1e6 / calls,
            second.as_secs_f64() * 1e6 / calls,
        )
    }
}

/// What recording every call in an event chain costs: a 1 KiB
/// `store-at-label` from a guest, with recording off and on, in both
/// durability modes: into one long-lived store, as an actor writing to its
/// store does (`store_at_label_1KiB`), and into a store new every 1,024
/// calls (`fresh_stores_...`, the shape this bench had when each sample's
/// actor created its own store: the unrecorded call then writes to a small
/// index region that stays in memory). This machine's speed drifts by a
/// third between runs, so the two variants run side by side: every sample
/// of either runs both, in alternating chunks, each on a fresh root of its
/// own; the one named is what it reports. The cost over all calls of both
/// is printed at the end.
fn chain_recording(c: &mut Criterion) {
    // Shaped like the ids `new` gives: events name the store, so its
    // length is part of what recording writes.
    const LONG_LIVED: &str = "5b0e7c1a-9d2f-4e63-8a41-2f6b9c0d7e15";
    let runtime = Runtime::new().unwrap();
    let mut group = c.benchmark_group("chain");
    group.throughput(Throughput::Elements(1));
    let mut costs = Vec::new();
    for (mode, durability) in [("", Durability::Buffered), ("synced_", Durability::Synced)] {
        for (shape, long_lived) in [("", true), ("fresh_stores_", false)] {
            let plain = Bench::with_durability(durability);
            let recorded = Bench::with_durability(durability);
            let runs = SideBySide::default();
            let side_by_side = |iters: u64| {
                runs.run(iters, |first, calls| {
                    let target = if long_lived {
                        LoopStore::LongLived {
                            id: LONG_LIVED,
                            first,
                        }
                    } else {
                        LoopStore::New
                    };
                    let size = 1 << 10;
                    let plain_time = runtime.block_on(plain.guest_loop_recording(
                        &plain.component,
                        "store-at-label",
                        calls,
                        size,
                        None,
                        target,
                    ));
                    let recorded_time = runtime.block_on(recorded.guest_loop_recording(
                        &recorded.component,
                        "store-at-label",
                        calls,
                        size,
                        Some("bench-actor"),
                        target,
                    ));
                    (plain_time, recorded_time)
                })
            };
            let name = format!("{mode}{shape}store_at_label_1KiB");
            group.bench_function(format!("{name}_unrecorded"), |b| {
                b.iter_custom(|iters| side_by_side(iters).0)
            });
            group.bench_function(format!("{name}_recorded"), |b| {
                b.iter_custom(|iters| side_by_side(iters).1)
            });
            costs.push((name, runs.per_call(), runs.calls.get()));
        }
    }
    group.finish();
    for (name, (plain, recorded), calls) in costs {
        println!(
            "chain/{name}: recording costs {:+.1}% over {calls} calls of each, side by side \
             ({plain:.1} µs unrecorded, {recorded:.1} µs recorded, per call)",
            (recorded / plain - 1.0) * 100.0,
        );
    }
}

/// What the guest path adds to a 1 KiB `store-at-label` (issue 32: under
/// 3 µs): the bench actor's calls into a long-lived store, unrecorded,
/// against the same calls made by the host through the core's API (the
/// same store id, label and contents), side by side as in
/// [`chain_recording`]: every sample runs both, in alternating chunks, each
/// on a root of its own. The difference per call over all calls of both is
/// printed at the end.
fn guest_path(c: &mut Criterion) {
    const STORE: &str = "5b0e7c1a-9d2f-4e63-8a41-2f6b9c0d7e15";
    const SIZE: usize = 1 << 10;
    let runtime = Runtime::new().unwrap();
    let (guest, host) = (Bench::new(), Bench::new());
    let core = host.root.store(STORE).unwrap();
    let runs = SideBySide::default();
    let side_by_side = |iters: u64| {
        runs.run(iters, |first, calls| {
            let guest_time = runtime.block_on(guest.guest_loop_recording(
                &guest.component,
                "store-at-label",
                calls,
                SIZE,
                None,
                LoopStore::LongLived { id: STORE, first },
            ));
            // The bench actor's loop, made by the host.
            let core_time = runtime.block_on(async {
                let mut distinct = vec![0x5a_u8; SIZE];
                let started = Instant::now();
                for i in first..first + calls {
                    distinct[..8].copy_from_slice(&i.to_le_bytes());
                    core.store_at_label("bench:latest", distinct.clone())
                        .await
                        .unwrap();
                }
                started.elapsed()
            });
            (guest_time, core_time)
        })
    };
    let mut group = c.benchmark_group("guest_path");
    group.throughput(Throughput::Elements(1));
    group.bench_function("store_at_label_1KiB_guest", |b| {
        b.iter_custom(|iters| side_by_side(iters).0)
    });
    group.bench_function("store_at_label_1KiB_core", |b| {
        b.iter_custom(|iters| side_by_side(iters).1)
    });
    group.finish();
    let ((guest, core), calls) = (runs.per_call(), runs.calls.get());
    println!(
        "guest_path/store_at_label_1KiB: the guest path adds {:+.2} µs a call over {calls} calls \
         of each, side by side ({guest:.1} µs from the guest, {core:.1} µs through the core's API)",
        guest - core,
    );
}

/// A guest program's `wasi:keyvalue` `get` and `set` of 1 KiB: served
/// from the store, and by wasmtime-wasi-keyvalue's in-memory map (its
/// older draft, hence a second build of the same loops), side by side,
/// with our own `store-at-label` from the bench actor for reference.
fn keyvalue(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = ActorHost::new(StoreRoot::new(dir.path().join("root"))).unwrap();
    let ours = host.load(KV_BENCH).unwrap();
    let options = RunOptions {
        grants: Grants::none().store("bench", Access::ReadWrite),
        limits: Limits {
            max_store_bytes: u64::MAX,
            max_actor_bytes: u64::MAX,
            timeout: Duration::from_secs(3600),
            ..Limits::default()
        },
        chain: ChainRecording::Off,
        ..RunOptions::default()
    };
    let run_ours = |operation: &str, iterations: u64| {
        let argv = [
            "kv_bench",
            operation,
            &iterations.to_string(),
            "1024",
            "bench",
        ]
        .map(str::to_owned);
        let run = runtime.block_on(host.run_command(
            &ours,
            options.clone(),
            &argv,
            CommandOutput::Capture,
        ));
        assert_eq!(run.outcome.unwrap(), 0, "{}", run.stderr);
        nanos(&run.stdout)
    };
    let in_memory = InMemoryKeyValue::new();
    let reference = Bench::new();
    let mut group = c.benchmark_group("keyvalue");
    group.throughput(Throughput::Elements(1));
    for operation in ["get", "set"] {
        group.bench_function(format!("{operation}_1KiB"), |b| {
            b.iter_custom(|iters| run_ours(operation, iters))
        });
        group.bench_function(format!("{operation}_1KiB_wasmtime_in_memory"), |b| {
            b.iter_custom(|iters| runtime.block_on(in_memory.run(operation, iters)))
        });
    }
    group.bench_function("store_at_label_1KiB", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(reference.guest_loop(
                &reference.component,
                "store-at-label",
                iters,
                1 << 10,
            ))
        })
    });
    group.finish();
}

/// A guest's timing, printed as nanoseconds.
fn nanos(stdout: &[u8]) -> Duration {
    let text = String::from_utf8_lossy(stdout);
    Duration::from_nanos(text.trim().parse().expect("the guest prints nanoseconds"))
}

/// wasmtime-wasi-keyvalue's host, as its crate documents it: WASI plus
/// its in-memory key-value context.
struct InMemoryKeyValue {
    engine: Engine,
    pre: CommandPre<InMemoryState>,
}

struct InMemoryState {
    wasi: WasiCtx,
    keyvalue: WasiKeyValueCtx,
    table: ResourceTable,
}

impl WasiView for InMemoryState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl InMemoryKeyValue {
    fn new() -> Self {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        wasmtime_wasi_keyvalue::add_to_linker(&mut linker, |state: &mut InMemoryState| {
            WasiKeyValue::new(&state.keyvalue, &mut state.table)
        })
        .unwrap();
        let component = Component::new(&engine, KV_BENCH_DRAFT).unwrap();
        let pre = CommandPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        Self { engine, pre }
    }

    async fn run(&self, operation: &str, iterations: u64) -> Duration {
        let stdout = MemoryOutputPipe::new(1 << 10);
        let iterations = iterations.to_string();
        let argv = ["kv_bench_draft", operation, &iterations, "1024", ""];
        let wasi = WasiCtx::builder()
            .args(&argv)
            .stdout(stdout.clone())
            .build();
        let state = InMemoryState {
            wasi,
            keyvalue: WasiKeyValueCtx::builder().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.set_epoch_deadline(u64::MAX / 2);
        let command = self.pre.instantiate_async(&mut store).await.unwrap();
        command
            .wasi_cli_run()
            .call_run(&mut store)
            .await
            .unwrap()
            .unwrap();
        nanos(&stdout.contents())
    }
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
    // Through ActorHost, as `theater-store run` does: a command's whole
    // run (it exits at once), compiled afresh or loaded from the root's
    // component cache.
    let dir = tempfile::tempdir().unwrap();
    let host = ActorHost::new(StoreRoot::new(dir.path().join("root"))).unwrap();
    let run = |component| {
        let argv = ["kv_counter".to_owned()];
        let run = runtime.block_on(host.run_command(
            &component,
            RunOptions::default(),
            &argv,
            CommandOutput::Capture,
        ));
        assert_eq!(run.outcome.unwrap(), 1, "the usage failure");
    };
    group.sample_size(10);
    group.bench_function("command_compiled", |b| {
        b.iter(|| run(host.load(KV_COUNTER).unwrap()))
    });
    group.sample_size(50);
    group.bench_function("command_from_cache", |b| {
        b.iter(|| run(runtime.block_on(host.load_cached(KV_COUNTER)).unwrap()))
    });
    group.finish();
}

/// A guest writing 1 GiB through `store-streams` in 64 KiB pieces and
/// reading it back, under a 16 MiB memory limit, against the host API
/// streaming the same size; and the host's peak memory growth meanwhile.
/// The actor does no work per byte (`"check": false`), so this times the
/// interface, not the actor.
fn guest_streaming(c: &mut Criterion) {
    const GIB: u64 = 1 << 30;
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // No history: each round's replaced copy is collected at once (a kept
    // change log would keep every copy, 1 GiB a round).
    let no_history = Options {
        change_retention: Duration::ZERO,
        change_retention_min: 0,
        ..Options::default()
    };
    let root = StoreRoot::with_options(dir.path().join("root"), no_history);
    let host = ActorHost::new(root.clone()).unwrap();
    let actor = host.load(LARGE_FILES).unwrap();
    let options = || RunOptions {
        grants: Grants::none().store("media", Access::ReadWrite),
        limits: Limits {
            max_memory_bytes: 16 << 20,
            max_store_bytes: 8 << 30,
            max_actor_bytes: 8 << 30,
            timeout: Duration::from_secs(600),
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let run = |param: String| {
        let outcome = runtime
            .block_on(host.run_init(&actor, options(), None, &param))
            .outcome;
        if let Err(failure) = outcome {
            panic!("{param}: {failure}");
        }
    };
    let store = root.store("media").unwrap();
    runtime
        .block_on(store.store_at_label("anchor", b"keeps the store".to_vec()))
        .unwrap();
    let write = |seed: u64| {
        format!(
            r#"{{"op":"write","store":"media","label":"video","size":{GIB},"chunk":65536,"seed":{seed},"check":false}}"#
        )
    };
    let read =
        r#"{"op":"read","store":"media","label":"video","chunk":65536,"seed":0,"check":false}"#;

    // Peak memory: one write and one read of 1 GiB, measured once.
    let before = memory_kib("VmRSS");
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    run(write(0));
    run(read.to_owned());
    let growth = memory_kib("VmHWM").saturating_sub(before);
    eprintln!(
        "guest_streaming_1GiB: host peak RSS growth {} MiB (write + read)",
        growth / 1024
    );

    let sweep = GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    };
    let mut group = c.benchmark_group("guest_streaming_1GiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30))
        .throughput(Throughput::Bytes(GIB));
    let seeds = std::sync::atomic::AtomicU64::new(1);
    // Each new copy replaces the label; the old one is collected (untimed).
    group.bench_function("guest/write_64KiB_pieces", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let seed = seeds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let started = Instant::now();
                run(write(seed));
                total += started.elapsed();
                runtime
                    .block_on(store.collect_garbage(sweep, Arc::new(())))
                    .unwrap();
            }
            total
        })
    });
    run(write(0));
    group.bench_function("guest/read_64KiB_pieces", |b| {
        b.iter(|| run(read.to_owned()))
    });
    let input = dir.path().join("input.bin");
    let content_ref = runtime
        .block_on(store.get_by_label("video"))
        .unwrap()
        .unwrap();
    runtime.block_on(async {
        let mut reader = store.reader(&content_ref).await.unwrap();
        let mut file = tokio::fs::File::create(&input).await.unwrap();
        tokio::io::copy(&mut reader, &mut file).await.unwrap();
    });
    group.bench_function("host_api/store_reader", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                runtime.block_on(store.remove_label("video")).unwrap();
                runtime
                    .block_on(store.collect_garbage(sweep, Arc::new(())))
                    .unwrap();
                let started = Instant::now();
                runtime.block_on(async {
                    let file = tokio::fs::File::open(&input).await.unwrap();
                    store.store_reader_at_label("video", file).await.unwrap()
                });
                total += started.elapsed();
            }
            total
        })
    });
    group.bench_function("host_api/reader", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut reader = store.reader(&content_ref).await.unwrap();
                tokio::io::copy(&mut reader, &mut tokio::io::sink())
                    .await
                    .unwrap()
            })
        })
    });
    group.finish();
}

/// A memory figure of this process from /proc/self/status, in KiB.
fn memory_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

criterion_group!(
    benches,
    boundary,
    chain_recording,
    guest_path,
    keyvalue,
    cold_start,
    guest_streaming
);
criterion_main!(benches);
