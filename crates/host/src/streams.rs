//! The hand-written side of `theater:simple/store-streams`: content
//! written through a `content-writer` resource and read through a
//! `wasi:io` `input-stream`, range reads, label compare-and-swap and paged
//! listing. Access, limits and quotas are [`TheaterCtx`]'s, as for
//! `theater:simple/store`; errors become the interface's typed `error`.

use bytes::Bytes;
use theater_store::ContentReader;
use theater_store::{ContentRef, ContentStore, ContentWriter, ErrorKind, Event, StoreError};
use wasmtime::component::Resource;
use wasmtime_wasi::p2::{
    DynInputStream, DynPollable, InputStream, Pollable, StreamError, StreamResult,
};

use crate::TheaterCtxView;
use crate::bindings::theater::simple::store::ContentRef as WitRef;
use crate::bindings::theater::simple::store_streams::{
    self, ChangePage, Error, LabelChange, LabelSwap,
};
use crate::ctx::TheaterCtx;
use crate::error::HostError;
use crate::imports::{call, call_at, call_with_refs};
use crate::meter::StreamSlot;
use crate::policy::Access;
use crate::resources::WriterHandle;

/// How many 256 KiB windows a guest's reader verifies ahead: with the
/// piece it hands out, about 1 MiB of host memory per open reader.
const READER_WINDOWS_AHEAD: usize = 2;

/// The typed error, by the failure's kind ([`HostError::kind`], the one
/// classification the chain records too).
impl From<HostError> for Error {
    fn from(error: HostError) -> Self {
        let message = error.to_string();
        match error.kind() {
            ErrorKind::NotFound => Error::NotFound(message),
            ErrorKind::Corrupted => Error::Corrupted(message),
            ErrorKind::InvalidLabel => Error::InvalidLabel(message),
            ErrorKind::InvalidRef => Error::InvalidRef(message),
            ErrorKind::AccessDenied | ErrorKind::InvalidStoreId => Error::AccessDenied(message),
            ErrorKind::TooLarge => Error::TooLarge(message),
            ErrorKind::QuotaExceeded => Error::QuotaExceeded(message),
            ErrorKind::Trimmed => Error::Trimmed(message),
            _ => Error::Io(message),
        }
    }
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        HostError::from(error).into()
    }
}

fn to_core(content_ref: WitRef) -> ContentRef {
    ContentRef::new(content_ref.hash)
}

fn to_wit(content_ref: ContentRef) -> WitRef {
    WitRef {
        hash: content_ref.hash().to_owned(),
    }
}

/// A handle the guest passed that is not in the table: only a host bug can
/// cause this, so it traps.
fn missing(error: wasmtime::component::ResourceTableError) -> wasmtime::Error {
    wasmtime::Error::new(error)
}

impl store_streams::HostContentWriter for TheaterCtxView<'_> {
    async fn write(
        &mut self,
        writer: Resource<WriterHandle>,
        bytes: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let handle = self.table.get_mut(&writer).map_err(missing)?;
        let size = bytes.len() as u64;
        self.ctx.begin("content-writer.write", |op| Event {
            size: Some(size),
            ..call(op, handle.store.id())
        });
        let written = write_piece(self.ctx, handle, bytes).await;
        let recorded = self.ctx.end(written).await;
        if recorded.is_err() {
            // A piece the chain could not record is not kept either: the
            // stream is spent, as for any refused piece.
            spend(self.ctx, handle).await;
        }
        Ok(recorded.map_err(Error::from))
    }

    async fn bytes_written(&mut self, writer: Resource<WriterHandle>) -> wasmtime::Result<u64> {
        let handle = self.table.get(&writer).map_err(missing)?;
        Ok(handle
            .writer
            .as_ref()
            .map_or(0, ContentWriter::bytes_written))
    }

    async fn finish(
        &mut self,
        writer: Resource<WriterHandle>,
    ) -> wasmtime::Result<Result<WitRef, Error>> {
        let handle = self.table.delete(writer).map_err(missing)?;
        self.ctx
            .begin("content-writer.finish", |op| call(op, handle.store.id()));
        let finished = finish(self.ctx, handle, None).await;
        Ok(self.ctx.end(finished).await.map_err(Error::from))
    }

    async fn finish_at_label(
        &mut self,
        writer: Resource<WriterHandle>,
        label: String,
    ) -> wasmtime::Result<Result<WitRef, Error>> {
        let handle = self.table.delete(writer).map_err(missing)?;
        self.ctx.begin("content-writer.finish-at-label", |op| {
            call_at(op, handle.store.id(), &label)
        });
        let finished = finish(self.ctx, handle, Some(&label)).await;
        Ok(self.ctx.end(finished).await.map_err(Error::from))
    }

    async fn drop(&mut self, writer: Resource<WriterHandle>) -> wasmtime::Result<()> {
        let mut handle = self.table.delete(writer).map_err(missing)?;
        spend(self.ctx, &mut handle).await;
        Ok(())
    }
}

