//! The host-side Rust API against the hardware floor and a peer CAS:
//! small objects, large objects, concurrent durable writers, 100k labels.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use theater_store::{ContentStore, Durability, GcOptions, StoreRoot, SyncOptions};
use theater_store_bench::{distinct, env_number};
use tokio::runtime::Runtime;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

fn store_in(dir: &Path, durability: Durability) -> ContentStore {
    StoreRoot::with_durability(dir.join(format!("{durability:?}")), durability)
        .store("bench")
        .unwrap()
}

/// A store on a log root (`log:DIR/log`, issue 32's engine).
fn log_store_in(dir: &Path, durability: Durability) -> ContentStore {
    let options = theater_store::Options {
        durability,
        ..theater_store::Options::default()
    };
    StoreRoot::at(&format!("log:{}", dir.join("log").display()), options)
        .unwrap()
        .store("bench")
        .unwrap()
}

/// The floor: BLAKE3, write a temporary file, rename it into place; in
/// durable mode also fsync the file and the directory.
fn raw_write(dir: &Path, content: &[u8], durable: bool) {
    let name = blake3::hash(content).to_hex();
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp).unwrap();
    file.write_all(content).unwrap();
    if durable {
        file.sync_data().unwrap();
    }
    std::fs::rename(&tmp, dir.join(name.as_str())).unwrap();
    if durable {
        File::open(dir).unwrap().sync_all().unwrap();
    }
}

