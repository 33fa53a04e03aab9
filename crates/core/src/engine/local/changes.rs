//! A count of the index's commits, shared by every process that has the
//! root open, so that a process can tell in a nanosecond whether anything
//! changed since it last read, and answer repeated reads from memory.
//!
//! The count lives in a small file beside the index (`index.changes`),
//! mapped into each process's memory like SQLite's own `-shm` file, and
//! holds two words: commits *started* and commits *finished*. A writer
//! takes a ticket (`started + 1`) just before `COMMIT`, while it holds the
//! index's write lock, and raises `finished` to its ticket just after. So:
//!
//! - while the two words are equal, no commit is in flight, and none has
//!   happened since they last had that value;
//! - a writer killed between the two leaves `started` ahead until the next
//!   commit's ticket overtakes it: until then no read is answered from
//!   memory, which is slower and still correct.
//!
//! Two more words record where the log ended after the last commit that
//! wrote to it, and where it ended when a checkpoint last took all of it
//! into the database file, so that a root opened with its log missing can
//! tell whether commits went with it ([`ChangeCounter::unfolded`]).
//!
//! A seventh word counts the threads waiting for the count to move
//! ([`ChangeCounter::wait_past`]), so that a commit wakes them (a futex on
//! the mapped word, on Linux) only while someone waits.
//!
//! Like SQLite's write-ahead log, this needs every process on one machine:
//! a root on a network file system shared between machines is not
//! supported by either.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use memmap2::MmapMut;

/// The file's length: one cache line of eight words (see the module doc).
const FILE_BYTES: u64 = 64;

/// A log end (salt, frames) as one ordered word: a later generation (its
/// first salt is one more) or more frames compare greater.
fn pack((salt, frames): (u32, u64)) -> u64 {
    (u64::from(salt) << 32) | frames.min(u64::from(u32::MAX))
}

/// The root's shared commit count.
#[derive(Debug)]
pub(crate) struct ChangeCounter {
    map: MmapMut,
}

/// A commit's place in the count, from [`ChangeCounter::start`].
#[must_use = "a started commit must be finished, or reads stop being answered from memory"]
pub(crate) struct Ticket(u64);