/// Reserves one piece on the actor's meter, then writes it. A refused
/// piece spends the writer: what it staged is removed and its reservation
/// given back.
async fn write_piece(
    ctx: &mut TheaterCtx,
    handle: &mut WriterHandle,
    bytes: Vec<u8>,
) -> Result<(), HostError> {
    let (Some(writer), Some(admitted)) = (handle.writer.as_mut(), handle.admitted.as_mut()) else {
        return Err(spent(&handle.store));
    };
    let size = bytes.len() as u64;
    let result = if bytes.len() > ctx.limits().max_content_bytes {
        Err(HostError::ContentTooLarge {
            store: handle.store.id().to_owned(),
            size,
            limit: ctx.limits().max_content_bytes as u64,
        })
    } else {
        // Each piece is a recorded call: refused, storing nothing, when
        // its event would not fit the actor's budget.
        match ctx.room_for_event(handle.store.id()) {
            Ok(()) => match ctx.reserve_piece(admitted, size).await {
                Ok(()) => ctx.within_deadline(writer.write_owned(bytes)).await,
                Err(refused) => Err(refused),
            },
            Err(refused) => Err(refused),
        }
    };
    if result.is_err() {
        // Nothing of a refused stream stays behind, before the guest
        // hears of the refusal.
        spend(ctx, handle).await;
    }
    result
}

/// Ends a writer's stream early: what it staged is removed and its
/// reservation given back. Later calls on it fail as spent.
async fn spend(ctx: &mut TheaterCtx, handle: &mut WriterHandle) {
    if let Some(writer) = handle.writer.take() {
        writer.abandon().await;
    }
    if let Some(admitted) = handle.admitted.take() {
        ctx.settle(admitted);
    }
}

async fn finish(
    ctx: &mut TheaterCtx,
    mut handle: WriterHandle,
    label: Option<&str>,
) -> Result<WitRef, HostError> {
    let (Some(writer), Some(mut admitted)) = (handle.writer.take(), handle.admitted.take()) else {
        return Err(spent(&handle.store));
    };
    let writer_size = writer.bytes_written();
    let finished = async {
        // A finish is recorded like any call: refused, storing nothing,
        // when its event would not fit the actor's budget.
        ctx.room_for_event(handle.store.id())?;
        if let Some(label) = label {
            ctx.reserve_label(&mut admitted, label)?;
        }
        // The writer writes through the admitted handle: the store quota
        // is checked as it commits, and what it added is counted.
        match label {
            Some(label) => ctx.within_deadline(writer.finish_at_label(label)).await,
            None => ctx.within_deadline(writer.finish()).await,
        }
    }
    .await;
    ctx.settle(admitted);
    let stored = finished?;
    ctx.note(|event| {
        event.refs.push(stored.content_ref.hash().to_owned());
        event.size = Some(writer_size);
    });
    Ok(to_wit(stored.content_ref))
}

fn spent(store: &ContentStore) -> HostError {
    HostError::Store(StoreError::Io {
        store: store.id().to_owned(),
        action: "writing content",
        path: "<content-writer>".into(),
        source: std::io::Error::other("this writer was refused or finished; open a new one"),
    })
}

/// Stored content as a `wasi:io` input-stream. Reads hand out the
/// buffers the [`ContentReader`] verified, without copying them: no task,
/// channel or copy between the guest and the reader, which reads ahead on
/// its own. The one copy left is into the guest's memory.
struct ContentStream {
    reader: ContentReader,
    /// The actor's open-stream slot, given back when the guest drops the
    /// stream.
    _slot: StreamSlot,
    /// Verified bytes not yet handed out.
    ready: Bytes,
    /// The end of the content, or the failure to report once `ready` is empty.
    end: Option<StreamError>,
}

impl ContentStream {
    fn new(reader: ContentReader, slot: StreamSlot) -> Self {
        Self {
            reader: reader.with_read_ahead(READER_WINDOWS_AHEAD),
            _slot: slot,
            ready: Bytes::new(),
            end: None,
        }
    }
}