/// `iters` 1 KiB `store_at_label`s from 8 tasks at once, each on labels of
/// its own; returns how long they took together.
async fn from_8_tasks(store: ContentStore, counter: Arc<AtomicU64>, iters: u64) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..8u64)
        .map(|task| {
            let (store, counter) = (store.clone(), Arc::clone(&counter));
            tokio::spawn(async move {
                let label = format!("bench:feed:{task}");
                for _ in (task..iters).step_by(8) {
                    store
                        .store_at_label(&label, distinct(&counter, KIB))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

fn small_objects(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let counter = AtomicU64::new(0);
    let mut group = c.benchmark_group("small_1KiB");
    group.throughput(Throughput::Elements(1));
    for durability in [Durability::Buffered, Durability::Synced] {
        let store = store_in(dir.path(), durability);
        group.bench_function(format!("store/{durability:?}"), |b| {
            b.to_async(&runtime).iter_batched(
                || distinct(&counter, KIB),
                |c| store.store(c),
                BatchSize::SmallInput,
            )
        });
        if durability == Durability::Buffered {
            // The same write of content that names another object by its
            // ref, as the seed's linked structures do: the link is found
            // and recorded in the index with the object.
            let named = runtime
                .block_on(store.store(distinct(&counter, KIB)))
                .unwrap();
            group.bench_function("store/Buffered_naming_a_ref", |b| {
                b.to_async(&runtime).iter_batched(
                    || {
                        let mut content = distinct(&counter, KIB);
                        content[16..80].copy_from_slice(named.hash().as_bytes());
                        content
                    },
                    |c| store.store(c),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    let store = store_in(dir.path(), Durability::Buffered);
    let content_ref = runtime
        .block_on(store.store(distinct(&counter, KIB)))
        .unwrap();
    group.bench_function("get/verified", |b| {
        b.to_async(&runtime).iter(|| store.get(&content_ref))
    });
    group.bench_function("exists", |b| {
        b.to_async(&runtime).iter(|| store.exists(&content_ref))
    });
    // Point a label at stored content, alternating between two targets so
    // that every call changes the index.
    let other_ref = runtime
        .block_on(store.store(distinct(&counter, KIB)))
        .unwrap();
    let mut flip = false;
    let label_store = store.clone();
    let label_counter = AtomicU64::new(1 << 40);
    group.bench_function("store_at_label", |b| {
        b.to_async(&runtime)
            .iter(|| label_store.store_at_label("bench:feed", distinct(&label_counter, KIB)))
    });
    // The same from 8 tasks at once, each on labels of its own: the time
    // per put, for the throughput against one task (issue 32's 4x).
    let shared_counter = Arc::new(AtomicU64::new(1 << 41));
    group.bench_function("store_at_label_8_tasks", |b| {
        b.to_async(&runtime)
            .iter_custom(|iters| from_8_tasks(store.clone(), Arc::clone(&shared_counter), iters))
    });
    // The same writes and reads on a log root (`log:DIR`, issue 32's
    // engine), against the same floor below.
    let log_store = log_store_in(dir.path(), Durability::Buffered);
    let log_counter = Arc::new(AtomicU64::new(1 << 42));
    group.bench_function("log/store_at_label", |b| {
        b.to_async(&runtime)
            .iter(|| log_store.store_at_label("bench:feed", distinct(&log_counter, KIB)))
    });
    group.bench_function("log/store_at_label_8_tasks", |b| {
        b.to_async(&runtime)
            .iter_custom(|iters| from_8_tasks(log_store.clone(), Arc::clone(&log_counter), iters))
    });
    let log_ref = runtime
        .block_on(log_store.store(distinct(&log_counter, KIB)))
        .unwrap();
    group.bench_function("log/get/verified", |b| {
        b.to_async(&runtime).iter(|| log_store.get(&log_ref))
    });
    group.bench_function("label_set", |b| {
        b.to_async(&runtime).iter(|| {
            flip = !flip;
            let target = if flip { &content_ref } else { &other_ref };
            store.label("bench:label", target)
        })
    });

    let floor = dir.path().join("floor");
    std::fs::create_dir_all(&floor).unwrap();
    for durable in [false, true] {
        let name = if durable {
            "floor/write_rename_fsync"
        } else {
            "floor/write_rename"
        };
        group.bench_function(name, |b| {
            b.iter_batched(
                || distinct(&counter, KIB),
                |c| raw_write(&floor, &c, durable),
                BatchSize::SmallInput,
            )
        });
    }
    let cache = dir.path().join("cacache");
    group.bench_function("cacache/write_hash", |b| {
        b.iter_batched(
            || distinct(&counter, KIB),
            |c| cacache::write_hash_sync(&cache, c).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let integrity = cacache::write_hash_sync(&cache, distinct(&counter, KIB)).unwrap();
    group.bench_function("cacache/read_hash", |b| {
        b.iter(|| cacache::read_hash_sync(&cache, &integrity).unwrap())
    });
    group.finish();
}

fn large_objects(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let counter = AtomicU64::new(0);
    let store = store_in(dir.path(), Durability::Buffered);
    let sweep = GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    };
    // A label keeps the store from being empty, so that the collections
    // between iterations do not remove it (and its directories) as well.
    runtime
        .block_on(store.store_at_label("anchor", b"keeps the store".to_vec()))
        .unwrap();
    let mut group = c.benchmark_group("large");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for (name, size) in [("1MiB", MIB), ("256MiB", 256 * MIB)] {
        group.throughput(Throughput::Bytes(size as u64));
        // Each stored object is collected (untimed) so the disk does not fill.
        group.bench_function(format!("store/{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let content = distinct(&counter, size);
                    let started = Instant::now();
                    runtime.block_on(store.store(content)).unwrap();
                    total += started.elapsed();
                    runtime
                        .block_on(store.collect_garbage(sweep, Arc::new(())))
                        .unwrap();
                }
                total
            })
        });
        let content = distinct(&counter, size);
        let content_ref = runtime
            .block_on(store.store_at_label("kept", content.clone()))
            .unwrap();
        group.bench_function(format!("get_verified/{name}"), |b| {
            b.iter(|| runtime.block_on(store.get(&content_ref)).unwrap())
        });
        group.bench_function(format!("blake3/{name}"), |b| {
            b.iter(|| blake3::hash(&content))
        });
        let plain = dir.path().join("plain");
        group.bench_function(format!("file_write/{name}"), |b| {
            b.iter(|| std::fs::write(&plain, &content).unwrap())
        });
        std::fs::write(&plain, &content).unwrap();
        group.bench_function(format!("file_read/{name}"), |b| {
            b.iter(|| std::fs::read(&plain).unwrap())
        });
        runtime.block_on(store.remove_label("kept")).unwrap();
    }
    group.finish();
}

fn concurrent_durable_writers(c: &mut Criterion) {
    for writers in [8, 32] {
        durable_writers(c, writers);
    }
}

/// `writers` tasks each storing 1 KiB objects in synced mode, against as
/// many threads each doing a durable write + rename per object.
fn durable_writers(c: &mut Criterion, writers: u64) {
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let store = store_in(dir.path(), Durability::Synced);
    let floor = dir.path().join("floor");
    std::fs::create_dir_all(&floor).unwrap();
    let mut group = c.benchmark_group(format!("durable_{writers}_writers"));
    group
        .throughput(Throughput::Elements(writers))
        .sample_size(10);
    // One iteration: each writer stores one 1 KiB object; on a local
    // root, then on a log root (issue 32's engine).
    let log_store = log_store_in(dir.path(), Durability::Synced);
    for (name, store) in [
        ("store/group_commit", &store),
        ("log/group_commit", &log_store),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                runtime.block_on(async {
                    let tasks: Vec<_> = (0..writers)
                        .map(|_| {
                            let (store, counter) = (store.clone(), counter.clone());
                            tokio::spawn(async move {
                                for _ in 0..iters {
                                    store.store(distinct(&counter, KIB)).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                });
                started.elapsed()
            })
        });
    }
    group.bench_function("floor/fsync_per_operation", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..writers {
                    scope.spawn(|| {
                        for _ in 0..iters {
                            raw_write(&floor, &distinct(&counter, KIB), true);
                        }
                    });
                }
            });
            started.elapsed()
        })
    });
    group.finish();
}

fn labels_at_scale(c: &mut Criterion) {
    const LABELS: usize = 100_000;
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path(), Durability::Buffered);
    let (a, b) = runtime.block_on(async {
        let a = store.store("target a").await.unwrap();
        let b = store.store("target b").await.unwrap();
        let numbers: Vec<usize> = (0..LABELS).collect();
        for chunk in numbers.chunks(2000) {
            let writes: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    let (store, a) = (store.clone(), a.clone());
                    tokio::spawn(
                        async move { store.label(&format!("label:{i:06}"), &a).await.unwrap() },
                    )
                })
                .collect();
            for write in writes {
                write.await.unwrap();
            }
        }
        (a, b)
    });
    let mut group = c.benchmark_group("labels_100k");
    let next = AtomicU64::new(0);
    let pick = || {
        format!(
            "label:{:06}",
            next.fetch_add(7919, Ordering::Relaxed) % LABELS as u64
        )
    };
    group.bench_function("get_by_label", |bench| {
        bench
            .to_async(&runtime)
            .iter(|| store.get_by_label_owned(pick()))
    });
    group.bench_function("label_update", |bench| {
        let flip = AtomicU64::new(0);
        bench.to_async(&runtime).iter(|| {
            let target = if flip.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
                &b
            } else {
                &a
            };
            store.label_owned(pick(), target.clone())
        })
    });
    group.bench_function("prefix_page_100", |bench| {
        bench
            .to_async(&runtime)
            .iter(|| async { store.list_labels_page("label:05", None, 100).await.unwrap() })
    });
    group.bench_function("calculate_total_size", |bench| {
        bench
            .to_async(&runtime)
            .iter(|| store.calculate_total_size())
    });
    group.finish();
}

/// gc and verify over stores of linked content, at 10k and 100k objects,
/// so that the cost per object can be compared: lists of 100 nodes, each
/// node naming the one before by its ref (as the seed's linked list
/// does), every other list labelled at its head. gc runs as a dry run so
/// that every iteration sees the same store; it reads the index, loads the
/// links and walks them.
fn maintenance_at_scale(c: &mut Criterion) {
    const NODES_PER_LIST: usize = 100;
    let runtime = Runtime::new().unwrap();
    let mut group = c.benchmark_group("maintenance_linked");
    group.sample_size(10);
    for objects in [10_000usize, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path(), Durability::Buffered);
        runtime.block_on(async {
            let lists: Vec<_> = (0..objects / NODES_PER_LIST)
                .map(|list| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let mut previous = String::from("none");
                        for node in 0..NODES_PER_LIST {
                            let content = format!("list {list} node {node} next {previous}");
                            previous = store.store(content).await.unwrap().hash().to_owned();
                        }
                        if list % 2 == 0 {
                            let head = theater_store::ContentRef::parse(previous).unwrap();
                            store.label(&format!("list:{list}"), &head).await.unwrap();
                        }
                    })
                })
                .collect();
            for list in lists {
                list.await.unwrap();
            }
            // Past a zero grace period, so that no list counts as recent.
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        group.throughput(Throughput::Elements(objects as u64));
        let sweep = GcOptions {
            grace: Duration::ZERO,
            dry_run: true,
        };
        group.bench_function(format!("gc_dry_run/{objects}"), |bench| {
            bench.to_async(&runtime).iter(|| async {
                let report = store.collect_garbage(sweep, Arc::new(())).await.unwrap();
                assert_eq!(report.objects_removed as usize, objects / 2);
            })
        });
        group.bench_function(format!("verify/{objects}"), |bench| {
            bench.to_async(&runtime).iter(|| async {
                let report = store.verify(Arc::new(())).await.unwrap();
                assert_eq!(report.objects_checked as usize, objects);
            })
        });
    }
    group.finish();
}

