//! Streaming: content written and read piece by piece, with memory bounded
//! whatever its size.
//!
//! Writing: [`ContentWriter`] hashes content (digest and outboard, one
//! pass, `crate::tree`) and stages it as it arrives. Small content stays in
//! memory; past the inline threshold a blocking worker takes the pieces
//! through a short queue and writes them to a temporary file, so reading
//! the source and writing the file overlap. Nothing is visible until
//! [`ContentWriter::finish`]; a writer dropped before that leaves nothing.
//!
//! Reading: [`ContentReader`] and [`ContentStore::read_range`] check every
//! byte against the ref before handing it out, 16 KiB group by group,
//! through the object's outboard. An outboard that is missing (content
//! stored before outboards existed, or imported) is built on first need;
//! one that disagrees with intact content is rebuilt. Only content whose
//! own bytes are wrong is reported [`StoreError::Corrupted`].

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, ReadBuf};

use crate::engine::{Change, Engine, ObjectSource, Staged, StagingSink};
use crate::error::{Result, StoreError, io_error};
use crate::links::{LinkScanner, Links};
use crate::names::{ContentRef, Digest, StoreId, validate_label};
use crate::store::{ContentStore, Stored};
use crate::task::blocking;
use crate::tree::{self, ReadFault, TreeHasher};

/// Most bytes a [`ContentWriter`] queues while a piece is being written:
/// four pieces of [`PIECE_BYTES`].
const QUEUE_BYTES: usize = 1 << 20;

/// How long a staging drain waits for the next piece before it ends.
const DRAIN_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// How much [`ContentWriter::write_all_from`] reads per piece.
const PIECE_BYTES: usize = 256 << 10;

/// How much a [`ContentReader`] reads and verifies per step. Small windows,
/// many ahead, keep both cores of a small machine busy (measured: 256 KiB
/// × 8 beat 1 MiB × 2 and 128 KiB × 16).
const READ_WINDOW: u64 = 256 << 10;

/// How many windows a [`ContentReader`] verifies ahead of its reader.
const READ_AHEAD: usize = 8;

/// How many windows one blocking task reads and verifies in a row.
const WINDOWS_PER_TASK: usize = 4;

/// Hashes new content and stages it as it streams in. Blocking.
pub(crate) struct StagingWriter {
    store: StoreId,
    hasher: TreeHasher<Vec<u8>>,
    sink: Box<dyn StagingSink>,
    size: u64,
    links: LinkScanner<'static>,
}

impl StagingWriter {
    pub(crate) fn new(store: StoreId, sink: Box<dyn StagingSink>) -> Self {
        Self {
            store,
            hasher: TreeHasher::new(Vec::new()),
            sink,
            size: 0,
            links: LinkScanner::new(),
        }
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes)?;
        self.links.update(bytes);
        let pairs = self.hasher.outboard_mut();
        if !pairs.is_empty() {
            self.sink.write_outboard(pairs)?;
            pairs.clear();
        }
        self.sink.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// The content's digest and size, the staged content, and the refs
    /// written inside it.
    pub(crate) fn finish(self) -> Result<(Digest, u64, Staged, Links)> {
        let Self {
            store,
            hasher,
            mut sink,
            size,
            links,
        } = self;
        let (digest, pairs) = hasher.finish().expect("hashing into memory cannot fail");
        if let Err(source) = sink.write_outboard(&pairs) {
            sink.abandon();
            return Err(staging_error(&store, "writing outboard", source));
        }
        Ok((digest, size, sink.finish()?, links.finish(digest)))
    }

    pub(crate) fn abandon(self) {
        self.sink.abandon();
    }
}

/// New content being written piece by piece; from
/// [`ContentStore::writer`]. Call [`ContentWriter::finish`] (or
/// [`ContentWriter::finish_at_label`]) to store it. Dropping the writer
/// before that stores nothing and removes what was staged.
///
/// Content past the inline threshold is hashed and staged on a blocking
/// thread that drains the pieces queued for it (up to 1 MiB)
/// and ends when none is left; the next piece starts another. So no
/// thread is held while the writer waits for its caller, and an idle
/// writer costs its staging file and at most the queue.
pub struct ContentWriter {
    store: ContentStore,
    engine: Arc<dyn Engine>,
    /// Small content, kept here until it outgrows the inline threshold.
    memory: Vec<u8>,
    /// The way to the staging file, once content outgrew `memory`.
    pipe: Option<Arc<Pipe>>,
    written: u64,
    /// Set once staging failed: the content can no longer be completed.
    failed: bool,
}

