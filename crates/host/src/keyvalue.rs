//! `wasi:keyvalue@0.2.0-draft2` (`store`, `atomics`, `batch`) served from
//! the content store: a bucket is a store, a key is a label, a value is
//! content. Values are therefore deduplicated and verified on every read,
//! `atomics.swap` is label compare-and-swap (linearizable across
//! processes), and everything obeys the same grants, limits, quotas and
//! event chain as `theater:simple/store`.
//!
//! Numbers kept by `increment` are decimal text (`-12`, `0`, `42`): a
//! value that is not one is refused, never reinterpreted.
//!
//! Shaped like wasmtime-wasi-keyvalue: the context is the actor's
//! [`TheaterCtx`] reached through [`TheaterView`], and
//! [`add_to_linker_async`] wires the imports into any linker.

use theater_store::{AtMost, ContentRef, ContentStore, ErrorKind, Event, validate_label};
use wasmtime::component::{Linker, Resource, ResourceTable};

use crate::bindings::keyvalue::wasi::keyvalue::{atomics, batch, store};
use crate::ctx::TheaterCtx;
use crate::error::HostError;
use crate::imports::call;
use crate::policy::Access;
use crate::resources::{Bucket, Cas};
use crate::{HasTheaterView, TheaterCtxView, TheaterView, wasi_table_view};

use store::{Error, KeyResponse};

/// Keys per `list-keys` page (fewer when the listing limits are lower).
const KEYS_PER_PAGE: usize = 1000;

/// The longest decimal text of an i64 (`-9223372036854775808`).
const MAX_NUMBER_BYTES: u64 = 20;

/// How often `increment` retries when other writers keep changing the key.
const MAX_INCREMENT_ATTEMPTS: usize = 1000;

/// Adds `wasi:keyvalue/store`, `atomics` and `batch` to `linker`, served
/// from the [`TheaterCtx`] that `T`'s [`TheaterView`] gives
/// (an engine with async support, as for [`crate::add_to_linker_async`]).
pub fn add_to_linker_async<T: TheaterView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasTheaterView>(linker, wasi_table_view::<T>)?;
    atomics::add_to_linker::<T, HasTheaterView>(linker, wasi_table_view::<T>)?;
    batch::add_to_linker::<T, HasTheaterView>(linker, wasi_table_view::<T>)
}

impl From<HostError> for Error {
    fn from(error: HostError) -> Self {
        // The store's own kind first: a bucket id that could not be a
        // store is `no-such-store` here, not a refusal.
        let kind = match &error {
            HostError::Store(store) => store.kind(),
            other => other.kind(),
        };
        match kind {
            ErrorKind::AccessDenied => Error::AccessDenied,
            ErrorKind::InvalidStoreId => Error::NoSuchStore,
            ErrorKind::InvalidLabel => Error::Other(format!("invalid key: {error}")),
            _ => Error::Other(error.to_string()),
        }
    }
}

/// A handle the guest passed that is not in the table: only a host bug can
/// cause this, so it traps.
fn missing(error: wasmtime::component::ResourceTableError) -> wasmtime::Error {
    wasmtime::Error::new(error)
}

/// The store of an opened bucket.
fn bucket_store<'t>(
    table: &'t ResourceTable,
    bucket: &Resource<Bucket>,
) -> wasmtime::Result<&'t ContentStore> {
    Ok(&table.get(bucket).map_err(missing)?.store)
}

/// The event of a keyvalue call (`function` is its full name, such as
/// `wasi:keyvalue/store.get`).
fn kv_call(function: &str, bucket: &str, key: Option<&str>) -> Event {
    Event {
        label: key.map(str::to_owned),
        ..call(function, bucket)
    }
}

impl TheaterCtx {
    /// The value of `key`, read within the actor's limits.
    async fn value(
        &mut self,
        store: &ContentStore,
        key: &str,
    ) -> Result<Option<Vec<u8>>, HostError> {
        let read = store.get_label_at_most(key, self.read_limit());
        let Some((target, found)) = self.within_deadline(read).await? else {
            return Ok(None);
        };
        let value = self.admit_content(store, &target, found)?;
        self.note(|event| {
            event.refs.push(target.hash().to_owned());
            event.size = Some(value.len() as u64);
        });
        Ok(Some(value))
    }

