//! Reads of the past: a store as it was at a point of its change log
//! ([`ContentStore::at`]), named by a sequence number or a time.

use std::time::SystemTime;

use crate::error::{Result, StoreError};
use crate::names::ContentRef;
use crate::store::{ContentStore, LabelEntry};

/// A point in a store's change log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// Right after the change with this sequence number (0: before the
    /// store's first change).
    After(u64),
    /// As of this time: right after the last change made at or before it.
    Time(SystemTime),
}

/// A store as it was at one point of its change log: labels read as they
/// were then, content read from the store (which keeps whatever a kept
/// point names, see [`crate::GcReport::kept_for_history`]). Made by
/// [`ContentStore::at`]; reads only.
#[derive(Clone, Debug)]
pub struct PastView {
    store: ContentStore,
    seq: u64,
}

impl ContentStore {
    /// The sequence number a point names: for a time, that of the last
    /// change made at or before it (0 if the store had none yet). Fails
    /// with [`StoreError::ChangesTrimmed`] for a time before the oldest
    /// change the log keeps, when older ones were trimmed.
    pub async fn resolve_point(&self, point: Point) -> Result<u64> {
        let time = match point {
            Point::After(seq) => return Ok(seq),
            Point::Time(time) => millis(time),
        };
        // The log's bounds, in one read.
        let engine = self.root().engine().await?;
        let bounds = engine.changes(self.store_id(), 0, 0).await?;
        let (first, last) = (bounds.trimmed_through + 1, bounds.last);
        let made_at = |seq: u64| async move {
            let page = self.changes(seq - 1, 1).await?;
            Ok::<_, StoreError>(page.changes.first().map_or(i64::MAX, |change| change.time))
        };
        if first > last || made_at(first).await? > time {
            // Before everything kept: fine only if nothing was trimmed.
            if first > 1 {
                return Err(StoreError::ChangesTrimmed {
                    store: self.id().to_owned(),
                    since: first - 1,
                    oldest: first,
                });
            }
            return Ok(0);
        }
        // The last kept change made at or before `time`: times grow with
        // the sequence, so halve [first, last] until one is left.
        let (mut low, mut high) = (first, last);
        while low < high {
            let middle = low + (high - low).div_ceil(2);
            if made_at(middle).await? <= time {
                low = middle;
            } else {
                high = middle - 1;
            }
        }
        Ok(low)
    }

    /// The store as it was at `point`. Fails with
    /// [`StoreError::ChangesTrimmed`] for a point older than what the log
    /// keeps; a point past the newest change is now.
    pub async fn at(&self, point: Point) -> Result<PastView> {
        let seq = self.resolve_point(point).await?;
        let engine = self.root().engine().await?;
        self.kept_point(&*engine, seq).await?;
        Ok(PastView {
            store: self.clone(),
            seq,
        })
    }
}

impl PastView {
    /// The sequence number this view is right after.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// What `label` pointed at then.
    pub async fn get_by_label(&self, label: &str) -> Result<Option<ContentRef>> {
        self.store.label_at(label, self.seq).await
    }

    /// The content `label` pointed at then, verified.
    pub async fn get_content_by_label(&self, label: &str) -> Result<Option<Vec<u8>>> {
        match self.get_by_label(label).await? {
            Some(content_ref) => Ok(Some(self.store.get(&content_ref).await?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` labels that started with `prefix` then, after
    /// `after`, in byte order, with their targets then. Each page reads
    /// every label under `prefix`, and the changes since the point.
    pub async fn list_labels_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LabelEntry>> {
        let labels = self.store.labels_at(prefix, self.seq).await?;
        Ok(labels
            .into_iter()
            .filter(|entry| after.is_none_or(|after| entry.label.as_str() > after))
            .take(limit)
            .collect())
    }

    /// Content by ref (content does not change; this is the store's own
    /// read).
    pub async fn get(&self, content_ref: &ContentRef) -> Result<Vec<u8>> {
        self.store.get(content_ref).await
    }
}

fn millis(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}