impl ChangeCounter {
    /// Opens (creating if needed) the count at `path`.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // Only ever grown, never shrunk, so a mapping stays valid.
        if file.metadata()?.len() < FILE_BYTES {
            file.set_len(FILE_BYTES)?;
        }
        // SAFETY: the file is ours (a root's files are only written by this
        // crate), at least FILE_BYTES long and never truncated, so the
        // mapping stays backed for its whole life. Other processes change
        // the mapped words concurrently, which is why they are only ever
        // accessed as atomics (see `word`), never as plain memory.
        let map = unsafe { MmapMut::map_mut(&file)? };
        Ok(Self { map })
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        assert!((index + 1) * 8 <= self.map.len());
        // SAFETY: in bounds (checked above); a mapping starts on a page
        // boundary, so the word is 8-byte aligned; the reference lives no
        // longer than the mapping; and every access through it is atomic,
        // which is sound for memory shared with other processes.
        unsafe { &*self.map.as_ptr().cast::<AtomicU64>().add(index) }
    }

    fn started(&self) -> &AtomicU64 {
        self.word(0)
    }

    fn finished(&self) -> &AtomicU64 {
        self.word(1)
    }

    /// Threads waiting in [`ChangeCounter::wait_past`], in any process.
    fn waiters(&self) -> &AtomicU64 {
        self.word(6)
    }

    /// The half of `finished` that moves with every commit: a futex is a
    /// 32-bit word.
    #[cfg(target_os = "linux")]
    fn finished_low_half(&self) -> *const u32 {
        let low = if cfg!(target_endian = "little") { 0 } else { 4 };
        // SAFETY: word 1 is in bounds (the map is FILE_BYTES long) and
        // 8-byte aligned, so its low half is in bounds and 4-byte aligned.
        unsafe { self.map.as_ptr().add(8 + low).cast::<u32>() }
    }

    /// Blocks until the count of finished commits is no longer `seen`, or
    /// `timeout` has passed. A commit by any process wakes it at once on
    /// Linux; elsewhere it wakes after at most a millisecond and the
    /// caller reads again.
    pub(crate) fn wait_past(&self, seen: u64, timeout: Duration) {
        self.waiters().fetch_add(1, Ordering::SeqCst);
        // Counted as waiting before this read: a commit finishing after it
        // sees the waiter and wakes it, and one before it is seen here.
        if self.finished_count() == seen {
            #[cfg(target_os = "linux")]
            // SAFETY: the word lives as long as `self.map`, which outlives
            // the call; the kernel only reads it and compares.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.finished_low_half(),
                    libc::FUTEX_WAIT,
                    seen as u32,
                    &libc::timespec {
                        tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
                        tv_nsec: timeout.subsec_nanos().into(),
                    },
                );
            }
            #[cfg(not(target_os = "linux"))]
            std::thread::sleep(timeout.min(Duration::from_millis(1)));
        }
        // Saturating: a process opening the root alone may have reset the
        // count under a thread of a root handle being closed.
        let _ = self
            .waiters()
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |count| {
                count.checked_sub(1)
            });
    }

    /// Forgets waiters counted by processes that died waiting. Only for a
    /// process holding the root alone: no other has a thread waiting.
    pub(crate) fn forget_waiters(&self) {
        self.waiters().store(0, Ordering::SeqCst);
    }

    /// Records that a checkpoint took the whole log, as it ended at `end`
    /// (read with [`ChangeCounter::acknowledged_log_end`] before the
    /// checkpoint began), into the database file.
    pub(crate) fn mark_folded(&self, end: Option<(u32, u64)>) {
        if let Some(end) = end {
            self.folded_log_end().fetch_max(pack(end), Ordering::SeqCst);
        }
    }

    /// Whether commits that wrote to the log since the last full
    /// checkpoint are recorded: while the log holds them they are safe; if
    /// the log is gone, they are lost. A commit that wrote nothing (the
    /// log hook is not called for it) counts for nothing.
    pub(crate) fn unfolded(&self) -> bool {
        let acknowledged = self.log_end().load(Ordering::SeqCst);
        acknowledged != 0 && acknowledged > self.folded_log_end().load(Ordering::SeqCst)
    }

    fn folded_log_end(&self) -> &AtomicU64 {
        self.word(5)
    }

    /// Records where the log ended after a commit: its generation's first
    /// salt and its frame count. Commits of other processes may record out
    /// of order; an older end is only a weaker check.
    pub(crate) fn record_log_end(&self, salt: u32, frames: u64) {
        self.log_end().store(pack((salt, frames)), Ordering::SeqCst);
    }

    /// Forgets the recorded log ends (the log was emptied).
    pub(crate) fn forget_log_end(&self) {
        self.log_end().store(0, Ordering::SeqCst);
        self.folded_log_end().store(0, Ordering::SeqCst);
    }

    /// The log end last recorded, if any.
    pub(crate) fn acknowledged_log_end(&self) -> Option<(u32, u64)> {
        let word = self.log_end().load(Ordering::SeqCst);
        (word != 0).then_some(((word >> 32) as u32, word & u64::from(u32::MAX)))
    }

    fn log_end(&self) -> &AtomicU64 {
        self.word(4)
    }

    /// Announces a commit. Call just before `COMMIT`, holding the write lock.
    pub(crate) fn start(&self) -> Ticket {
        Ticket(self.started().fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Records that the commit announced by `ticket` is over, whether it
    /// succeeded or not.
    pub(crate) fn finish(&self, ticket: Ticket) {
        self.finished().fetch_max(ticket.0, Ordering::SeqCst);
        #[cfg(target_os = "linux")]
        if self.waiters().load(Ordering::SeqCst) > 0 {
            // SAFETY: as in `wait_past`; waking needs no value.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.finished_low_half(),
                    libc::FUTEX_WAKE,
                    i32::MAX,
                );
            }
        }
    }

    /// Commits finished so far, in any process: it moves with every commit.
    pub(crate) fn finished_count(&self) -> u64 {
        self.finished().load(Ordering::SeqCst)
    }

    /// The count now, if no commit is in flight. Reads made after taking
    /// it may be remembered under it; they stay current for as long as
    /// `settled` keeps returning the same value.
    pub(crate) fn settled(&self) -> Option<u64> {
        let finished = self.finished().load(Ordering::SeqCst);
        let started = self.started().load(Ordering::SeqCst);
        (started == finished).then_some(finished)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::ChangeCounter;

    /// Two mappings of one count, as two processes have it (the directory
    /// keeps the file alive).
    fn two_mappings() -> (tempfile::TempDir, ChangeCounter, ChangeCounter) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.changes");
        let one = ChangeCounter::open(&path).unwrap();
        let other = ChangeCounter::open(&path).unwrap();
        (dir, one, other)
    }

    /// A watching process sleeps on the count; another process's commit
    /// must wake it, not the end of its wait.
    #[test]
    fn a_commit_through_another_mapping_wakes_a_thread_waiting_on_the_count() {
        let (_dir, watching, writing) = two_mappings();
        let long = Duration::from_secs(60);
        // Already moved: no wait at all.
        let seen = watching.finished_count();
        let ticket = writing.start();
        writing.finish(ticket);
        let started = Instant::now();
        watching.wait_past(seen, long);
        assert!(started.elapsed() < long / 2);

        for _ in 0..3 {
            let seen = watching.finished_count();
            let started = Instant::now();
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    std::thread::sleep(Duration::from_millis(20));
                    let ticket = writing.start();
                    writing.finish(ticket);
                });
                while watching.finished_count() == seen {
                    watching.wait_past(seen, long);
                }
            });
            let waited = started.elapsed();
            if cfg!(target_os = "linux") {
                assert!(waited < long / 2, "woken by the timeout after {waited:?}");
            }
        }
        // Every waiter left: commits stop waking anyone.
        assert_eq!(
            watching.waiters().load(std::sync::atomic::Ordering::SeqCst),
            0
        );
    }

    #[test]
    fn a_commit_in_flight_or_abandoned_unsettles_every_process_until_a_later_one_finishes() {
        let (_dir, one, other) = two_mappings();
        let before = one.settled().unwrap();
        let ticket = other.start();
        assert_eq!(one.settled(), None, "a commit is in flight");
        other.finish(ticket);
        let after = one.settled().unwrap();
        assert_ne!(after, before);
        // A writer that died mid-commit leaves the count unsettled...
        let _abandoned = one.start();
        assert_eq!(other.settled(), None);
        // ...until the next commit finishes.
        let next = other.start();
        other.finish(next);
        assert!(one.settled().is_some_and(|now| now > after));
    }
}
