//! Sync between roots; the rules are documented on
//! [`StoreRoot::sync_store_to`], which is where users read them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::chain::CHAIN_STORE;
use crate::error::{Result, StoreError};
use crate::names::{ContentRef, Digest, StoreId};
use crate::package::ImportOptions;
use crate::root::StoreRoot;
use crate::store::{AtMost, ContentStore};
use crate::task::Progress;

/// The reserved store that holds what past syncs agreed on.
pub(crate) const SYNC_STORE: &str = "_sync";

/// Content up to this size is copied whole; larger content is streamed.
const COPY_WHOLE_MAX: u64 = 1 << 20;

/// Objects copied, or labels moved, per batch: one commit's worth.
const BATCH: usize = 256;

/// The most copied content a batch holds in memory before storing it.
const BATCH_BYTES: u64 = 8 << 20;

/// A label to move on the destination: from its value there to the
/// source's. Held as digests (33 bytes each rather than a string of 64):
/// a first sync holds one for every label.
type Move = (String, Option<Digest>, Option<Digest>);

/// The refs of a move, as the store's compare-and-swap takes them.
fn move_refs((label, from, to): &Move) -> (String, Option<ContentRef>, Option<ContentRef>) {
    (
        label.clone(),
        from.map(ContentRef::from),
        to.map(ContentRef::from),
    )
}

/// How long a following sync waits after a change before it syncs, so
/// that changes made together go in one sync.
const FOLLOW_SETTLE: std::time::Duration = std::time::Duration::from_millis(10);

/// How a sync runs.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Only labels that start with this (and only the content they reach:
    /// what they point at and what refs written inside it name, however
    /// deep). Empty: every label, and every object of the store.
    pub prefix: String,
    /// Work out and report what would change, changing nothing.
    pub dry_run: bool,
    /// Batches (of up to 256 objects or labels) worked on at once.
    /// Default: 4.
    pub parallel: usize,
    /// Compare every label of both sides, as a first sync does, even when
    /// the change logs could say what changed since the last sync (which
    /// is then much cheaper). It also copies content no label reaches.
    pub full: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            dry_run: false,
            parallel: 4,
            full: false,
        }
    }
}

/// What a sync of one store did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// The store id.
    pub store: String,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Objects the destination lacked, now copied.
    pub objects_copied: u64,
    /// Their total size.
    pub bytes_copied: u64,
    /// Objects the destination already held.
    pub objects_present: u64,
    /// Labels pointed at the source's value (or removed, when the source
    /// removed them).
    pub labels_moved: u64,
    /// Labels that already agreed.
    pub labels_in_sync: u64,
    /// Labels only the destination changed, left as it has them.
    pub labels_kept: u64,
    /// Labels changed on both sides: left alone, for someone to decide.
    pub conflicts: Vec<SyncConflict>,
    /// Why this sync could not build on what the two roots last agreed
    /// on, and so ran as a first sync (a union: nothing deleted, every
    /// disagreement a conflict); `None` when it continued from their shared
    /// record.
    pub first_sync: Option<String>,
    /// Whether the sync read only what changed since the last one, from
    /// the two stores' change logs, rather than comparing every label.
    /// Its counts then cover only the labels it looked at.
    pub incremental: bool,
    /// Change log entries it read, on both sides (0 for a whole comparison).
    pub changes_read: u64,
}

impl SyncReport {
    /// Whether the destination now agrees with the source on every label
    /// the sync covered, apart from ones only the destination changed.
    pub fn converged(&self) -> bool {
        self.conflicts.is_empty()
    }
}

/// A label that both sides changed since they last agreed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncConflict {
    /// The label.
    pub label: String,
    /// What the source has (`None`: removed there).
    pub source: Option<ContentRef>,
    /// What the destination has (`None`: removed there).
    pub destination: Option<ContentRef>,
    /// What they last agreed on, if they ever synced this label.
    pub last_agreed: Option<Option<ContentRef>>,
}

/// The record of what two roots agree on for one store: per label, the
/// values either may hold and count as unchanged (`None`: absent).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Agreed {
    /// The two roots' identities ([`StoreRoot::sync_identity`]), source
    /// of the sync that wrote it first.
    roots: [String; 2],
    store: String,
    /// When it was written (Unix nanoseconds).
    written_at: u128,
    /// A new id for every save: two copies are the same record only when
    /// their ids match.
    #[serde(default)]
    agreement: String,
    /// The agreement this one replaced.
    #[serde(default)]
    previous: Option<String>,
    /// As digests (33 bytes each, where a ref's string takes 64 and its
    /// own allocation); the JSON is the refs' hex all the same. Written
    /// by [`write_record`] a piece at a time, not by the derived
    /// serializer.
    #[serde(default, skip_serializing)]
    labels: BTreeMap<String, Vec<Option<Digest>>>,
    /// Where each root's change log stood (by root identity) when a sync
    /// under a prefix (the key) last read it: the next sync under that
    /// prefix reads only what came after.
    #[serde(default)]
    positions: BTreeMap<String, BTreeMap<String, u64>>,
    /// Labels left in conflict by an incremental sync: reported again by
    /// each sync until the two sides agree on them.
    #[serde(default)]
    open_conflicts: BTreeSet<String>,
}