    /// Stores `value` and points `key` at it only if `key` still points
    /// at `expected`; returns whether it did. A swap already lost when it
    /// starts stores nothing. One lost between storing and swapping (another
    /// writer came in between) leaves its value unlabelled, for gc, and
    /// charged, since it takes space until then.
    async fn swap_value(
        &mut self,
        store: &ContentStore,
        key: &str,
        expected: Option<&ContentRef>,
        value: Vec<u8>,
    ) -> Result<bool, HostError> {
        validate_label(key)?;
        let current = self.within_deadline(store.get_by_label(key)).await?;
        if current.as_ref() != expected {
            return Ok(false);
        }
        let admitted = self.admit(store, &[&value], &[key]).await?;
        let bounded = &admitted.store;
        let swapped = async {
            let stored = self.within_deadline(bounded.write(value, None)).await?;
            let new = Some(&stored.content_ref);
            self.within_deadline(bounded.compare_and_swap_label(key, expected, new))
                .await
        }
        .await;
        self.settle(admitted);
        swapped
    }

    async fn increment(
        &mut self,
        store: &ContentStore,
        key: &str,
        delta: i64,
    ) -> Result<i64, HostError> {
        validate_label(key)?;
        for _ in 0..MAX_INCREMENT_ATTEMPTS {
            let current = self.within_deadline(store.get_by_label(key)).await?;
            let value = match &current {
                None => 0,
                Some(target) => {
                    // A number needs at most 20 bytes: a longer value is
                    // refused without being read.
                    let read = store.get_at_most(target, MAX_NUMBER_BYTES);
                    match self.within_deadline(read).await? {
                        AtMost::Content(bytes) => {
                            parse_number(&bytes).ok_or_else(|| not_a_number(store, key))?
                        }
                        AtMost::TooLarge { .. } => return Err(not_a_number(store, key)),
                    }
                }
            };
            let sum = value
                .checked_add(delta)
                .ok_or_else(|| HostError::BadValue {
                    store: store.id().to_owned(),
                    key: key.to_owned(),
                    reason: format!(
                        "it holds {value}, and adding {delta} overflows a 64-bit integer"
                    ),
                })?;
            if self
                .swap_value(store, key, current.as_ref(), sum.to_string().into_bytes())
                .await?
            {
                return Ok(sum);
            }
        }
        Err(HostError::Contended {
            store: store.id().to_owned(),
            label: key.to_owned(),
            attempts: MAX_INCREMENT_ATTEMPTS,
        })
    }

    async fn get_many(
        &mut self,
        store: &ContentStore,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, HostError> {
        self.admit_batch(store, keys.len())?;
        // The values together must fit what one read may return: each is
        // read with at most what is left of that.
        let limit = self.read_limit();
        let mut total = 0u64;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            let read = store.get_label_at_most(&key, limit - total);
            let Some((target, found)) = self.within_deadline(read).await? else {
                values.push(None);
                continue;
            };
            let value = match found {
                AtMost::Content(value) => value,
                AtMost::TooLarge { size } => {
                    let amount = total.saturating_add(size);
                    return Err(batch_too_large(store, "bytes", amount, limit));
                }
            };
            total += value.len() as u64;
            self.note(|event| event.refs.push(target.hash().to_owned()));
            values.push(Some((key, value)));
        }
        Ok(values)
    }

    async fn set_many(
        &mut self,
        store: &ContentStore,
        pairs: Vec<(String, Vec<u8>)>,
    ) -> Result<(), HostError> {
        self.admit_batch(store, pairs.len())?;
        let bytes: usize = pairs.iter().map(|(_, value)| value.len()).sum();
        let limit = self.limits().max_content_bytes;
        if bytes > limit {
            return Err(batch_too_large(store, "bytes", bytes as u64, limit as u64));
        }
        for (key, _) in &pairs {
            validate_label(key)?;
        }
        // The values are stored first, unlabelled (the grace period keeps
        // them), then every key moves in one index transaction. What was
        // stored is charged even if the move fails: it takes space until
        // gc takes it.
        let values: Vec<&[u8]> = pairs.iter().map(|(_, value)| &value[..]).collect();
        let keys: Vec<&str> = pairs.iter().map(|(key, _)| &key[..]).collect();
        let admitted = self.admit(store, &values, &keys).await?;
        let bounded = &admitted.store;
        let result = async {
            let mut labels = Vec::with_capacity(pairs.len());
            for (key, value) in pairs {
                let stored = self.within_deadline(bounded.write(value, None)).await?;
                labels.push((key, Some(stored.content_ref)));
            }
            self.within_deadline(bounded.set_labels(&labels)).await
        }
        .await;
        self.settle(admitted);
        result
    }

    async fn delete_many(
        &mut self,
        store: &ContentStore,
        keys: Vec<String>,
    ) -> Result<(), HostError> {
        self.admit_batch(store, keys.len())?;
        for key in &keys {
            validate_label(key)?;
        }
        let labels: Vec<(String, Option<ContentRef>)> =
            keys.into_iter().map(|key| (key, None)).collect();
        self.within_deadline(store.set_labels(&labels)).await
    }
}

