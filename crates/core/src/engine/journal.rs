//! The log engine's file (`log:DIR`): a root kept as one append-only log
//! beside an index held in memory (the memory engine's state, see
//! `mem.rs`). Each change is written as records appended to the log, and
//! opening the root replays them.
//!
//! A record is a kind byte, the payload's length (u64, little-endian), a
//! CRC-32 of the payload and the payload:
//! - a **blob**: the bytes of one object, read back by position;
//! - a **commit**: the steps of one change ([`Step`]), referring to the
//!   blobs written before it.
//!
//! A change's commit goes to the file after its blobs, so a change is in
//! the log whole or not at all: replay stops at the first commit that is
//! short or fails its checksum (a write cut off by a crash), moves the
//! bytes from there on aside into `damaged/` and cuts the log there.
//! Blobs are skipped, not checked, on replay: an object's bytes check
//! themselves by their digest when read or verified, so a damaged object
//! costs that object alone.
//! Compaction writes the live state as a new log and renames it over the
//! old one.
//!
//! Records are copied into the file through a shared mapping of its tail
//! rather than written with a system call each. A copy into the mapping
//! is a copy into the OS's page cache, so once copied a change is as safe
//! from a crash of this process as once written, at half the cost (1.1 µs
//! against 2.2 µs for a 1 KiB record). The space is allocated ahead
//! (`posix_fallocate`, up to 16 MiB at a time), so that a full disk is an
//! error when the tail grows rather than a fault when a page is touched.
//! The file is cut back to its last record when the root is closed; the
//! zeros a crash leaves past it are cut when it is opened. Nothing else
//! may shorten the file while the root is open (the root's lock keeps
//! other theater-store processes out): touching a mapped page past the
//! file's end would stop this process.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions};
use smol_str::SmolStr;

use super::ChainHead;
use crate::error::{Result, StoreError};
use crate::names::Digest;

/// How a log root string starts.
pub(crate) const SCHEME: &str = "log:";

/// The log file's name in the root directory, and the first bytes in it.
const LOG_FILE: &str = "log";
const MAGIC: &[u8; 8] = b"TSLOG001";
/// The lock held by the process that has the root open.
const LOCK_FILE: &str = "lock";
/// Where a compaction writes the new log before renaming it into place.
const COMPACTING_FILE: &str = "log.compacting";

const BLOB: u8 = 1;
const COMMIT: u8 = 2;
/// Kind, length and checksum.
const HEADER: u64 = 13;

/// Whether `dir` holds a log root (its log file begins as one does).
pub(crate) fn is_log_root(dir: &Path) -> bool {
    let mut magic = [0; 8];
    File::open(dir.join(LOG_FILE))
        .is_ok_and(|file| file.read_exact_at(&mut magic, 0).is_ok() && &magic == MAGIC)
}

/// One step of a change, as written to the log and replayed: each sets
/// one piece of the state to the value the change left it with. Written
/// from borrowed state (nothing is copied to write a change) and read back
/// borrowed from the record (replaying copies only what the state keeps).
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Step<'a> {
    /// The store was registered.
    MakeStore {
        store: Cow<'a, str>,
        created_at: i64,
    },
    /// The store was forgotten, with everything in it.
    DropStore { store: Cow<'a, str> },
    /// A label's row (`None`: removed).
    Label {
        store: Cow<'a, str>,
        label: Cow<'a, str>,
        row: Option<Cow<'a, ChainHead>>,
    },
    /// An object (`None`: removed).
    Object {
        store: Cow<'a, str>,
        digest: Digest,
        object: Option<LoggedObject<'a>>,
    },
    /// Whether an object awaits a scan for links.
    Unscanned {
        store: Cow<'a, str>,
        digest: Digest,
        unscanned: bool,
    },
    /// An entry appended to the store's change log.
    Logged {
        store: Cow<'a, str>,
        entry: Cow<'a, ChangeEntry>,
    },
    /// The store's change log trimmed through this sequence.
    Trimmed { store: Cow<'a, str>, through: u64 },
}

/// A change log entry, as the log records it and as a memory or log
/// root keeps it: the label's name as its row holds it (inline when
/// short, else shared), the actor's shared with the transaction that
/// acted.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct ChangeEntry {
    pub(super) seq: u64,
    pub(super) label: SmolStr,
    pub(super) old: Option<Digest>,
    pub(super) new: Option<Digest>,
    pub(super) at: i64,
    pub(super) actor: Option<Arc<str>>,
}

/// An object as the log records it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct LoggedObject<'a> {
    pub(super) bytes: BytesAt,
    pub(super) size: u64,
    pub(super) stored_at: i64,
    pub(super) links: Option<Cow<'a, [u8]>>,
}