#[async_trait::async_trait]
impl Pollable for ContentStream {
    async fn ready(&mut self) {
        if !self.ready.is_empty() || self.end.is_some() {
            return;
        }
        match self.reader.next_piece().await {
            Ok(None) => self.end = Some(StreamError::Closed),
            Ok(Some(piece)) => self.ready = Bytes::from_owner(piece),
            // A damaged group: its message names the store and the ref.
            Err(error) => {
                let message = match error.into_inner() {
                    Some(inner) => inner.to_string(),
                    None => "reading the content failed".to_owned(),
                };
                self.end = Some(StreamError::LastOperationFailed(wasmtime::Error::msg(
                    message,
                )));
            }
        }
    }
}

impl InputStream for ContentStream {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        if !self.ready.is_empty() {
            let take = size.min(self.ready.len());
            return Ok(self.ready.split_to(take));
        }
        match self.end.take() {
            None => Ok(Bytes::new()),
            // A failure is reported once; after it the stream is closed.
            Some(end) => {
                self.end = Some(StreamError::Closed);
                Err(end)
            }
        }
    }
}

impl store_streams::Host for TheaterCtxView<'_> {
    async fn open_writer(
        &mut self,
        store_id: String,
    ) -> wasmtime::Result<Result<Resource<WriterHandle>, Error>> {
        self.ctx.begin("open-writer", |op| call(op, &store_id));
        let opened = async {
            let store = self.ctx.open(&store_id, Access::ReadWrite)?;
            let slot = self.ctx.open_stream(&store)?;
            let admitted = self.ctx.reserve_stream(&store).await?;
            let writer = match self.ctx.within_deadline(admitted.store.writer()).await {
                Ok(writer) => writer,
                Err(error) => {
                    self.ctx.settle(admitted);
                    return Err(error);
                }
            };
            Ok::<_, HostError>(WriterHandle {
                store,
                admitted: Some(admitted),
                writer: Some(writer),
                _slot: slot,
            })
        };
        let opened = opened.await;
        match self.ctx.end(opened).await {
            Ok(handle) => Ok(Ok(self.table.push(handle)?)),
            Err(error) => Ok(Err(error.into())),
        }
    }

    async fn open_reader(
        &mut self,
        store_id: String,
        content_ref: WitRef,
    ) -> wasmtime::Result<Result<Resource<DynInputStream>, Error>> {
        self.ctx.begin("open-reader", |op| {
            call_with_refs(op, &store_id, None, &[&content_ref])
        });
        let opened = async {
            let store = self.ctx.open(&store_id, Access::ReadOnly)?;
            let slot = self.ctx.open_stream(&store)?;
            let content_ref = to_core(content_ref);
            let reader = self.ctx.within_deadline(store.reader(&content_ref)).await?;
            self.ctx.note(|event| event.size = Some(reader.size()));
            Ok((reader, slot))
        };
        let opened = opened.await;
        match self.ctx.end(opened).await {
            Ok((reader, slot)) => {
                let stream: DynInputStream = Box::new(ContentStream::new(reader, slot));
                Ok(Ok(self.table.push(stream)?))
            }
            Err(error) => Ok(Err(error.into())),
        }
    }

    async fn content_size(
        &mut self,
        store_id: String,
        content_ref: WitRef,
    ) -> wasmtime::Result<Result<u64, Error>> {
        self.ctx.begin("content-size", |op| {
            call_with_refs(op, &store_id, None, &[&content_ref])
        });
        let sized = async {
            let store = self.ctx.open(&store_id, Access::ReadOnly)?;
            let content_ref = to_core(content_ref);
            self.ctx
                .within_deadline(store.content_size(&content_ref))
                .await
        };
        let sized = sized.await;
        Ok(self.ctx.end(sized).await.map_err(Error::from))
    }

    async fn read_range(
        &mut self,
        store_id: String,
        content_ref: WitRef,
        offset: u64,
        len: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, Error>> {
        self.ctx.begin("read-range", |op| Event {
            size: Some(len),
            ..call_with_refs(op, &store_id, None, &[&content_ref])
        });
        let read = async {
            let store = self.ctx.open(&store_id, Access::ReadOnly)?;
            let content_ref = to_core(content_ref);
            let limits = self.ctx.limits();
            let limit = (limits.max_content_bytes as u64).min(limits.max_memory_bytes as u64);
            if len > limit {
                return Err(HostError::RangeTooLarge {
                    store: store.id().to_owned(),
                    reference: content_ref.to_string(),
                    len,
                    limit,
                });
            }
            self.ctx
                .within_deadline(store.read_range(&content_ref, offset, len))
                .await
        };
        let read = read.await;
        Ok(self.ctx.end(read).await.map_err(Error::from))
    }

    async fn compare_and_swap(
        &mut self,
        store_id: String,
        label: String,
        expected: Option<WitRef>,
        new: Option<WitRef>,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let refs: Vec<&WitRef> = expected.iter().chain(new.iter()).collect();
        self.ctx.begin("compare-and-swap", |op| {
            call_with_refs(op, &store_id, Some(&label), &refs)
        });
        let swapped = async {
            theater_store::validate_label(&label)?;
            let store = self.ctx.open(&store_id, Access::ReadWrite)?;
            let labels = if new.is_some() {
                vec![label.as_str()]
            } else {
                Vec::new()
            };
            let admitted = self.ctx.admit(&store, &[], &labels).await?;
            let (expected, new) = (expected.map(to_core), new.map(to_core));
            let swapped = self
                .ctx
                .within_deadline(admitted.store.compare_and_swap_label(
                    &label,
                    expected.as_ref(),
                    new.as_ref(),
                ))
                .await;
            self.ctx.settle(admitted);
            swapped
        };
        let swapped = swapped.await;
        Ok(self.ctx.end(swapped).await.map_err(Error::from))
    }

    async fn compare_and_swap_labels(
        &mut self,
        store_id: String,
        swaps: Vec<LabelSwap>,
    ) -> wasmtime::Result<Result<bool, Error>> {
        // The event names the first label; the refs of a long batch would
        // not fit one event.
        let first = swaps.first().map(|swap| swap.label.clone());
        self.ctx.begin("compare-and-swap-labels", |op| {
            call_with_refs(op, &store_id, first.as_deref(), &[])
        });
        let swapped = async {
            let store = self.ctx.open(&store_id, Access::ReadWrite)?;
            self.ctx.admit_batch(&store, swaps.len())?;
            for swap in &swaps {
                theater_store::validate_label(&swap.label)?;
            }
            // Each label that will point somewhere may add its index space
            // and a log entry; what the swap really added is charged.
            let labels: Vec<&str> = swaps
                .iter()
                .filter(|swap| swap.new.is_some())
                .map(|swap| swap.label.as_str())
                .collect();
            let admitted = self.ctx.admit(&store, &[], &labels).await?;
            let moves: Vec<_> = swaps
                .into_iter()
                .map(|swap| {
                    (
                        swap.label,
                        swap.expected.map(to_core),
                        swap.new.map(to_core),
                    )
                })
                .collect();
            let swapped = self
                .ctx
                .within_deadline(admitted.store.compare_and_swap_labels(&moves))
                .await;
            self.ctx.settle(admitted);
            swapped
        };
        let swapped = swapped.await;
        Ok(self.ctx.end(swapped).await.map_err(Error::from))
    }

    async fn list_labels_page(
        &mut self,
        store_id: String,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<(String, WitRef)>, Error>> {
        self.ctx.begin("list-labels-page", |op| call(op, &store_id));
        let listed = async {
            let store = self.ctx.open(&store_id, Access::ReadOnly)?;
            let limits = self.ctx.limits();
            let limit = (limit as usize).min(limits.max_list_entries);
            let page = self
                .ctx
                .within_deadline(store.list_labels_page(&prefix, after.as_deref(), limit))
                .await?;
            let bytes = page.iter().map(|entry| entry.label.len() + 64).sum();
            self.ctx
                .admit_listing(&store, page.len(), bytes, "labels")?;
            Ok::<_, HostError>(
                page.into_iter()
                    .map(|entry| (entry.label, to_wit(entry.content_ref)))
                    .collect(),
            )
        };
        let listed = listed.await;
        Ok(self.ctx.end(listed).await.map_err(Error::from))
    }

    async fn read_changes(
        &mut self,
        store_id: String,
        prefix: String,
        since: u64,
        limit: u32,
    ) -> wasmtime::Result<Result<ChangePage, Error>> {
        self.ctx.begin("read-changes", |op| call(op, &store_id));
        let read = async {
            let store = self.ctx.open(&store_id, Access::ReadOnly)?;
            let limits = self.ctx.limits();
            let limit = (limit as usize).min(limits.max_list_entries);
            let page = self
                .ctx
                .within_deadline(store.changes(since, limit))
                .await?;
            let next = page.changes.last().map_or(since, |change| change.seq);
            let changes: Vec<LabelChange> = page
                .changes
                .into_iter()
                .filter(|change| change.label.starts_with(&prefix))
                .map(wit_change)
                .collect();
            let bytes = changes.iter().map(change_bytes).sum();
            self.ctx
                .admit_listing(&store, changes.len(), bytes, "changes")?;
            Ok::<_, HostError>(ChangePage {
                changes,
                next,
                last_seq: page.last_seq,
            })
        };
        let read = read.await;
        Ok(self.ctx.end(read).await.map_err(Error::from))
    }

    async fn label_history(
        &mut self,
        store_id: String,
        label: String,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<LabelChange>, Error>> {
        self.ctx
            .begin("label-history", |op| call_at(op, &store_id, &label));
        let read = async {
            let store = self.ctx.open(&store_id, Access::ReadOnly)?;
            let limit = (limit as usize).min(self.ctx.limits().max_list_entries);
            let history = self
                .ctx
                .within_deadline(store.history(&label, limit))
                .await?;
            let changes: Vec<LabelChange> = history.into_iter().map(wit_change).collect();
            let bytes = changes.iter().map(change_bytes).sum();
            self.ctx
                .admit_listing(&store, changes.len(), bytes, "versions")?;
            Ok::<_, HostError>(changes)
        };
        let read = read.await;
        Ok(self.ctx.end(read).await.map_err(Error::from))
    }

    async fn get_label_at(
        &mut self,
        store_id: String,
        label: String,
        seq: u64,
    ) -> wasmtime::Result<Result<Option<WitRef>, Error>> {
        self.ctx
            .begin("get-label-at", |op| call_at(op, &store_id, &label));
        let read = async {
            let store = self.ctx.open(&store_id, Access::ReadOnly)?;
            let then = self
                .ctx
                .within_deadline(store.label_at(&label, seq))
                .await?;
            Ok::<_, HostError>(then.map(to_wit))
        };
        let read = read.await;
        Ok(self.ctx.end(read).await.map_err(Error::from))
    }

    async fn watch_changes(
        &mut self,
        store_id: String,
        since: u64,
    ) -> wasmtime::Result<Result<Resource<DynPollable>, Error>> {
        self.ctx.begin("watch-changes", |op| call(op, &store_id));
        let opened = async {
            let store = self.ctx.open(&store_id, Access::ReadOnly)?;
            let slot = self.ctx.open_stream(&store)?;
            Ok::<_, HostError>(ChangeWaiter {
                store,
                since,
                deadline: self.ctx.deadline(),
                _slot: slot,
            })
        };
        let opened = opened.await;
        match self.ctx.end(opened).await {
            Ok(waiter) => {
                let waiter = self.table.push(waiter)?;
                Ok(Ok(wasmtime_wasi::p2::subscribe(self.table, waiter)?))
            }
            Err(error) => Ok(Err(error.into())),
        }
    }
}

/// A change log entry as the interface carries it.
fn wit_change(change: theater_store::LabelChange) -> LabelChange {
    LabelChange {
        seq: change.seq,
        label: change.label,
        old: change.old.map(to_wit),
        new: change.new.map(to_wit),
        time: u64::try_from(change.time).unwrap_or(0),
        actor: change.actor,
    }
}

/// What a listing limit counts for one change: its label and actor, two
/// refs and the numbers.
fn change_bytes(change: &LabelChange) -> usize {
    change.label.len() + change.actor.as_ref().map_or(0, String::len) + 160
}

/// What `watch-changes` hands out (as a pollable): ready once the store's
/// log holds a change after `since`, or the actor's time is up.
struct ChangeWaiter {
    store: ContentStore,
    since: u64,
    deadline: Option<std::time::Instant>,
    /// Held while the pollable lives: it counts as an open stream.
    _slot: StreamSlot,
}

#[async_trait::async_trait]
impl Pollable for ChangeWaiter {
    async fn ready(&mut self) {
        // An error (a trimmed log, a failing index) is ready too: the
        // actor's next read says what it is.
        let changed = self.store.wait_for_change(self.since);
        match self.deadline {
            Some(deadline) => {
                let _ = tokio::time::timeout_at(deadline.into(), changed).await;
            }
            None => {
                let _ = changed.await;
            }
        }
    }
}