fn batch_too_large(store: &ContentStore, what: &'static str, amount: u64, limit: u64) -> HostError {
    HostError::BatchTooLarge {
        store: store.id().to_owned(),
        what,
        amount,
        limit,
    }
}

fn not_a_number(store: &ContentStore, key: &str) -> HostError {
    HostError::BadValue {
        store: store.id().to_owned(),
        key: key.to_owned(),
        reason: "it does not hold a decimal integer, so it cannot be incremented".to_owned(),
    }
}

/// A value `increment` can add to: decimal text of a signed 64-bit integer.
fn parse_number(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

impl store::Host for TheaterCtxView<'_> {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, Error>> {
        self.ctx
            .begin("wasi:keyvalue/store.open", |op| call(op, &identifier));
        // The bucket keeps a plain handle: this call's event stays here.
        let opened = self.ctx.store_handle(&identifier).and_then(|store| {
            self.ctx.grant(&store, Access::ReadOnly)?;
            Ok(store)
        });
        match self.ctx.end(opened).await {
            Ok(store) => Ok(Ok(self.table.push(Bucket { store })?)),
            Err(error) => Ok(Err(error.into())),
        }
    }
}

impl store::HostBucket for TheaterCtxView<'_> {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let bucket = bucket_store(self.table, &bucket)?;
        self.ctx.begin("wasi:keyvalue/store.get", |op| {
            kv_call(op, bucket.id(), Some(&key))
        });
        let result = match self.ctx.grant(bucket, Access::ReadOnly) {
            Ok(store) => self.ctx.value(&store, &key).await,
            Err(error) => Err(error),
        };
        Ok(self.ctx.end(result).await.map_err(Error::from))
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let bucket = bucket_store(self.table, &bucket)?;
        self.ctx.begin("wasi:keyvalue/store.set", |op| {
            kv_call(op, bucket.id(), Some(&key))
        });
        let result = match self.ctx.grant(bucket, Access::ReadWrite) {
            Ok(_) => self
                .ctx
                .write(bucket.id(), value, Some(&key))
                .await
                .map(drop),
            Err(error) => Err(error),
        };
        Ok(self.ctx.end(result).await.map_err(Error::from))
    }

    async fn delete(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        let bucket = bucket_store(self.table, &bucket)?;
        self.ctx.begin("wasi:keyvalue/store.delete", |op| {
            kv_call(op, bucket.id(), Some(&key))
        });
        let result = match self.ctx.grant(bucket, Access::ReadWrite) {
            Ok(store) => self.ctx.within_deadline(store.remove_label(&key)).await,
            Err(error) => Err(error),
        };
        Ok(self.ctx.end(result).await.map_err(Error::from))
    }

    async fn exists(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let bucket = bucket_store(self.table, &bucket)?;
        self.ctx.begin("wasi:keyvalue/store.exists", |op| {
            kv_call(op, bucket.id(), Some(&key))
        });
        let result = match self.ctx.grant(bucket, Access::ReadOnly) {
            Ok(store) => self
                .ctx
                .within_deadline(store.get_by_label(&key))
                .await
                .map(|target| target.is_some()),
            Err(error) => Err(error),
        };
        Ok(self.ctx.end(result).await.map_err(Error::from))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<KeyResponse, Error>> {
        let bucket = bucket_store(self.table, &bucket)?;
        self.ctx.begin("wasi:keyvalue/store.list-keys", |op| {
            kv_call(op, bucket.id(), None)
        });
        let result = async {
            let store = self.ctx.grant(bucket, Access::ReadOnly)?;
            let limit = KEYS_PER_PAGE.min(self.ctx.limits().max_list_entries);
            let page = self
                .ctx
                .within_deadline(store.list_labels_page("", cursor.as_deref(), limit))
                .await?;
            let bytes = page.iter().map(|entry| entry.label.len()).sum();
            self.ctx.admit_listing(&store, page.len(), bytes, "keys")?;
            let cursor = (page.len() == limit)
                .then(|| page.last().map(|entry| entry.label.clone()))
                .flatten();
            Ok(KeyResponse {
                keys: page.into_iter().map(|entry| entry.label).collect(),
                cursor,
            })
        }
        .await;
        Ok(self.ctx.end(result).await.map_err(Error::from))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket).map_err(missing)?;
        Ok(())
    }
}

