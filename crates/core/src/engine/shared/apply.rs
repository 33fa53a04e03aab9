//! Applying changes: each `Change` as PostgreSQL statements in a
//! transaction, row-only changes batched, labels, removals, quarantine and
//! chain appends.

use std::collections::HashSet;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use deadpool_postgres::GenericClient;

use super::Inner;
use super::index::{self, LabelWrite, PostgresError};
use crate::engine::apply::over_quota;
use crate::engine::layout;
use crate::engine::{ChainAppend, ChainTip, Change, Expect, Staged, unix_now};
use crate::error::{Result, StoreError};
use crate::links::Links;
use crate::names::{Digest, StoreId};
use crate::stats::{StoreQuota, StoreStats};

impl Inner {
    pub(super) fn now_and_fresh_after(&self) -> (i64, i64) {
        let now = unix_now();
        (now, now.saturating_sub(self.refresh_after))
    }

    pub(super) async fn apply(self: &Arc<Self>, change: Change) -> Result<bool> {
        let mut client = self.client().await?;
        let applied = self.apply_on(&mut client, change).await;
        if let Err(StoreError::Service { .. }) = applied {
            // A failure may leave a session lock or a transaction behind.
            drop(deadpool_postgres::Object::take(client));
        }
        applied
    }

    /// Applies changes, one transaction per batch of those that only write
    /// rows; the rest (which move bytes) one by one. A batch that fails
    /// applies none of its changes, and each of them gets the error.
    pub(super) async fn apply_all(self: &Arc<Self>, changes: Vec<Change>) -> Vec<Result<bool>> {
        let mut answers: Vec<Option<Result<bool>>> = changes.iter().map(|_| None).collect();
        let (rows_only, others): (Vec<_>, Vec<_>) = changes
            .into_iter()
            .enumerate()
            .partition(|(_, change)| writes_rows_only(change));
        let mut rows_only = rows_only.into_iter().peekable();
        while rows_only.peek().is_some() {
            let batch: Vec<(usize, Change)> = rows_only.by_ref().take(self.batch).collect();
            let indexes: Vec<usize> = batch.iter().map(|(index, _)| *index).collect();
            // A batch PostgreSQL rolled back for a deadlock or a
            // serialization failure is run again (each try a copy).
            let mut attempt = 1;
            let applied = loop {
                let copy = batch
                    .iter()
                    .map(|(index, change)| (*index, copy_row_change(change)))
                    .collect();
                match self.apply_batch(copy).await {
                    Err(error) if attempt < MAX_TRIES && is_transient(&error) => {
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                    }
                    applied => break applied,
                }
            };
            match applied {
                Ok(results) => {
                    for (index, result) in results {
                        answers[index] = Some(result);
                    }
                }
                // Nothing of the batch was applied: each change says why.
                Err(error) => {
                    let message = error.to_string();
                    let mut error = Some(error);
                    for index in indexes {
                        answers[index] =
                            Some(Err(error.take().unwrap_or_else(|| StoreError::Service {
                                root: self.location.display.clone(),
                                service: "PostgreSQL",
                                at: self.location.postgres_at.clone(),
                                action: "writing a batch",
                                source: message.clone().into(),
                            })));
                    }
                }
            }
        }
        for (index, change) in others {
            answers[index] = Some(self.apply(change).await);
        }
        answers
            .into_iter()
            .map(|answer| answer.expect("every change answered"))
            .collect()
    }

