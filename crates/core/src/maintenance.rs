//! Checking and cleaning a store: [`ContentStore::verify`] and
//! [`ContentStore::collect_garbage`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::chain::{CHAIN_STORE, HEAD_PREFIX};
use crate::engine::{Change, Engine, Expect, ObjectRow, unix_millis};
use crate::error::{Result, StoreError};
use crate::names::{ContentRef, Digest, StoreId};
use crate::reach::LinkGraph;
use crate::root::{COMPONENT_CACHE_STORE, StoreRoot};
use crate::store::{ContentStore, LabelEntry};
use crate::task::{Progress, blocking};

/// Temporary files older than this are leftovers of a crashed writer rather
/// than writes in progress.
pub const TEMP_FILE_STALE_AFTER: Duration = Duration::from_secs(3600);

/// How many garbage-collection deletions are queued at once.
const GC_CHUNK: usize = 256;

/// What [`ContentStore::verify`] found. Work is counted in bytes.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    /// The store checked.
    pub store: String,
    /// Objects re-hashed (files and inline content alike).
    pub objects_checked: u64,
    /// Their total size.
    pub bytes_checked: u64,
    /// Objects whose bytes did not match their ref; moved to `quarantine/`
    /// and removed from the index.
    pub quarantined: Vec<ContentRef>,
    /// Indexed objects whose bytes are gone.
    pub missing: Vec<ContentRef>,
    /// Labels pointing at content that is missing, corrupt or not indexed.
    pub dangling_labels: Vec<LabelEntry>,
    /// Labels whose index rows fail their checksums (named as they read
    /// now): the index was damaged under them, so their names or targets
    /// may not be what was written. Restore them from an export.
    pub damaged_labels: Vec<String>,
    /// Files in `objects/` whose names are not object names.
    pub stray_files: Vec<PathBuf>,
    /// Temporary files older than [`TEMP_FILE_STALE_AFTER`] (`gc` removes them).
    pub leftover_temp_files: Vec<PathBuf>,
    /// Intact object files that the index does not list: a crash between
    /// publishing and indexing leaves these. Harmless; `gc` removes them.
    pub unindexed: Vec<ContentRef>,
    /// What the index database's own integrity check reported, root-wide
    /// (small content lives in it). Empty when healthy.
    pub index_problems: Vec<String>,
    /// Intact objects whose outboard (the hash tree that range reads
    /// check against) was wrong. The bad outboard was removed; it is
    /// rebuilt from the content on the next read that needs it. Not
    /// damage to content, so it does not make a report unclean.
    pub damaged_outboards: Vec<ContentRef>,
}

impl VerifyReport {
    /// Whether nothing needs attention (unindexed leftovers do not count).
    pub fn is_clean(&self) -> bool {
        self.quarantined.is_empty()
            && self.missing.is_empty()
            && self.dangling_labels.is_empty()
            && self.damaged_labels.is_empty()
            && self.stray_files.is_empty()
            && self.leftover_temp_files.is_empty()
            && self.index_problems.is_empty()
    }

    /// Logs the result and counts it in the metrics:
    /// `theater_store_verify_runs_total{result}` (`clean` or `problems`),
    /// `theater_store_verify_objects_total`,
    /// `theater_store_verify_problems_total{problem}`.
    fn observe(&self) {
        let problems = [
            ("quarantined", self.quarantined.len()),
            ("missing", self.missing.len()),
            ("dangling_label", self.dangling_labels.len()),
            ("damaged_label", self.damaged_labels.len()),
            ("stray_file", self.stray_files.len()),
            ("leftover_temp_file", self.leftover_temp_files.len()),
            ("index_problem", self.index_problems.len()),
            ("damaged_outboard", self.damaged_outboards.len()),
        ];
        let result = if self.is_clean() { "clean" } else { "problems" };
        tracing::info!(
            result,
            objects = self.objects_checked,
            bytes = self.bytes_checked,
            quarantined = self.quarantined.len(),
            missing = self.missing.len(),
            dangling_labels = self.dangling_labels.len(),
            "verify finished"
        );
        metrics::counter!("theater_store_verify_runs_total", "result" => result).increment(1);
        metrics::counter!("theater_store_verify_objects_total").increment(self.objects_checked);
        for (problem, count) in problems {
            if count > 0 {
                metrics::counter!("theater_store_verify_problems_total", "problem" => problem)
                    .increment(count as u64);
            }
        }
    }
}

/// How [`ContentStore::collect_garbage`] runs.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Content stored more recently than this is kept even when no label
    /// reaches it, so that a writer that has stored but not yet labelled
    /// never loses its content. Should be well above [`crate::REFRESH_AFTER`].
    pub grace: Duration,
    /// Report what would be removed without removing anything.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3600),
            dry_run: false,
        }
    }
}