impl Agreed {
    /// Where the two roots' logs stood when the last sync under `prefix`
    /// read them, if it recorded that for both.
    fn positions(&self, prefix: &str, ids: &[String; 2]) -> Option<[u64; 2]> {
        let positions = self.positions.get(prefix)?;
        Some([*positions.get(&ids[0])?, *positions.get(&ids[1])?])
    }

    fn set_positions(&mut self, prefix: &str, ids: &[String; 2], at: [u64; 2]) {
        let positions = self.positions.entry(prefix.to_owned()).or_default();
        positions.insert(ids[0].clone(), at[0]);
        positions.insert(ids[1].clone(), at[1]);
    }

    /// Whether this record was made by the two roots `ids`, either way round.
    fn between(&self, ids: &[String; 2]) -> bool {
        (self.roots[0] == ids[0] && self.roots[1] == ids[1])
            || (self.roots[0] == ids[1] && self.roots[1] == ids[0])
    }
}

/// The record a sync may build on, given each root's copy: the shared one,
/// or why there is none.
fn shared_record(
    ids: &[String; 2],
    source_copy: Option<Agreed>,
    destination_copy: Option<Agreed>,
) -> std::result::Result<Agreed, String> {
    match (source_copy, destination_copy) {
        (None, None) => Err("the two roots have never synced this store".into()),
        (Some(_), None) => Err(
            "the destination holds no record of syncing with the source (wiped, restored, or new)"
                .into(),
        ),
        (None, Some(_)) => Err(
            "the source holds no record of syncing with the destination (wiped, restored, or new)"
                .into(),
        ),
        (Some(source), Some(destination)) => {
            if !source.between(ids) || !destination.between(ids) {
                return Err("the records name other roots (a copied root)".into());
            }
            let same = !source.agreement.is_empty() && source.agreement == destination.agreement;
            // Each save writes the destination's copy first.
            let interrupted = !source.agreement.is_empty()
                && destination.previous.as_deref() == Some(source.agreement.as_str());
            if same || interrupted {
                Ok(destination)
            } else {
                Err("the two roots hold different records of their last sync \
                     (one was restored from a backup or copied)"
                    .into())
            }
        }
    }
}

impl Agreed {
    fn allows(&self, label: &str, value: Option<Digest>) -> Option<bool> {
        Some(self.place(label, value)?.is_some())
    }

    /// Where `value` stands among the values the record allows for
    /// `label`, oldest first (a move in progress allows where it moves
    /// from, then where it moves to): `None` when the record holds no
    /// entry, `Some(None)` when it holds one without `value`.
    fn place(&self, label: &str, value: Option<Digest>) -> Option<Option<usize>> {
        let values = self.labels.get(label)?;
        Some(values.iter().position(|v| *v == value))
    }

    fn set(&mut self, label: &str, values: &[Option<Digest>]) {
        let mut values = values.to_vec();
        values.dedup();
        if values == [None] {
            self.labels.remove(label);
        } else {
            self.labels.insert(label.to_owned(), values);
        }
    }
}

/// What to do with one label.
enum Plan {
    InSync {
        label: String,
    },
    Move {
        label: String,
        from: Option<Digest>,
        to: Option<Digest>,
    },
    Keep {
        label: String,
    },
    /// Boxed: rare, and the largest, it would size every plan of a first
    /// sync's million.
    Conflict(Box<SyncConflict>),
}