/// Pieces on their way to the staging file, shared by the writer and the
/// blocking thread draining them.
struct Pipe {
    state: Mutex<PipeState>,
    /// Woken whenever the drain takes a piece or ends.
    drained: tokio::sync::Notify,
    /// Wakes a drain waiting a moment for the next piece.
    queued: std::sync::Condvar,
}

struct PipeState {
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    /// The staging writer, while no drain has it.
    idle: Option<StagingWriter>,
    draining: bool,
    /// Why staging failed, once it has.
    failed: Option<io::Error>,
}

impl Pipe {
    fn new(staging: StagingWriter) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(PipeState {
                queue: VecDeque::new(),
                queued_bytes: 0,
                idle: Some(staging),
                draining: false,
                failed: None,
            }),
            drained: tokio::sync::Notify::new(),
            queued: std::sync::Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `piece` if there is room (an empty queue always has), and
    /// starts a drain if none runs; hands the piece back if there is not.
    fn offer(self: &Arc<Self>, piece: Vec<u8>) -> std::result::Result<(), Vec<u8>> {
        let mut state = self.lock();
        if state.queued_bytes > 0 && state.queued_bytes + piece.len() > QUEUE_BYTES {
            return Err(piece);
        }
        state.queued_bytes += piece.len();
        state.queue.push_back(piece);
        self.queued.notify_one();
        if !state.draining
            && let Some(staging) = state.idle.take()
        {
            state.draining = true;
            let pipe = Arc::clone(self);
            tokio::task::spawn_blocking(move || pipe.drain(staging));
        }
        Ok(())
    }

    /// Writes queued pieces until none is left for [`DRAIN_LINGER`] (or
    /// one fails), then parks the staging writer. Blocking.
    fn drain(&self, mut staging: StagingWriter) {
        loop {
            let piece = {
                let mut state = self.lock();
                if state.queue.is_empty() {
                    // A streaming caller is usually a moment away with the
                    // next piece: waiting for it beats a new thread.
                    state = self
                        .queued
                        .wait_timeout(state, DRAIN_LINGER)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                match state.queue.pop_front() {
                    Some(piece) => {
                        state.queued_bytes -= piece.len();
                        piece
                    }
                    None => {
                        state.idle = Some(staging);
                        state.draining = false;
                        drop(state);
                        self.drained.notify_waiters();
                        return;
                    }
                }
            };
            self.drained.notify_waiters();
            if let Err(error) = staging.write(&piece) {
                let mut state = self.lock();
                state.failed = Some(error);
                state.queue.clear();
                state.queued_bytes = 0;
                state.idle = Some(staging);
                state.draining = false;
                drop(state);
                self.drained.notify_waiters();
                return;
            }
        }
    }

    /// Drops the pieces not yet written (the content is given up).
    fn discard_queue(&self) {
        let mut state = self.lock();
        state.queue.clear();
        state.queued_bytes = 0;
    }

    /// Waits until every queued piece is written (or staging failed), and
    /// takes the staging writer back with the failure, if any.
    async fn settle(&self) -> (Option<StagingWriter>, Option<io::Error>) {
        loop {
            let woken = self.drained.notified();
            {
                let mut state = self.lock();
                if !state.draining {
                    return (state.idle.take(), state.failed.take());
                }
            }
            woken.await;
        }
    }
}

impl ContentWriter {
    pub(crate) fn new(store: ContentStore, engine: Arc<dyn Engine>) -> Self {
        Self {
            store,
            engine,
            memory: Vec::new(),
            pipe: None,
            written: 0,
            failed: false,
        }
    }

    /// The error for a write to, or the finish of, a writer whose staging
    /// failed before.
    fn spent(&self) -> StoreError {
        let source = io::Error::other("an earlier write failed; start a new writer");
        staging_error(self.store.store_id(), "staging content", source)
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Appends `bytes` to the content.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if self.hold(bytes)? {
            return Ok(());
        }
        self.write_owned(bytes.to_vec()).await
    }