/// Owned-argument helpers so benchmark closures can return futures.
trait OwnedCalls {
    fn get_by_label_owned(&self, label: String) -> impl Future<Output = ()>;
    fn label_owned(
        &self,
        label: String,
        target: theater_store::ContentRef,
    ) -> impl Future<Output = ()>;
}

impl OwnedCalls for ContentStore {
    fn get_by_label_owned(&self, label: String) -> impl Future<Output = ()> {
        let store = self.clone();
        async move {
            store
                .get_by_label(&label)
                .await
                .unwrap()
                .expect("label exists");
        }
    }

    fn label_owned(
        &self,
        label: String,
        target: theater_store::ContentRef,
    ) -> impl Future<Output = ()> {
        let store = self.clone();
        async move { store.label(&label, &target).await.unwrap() }
    }
}

/// 1 GiB streamed in and read back, against the floors: BLAKE3 and plain
/// file writes and reads of the same size; and 4 KiB verified range reads
/// from its middle, with the page cache warm and cold.
fn streaming(c: &mut Criterion) {
    const GIB: usize = 1 << 30;
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path(), Durability::Buffered);
    runtime
        .block_on(store.store_at_label("anchor", b"keeps the store".to_vec()))
        .unwrap();
    let content: Vec<u8> = (0..GIB / 8)
        .flat_map(|word| {
            (word as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .to_le_bytes()
        })
        .collect();
    let input = dir.path().join("input.bin");
    std::fs::write(&input, &content).unwrap();
    let sweep = GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    };

    let mut group = c.benchmark_group("streaming_1GiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Bytes(GIB as u64));
    // Each stored copy is collected (untimed), so every store is a new write.
    let stream_in = |store: &ContentStore, iters: u64| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let started = Instant::now();
            runtime.block_on(async {
                let file = tokio::fs::File::open(&input).await.unwrap();
                store.store_reader(file).await.unwrap()
            });
            total += started.elapsed();
            runtime
                .block_on(store.collect_garbage(sweep, Arc::new(())))
                .unwrap();
        }
        total
    };
    group.bench_function("store_reader", |b| {
        b.iter_custom(|iters| stream_in(&store, iters))
    });
    // The same on a log root, where content this large is a file of its
    // own beside the log, streamed in through a temporary file.
    let log_store = log_store_in(dir.path(), Durability::Buffered);
    runtime
        .block_on(log_store.store_at_label("anchor", b"keeps the store".to_vec()))
        .unwrap();
    group.bench_function("log/store_reader", |b| {
        b.iter_custom(|iters| stream_in(&log_store, iters))
    });
    group.bench_function("floor/blake3", |b| b.iter(|| blake3::hash(&content)));
    let plain = dir.path().join("plain.bin");
    group.bench_function("floor/file_write", |b| {
        b.iter(|| std::fs::write(&plain, &content).unwrap())
    });
    let content_ref = runtime
        .block_on(store.store_at_label("kept", content.clone()))
        .unwrap();
    group.bench_function("reader_whole_verified", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut reader = store.reader(&content_ref).await.unwrap();
                tokio::io::copy(&mut reader, &mut tokio::io::sink())
                    .await
                    .unwrap()
            })
        })
    });
    std::fs::write(&plain, &content).unwrap();
    group.bench_function("floor/file_read", |b| {
        let mut buffer = vec![0u8; MIB];
        b.iter(|| {
            use std::io::Read;
            let mut file = File::open(&plain).unwrap();
            while file.read(&mut buffer).unwrap() > 0 {}
        })
    });
    group.finish();

    let mut group = c.benchmark_group("range_4KiB_of_1GiB");
    let middle = GIB as u64 / 2 + 12_345;
    group.bench_function("warm", |b| {
        b.iter(|| {
            runtime
                .block_on(store.read_range(&content_ref, middle, 4096))
                .unwrap()
        })
    });
    let log_ref = runtime
        .block_on(log_store.store_at_label("kept", content.clone()))
        .unwrap();
    group.bench_function("log/warm", |b| {
        b.iter(|| {
            runtime
                .block_on(log_store.read_range(&log_ref, middle, 4096))
                .unwrap()
        })
    });
    // Cold: the object's and its outboard's pages are dropped from the
    // page cache before each read (untimed).
    let hash = content_ref.hash().to_owned();
    let store_dir = dir.path().join("Buffered/stores/bench");
    let files = [
        store_dir.join("objects").join(&hash[..2]).join(&hash[2..]),
        store_dir
            .join("outboards")
            .join(&hash[..2])
            .join(&hash[2..]),
    ];
    group.bench_function("cold", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                for path in &files {
                    drop_from_page_cache(path);
                }
                let started = Instant::now();
                runtime
                    .block_on(store.read_range(&content_ref, middle, 4096))
                    .unwrap();
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
}

