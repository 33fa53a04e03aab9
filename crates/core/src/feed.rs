//! The change feed: every store's ordered, durable log of label changes,
//! read a page at a time ([`ContentStore::changes`]) or followed as it
//! grows ([`ContentStore::watch`]).
//!
//! The engines write the log: each label row that changes gets the
//! store's next sequence number in the transaction that changes it (see
//! `engine::ChangeRow`). One change that moves several labels at once
//! (`set_labels`, a sync) numbers them consecutively, in an order the
//! engine picks. Watching needs no table polling: a watcher reads
//! what is new, then waits on the engine's commit signal, which moves
//! within milliseconds of any commit by any process or host.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::stream::{BoxStream, Stream, StreamExt};

use crate::engine::{ChangeLog, ChangeRow, Engine};
use crate::error::{Result, StoreError};
use crate::names::ContentRef;
use crate::store::{ContentStore, LabelEntry};

/// The most entries one page of the change log holds; larger limits are
/// cut to it.
pub const MAX_CHANGES_PAGE: usize = 10_000;

/// One change to one label, as the store's change log keeps it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LabelChange {
    /// Its place in the store's log: 1 for the store's first label change,
    /// then one more for each, with no gaps.
    pub seq: u64,
    /// The label that changed.
    pub label: String,
    /// What the label named before (`None`: it did not exist).
    pub old: Option<ContentRef>,
    /// What it names after (`None`: it was removed).
    pub new: Option<ContentRef>,
    /// When the change was made, in milliseconds since the Unix epoch.
    pub time: i64,
    /// Who made it, when the handle that made it named an actor
    /// ([`ContentStore::by_actor`]).
    pub actor: Option<String>,
}

impl LabelChange {
    fn from_row(row: ChangeRow) -> Self {
        Self {
            seq: row.seq,
            label: row.label,
            old: row.old.map(ContentRef::from),
            new: row.new.map(ContentRef::from),
            time: row.at,
            actor: row.actor,
        }
    }

    /// When the change was made.
    pub fn system_time(&self) -> SystemTime {
        let millis = u64::try_from(self.time).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_millis(millis)
    }
}

/// A page of a store's change log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangePage {
    /// The changes after the sequence asked for, oldest first.
    pub changes: Vec<LabelChange>,
    /// The newest sequence the store has given (0: no change yet). When it
    /// is beyond the page's last change, more pages follow.
    pub last_seq: u64,
    /// The oldest sequence the log still holds (or will hold next, when it
    /// is empty): reading after anything older fails with
    /// [`StoreError::ChangesTrimmed`].
    pub oldest_kept: u64,
}

impl ContentStore {
    /// Up to `limit` changes (at most [`MAX_CHANGES_PAGE`]) to the store's
    /// labels after sequence `since`, oldest first; pass 0 for the first
    /// page and the last change's `seq` for the next. Fails with
    /// [`StoreError::ChangesTrimmed`] when changes right after `since` were
    /// trimmed by garbage collection (see [`crate::Options::change_retention`]),
    /// or when `since` is past the store's newest change (the store was
    /// removed and made again since, and its log started over).
    pub async fn changes(&self, since: u64, limit: usize) -> Result<ChangePage> {
        let engine = self.root().engine().await?;
        read_page(&*engine, self, since, limit.min(MAX_CHANGES_PAGE)).await
    }

    /// The store's newest change sequence (0: none yet): a watch started
    /// from it sees only what happens next.
    pub async fn last_change(&self) -> Result<u64> {
        let engine = self.root().engine().await?;
        Ok(engine.changes(self.store_id(), 0, 0).await?.last)
    }

    /// The past values of `label`, newest first: each change the store's
    /// log still holds for it (as far back as [`crate::Options::change_retention`]
    /// keeps), at most `limit`. A change whose `new` is `None` removed it.
    /// Follows the label's own entries (an index by label, or a chain of
    /// them): the cost grows with `limit`, not with the other labels'
    /// changes.
    pub async fn history(&self, label: &str, limit: usize) -> Result<Vec<LabelChange>> {
        crate::names::validate_label(label)?;
        let engine = self.root().engine().await?;
        let rows = engine
            .label_changes_before(self.store_id(), label, u64::MAX, limit)
            .await?;
        Ok(rows.into_iter().map(LabelChange::from_row).collect())
    }