/// Where a logged object's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BytesAt {
    /// The blob at this offset of the log.
    Blob(u64),
    /// A file of their own beside the log (large content, see
    /// `Options::log_file_threshold`).
    File,
}

/// How [`BytesAt::File`] is written where a blob's offset would be: no
/// record can start at the last byte a file may have.
const IN_FILE: u64 = u64::MAX;

/// Where one object's bytes are in a log file, to be read without the
/// root's lock held.
#[derive(Clone, Debug)]
pub(super) struct Slice {
    file: Arc<File>,
    path: Arc<Path>,
    offset: u64,
    len: u64,
}

impl Slice {
    /// The log file, for messages.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes, read from the log.
    pub(super) fn read(&self) -> std::io::Result<Vec<u8>> {
        let mut bytes = vec![0; usize::try_from(self.len).map_err(std::io::Error::other)?];
        self.file.read_exact_at(&mut bytes, self.offset)?;
        Ok(bytes)
    }
}

/// An open log: the file, where the next record goes, and the lock that
/// keeps other processes out.
#[derive(Debug)]
pub(super) struct Journal {
    dir: PathBuf,
    /// The log file, named in messages.
    path: Arc<Path>,
    file: Arc<File>,
    /// Where the records end: the next one goes here.
    end: u64,
    /// The file's length, records and the space allocated past them.
    allocated: u64,
    /// The mapped part of the file that records are copied into.
    tail: Option<Tail>,
    /// The last batch's buffers, emptied, for the next one to fill.
    spare: Option<(Vec<u8>, Vec<u8>)>,
    /// Set when a failed write could not be undone: the file's tail is
    /// unknown, so nothing more is written until the root is reopened.
    broken: bool,
    _lock: File,
}