impl StoreRoot {
    /// Brings store `id` in `destination` up to date with store `id` here.
    /// Progress counts objects. Conflicts are reported, not errors: check
    /// [`SyncReport::converged`].
    ///
    /// Sync: brings a store in one root up to date with the same store in
    /// another, copying only the content the destination lacks and moving
    /// labels with compare-and-swap, so that nothing changed on the
    /// destination is ever overwritten without being noticed.
    ///
    /// What two roots last agreed on is kept in both of them, in the reserved
    /// store `_sync`, one record per (other root, store): for each label, the
    /// values either side may hold and still count as "unchanged since the
    /// last sync", whichever direction that sync ran. The newer of the two
    /// copies is the one read. A label is then, by its source value `S`,
    /// destination value `D` and that record:
    ///
    /// - in sync when `S == D`;
    /// - moved to `S` (by compare-and-swap against `D`) when `D` is unchanged;
    /// - kept when only the destination changed it (the destination's change
    ///   stays, and a sync the other way carries it back);
    /// - a conflict when both changed it, or when a first sync finds
    ///   different values: reported, never overwritten.
    ///
    /// Before labels move, the record is written with both the old and the
    /// new value allowed, so a sync killed half way and run again resumes:
    /// labels it already moved count as unchanged. Content is copied before
    /// any label that points at it, read verified and stored re-hashed.
    ///
    /// Every root has an identity, a UUID created the first time it syncs
    /// and kept in its `_sync` store (not derived from its path). Records name
    /// both identities, and every save of a record gets a new agreement id.
    /// A record counts only when both roots hold the same one (or the
    /// destination holds the direct successor of the source's: a sync killed
    /// between writing the two copies). Otherwise (a root wiped, restored
    /// from a backup, copied, or never synced with this peer) the sync is a
    /// first sync: a union, in which a label the sides disagree on is a
    /// conflict and nothing is deleted, and the report says why.
    #[tracing::instrument(level = "info", skip_all, fields(store = id))]
    pub async fn sync_store_to(
        &self,
        destination: &StoreRoot,
        id: &str,
        options: &SyncOptions,
        progress: impl Progress + 'static,
    ) -> Result<SyncReport> {
        let progress: Arc<dyn Progress> = Arc::new(progress);
        if id == CHAIN_STORE {
            return self.sync_chains_to(destination, options, progress).await;
        }
        let source = self.store(id)?;
        let target = destination.store(id)?;
        let ids = [
            self.sync_identity().await?,
            destination.sync_identity().await?,
        ];
        let copies = [
            (destination.clone(), record_label(&ids[0], id)),
            (self.clone(), record_label(&ids[1], id)),
        ];
        let destination_copy = load(&copies[0].0, &copies[0].1).await?;
        let source_copy = load(&copies[1].0, &copies[1].1).await?;
        let mut report = SyncReport {
            store: id.to_owned(),
            dry_run: options.dry_run,
            ..SyncReport::default()
        };
        let mut agreed = match shared_record(&ids, source_copy, destination_copy) {
            Ok(record) => record,
            Err(why) => {
                report.first_sync = Some(why);
                Agreed::default()
            }
        };
        agreed.roots = ids.clone();
        agreed.store = id.to_owned();
        let sides = Sides {
            source: &source,
            target: &target,
            markers: [sync_actor(&ids[0]), sync_actor(&ids[1])],
        };
        let prefix = options.prefix.as_str();

        // What each log shows changed since the last sync under this
        // prefix, and the values the sides agreed on before those changes.
        let mut logs = None;
        if report.first_sync.is_none()
            && let Some(since) = agreed.positions(prefix, &ids)
        {
            match sides.read_logs(since, prefix).await {
                Ok(read) => logs = Some(read),
                Err(StoreError::ChangesTrimmed { store, .. }) => {
                    report.first_sync = Some(format!(
                        "the change log of store {store} no longer holds what came after \
                         the last sync (trimmed, or the store was made anew), so the two \
                         sides were compared as in a first sync"
                    ));
                    agreed.labels.clear();
                }
                Err(error) => return Err(error),
            }
        }
        let mut ends = match &logs {
            Some([source_log, target_log]) => [source_log.end, target_log.end],
            None => [source.last_change().await?, target.last_change().await?],
        };
        if let Some(read) = &logs {
            report.changes_read = read[0].read + read[1].read;
            // The record holds the labels the sides still disagree on;
            // for the rest, what a label held before its first change
            // since the last sync is what the sides agreed on.
            for log in read {
                for (label, old) in &log.labels {
                    let old = old.as_ref().map(ContentRef::digest).transpose()?;
                    agreed
                        .labels
                        .entry(label.clone())
                        .or_insert_with(|| vec![old]);
                }
            }
        }

        let plans = if let (Some(_), false) = (&logs, options.full) {
            // Only labels that changed, or that the sides disagreed on.
            report.incremental = true;
            let candidates: Vec<String> = agreed
                .labels
                .keys()
                .filter(|label| label.starts_with(prefix))
                .cloned()
                .collect();
            let mut plans = Vec::with_capacity(candidates.len());
            let mut starts = Vec::new();
            for label in candidates {
                let (from_source, at_target) = sides.values(&label).await?;
                let plan = decide(&label, from_source, at_target, &agreed);
                if let Plan::Move { to: Some(to), .. } = &plan {
                    starts.push(ContentRef::from(*to));
                }
                plans.push(plan);
            }
            let missing = sides
                .missing_reached(starts, &mut report)
                .await?
                .iter()
                .map(ContentRef::digest)
                .collect::<Result<Vec<_>>>()?;
            copy_wanted(&source, &target, missing, options, progress, &mut report).await?;
            plans
        } else {
            let source_labels = labels(&source, prefix).await?;
            let plans = plan(&target, &source_labels, &agreed, prefix).await?;
            let wanted: Vec<Digest> = if prefix.is_empty() {
                source.object_digests().await?
            } else {
                source
                    .reachable_from(source_labels.values().copied())
                    .await?
            };
            // The plans hold what is needed of the labels from here on.
            drop(source_labels);
            copy_missing(&source, &target, wanted, options, progress, &mut report).await?;
            plans
        };

        let moving = plans
            .iter()
            .filter(|plan| matches!(plan, Plan::Move { .. }));
        let mut moves = Vec::with_capacity(moving.count());
        for plan in plans {
            match plan {
                Plan::InSync { label, .. } => {
                    report.labels_in_sync += 1;
                    agreed.labels.remove(&label);
                }
                Plan::Keep { label } => {
                    // Remembered until a sync the other way carries it:
                    // with no value agreed on, the source never had it.
                    agreed.labels.entry(label).or_insert_with(|| vec![None]);
                    report.labels_kept += 1;
                }
                Plan::Conflict(conflict) => {
                    // Remembered, so that every later sync looks at it
                    // again until the sides agree (with no value agreed
                    // on, a first sync's conflicts stay conflicts).
                    agreed.labels.entry(conflict.label.clone()).or_default();
                    report.conflicts.push(*conflict);
                }
                Plan::Move { label, from, to } => moves.push((label, from, to)),
            }
        }
        if options.dry_run {
            report.labels_moved = moves.len() as u64;
            return Ok(report);
        }
        agreed.set_positions(prefix, &ids, ends);
        // First allow both values, so that a sync killed while moving
        // labels finds them unchanged when it runs again.
        for (label, from, to) in &moves {
            agreed.set(label, &[*from, *to]);
        }
        if !moves.is_empty() {
            save(&copies, &mut agreed).await?;
        }
        // Labels move in batches, each one transaction that applies only
        // if no label in it changed since it was read; a batch that meets
        // such a change falls back to one label at a time. The moves are
        // named in the destination's log as this sync's.
        let batches = batched(moves, BATCH);
        let moved = |batch: Vec<Move>| {
            let target = target.by_actor(&sides.markers[0]);
            async move {
                let refs: Vec<_> = batch.iter().map(move_refs).collect();
                if target.compare_and_swap_labels(&refs).await? {
                    return Ok(batch.into_iter().map(|m| (m, None)).collect());
                }
                let mut outcomes = Vec::with_capacity(batch.len());
                for (label, from, to) in batch {
                    let swapped = target
                        .compare_and_swap_label(
                            &label,
                            from.map(ContentRef::from).as_ref(),
                            to.map(ContentRef::from).as_ref(),
                        )
                        .await?;
                    // Not swapped: changed on the destination since it was
                    // read, so both sides changed it.
                    let now = if swapped {
                        None
                    } else {
                        Some(target.get_by_label(&label).await?)
                    };
                    outcomes.push(((label, from, to), now));
                }
                Ok(outcomes)
            }
        };
        in_parallel(batches, options.parallel, moved, |outcomes| {
            for ((label, from, to), now) in outcomes {
                match now {
                    None => {
                        report.labels_moved += 1;
                        agreed.labels.remove(&label);
                    }
                    Some(destination) => {
                        agreed.set(&label, &[from]);
                        report.conflicts.push(SyncConflict {
                            label,
                            source: to.map(ContentRef::from),
                            destination,
                            last_agreed: Some(from.map(ContentRef::from)),
                        });
                    }
                }
            }
        })
        .await?;
        report.conflicts.sort_by(|a, b| a.label.cmp(&b.label));
        // The destination's log past this sync's own moves need not be
        // read again.
        ends[1] = sides.past_own_moves(ends[1]).await?;
        agreed.set_positions(prefix, &ids, ends);
        save(&copies, &mut agreed).await?;
        Ok(report)
    }