    /// The labels starting with `prefix` as they were right after change
    /// `seq` (0: before the store's first change), in byte order. Each
    /// label's value then is what its first change after `seq` replaced,
    /// or, if it has not changed since, its value now. Fails with
    /// [`StoreError::ChangesTrimmed`] for a point older than what the log
    /// keeps; a point past the newest change is now. The content named
    /// may since have been collected by gc.
    pub async fn labels_at(&self, prefix: &str, seq: u64) -> Result<Vec<LabelEntry>> {
        Ok(self
            .values_at(prefix, seq)
            .await?
            .into_iter()
            .filter_map(|(label, (_, then))| {
                then.map(|content_ref| LabelEntry { label, content_ref })
            })
            .collect())
    }

    /// What `label` pointed at right after change `seq`, as
    /// [`ContentStore::labels_at`] reads it.
    pub async fn label_at(&self, label: &str, seq: u64) -> Result<Option<ContentRef>> {
        crate::names::validate_label(label)?;
        let engine = self.root().engine().await?;
        self.kept_point(&*engine, seq).await?;
        // The value now, then the label's first change after `seq`, read
        // after it: if there is none, nothing moved the label from `seq`
        // to that read, so the value now is the value then.
        let now = self.get_by_label(label).await?;
        let next = engine
            .label_change_after(self.store_id(), label, seq)
            .await?;
        Ok(match next {
            Some(change) => change.old.map(ContentRef::from),
            None => now,
        })
    }

    /// Puts the labels starting with `prefix` back as they were right
    /// after change `seq` ([`ContentStore::labels_at`]): every label that
    /// differs moves, in one transaction, only if none of them changed
    /// meanwhile (tried again a few times if one did). The moves are new
    /// changes in the log, so a revert is itself watchable, syncable and
    /// revertible. Returns the moves (made, or for `dry_run` to be made).
    /// Fails with [`StoreError::NotFound`], moving nothing, when content a
    /// label named then is no longer held.
    pub async fn revert_to(&self, prefix: &str, seq: u64, dry_run: bool) -> Result<Vec<Revert>> {
        self.revert_where(prefix, |_| true, seq, dry_run).await
    }

    /// [`ContentStore::revert_to`] for the one label `label`.
    pub async fn revert_label_to(
        &self,
        label: &str,
        seq: u64,
        dry_run: bool,
    ) -> Result<Vec<Revert>> {
        crate::names::validate_label(label)?;
        self.revert_where(label, |found| found == label, seq, dry_run)
            .await
    }

    /// Reverts the labels under `prefix` that `chosen` picks.
    async fn revert_where(
        &self,
        prefix: &str,
        chosen: impl Fn(&str) -> bool,
        seq: u64,
        dry_run: bool,
    ) -> Result<Vec<Revert>> {
        for _ in 0..REVERT_TRIES {
            let moves: Vec<Revert> = self
                .values_at(prefix, seq)
                .await?
                .into_iter()
                .filter(|(label, (now, then))| now != then && chosen(label))
                .map(|(label, (now, then))| Revert {
                    label,
                    from: now,
                    to: then,
                })
                .collect();
            if dry_run || moves.is_empty() {
                return Ok(moves);
            }
            let swaps: Vec<(String, Option<ContentRef>, Option<ContentRef>)> = moves
                .iter()
                .map(|m| (m.label.clone(), m.from.clone(), m.to.clone()))
                .collect();
            if self.compare_and_swap_labels(&swaps).await? {
                return Ok(moves);
            }
        }
        Err(StoreError::Contended {
            store: self.id().to_owned(),
            action: "reverting labels",
        })
    }

    /// The log's bounds, once `seq` is known to be a point the log still
    /// keeps; [`StoreError::ChangesTrimmed`] otherwise.
    pub(crate) async fn kept_point(&self, engine: &dyn Engine, seq: u64) -> Result<ChangeLog> {
        let bounds = engine.changes(self.store_id(), 0, 0).await?;
        if seq < bounds.trimmed_through {
            return Err(StoreError::ChangesTrimmed {
                store: self.id().to_owned(),
                since: seq,
                oldest: bounds.trimmed_through + 1,
            });
        }
        Ok(bounds)
    }

