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
//! Like SQLite's write-ahead log, this needs every process on one machine:
//! a root on a network file system shared between machines is not
//! supported by either.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;

/// The file's length: one cache line, of which two words are used.
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
    use super::ChangeCounter;

    #[test]
    fn a_commit_in_flight_or_abandoned_unsettles_every_process_until_a_later_one_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.changes");
        let (one, other) = (
            ChangeCounter::open(&path).unwrap(),
            ChangeCounter::open(&path).unwrap(),
        );
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
