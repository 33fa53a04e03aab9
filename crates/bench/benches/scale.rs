//! One store grown by decades to 1,000,000 labelled 1 KiB objects (issue
//! 32's scale table): at each decade, what a write, a lookup and a
//! verified read cost, what each maintenance job takes in all and per
//! object, and the disk each object needs. A query whose plan turns
//! per-row shows here as a per-object cost that grows with the decade.
//!
//! The store is filled by 8 writers (`store_at_label`, buffered, each
//! label `item/NNNNNNNN` naming distinct content). Then, one task at a
//! time: 2,000 more `store_at_label`s (and the bytes those writes handed
//! the kernel, from `/proc/self/io`: log frames and checkpoints; a log
//! root copies into a mapping of its file instead, with no `write` calls,
//! and shows `mapped`: its bytes per object are the disk column); 10,000
//! `get_by_label`s and verified `get`s of scattered labels, each named
//! once, so neither is answered from the read cache, timed in five slices
//! with the median slice reported (a pause of the machine inside one
//! slice then does not move the figure); the same
//! reads again, warm (answered from the read cache); `verify`,
//! `gc --dry-run`, a real gc
//! (which finds nothing to remove, but looks at everything), an export
//! of the whole store into a sink, and a first sync of it into an empty
//! root of the same kind. Then the root is let go and
//! opened again (a log root replays its log), and a second root of 1,000
//! stores of 100 objects each made, every store verified and collected.
//! Last, 10,000 and then 100,000 labels are set in one transaction and
//! removed in another.
//!
//! Run: `cargo bench -p theater-store-bench --bench scale`
//! (`THEATER_STORE_BENCH_SCALE_MAX`, default 1,000,000;
//! `THEATER_STORE_BENCH_ENGINE=log` for log roots instead of local ones,
//! `shared` for shared roots on private PostgreSQL and S3 servers, whose
//! disk and bytes written are the servers' and not shown).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use theater_store::{
    ContentRef, ContentStore, Durability, GcOptions, Options, StoreRoot, SyncOptions,
};
use theater_store_bench::env_number;
use theater_store_testing::Services;

const WRITERS: usize = 8;
const PROBES: usize = 10_000;
const MORE_WRITES: usize = 2_000;
/// The first reads are timed in this many slices of the probes, and the
/// median slice reported: a pause of this shared machine inside one
/// slice then does not move the figure.
const SLICES: usize = 5;
/// The root of many stores: this many stores, holding this many objects
/// in all.
const MANY_STORES: usize = 1_000;
const MANY_STORES_OBJECTS: usize = 100_000;
/// The sizes of the label batches written in one transaction each.
const BATCHES: [usize; 2] = [10_000, 100_000];

fn label(i: usize) -> String {
    format!("item/{i:08}")
}

/// 1 KiB naming `i`, distinct for each `i`.
fn content(i: usize) -> Vec<u8> {
    let mut bytes = vec![0x5au8; 1024];
    bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
    bytes
}

/// Fills labels `from..to` with `WRITERS` tasks.
async fn fill(store: &ContentStore, from: usize, to: usize) {
    with_writers(|writer| {
        let store = store.clone();
        async move {
            for i in (from + writer..to).step_by(WRITERS) {
                store.store_at_label(&label(i), content(i)).await.unwrap();
            }
        }
    })
    .await;
}

/// Runs `work(writer)` for each of `WRITERS` writers at once, and waits
/// for them all.
async fn with_writers<Work>(work: impl Fn(usize) -> Work)
where
    Work: std::future::Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<_> = (0..WRITERS)
        .map(|writer| tokio::spawn(work(writer)))
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Scattered indexes below `n`, each once: a stride coprime with `n` near
/// its golden section, so that no two probes close in time land close in
/// the store (a stride near `n / 2` made every other probe a neighbour of
/// the one before it, on a page already read).
fn scattered(n: usize, count: usize) -> impl Iterator<Item = usize> {
    let golden = (n as f64 * 0.618_033_988_7) as usize;
    let stride = (golden..n).find(|s| gcd(*s, n) == 1).unwrap_or(1);
    (0..count.min(n)).map(move |k| (k * stride + 7) % n)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The middle one of `figures`.
fn median(mut figures: Vec<f64>) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures[figures.len() / 2]
}

