//! The shared engine (PostgreSQL + S3, on private servers started here)
//! against its floors, side by side in one run: a raw object-store PUT
//! plus one PostgreSQL insert, a raw GET, the local engine's get, and a
//! sync done one object at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use theater_store::{ContentRef, ContentStore, Options, StoreRoot, SyncOptions};
use theater_store_bench::distinct;
use theater_store_testing::{BUCKET, Services};
use tokio::runtime::Runtime;

const KIB: usize = 1 << 10;

struct Setup {
    services: &'static Services,
    runtime: Runtime,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let services = Services::shared();
        services.configure_environment();
        Self {
            services,
            runtime: Runtime::new().unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A fresh shared root with a cache of `cache_bytes` (0: none).
    fn shared_root(&self, name: &str, cache_bytes: u64) -> StoreRoot {
        let root = self.services.new_root(&self.dir.path().join(name));
        StoreRoot::at(
            &format!("{root}&cache_bytes={cache_bytes}"),
            Options::default(),
        )
        .unwrap()
    }

    fn raw_objects(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::from_env()
                .with_bucket_name(BUCKET)
                .with_skip_signature(true)
                .build()
                .unwrap(),
        )
    }

    fn raw_postgres(&self) -> tokio_postgres::Client {
        self.runtime.block_on(async {
            let config = format!(
                "host=127.0.0.1 port={} user=theater dbname=postgres",
                self.services.postgres_port()
            );
            let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS floor_rows (key bytea PRIMARY KEY, size bigint)",
                )
                .await
                .unwrap();
            client
        })
    }
}

fn put(c: &mut Criterion) {
    let setup = Setup::new();
    let counter = AtomicU64::new(0);
    let store = setup.shared_root("put", 1 << 30).store("bench").unwrap();
    let (objects, postgres) = (setup.raw_objects(), setup.raw_postgres());
    for (name, size) in [("1KiB", KIB), ("64KiB", 64 * KIB)] {
        let mut group = c.benchmark_group(format!("shared_put_{name}"));
        group.throughput(Throughput::Elements(1));
        group.bench_function("store", |b| {
            b.to_async(&setup.runtime).iter_batched(
                || distinct(&counter, size),
                |content| store.store(content),
                BatchSize::SmallInput,
            )
        });
        group.bench_function("floor/raw_put_plus_insert", |b| {
            b.to_async(&setup.runtime).iter_batched(
                || distinct(&counter, size),
                |content| {
                    let (objects, postgres) = (&objects, &postgres);
                    async move {
                        let digest = blake3::hash(&content);
                        let key = Key::from(format!("floor/{}", digest.to_hex()));
                        objects.put(&key, PutPayload::from(content)).await.unwrap();
                        postgres
                            .execute(
                                "INSERT INTO floor_rows (key, size) VALUES ($1, $2)",
                                &[&&digest.as_bytes()[..], &(size as i64)],
                            )
                            .await
                            .unwrap();
                    }
                },
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

fn get(c: &mut Criterion) {
    let setup = Setup::new();
    let counter = AtomicU64::new(0);
    let cached = setup.shared_root("cached", 1 << 30).store("bench").unwrap();
    let uncached = setup.shared_root("uncached", 0).store("bench").unwrap();
    let local_dir = tempfile::tempdir().unwrap();
    // The local engine's get, without its remembered reads: a read from
    // its index and files, as the shared engine's cache is read.
    let local = StoreRoot::with_options(
        local_dir.path(),
        Options {
            read_cache_bytes: 0,
            ..Options::default()
        },
    )
    .store("bench")
    .unwrap();
    let objects = setup.raw_objects();
    for (name, size) in [("1KiB", KIB), ("64KiB", 64 * KIB)] {
        let content = distinct(&counter, size);
        let stored = |store: &ContentStore| -> ContentRef {
            setup
                .runtime
                .block_on(store.store(content.clone()))
                .unwrap()
        };
        let (in_cached, in_uncached, in_local) =
            (stored(&cached), stored(&uncached), stored(&local));
        setup.runtime.block_on(cached.get(&in_cached)).unwrap();
        let key = Key::from(format!("floor/get-{name}"));
        setup
            .runtime
            .block_on(objects.put(&key, PutPayload::from(content.clone())))
            .unwrap();
        let mut group = c.benchmark_group(format!("shared_get_{name}"));
        group.throughput(Throughput::Elements(1));
        group.bench_function("uncached", |b| {
            b.to_async(&setup.runtime)
                .iter(|| uncached.get(&in_uncached))
        });
        group.bench_function("floor/raw_get", |b| {
            b.to_async(&setup.runtime)
                .iter(|| async { objects.get(&key).await.unwrap().bytes().await.unwrap() })
        });
        group.bench_function("cached", |b| {
            b.to_async(&setup.runtime).iter(|| cached.get(&in_cached))
        });
        group.bench_function("local_engine", |b| {
            b.to_async(&setup.runtime).iter(|| local.get(&in_local))
        });
        group.finish();
    }
}

/// `sync` of 10,000 small labelled objects from a local root into a fresh
/// shared root, against copying them one at a time (read, store, label)
/// through the public API; the rate (objects per second) is what compares.
fn sync(c: &mut Criterion) {
    const OBJECTS: u64 = 10_000;
    const ONE_AT_A_TIME: u64 = 1_000;
    let setup = Setup::new();
    let source_dir = tempfile::tempdir().unwrap();
    let source = StoreRoot::new(source_dir.path());
    let from = source.store("bench").unwrap();
    setup.runtime.block_on(async {
        let counter = AtomicU64::new(0);
        let contents = (0..OBJECTS)
            .map(|i| (format!("doc:{i:05}"), distinct(&counter, KIB)))
            .collect::<Vec<_>>();
        for (label, content) in contents {
            from.store_at_label(&label, content).await.unwrap();
        }
    });
    let mut group = c.benchmark_group("shared_sync");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));
    let fresh = |n: &AtomicU64| {
        setup.shared_root(
            &format!("sync-{}", n.fetch_add(1, Ordering::Relaxed)),
            1 << 30,
        )
    };
    let roots = AtomicU64::new(0);
    group.throughput(Throughput::Elements(OBJECTS));
    group.bench_function("10k_small_objects", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let destination = fresh(&roots);
                let started = Instant::now();
                setup
                    .runtime
                    .block_on(source.sync_store_to(
                        &destination,
                        "bench",
                        &SyncOptions::default(),
                        Arc::new(()),
                    ))
                    .unwrap();
                total += started.elapsed();
            }
            total
        })
    });
    group.throughput(Throughput::Elements(ONE_AT_A_TIME));
    group.bench_function("1k_small_objects_one_at_a_time", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let to = fresh(&roots).store("bench").unwrap();
                let started = Instant::now();
                setup.runtime.block_on(async {
                    let labels = from
                        .list_labels_page("", None, ONE_AT_A_TIME as usize)
                        .await
                        .unwrap();
                    for entry in labels {
                        let content = from.get(&entry.content_ref).await.unwrap();
                        let copied = to.store(content).await.unwrap();
                        to.compare_and_swap_label(&entry.label, None, Some(&copied))
                            .await
                            .unwrap();
                    }
                });
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
}

