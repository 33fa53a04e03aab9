//! Large content as `std::io` streams, label compare-and-swap, paged
//! listing and the change log: the `theater:simple/store-streams` side
//! of [`ContentStore`].

use std::io;

use crate::bindings::theater::simple::store_streams as wit;
use crate::bindings::wasi::io::poll::Pollable;
use crate::bindings::wasi::io::streams::{InputStream, StreamError as WasiStreamError};
use crate::{ContentRef, ContentStore, Error, ErrorKind, Result};

use wit::Error as StreamError;

/// A `store-streams` error, typed by the host, as this crate's [`Error`].
impl From<StreamError> for Error {
    fn from(error: StreamError) -> Self {
        let (kind, message) = match error {
            StreamError::NotFound(m) => (ErrorKind::NotFound, m),
            StreamError::AccessDenied(m) => (ErrorKind::AccessDenied, m),
            StreamError::TooLarge(m) => (ErrorKind::TooLarge, m),
            StreamError::QuotaExceeded(m) => (ErrorKind::QuotaExceeded, m),
            StreamError::Corrupted(m) => (ErrorKind::Corrupted, m),
            StreamError::InvalidLabel(m) | StreamError::InvalidRef(m) => (ErrorKind::Invalid, m),
            StreamError::Io(m) => (ErrorKind::Io, m),
            StreamError::Trimmed(m) => (ErrorKind::Trimmed, m),
        };
        Error::new(kind, message)
    }
}

/// New content written piece by piece, through [`io::Write`] (so
/// `std::io::copy` works). Nothing is stored until
/// [`ContentWriter::finish`]; dropping the writer stores nothing.
pub struct ContentWriter {
    inner: wit::ContentWriter,
}

impl ContentWriter {
    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.inner.bytes_written()
    }

    /// Stores the content and returns its ref.
    pub fn finish(self) -> Result<ContentRef> {
        Ok(wit::ContentWriter::finish(self.inner)?.into())
    }

    /// Stores the content and points `label` at it, in one step.
    pub fn finish_at_label(self, label: &str) -> Result<ContentRef> {
        Ok(wit::ContentWriter::finish_at_label(self.inner, label)?.into())
    }
}

impl io::Write for ContentWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        // Pieces of at most 1 MiB keep each call's copy small.
        let piece = &bytes[..bytes.len().min(1 << 20)];
        self.inner.write(piece).map_err(Error::from)?;
        Ok(piece.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Stored content read as a stream through [`io::Read`]. Every byte was
/// checked against the ref by the host before it arrives; damaged content
/// ends the stream with an [`io::ErrorKind::InvalidData`] error.
pub struct ContentReader {
    stream: InputStream,
}

impl io::Read for ContentReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        match self.stream.blocking_read(out.len() as u64) {
            Ok(bytes) => {
                out[..bytes.len()].copy_from_slice(&bytes);
                Ok(bytes.len())
            }
            Err(WasiStreamError::Closed) => Ok(0),
            Err(WasiStreamError::LastOperationFailed(error)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                error.to_debug_string(),
            )),
        }
    }
}

impl ContentStore {
    /// A writer for new content of any size.
    pub fn writer(&self) -> Result<ContentWriter> {
        Ok(ContentWriter {
            inner: wit::open_writer(self.id())?,
        })
    }

    /// A verified stream of the content behind `content_ref`.
    pub fn reader(&self, content_ref: &ContentRef) -> Result<ContentReader> {
        Ok(ContentReader {
            stream: wit::open_reader(self.id(), &content_ref.to_wit())?,
        })
    }

    /// The size of the content behind `content_ref`.
    pub fn content_size(&self, content_ref: &ContentRef) -> Result<u64> {
        Ok(wit::content_size(self.id(), &content_ref.to_wit())?)
    }

    /// `len` bytes of the content from `offset`, verified.
    pub fn read_range(&self, content_ref: &ContentRef, offset: u64, len: u64) -> Result<Vec<u8>> {
        Ok(wit::read_range(
            self.id(),
            &content_ref.to_wit(),
            offset,
            len,
        )?)
    }

    /// Points `label` at `new` (or removes it, for `None`) only if it now
    /// points at `expected` (or is absent, for `None`); returns whether it
    /// did. Re-read and retry on `false`.
    pub fn compare_and_swap(
        &self,
        label: &str,
        expected: Option<&ContentRef>,
        new: Option<&ContentRef>,
    ) -> Result<bool> {
        let expected = expected.map(ContentRef::to_wit);
        let new = new.map(ContentRef::to_wit);
        Ok(wit::compare_and_swap(
            self.id(),
            label,
            expected.as_ref(),
            new.as_ref(),
        )?)
    }