    /// [`ContentWriter::write`] for a piece the caller gives up, which
    /// saves copying it.
    pub async fn write_owned(&mut self, bytes: Vec<u8>) -> Result<()> {
        if self.hold(&bytes)? {
            return Ok(());
        }
        self.written += bytes.len() as u64;
        let pipe = match &self.pipe {
            Some(pipe) => Arc::clone(pipe),
            None => {
                let store = self.store.store_id().clone();
                let sink = self.engine.staging_sink(&store);
                let mut staging = StagingWriter::new(store, sink);
                let held = std::mem::take(&mut self.memory);
                // What was held is below the inline threshold: written here.
                if let Err(source) = staging.write(&held) {
                    staging.abandon();
                    return Err(self.staging_failed(source));
                }
                let pipe = Pipe::new(staging);
                self.pipe = Some(Arc::clone(&pipe));
                pipe
            }
        };
        let mut piece = bytes;
        loop {
            let woken = pipe.drained.notified();
            let failed = pipe.lock().failed.take();
            if let Some(source) = failed {
                if let (Some(staging), _) = pipe.settle().await {
                    blocking_abandon(staging).await;
                }
                self.pipe = None;
                return Err(self.staging_failed(source));
            }
            match pipe.offer(piece) {
                Ok(()) => return Ok(()),
                Err(back) => piece = back,
            }
            woken.await;
        }
    }

    fn staging_failed(&mut self, source: io::Error) -> StoreError {
        self.failed = true;
        staging_error(self.store.store_id(), "staging content", source)
    }

    /// Keeps `bytes` in memory if the content still fits under the inline
    /// threshold; `false` when they must be staged.
    fn hold(&mut self, bytes: &[u8]) -> Result<bool> {
        if self.failed {
            return Err(self.spent());
        }
        if self.pipe.is_some() || self.engine.stages_to_file(self.memory.len() + bytes.len()) {
            return Ok(false);
        }
        self.written += bytes.len() as u64;
        self.memory.extend_from_slice(bytes);
        Ok(true)
    }

    /// Appends everything `reader` yields, until its end; returns how
    /// many bytes that was.
    pub async fn write_all_from(&mut self, mut reader: impl AsyncRead + Unpin) -> Result<u64> {
        let mut total = 0;
        loop {
            let mut piece = vec![0u8; PIECE_BYTES];
            let mut filled = 0;
            while filled < PIECE_BYTES {
                // A failure of one of our own readers (a sync's source)
                // is passed on as the store error it is.
                let read = reader.read(&mut piece[filled..]).await.map_err(|source| {
                    source.downcast::<StoreError>().unwrap_or_else(|source| {
                        io_error(
                            self.store.store_id(),
                            "reading content",
                            Path::new("<input>"),
                            source,
                        )
                    })
                })?;
                if read == 0 {
                    break;
                }
                filled += read;
            }
            if filled == 0 {
                return Ok(total);
            }
            piece.truncate(filled);
            total += filled as u64;
            self.write_owned(piece).await?;
        }
    }

    /// Gives up on the content and waits until what was staged is
    /// removed. Dropping the writer does the same, without waiting.
    pub async fn abandon(mut self) {
        if let Some(pipe) = self.pipe.take() {
            pipe.discard_queue();
            if let (Some(staging), _) = pipe.settle().await {
                blocking_abandon(staging).await;
            }
        }
    }

    /// Stores the content and returns its ref.
    pub async fn finish(self) -> Result<Stored> {
        self.finish_inner(None).await
    }

    /// Stores the content and points `label` at it, in one index
    /// transaction.
    pub async fn finish_at_label(self, label: &str) -> Result<Stored> {
        validate_label(label)?;
        self.finish_inner(Some(label)).await
    }

    async fn finish_inner(mut self, label: Option<&str>) -> Result<Stored> {
        if self.failed {
            return Err(self.spent());
        }
        let (digest, size, staged, links) = match self.pipe.take() {
            None => {
                let content = Arc::new(std::mem::take(&mut self.memory));
                let digest = Digest::of(&content);
                (
                    digest,
                    content.len() as u64,
                    Staged::Inline(Arc::clone(&content)),
                    Links::of(&content, digest),
                )
            }
            Some(pipe) => match pipe.settle().await {
                (Some(staging), None) => {
                    join(tokio::task::spawn_blocking(move || staging.finish())).await?
                }
                (staging, failed) => {
                    if let Some(staging) = staging {
                        blocking_abandon(staging).await;
                    }
                    let source =
                        failed.unwrap_or_else(|| io::Error::other("the staging writer was lost"));
                    return Err(self.staging_failed(source));
                }
            },
        };
        let change = Change::AddObject {
            store: self.store.store_id().clone(),
            digest,
            size,
            staged,
            label: label.map(str::to_owned),
            links,
        };
        let new = self.store.apply(&*self.engine, change).await?;
        Ok(Stored {
            content_ref: digest.into(),
            new,
        })
    }
}

impl Drop for ContentWriter {
    /// Removes what was staged, once the piece being written (if any) is
    /// done.
    fn drop(&mut self) {
        let Some(pipe) = self.pipe.take() else {
            return;
        };
        pipe.discard_queue();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let (Some(staging), _) = pipe.settle().await {
                    blocking_abandon(staging).await;
                }
            });
        }
    }
}