impl Journal {
    /// Opens (creating if needed) the log in `dir`, replaying every intact
    /// change into `replay` in order. Blocking.
    pub(super) fn open(dir: &Path, mut replay: impl FnMut(Vec<Step<'_>>)) -> Result<Journal> {
        let io = |action: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| crate::error::io_error(&"root", action, &path, source)
        };
        if dir.join("index.sqlite").exists() {
            return Err(StoreError::InvalidRoot {
                root: format!("{SCHEME}{}", dir.display()),
                reason: format!(
                    "{} holds a local root (index.sqlite): open it without {SCHEME}",
                    dir.display()
                ),
            });
        }
        std::fs::create_dir_all(dir).map_err(io("creating the log root", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("opening the lock of", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::RootInUse {
                    root: format!("{SCHEME}{}", dir.display()),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(crate::error::io_error(
                    &"root", "locking", &lock_path, source,
                ));
            }
        }
        // A compaction cut short left its unfinished log: the old one is
        // still whole.
        let _ = std::fs::remove_file(dir.join(COMPACTING_FILE));
        let path = dir.join(LOG_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("opening", &path))?;
        let mut len = file
            .metadata()
            .map_err(io("reading the size of", &path))?
            .len();
        if len < MAGIC.len() as u64 {
            // New (or cut off before its first byte was kept).
            file.set_len(0).map_err(io("starting", &path))?;
            file.write_all_at(MAGIC, 0).map_err(io("starting", &path))?;
            file.sync_all().map_err(io("starting", &path))?;
            sync_dir(dir).map_err(io("starting", &path))?;
            len = MAGIC.len() as u64;
        } else {
            let mut magic = [0; 8];
            file.read_exact_at(&mut magic, 0)
                .map_err(io("reading", &path))?;
            if &magic != MAGIC {
                return Err(StoreError::InvalidRoot {
                    root: format!("{SCHEME}{}", dir.display()),
                    reason: format!("{} is not a theater-store log", path.display()),
                });
            }
        }
        let end = replay_file(&file, &path, len, &mut replay)?;
        if end < len {
            // Past the records: the space allocated ahead of them (zeros),
            // and before it, when a crash cut a change short, its start.
            let written = last_written(&file, end, len)
                .map_err(io("reading the tail of", &path))?
                .map(|last| last + 1);
            if let Some(written) = written {
                keep_damaged_tail(dir, &file, end, written)
                    .map_err(io("moving aside the tail of", &path))?;
            }
            file.set_len(end)
                .map_err(io("cutting off the damaged tail of", &path))?;
            file.sync_all()
                .map_err(io("cutting off the damaged tail of", &path))?;
            if let Some(written) = written {
                tracing::warn!(
                    log = %path.display(),
                    at = end,
                    bytes = written - end,
                    "the log ended in a damaged or unfinished record: the tail was moved to damaged/ and cut off"
                );
            }
        }
        Ok(Journal {
            dir: dir.to_owned(),
            path: path.into(),
            file: Arc::new(file),
            end,
            allocated: end,
            tail: None,
            spare: None,
            broken: false,
            _lock: lock,
        })
    }

    /// The size of the log file.
    pub(super) fn len(&self) -> u64 {
        self.end
    }

    /// Where `len` bytes at `offset` are, to read them later.
    pub(super) fn slice(&self, offset: u64, len: u64) -> Slice {
        Slice {
            file: Arc::clone(&self.file),
            path: Arc::clone(&self.path),
            offset,
            len,
        }
    }

    /// A change to be written: its blobs, then a commit of its steps.
    pub(super) fn batch(&mut self) -> Batch {
        let (blobs, steps) = self
            .spare
            .take()
            .unwrap_or_else(|| (Vec::with_capacity(2048), Vec::with_capacity(512)));
        Batch {
            base: self.end,
            blobs,
            shared: Vec::new(),
            steps,
        }
    }

    /// Writes a change to the file (the OS's page cache: [`Journal::sync`]
    /// makes it durable). On failure the log is as it was before, or (when
    /// that cannot be made so) refuses all writes.
    pub(super) fn write(&mut self, batch: Batch) -> Result<()> {
        if self.broken {
            return Err(crate::error::io_error(
                &"root",
                "writing (an earlier write failed and could not be undone; reopen the root)",
                &self.path,
                std::io::Error::other("the log's tail is unknown"),
            ));
        }
        debug_assert_eq!(batch.base, self.end);
        let Batch {
            mut blobs,
            shared,
            mut steps,
            ..
        } = batch;
        let commit = header(COMMIT, &steps);
        let mut at = self.end;
        // The small records, with each large blob's payload where its
        // header left room for it; then the commit.
        let written = (|| {
            let mut from = 0;
            for (place, content) in &shared {
                self.copy_in(&blobs[from..*place], &mut at)?;
                self.copy_in(content, &mut at)?;
                from = *place;
            }
            self.copy_in(&blobs[from..], &mut at)?;
            self.copy_in(&commit, &mut at)?;
            self.copy_in(&steps, &mut at)
        })();
        blobs.clear();
        steps.clear();
        self.spare = Some((blobs, steps));
        match written {
            Ok(()) => {
                self.end = at;
                Ok(())
            }
            Err(source) => {
                // Nothing past `end` counts, but bytes of this change
                // copied there must not be read as records after a crash:
                // give the space back.
                self.tail = None;
                match self.file.set_len(self.end) {
                    Ok(()) => self.allocated = self.end,
                    Err(_) => self.broken = true,
                }
                Err(crate::error::io_error(
                    &"root",
                    "appending to",
                    &self.path,
                    source,
                ))
            }
        }
    }

    /// Copies `bytes` into the file at `at`, past the records, growing
    /// the mapped tail as needed; moves `at` past them.
    fn copy_in(&mut self, mut bytes: &[u8], at: &mut u64) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let tail = match self.tail.take() {
                Some(tail) if tail.covers(*at) => tail,
                _ => self.map_tail(*at, bytes.len() as u64)?,
            };
            let tail = self.tail.insert(tail);
            let from = usize::try_from(*at - tail.start).map_err(std::io::Error::other)?;
            let count = bytes.len().min(tail.map.len() - from);
            tail.map[from..from + count].copy_from_slice(&bytes[..count]);
            bytes = &bytes[count..];
            *at += count as u64;
        }
        Ok(())
    }

    /// Maps the file from `at` (rounded down to a page) for at least
    /// `wanted` bytes, allocating the space first where the file does not
    /// reach yet: an eighth of the log, from 1 MiB up to 16 MiB at a time.
    fn map_tail(&mut self, at: u64, wanted: u64) -> std::io::Result<Tail> {
        let start = at & !(TAIL_ALIGN - 1);
        let ahead = (self.end / 8).clamp(TAIL_MIN, TAIL_MAX);
        let len = (at - start + wanted.max(ahead)).next_multiple_of(TAIL_ALIGN);
        let reach = start + len;
        if reach > self.allocated {
            let from = libc::off_t::try_from(self.allocated).map_err(std::io::Error::other)?;
            let more =
                libc::off_t::try_from(reach - self.allocated).map_err(std::io::Error::other)?;
            // SAFETY: a plain system call on a descriptor this journal owns.
            let failed = unsafe { libc::posix_fallocate(self.file.as_raw_fd(), from, more) };
            if failed != 0 {
                return Err(std::io::Error::from_raw_os_error(failed));
            }
            self.allocated = reach;
        }
        // SAFETY: the file is this root's log, which only this process
        // writes (it holds the root's lock) and which is only cut shorter
        // once this mapping is gone (`write`'s undo, `compact`, `Drop`), so
        // the mapping stays backed for as long as it lives. The space is
        // allocated, so touching its pages cannot fail for want of disk.
        let map = unsafe {
            MmapOptions::new()
                .offset(start)
                .len(usize::try_from(len).map_err(std::io::Error::other)?)
                .map_mut(&*self.file)?
        };
        Ok(Tail { map, start })
    }