/// How soon a watcher on another host (another engine on the same
/// database and bucket, with its own cache) hears of a label write it is
/// already waiting for: the writing host's announcement after its commit,
/// LISTENed for by one connection per host. The watcher runs in a task of
/// its own and is parked on its wait before each write (each round
/// leaves it 2 ms), so what is timed is the write plus the wake-up, not a
/// read that would find the change anyway. p50 and p99 of the time from
/// the write's start to the watcher's receipt are printed beside
/// criterion's figures; the write alone is printed too.
fn notify(c: &mut Criterion) {
    let setup = Setup::new();
    let writer_root = setup.shared_root("notify-writer", 0);
    let described = writer_root.describe().unwrap();
    let (base, _) = described.split_once("&cache=").unwrap();
    let other_host = format!(
        "{base}&cache={}",
        setup.dir.path().join("notify-watcher").display()
    );
    let watcher_root = StoreRoot::at(&other_host, Options::default()).unwrap();
    let (writer, watched) = (
        writer_root.store("bench").unwrap(),
        watcher_root.store("bench").unwrap(),
    );
    let counter = AtomicU64::new(0);
    let (one, two) = setup.runtime.block_on(async {
        (
            writer.store(distinct(&counter, KIB)).await.unwrap(),
            writer.store(distinct(&counter, KIB)).await.unwrap(),
        )
    });
    let (heard, mut hearing) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    setup.runtime.block_on(async {
        let since = watched.last_change().await.unwrap();
        let mut watch = watched.watch("", since);
        tokio::spawn(async move {
            while let Some(Ok(_)) = watch.next().await {
                if heard.send(Instant::now()).is_err() {
                    break;
                }
            }
        });
    });
    let mut group = c.benchmark_group("shared_notify");
    group.sample_size(20);
    let (mut latencies, mut writes) = (Vec::new(), Vec::new());
    let mut flip = false;
    group.bench_function("another_host", |b| {
        b.iter_custom(|iters| {
            setup.runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    flip = !flip;
                    let target = if flip { &one } else { &two };
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let started = Instant::now();
                    writer.label("notified", target).await.unwrap();
                    writes.push(started.elapsed());
                    let took = hearing.recv().await.unwrap() - started;
                    latencies.push(took);
                    total += took;
                }
                total
            })
        })
    });
    group.finish();
    for times in [&mut latencies, &mut writes] {
        times.sort();
    }
    if !latencies.is_empty() {
        let at = |times: &[Duration], q: f64| times[((times.len() - 1) as f64 * q) as usize];
        eprintln!(
            "shared_notify/another_host: p50 {:?}, p99 {:?} over {} changes (the write alone: p50 {:?}, p99 {:?})",
            at(&latencies, 0.5),
            at(&latencies, 0.99),
            latencies.len(),
            at(&writes, 0.5),
            at(&writes, 0.99),
        );
    }
}

criterion_group!(benches, put, get, sync, notify);
criterion_main!(benches);