/// Removes what `staging` wrote, on a blocking thread.
async fn blocking_abandon(staging: StagingWriter) {
    let _ = tokio::task::spawn_blocking(move || staging.abandon()).await;
}

/// An I/O failure while staging new content (which has no path yet).
fn staging_error(store: &StoreId, action: &'static str, source: io::Error) -> StoreError {
    io_error(store, action, Path::new("<staging>"), source)
}

async fn join<T>(task: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    match task.await {
        Ok(result) => result,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

impl ContentStore {
    /// A writer for new content of any size, written piece by piece.
    pub async fn writer(&self) -> Result<ContentWriter> {
        let engine = self.root().engine().await?;
        Ok(ContentWriter::new(self.clone(), engine))
    }

    /// Stores everything `reader` yields, with memory bounded whatever its
    /// size, and returns the ref.
    pub async fn store_reader(&self, reader: impl AsyncRead + Unpin) -> Result<ContentRef> {
        let mut writer = self.writer().await?;
        writer.write_all_from(reader).await?;
        Ok(writer.finish().await?.content_ref)
    }

    /// Stores everything `reader` yields and points `label` at it, in one
    /// index transaction.
    pub async fn store_reader_at_label(
        &self,
        label: &str,
        reader: impl AsyncRead + Unpin,
    ) -> Result<ContentRef> {
        validate_label(label)?;
        let mut writer = self.writer().await?;
        writer.write_all_from(reader).await?;
        Ok(writer.finish_at_label(label).await?.content_ref)
    }

    /// Stores the file at `path`, streaming it.
    pub async fn store_file(&self, path: impl AsRef<Path>) -> Result<ContentRef> {
        let path = path.as_ref();
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| io_error(self.store_id(), "opening file to store", path, source))?;
        self.store_reader(file).await
    }

    /// A reader over the content behind `content_ref` that verifies each
    /// piece before handing it out and can seek.
    pub async fn reader(&self, content_ref: &ContentRef) -> Result<ContentReader> {
        let opened = Opened::open(self, content_ref.digest()?).await?;
        let size = opened.size;
        Ok(ContentReader::new(opened, 0, size))
    }

    /// `len` bytes of the content behind `content_ref` from `offset`,
    /// verified. Only the 16 KiB groups the range touches are read and
    /// hashed. A range reaching past the end is refused with
    /// [`StoreError::InvalidRange`].
    pub async fn read_range(
        &self,
        content_ref: &ContentRef,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        let opened = Opened::open(self, content_ref.digest()?).await?;
        let range = self.check_range(content_ref, offset, Some(len), opened.size)?;
        opened.read(range).await.1
    }

    /// A verified reader over `len` bytes from `offset` (to the end for
    /// `None`), for ranges too large to hold in memory. A range reaching
    /// past the end is refused with [`StoreError::InvalidRange`].
    pub async fn range_reader(
        &self,
        content_ref: &ContentRef,
        offset: u64,
        len: Option<u64>,
    ) -> Result<tokio::io::Take<ContentReader>> {
        let opened = Opened::open(self, content_ref.digest()?).await?;
        let range = self.check_range(content_ref, offset, len, opened.size)?;
        Ok(ContentReader::new(opened, range.start, range.end).take(range.end - range.start))
    }

    fn check_range(
        &self,
        content_ref: &ContentRef,
        offset: u64,
        len: Option<u64>,
        size: u64,
    ) -> Result<Range<u64>> {
        let end = match len {
            Some(len) => offset.checked_add(len),
            None => Some(size),
        };
        match end {
            Some(end) if offset <= end && end <= size => Ok(offset..end),
            _ => Err(StoreError::InvalidRange {
                store: self.id().to_owned(),
                reference: content_ref.hash().to_owned(),
                start: offset,
                end: end.unwrap_or(u64::MAX),
                size,
            }),
        }
    }
}

/// An object opened for verified reading. Cheap to clone.
#[derive(Clone)]
struct Opened {
    engine: Arc<dyn Engine>,
    store: StoreId,
    digest: Digest,
    size: u64,
    source: Arc<Source>,
    /// Window buffers a reader (or the holder of a piece) has finished
    /// with, for the next windows: a fresh 256 KiB allocation costs more in
    /// zeroing and page faults than reading and hashing into it.
    spare: SpareBuffers,
}

/// Window buffers kept for reuse by one reader's windows.
type SpareBuffers = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// Keeps `bytes` for a later window, unless enough are kept already or it
/// is too small to serve as one.
fn keep_spare(spare: &SpareBuffers, bytes: Vec<u8>) {
    if let Ok(mut spare) = spare.lock()
        && spare.len() < READ_AHEAD + 1
        && bytes.capacity() >= READ_WINDOW as usize
    {
        spare.push(bytes);
    }
}

/// A verified piece of content from [`ContentReader::next_piece`], in the
/// buffer it was read and checked in. Dropping it hands the buffer back to
/// its reader for a later window, so that streaming gigabytes reuses a few
/// buffers instead of allocating and zeroing one per piece.
pub struct VerifiedPiece {
    bytes: Vec<u8>,
    spare: SpareBuffers,
}

impl VerifiedPiece {
    /// The bytes as a vector of their own (the buffer is not reused).
    pub fn into_vec(mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }
}

impl std::ops::Deref for VerifiedPiece {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsRef<[u8]> for VerifiedPiece {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::fmt::Debug for VerifiedPiece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedPiece")
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl Drop for VerifiedPiece {
    fn drop(&mut self) {
        keep_spare(&self.spare, std::mem::take(&mut self.bytes));
    }
}

impl Opened {
    /// How errors name the object: by its ref, as callers know it.
    fn object_name(&self) -> PathBuf {
        PathBuf::from(format!("object {}", self.digest.to_hex()))
    }
}

/// Verified inline bytes, or a file with its outboard.
enum Source {
    Inline(Vec<u8>),
    File {
        data: Box<dyn tree::RandomAccess>,
        outboard: Box<dyn tree::RandomAccess>,
    },
}

impl Source {
    /// A file object of `size` bytes; an outboard read from a file keeps
    /// the blocks it read for the reader's later windows.
    fn file(
        data: Box<dyn tree::RandomAccess>,
        outboard: Box<dyn tree::RandomAccess>,
        size: u64,
    ) -> Self {
        let in_memory = outboard.slice(0, 0).is_some();
        Source::File {
            data,
            outboard: if in_memory {
                outboard
            } else {
                Box::new(tree::CachedBlocks::new(outboard, size))
            },
        }
    }
}

impl Opened {
    async fn open(store: &ContentStore, digest: Digest) -> Result<Self> {
        let engine = store.root().engine().await?;
        let id = store.store_id().clone();
        let opened = {
            let (engine, id) = (Arc::clone(&engine), id.clone());
            blocking(move || engine.open_source(&id, digest)).await?
        };
        let Some((size, source)) = opened else {
            return Err(crate::store::absent(&*engine, &id, digest).await);
        };
        let mut opened = Self {
            engine,
            store: id,
            digest,
            size,
            source: Arc::new(Source::Inline(Vec::new())),
            spare: Arc::default(),
        };
        opened.source = Arc::new(match source {
            ObjectSource::Inline(bytes) => {
                let actual = Digest::of(&bytes);
                if actual != digest {
                    return Err(corrupted(&opened.store, digest, actual));
                }
                Source::Inline(bytes)
            }
            ObjectSource::File { data, outboard } => match outboard {
                Some(outboard) => Source::file(data, outboard, size),
                None if tree::outboard_len(size) == 0 => Source::File {
                    data,
                    outboard: Box::new(Vec::new()),
                },
                None => return opened.rebuilt().await,
            },
        });
        Ok(opened)
    }

    /// Re-hashes the object, keeps the outboard of its bytes if they are
    /// intact and reopens it; [`StoreError::Corrupted`] if they are not.
    async fn rebuilt(self) -> Result<Self> {
        let (engine, store, digest) = (Arc::clone(&self.engine), self.store.clone(), self.digest);
        let built = blocking(move || engine.build_outboard(&store, digest)).await?;
        let Some((actual, staged)) = built else {
            return Err(crate::store::absent(&*self.engine, &self.store, digest).await);
        };
        if actual != digest {
            self.engine.discard(Staged::File(staged));
            return Err(corrupted(&self.store, digest, actual));
        }
        let change = Change::AddOutboard {
            store: self.store.clone(),
            digest,
            staged,
        };
        self.engine.apply(change).await?;
        let (engine, store) = (Arc::clone(&self.engine), self.store.clone());
        let reopened = blocking(move || engine.open_source(&store, digest)).await?;
        match reopened {
            Some((
                size,
                ObjectSource::File {
                    data,
                    outboard: Some(outboard),
                },
            )) => Ok(Self {
                size,
                source: Arc::new(Source::file(data, outboard, size)),
                ..self
            }),
            _ => Err(crate::store::absent(&*self.engine, &self.store, digest).await),
        }
    }

    /// Reads `range` (within the content), verified; returns the handle to
    /// use next (reopened if the outboard had to be rebuilt).
    async fn read(self, range: Range<u64>) -> (Self, Result<Vec<u8>>) {
        let mut opened = self;
        for attempt in 0..2 {
            if let Source::Inline(bytes) = &*opened.source {
                let bytes = bytes[range.start as usize..range.end as usize].to_vec();
                return (opened, Ok(bytes));
            }
            let handle = opened.clone();
            let range_copy = range.clone();
            let result = tokio::task::spawn_blocking(move || handle.read_file(range_copy)).await;
            let fault = match result
                .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
            {
                Ok(bytes) => return (opened, Ok(bytes)),
                Err(fault) => fault,
            };
            // A file shorter than its recorded size is damage too, not an
            // I/O failure.
            let fault = match fault {
                ReadFault::Io(source) if source.kind() == io::ErrorKind::UnexpectedEof => {
                    ReadFault::Mismatch
                }
                fault => fault,
            };
            match fault {
                ReadFault::Io(source) => {
                    let object = opened.object_name();
                    let error = io_error(&opened.store, "reading object", &object, source);
                    return (opened, Err(error));
                }
                // A mismatch: either the bytes or the outboard is damaged.
                // Re-hashing the whole object tells which.
                ReadFault::Mismatch if attempt == 0 => {
                    let fallback = opened.clone();
                    match opened.rebuilt().await {
                        Ok(reopened) => opened = reopened,
                        Err(error) => return (fallback, Err(error)),
                    }
                }
                ReadFault::Mismatch => break,
            }
        }
        // The bytes were intact and the outboard rebuilt, yet the read
        // still failed: the object changed while it was being read.
        let source = io::Error::other("the content changed while it was being read");
        let object = opened.object_name();
        let error = io_error(&opened.store, "reading object", &object, source);
        (opened, Err(error))
    }

    /// Reads and verifies `range` of a file object, one span of at most
    /// [`READ_WINDOW`] at a time, each fetched with one positioned read
    /// into the buffer that is returned, when the range covers whole
    /// groups (a reader's windows do).
    fn read_file(&self, range: Range<u64>) -> Result<Vec<u8>, ReadFault> {
        let Source::File { data, outboard } = &*self.source else {
            unreachable!("inline content is read in place");
        };
        let group = tree::GROUP_BYTES as u64;
        // A range within one span is returned in the span's own buffer.
        let len = range.end - range.start;
        let mut out = Vec::with_capacity(if len > READ_WINDOW { len as usize } else { 0 });
        let mut at = range.start;
        while at < range.end {
            // A span covers whole groups, so every group a piece needs lies
            // in it.
            let start = at - at % group;
            let end = (start + READ_WINDOW)
                .min(range.end.div_ceil(group) * group)
                .min(self.size);
            let span = Span {
                start,
                bytes: {
                    let mut bytes = self.buffer((end - start) as usize);
                    data.read_exact_at(&mut bytes, start)?;
                    bytes
                },
            };
            let piece_end = range.end.min(end);
            tree::read_verified(
                self.digest,
                self.size,
                &span,
                outboard.as_ref(),
                at..piece_end,
                &mut |_, _| Ok(()),
            )?;
            let piece = (at - start) as usize..(piece_end - start) as usize;
            if out.is_empty() && piece == (0..span.bytes.len()) && piece_end == range.end {
                return Ok(span.bytes);
            }
            out.extend_from_slice(&span.bytes[piece]);
            at = piece_end;
        }
        Ok(out)
    }
}

impl Opened {
    /// A buffer of `len` bytes, reused if the reader gave one back.
    fn buffer(&self, len: usize) -> Vec<u8> {
        let spare = self.spare.lock().map(|mut spare| spare.pop());
        match spare {
            Ok(Some(mut bytes)) => {
                bytes.resize(len, 0);
                bytes
            }
            _ => vec![0u8; len],
        }
    }

    /// Keeps a finished window's buffer for a later window.
    fn recycle(&self, bytes: Vec<u8>) {
        keep_spare(&self.spare, bytes);
    }
}

/// A stretch of an object's bytes read into memory with one call.
struct Span {
    start: u64,
    bytes: Vec<u8>,
}

impl tree::RandomAccess for Span {
    fn slice(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let from = usize::try_from(offset.checked_sub(self.start)?).ok()?;
        self.bytes.get(from..from.checked_add(len)?)
    }
}

fn corrupted(store: &StoreId, digest: Digest, actual: Digest) -> StoreError {
    StoreError::Corrupted {
        store: store.to_string(),
        reference: digest.to_hex(),
        actual: actual.to_hex(),
    }
}

/// A window being read and verified ahead of the reader.
enum Pending {
    /// One of the windows a blocking task reads one after another (see
    /// [`ContentReader::schedule`]); its bytes or its fault arrive here.
    Batched {
        range: Range<u64>,
        result: tokio::sync::oneshot::Receiver<Result<Vec<u8>, ReadFault>>,
    },
    /// Read on the path that tells damaged content from a failed read and
    /// rebuilds a wrong outboard ([`Opened::read`]): inline content, and a
    /// window whose batched read failed or was never made.
    Full(tokio::task::JoinHandle<(Opened, Result<Vec<u8>>)>),
}

impl Pending {
    /// Stops the window's read where it can: a full read's task is
    /// aborted; a batch stops at its next send, which fails once every
    /// receiver is gone.
    fn abort(self) {
        if let Pending::Full(task) = self {
            task.abort();
        }
    }
}

impl Drop for ContentReader {
    fn drop(&mut self) {
        for window in self.ahead.drain(..) {
            window.abort();
        }
    }
}

/// Verified, seekable reading of stored content; from
/// [`ContentStore::reader`]. Every byte is checked against the ref before
/// it is handed out: damaged content fails with an
/// [`io::ErrorKind::InvalidData`] error wrapping [`StoreError::Corrupted`],
/// before any byte of the damaged 16 KiB group. Reads ahead up to 2 MiB
/// in 256 KiB windows, verified on blocking threads in parallel.
pub struct ContentReader {
    size: u64,
    /// Where reading stops: the content's end, or a range's. Nothing past
    /// it is read ahead, so a small range costs only its own groups.
    end: u64,
    /// Offset of `buffer[0]` in the content.
    position: u64,
    buffer: Vec<u8>,
    /// How much of `buffer` has been handed out.
    consumed: usize,
    opened: Opened,
    /// Windows being read, in order; the first starts where `buffer` ends.
    ahead: VecDeque<Pending>,
    /// Where the next window to schedule starts.
    scheduled_to: u64,
    /// How many windows to keep in flight.
    read_ahead: usize,
}

impl ContentReader {
    fn new(opened: Opened, position: u64, end: u64) -> Self {
        Self {
            size: opened.size,
            end,
            position,
            buffer: Vec::new(),
            consumed: 0,
            opened,
            ahead: VecDeque::new(),
            scheduled_to: position,
            read_ahead: READ_AHEAD,
        }
    }

    /// Keeps at most `windows` windows of 256 KiB in flight (at least one;
    /// 8 by default), which bounds the memory an open reader holds. Fewer
    /// windows read more slowly: for hosts that keep many readers open.
    pub fn with_read_ahead(mut self, windows: usize) -> Self {
        self.read_ahead = windows.max(1);
        self
    }

    /// The content's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The offset the next read starts at.
    pub fn position(&self) -> u64 {
        self.position + self.consumed as u64
    }
}

impl ContentReader {
    /// Makes `buffer` hold bytes not yet handed out, waiting for the next
    /// verified window when it holds none; `false` at the end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            if self.consumed < self.buffer.len() {
                return Poll::Ready(Ok(true));
            }
            let next = self.position + self.buffer.len() as u64;
            if next >= self.end {
                return Poll::Ready(Ok(false));
            }
            self.schedule();
            let front = self.ahead.front_mut().expect("a window is scheduled");
            let bytes = match front {
                Pending::Batched { range, result } => match ready!(Pin::new(result).poll(cx)) {
                    Ok(Ok(bytes)) => bytes,
                    // A fault, or a batch that stopped at an earlier one:
                    // read this window again on the full path.
                    Ok(Err(_)) | Err(_) => {
                        let again = tokio::spawn(self.opened.clone().read(range.clone()));
                        *front = Pending::Full(again);
                        continue;
                    }
                },
                Pending::Full(task) => {
                    let finished = ready!(Pin::new(task).poll(cx));
                    let (opened, result) = finished
                        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
                    // The object may have been reopened (its outboard rebuilt).
                    self.opened = opened;
                    result.map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?
                }
            };
            self.ahead.pop_front();
            self.position = next;
            let finished = std::mem::replace(&mut self.buffer, bytes);
            self.opened.recycle(finished);
            self.consumed = 0;
        }
    }

    /// Starts reading the windows ahead that fit within `read_ahead`. The
    /// windows of a file go to blocking tasks in batches of up to
    /// [`WINDOWS_PER_TASK`] (fewer when fewer windows are kept ahead, so
    /// that two batches still overlap), each reading its windows in order
    /// and handing each over as soon as it is verified: a blocking thread
    /// is woken per batch rather than per window. A batch waits until
    /// there is room for all of it, unless nothing at all is ahead.
    fn schedule(&mut self) {
        let batch = WINDOWS_PER_TASK.min(self.read_ahead.div_ceil(2));
        loop {
            // More may be ahead than `read_ahead` allows, if it was lowered
            // while reading.
            let room = self.read_ahead.saturating_sub(self.ahead.len());
            if self.scheduled_to >= self.end || room == 0 {
                return;
            }
            if room < batch && !self.ahead.is_empty() {
                return;
            }
            if matches!(*self.opened.source, Source::Inline(_)) {
                let (start, end) = self.next_window();
                let window = tokio::spawn(self.opened.clone().read(start..end));
                self.ahead.push_back(Pending::Full(window));
                continue;
            }
            let mut windows = Vec::with_capacity(batch);
            while windows.len() < batch.min(room) && self.scheduled_to < self.end {
                let (start, end) = self.next_window();
                let (sender, result) = tokio::sync::oneshot::channel();
                windows.push((start..end, sender));
                self.ahead.push_back(Pending::Batched {
                    range: start..end,
                    result,
                });
            }
            let opened = self.opened.clone();
            tokio::task::spawn_blocking(move || {
                for (range, sender) in windows {
                    let read = opened.read_file(range);
                    let failed = read.is_err();
                    // The reader is gone, or a window failed: the windows
                    // after it are read again on the full path, if at all.
                    if sender.send(read).is_err() || failed {
                        return;
                    }
                }
            });
        }
    }

    /// The next window to schedule, as `(start, end)`.
    fn next_window(&mut self) -> (u64, u64) {
        let start = self.scheduled_to;
        let end = (start + READ_WINDOW).min(self.end);
        self.scheduled_to = end;
        (start, end)
    }

    /// The next verified piece, up to 256 KiB, handed over without a copy
    /// (the buffer it was read and checked in, given back for reuse when
    /// the piece is dropped); `None` at the end. For senders that pass
    /// buffers on, such as an HTTP body. Errors as for reads: damaged
    /// content fails before any byte of its 16 KiB group.
    pub async fn next_piece(&mut self) -> io::Result<Option<VerifiedPiece>> {
        if !std::future::poll_fn(|cx| self.poll_fill(cx)).await? {
            return Ok(None);
        }
        let piece = if self.consumed == 0 {
            std::mem::take(&mut self.buffer)
        } else {
            self.buffer.split_off(self.consumed)
        };
        self.position += (self.consumed + piece.len()) as u64;
        self.buffer.clear();
        self.consumed = 0;
        Ok(Some(VerifiedPiece {
            bytes: piece,
            spare: Arc::clone(&self.opened.spare),
        }))
    }

    /// The rest of the content as a stream of verified pieces (see
    /// [`ContentReader::next_piece`]), ending after the first error.
    pub fn into_pieces(self) -> impl futures_util::Stream<Item = io::Result<VerifiedPiece>> + Send {
        futures_util::stream::unfold(Some(self), |reader| async move {
            let mut reader = reader?;
            match reader.next_piece().await {
                Ok(Some(piece)) => Some((Ok(piece), Some(reader))),
                Ok(None) => None,
                Err(error) => Some((Err(error), None)),
            }
        })
    }
}

impl AsyncRead for ContentReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if ready!(this.poll_fill(cx))? {
            let available = &this.buffer[this.consumed..];
            let take = available.len().min(out.remaining());
            out.put_slice(&available[..take]);
            this.consumed += take;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for ContentReader {
    fn start_seek(self: Pin<&mut Self>, target: io::SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        let current = this.position();
        let target = match target {
            io::SeekFrom::Start(offset) => Some(offset),
            io::SeekFrom::End(delta) => this.size.checked_add_signed(delta),
            io::SeekFrom::Current(delta) => current.checked_add_signed(delta),
        };
        let target = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        // Keep the window if the target is inside it; otherwise start over
        // there, dropping the read-ahead.
        let window = this.position..this.position + this.buffer.len() as u64;
        if window.contains(&target) {
            this.consumed = (target - this.position) as usize;
        } else {
            this.position = target;
            this.buffer.clear();
            this.consumed = 0;
            for window in this.ahead.drain(..) {
                window.abort();
            }
            this.scheduled_to = target;
        }
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.position()))
    }
}