    /// Flushes everything written to the disk. A failure leaves what was
    /// written in doubt, so the log then refuses all writes.
    pub(super) fn sync(&mut self) -> std::io::Result<()> {
        let synced = self.file.sync_data();
        if synced.is_err() {
            self.broken = true;
        }
        synced
    }

    /// The log file, for messages.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The root's directory, which holds the log.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces the log with one holding only what `write_live` writes
    /// through the [`Rewriter`] (the live state), then reads from it.
    /// Returns what `write_live` returned (the objects' new offsets).
    pub(super) fn compact<T>(
        &mut self,
        write_live: impl FnOnce(&mut Rewriter) -> std::io::Result<T>,
    ) -> Result<T> {
        let path = self.dir.join(COMPACTING_FILE);
        let io = |source| crate::error::io_error(&"root", "compacting the log into", &path, source);
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let mut rewriter = Rewriter {
            old: self.slice(0, 0),
            out: std::io::BufWriter::with_capacity(1 << 20, &file),
            end: 0,
            steps: Vec::new(),
        };
        let moved = (|| {
            rewriter.out.write_all(MAGIC)?;
            rewriter.end = MAGIC.len() as u64;
            let moved = write_live(&mut rewriter)?;
            rewriter.flush_steps()?;
            rewriter.out.flush()?;
            Ok(moved)
        })();
        let end = rewriter.end;
        drop(rewriter);
        let moved = moved
            .and_then(|moved| file.sync_all().map(|()| moved))
            .and_then(|moved| {
                std::fs::rename(&path, self.dir.join(LOG_FILE))?;
                sync_dir(&self.dir)?;
                Ok(moved)
            });
        match moved {
            Ok(moved) => {
                self.tail = None;
                self.file = Arc::new(file);
                self.end = end;
                self.allocated = end;
                self.broken = false;
                Ok(moved)
            }
            Err(source) => {
                let _ = std::fs::remove_file(&path);
                Err(io(source))
            }
        }
    }
}

impl Drop for Journal {
    /// Cuts the space allocated ahead off the file, so that a closed log
    /// ends at its last record.
    fn drop(&mut self) {
        self.tail = None;
        if self.allocated > self.end {
            let _ = self.file.set_len(self.end);
        }
    }
}

/// Mappings start on a boundary that suits every page size in use.
const TAIL_ALIGN: u64 = 64 << 10;
/// The least and most space allocated ahead of the records at a time.
const TAIL_MIN: u64 = 1 << 20;
const TAIL_MAX: u64 = 16 << 20;

/// The mapped end of the log file, from `start`.
struct Tail {
    map: MmapMut,
    start: u64,
}

impl Tail {
    fn covers(&self, at: u64) -> bool {
        at >= self.start && at < self.start + self.map.len() as u64
    }
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("start", &self.start)
            .field("len", &self.map.len())
            .finish()
    }
}

/// The records of one change, built before it is written.
pub(super) struct Batch {
    /// Where the log ends before the change.
    base: u64,
    /// The blob records, except large blobs' payloads.
    blobs: Vec<u8>,
    /// Large blobs' payloads, written from where they are rather than
    /// copied, each with the place in `blobs` it goes after.
    shared: Vec<(usize, Arc<Vec<u8>>)>,
    /// The change's steps, encoded: the commit's payload.
    steps: Vec<u8>,
}

/// Blobs up to this size are copied into the batch, so that a small
/// change is one copy; larger ones are written from where they are.
const COPY_MAX: usize = 64 << 10;

impl Batch {
    /// Adds a blob; returns the offset its bytes will have in the log.
    pub(super) fn blob(&mut self, content: &Arc<Vec<u8>>) -> u64 {
        let written: u64 = self
            .shared
            .iter()
            .map(|(_, bytes)| bytes.len() as u64)
            .sum();
        push_header(&mut self.blobs, BLOB, content);
        let offset = self.base + self.blobs.len() as u64 + written;
        if content.len() <= COPY_MAX {
            self.blobs.extend_from_slice(content);
        } else {
            self.shared.push((self.blobs.len(), Arc::clone(content)));
        }
        offset
    }

    /// Adds a step to the change's commit.
    pub(super) fn step(&mut self, step: Step<'_>) {
        encode_step(&step, &mut self.steps);
    }
}

/// Writes a compacted log: blobs copied from the old one, and steps.
pub(super) struct Rewriter<'a> {
    /// The old log (a slice of it, to read others from).
    old: Slice,
    out: std::io::BufWriter<&'a File>,
    end: u64,
    /// Steps encoded since the last commit written.
    steps: Vec<u8>,
}