    /// Keeps store `id` in `destination` following the one here: syncs it
    /// (as [`StoreRoot::sync_store_to`]), hands the report to `each`, then
    /// waits for the next change to the store's labels under
    /// `options.prefix` and syncs again, until an error stops it. Each sync
    /// reads only what changed since the last (the two roots' record
    /// remembers how far they got), so stopping and starting again, or a
    /// crash of either side, loses nothing: the next run carries on from
    /// what was agreed. Conflicts are reported in each report, never
    /// overwritten.
    #[tracing::instrument(level = "info", skip_all, fields(store = id))]
    pub async fn follow_store_to(
        &self,
        destination: &StoreRoot,
        id: &str,
        options: &SyncOptions,
        mut each: impl FnMut(SyncReport) + Send,
    ) -> Result<()> {
        let source = self.store(id)?;
        loop {
            let seen = source.last_change().await?;
            each(self.sync_store_to(destination, id, options, ()).await?);
            let mut watch = source.watch(&options.prefix, seen);
            match watch.next().await {
                Some(change) => {
                    change?;
                }
                None => return Ok(()),
            }
            // Changes made together are synced together.
            tokio::time::sleep(FOLLOW_SETTLE).await;
        }
    }

    /// Syncs event chains (the chain store, or the heads under
    /// `options.prefix`, `head/ACTOR` for one actor's): segments the
    /// destination lacks are copied, each chain is verified event by event,
    /// and a head moves only where the destination lacks the chain or holds
    /// an older event of it; any other difference is a conflict. The
    /// chains stream from an export straight into an import.
    async fn sync_chains_to(
        &self,
        destination: &StoreRoot,
        options: &SyncOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<SyncReport> {
        let (source, target) = (self.chain_store(), destination.chain_store());
        let (reader, writer) = std::io::pipe().map_err(|source| StoreError::Io {
            store: CHAIN_STORE.into(),
            action: "opening a pipe for the sync",
            path: "<pipe>".into(),
            source,
        })?;
        let prefix = (!options.prefix.is_empty()).then_some(options.prefix.as_str());
        let export = async move {
            let (summary, writer) = source.export_package(prefix, writer, progress).await?;
            // The import reads to the end: let go of the pipe now.
            drop(writer);
            Ok::<_, StoreError>(summary)
        };
        let import_options = ImportOptions {
            dry_run: options.dry_run,
            overwrite: false,
        };
        let import = target.import_package_with(reader, import_options, ());
        let (exported, imported) = tokio::join!(export, import);
        let summary = match (exported, imported) {
            (Ok(_), Ok(summary)) => summary,
            // The import stopped reading; its error says why.
            (Err(StoreError::Io { source, .. }), Err(error))
                if source.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                return Err(error);
            }
            (Err(error), _) | (Ok(_), Err(error)) => return Err(error),
        };
        let moved = summary
            .labels
            .saturating_sub(summary.labels_unchanged + summary.conflicts.len() as u64);
        Ok(SyncReport {
            store: CHAIN_STORE.into(),
            dry_run: options.dry_run,
            objects_copied: summary.new_objects,
            bytes_copied: summary.new_bytes,
            objects_present: summary.objects - summary.new_objects,
            labels_moved: moved,
            labels_in_sync: summary.labels_unchanged,
            labels_kept: 0,
            conflicts: summary
                .conflicts
                .into_iter()
                .map(|conflict| SyncConflict {
                    label: conflict.label,
                    source: Some(conflict.package),
                    destination: Some(conflict.current),
                    last_agreed: None,
                })
                .collect(),
            first_sync: None,
            incremental: false,
            changes_read: 0,
        })
    }