impl atomics::Host for TheaterCtxView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, Error>> {
        let bucket = bucket_store(self.table, &bucket)?;
        self.ctx.begin("wasi:keyvalue/atomics.increment", |op| {
            kv_call(op, bucket.id(), Some(&key))
        });
        let result = match self.ctx.grant(bucket, Access::ReadWrite) {
            Ok(store) => self.ctx.increment(&store, &key, delta).await,
            Err(error) => Err(error),
        };
        Ok(self.ctx.end(result).await.map_err(Error::from))
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let handle = self.table.get(&cas).map_err(missing)?;
        let (bucket, key, expected) = (
            handle.bucket.clone(),
            handle.key.clone(),
            handle.expected.clone(),
        );
        self.ctx.begin("wasi:keyvalue/atomics.swap", |op| {
            kv_call(op, bucket.id(), Some(&key))
        });
        let result = match self.ctx.grant(&bucket, Access::ReadWrite) {
            Ok(store) => {
                self.ctx
                    .swap_value(&store, &key, expected.as_ref(), value)
                    .await
            }
            Err(error) => Err(error),
        };
        match self.ctx.end(result).await {
            Ok(true) => {
                self.table.delete(cas).map_err(missing)?;
                Ok(Ok(()))
            }
            // Lost the race: the handle now remembers the winner's value.
            Ok(false) => {
                let current = match self.ctx.grant(&bucket, Access::ReadOnly) {
                    Ok(store) => self.ctx.within_deadline(store.get_by_label(&key)).await,
                    Err(error) => Err(error),
                };
                match current {
                    Ok(current) => {
                        self.table.get_mut(&cas).map_err(missing)?.expected = current;
                        Ok(Err(atomics::CasError::CasFailed(cas)))
                    }
                    Err(error) => {
                        self.table.delete(cas).map_err(missing)?;
                        Ok(Err(atomics::CasError::StoreError(error.into())))
                    }
                }
            }
            Err(error) => {
                self.table.delete(cas).map_err(missing)?;
                Ok(Err(atomics::CasError::StoreError(error.into())))
            }
        }
    }
}

impl atomics::HostCas for TheaterCtxView<'_> {
    async fn new(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<Cas>, Error>> {
        let bucket = bucket_store(self.table, &bucket)?.clone();
        self.ctx.begin("wasi:keyvalue/atomics.cas.new", |op| {
            kv_call(op, bucket.id(), Some(&key))
        });
        let result = async {
            validate_label(&key)?;
            let store = self.ctx.grant(&bucket, Access::ReadOnly)?;
            self.ctx.within_deadline(store.get_by_label(&key)).await
        }
        .await;
        match self.ctx.end(result).await {
            Ok(expected) => Ok(Ok(self.table.push(Cas {
                bucket,
                key,
                expected,
            })?)),
            Err(error) => Ok(Err(error.into())),
        }
    }

    async fn current(
        &mut self,
        cas: Resource<Cas>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let handle = self.table.get(&cas).map_err(missing)?;
        let (bucket, key, expected) = (
            handle.bucket.clone(),
            handle.key.clone(),
            handle.expected.clone(),
        );
        self.ctx.begin("wasi:keyvalue/atomics.cas.current", |op| {
            kv_call(op, bucket.id(), Some(&key))
        });
        let result = async {
            let store = self.ctx.grant(&bucket, Access::ReadOnly)?;
            let Some(expected) = expected else {
                return Ok(None);
            };
            Ok(Some(self.ctx.read_within_limits(&store, &expected).await?))
        }
        .await;
        Ok(self.ctx.end(result).await.map_err(Error::from))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas).map_err(missing)?;
        Ok(())
    }
}

impl batch::Host for TheaterCtxView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<(String, Vec<u8>)>>, Error>> {
        let bucket = bucket_store(self.table, &bucket)?;
        self.ctx.begin("wasi:keyvalue/batch.get-many", |op| {
            kv_call(op, bucket.id(), None)
        });
        let result = match self.ctx.grant(bucket, Access::ReadOnly) {
            Ok(store) => self.ctx.get_many(&store, keys).await,
            Err(error) => Err(error),
        };
        Ok(self.ctx.end(result).await.map_err(Error::from))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let bucket = bucket_store(self.table, &bucket)?;
        self.ctx.begin("wasi:keyvalue/batch.set-many", |op| {
            kv_call(op, bucket.id(), None)
        });
        let result = match self.ctx.grant(bucket, Access::ReadWrite) {
            Ok(store) => self.ctx.set_many(&store, key_values).await,
            Err(error) => Err(error),
        };
        Ok(self.ctx.end(result).await.map_err(Error::from))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let bucket = bucket_store(self.table, &bucket)?;
        self.ctx.begin("wasi:keyvalue/batch.delete-many", |op| {
            kv_call(op, bucket.id(), None)
        });
        let result = match self.ctx.grant(bucket, Access::ReadWrite) {
            Ok(store) => self.ctx.delete_many(&store, keys).await,
            Err(error) => Err(error),
        };
        Ok(self.ctx.end(result).await.map_err(Error::from))
    }
}