/// What [`ContentStore::collect_garbage`] removed (or, in a dry run, would remove).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// The store collected.
    pub store: String,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Objects no label reaches, removed.
    pub objects_removed: u64,
    /// Their total size.
    pub bytes_freed: u64,
    /// Objects no label reaches but stored within the grace period (or
    /// named, through refs inside content, by content stored within it), kept.
    pub kept_recent: u64,
    /// Objects some label reaches, directly or through refs written inside
    /// reachable content, kept.
    pub kept_labelled: u64,
    /// Objects no label reaches but the change log still names (a label
    /// pointed at them before it moved), or that such content names, kept
    /// until those entries are trimmed, so that history and reads at a
    /// past point stay readable.
    pub kept_for_history: u64,
    /// Unindexed object files (crash leftovers) removed.
    pub unindexed_files_removed: u64,
    /// Temporary files older than [`TEMP_FILE_STALE_AFTER`] removed.
    pub temp_files_removed: u64,
    /// Removals a killed collection left half done (the row still there,
    /// the file moved aside), finished now: the file deleted where the row
    /// is gone, put back where it is not.
    pub interrupted_removals_finished: u64,
    /// Whether the store itself was removed (or would be, in a dry run):
    /// it was left with no object and no label, and was created before the
    /// grace period.
    pub store_removed: bool,
    /// Change log entries trimmed: older than
    /// [`crate::Options::change_retention`] and not among the newest
    /// [`crate::Options::change_retention_min`]. A dry run trims none and
    /// counts none.
    pub changes_trimmed: u64,
}

impl GcReport {
    /// Logs the result and counts it in the metrics:
    /// `theater_store_gc_runs_total{dry_run}`, and for real runs
    /// `theater_store_gc_removed_objects_total`,
    /// `theater_store_gc_freed_bytes_total` and
    /// `theater_store_gc_trimmed_changes_total`.
    fn observe(&self) {
        tracing::info!(
            dry_run = self.dry_run,
            objects_removed = self.objects_removed,
            bytes_freed = self.bytes_freed,
            kept_labelled = self.kept_labelled,
            kept_recent = self.kept_recent,
            kept_for_history = self.kept_for_history,
            changes_trimmed = self.changes_trimmed,
            "gc finished"
        );
        let dry_run = if self.dry_run { "true" } else { "false" };
        metrics::counter!("theater_store_gc_runs_total", "dry_run" => dry_run).increment(1);
        if !self.dry_run {
            metrics::counter!("theater_store_gc_removed_objects_total")
                .increment(self.objects_removed);
            metrics::counter!("theater_store_gc_freed_bytes_total").increment(self.bytes_freed);
            metrics::counter!("theater_store_gc_trimmed_changes_total")
                .increment(self.changes_trimmed);
        }
    }
}

/// The labels under one prefix and the distinct content they point at
/// ([`ContentStore::usage`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PrefixUsage {
    /// The group: a label's first parts and a trailing `/`, or a whole
    /// label that has fewer parts.
    pub prefix: String,
    /// Labels in the group.
    pub labels: u64,
    /// Distinct objects they point at.
    pub objects: u64,
    /// Those objects' total size (a dangling label's target counts 0;
    /// `verify` reports it).
    pub bytes: u64,
}

/// What [`StoreRoot::remove_store`] removed (or, in a dry run, would remove).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RemoveStoreReport {
    /// The store.
    pub store: String,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Labels removed.
    pub labels_removed: u64,
    /// Objects removed.
    pub objects_removed: u64,
    /// Their total size.
    pub bytes_freed: u64,
}

/// What the checks of a root's index as a whole found
/// ([`StoreRoot::check_index`]). Those checks read the whole index, so a
/// caller verifying many stores of one root runs them once and hands the
/// result to [`ContentStore::verify_with`] for each store.
#[derive(Clone, Debug)]
pub struct IndexCheck {
    problems: Vec<String>,
}

impl IndexCheck {
    /// What was found; empty when the index is healthy.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

impl StoreRoot {
    /// Checks the root's index as a whole: the database's own integrity
    /// check, rows of stores that are not registered, every store's
    /// running totals against its rows, and damage found in its log when
    /// it was opened. It reads the whole index, whatever store asks.
    #[tracing::instrument(level = "info", skip_all)]
    pub async fn check_index(&self) -> Result<IndexCheck> {
        let engine = self.engine().await?;
        let problems = blocking(move || engine.check_integrity()).await?;
        Ok(IndexCheck { problems })
    }
}

impl ContentStore {
    /// Space by label prefix: the labels starting with `prefix`, grouped
    /// by their first `depth` `/`-separated parts (at least 1), each group
    /// with the distinct content its labels point at. One pass over the
    /// store's labels and objects, whatever their number, rather than a
    /// lookup per object.
    #[tracing::instrument(level = "info", skip_all, fields(store = %self.store_id()))]
    pub async fn usage(&self, prefix: &str, depth: usize) -> Result<Vec<PrefixUsage>> {
        let engine = self.root().engine().await?;
        let (store, prefix) = (self.store_id().clone(), prefix.to_owned());
        let depth = depth.max(1);
        blocking(move || {
            let snapshot = engine.snapshot(&store, &prefix)?;
            let mut groups: BTreeMap<String, (u64, HashSet<Digest>)> = BTreeMap::new();
            for (label, target) in snapshot.labels {
                let parts: Vec<&str> = label.splitn(depth + 1, '/').collect();
                let group = if parts.len() > depth {
                    format!("{}/", parts[..depth].join("/"))
                } else {
                    label
                };
                let (labels, targets) = groups.entry(group).or_default();
                *labels += 1;
                targets.insert(target);
            }
            let sizes: HashMap<Digest, u64> = snapshot
                .objects
                .iter()
                .map(|object| (object.digest, object.size))
                .collect();
            Ok(groups
                .into_iter()
                .map(|(prefix, (labels, targets))| PrefixUsage {
                    prefix,
                    labels,
                    objects: targets.len() as u64,
                    bytes: targets.iter().filter_map(|digest| sizes.get(digest)).sum(),
                })
                .collect())
        })
        .await
    }