    /// For each label under `prefix` that exists now or did right after
    /// `seq`: its value now and its value then.
    async fn values_at(&self, prefix: &str, seq: u64) -> Result<BTreeMap<String, LabelThen>> {
        let engine = self.root().engine().await?;
        let bounds = self.kept_point(&*engine, seq).await?;
        // A point past the newest change is now.
        let seq = seq.min(bounds.last);
        // The labels now, then every change after `seq`, read after them:
        // a change the listing missed is in the log.
        let mut values: BTreeMap<String, LabelThen> = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .list_labels_page(prefix, after.as_deref(), HISTORY_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.label.clone());
            for entry in page {
                values.insert(
                    entry.label,
                    (Some(entry.content_ref.clone()), Some(entry.content_ref)),
                );
            }
        }
        let mut since = seq;
        let mut undone = std::collections::HashSet::new();
        loop {
            let page = read_page(&*engine, self, since, HISTORY_PAGE).await?;
            let Some(newest) = page.changes.last().map(|change| change.seq) else {
                break;
            };
            since = newest;
            for change in page.changes {
                if !change.label.starts_with(prefix) || !undone.insert(change.label.clone()) {
                    continue;
                }
                // The first change after `seq` replaced the value then.
                let entry = values.entry(change.label).or_insert((None, None));
                entry.1 = change.old;
            }
        }
        Ok(values)
    }

    /// Follows the changes to labels starting with `prefix` after sequence
    /// `since`: first those already made, then each new one soon after its
    /// commit (by this process, another process, or another host of a
    /// shared root). Each change comes once, in order; a watcher that
    /// stops and starts again from the last `seq` it handled misses
    /// nothing. A shared root's server going away (PostgreSQL killed or
    /// restarting) is waited out: the watch reads again, from where it
    /// was, until the server is back. The stream ends after yielding any
    /// other error (a trimmed log, a failing index), and never ends
    /// otherwise.
    pub fn watch(&self, prefix: &str, since: u64) -> Watch {
        let state = WatchState {
            store: self.clone(),
            prefix: prefix.to_owned(),
            since,
            ready: VecDeque::new(),
            signal: None,
            done: false,
            outage: OutageBackoff::default(),
        };
        Watch {
            inner: futures_util::stream::unfold(state, next_change).boxed(),
        }
    }
}

impl ContentStore {
    /// Resolves once the store's log holds a change after `since` (at
    /// once if it already does), or with the error that reading it met
    /// (a trimmed log, a failing index). Costs nothing while it waits: it
    /// wakes on the engine's commit signal, not on a timer.
    pub async fn wait_for_change(&self, since: u64) -> Result<()> {
        let engine = self.root().engine().await?;
        let mut commits = engine.commits();
        loop {
            commits.borrow_and_update();
            let page = read_page(&*engine, self, since, 1).await?;
            if !page.changes.is_empty() {
                return Ok(());
            }
            if commits.changed().await.is_err() {
                // The engine is gone: nothing will change any more.
                std::future::pending::<()>().await;
            }
        }
    }
}

async fn read_page(
    engine: &dyn Engine,
    store: &ContentStore,
    since: u64,
    limit: usize,
) -> Result<ChangePage> {
    let log = engine.changes(store.store_id(), since, limit).await?;
    // Before what is kept, or past the end (the store was removed and
    // made again, and its log started over): either way the log cannot
    // say what came after `since`.
    if since < log.trimmed_through || since > log.last {
        return Err(StoreError::ChangesTrimmed {
            store: store.id().to_owned(),
            since,
            oldest: log.trimmed_through + 1,
        });
    }
    Ok(ChangePage {
        changes: log.entries.into_iter().map(LabelChange::from_row).collect(),
        last_seq: log.last,
        oldest_kept: log.trimmed_through + 1,
    })
}

/// A store's changes as they happen: see [`ContentStore::watch`]. A
/// [`Stream`]; [`Watch::next`] reads it without one.
pub struct Watch {
    inner: BoxStream<'static, Result<LabelChange>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Watch {
    /// The next change, waiting for it if need be; `None` after an error
    /// ended the watch.
    pub async fn next(&mut self) -> Option<Result<LabelChange>> {
        self.inner.next().await
    }
}