    /// Moves several labels in one transaction, and only if each still
    /// points at its expected ref (`None`: absent): all move to their new
    /// refs (`None`: removed), or none does. Returns whether they moved;
    /// on `false`, read them again and retry. For structures whose head
    /// and version labels must move together.
    ///
    /// ```no_run
    /// # fn main() -> theater_store_guest::Result<()> {
    /// # let store = theater_store_guest::ContentStore::from_id("docs");
    /// # let (old_head, new_doc) = (None, theater_store_guest::ContentRef::new("…"));
    /// let moved = store.compare_and_swap_labels(&[
    ///     ("head", old_head.as_ref(), Some(&new_doc)),
    ///     ("version/7", None, Some(&new_doc)),
    /// ])?;
    /// # Ok(()) }
    /// ```
    pub fn compare_and_swap_labels(
        &self,
        swaps: &[(&str, Option<&ContentRef>, Option<&ContentRef>)],
    ) -> Result<bool> {
        let swaps: Vec<wit::LabelSwap> = swaps
            .iter()
            .map(|(label, expected, new)| wit::LabelSwap {
                label: (*label).to_owned(),
                expected: expected.map(ContentRef::to_wit),
                new: new.map(ContentRef::to_wit),
            })
            .collect();
        Ok(wit::compare_and_swap_labels(self.id(), &swaps)?)
    }

    /// Up to `limit` labels starting with `prefix`, after `after`, in byte
    /// order, with their targets. Pass the last label of a page as `after`
    /// to get the next.
    pub fn list_labels_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, ContentRef)>> {
        let page = wit::list_labels_page(self.id(), prefix, after, limit)?;
        Ok(page
            .into_iter()
            .map(|(label, target)| (label, ContentRef::from(target)))
            .collect())
    }

    /// Reads up to `limit` entries of the store's change log after
    /// sequence `since` (0: from the oldest kept), keeping those that
    /// touch labels starting with `prefix`. Read on from the page's
    /// [`ChangePage::next`]. Fails with [`ErrorKind::Trimmed`] when the
    /// changes right after `since` are no longer kept.
    pub fn read_changes(&self, prefix: &str, since: u64, limit: u32) -> Result<ChangePage> {
        let page = wit::read_changes(self.id(), prefix, since, limit)?;
        Ok(ChangePage {
            changes: page.changes.into_iter().map(LabelChange::from).collect(),
            next: page.next,
            last_seq: page.last_seq,
        })
    }

    /// The past values of `label`, newest first, at most `limit`, as far
    /// back as the store's change log keeps them; a change whose `new` is
    /// `None` removed the label.
    pub fn label_history(&self, label: &str, limit: u32) -> Result<Vec<LabelChange>> {
        let history = wit::label_history(self.id(), label, limit)?;
        Ok(history.into_iter().map(LabelChange::from).collect())
    }

    /// What `label` pointed at right after change `seq` of the store's
    /// log (`None`: it did not exist then). Fails with
    /// [`ErrorKind::Trimmed`] for a point older than the log keeps.
    pub fn get_label_at(&self, label: &str, seq: u64) -> Result<Option<ContentRef>> {
        Ok(wit::get_label_at(self.id(), label, seq)?.map(ContentRef::from))
    }

    /// Blocks until the store's change log holds a change after `since`
    /// (at once if it already does), without spinning; then read it with
    /// [`ContentStore::read_changes`]. Returns early when the actor's time
    /// is up.
    pub fn wait_for_change(&self, since: u64) -> Result<()> {
        self.watch_changes(since)?.block();
        Ok(())
    }

    /// A `wasi:io` pollable that becomes ready once the store's change log
    /// holds a change after `since`, to wait on together with others
    /// (`wasi::io::poll::poll`). It counts as an open stream until dropped.
    pub fn watch_changes(&self, since: u64) -> Result<Pollable> {
        Ok(wit::watch_changes(self.id(), since)?)
    }
}

/// One change to one label, as its store's change log keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelChange {
    /// Its place in the store's log: 1, 2, 3, ... with no gaps.
    pub seq: u64,
    /// The label that changed.
    pub label: String,
    /// What it pointed at before (`None`: it did not exist).
    pub old: Option<ContentRef>,
    /// What it points at after (`None`: it was removed).
    pub new: Option<ContentRef>,
    /// When, in milliseconds since the Unix epoch.
    pub time: u64,
    /// The actor that made it, when an actor did.
    pub actor: Option<String>,
}

impl From<wit::LabelChange> for LabelChange {
    fn from(change: wit::LabelChange) -> Self {
        Self {
            seq: change.seq,
            label: change.label,
            old: change.old.map(ContentRef::from),
            new: change.new.map(ContentRef::from),
            time: change.time,
            actor: change.actor,
        }
    }
}

/// A page of a store's change log ([`ContentStore::read_changes`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangePage {
    /// The changes read that touch the prefix asked for, oldest first.
    pub changes: Vec<LabelChange>,
    /// How far the read got: pass it as `since` to read on (equal to
    /// `since` when nothing new was there).
    pub next: u64,
    /// The newest change the store has made.
    pub last_seq: u64,
}