    /// Row-only changes in one transaction, sent together.
    pub(super) async fn apply_batch(
        self: &Arc<Self>,
        batch: Vec<(usize, Change)>,
    ) -> Result<Vec<(usize, Result<bool>)>> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await;
        let transaction = self.index(transaction, "starting a transaction")?;
        let (now, fresh_after) = self.now_and_fresh_after();
        // Small objects that name distinct objects and labels go in one
        // statement; the rest (repeats, registrations, label writes) one
        // by one after it, sent together.
        let mut objects = HashSet::new();
        let mut labels = HashSet::new();
        let (together, alone): (Vec<_>, Vec<_>) =
            batch.into_iter().partition(|(_, change)| match change {
                Change::AddObject {
                    store,
                    digest,
                    staged: Staged::Inline(_),
                    label,
                    ..
                } => {
                    objects.insert((store.clone(), *digest))
                        && label
                            .as_ref()
                            .is_none_or(|label| labels.insert((store.clone(), label.clone())))
                }
                _ => false,
            });
        let mut answers = Vec::with_capacity(together.len() + alone.len());
        if !together.is_empty() {
            let rows: Vec<index::NewObject<'_>> = together
                .iter()
                .filter_map(|(_, change)| match change {
                    Change::AddObject {
                        store,
                        digest,
                        size,
                        staged: Staged::Inline(bytes),
                        label,
                        links,
                    } => Some((store, *digest, *size, &bytes[..], label.as_deref(), links)),
                    _ => None,
                })
                .collect();
            let added = index::add_objects(&transaction, &rows, (now, fresh_after)).await;
            let added = self.index(added, "writing rows")?;
            answers.extend(
                together
                    .iter()
                    .map(|(index, _)| *index)
                    .zip(added.into_iter().map(Ok)),
            );
        }
        let pending = alone.into_iter().map(|(index, change)| {
            let transaction = &transaction;
            async move {
                (
                    index,
                    self.apply_row_change(transaction, change, now, fresh_after)
                        .await,
                )
            }
        });
        let results = futures_util::future::join_all(pending).await;
        for (index, result) in results {
            answers.push((index, self.index(result, "writing rows")?));
        }
        let committed = transaction.commit().await;
        self.index(committed, "committing")?;
        Ok(answers)
    }

    /// A change that writes rows only (see [`writes_rows_only`]).
    pub(super) async fn apply_row_change(
        &self,
        client: &impl GenericClient,
        change: Change,
        now: i64,
        fresh_after: i64,
    ) -> Result<Result<bool>, tokio_postgres::Error> {
        match change {
            Change::CreateStore { store } => {
                Ok(Ok(index::ensure_store(client, &store, now).await?))
            }
            Change::AddObject {
                store,
                digest,
                size,
                staged: Staged::Inline(bytes),
                label,
                links,
            } => {
                let new = index::add_object(
                    client,
                    &store,
                    digest,
                    size,
                    Some(&bytes),
                    label.as_deref(),
                    &links,
                    (now, fresh_after),
                )
                .await?;
                Ok(Ok(new))
            }
            Change::SetLabel {
                store,
                label,
                target,
                expect,
            } => {
                let expected = expected_target(expect);
                let written = index::set_label(client, &store, &label, target, expected).await?;
                Ok(label_answer(written, &store, target))
            }
            other => unreachable!("not a row-only change: {other:?}"),
        }
    }

    /// Applies one change on `client`.
    pub(super) async fn apply_on(
        self: &Arc<Self>,
        client: &mut deadpool_postgres::Object,
        change: Change,
    ) -> Result<bool> {
        let (now, fresh_after) = self.now_and_fresh_after();
        if writes_rows_only(&change) {
            // Run again (a copy each try) when PostgreSQL rolled the write
            // back for a deadlock or a serialization failure.
            let mut attempt = 1;
            loop {
                let applied = self
                    .apply_row_change(&*client, copy_row_change(&change), now, fresh_after)
                    .await;
                match self.index(applied, "writing rows") {
                    Err(error) if attempt < MAX_TRIES && is_transient(&error) => {
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                    }
                    applied => return applied?,
                }
            }
        }
        match change {
            Change::AddObject {
                store,
                digest,
                size,
                staged: Staged::File(path),
                label,
                links,
            } => {
                let _turn = self.publishing_turn(&store, digest).await;
                let object = (digest, size, &*path);
                let published = self
                    .publish_file_alone(client, &store, object, label.as_deref(), &links)
                    .await;
                let new = match published {
                    Ok(new) => new,
                    Err(error) => {
                        layout::remove_staged(&path);
                        return Err(error);
                    }
                };
                // Bytes this host just hashed are a verified copy.
                if !self.cache.admit(&store, digest, &path) {
                    layout::remove_staged(&path);
                }
                Ok(new)
            }
            Change::AddObject { .. } | Change::CreateStore { .. } | Change::SetLabel { .. } => {
                unreachable!("row-only changes are applied above")
            }
            Change::SetLinks {
                store,
                digest,
                targets,
            } => {
                let transaction = client.transaction().await;
                let transaction = self.index(transaction, "starting a transaction")?;
                let held = index::set_links(&transaction, &store, digest, &targets).await;
                let held = self.index(held, "recording links")?;
                let committed = transaction.commit().await;
                self.index(committed, "committing")?;
                Ok(held)
            }
            Change::SetLabels {
                store,
                labels,
                expected,
            } => self.set_labels(client, &store, labels, expected).await,
            Change::RemoveObject {
                store,
                digest,
                referrers,
                listed_stored_at,
                log_end,
            } => {
                self.remove_object(
                    client,
                    &store,
                    digest,
                    &referrers,
                    listed_stored_at,
                    log_end,
                )
                .await
            }
            Change::RemoveUnindexed {
                store,
                digest,
                cutoff,
            } => self.remove_unindexed(client, &store, digest, cutoff).await,
            Change::QuarantineObject { store, digest } => {
                self.quarantine(client, &store, digest).await
            }
            Change::RemoveLabels { store, limit } => {
                let removed = index::delete_labels(&*client, &store, limit).await;
                Ok(self.index(removed, "removing labels")? > 0)
            }
            Change::AddOutboard {
                store,
                digest,
                staged,
            } => {
                if self.cache.files.is_present(&store, digest) {
                    self.cache.files.place_outboard(&store, &staged, digest);
                }
                layout::remove_staged(&staged);
                Ok(true)
            }
            Change::WithinQuota {
                quota,
                change,
                growth,
            } => match self
                .bounded_statement(&*client, quota, *change, &growth)
                .await
            {
                Ok(answer) => answer,
                // Anything but a small object or a label: in a transaction.
                Err(change) => {
                    let change = Change::WithinQuota {
                        quota,
                        change: Box::new(change),
                        growth,
                    };
                    self.in_transaction(client, change).await
                }
            },
            change @ Change::Record { .. } => self.in_transaction(client, change).await,
            Change::SetChainHead {
                store,
                label,
                head,
                expected,
            } => {
                let transaction = client.transaction().await;
                let transaction = self.index(transaction, "starting a transaction")?;
                let locked = transaction
                    .execute(
                        "SELECT 1 FROM pg_advisory_xact_lock($1)",
                        &[&index::chain_lock(&store, &label)],
                    )
                    .await;
                self.index(locked, "locking chain head")?;
                let current = index::label(&transaction, &store, &label).await;
                let current = self.index(current, "reading chain head")?;
                if current.map(|row| row.head) != expected {
                    return Ok(false);
                }
                if let Some(sealed) = head.sealed {
                    let held = index::object(&transaction, &store, sealed, false).await;
                    if self.index(held, "looking up chain segment")?.is_none() {
                        return Err(not_found(&store, Some(sealed)));
                    }
                }
                let registered = index::ensure_store(&transaction, &store, unix_now()).await;
                self.index(registered, "registering store")?;
                let moved = index::set_chain_head(&transaction, &store, &label, &head).await;
                self.index(moved, "writing chain head")?;
                let committed = transaction.commit().await;
                self.index(committed, "committing")?;
                Ok(true)
            }
            Change::AdoptFile { .. } => Err(StoreError::InvalidRoot {
                root: self.location.display.clone(),
                reason: "re-indexing content files rebuilds a local root's index; a shared \
                         root's index is PostgreSQL's (restore it from PostgreSQL's backups)"
                    .into(),
            }),
            Change::ByActor { actor, change } => {
                let named = client
                    .execute("SELECT set_config('theater.actor', $1, false)", &[&&*actor])
                    .await;
                self.index(named, "naming the actor")?;
                let applied = Box::pin(self.apply_on(client, *change)).await;
                if !matches!(applied, Err(StoreError::Service { .. })) {
                    let cleared = client
                        .execute("SELECT set_config('theater.actor', '', false)", &[])
                        .await;
                    self.index(cleared, "clearing the actor")?;
                }
                applied
            }
            Change::TrimChanges {
                store,
                before,
                keep_last,
            } => {
                let trimmed = index::trim_changes(&*client, &store, before, keep_last).await;
                Ok(self.index(trimmed, "trimming the change log")? > 0)
            }
            Change::RemoveEmptyStore { store, cutoff } => {
                let removed = index::delete_empty_store(&*client, &store, cutoff).await;
                if !self.index(removed, "removing store")? {
                    return Ok(false);
                }
                self.cache.files.remove_store_files(&store)?;
                Ok(true)
            }
        }
    }

    pub(super) async fn set_labels(
        &self,
        client: &mut deadpool_postgres::Object,
        store: &StoreId,
        labels: Vec<(String, Option<Digest>)>,
        expected: Option<Vec<Option<Digest>>>,
    ) -> Result<bool> {
        let transaction = client.transaction().await;
        let transaction = self.index(transaction, "starting a transaction")?;
        // Dropping the transaction rolls every label back.
        if !self
            .set_labels_in(&transaction, store, labels, expected)
            .await?
        {
            return Ok(false);
        }
        let committed = transaction.commit().await;
        self.index(committed, "committing")?;
        Ok(true)
    }

    /// [`Change::SetLabels`] inside `transaction`. On `false` (an
    /// expectation failed) some labels may have been written: the caller
    /// rolls the transaction (or its savepoint) back.
    async fn set_labels_in(
        &self,
        transaction: &deadpool_postgres::Transaction<'_>,
        store: &StoreId,
        labels: Vec<(String, Option<Digest>)>,
        expected: Option<Vec<Option<Digest>>>,
    ) -> Result<bool> {
        let now = unix_now();
        let registered = index::ensure_store(transaction, store, now).await;
        self.index(registered, "registering store")?;
        let names: std::collections::HashSet<&str> =
            labels.iter().map(|(name, _)| name.as_str()).collect();
        if names.len() == labels.len() {
            // Distinct names: a few statements for the whole set.
            let written = index::set_labels(transaction, store, &labels, expected.as_deref()).await;
            return match self.index(written, "writing labels")? {
                Ok(written) => Ok(written),
                Err(missing) => Err(not_found(store, Some(missing))),
            };
        }
        let writes = labels.iter().enumerate().map(|(index, (label, target))| {
            let expected = expected.as_ref().map(|expected| expected[index]);
            index::set_label(transaction, store, label, *target, expected)
        });
        let written = futures_util::future::join_all(writes).await;
        for (write, (_, target)) in written.into_iter().zip(&labels) {
            match self.index(write, "writing labels")? {
                LabelWrite::Written => {}
                LabelWrite::ExpectationFailed => return Ok(false),
                LabelWrite::TargetMissing => return Err(not_found(store, *target)),
            }
        }
        Ok(true)
    }

    /// Runs `work` holding the object's lock exclusively (a session lock,
    /// kept across the commit and the deletion of bytes that follows).
    pub(super) async fn exclusively<T>(
        &self,
        client: &mut deadpool_postgres::Object,
        store: &StoreId,
        digest: Digest,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T>,
    ) -> Result<T> {
        let key = index::object_lock(store, digest);
        let locked = client
            .execute("SELECT 1 FROM pg_advisory_lock($1)", &[&key])
            .await;
        self.index(locked, "locking object")?;
        let result = work(client).await?;
        let unlocked = client
            .execute("SELECT 1 FROM pg_advisory_unlock($1)", &[&key])
            .await;
        self.index(unlocked, "unlocking object")?;
        Ok(result)
    }

    /// Garbage collection of one object: the row goes first (only if still
    /// as old as listed and unlabelled), then the bytes, all under the
    /// exclusive lock.
    pub(super) async fn remove_object(
        &self,
        client: &mut deadpool_postgres::Object,
        store: &StoreId,
        digest: Digest,
        referrers: &[Digest],
        listed_stored_at: i64,
        log_end: u64,
    ) -> Result<bool> {
        self.exclusively(client, store, digest, async |client| {
            let transaction = client.transaction().await;
            let transaction = self.index(transaction, "starting a transaction")?;
            let removed = index::remove_unreachable(
                &transaction,
                store,
                digest,
                referrers,
                listed_stored_at,
                log_end,
            )
            .await;
            let removed = self.index(removed, "removing object")?;
            let committed = transaction.commit().await;
            self.index(committed, "committing")?;
            match removed {
                None => Ok(false),
                Some(inline) => {
                    self.cache.forget(store, digest);
                    if !inline {
                        let deleted = self.objects.delete(&self.objects.key(store, digest)).await;
                        self.object_store(deleted, "removing object")?;
                    }
                    Ok(true)
                }
            }
        })
        .await
    }

    pub(super) async fn remove_unindexed(
        &self,
        client: &mut deadpool_postgres::Object,
        store: &StoreId,
        digest: Digest,
        cutoff: SystemTime,
    ) -> Result<bool> {
        self.exclusively(client, store, digest, async |client| {
            let held = index::object(&*client, store, digest, false).await;
            if self.index(held, "looking up object")?.is_some() {
                return Ok(false);
            }
            let key = self.objects.key(store, digest);
            let modified = self.objects.modified(&key).await;
            match self.object_store(modified, "looking up object")? {
                Some(modified) if modified < cutoff => {
                    let deleted = self.objects.delete(&key).await;
                    self.object_store(deleted, "removing unindexed object")?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
        .await
    }

    /// Moves damaged bytes aside and forgets the object, unless its bytes
    /// are intact again (stored anew since they were found damaged).
    pub(super) async fn quarantine(
        &self,
        client: &mut deadpool_postgres::Object,
        store: &StoreId,
        digest: Digest,
    ) -> Result<bool> {
        self.exclusively(client, store, digest, async |client| {
            let held = index::object(&*client, store, digest, true).await;
            let Some(held) = self.index(held, "looking up object")? else {
                return Ok(false);
            };
            let key = self.objects.key(store, digest);
            let in_objects = held.inline.is_none();
            let bytes = match held.inline {
                Some(bytes) => Some(bytes),
                None => {
                    let fetched = self.objects.get(&key).await;
                    self.object_store(fetched, "reading object")?
                }
            };
            let quarantined = match bytes {
                Some(bytes) if Digest::of(&bytes) == digest => return Ok(false),
                Some(bytes) => {
                    let moved = self.objects.quarantine(store, digest, bytes).await;
                    self.object_store(moved, "quarantining object")?;
                    true
                }
                None => false,
            };
            let forgotten = index::forget_object(&*client, store, digest).await;
            self.index(forgotten, "forgetting object")?;
            self.cache.forget(store, digest);
            if in_objects && quarantined {
                let deleted = self.objects.delete(&key).await;
                self.object_store(deleted, "removing quarantined object")?;
            }
            Ok(quarantined)
        })
        .await
    }

    /// [`Change::Record`] inside `transaction`: the change (if any) and
    /// one event appended to the chain, holding the chain's lock, so that
    /// appends never fork it.
    async fn record_in(
        self: &Arc<Self>,
        transaction: &mut deadpool_postgres::Transaction<'_>,
        change: Option<Box<Change>>,
        append: ChainAppend,
    ) -> Result<bool> {
        let ChainAppend {
            store,
            head_label,
            build,
        } = append;
        let locked = transaction
            .execute(
                "SELECT 1 FROM pg_advisory_xact_lock($1)",
                &[&index::chain_lock(&store, &head_label)],
            )
            .await;
        self.index(locked, "locking chain")?;
        let applied = match change {
            None => true,
            Some(change) => Box::pin(self.apply_within(transaction, *change)).await?,
        };
        let (now, fresh_after) = self.now_and_fresh_after();
        let head = index::label(&*transaction, &store, &head_label).await;
        let head = self.index(head, "reading chain head")?;
        if head.is_none() {
            // The chain's first event may be the store's first row.
            let created = index::ensure_store(&*transaction, &store, now).await;
            self.index(created, "registering store")?;
        }
        let link = build(ChainTip { head, applied })?;
        if let Some(segment) = &link.sealed {
            let stored = index::add_object(
                &*transaction,
                &store,
                Digest::of(segment),
                segment.len() as u64,
                Some(segment),
                None,
                &Links::default(),
                (now, fresh_after),
            )
            .await;
            self.index(stored, "storing chain segment")?;
        }
        let moved = index::set_chain_head(&*transaction, &store, &head_label, &link.head).await;
        self.index(moved, "moving chain head")?;
        Ok(applied)
    }

    /// A change that carries others (a recorded write, a write within a
    /// quota) in a transaction of its own.
    async fn in_transaction(
        self: &Arc<Self>,
        client: &mut deadpool_postgres::Object,
        change: Change,
    ) -> Result<bool> {
        let transaction = client.transaction().await;
        let mut transaction = self.index(transaction, "starting a transaction")?;
        let applied = self.apply_within(&mut transaction, change).await?;
        let committed = transaction.commit().await;
        self.index(committed, "committing")?;
        Ok(applied)
    }

    /// A small object or a label written under `quota` in one statement,
    /// which locks the store's row, writes, and refuses (undoing itself)
    /// if the write grew the store past the quota (`theater_…_within`);
    /// `Err(change)` hands any other change back.
    async fn bounded_statement(
        &self,
        client: &impl GenericClient,
        quota: StoreQuota,
        change: Change,
        growth: &AtomicU64,
    ) -> std::result::Result<Result<bool>, Change> {
        let times = self.now_and_fresh_after();
        let (store, answered) = match change {
            Change::AddObject {
                store,
                digest,
                size,
                staged: Staged::Inline(bytes),
                label,
                links,
            } => {
                let object = (
                    &store,
                    digest,
                    size,
                    Some(&bytes[..]),
                    label.as_deref(),
                    &links,
                );
                let added = index::add_object_within(client, quota, object, times).await;
                let answered = added.map(|added| added.map(|(new, grew)| (Ok(new), grew)));
                (store, answered)
            }
            Change::SetLabel {
                store,
                label,
                target,
                expect,
            } => {
                let expected = expected_target(expect);
                let written =
                    index::set_label_within(client, quota, &store, &label, target, expected).await;
                let answered = written.map(|written| {
                    written.map(|(written, grew)| (label_answer(written, &store, target), grew))
                });
                (store, answered)
            }
            other => return Err(other),
        };
        Ok(match self.index(answered, "writing rows") {
            Err(error) => Err(error),
            Ok(Err(over)) => Err(StoreError::QuotaExceeded {
                store: store.to_string(),
                footprint: over.footprint,
                objects: over.objects,
                labels: over.labels,
                quota_bytes: quota.bytes,
                quota_objects: quota.objects,
                adds: over.adds,
            }),
            Ok(Ok((answer, grew))) => {
                if answer.is_ok() {
                    growth.fetch_add(grew, Ordering::Relaxed);
                }
                answer
            }
        })
    }

    /// [`Change::WithinQuota`] inside `transaction`: a small object or a
    /// label in one statement (see [`Inner::bounded_statement`]); anything
    /// else with the store's row locked and its totals read, the change
    /// applied, the totals read again. A refusal is an error, on which the
    /// caller drops (rolls back) the transaction. A large object that
    /// would not fit if new is refused before its upload, so that a
    /// refused write leaves no bytes in S3 for gc to find.
    async fn bounded_in(
        self: &Arc<Self>,
        transaction: &mut deadpool_postgres::Transaction<'_>,
        quota: StoreQuota,
        change: Change,
        growth: Arc<AtomicU64>,
    ) -> Result<bool> {
        let change = match self
            .bounded_statement(&*transaction, quota, change, &growth)
            .await
        {
            Ok(answer) => return answer,
            Err(change) => change,
        };
        let Some(store) = change.store().cloned() else {
            return Box::pin(self.apply_within(transaction, change)).await;
        };
        let locked = index::store_stats_locked(&*transaction, &store).await;
        let before = match self.index(locked, "reading the store's totals")? {
            Some(before) => before,
            // A store's first write registers it first, so that its row is
            // there to lock (a racing first write waits for this one).
            None => {
                let registered = index::ensure_store(&*transaction, &store, unix_now()).await;
                self.index(registered, "registering store")?;
                let locked = index::store_stats_locked(&*transaction, &store).await;
                self.index(locked, "reading the store's totals")?
                    .unwrap_or_default()
            }
        };
        if let Change::AddObject {
            digest,
            size,
            staged: Staged::File(path),
            ..
        } = &change
        {
            let with_it = StoreStats {
                objects: before.objects + 1,
                bytes: before.bytes.saturating_add(*size),
                ..before
            };
            if quota.refuses(&before, &with_it) {
                let held = index::object(&*transaction, &store, *digest, false).await;
                if self.index(held, "looking up object")?.is_none() {
                    layout::remove_staged(path);
                    return Err(over_quota(&store, quota, &before, &with_it));
                }
            }
        }
        let applied = Box::pin(self.apply_within(transaction, change)).await?;
        let after = index::store_stats(&*transaction, &store).await;
        let after = self.index(after, "reading the store's totals")?;
        if quota.refuses(&before, &after) {
            return Err(over_quota(&store, quota, &before, &after));
        }
        growth.fetch_add(
            after.footprint().saturating_sub(before.footprint()),
            Ordering::Relaxed,
        );
        Ok(applied)
    }

    /// A change that a recorded write or a write within a quota carries,
    /// applied inside their `transaction`. A refusal is an error, on which
    /// the caller rolls the transaction back.
    async fn apply_within(
        self: &Arc<Self>,
        transaction: &mut deadpool_postgres::Transaction<'_>,
        change: Change,
    ) -> Result<bool> {
        let (now, fresh_after) = self.now_and_fresh_after();
        match change {
            change @ (Change::CreateStore { .. }
            | Change::SetLabel { .. }
            | Change::AddObject {
                staged: Staged::Inline(_),
                ..
            }) => {
                let applied = self
                    .apply_row_change(&*transaction, change, now, fresh_after)
                    .await;
                self.index(applied, "writing rows")?
            }
            Change::AddObject {
                store,
                digest,
                size,
                staged: Staged::File(path),
                label,
                links,
            } => {
                let object = (digest, size, &*path);
                let published = self
                    .publish_file(transaction, &store, object, label.as_deref(), &links)
                    .await;
                layout::remove_staged(&path);
                published
            }
            Change::SetLabels {
                store,
                labels,
                expected,
            } => {
                // A savepoint: a failed expectation undoes only these labels.
                let savepoint = transaction.transaction().await;
                let savepoint = self.index(savepoint, "starting a savepoint")?;
                if !self
                    .set_labels_in(&savepoint, &store, labels, expected)
                    .await?
                {
                    return Ok(false);
                }
                let released = savepoint.commit().await;
                self.index(released, "releasing a savepoint")?;
                Ok(true)
            }
            Change::Record { change, append } => self.record_in(transaction, change, append).await,
            Change::WithinQuota {
                quota,
                change,
                growth,
            } => self.bounded_in(transaction, quota, *change, growth).await,
            other => unreachable!("only writes are carried by a record or a quota: {other:?}"),
        }
    }
}

/// Changes that only write rows: applied in one round trip each, and
/// batched into shared transactions by `apply_all`.
pub(super) fn writes_rows_only(change: &Change) -> bool {
    matches!(
        change,
        Change::CreateStore { .. }
            | Change::SetLabel { .. }
            | Change::AddObject {
                staged: Staged::Inline(_),
                ..
            }
    )
}

/// A label write's expectation as `index::set_label` takes it: `None` to
/// write unconditionally, `Some(target)` for a compare-and-swap.
fn expected_target(expect: Expect) -> Option<Option<Digest>> {
    match expect {
        Expect::Anything => None,
        Expect::Exactly(expected) => Some(expected),
    }
}

/// What a label write answers (see `Change::SetLabel`).
fn label_answer(written: LabelWrite, store: &StoreId, target: Option<Digest>) -> Result<bool> {
    match written {
        LabelWrite::Written => Ok(true),
        LabelWrite::ExpectationFailed => Ok(false),
        LabelWrite::TargetMissing => Err(not_found(store, target)),
    }
}

pub(super) fn not_found(store: &StoreId, target: Option<Digest>) -> StoreError {
    StoreError::NotFound {
        store: store.to_string(),
        reference: target.map(Digest::to_hex).unwrap_or_default(),
    }
}

/// How many times a write PostgreSQL rolled back for a deadlock or a
/// serialization failure is tried in all.
const MAX_TRIES: u32 = 5;

/// The wait before try `attempt + 1`: a few milliseconds, doubling.
fn backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis(2u64 << attempt.min(8))
}

/// Whether PostgreSQL refused the write only because of what ran beside
/// it (a deadlock, a serialization failure): it rolled the write back
/// whole, and the same write may succeed now.
pub(super) fn is_transient(error: &StoreError) -> bool {
    let StoreError::Service { source, .. } = error else {
        return false;
    };
    let Some(PostgresError(error)) = source.downcast_ref::<PostgresError>() else {
        return false;
    };
    error.code().is_some_and(|code| {
        *code == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
            || *code == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// A copy of a change that only writes rows (see [`writes_rows_only`]),
/// to try it again: such changes carry no files, and inline content is
/// shared.
pub(super) fn copy_row_change(change: &Change) -> Change {
    match change {
        Change::CreateStore { store } => Change::CreateStore {
            store: store.clone(),
        },
        Change::SetLabel {
            store,
            label,
            target,
            expect,
        } => Change::SetLabel {
            store: store.clone(),
            label: label.clone(),
            target: *target,
            expect: *expect,
        },
        Change::AddObject {
            store,
            digest,
            size,
            staged: Staged::Inline(bytes),
            label,
            links,
        } => Change::AddObject {
            store: store.clone(),
            digest: *digest,
            size: *size,
            staged: Staged::Inline(std::sync::Arc::clone(bytes)),
            label: label.clone(),
            links: links.clone(),
        },
        other => unreachable!("not a row-only change: {other:?}"),
    }
}