fn micros_each(took: Duration, count: usize) -> f64 {
    took.as_secs_f64() * 1e6 / count as f64
}

/// Bytes this process has passed to `write` and friends so far.
fn bytes_written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|line| line.strip_prefix("wchar: "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap()
}

/// Bytes of every file under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            disk_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// The engine the bench runs on (`THEATER_STORE_BENCH_ENGINE`).
#[derive(Clone, Copy)]
enum BenchEngine {
    Local,
    Log,
    Shared,
}

/// `log`, `shared`, or (unset or anything else) local.
fn bench_engine() -> BenchEngine {
    match std::env::var("THEATER_STORE_BENCH_ENGINE").as_deref() {
        Ok("log") => BenchEngine::Log,
        Ok("shared") => BenchEngine::Shared,
        _ => BenchEngine::Local,
    }
}

/// The root string of a fresh root kept under `path` (a shared root's
/// read cache is there; its index and objects are on the servers).
fn new_root_string(path: &Path) -> String {
    match bench_engine() {
        BenchEngine::Local => path.display().to_string(),
        BenchEngine::Log => format!("log:{}", path.display()),
        BenchEngine::Shared => {
            let services = Services::shared();
            services.configure_environment();
            services.new_root(&path.join("cache"))
        }
    }
}

/// The root `root` names, its writes buffered.
fn open_root(root: &str) -> StoreRoot {
    let options = Options {
        durability: Durability::Buffered,
        ..Options::default()
    };
    StoreRoot::at(root, options).unwrap()
}