    /// Re-hashes every object, finds labels pointing at missing content and
    /// leftover temporary files, and quarantines corrupt objects (never
    /// deletes them). Checks the root's index as a whole too
    /// ([`StoreRoot::check_index`]); to verify many stores, run that once
    /// and call [`ContentStore::verify_with`] for each. Progress is
    /// reported in bytes.
    pub async fn verify(&self, progress: impl Progress + 'static) -> Result<VerifyReport> {
        let index = self.root().check_index().await?;
        self.verify_with(&index, progress).await
    }

    /// [`ContentStore::verify`], reporting `index`'s findings as its
    /// `index_problems` instead of checking the whole index again.
    #[tracing::instrument(name = "verify", level = "info", skip_all, fields(store = %self.store_id()))]
    pub async fn verify_with(
        &self,
        index: &IndexCheck,
        progress: impl Progress + 'static,
    ) -> Result<VerifyReport> {
        let report = self
            .verify_unobserved(index.problems.clone(), progress)
            .await;
        match &report {
            Ok(report) => report.observe(),
            Err(error) => tracing::warn!(%error, "verify failed"),
        }
        report
    }

    async fn verify_unobserved(
        &self,
        index_problems: Vec<String>,
        progress: impl Progress + 'static,
    ) -> Result<VerifyReport> {
        let progress: Arc<dyn Progress> = Arc::new(progress);
        let engine = self.root().engine().await?;
        let store = self.store_id().clone();
        let (mut report, corrupt) = blocking({
            let engine = Arc::clone(&engine);
            move || {
                let handle = tokio::runtime::Handle::current();
                let objects = handle.block_on(engine.objects(&store))?;
                let damaged_labels = engine.damaged_labels(&store)?;
                let stale_before = SystemTime::now() - TEMP_FILE_STALE_AFTER;
                let leftover_temp_files = engine.stale_staging(&store, stale_before)?;
                let scan = engine.scan(&store, &*progress)?;
                let mut report = VerifyReport {
                    store: store.to_string(),
                    objects_checked: scan.objects_checked,
                    bytes_checked: scan.bytes_checked,
                    stray_files: scan.stray,
                    leftover_temp_files,
                    unindexed: scan.unindexed.into_iter().map(ContentRef::from).collect(),
                    index_problems,
                    damaged_labels,
                    damaged_outboards: scan
                        .damaged_outboards
                        .into_iter()
                        .map(ContentRef::from)
                        .collect(),
                    ..VerifyReport::default()
                };
                // Sorted and searched: a million digests take 32 MB in a
                // list, about half what a set of them takes.
                let mut intact = scan.intact;
                intact.sort_unstable();
                let intact = |digest: &Digest| intact.binary_search(digest).is_ok();
                let corrupt = scan.corrupt;
                // The store may change while it is scanned. Whatever looks
                // missing or dangling is checked again against the store as
                // it is now, so concurrent writers and collections do not
                // show up as damage.
                // A removal in flight moves the file aside before its row
                // deletion commits, and a reader or another collection may
                // be putting such a file back: an object is missing only if
                // it stays indexed and absent over a few looks.
                let still_missing = |digest: Digest| -> Result<bool> {
                    let handle = tokio::runtime::Handle::current();
                    for look in 0..MISSING_LOOKS {
                        if look > 0 {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        let indexed = handle.block_on(engine.has_object(&store, digest))?;
                        if !indexed || engine.is_present(&store, digest)? {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                };
                for &digest in &objects {
                    if !intact(&digest) && !corrupt.contains(&digest) && still_missing(digest)? {
                        report.missing.push(digest.into());
                    }
                }
                drop(objects);
                let chain_store = store.as_str() == CHAIN_STORE;
                // The labels a page at a time (as they are now: what looks
                // dangling is looked at again anyway), so that a store of
                // millions never holds them all.
                let mut after: Option<String> = None;
                loop {
                    let page = handle.block_on(engine.labels_page(
                        &store,
                        "",
                        after.as_deref(),
                        LABELS_PER_PAGE,
                    ))?;
                    let Some((last, _)) = page.last() else {
                        break;
                    };
                    // A damaged index can list out of order; paging on
                    // would never end.
                    if after.as_ref().is_some_and(|after| last <= after) {
                        report.index_problems.push(format!(
                            "store {store}: labels listed out of order after {after:?} \
                             (the index is damaged); the labels past it were not checked"
                        ));
                        break;
                    }
                    after = Some(last.clone());
                    for (label, target) in page {
                        // A chain's head names its newest event, which stays in
                        // the head's own row until its segment is sealed:
                        // `verify-chain` checks chains, event by event.
                        if intact(&target) || (chain_store && label.starts_with(HEAD_PREFIX)) {
                            continue;
                        }
                        let Some(now) = handle.block_on(engine.label_target(&store, &label))?
                        else {
                            continue;
                        };
                        let healthy = !corrupt.contains(&now)
                            && (intact(&now) || engine.is_present(&store, now)?);
                        if !healthy {
                            report.dangling_labels.push(LabelEntry {
                                label,
                                content_ref: now.into(),
                            });
                        }
                    }
                }
                Ok((report, corrupt))
            }
        })
        .await?;
        for digest in corrupt {
            let change = Change::QuarantineObject {
                store: self.store_id().clone(),
                digest,
            };
            // The engine re-checks the bytes first: content stored again
            // during the scan is whole again and stays.
            if engine.apply(change).await? {
                report.quarantined.push(digest.into());
            }
        }
        Ok(report)
    }

    /// Stores again, from the same store in another root, each of `refs`
    /// (what `verify` found missing or quarantined): the bytes are read
    /// verified from `source` and stored here, which heals an object whose
    /// bytes were lost and brings back one that was quarantined, and with
    /// it every label that pointed at it. Refs `source` does not hold
    /// whole are reported, not errors.
    #[tracing::instrument(level = "info", skip_all, fields(store = %self.store_id(), refs = refs.len()))]
    pub async fn repair_from(
        &self,
        source: &ContentStore,
        refs: &[ContentRef],
    ) -> Result<RepairReport> {
        let mut report = RepairReport {
            store: self.id().to_owned(),
            ..RepairReport::default()
        };
        for content_ref in refs {
            let copied = match source.reader(content_ref).await {
                Ok(reader) => self.store_reader(reader).await,
                Err(error) => Err(error),
            };
            match copied {
                Ok(_) => report.healed.push(content_ref.clone()),
                Err(
                    StoreError::NotFound { .. }
                    | StoreError::Missing { .. }
                    | StoreError::Corrupted { .. },
                ) => report.unavailable.push(content_ref.clone()),
                Err(error) => return Err(error),
            }
        }
        Ok(report)
    }

    /// What `verify` moved aside as corrupt in this store, oldest first:
    /// each piece's ref (what the bytes were filed under, not what they
    /// hash to), size and when it was moved. Kept for inspection until
    /// [`ContentStore::purge_quarantine`].
    pub async fn quarantined(&self) -> Result<Vec<Quarantined>> {
        let engine = self.root().engine().await?;
        let store = self.store_id().clone();
        let found = blocking(move || engine.quarantined(&store)).await?;
        let mut found: Vec<Quarantined> = found
            .into_iter()
            .map(|(digest, size, moved_at)| Quarantined {
                content_ref: digest.into(),
                size,
                quarantined_at_millis: unix_millis(moved_at),
            })
            .collect();
        found.sort_by_key(|entry| entry.quarantined_at_millis);
        Ok(found)
    }

    /// Deletes what quarantine moved aside more than `older_than` ago;
    /// returns how many pieces went.
    #[tracing::instrument(level = "info", skip_all, fields(store = %self.store_id()))]
    pub async fn purge_quarantine(&self, older_than: Duration) -> Result<u64> {
        let engine = self.root().engine().await?;
        let store = self.store_id().clone();
        let cutoff = SystemTime::now() - older_than;
        blocking(move || engine.purge_quarantine(&store, cutoff)).await
    }

    /// Content no label reaches, oldest first: what `collect_garbage`
    /// with this `grace` would remove now, and what only the grace period
    /// keeps (stored within it, or named by such content). Reads only.
    pub async fn unreachable(&self, grace: Duration) -> Result<Vec<Unreachable>> {
        let engine = self.root().engine().await?;
        let census = self
            .census(&engine, SystemTime::now() - grace, false)
            .await?;
        let kept = census.recent.into_iter().map(|row| (row, true));
        let doomed = census.doomed.into_iter().map(|row| (row, false));
        let mut unreachable: Vec<Unreachable> = kept
            .chain(doomed)
            .map(|(row, kept_by_grace)| Unreachable {
                content_ref: row.digest.into(),
                size: row.size,
                stored_at_millis: row.stored_at,
                kept_by_grace,
            })
            .collect();
        unreachable.sort_by_key(|entry| entry.stored_at_millis);
        Ok(unreachable)
    }

    /// Sorts every indexed object of the store by what keeps it: a label
    /// (directly, through refs inside reachable content, or, in the chain
    /// store, a chain head), the grace period (stored after `cutoff`, or
    /// named by such content), or nothing (`doomed`). Also lists crash
    /// leftovers. `record_links` lets the link scan record what it finds
    /// for objects not scanned before (a dry run records nothing).
    async fn census(
        &self,
        engine: &Arc<dyn Engine>,
        cutoff: SystemTime,
        record_links: bool,
    ) -> Result<Census> {
        let store = self.store_id().clone();
        let cutoff_millis = unix_millis(cutoff);
        // What the log keeps after this collection's trim (a dry run, or
        // a listing, counts as if it had trimmed).
        let (before, keep_last) = self.retention();
        // In the chain store, a head label keeps its whole chain: every
        // segment it reaches counts as labelled. Segments sealed after this
        // walk are younger than the cutoff.
        let chained: BTreeSet<Digest> = if store.as_str() == CHAIN_STORE {
            let mut chained = BTreeSet::new();
            for actor in self.root().chain_actors().await? {
                chained.extend(self.root().event_chain(&actor)?.reachable().await?);
            }
            chained
        } else {
            BTreeSet::new()
        };
        let (rows, targets, replaced, graph, unindexed, stale_temps) = blocking({
            let engine = Arc::clone(engine);
            let store = store.clone();
            move || {
                // Before the snapshot, so that the log's end it gives is
                // no later than the snapshot: every label moved after the
                // snapshot was read moves the log past it, which each
                // removal checks, and the removals read what it named.
                // (Reserved stores keep no log; their removals ask their
                // labels instead.)
                let replaced = engine.replaced_targets(&store, before, keep_last)?;
                // Only what labels point at counts here, not their names
                // (a million of them would take about 100 MB).
                let snapshot = engine.target_snapshot(&store)?;
                let held: HashSet<Digest> = snapshot.objects.iter().map(|row| row.digest).collect();
                // Links are read after the snapshot: any link added since
                // comes from an object stored since, which is recent. The
                // chain store follows its own rule (the chains, above):
                // a trimmed segment is named by the one after it, and
                // must go all the same.
                let graph = if store.as_str() == CHAIN_STORE {
                    LinkGraph::default()
                } else {
                    LinkGraph::load(&*engine, &store, &held, record_links)?
                };
                let unindexed = engine.unindexed(&store, cutoff)?;
                // Temporary files belong to writers still at work unless they
                // are very old, whatever the grace period for content.
                let stale_before = SystemTime::now() - TEMP_FILE_STALE_AFTER;
                let stale_temps = engine.stale_staging(&store, stale_before)?;
                Ok((
                    snapshot.objects,
                    snapshot.targets,
                    replaced,
                    graph,
                    unindexed,
                    stale_temps,
                ))
            }
        })
        .await?;

        // What labels reach, directly or through links inside reachable
        // content; then what recent content reaches, which stays too (a
        // writer may be about to label it).
        let labelled = graph.reachable(targets.into_iter().chain(chained.iter().copied()));
        // What the change log still names, so that every point it can
        // go back to stays readable. Each set holds only what the ones
        // before it do not: an object counts once, as the first keeps it.
        let historic = graph.reachable_beyond(replaced.digests, |d| labelled.contains(d));
        let recent = graph.reachable_beyond(
            rows.iter()
                .filter(|row| row.stored_at >= cutoff_millis)
                .map(|row| row.digest),
            |d| labelled.contains(d) || historic.contains(d),
        );
        let mut census = Census {
            graph: LinkGraph::default(),
            log_end: replaced.log_end,
            unindexed,
            stale_temps,
            kept_labelled: 0,
            kept_for_history: 0,
            recent: Vec::new(),
            doomed: Vec::new(),
        };
        for row in rows {
            if labelled.contains(&row.digest) {
                census.kept_labelled += 1;
            } else if historic.contains(&row.digest) {
                census.kept_for_history += 1;
            } else if recent.contains(&row.digest) {
                census.recent.push(row);
            } else {
                census.doomed.push(row);
            }
        }
        census.graph = graph;
        Ok(census)
    }

    /// Removes content no label reaches, once it is older than the grace
    /// period, plus crash leftovers (stale temporary and unindexed files).
    ///
    /// A label reaches the content it points at and, through it, every
    /// object whose ref (64 hex digits) is written inside reachable
    /// content, however deep. Content stored within the grace period, and
    /// what it names, is kept too. Each removal re-checks, under the
    /// index's write lock, that no label points at the object, that no
    /// object still held names it, and that it was not stored again
    /// meanwhile. Progress is reported in objects.
    #[tracing::instrument(
        level = "info",
        skip_all,
        fields(store = %self.store_id(), dry_run = options.dry_run)
    )]
    pub async fn collect_garbage(
        &self,
        options: GcOptions,
        progress: impl Progress + 'static,
    ) -> Result<GcReport> {
        let report = self.collect_garbage_unobserved(options, progress).await;
        match &report {
            Ok(report) => report.observe(),
            Err(error) => tracing::warn!(%error, "gc failed"),
        }
        report
    }

    async fn collect_garbage_unobserved(
        &self,
        options: GcOptions,
        progress: impl Progress + 'static,
    ) -> Result<GcReport> {
        let progress: Arc<dyn Progress> = Arc::new(progress);
        let engine = self.root().engine().await?;
        let store = self.store_id().clone();
        let cutoff = SystemTime::now() - options.grace;
        let cutoff_millis = unix_millis(cutoff);
        let mut report = GcReport {
            store: store.to_string(),
            dry_run: options.dry_run,
            ..GcReport::default()
        };
        if store.as_str() == COMPONENT_CACHE_STORE && !options.dry_run {
            self.expire_cache_entries(&engine, cutoff_millis).await?;
        }
        let dry_run = options.dry_run;
        // The log first: content only trimmed entries named goes in this
        // same collection.
        if !dry_run {
            report.changes_trimmed = self.trim_changes(&*engine).await?;
        }
        let Census {
            kept_labelled,
            kept_for_history,
            log_end,
            recent: kept_by_grace,
            doomed,
            graph,
            unindexed,
            stale_temps,
        } = self.census(&engine, cutoff, !dry_run).await?;
        report.kept_labelled = kept_labelled;
        report.kept_for_history = kept_for_history;
        report.kept_recent = kept_by_grace.len() as u64;
        let doomed = graph.referrers_first(doomed);
        let mut referrers = graph.referrers_of(&doomed);
        progress.start((doomed.len() + unindexed.len()) as u64);
        if options.dry_run {
            report.objects_removed = doomed.len() as u64;
            report.bytes_freed = doomed.iter().map(|row| row.size).sum();
            report.unindexed_files_removed = unindexed.len() as u64;
            report.temp_files_removed = stale_temps.len() as u64;
            let stats = self.stats().await?;
            let created_at = engine.store_created_at(&store).await?;
            report.store_removed = stats.objects == report.objects_removed
                && stats.labels == 0
                && created_at.is_some_and(|at| at < cutoff_millis);
            return Ok(report);
        }
        // What a killed collection left half removed, before this one
        // removes anything of its own.
        report.interrupted_removals_finished = blocking({
            let (engine, store) = (Arc::clone(&engine), store.clone());
            move || engine.finish_removals(&store)
        })
        .await
        .map(|(deleted, restored)| deleted + restored)?;
        let (removed, freed) = remove_objects(
            &*engine,
            &store,
            &doomed,
            &mut referrers,
            &graph,
            log_end,
            &*progress,
        )
        .await?;
        // The files of this collection's own removals, now committed.
        blocking({
            let (engine, store) = (Arc::clone(&engine), store.clone());
            move || engine.finish_removals(&store)
        })
        .await?;
        report.objects_removed = removed;
        report.bytes_freed = freed;
        report.kept_recent += doomed.len() as u64 - removed;
        for chunk in unindexed.chunks(GC_CHUNK) {
            let changes = chunk
                .iter()
                .map(|&digest| Change::RemoveUnindexed {
                    store: store.clone(),
                    digest,
                    cutoff,
                })
                .collect();
            for removed in engine.apply_all(changes).await {
                report.unindexed_files_removed += u64::from(removed?);
            }
            progress.advance(chunk.len() as u64);
        }
        report.temp_files_removed = blocking({
            let engine = Arc::clone(&engine);
            move || Ok(engine.remove_staging(&stale_temps))
        })
        .await?;
        // A store left empty is dropped too, once it is older than the
        // grace period, so that stores made and abandoned (by `new`, say)
        // do not pile up. The writer re-checks that it is still empty.
        let change = Change::RemoveEmptyStore {
            store,
            cutoff: cutoff_millis,
        };
        report.store_removed = engine.apply(change).await?;
        Ok(report)
    }
}

impl ContentStore {
    /// What the root's retention keeps of a change log now: entries made
    /// at or after the first (unix milliseconds), and the newest `keep_last`
    /// whatever their age. Entries as old as the retention go: with a
    /// retention of zero, everything made up to now (this millisecond too).
    fn retention(&self) -> (i64, u64) {
        let options = self.root().options();
        let before = SystemTime::now()
            .checked_sub(options.change_retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        (
            unix_millis(before).saturating_add(1),
            options.change_retention_min,
        )
    }

    /// Trims the change log past the root's retention; returns how many
    /// entries went.
    async fn trim_changes(&self, engine: &dyn Engine) -> Result<u64> {
        let (before, keep_last) = self.retention();
        let held = engine.store_stats(self.store_id()).await?.changes;
        let change = Change::TrimChanges {
            store: self.store_id().clone(),
            before,
            keep_last,
        };
        if !engine.apply(change).await? {
            return Ok(0);
        }
        let left = engine.store_stats(self.store_id()).await?.changes;
        Ok(held.saturating_sub(left))
    }

    /// The objects `starts` reach: themselves and every object named by a
    /// ref inside reachable content, however deep; only objects the store
    /// holds.
    pub(crate) async fn reachable_from(
        &self,
        starts: impl IntoIterator<Item = Digest>,
    ) -> Result<Vec<Digest>> {
        let starts: Vec<Digest> = starts.into_iter().collect();
        let engine = self.root().engine().await?;
        let store = self.store_id().clone();
        let held: HashSet<Digest> = engine.objects(&store).await?.into_iter().collect();
        blocking(move || {
            let graph = LinkGraph::load(&*engine, &store, &held, false)?;
            Ok(graph
                .reachable(starts)
                .into_iter()
                .filter(|digest| held.contains(digest))
                .collect())
        })
        .await
    }

    /// In a cache store, labels do not keep content: every label whose
    /// content was stored before `cutoff` goes (unless it moved meanwhile),
    /// so that collection then takes the content.
    async fn expire_cache_entries(&self, engine: &Arc<dyn Engine>, cutoff: i64) -> Result<()> {
        let snapshot = blocking({
            let (engine, store) = (Arc::clone(engine), self.store_id().clone());
            move || engine.snapshot(&store, "")
        })
        .await?;
        let stored_at: std::collections::HashMap<Digest, i64> = snapshot
            .objects
            .iter()
            .map(|row| (row.digest, row.stored_at))
            .collect();
        let changes: Vec<Change> = snapshot
            .labels
            .into_iter()
            .filter(|(_, target)| stored_at.get(target).is_some_and(|at| *at < cutoff))
            .map(|(label, target)| Change::SetLabel {
                store: self.store_id().clone(),
                label,
                target: None,
                expect: Expect::Exactly(Some(target)),
            })
            .collect();
        for removed in engine.apply_all(changes).await {
            removed?;
        }
        Ok(())
    }
}

/// Removes `rows`' objects (referrers first), [`GC_CHUNK`] per queue, each
/// only if none of its `referrers` is still held, no label points at it
/// and it was not stored again since `rows` were listed (checked by the
/// writer). Returns how many went and their bytes. Progress is in objects.
async fn remove_objects(
    engine: &dyn Engine,
    store: &StoreId,
    rows: &[ObjectRow],
    referrers: &mut HashMap<Digest, Vec<Digest>>,
    graph: &LinkGraph,
    mut log_end: u64,
    progress: &dyn Progress,
) -> Result<(u64, u64)> {
    let (mut removed, mut freed) = (0, 0);
    // What label changes made during the collection name: kept like the
    // rest of the log.
    let mut historic = HashSet::new();
    for chunk in rows.chunks(GC_CHUNK) {
        let mut left: Vec<&ObjectRow> = chunk.iter().collect();
        for _ in 0..REMOVAL_TRIES {
            let named = logged_since(engine, store, &mut log_end).await?;
            historic.extend(graph.reachable(named));
            left.retain(|row| !historic.contains(&row.digest));
            let changes = left
                .iter()
                .map(|row| Change::RemoveObject {
                    store: store.clone(),
                    digest: row.digest,
                    referrers: referrers.get(&row.digest).cloned().unwrap_or_default(),
                    listed_stored_at: row.stored_at,
                    log_end,
                })
                .collect();
            let mut refused = Vec::new();
            for (row, gone) in left.iter().zip(engine.apply_all(changes).await) {
                if gone? {
                    removed += 1;
                    freed += row.size;
                    referrers.remove(&row.digest);
                } else {
                    refused.push(*row);
                }
            }
            // Refused for another reason than a label moving meanwhile:
            // they stay (a referrer, a label, a new store of the same bytes).
            if refused.is_empty() || engine.changes(store, log_end, 0).await?.last == log_end {
                break;
            }
            left = refused;
        }
        progress.advance(chunk.len() as u64);
    }
    Ok((removed, freed))
}

/// How often a chunk of removals is tried again when labels moved while
/// it was applied.
const REMOVAL_TRIES: usize = 3;

/// Every ref the store's change log names (old and new) after `log_end`,
/// which moves to the log's end.
async fn logged_since(
    engine: &dyn Engine,
    store: &StoreId,
    log_end: &mut u64,
) -> Result<Vec<Digest>> {
    let mut named = Vec::new();
    loop {
        let page = engine
            .changes(store, *log_end, crate::feed::MAX_CHANGES_PAGE)
            .await?;
        for entry in &page.entries {
            named.extend(entry.old);
            named.extend(entry.new);
        }
        match page.entries.last() {
            Some(entry) if entry.seq < page.last => *log_end = entry.seq,
            _ => {
                *log_end = page.last;
                return Ok(named);
            }
        }
    }
}

/// What [`ContentStore::census`] found.
struct Census {
    /// Objects a label (or a chain head) reaches.
    kept_labelled: u64,
    /// Objects only the change log still names (or what they name).
    kept_for_history: u64,
    /// Where the change log ended when the census read it.
    log_end: u64,
    /// Objects no label reaches that the grace period keeps.
    recent: Vec<ObjectRow>,
    /// Objects no label reaches, older than the grace period.
    doomed: Vec<ObjectRow>,
    /// The links between the store's objects.
    graph: LinkGraph,
    /// Stored bytes no index row claims, older than the cutoff.
    unindexed: Vec<Digest>,
    /// Staging files old enough to be a crashed write's.
    stale_temps: Vec<PathBuf>,
}

/// What [`ContentStore::repair_from`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RepairReport {
    /// The store repaired.
    pub store: String,
    /// Content stored again from the source, whole and verified.
    pub healed: Vec<ContentRef>,
    /// Content the source does not hold whole either.
    pub unavailable: Vec<ContentRef>,
}

/// Bytes `verify` moved aside as corrupt (see
/// [`ContentStore::quarantined`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Quarantined {
    /// The ref the bytes were filed under.
    #[serde(rename = "ref")]
    pub content_ref: ContentRef,
    /// Their size in bytes.
    pub size: u64,
    /// When they were moved aside, in milliseconds since the Unix epoch.
    pub quarantined_at_millis: i64,
}

/// One piece of content no label reaches (see
/// [`ContentStore::unreachable`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Unreachable {
    /// Its ref.
    #[serde(rename = "ref")]
    pub content_ref: ContentRef,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last stored, in milliseconds since the Unix epoch.
    pub stored_at_millis: i64,
    /// Whether only the grace period keeps it (`false`: gc removes it now).
    pub kept_by_grace: bool,
}

