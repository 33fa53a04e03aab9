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
//! A third word counts the commits a checkpoint has taken from the log
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

/// Marks a count file whose third word (commits taken into the database
/// file) is kept up to date.
const TRACKING_FOLDED: u64 = 0x7468_6561_7465_7201;

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

    /// Commits known to be in the database file itself (taken in from the
    /// log by a checkpoint); see [`ChangeCounter::unfolded`].
    fn folded(&self) -> &AtomicU64 {
        self.word(2)
    }

    /// [`TRACKING_FOLDED`] once a build that keeps `folded` opened the root.
    fn tracking(&self) -> &AtomicU64 {
        self.word(3)
    }

    /// Commits finished so far.
    pub(crate) fn finished_now(&self) -> u64 {
        self.finished().load(Ordering::SeqCst)
    }

    /// Records that a checkpoint took every commit up to `upto` (read
    /// with [`ChangeCounter::finished_now`] before it started) into the
    /// database file.
    pub(crate) fn mark_folded(&self, upto: u64) {
        self.folded().fetch_max(upto, Ordering::SeqCst);
    }

    /// Commits finished but not known to have reached the database file:
    /// while the log holds them, they are safe; if the log is gone, they
    /// are lost. A root last used by a build that did not keep the count
    /// starts being tracked now (0).
    pub(crate) fn unfolded(&self) -> u64 {
        let finished = self.finished_now();
        if self.tracking().load(Ordering::SeqCst) != TRACKING_FOLDED {
            self.folded().store(finished, Ordering::SeqCst);
            self.tracking().store(TRACKING_FOLDED, Ordering::SeqCst);
            return 0;
        }
        finished.saturating_sub(self.folded().load(Ordering::SeqCst))
    }

    /// Records where the log ended after a commit: its generation's first
    /// salt and its frame count. Commits of other processes may record out
    /// of order; an older end is only a weaker check.
    pub(crate) fn record_log_end(&self, salt: u32, frames: u64) {
        let frames = frames.min(u64::from(u32::MAX));
        self.log_end()
            .store((u64::from(salt) << 32) | frames, Ordering::SeqCst);
    }

    /// Forgets the recorded log end (the log was emptied).
    pub(crate) fn forget_log_end(&self) {
        self.log_end().store(0, Ordering::SeqCst);
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