/// `sync` of a store of 10,000 small labelled objects into an empty root,
/// against doing the same one object at a time through the public API:
/// read it, store it, set its label.
fn sync(c: &mut Criterion) {
    const OBJECTS: u64 = 10_000;
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = StoreRoot::new(dir.path().join("source"));
    let from = source.store("bench").unwrap();
    runtime.block_on(async {
        let counter = AtomicU64::new(0);
        for i in 0..OBJECTS {
            let label = format!("doc:{i:05}");
            from.store_at_label(&label, distinct(&counter, KIB))
                .await
                .unwrap();
        }
    });
    let mut group = c.benchmark_group("sync");
    group
        .throughput(Throughput::Elements(OBJECTS))
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    // Each iteration into a fresh root, timed alone.
    let timed = |iters: u64, run: &dyn Fn(StoreRoot)| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let into = tempfile::tempdir().unwrap();
            let destination = StoreRoot::new(into.path());
            let started = Instant::now();
            run(destination.clone());
            total += started.elapsed();
            let to = destination.store("bench").unwrap();
            let stats = runtime.block_on(to.stats()).unwrap();
            assert_eq!((stats.objects, stats.labels), (OBJECTS, OBJECTS));
        }
        total
    };
    group.bench_function("10k_small_objects", |b| {
        b.iter_custom(|iters| {
            timed(iters, &|destination| {
                let options = SyncOptions::default();
                runtime
                    .block_on(source.sync_store_to(&destination, "bench", &options, Arc::new(())))
                    .unwrap();
            })
        })
    });
    group.bench_function("10k_small_objects_one_at_a_time", |b| {
        b.iter_custom(|iters| {
            timed(iters, &|destination| {
                let to = destination.store("bench").unwrap();
                runtime.block_on(async {
                    let labels = from.list_labels_page("", None, usize::MAX).await.unwrap();
                    for entry in labels {
                        let content = from.get(&entry.content_ref).await.unwrap();
                        let copied = to.store(content).await.unwrap();
                        to.compare_and_swap_label(&entry.label, None, Some(&copied))
                            .await
                            .unwrap();
                    }
                });
            })
        })
    });
    group.finish();
}