impl Stream for Watch {
    type Item = Result<LabelChange>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// A label's value now and right after the point asked for.
type LabelThen = (Option<ContentRef>, Option<ContentRef>);

/// How many times a revert reads and tries again when labels it moves
/// change under it.
const REVERT_TRIES: usize = 5;

/// One label a revert moves.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Revert {
    /// The label.
    pub label: String,
    /// What it points at before the revert (`None`: absent).
    pub from: Option<ContentRef>,
    /// What it points at after (`None`: removed).
    pub to: Option<ContentRef>,
}

/// How many entries a history read takes from the log at once.
const HISTORY_PAGE: usize = 4_096;

/// How many entries a watcher reads at once.
const WATCH_PAGE: usize = 1_000;

/// The first and the longest wait before a watcher reads again while a
/// shared root's server is unreachable; the wait doubles in between.
const OUTAGE_RETRY_FIRST: Duration = Duration::from_millis(50);
const OUTAGE_RETRY_MAX: Duration = Duration::from_secs(2);

/// The wait between tries while a shared root's server is unreachable:
/// 50 ms, doubling up to 2 s. One per piece of work that waits out an
/// outage; [`OutageBackoff::reset`] once the server answers.
#[derive(Clone, Copy, Debug, Default)]
pub struct OutageBackoff {
    wait: Duration,
}

impl OutageBackoff {
    /// Waits before the next try, after `error` (an outage).
    pub async fn wait(&mut self, error: &StoreError) {
        self.wait = (self.wait * 2).clamp(OUTAGE_RETRY_FIRST, OUTAGE_RETRY_MAX);
        tracing::warn!(%error, retry_in = ?self.wait, "a server of the store root is unreachable");
        tokio::time::sleep(self.wait).await;
    }

    /// The server answered: the next outage starts with the shortest wait.
    pub fn reset(&mut self) {
        self.wait = Duration::ZERO;
    }
}

/// Runs `attempt` until it ends in anything but an outage of a shared
/// root's server ([`StoreError::is_outage`]), waiting between tries
/// ([`OutageBackoff`]). For work that must carry on where it was once the
/// server is back, such as a consumer of the change feed; it waits as long
/// as the outage lasts, so race it against a stop signal where one exists.
pub async fn through_outages<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut backoff = OutageBackoff::default();
    loop {
        match attempt().await {
            Err(error) if error.is_outage() => backoff.wait(&error).await,
            done => return done,
        }
    }
}

struct WatchState {
    store: ContentStore,
    prefix: String,
    /// The newest sequence read (matching the prefix or not).
    since: u64,
    /// Changes read and not yet yielded.
    ready: VecDeque<LabelChange>,
    signal: Option<(Arc<dyn Engine>, tokio::sync::watch::Receiver<u64>)>,
    done: bool,
    /// How long to wait for a server to come back.
    outage: OutageBackoff,
}

async fn next_change(mut state: WatchState) -> Option<(Result<LabelChange>, WatchState)> {
    loop {
        if let Some(change) = state.ready.pop_front() {
            return Some((Ok(change), state));
        }
        if state.done {
            return None;
        }
        match fill(&mut state).await {
            Ok(()) => state.outage.reset(),
            // A shared root's server down or restarting: wait it out and
            // read again from the same point, so that nothing is missed.
            Err(error) if error.is_outage() => state.outage.wait(&error).await,
            Err(error) => {
                state.done = true;
                return Some((Err(error), state));
            }
        }
    }
}

/// Reads what is new after `state.since`; if nothing is, waits for the
/// next commit first.
async fn fill(state: &mut WatchState) -> Result<()> {
    if state.signal.is_none() {
        let engine = state.store.root().engine().await?;
        let commits = engine.commits();
        state.signal = Some((engine, commits));
    }
    let (engine, commits) = state.signal.as_mut().expect("set above");
    // Marked seen before reading, so a commit landing after the read
    // wakes the wait below.
    commits.borrow_and_update();
    let page = read_page(&**engine, &state.store, state.since, WATCH_PAGE).await?;
    let Some(newest) = page.changes.last().map(|change| change.seq) else {
        if commits.changed().await.is_err() {
            // The engine is gone: nothing will change any more.
            std::future::pending::<()>().await;
        }
        return Ok(());
    };
    state.since = newest;
    state.ready.extend(
        page.changes
            .into_iter()
            .filter(|change| change.label.starts_with(&state.prefix)),
    );
    Ok(())
}