    /// The reserved store holding what syncs with other roots agreed on.
    fn sync_records(&self) -> ContentStore {
        ContentStore::in_root(self.clone(), StoreId::reserved(SYNC_STORE))
    }

    /// This root's identity in sync records: a UUID made the first time
    /// it is asked for and kept in the root's `_sync` store, so that it
    /// follows the root's data, not its path. A root wiped or created anew
    /// gets a new one.
    pub async fn sync_identity(&self) -> Result<String> {
        let records = self.sync_records();
        loop {
            if let Some(bytes) = records.get_content_by_label(IDENTITY_LABEL).await? {
                return String::from_utf8(bytes).map_err(|_| StoreError::Index {
                    root: self.path().map(ToOwned::to_owned).unwrap_or_default(),
                    action: "reading the root's sync identity",
                    source: format!("{SYNC_STORE} label {IDENTITY_LABEL} is not text").into(),
                });
            }
            let fresh = uuid::Uuid::new_v4().to_string();
            let fresh_ref = records.store(fresh.clone()).await?;
            // Two processes asking at once agree on the first one written.
            if records
                .compare_and_swap_label(IDENTITY_LABEL, None, Some(&fresh_ref))
                .await?
            {
                return Ok(fresh);
            }
        }
    }
}

/// The actor a sync names in the change log of the destination for the
/// labels it moves there: the source root's identity. A later sync skips
/// these entries, as changes that came from the other side.
fn sync_actor(identity: &str) -> String {
    format!("sync:{identity}")
}

/// The two sides of one store's sync.
struct Sides<'a> {
    source: &'a ContentStore,
    target: &'a ContentStore,
    /// The actors the two roots' syncs name ([`sync_actor`]), source first.
    markers: [String; 2],
}

impl Sides<'_> {
    /// What each side's log shows changed under `prefix` since positions
    /// `since` (source, destination), leaving out what the other side's
    /// syncs wrote (its own values coming back). Fails with
    /// [`StoreError::ChangesTrimmed`] when a log no longer reaches back.
    async fn read_logs(&self, since: [u64; 2], prefix: &str) -> Result<[LogRead; 2]> {
        Ok([
            changed_labels(self.source, since[0], prefix, &self.markers[1]).await?,
            changed_labels(self.target, since[1], prefix, &self.markers[0]).await?,
        ])
    }

    /// What `label` points at on the source and on the destination.
    async fn values(&self, label: &str) -> Result<(Option<Digest>, Option<Digest>)> {
        let digest = |value: Option<ContentRef>| value.as_ref().map(ContentRef::digest).transpose();
        Ok((
            digest(self.source.get_by_label(label).await?)?,
            digest(self.target.get_by_label(label).await?)?,
        ))
    }

    /// Where the destination's log stands past `end` and this sync's own
    /// moves right after it: the first entry another writer made stops it.
    async fn past_own_moves(&self, end: u64) -> Result<u64> {
        let mut end = end;
        loop {
            let page = self.target.changes(end, crate::MAX_CHANGES_PAGE).await?;
            for change in &page.changes {
                if change.actor.as_deref() != Some(self.markers[0].as_str()) {
                    return Ok(end);
                }
                end = change.seq;
            }
            if page.changes.is_empty() {
                return Ok(end);
            }
        }
    }

    /// The objects `starts` reach on the source (through refs written
    /// inside content) that the destination lacks. Content the destination
    /// holds is taken to hold what it names, as the sync that copied it
    /// left it, so the walk stops there: it costs what changed, not the
    /// store's size.
    async fn missing_reached(
        &self,
        starts: Vec<ContentRef>,
        report: &mut SyncReport,
    ) -> Result<Vec<ContentRef>> {
        let mut seen = BTreeSet::new();
        let mut frontier = starts;
        let mut missing = Vec::new();
        while let Some(content_ref) = frontier.pop() {
            if !seen.insert(content_ref.clone()) {
                continue;
            }
            if self.target.exists(&content_ref).await? {
                report.objects_present += 1;
                continue;
            }
            if !self.source.exists(&content_ref).await? {
                continue;
            }
            for link in content_links(self.source, &content_ref).await? {
                frontier.push(link);
            }
            missing.push(content_ref);
        }
        Ok(missing)
    }
}

/// The labels under `prefix` that a store's change log shows changed
/// after `since`, leaving out entries made by `skip_actor`.
struct LogRead {
    /// Each label, with what it named before its first change read.
    labels: BTreeMap<String, Option<ContentRef>>,
    /// The newest sequence read (`since` when there was none).
    end: u64,
    /// Entries read.
    read: u64,
}

async fn changed_labels(
    store: &ContentStore,
    since: u64,
    prefix: &str,
    skip_actor: &str,
) -> Result<LogRead> {
    let mut log = LogRead {
        labels: BTreeMap::new(),
        end: since,
        read: 0,
    };
    loop {
        let page = store.changes(log.end, crate::MAX_CHANGES_PAGE).await?;
        let Some(last) = page.changes.last() else {
            return Ok(log);
        };
        log.end = last.seq;
        log.read += page.changes.len() as u64;
        for change in page.changes {
            if change.label.starts_with(prefix) && change.actor.as_deref() != Some(skip_actor) {
                log.labels.entry(change.label).or_insert(change.old);
            }
        }
    }
}