/// The change feed: how soon a watcher hears of a label write (in this
/// process, and through another process's view of the root, which polls
/// the shared commit count), with p50 and p99 printed beside criterion's
/// figures.
fn change_feed(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = StoreRoot::new(dir.path().join("feed"));
    let store = root.store("bench").unwrap();
    let counter = AtomicU64::new(0);
    let mut group = c.benchmark_group("change_feed");
    let (one, two) = runtime.block_on(async {
        (
            store.store(distinct(&counter, KIB)).await.unwrap(),
            store.store(distinct(&counter, KIB)).await.unwrap(),
        )
    });
    // A second root value on the same directory, as another process has:
    // same engine rules, its own commit signal.
    let watchers = [
        ("notify/same_root", root.clone()),
        (
            "notify/another_handle",
            StoreRoot::new(dir.path().join("feed")),
        ),
    ];
    // Kept across both: each write must move the label, or no change is
    // logged and the watcher would wait forever.
    let mut flip = false;
    for (name, watching) in watchers {
        let watched = watching.store("bench").unwrap();
        // The watcher waits in a task of its own, parked before each
        // write (2 ms apart), so that the wake-up is timed rather than a
        // read that finds the change anyway.
        let (heard, mut hearing) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let since = runtime.block_on(watched.last_change()).unwrap();
        let mut watch = watched.watch("bench:notify", since);
        let watcher = runtime.spawn(async move {
            while let Some(Ok(_)) = watch.next().await {
                if heard.send(Instant::now()).is_err() {
                    break;
                }
            }
        });
        let mut latencies = Vec::new();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        flip = !flip;
                        let target = if flip { &one } else { &two };
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        let started = Instant::now();
                        store.label("bench:notify", target).await.unwrap();
                        let took = hearing.recv().await.unwrap() - started;
                        latencies.push(took);
                        total += took;
                    }
                    total
                })
            })
        });
        watcher.abort();
        latencies.sort();
        if !latencies.is_empty() {
            let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
            eprintln!(
                "change_feed/{name}: p50 {:?}, p99 {:?} over {} changes",
                at(0.5),
                at(0.99),
                latencies.len()
            );
        }
    }
    group.finish();
}

