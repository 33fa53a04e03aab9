//! `store` and `get` of 1 KiB objects: Theater's `ContentStore` (SHA-1,
//! direct writes, no verification) next to ours in buffered mode and the
//! file-system floor (BLAKE3, write a temporary file, rename it), in the
//! same run.

use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

fn distinct(counter: &AtomicU64) -> Vec<u8> {
    let mut bytes = vec![0xa5u8; 1024];
    bytes[..8].copy_from_slice(&counter.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    bytes
}

fn small_objects(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: set before any other thread reads the environment.
    unsafe { std::env::set_var("THEATER_HOME", dir.path().join("theater")) };
    let counter = AtomicU64::new(0);
    let theirs = theater::store::ContentStore::from_id("bench");
    let ours = theater_store::StoreRoot::new(dir.path().join("ours"))
        .store("bench")
        .unwrap();

    let mut group = c.benchmark_group("small_1KiB_vs_theater");
    group.throughput(Throughput::Elements(1));
    group.bench_function("theater/store", |b| {
        b.to_async(&runtime).iter_batched(
            || distinct(&counter),
            |c| theirs.store(c),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("ours/store", |b| {
        b.to_async(&runtime).iter_batched(
            || distinct(&counter),
            |c| ours.store(c),
            BatchSize::SmallInput,
        )
    });
    let floor = dir.path().join("floor");
    std::fs::create_dir_all(&floor).unwrap();
    group.bench_function("floor/write_rename", |b| {
        b.iter_batched(
            || distinct(&counter),
            |c| {
                let name = blake3::hash(&c).to_hex();
                let tmp = floor.join(format!("{name}.tmp"));
                std::fs::write(&tmp, &c).unwrap();
                std::fs::rename(&tmp, floor.join(name.as_str())).unwrap();
            },
            BatchSize::SmallInput,
        )
    });
    let their_ref = runtime.block_on(theirs.store(distinct(&counter)));
    let our_ref = runtime.block_on(ours.store(distinct(&counter))).unwrap();
    group.bench_function("theater/get", |b| {
        b.to_async(&runtime).iter(|| theirs.get(&their_ref))
    });
    group.bench_function("ours/get_verified", |b| {
        b.to_async(&runtime).iter(|| ours.get(&our_ref))
    });
    group.finish();
}

criterion_group!(benches, small_objects);
criterion_main!(benches);