/// How many times verify looks at an object that seems missing before it
/// says so (see `still_missing` in `ContentStore::verify`).
const MISSING_LOOKS: u32 = 3;

/// Labels verify reads at a time.
const LABELS_PER_PAGE: usize = 10_000;

impl StoreRoot {
    /// Removes store `id` with all its labels and content. A dry run
    /// reports what would go. Writers using the store meanwhile may
    /// recreate it; what they add then stays.
    #[tracing::instrument(level = "info", skip(self))]
    pub async fn remove_store(&self, id: &str, dry_run: bool) -> Result<RemoveStoreReport> {
        let store = self.store(id)?;
        let stats = store.stats().await?;
        let mut report = RemoveStoreReport {
            store: id.to_owned(),
            dry_run,
            labels_removed: stats.labels,
            objects_removed: stats.objects,
            bytes_freed: stats.bytes,
        };
        if dry_run {
            return Ok(report);
        }
        let engine = self.engine().await?;
        let store_id = store.store_id().clone();
        // Labels first, in chunks; then every object (none is labelled any
        // more; one stored again meanwhile stays, whatever its age); then
        // the empty store.
        loop {
            let change = Change::RemoveLabels {
                store: store_id.clone(),
                limit: GC_CHUNK * 4,
            };
            if !engine.apply(change).await? {
                break;
            }
        }
        let rows = blocking({
            let (engine, store_id) = (Arc::clone(&engine), store_id.clone());
            move || {
                let rows = engine.snapshot(&store_id, "")?.objects;
                let held: HashSet<Digest> = rows.iter().map(|row| row.digest).collect();
                let graph = LinkGraph::load(&*engine, &store_id, &held, true)?;
                let rows = graph.referrers_first(rows);
                let referrers = graph.referrers_of(&rows);
                Ok((rows, referrers, graph))
            }
        })
        .await?;
        let (rows, mut referrers, graph) = rows;
        // The store goes with its log: only labels set from here on keep
        // anything.
        let log_end = engine.changes(&store_id, 0, 0).await?.last;
        (report.objects_removed, report.bytes_freed) = remove_objects(
            &*engine,
            &store_id,
            &rows,
            &mut referrers,
            &graph,
            log_end,
            &(),
        )
        .await?;
        blocking({
            let (engine, store_id) = (Arc::clone(&engine), store_id.clone());
            move || engine.finish_removals(&store_id)
        })
        .await?;
        let change = Change::RemoveEmptyStore {
            store: store_id,
            cutoff: i64::MAX,
        };
        engine.apply(change).await?;
        Ok(report)
    }
}