/// `sync` after 10 label changes in a store of many labels (100,000, or
/// `THEATER_STORE_BENCH_SYNC_LABELS`): the incremental sync that reads
/// the change logs, against the whole comparison it replaces.
fn sync_after_changes(c: &mut Criterion) {
    let labels: u64 = env_number("THEATER_STORE_BENCH_SYNC_LABELS", 100_000);
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (source, destination) = (
        StoreRoot::new(dir.path().join("source")),
        StoreRoot::new(dir.path().join("destination")),
    );
    let from = source.store("bench").unwrap();
    let counter = AtomicU64::new(0);
    runtime.block_on(async {
        let mut done = 0;
        while done < labels {
            let batch = (labels - done).min(10_000);
            let mut moves = Vec::with_capacity(batch as usize);
            for i in done..done + batch {
                let content_ref = from.store(distinct(&counter, 64)).await.unwrap();
                moves.push((format!("doc:{i:07}"), Some(content_ref)));
            }
            from.set_labels(&moves).await.unwrap();
            done += batch;
        }
        source
            .sync_store_to(&destination, "bench", &SyncOptions::default(), ())
            .await
            .unwrap();
    });
    let mut group = c.benchmark_group(format!("sync_after_10_changes_{labels}_labels"));
    group.sample_size(10);
    let mut round = 0u64;
    for (name, full) in [("incremental", false), ("whole_comparison", true)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    runtime.block_on(async {
                        for i in 0..10 {
                            round += 1;
                            let label = format!("doc:{:07}", (round * 7919 + i) % labels);
                            from.store_at_label(&label, distinct(&counter, 64))
                                .await
                                .unwrap();
                        }
                    });
                    let options = SyncOptions {
                        full,
                        ..SyncOptions::default()
                    };
                    let started = Instant::now();
                    let report = runtime
                        .block_on(source.sync_store_to(&destination, "bench", &options, ()))
                        .unwrap();
                    total += started.elapsed();
                    assert_eq!(report.labels_moved, 10, "{report:?}");
                }
                total
            })
        });
    }
    group.finish();
}