/// The refs written inside an object's content that name objects its
/// store holds.
async fn content_links(store: &ContentStore, content_ref: &ContentRef) -> Result<Vec<ContentRef>> {
    let digest = content_ref.digest()?;
    let links = match store.get_at_most(content_ref, COPY_WHOLE_MAX).await? {
        AtMost::Content(content) => crate::links::Links::of(&content, digest),
        AtMost::TooLarge { .. } => {
            let mut reader = store.reader(content_ref).await?;
            let mut scanner = crate::links::LinkScanner::new();
            let mut buffer = vec![0u8; 256 << 10];
            loop {
                let read = tokio::io::AsyncReadExt::read(&mut reader, &mut buffer)
                    .await
                    .map_err(|source| StoreError::Io {
                        store: store.id().to_owned(),
                        action: "reading content for the refs inside it",
                        path: content_ref.hash().into(),
                        source,
                    })?;
                if read == 0 {
                    break;
                }
                scanner.update(&buffer[..read]);
            }
            scanner.finish(digest)
        }
    };
    let mut held = Vec::new();
    for target in links.targets {
        let target = ContentRef::from(target);
        if store.exists(&target).await? {
            held.push(target);
        }
    }
    Ok(held)
}

/// The label under which `_sync` keeps this root's identity.
const IDENTITY_LABEL: &str = "identity";

/// The label, in a root's records, of what it agreed with the root whose
/// identity is `peer` on for store `id`.
fn record_label(peer: &str, id: &str) -> String {
    let name = blake3::hash(peer.as_bytes()).to_hex();
    format!("with/{}/{id}", &name[..32])
}

/// Every label under `prefix`, with its target (as a digest: a first sync
/// holds every label of both sides).
async fn labels(store: &ContentStore, prefix: &str) -> Result<BTreeMap<String, Digest>> {
    let mut labels = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_labels_page(prefix, after.as_deref(), 10_000)
            .await?;
        let Some(last) = page.last() else {
            return Ok(labels);
        };
        after = Some(last.label.clone());
        for entry in page {
            let digest = entry.content_ref.digest()?;
            labels.insert(entry.label, digest);
        }
    }
}

/// Decides what to do with every label under `prefix` that the source has
/// or that the last sync agreed on.
async fn plan(
    target: &ContentStore,
    source_labels: &BTreeMap<String, Digest>,
    agreed: &Agreed,
    prefix: &str,
) -> Result<Vec<Plan>> {
    let target_labels = labels(target, prefix).await?;
    let remembered = agreed.labels.keys().filter(|l| l.starts_with(prefix));
    let names: BTreeSet<&String> = source_labels
        .keys()
        .chain(target_labels.keys())
        .chain(remembered)
        .collect();
    let mut plans = Vec::with_capacity(names.len());
    for label in names {
        plans.push(decide(
            label,
            source_labels.get(label).copied(),
            target_labels.get(label).copied(),
            agreed,
        ));
    }
    Ok(plans)
}

/// What to do with `label`, by its source value, its destination value and
/// what the record says the two sides agreed on (see
/// [`StoreRoot::sync_store_to`]).
fn decide(
    label: &str,
    source: Option<Digest>,
    destination: Option<Digest>,
    agreed: &Agreed,
) -> Plan {
    if source == destination {
        return Plan::InSync {
            label: label.to_owned(),
        };
    }
    // With no agreed value (a first sync, or a label neither side had),
    // the sides are joined: what only one side has is the other's to
    // take, and different values are a conflict.
    let mut destination_unchanged = agreed
        .allows(label, destination)
        .unwrap_or(destination.is_none());
    let source_unchanged = agreed.allows(label, source).unwrap_or(source.is_none());
    // Both values allowed: a move between them is in progress (a sync the
    // other way, or one that was killed). The side holding the newer one
    // is the changed one; the older one must never overwrite it.
    if let (Some(Some(at_source)), Some(Some(at_destination))) = (
        agreed.place(label, source),
        agreed.place(label, destination),
    ) {
        destination_unchanged = at_destination < at_source;
    }
    if destination_unchanged {
        Plan::Move {
            label: label.to_owned(),
            from: destination,
            to: source,
        }
    } else if source_unchanged {
        Plan::Keep {
            label: label.to_owned(),
        }
    } else {
        Plan::Conflict(Box::new(SyncConflict {
            label: label.to_owned(),
            source: source.map(ContentRef::from),
            destination: destination.map(ContentRef::from),
            last_agreed: agreed
                .labels
                .get(label)
                .map(|values| values.last().copied().flatten().map(ContentRef::from)),
        }))
    }
}

/// Copies what of `wanted` the target lacks, in batches that share
/// commits, `options.parallel` batches at once.
async fn copy_missing(
    source: &ContentStore,
    target: &ContentStore,
    wanted: Vec<Digest>,
    options: &SyncOptions,
    progress: Arc<dyn Progress>,
    report: &mut SyncReport,
) -> Result<()> {
    // Digests, 32 bytes each: a first sync holds every object of both.
    let mut held = target.object_digests().await?;
    held.sort_unstable();
    let (present, missing): (Vec<_>, Vec<_>) = wanted
        .into_iter()
        .partition(|digest| held.binary_search(digest).is_ok());
    report.objects_present = present.len() as u64;
    copy_wanted(source, target, missing, options, progress, report).await
}