impl Rewriter<'_> {
    /// Copies the `len` bytes at `offset` of the old log into a blob of
    /// the new one; returns the new offset.
    pub(super) fn copy_blob(&mut self, offset: u64, len: u64) -> std::io::Result<u64> {
        let bytes = Slice {
            offset,
            len,
            ..self.old.clone()
        }
        .read()?;
        self.blob(&bytes)
    }

    /// Writes `content` as a blob of the new log; returns its offset.
    pub(super) fn blob(&mut self, content: &[u8]) -> std::io::Result<u64> {
        self.out.write_all(&header(BLOB, content))?;
        self.out.write_all(content)?;
        self.end += HEADER + content.len() as u64;
        Ok(self.end - content.len() as u64)
    }

    /// Adds a step, written in commits of about a megabyte.
    pub(super) fn step(&mut self, step: Step<'_>) -> std::io::Result<()> {
        encode_step(&step, &mut self.steps);
        if self.steps.len() >= 1 << 20 {
            self.flush_steps()?;
        }
        Ok(())
    }

    fn flush_steps(&mut self) -> std::io::Result<()> {
        if self.steps.is_empty() {
            return Ok(());
        }
        self.out.write_all(&header(COMMIT, &self.steps))?;
        self.out.write_all(&self.steps)?;
        self.end += HEADER + self.steps.len() as u64;
        self.steps.clear();
        Ok(())
    }
}

fn push_header(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.extend_from_slice(&header(kind, payload));
}

/// A record's header: its kind, its payload's length and checksum.
fn header(kind: u8, payload: &[u8]) -> [u8; HEADER as usize] {
    let mut header = [0; HEADER as usize];
    header[0] = kind;
    header[1..9].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    header[9..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    header
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads every record of `file` from the start, handing each intact
/// commit's steps to `replay`; returns where the intact records end.
/// `len` is the file's length.
fn replay_file(
    file: &File,
    path: &Path,
    len: u64,
    replay: &mut impl FnMut(Vec<Step<'_>>),
) -> Result<u64> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut skip = [0; 8];
    reader
        .read_exact(&mut skip)
        .map_err(|source| crate::error::io_error(&"root", "reading", path, source))?;
    let mut at = MAGIC.len() as u64;
    let mut payload = Vec::new();
    loop {
        let mut header = [0; HEADER as usize];
        if at + HEADER > len || reader.read_exact(&mut header).is_err() {
            return Ok(at);
        }
        let kind = header[0];
        let size = u64::from_le_bytes(header[1..9].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(header[9..13].try_into().expect("4 bytes"));
        if !matches!(kind, BLOB | COMMIT) || size > len - at - HEADER {
            return Ok(at);
        }
        if kind == BLOB {
            // Not read: content checks itself by its digest (verify), and
            // a flipped bit in one object must not cost the changes after
            // it. A blob cut off at the end fails the commit after it.
            let Ok(skip) = i64::try_from(size) else {
                return Ok(at);
            };
            if reader.seek_relative(skip).is_err() {
                return Ok(at);
            }
            at += HEADER + size;
            continue;
        }
        let Ok(size) = usize::try_from(size) else {
            return Ok(at);
        };
        payload.resize(size, 0);
        if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            return Ok(at);
        }
        let Some(steps) = decode_steps(&payload) else {
            return Err(StoreError::InvalidRoot {
                root: format!("{SCHEME}{}", path.parent().unwrap_or(path).display()),
                reason: format!(
                    "{} holds a record at byte {at} that this build cannot read",
                    path.display()
                ),
            });
        };
        replay(steps);
        at += HEADER + size as u64;
    }
}

/// The offset of the last byte between `from` and `to` that is not zero:
/// the end of what was written past the records, before the space
/// allocated ahead of them.
fn last_written(file: &File, from: u64, to: u64) -> std::io::Result<Option<u64>> {
    let mut buffer = vec![0; 1 << 20];
    let mut end = to;
    while end > from {
        let start = end.saturating_sub(buffer.len() as u64).max(from);
        let piece = &mut buffer[..usize::try_from(end - start).map_err(std::io::Error::other)?];
        file.read_exact_at(piece, start)?;
        if let Some(last) = piece.iter().rposition(|&byte| byte != 0) {
            return Ok(Some(start + last as u64));
        }
        end = start;
    }
    Ok(None)
}

/// Copies the log's bytes from `from` to `to` into `damaged/`, so that
/// cutting them off loses nothing an operator could still want.
fn keep_damaged_tail(dir: &Path, file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let damaged = dir.join("damaged");
    std::fs::create_dir_all(&damaged)?;
    let mut kept = File::create(damaged.join(format!("log-from-{from}")))?;
    let mut tail = vec![0; usize::try_from(to - from).map_err(std::io::Error::other)?];
    file.read_exact_at(&mut tail, from)?;
    kept.write_all(&tail)?;
    kept.sync_all()
}

// The steps' encoding: integers little-endian, strings and byte strings
// prefixed by their length, options by a 0/1 byte.

fn encode_step(step: &Step<'_>, out: &mut Vec<u8>) {
    let mut put = Encoder(out);
    {
        match step {
            Step::MakeStore { store, created_at } => {
                put.u8(1);
                put.str(store);
                put.u64(*created_at as u64);
            }
            Step::DropStore { store } => {
                put.u8(2);
                put.str(store);
            }
            Step::Label { store, label, row } => {
                put.u8(3);
                put.str(store);
                put.str(label);
                put.flag(row.is_some());
                if let Some(row) = row {
                    put.digest(row.head);
                    put.option(row.length, |put, length| put.u64(length));
                    put.option(row.open.as_deref(), |put, open| put.bytes(open));
                    put.option(row.sealed, |put, sealed| put.digest(sealed));
                }
            }
            Step::Object {
                store,
                digest,
                object,
            } => {
                put.u8(4);
                put.str(store);
                put.digest(*digest);
                put.flag(object.is_some());
                if let Some(object) = object {
                    put.u64(match object.bytes {
                        BytesAt::Blob(offset) => offset,
                        BytesAt::File => IN_FILE,
                    });
                    put.u64(object.size);
                    put.u64(object.stored_at as u64);
                    put.option(object.links.as_deref(), |put, links| put.bytes(links));
                }
            }
            Step::Unscanned {
                store,
                digest,
                unscanned,
            } => {
                put.u8(5);
                put.str(store);
                put.digest(*digest);
                put.flag(*unscanned);
            }
            Step::Logged { store, entry } => {
                put.u8(6);
                put.str(store);
                put.u64(entry.seq);
                put.str(&entry.label);
                put.option(entry.old, |put, old| put.digest(old));
                put.option(entry.new, |put, new| put.digest(new));
                put.u64(entry.at as u64);
                put.option(entry.actor.as_deref(), |put, actor| put.str(actor));
            }
            Step::Trimmed { store, through } => {
                put.u8(7);
                put.str(store);
                put.u64(*through);
            }
        }
    }
}

struct Encoder<'a>(&'a mut Vec<u8>);

impl Encoder<'_> {
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }
    fn flag(&mut self, value: bool) {
        self.0.push(u8::from(value));
    }
    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    fn bytes(&mut self, value: &[u8]) {
        self.u64(value.len() as u64);
        self.0.extend_from_slice(value);
    }
    fn str(&mut self, value: &str) {
        self.bytes(value.as_bytes());
    }
    fn digest(&mut self, value: Digest) {
        self.0.extend_from_slice(&value.0);
    }
    fn option<T>(&mut self, value: Option<T>, put: impl FnOnce(&mut Self, T)) {
        self.flag(value.is_some());
        if let Some(value) = value {
            put(self, value);
        }
    }
}