fn main() {
    let max: usize = env_number("THEATER_STORE_BENCH_SCALE_MAX", 1_000_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root_string = new_root_string(&dir.path().join("root"));
    let root = open_root(&root_string);
    let store = root.store("scale").unwrap();
    eprintln!(
        "{:>9} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8} | {:>8} {:>6} | {:>8} {:>6} | {:>8} {:>6} | {:>8} {:>6} | {:>8} {:>6} | {:>7}",
        "objects",
        "fill µs",
        "put µs",
        "put B",
        "label µs",
        "get µs",
        "warm l.",
        "warm g.",
        "verify s",
        "µs/obj",
        "dry gc s",
        "µs/obj",
        "gc s",
        "µs/obj",
        "export s",
        "µs/obj",
        "sync s",
        "µs/obj",
        "B/obj"
    );
    let mut filled = 0;
    let mut decade = 10_000;
    runtime.block_on(async {
        while decade <= max {
            let started = Instant::now();
            fill(&store, filled, decade).await;
            let fill_each = micros_each(started.elapsed(), decade - filled);
            filled = decade;

            // One writer at a time, beside what is there.
            let (started, written) = (Instant::now(), bytes_written());
            for i in filled..filled + MORE_WRITES {
                store.store_at_label(&label(i), content(i)).await.unwrap();
            }
            let put_each = micros_each(started.elapsed(), MORE_WRITES);
            let put_bytes = match bench_engine() {
                BenchEngine::Log => "mapped".to_owned(),
                BenchEngine::Shared => "remote".to_owned(),
                BenchEngine::Local => ((bytes_written() - written) / MORE_WRITES as u64).to_string(),
            };
            filled += MORE_WRITES;

            let probes: Vec<usize> = scattered(filled, PROBES).collect();
            let mut refs: Vec<ContentRef> = Vec::with_capacity(probes.len());
            let mut slices = Vec::new();
            for slice in probes.chunks(PROBES / SLICES) {
                let started = Instant::now();
                for &i in slice {
                    refs.push(store.get_by_label(&label(i)).await.unwrap().unwrap());
                }
                slices.push(micros_each(started.elapsed(), slice.len()));
            }
            let label_each = median(slices);
            let mut slices = Vec::new();
            for (refs, probes) in refs.chunks(PROBES / SLICES).zip(probes.chunks(PROBES / SLICES)) {
                let started = Instant::now();
                for (content_ref, &i) in refs.iter().zip(probes) {
                    assert_eq!(store.get(content_ref).await.unwrap(), content(i));
                }
                slices.push(micros_each(started.elapsed(), refs.len()));
            }
            let get_each = median(slices);

            // Again, now that the read cache holds them (nothing changed).
            let started = Instant::now();
            for &i in &probes {
                assert!(store.get_by_label(&label(i)).await.unwrap().is_some());
            }
            let warm_label_each = micros_each(started.elapsed(), probes.len());
            let started = Instant::now();
            for content_ref in &refs {
                assert_eq!(store.get(content_ref).await.unwrap().len(), 1024);
            }
            let warm_get_each = micros_each(started.elapsed(), refs.len());

            let started = Instant::now();
            let report = store.verify(Arc::new(())).await.unwrap();
            let verify = started.elapsed();
            assert!(report.is_clean());
            assert_eq!(report.objects_checked as usize, filled);

            let sweep = |dry_run| GcOptions {
                grace: Duration::ZERO,
                dry_run,
            };
            let started = Instant::now();
            let report = store.collect_garbage(sweep(true), Arc::new(())).await.unwrap();
            let dry_gc = started.elapsed();
            assert_eq!(report.kept_labelled as usize, filled);
            let started = Instant::now();
            let report = store.collect_garbage(sweep(false), Arc::new(())).await.unwrap();
            let gc = started.elapsed();
            assert_eq!(report.objects_removed, 0);

            let started = Instant::now();
            store
                .export_package(None, std::io::sink(), Arc::new(()))
                .await
                .unwrap();
            let export = started.elapsed();

            let per_object = match bench_engine() {
                BenchEngine::Shared => "remote".to_owned(),
                _ => (disk_bytes(&dir.path().join("root")) / filled as u64).to_string(),
            };

            // A first sync of the whole store into an empty root of the
            // same kind: every label moved, every object copied.
            let target_dir = dir.path().join(format!("sync-{filled}"));
            let target = open_root(&new_root_string(&target_dir));
            let started = Instant::now();
            let report = root
                .sync_store_to(&target, "scale", &SyncOptions::default(), Arc::new(()))
                .await
                .unwrap();
            let sync = started.elapsed();
            assert_eq!(report.objects_copied as usize, filled);
            assert_eq!(report.labels_moved as usize, filled);
            drop(target);
            std::fs::remove_dir_all(&target_dir).unwrap();

            let each = |took: Duration| micros_each(took, filled);
            eprintln!(
                "{:>9} | {:>8.1} {:>8.1} {:>8} | {:>8.2} {:>8.2} {:>8.2} {:>8.2} | {:>8.2} {:>6.2} | {:>8.2} {:>6.2} | {:>8.2} {:>6.2} | {:>8.2} {:>6.2} | {:>8.2} {:>6.2} | {:>7}",
                filled,
                fill_each,
                put_each,
                put_bytes,
                label_each,
                get_each,
                warm_label_each,
                warm_get_each,
                verify.as_secs_f64(),
                each(verify),
                dry_gc.as_secs_f64(),
                each(dry_gc),
                gc.as_secs_f64(),
                each(gc),
                export.as_secs_f64(),
                each(export),
                sync.as_secs_f64(),
                each(sync),
                per_object
            );
            decade *= 10;
        }
    });
    reopen(&runtime, &root_string, root, store, filled);
    runtime.block_on(many_stores());
    runtime.block_on(large_transactions());
}

/// Lets go of the whole store, opens its root again and reads one label:
/// what an operator's first command after a restart waits for (a log
/// root replays its log here).
fn reopen(
    runtime: &tokio::runtime::Runtime,
    root_string: &str,
    root: StoreRoot,
    store: ContentStore,
    filled: usize,
) {
    drop(store);
    drop(root);
    let started = Instant::now();
    let root = open_root(root_string);
    let store = root.store("scale").unwrap();
    let found = runtime.block_on(store.get_by_label(&label(filled - 1)));
    assert!(found.unwrap().is_some());
    eprintln!(
        "{filled} objects: opened again and read one label in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
}

/// One root of many small stores (one per actor, say), every store
/// verified and collected as `theater-store verify` and `gc` do: work
/// that reads the whole root once per store shows here as a per-object
/// cost far above the single store's.
async fn many_stores() {
    let dir = tempfile::tempdir().unwrap();
    let root = open_root(&new_root_string(&dir.path().join("root")));
    let per_store = MANY_STORES_OBJECTS / MANY_STORES;
    with_writers(|writer| {
        let root = root.clone();
        async move {
            for s in (writer..MANY_STORES).step_by(WRITERS) {
                let store = root.store(&format!("actor-{s:04}")).unwrap();
                for i in 0..per_store {
                    let n = s * per_store + i;
                    store.store_at_label(&label(n), content(n)).await.unwrap();
                }
            }
        }
    })
    .await;
    let stores: Vec<ContentStore> = root
        .stores()
        .await
        .unwrap()
        .iter()
        .map(|summary| root.store(&summary.id).unwrap())
        .collect();
    assert_eq!(stores.len(), MANY_STORES);

    let started = Instant::now();
    let index = root.check_index().await.unwrap();
    for store in &stores {
        assert!(store.verify_with(&index, ()).await.unwrap().is_clean());
    }
    let verify = started.elapsed();
    let started = Instant::now();
    for store in &stores {
        let sweep = GcOptions {
            grace: Duration::ZERO,
            dry_run: false,
        };
        let report = store.collect_garbage(sweep, Arc::new(())).await.unwrap();
        assert_eq!(report.objects_removed, 0);
    }
    let gc = started.elapsed();
    eprintln!(
        "{MANY_STORES} stores of {per_store} objects: verify every store {:.2} s ({:.2} µs/object), gc every store {:.2} s ({:.2} µs/object)",
        verify.as_secs_f64(),
        micros_each(verify, MANY_STORES_OBJECTS),
        gc.as_secs_f64(),
        micros_each(gc, MANY_STORES_OBJECTS),
    );
}

/// Many labels set in one transaction (`set_labels`, as a sync or a
/// restore writes them), then all removed in another
/// (`compare_and_swap_labels`): work per label that grows with the
/// batch, rather than with the store, shows here as a per-label cost
/// that grows from the small batch to the large one.
async fn large_transactions() {
    for batch in BATCHES {
        let dir = tempfile::tempdir().unwrap();
        let root = open_root(&new_root_string(&dir.path().join("root")));
        let store = root.store("batches").unwrap();
        let target = store.store(content(0)).await.unwrap();
        let labels: Vec<(String, Option<ContentRef>)> = (0..batch)
            .map(|i| (label(i), Some(target.clone())))
            .collect();
        let started = Instant::now();
        store.set_labels(&labels).await.unwrap();
        let set = started.elapsed();
        let moves: Vec<_> = labels
            .into_iter()
            .map(|(label, target)| (label, target, None))
            .collect();
        let started = Instant::now();
        assert!(store.compare_and_swap_labels(&moves).await.unwrap());
        let removed = started.elapsed();
        assert!(store.list_labels().await.unwrap().is_empty());
        eprintln!(
            "{batch} labels in one transaction: set {:.2} µs a label, removed {:.2} µs a label",
            micros_each(set, batch),
            micros_each(removed, batch),
        );
    }
}