/// Copies `missing` (objects the target lacks), in batches that share
/// commits, `options.parallel` batches at once.
async fn copy_wanted(
    source: &ContentStore,
    target: &ContentStore,
    mut missing: Vec<Digest>,
    options: &SyncOptions,
    progress: Arc<dyn Progress>,
    report: &mut SyncReport,
) -> Result<()> {
    // Copied in digest order, as both indexes keep objects: reads and
    // writes then go along their B-trees rather than all over them (a
    // prefix sync copying 100,000 objects took 30% longer in the order a
    // walk of the links gives), and a shared source reads a batch's
    // inline content within its budget in one answer.
    missing.sort_unstable();
    progress.start(missing.len() as u64);
    let batches = batched(missing, BATCH);
    let dry_run = options.dry_run;
    let copy = |batch: Vec<Digest>| {
        let (source, target) = (source.clone(), target.clone());
        let batch = batch.into_iter().map(ContentRef::from).collect();
        async move { copy_batch(&source, &target, batch, dry_run).await }
    };
    in_parallel(batches, options.parallel, copy, |(objects, bytes)| {
        report.objects_copied += objects;
        report.bytes_copied += bytes;
        progress.advance(objects);
    })
    .await
}

/// Copies a batch of objects the target lacks: small ones read whole and
/// stored together, large ones streamed one by one. Returns how many
/// objects and bytes it copied (in a dry run, would copy).
async fn copy_batch(
    source: &ContentStore,
    target: &ContentStore,
    batch: Vec<ContentRef>,
    dry_run: bool,
) -> Result<(u64, u64)> {
    let (mut objects, mut bytes) = (0, 0);
    if dry_run {
        for content_ref in &batch {
            bytes += source.content_size(content_ref).await?;
            objects += 1;
        }
        return Ok((objects, bytes));
    }
    // Small content waits here to be stored together, up to a bound.
    let mut held: Vec<(ContentRef, Vec<u8>)> = Vec::new();
    let mut held_bytes = 0;
    let mut rest = &batch[..];
    while !rest.is_empty() {
        // Content kept inline, read together up to the same bound (an
        // index may keep objects of up to 1 MiB inline).
        let inline = source.get_many_small(rest, BATCH_BYTES).await?;
        let answered;
        (answered, rest) = rest.split_at(inline.len());
        for (content_ref, inline) in answered.iter().zip(inline) {
            let read = match inline {
                Some(content) => AtMost::Content(content),
                None => source.get_at_most(content_ref, COPY_WHOLE_MAX).await?,
            };
            match read {
                AtMost::Content(content) => {
                    held_bytes += content.len() as u64;
                    bytes += content.len() as u64;
                    held.push((content_ref.clone(), content));
                    if held_bytes >= BATCH_BYTES {
                        objects += store_held(target, std::mem::take(&mut held)).await?;
                        held_bytes = 0;
                    }
                }
                AtMost::TooLarge { size } => {
                    let stored = target
                        .store_reader(source.reader(content_ref).await?)
                        .await?;
                    check_copy(target, content_ref, &stored)?;
                    bytes += size;
                    objects += 1;
                }
            }
        }
    }
    objects += store_held(target, held).await?;
    Ok((objects, bytes))
}

/// Stores small copied content together; returns how many it stored.
async fn store_held(target: &ContentStore, held: Vec<(ContentRef, Vec<u8>)>) -> Result<u64> {
    let (wanted, contents): (Vec<_>, Vec<_>) = held.into_iter().unzip();
    let stored = target.store_all(contents).await?;
    for (wanted, stored) in wanted.iter().zip(&stored) {
        check_copy(target, wanted, stored)?;
    }
    Ok(wanted.len() as u64)
}

/// Both sides hash what they read and wrote, so a copy cannot differ
/// unless one of them is broken; if it does, that is corruption.
fn check_copy(target: &ContentStore, wanted: &ContentRef, stored: &ContentRef) -> Result<()> {
    if wanted == stored {
        return Ok(());
    }
    Err(StoreError::Corrupted {
        store: target.id().to_owned(),
        reference: wanted.hash().to_owned(),
        actual: stored.hash().to_owned(),
    })
}

/// `items` in batches of `size`, each moved out of `items` as it is
/// taken: a first sync of a million labels has a million moves and a
/// million objects to copy, and copying them into batches up front held
/// each twice.
fn batched<T>(items: Vec<T>, size: usize) -> impl Iterator<Item = Vec<T>> {
    let mut items = items.into_iter();
    std::iter::from_fn(move || {
        let batch: Vec<T> = items.by_ref().take(size).collect();
        (!batch.is_empty()).then_some(batch)
    })
}