/// The steps of a commit's payload; `None` if it is not one this build
/// wrote (its checksum held, so it is not damage).
fn decode_steps(payload: &[u8]) -> Option<Vec<Step<'_>>> {
    let mut get = Decoder(payload);
    let mut steps = Vec::new();
    while !get.0.is_empty() {
        let step = match get.u8()? {
            1 => Step::MakeStore {
                store: Cow::Borrowed(get.text()?),
                created_at: get.u64()? as i64,
            },
            2 => Step::DropStore {
                store: Cow::Borrowed(get.text()?),
            },
            3 => Step::Label {
                store: Cow::Borrowed(get.text()?),
                label: Cow::Borrowed(get.text()?),
                row: match get.flag()? {
                    false => None,
                    true => Some(Cow::Owned(ChainHead {
                        head: get.digest()?,
                        length: get.option(Decoder::u64)?,
                        open: get.option(Decoder::bytes)?,
                        sealed: get.option(Decoder::digest)?,
                    })),
                },
            },
            4 => Step::Object {
                store: Cow::Borrowed(get.text()?),
                digest: get.digest()?,
                object: match get.flag()? {
                    false => None,
                    true => Some(LoggedObject {
                        bytes: match get.u64()? {
                            IN_FILE => BytesAt::File,
                            offset => BytesAt::Blob(offset),
                        },
                        size: get.u64()?,
                        stored_at: get.u64()? as i64,
                        links: get.option(Decoder::bytes)?.map(Cow::Owned),
                    }),
                },
            },
            5 => Step::Unscanned {
                store: Cow::Borrowed(get.text()?),
                digest: get.digest()?,
                unscanned: get.flag()?,
            },
            6 => Step::Logged {
                store: Cow::Borrowed(get.text()?),
                entry: Cow::Owned(ChangeEntry {
                    seq: get.u64()?,
                    label: SmolStr::new(get.text()?),
                    old: get.option(Decoder::digest)?,
                    new: get.option(Decoder::digest)?,
                    at: get.u64()? as i64,
                    actor: get.option(Decoder::text)?.map(Arc::from),
                }),
            },
            7 => Step::Trimmed {
                store: Cow::Borrowed(get.text()?),
                through: get.u64()?,
            },
            _ => return None,
        };
        steps.push(step);
    }
    Some(steps)
}

struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn flag(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    /// A length-prefixed run of bytes, borrowed from the record.
    fn sized(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u64()?).ok()?;
        self.take(len)
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        Some(self.sized()?.to_vec())
    }
    /// A string, borrowed from the record: replaying a step copies only
    /// what the state keeps.
    fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.sized()?).ok()
    }
    fn digest(&mut self) -> Option<Digest> {
        Digest::from_slice(self.take(32)?)
    }
    fn option<T>(&mut self, get: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.flag()? {
            false => Some(None),
            true => get(self).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps as the log encodes them: replayed steps borrow the record
    /// they were read from, so the tests keep and compare their bytes.
    fn encoded(steps: &[Step<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for step in steps {
            encode_step(step, &mut out);
        }
        out
    }

    fn steps() -> Vec<Step<'static>> {
        let digest = Digest::of(b"x");
        vec![
            Step::MakeStore {
                store: "s".into(),
                created_at: 12,
            },
            Step::Label {
                store: "s".into(),
                label: "a".into(),
                row: Some(Cow::Owned(ChainHead {
                    head: digest,
                    length: Some(3),
                    open: Some(vec![1, 2]),
                    sealed: None,
                })),
            },
            Step::Object {
                store: "s".into(),
                digest,
                object: Some(LoggedObject {
                    bytes: BytesAt::Blob(21),
                    size: 1,
                    stored_at: -5,
                    links: None,
                }),
            },
            Step::Object {
                store: "s".into(),
                digest,
                object: Some(LoggedObject {
                    bytes: BytesAt::File,
                    size: 5 << 20,
                    stored_at: 7,
                    links: Some(Cow::Owned(vec![9])),
                }),
            },
            Step::Unscanned {
                store: "s".into(),
                digest,
                unscanned: true,
            },
            Step::Logged {
                store: "s".into(),
                entry: Cow::Owned(ChangeEntry {
                    seq: 1,
                    label: "a".into(),
                    old: None,
                    new: Some(digest),
                    at: 7,
                    actor: Some("actor".into()),
                }),
            },
            Step::Trimmed {
                store: "s".into(),
                through: 1,
            },
            Step::DropStore { store: "s".into() },
        ]
    }

    /// Writes a change of `steps()` with the blobs already in `batch`.
    fn write(journal: &mut Journal, mut batch: Batch) {
        for step in steps() {
            batch.step(step);
        }
        journal.write(batch).unwrap();
    }

    #[test]
    fn steps_read_back_as_written() {
        let mut payload = Vec::new();
        for step in steps() {
            encode_step(&step, &mut payload);
        }
        assert_eq!(decode_steps(&payload), Some(steps()));
        // Cut anywhere, a payload does not decode (a checksum would have
        // caught it first; this is the second line of defence).
        for cut in 1..payload.len() {
            let decoded = decode_steps(&payload[..cut]);
            assert!(decoded.is_none_or(|partial| partial.len() < steps().len()));
        }
    }

    #[test]
    fn a_torn_last_change_is_cut_off_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let replayed = |dir: &Path| {
            let mut seen = Vec::new();
            let journal = Journal::open(dir, |steps| seen.push(encoded(&steps))).unwrap();
            (journal, seen)
        };
        let (mut journal, seen) = replayed(dir.path());
        assert!(seen.is_empty());
        for _ in 0..2 {
            let mut batch = journal.batch();
            let offset = batch.blob(&Arc::new(b"hello".to_vec()));
            write(&mut journal, batch);
            assert_eq!(journal.slice(offset, 5).read().unwrap(), b"hello");
        }
        let whole = journal.len();
        drop(journal);
        // Cut the second change short, as a crash mid-write would.
        let log = File::options()
            .write(true)
            .open(dir.path().join(LOG_FILE))
            .unwrap();
        log.set_len(whole - 3).unwrap();
        let (journal, seen) = replayed(dir.path());
        assert_eq!(seen, vec![encoded(&steps())]);
        assert!(journal.len() < whole - 3);
        let kept = std::fs::read_dir(dir.path().join("damaged"))
            .unwrap()
            .count();
        assert_eq!(kept, 1);
    }

    /// The log file as a crash would leave it: copied while the journal
    /// still holds the space allocated ahead of its records.
    fn crashed_copy(journal: &Journal, from: &Path) -> tempfile::TempDir {
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(from.join(LOG_FILE), copy.path().join(LOG_FILE)).unwrap();
        let copied = std::fs::metadata(copy.path().join(LOG_FILE)).unwrap().len();
        assert!(
            copied > journal.len(),
            "space is allocated ahead of the records"
        );
        copy
    }

    #[test]
    fn a_log_left_by_a_crash_is_cut_back_to_its_records_and_nothing_is_called_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), |_| {}).unwrap();
        for _ in 0..2 {
            let mut batch = journal.batch();
            batch.blob(&Arc::new(b"hello".to_vec()));
            write(&mut journal, batch);
        }
        let crashed = crashed_copy(&journal, dir.path());
        let mut seen = Vec::new();
        let reopened = Journal::open(crashed.path(), |steps| seen.push(encoded(&steps))).unwrap();
        assert_eq!(seen, vec![encoded(&steps()); 2]);
        assert_eq!(reopened.len(), journal.len());
        assert!(!crashed.path().join("damaged").exists());
        let log = crashed.path().join(LOG_FILE);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), journal.len());
        // Closed in order, a log ends at its last record.
        let whole = journal.len();
        drop(journal);
        let log = dir.path().join(LOG_FILE);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), whole);
    }

    #[test]
    fn a_change_cut_short_before_the_allocated_space_is_kept_aside_without_the_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), |_| {}).unwrap();
        let mut ends = Vec::new();
        for _ in 0..2 {
            let mut batch = journal.batch();
            batch.blob(&Arc::new(b"hello".to_vec()));
            write(&mut journal, batch);
            ends.push(journal.len());
        }
        let crashed = crashed_copy(&journal, dir.path());
        // The last change's final bytes never reached the file.
        let log = File::options()
            .write(true)
            .open(crashed.path().join(LOG_FILE))
            .unwrap();
        log.write_all_at(&[0; 3], ends[1] - 3).unwrap();
        let mut seen = Vec::new();
        let reopened = Journal::open(crashed.path(), |steps| seen.push(encoded(&steps))).unwrap();
        assert_eq!(seen, vec![encoded(&steps())]);
        // Cut where the second change's commit begins (its blob, unread on
        // replay, is kept: nothing refers to it).
        let cut = reopened.len();
        assert!(cut >= ends[0] && cut < ends[1] - 3, "{cut} {ends:?}");
        let kept: Vec<_> = std::fs::read_dir(crashed.path().join("damaged"))
            .unwrap()
            .map(|entry| entry.unwrap().metadata().unwrap().len())
            .collect();
        // What was written of the second change, not the zeros after it.
        assert_eq!(kept.len(), 1);
        assert!(kept[0] > 0 && kept[0] <= ends[1] - 3 - cut, "{kept:?}");
    }

    #[test]
    fn a_blob_larger_than_the_space_allocated_at_a_time_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), |_| {}).unwrap();
        let large = Arc::new(
            (0..3 * TAIL_MIN + 12_345)
                .map(|n| (n % 251) as u8)
                .collect::<Vec<u8>>(),
        );
        let mut batch = journal.batch();
        let at = batch.blob(&large);
        write(&mut journal, batch);
        let size = large.len() as u64;
        assert_eq!(journal.slice(at, size).read().unwrap(), *large);
        drop(journal);
        let mut seen = Vec::new();
        let journal = Journal::open(dir.path(), |steps| seen.push(encoded(&steps))).unwrap();
        assert_eq!(seen, vec![encoded(&steps())]);
        assert_eq!(journal.slice(at, size).read().unwrap(), *large);
    }

    #[test]
    fn large_and_small_blobs_of_one_change_read_back_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), |_| {}).unwrap();
        let large = Arc::new((0..200_000u32).map(|n| n as u8).collect::<Vec<u8>>());
        let small = Arc::new(b"small".to_vec());
        let mut batch = journal.batch();
        let (at_small, at_large) = (batch.blob(&small), batch.blob(&large));
        let at_after = batch.blob(&small);
        write(&mut journal, batch);
        drop(journal);
        let mut seen = Vec::new();
        let journal = Journal::open(dir.path(), |steps| seen.push(encoded(&steps))).unwrap();
        assert_eq!(seen, vec![encoded(&steps())]);
        assert_eq!(journal.slice(at_small, 5).read().unwrap(), *small);
        assert_eq!(journal.slice(at_large, 200_000).read().unwrap(), *large);
        assert_eq!(journal.slice(at_after, 5).read().unwrap(), *small);
    }

    #[test]
    fn a_second_opener_is_refused_while_the_first_holds_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let first = Journal::open(dir.path(), |_| {}).unwrap();
        let second = Journal::open(dir.path(), |_| {}).unwrap_err();
        assert!(matches!(second, StoreError::RootInUse { .. }), "{second}");
        drop(first);
        Journal::open(dir.path(), |_| {}).unwrap();
    }
}