/// The start of the label [`StoreRoot::reindex`] gives each content file
/// it indexes again; the object's ref follows.
pub const RECOVERED_PREFIX: &str = "recovered/";

/// What [`StoreRoot::reindex`] found in one store's directory.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReindexReport {
    /// The store.
    pub store: String,
    /// Content files indexed again, each labelled `recovered/<ref>`.
    pub objects_recovered: u64,
    /// Their total size.
    pub bytes_recovered: u64,
    /// Files whose bytes do not match their names: not indexed, and left
    /// where they are for inspection.
    pub corrupt: Vec<ContentRef>,
}

impl StoreRoot {
    /// Indexes again the content files of a local root whose index was
    /// lost (deleted, or moved aside because it was damaged): every file
    /// under a store's directory whose bytes hash to its name, and that no
    /// row claims, is indexed and labelled `recovered/<ref>`, so that gc
    /// keeps it until an operator relabels or unlabels it. Labels, event
    /// chains and content small enough to live inside the index cannot be
    /// rebuilt; restore those from a package. Creates an empty index first
    /// when there is none. Progress is reported in bytes, per store.
    #[tracing::instrument(level = "info", skip_all)]
    pub async fn reindex(&self, progress: impl Progress + 'static) -> Result<Vec<ReindexReport>> {
        let progress: Arc<dyn Progress> = Arc::new(progress);
        let Some(path) = self.path().map(std::path::Path::to_owned) else {
            return Err(crate::StoreError::InvalidRoot {
                root: self.describe().unwrap_or_default(),
                reason: "re-indexing content files rebuilds a local root's index; a shared \
                         root's index is PostgreSQL's (restore it from PostgreSQL's backups)"
                    .into(),
            });
        };
        blocking(move || crate::engine::create_missing_index(&path)).await?;
        let engine = self.engine().await?;
        let ids = blocking({
            let engine = Arc::clone(&engine);
            move || {
                engine
                    .store_dir_ids()
                    .map_err(|source| crate::StoreError::Io {
                        store: "root".into(),
                        action: "listing store directories",
                        path: "stores".into(),
                        source,
                    })
            }
        })
        .await?;
        let mut reports = Vec::new();
        // The root's own stores hold nothing to recover: chains live in
        // the index, and compiled components are compiled again.
        for id in ids.iter().filter(|id| !id.starts_with('_')) {
            let store = self.store(id)?;
            let store_id = store.store_id().clone();
            let before = store.stats().await.map(|stats| stats.bytes).unwrap_or(0);
            let scan = blocking({
                let (engine, store_id, progress) =
                    (Arc::clone(&engine), store_id.clone(), Arc::clone(&progress));
                move || engine.scan(&store_id, &*progress)
            })
            .await?;
            let mut report = ReindexReport {
                store: id.clone(),
                corrupt: scan.corrupt.iter().map(|&digest| digest.into()).collect(),
                ..ReindexReport::default()
            };
            for chunk in scan.unindexed.chunks(GC_CHUNK) {
                let changes = chunk
                    .iter()
                    .map(|&digest| Change::AdoptFile {
                        store: store_id.clone(),
                        digest,
                        label: format!("{RECOVERED_PREFIX}{}", digest.to_hex()),
                    })
                    .collect();
                for adopted in engine.apply_all(changes).await {
                    if adopted? {
                        report.objects_recovered += 1;
                    }
                }
            }
            if report.objects_recovered > 0 {
                let after = store.stats().await?.bytes;
                report.bytes_recovered = after.saturating_sub(before);
            }
            reports.push(report);
        }
        Ok(reports)
    }
}