/// Runs `work` on every item, at most `limit` at once, and hands each
/// result to `done` as it comes. Stops at the first error.
async fn in_parallel<I, T, Work, Running>(
    items: I,
    limit: usize,
    work: Work,
    mut done: impl FnMut(T),
) -> Result<()>
where
    I: IntoIterator,
    Work: Fn(I::Item) -> Running,
    Running: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut running = JoinSet::new();
    let mut items = items.into_iter();
    loop {
        while running.len() < limit.max(1)
            && let Some(item) = items.next()
        {
            running.spawn(work(item));
        }
        let Some(finished) = running.join_next().await else {
            return Ok(());
        };
        match finished {
            Ok(result) => done(result?),
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
}

/// One root's copy of a record, if it has one.
async fn load(root: &StoreRoot, label: &str) -> Result<Option<Agreed>> {
    let Some(bytes) = root.sync_records().get_content_by_label(label).await? else {
        return Ok(None);
    };
    let record = serde_json::from_slice(&bytes).map_err(|error| StoreError::Index {
        root: root.path().map(ToOwned::to_owned).unwrap_or_default(),
        action: "reading the record of the last sync",
        source: format!("{SYNC_STORE} label {label}: {error}").into(),
    })?;
    Ok(Some(record))
}

/// How much of a record's JSON [`write_record`] gathers before each
/// write.
const RECORD_PIECE_BYTES: usize = 1 << 20;

/// Writes the record of what the two sides agree on to both of them, the
/// destination's copy first.
async fn save(copies: &[(StoreRoot, String); 2], agreed: &mut Agreed) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    agreed.written_at = now.max(agreed.written_at + 1);
    let next = uuid::Uuid::new_v4().to_string();
    agreed.previous =
        Some(std::mem::replace(&mut agreed.agreement, next)).filter(|p| !p.is_empty());
    for (root, label) in copies {
        let mut writer = root.sync_records().writer().await?;
        write_record(agreed, &mut writer).await?;
        writer.finish_at_label(label).await?;
    }
    Ok(())
}

/// Writes `agreed` as JSON, its labels a piece at a time: the record holds
/// a value for every label a sync moves, so that for a first sync of a
/// million labels its JSON is about 90 MB, which is never held whole.
async fn write_record(agreed: &Agreed, writer: &mut crate::stream::ContentWriter) -> Result<()> {
    // Every field but the labels, then the labels as one more field.
    let mut piece = serde_json::to_vec(agreed).expect("a sync record serializes");
    let closing = piece.pop();
    debug_assert_eq!(closing, Some(b'}'));
    piece.extend_from_slice(b",\"labels\":{");
    for (index, (label, values)) in agreed.labels.iter().enumerate() {
        if index > 0 {
            piece.push(b',');
        }
        serde_json::to_writer(&mut piece, label).expect("a label serializes");
        piece.push(b':');
        serde_json::to_writer(&mut piece, values).expect("refs serialize");
        if piece.len() >= RECORD_PIECE_BYTES {
            writer.write(&piece).await?;
            piece.clear();
        }
    }
    piece.extend_from_slice(b"}}");
    writer.write(&piece).await
}

#[cfg(test)]
mod tests {
    use crate::{ContentRef, StoreRoot};

    #[tokio::test]
    async fn a_record_written_a_piece_at_a_time_reads_back_whole() {
        use super::{Agreed, load, save};
        use crate::names::Digest;
        let source = StoreRoot::at("mem:", crate::Options::default()).unwrap();
        let destination = StoreRoot::at("mem:", crate::Options::default()).unwrap();
        let mut agreed = Agreed {
            roots: ["one".into(), "two".into()],
            store: "s".into(),
            ..Agreed::default()
        };
        // Enough labels for several pieces, names that need escaping, and
        // every shape of value list.
        for i in 0..30_000u32 {
            let digest = Some(Digest::of(&i.to_le_bytes()));
            let values = match i % 3 {
                0 => vec![digest],
                1 => vec![None, digest],
                _ => vec![],
            };
            agreed.labels.insert(format!("item/{i}\"\n\u{e9}"), values);
        }
        agreed.open_conflicts.insert("item/1".into());
        let copies = [
            (destination.clone(), "with/x/s".to_owned()),
            (source.clone(), "with/y/s".to_owned()),
        ];
        save(&copies, &mut agreed).await.unwrap();
        for (root, label) in &copies {
            let read = load(root, label).await.unwrap().unwrap();
            assert_eq!(read.labels, agreed.labels);
            assert_eq!(read.agreement, agreed.agreement);
            assert_eq!(read.open_conflicts, agreed.open_conflicts);
            assert_eq!(read.roots, agreed.roots);
        }
    }

    #[tokio::test]
    async fn a_label_batch_moves_all_or_nothing() {
        let _alone = crate::engine::WRITING.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let store = StoreRoot::new(dir.path()).store("s").unwrap();
        let (one, two) = (
            store.store("one").await.unwrap(),
            store.store("two").await.unwrap(),
        );
        store.label("a", &one).await.unwrap();
        let moves = |a_from: Option<&ContentRef>| {
            vec![
                ("a".to_owned(), a_from.cloned(), Some(two.clone())),
                ("b".to_owned(), None, Some(one.clone())),
            ]
        };
        // "a" no longer holds what the batch expects: nothing moves.
        assert!(!store.compare_and_swap_labels(&moves(None)).await.unwrap());
        assert_eq!(store.get_by_label("a").await.unwrap(), Some(one.clone()));
        assert_eq!(store.get_by_label("b").await.unwrap(), None);
        assert!(
            store
                .compare_and_swap_labels(&moves(Some(&one)))
                .await
                .unwrap()
        );
        assert_eq!(store.get_by_label("a").await.unwrap(), Some(two.clone()));
        assert_eq!(store.get_by_label("b").await.unwrap(), Some(one.clone()));
        let refs = store
            .store_all(vec![b"x".to_vec(), b"one".to_vec()])
            .await
            .unwrap();
        assert_eq!(refs, [ContentRef::for_content(b"x"), one]);
        assert!(store.exists(&refs[0]).await.unwrap());
    }
}
