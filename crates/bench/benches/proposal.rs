//! Issue 32's proposal, measured beside the store: what a 1 KiB labelled
//! put costs in an engine that appends each put as one record to a log
//! and keeps its index in memory, against our SQLite-indexed
//! `store_at_label`, from one writer and from eight, with the write and
//! rename of a file beside them.
//!
//! `AppendLog` is only the write path of such an engine (no recovery, no
//! gc, no reads from disk): the floor it could reach on this disk, with
//! the same durability as the store's buffered mode (acknowledged once
//! the bytes are in the OS page cache, so they survive the process being
//! killed). Eight writers share appends: whoever finds no append in
//! progress writes everything queued in one system call, and the rest
//! wait for it (group commit).
//!
//! Run with `cargo bench -p theater-store-bench --bench proposal`; the
//! figures are in docs/PERFORMANCE.md.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use theater_store::{Durability, StoreRoot};
use theater_store_bench::distinct;
use tokio::runtime::Runtime;

const KIB: usize = 1 << 10;
const WRITERS: u64 = 8;
/// How much of the log file is written before it is reused (see `put`).
const RING_BYTES: u64 = 256 << 20;

/// The write path of an append-only engine: a log file and an in-memory
/// index of objects (offset, length) and labels.
struct AppendLog {
    /// Written outside the lock (positioned writes need no shared offset).
    file: File,
    state: Mutex<LogState>,
    appended: Condvar,
}

struct LogState {
    /// Records queued for the next append, and where the log will end
    /// once they are written.
    queued: Vec<u8>,
    queued_end: u64,
    /// Where the log ends on disk.
    written_end: u64,
    appending: bool,
    objects: HashMap<[u8; 32], (u64, u32)>,
    labels: HashMap<String, [u8; 32]>,
}

impl AppendLog {
    fn create(path: &std::path::Path) -> Self {
        let file = File::create(path).unwrap();
        Self {
            file,
            state: Mutex::new(LogState {
                queued: Vec::new(),
                queued_end: 0,
                written_end: 0,
                appending: false,
                objects: HashMap::new(),
                labels: HashMap::new(),
            }),
            appended: Condvar::new(),
        }
    }

    /// Puts `content` under `label`, returning once its record is written:
    /// hashed outside the lock, queued, then written by this caller or by
    /// the one already appending.
    fn put(&self, label: &str, content: &[u8]) -> [u8; 32] {
        let digest = *blake3::hash(content).as_bytes();
        let mut state = self.state.lock().unwrap();
        // Record: length, digest, label length, label, content.
        let length = 4 + 32 + 2 + label.len() + content.len();
        state
            .queued
            .extend_from_slice(&(length as u32).to_le_bytes());
        state.queued.extend_from_slice(&digest);
        state
            .queued
            .extend_from_slice(&(label.len() as u16).to_le_bytes());
        state.queued.extend_from_slice(label.as_bytes());
        state.queued.extend_from_slice(content);
        let start = state.queued_end;
        state.queued_end += length as u64;
        let mine = state.queued_end;
        state.objects.insert(digest, (start, content.len() as u32));
        state.labels.insert(label.to_owned(), digest);
        while state.written_end < mine {
            if state.appending {
                state = self.appended.wait(state).unwrap();
                continue;
            }
            // Lead: write everything queued so far in one call.
            state.appending = true;
            let batch = std::mem::take(&mut state.queued);
            let end = state.queued_end;
            // The log's space is reused past RING_BYTES, as a real engine's
            // compaction would reclaim it: otherwise a run leaves gigabytes
            // of dirty pages that slow whatever runs next.
            let mut at = state.written_end % RING_BYTES;
            if at + batch.len() as u64 > RING_BYTES {
                at = 0;
            }
            drop(state);
            self.file.write_all_at(&batch, at).unwrap();
            state = self.state.lock().unwrap();
            state.written_end = end;
            state.appending = false;
            self.appended.notify_all();
        }
        digest
    }
}

/// `writers` threads putting `puts` labelled 1 KiB objects between them.
fn log_puts(log: &Arc<AppendLog>, counter: &Arc<AtomicU64>, writers: u64, puts: u64) -> Duration {
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|writer| {
            let (log, counter) = (Arc::clone(log), Arc::clone(counter));
            std::thread::spawn(move || {
                let label = format!("bench:feed:{writer}");
                for _ in (writer..puts).step_by(writers as usize) {
                    log.put(&label, &distinct(&counter, KIB));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    started.elapsed()
}

fn proposal(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let mut group = c.benchmark_group("proposal_1KiB");
    group.throughput(Throughput::Elements(1));

    // The floor issue 32 measures against: BLAKE3, write a temporary
    // file, rename it into place.
    let floor = dir.path().join("floor");
    std::fs::create_dir_all(&floor).unwrap();
    group.bench_function("write_rename/1", |b| {
        b.iter(|| {
            let content = distinct(&counter, KIB);
            let name = blake3::hash(&content).to_hex();
            let staged = floor.join(format!("{name}.tmp"));
            std::fs::write(&staged, &content).unwrap();
            std::fs::rename(&staged, floor.join(name.as_str())).unwrap();
        })
    });

    let store = StoreRoot::with_durability(dir.path().join("store"), Durability::Buffered)
        .store("bench")
        .unwrap();
    for writers in [1, WRITERS] {
        group.bench_function(format!("store_at_label/{writers}"), |b| {
            b.to_async(&runtime).iter_custom(|puts| {
                let (store, counter) = (store.clone(), Arc::clone(&counter));
                async move {
                    let started = Instant::now();
                    let tasks: Vec<_> = (0..writers)
                        .map(|writer| {
                            let (store, counter) = (store.clone(), Arc::clone(&counter));
                            tokio::spawn(async move {
                                let label = format!("bench:feed:{writer}");
                                for _ in (writer..puts).step_by(writers as usize) {
                                    let content = distinct(&counter, KIB);
                                    store.store_at_label(&label, content).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                    started.elapsed()
                }
            })
        });
    }

    let log = Arc::new(AppendLog::create(&dir.path().join("append.log")));
    for writers in [1, WRITERS] {
        group.bench_function(format!("append_log/{writers}"), |b| {
            b.iter_custom(|puts| log_puts(&log, &counter, writers, puts))
        });
    }
    group.finish();
}

criterion_group!(benches, proposal);
criterion_main!(benches);