/// Asks the kernel to forget a file's cached pages, so the next read goes
/// to the disk.
fn drop_from_page_cache(path: &Path) {
    use std::os::fd::AsRawFd;
    let file = File::open(path).unwrap();
    // SAFETY: a valid open descriptor; the call only drops cached pages.
    let advised = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(advised, 0, "posix_fadvise on {}", path.display());
}

/// History at scale: a store whose log holds 1,000,000 changes (or
/// `THEATER_STORE_BENCH_HISTORY_CHANGES`) to 10,000 labels. Reads a label
/// as it was at an early and a late point, against a read of it now; a
/// label's newest 10 versions; and a revert that moves all 10,000 labels.
/// Prints the index bytes each change costs.
fn history_at_scale(c: &mut Criterion) {
    const LABELS: u64 = 10_000;
    let changes: u64 = env_number("THEATER_STORE_BENCH_HISTORY_CHANGES", 1_000_000);
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = StoreRoot::new(dir.path().join("history"));
    let store = root.store("bench").unwrap();
    let counter = AtomicU64::new(0);
    let index_bytes = |root: &Path| -> u64 {
        ["index.sqlite", "index.sqlite-wal"]
            .iter()
            .filter_map(|name| std::fs::metadata(root.join(name)).ok())
            .map(|metadata| metadata.len())
            .sum()
    };
    runtime.block_on(async {
        let mut pool = Vec::new();
        for _ in 0..100 {
            pool.push(store.store(distinct(&counter, 64)).await.unwrap());
        }
        let before = index_bytes(&dir.path().join("history"));
        // Each round moves every label to the next object of the pool.
        for round in 0..changes / LABELS {
            let moves: Vec<_> = (0..LABELS)
                .map(|i| {
                    let target = &pool[((round + i) % pool.len() as u64) as usize];
                    (format!("doc:{i:05}"), Some(target.clone()))
                })
                .collect();
            store.set_labels(&moves).await.unwrap();
        }
        let grown = index_bytes(&dir.path().join("history")) - before;
        eprintln!(
            "history_at_scale: {} changes, index grew {} bytes: {} bytes per change",
            store.last_change().await.unwrap(),
            grown,
            grown / changes.max(1)
        );
    });
    let last = runtime.block_on(store.last_change()).unwrap();
    let mut group = c.benchmark_group(format!("history_{changes}_changes"));
    group.bench_function("get_by_label_now", |b| {
        b.to_async(&runtime)
            .iter(|| async { store.get_by_label("doc:04321").await.unwrap() })
    });
    for (name, seq) in [
        ("label_at_early_point", 5_000),
        ("label_at_late_point", last - 5_000),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&runtime)
                .iter(|| async { store.label_at("doc:04321", seq).await.unwrap() })
        });
    }
    group.bench_function("history_newest_10", |b| {
        b.to_async(&runtime)
            .iter(|| async { store.history("doc:04321", 10).await.unwrap() })
    });
    group.sample_size(10);
    // Back and forth between the last two rounds: each revert moves every
    // label.
    let points = [last - LABELS, last];
    let mut turn = 0;
    group.bench_function("revert_10k_labels", |b| {
        b.iter(|| {
            let point = points[turn % 2];
            turn += 1;
            let moved = runtime
                .block_on(store.revert_to("doc:", point, false))
                .unwrap();
            assert_eq!(moved.len() as u64, LABELS);
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    small_objects,
    large_objects,
    streaming,
    concurrent_durable_writers,
    labels_at_scale,
    maintenance_at_scale,
    history_at_scale,
    sync,
    change_feed,
    sync_after_changes
);
criterion_main!(benches);
