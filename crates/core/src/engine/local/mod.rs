//! The local engine: one directory per root, holding a SQLite index
//! (`sql.rs`: labels, object rows, totals, and the bytes of small objects)
//! and one file per large object (`layout.rs`), published by one writer
//! thread per process (`writer.rs`).

mod changes;
#[cfg(test)]
mod plans;
mod reserve;
mod sql;
mod txn;
mod wal;
mod writer;

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::layout::{self, ObjectFiles, spill_sink};
#[cfg(test)]
pub(crate) use super::steps::WRITING;
use changes::ChangeCounter;
use reserve::SpaceReserve;
use sql::{Place, Readers, index_error};
use writer::Writer;

use super::{
    Change, Engine, ObjectSource, Scan, Snapshot, Staged, StagingSink, TargetSnapshot, read_within,
};
use crate::engine::READ_ON_CALLER_MAX;
use crate::engine::{ChainHead, ChangeLog, ChangeRow, LabelRow, LinkRow, ReplacedTargets};
use crate::error::{BoxError, Result, StoreError};
use crate::names::{Digest, StoreId};
use crate::options::Options;
use crate::stats::StoreStats;
use crate::task::Progress;

/// The opened parts of a local root.
#[derive(Debug)]
pub(crate) struct LocalEngine {
    inline_threshold: usize,
    layout: ObjectFiles,
    readers: Readers,
    writer: Writer,
    changes: Arc<ChangeCounter>,
    /// Moves with the shared commit count, for watchers.
    commits: super::CommitSignal,
    /// Room that changes freeing space may use on a full disk.
    reserve: SpaceReserve,
    /// `index.lock`, held shared while the root is open: a process that
    /// can hold it alone knows no other has the index open.
    _open: File,
    /// The root directory.
    root: PathBuf,
}

/// The longest a watching thread waits on the shared commit count before
/// reading it again: commits of processes that wake no one (older builds,
/// systems other than Linux) reach watchers within it.
const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// Where findings about the index's own damage are kept for `verify`.
const DAMAGE_FILE: &str = "index.damage";

impl LocalEngine {
    pub(crate) fn open(path: &Path, options: &Options) -> Result<Self> {
        if options.inline_threshold > Options::MAX_INLINE_THRESHOLD {
            let message = format!(
                "the inline threshold of {} bytes is over the {} byte maximum",
                options.inline_threshold,
                Options::MAX_INLINE_THRESHOLD
            );
            return Err(index_error(path, "checking options", message));
        }
        std::fs::create_dir_all(path).map_err(|source| StoreError::Io {
            store: "root".into(),
            action: "creating store root",
            path: path.to_owned(),
            source,
        })?;
        if super::journal::is_log_root(path) {
            return Err(StoreError::InvalidRoot {
                root: path.display().to_string(),
                reason: format!(
                    "it holds a log root: open it as {}{}",
                    super::journal::SCHEME,
                    path.display()
                ),
            });
        }
        let db = path.join("index.sqlite");
        refuse_a_lost_index(path, &db, options.durability)?;
        let changes = ChangeCounter::open(&path.join("index.changes"))
            .map(Arc::new)
            .map_err(|source| index_error(path, "opening the change count", source))?;
        let open = check_log_before_opening(path, &changes)?;
        let mut connection = sql::open_connection(&db, options.durability, true)
            .map_err(|source| index_error(path, "opening", source))?;
        let layout = ObjectFiles::new(path, options.durability);
        // An upgrade rewrites rows other processes may have read.
        let ticket = changes.start();
        let created = sql::create_schema(&mut connection, |db, version| {
            if version == 1 {
                move_stores_to_case_safe_dirs(db, &layout)?;
            }
            Ok(())
        });
        changes.finish(ticket);
        created.map_err(|source| index_error(path, "creating or upgrading schema", source))?;
        let writer = Writer::spawn(
            connection,
            &db,
            path.to_owned(),
            layout.clone(),
            Arc::clone(&changes),
            options,
        )
        .map_err(|source| index_error(path, "opening", source))?;
        Ok(Self {
            inline_threshold: options.inline_threshold,
            readers: Readers::new(db, path.to_owned(), options.max_idle_readers),
            writer,
            layout,
            changes,
            commits: super::CommitSignal::default(),
            reserve: SpaceReserve::open(path, options.space_reserve),
            _open: open,
            root: path.to_owned(),
        })
    }

    /// After a change that freed space, while this process has given the
    /// space reserve up: empties the write-ahead log, which otherwise grows
    /// with every commit into the room the changes made, then makes the
    /// reserve again if there is now room for it.
    async fn after_freeing(&self) {
        if self.reserve.is_given_up() {
            self.writer.fold_log().await;
            self.reserve.refill_if_given_up();
        }
    }

    /// Runs an index query on the calling thread. Point queries and pages
    /// take microseconds (WAL readers never wait for writers), far less
    /// than a hop to the blocking pool and back.
    fn read<T>(
        &self,
        action: &'static str,
        query: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        self.readers.read(action, query)
    }

    /// Whether a digest is indexed in `store`, as the index stands now.
    /// The listing comes in digest order and is searched rather than
    /// copied into a set (a million digests take half the memory).
    fn indexed(&self, store: &StoreId) -> Result<impl Fn(&Digest) -> bool + use<>> {
        let indexed = self.read("listing objects", |db| sql::objects(db, store))?;
        Ok(move |digest: &Digest| indexed.binary_search(digest).is_ok())
    }
}

#[async_trait::async_trait]
impl Engine for LocalEngine {
    fn quarantined(&self, store: &StoreId) -> Result<Vec<super::QuarantinedBytes>> {
        self.layout.quarantined_bytes(store)
    }

    fn purge_quarantine(&self, store: &StoreId, cutoff: SystemTime) -> Result<u64> {
        self.layout.purge_quarantine(store, cutoff)
    }

    fn stages_to_file(&self, size: usize) -> bool {
        size > self.inline_threshold
    }

    fn stage(&self, store: &StoreId, content: Arc<Vec<u8>>) -> Result<Staged> {
        if !self.stages_to_file(content.len()) {
            return Ok(Staged::Inline(content));
        }
        self.layout.write_temp(store, &content).map(Staged::File)
    }

    fn attach_outboard(&self, staged: &Staged, outboard: &[u8]) {
        layout::attach_outboard(staged, outboard);
    }

    fn staging_sink(&self, store: &StoreId) -> Box<dyn StagingSink> {
        spill_sink(store, self.layout.clone(), self.inline_threshold)
    }

    fn open_source(&self, store: &StoreId, digest: Digest) -> Result<Option<(u64, ObjectSource)>> {
        let found = self.read("reading object", |db| {
            let info = sql::object_info(db, store, digest)?;
            let content = sql::object_content(db, store, digest)?;
            Ok(info.zip(content))
        })?;
        let Some(((size, _, _), (place, inline))) = found else {
            return Ok(None);
        };
        match (place, inline) {
            (Place::Inline(_), Some(bytes)) => Ok(Some((size, ObjectSource::Inline(bytes)))),
            (Place::Inline(_) | Place::InlineMissing(_), _) => Ok(None),
            (Place::File, _) => Ok(self
                .layout
                .open_source(store, digest, size)?
                .map(|source| (size, source))),
        }
    }

    fn build_outboard(&self, store: &StoreId, digest: Digest) -> Result<Option<(Digest, PathBuf)>> {
        self.layout.build_outboard(store, digest)
    }

    fn discard(&self, staged: Staged) {
        txn::discard(staged);
    }

    /// A change that only frees space and finds the disk full is tried
    /// once more with the root's space reserve given up.
    async fn apply(&self, change: Change) -> Result<bool> {
        let Some(again) = change.freeing_copy() else {
            return self.writer.write(change).await;
        };
        let applied = match self.writer.write(change).await {
            Err(error) if error.is_disk_full() && self.reserve.give_up() => {
                self.writer.write(again).await
            }
            applied => applied,
        };
        if applied.is_ok() {
            self.after_freeing().await;
        }
        applied
    }

    /// As [`LocalEngine::apply`], for each change of the batch.
    async fn apply_all(&self, changes: Vec<Change>) -> Vec<Result<bool>> {
        let mut copies: Vec<_> = changes.iter().map(Change::freeing_copy).collect();
        let frees = copies.iter().any(Option::is_some);
        let mut results = self.writer.write_all(changes).await;
        let full = |result: &Result<bool>| result.as_ref().is_err_and(StoreError::is_disk_full);
        let retry: Vec<usize> = (0..results.len())
            .filter(|&at| copies[at].is_some() && full(&results[at]))
            .collect();
        if !retry.is_empty() && self.reserve.give_up() {
            let again = retry.iter().filter_map(|&at| copies[at].take()).collect();
            for (at, result) in retry.into_iter().zip(self.writer.write_all(again).await) {
                results[at] = result;
            }
        }
        if frees && results.iter().any(Result::is_ok) {
            self.after_freeing().await;
        }
        results
    }

    fn settled(&self) -> Option<u64> {
        self.changes.settled()
    }

    async fn changes(&self, store: &StoreId, since: u64, limit: usize) -> Result<ChangeLog> {
        self.read("reading the change log", |db| {
            sql::changes(db, store, since, limit)
        })
    }

    async fn label_change_after(
        &self,
        store: &StoreId,
        label: &str,
        seq: u64,
    ) -> Result<Option<ChangeRow>> {
        self.read("reading a label's change log", |db| {
            sql::label_change_after(db, store, label, seq)
        })
    }

    async fn label_changes_before(
        &self,
        store: &StoreId,
        label: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ChangeRow>> {
        self.read("reading a label's change log", |db| {
            sql::label_changes_before(db, store, label, before, limit)
        })
    }

    fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        let (count, waited) = (Arc::clone(&self.changes), Arc::clone(&self.changes));
        self.commits.subscribe_waiting(
            move || count.finished_count(),
            move |seen| waited.wait_past(seen, COMMIT_WAIT),
        )
    }

    async fn object_size(&self, store: &StoreId, digest: Digest) -> Result<Option<u64>> {
        let row = self.read("looking up object", |db| {
            sql::object_info(db, store, digest)
        })?;
        Ok(row.map(|(size, _, _)| size))
    }

    async fn read_inline_many(
        &self,
        store: &StoreId,
        digests: &[Digest],
        budget: u64,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        self.read("reading objects", |db| {
            // One read transaction for all of them.
            let transaction = db.unchecked_transaction()?;
            read_within(digests, budget, |digest| {
                Ok(match sql::object_content(&transaction, store, digest)? {
                    Some((Place::Inline(_), bytes)) => bytes,
                    _ => None,
                })
            })
        })
    }

    async fn has_object(&self, store: &StoreId, digest: Digest) -> Result<bool> {
        self.read("looking up object", |db| sql::has_object(db, store, digest))
    }

    async fn read_object(&self, store: &StoreId, digest: Digest) -> Result<Option<Vec<u8>>> {
        let found = self.read("reading object", |db| {
            sql::object_content(db, store, digest)
        })?;
        match found {
            None | Some((Place::InlineMissing(_), _)) => Ok(None),
            Some((Place::Inline(_), inline)) => Ok(inline),
            Some((Place::File, _)) => {
                let path = self.layout.object_path(store, digest);
                let small = std::fs::metadata(&path).is_ok_and(|m| m.len() <= READ_ON_CALLER_MAX);
                if small {
                    return self.layout.read(store, digest);
                }
                let (layout, store) = (self.layout.clone(), store.clone());
                crate::task::blocking(move || layout.read(&store, digest)).await
            }
        }
    }

    async fn label_target(&self, store: &StoreId, label: &str) -> Result<Option<Digest>> {
        self.read("looking up label", |db| sql::label_target(db, store, label))
    }

    async fn chain_tip(&self, store: &StoreId, label: &str) -> Result<Option<ChainHead>> {
        self.read("looking up chain head", |db| {
            sql::chain_tip(db, store, label)
        })
    }

    async fn labels_page(
        &self,
        store: &StoreId,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LabelRow>> {
        self.read("listing labels", |db| {
            sql::labels_page(db, store, prefix, after, limit)
        })
    }

    async fn objects(&self, store: &StoreId) -> Result<Vec<Digest>> {
        self.read("listing objects", |db| sql::objects(db, store))
    }

    async fn store_stats(&self, store: &StoreId) -> Result<StoreStats> {
        self.read("reading totals", |db| sql::store_stats(db, store))
    }

    async fn store_created_at(&self, store: &StoreId) -> Result<Option<i64>> {
        self.read("looking up store", |db| sql::store_created_at(db, store))
    }

    fn stores(&self) -> Result<Vec<(String, StoreStats)>> {
        self.read("listing stores", sql::stores)
    }

    fn snapshot(&self, store: &StoreId, prefix: &str) -> Result<Snapshot> {
        self.read("listing labels and objects", |db| {
            sql::snapshot(db, store, prefix)
        })
    }

    fn target_snapshot(&self, store: &StoreId) -> Result<TargetSnapshot> {
        self.read("listing label targets and objects", |db| {
            sql::target_snapshot(db, store)
        })
    }

    fn links(&self, store: &StoreId) -> Result<Vec<LinkRow>> {
        self.read("listing links", |db| sql::links(db, store))
    }

    fn replaced_targets(
        &self,
        store: &StoreId,
        before: i64,
        keep_last: u64,
    ) -> Result<ReplacedTargets> {
        self.read("listing what the change log names", |db| {
            sql::replaced_targets(db, store, before, keep_last)
        })
    }

    fn unscanned_links(&self, store: &StoreId) -> Result<Vec<Digest>> {
        self.read("listing objects not scanned for links", |db| {
            sql::unscanned_links(db, store)
        })
    }

    fn scan(&self, store: &StoreId, progress: &dyn Progress) -> Result<Scan> {
        let indexed = self.indexed(store)?;
        let files = self.layout.object_files(store)?;
        let stats = self.read("reading totals", |db| sql::store_stats(db, store))?;
        let file_bytes: u64 = files.iter().map(|file| file.metadata.len()).sum();
        // Inline bytes are what the totals count beyond the files' share.
        let indexed_file_bytes: u64 = files
            .iter()
            .filter(|file| file.digest.is_some_and(|d| indexed(&d)))
            .map(|file| file.metadata.len())
            .sum();
        progress.start(file_bytes + stats.bytes.saturating_sub(indexed_file_bytes));

        let mut scan = Scan::default();
        self.layout
            .scan_files(store, files, &indexed, &mut scan, progress)?;
        self.read("reading inline objects", |db| {
            sql::for_each_inline(db, store, |digest, bytes| {
                let actual = Digest::of(bytes);
                scan.tally(
                    digest,
                    bytes.len() as u64,
                    actual,
                    indexed(&digest),
                    progress,
                );
                Ok::<_, rusqlite::Error>(())
            })
        })?;
        Ok(scan)
    }

    fn is_present(&self, store: &StoreId, digest: Digest) -> Result<bool> {
        let row = self.read("looking up object", |db| {
            sql::object_info(db, store, digest)
        })?;
        Ok(row.is_some_and(|(_, _, place)| {
            txn::bytes_present(&self.layout, store, digest, place)
                || (matches!(place, Place::File) && self.layout.restore_doomed(store, digest))
        }))
    }

    /// Finishes or undoes the removals an interrupted collection left
    /// (files moved aside, see `ObjectFiles::doom_object`): a file whose
    /// row is gone is deleted, one whose row remains is put back. Returns
    /// how many were deleted and put back.
    fn finish_removals(&self, store: &StoreId) -> Result<(u64, u64)> {
        self.layout.finish_removals(store, |digest| {
            self.read("looking up object", |db| sql::has_object(db, store, digest))
        })
    }

    fn unindexed(&self, store: &StoreId, cutoff: SystemTime) -> Result<Vec<Digest>> {
        self.layout.unindexed(store, cutoff, self.indexed(store)?)
    }

    fn stale_staging(&self, store: &StoreId, cutoff: SystemTime) -> Result<Vec<PathBuf>> {
        self.layout.stale_temp_files(store, cutoff)
    }

    fn remove_staging(&self, leftovers: &[PathBuf]) -> u64 {
        layout::remove_files(leftovers)
    }

    fn store_dir_ids(&self) -> io::Result<Vec<String>> {
        self.layout.store_dir_ids()
    }

    /// SQLite's own check of the database's pages, and any damage to its
    /// log found when a process opened the root.
    fn damaged_labels(&self, store: &StoreId) -> Result<Vec<String>> {
        self.read("checking label rows", |db| sql::damaged_labels(db, store))
    }

    fn check_integrity(&self) -> Result<Vec<String>> {
        let mut problems = self.read("checking integrity", sql::integrity_problems)?;
        let findings = self.root.join(DAMAGE_FILE);
        match std::fs::read_to_string(&findings) {
            Ok(text) => problems.extend(text.lines().map(str::to_owned)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::Io {
                    store: "root".into(),
                    action: "reading index damage findings",
                    path: findings,
                    source,
                });
            }
        }
        Ok(problems)
    }

    fn open_object(&self, store: &StoreId, digest: Digest) -> Result<Option<Box<dyn Read + Send>>> {
        let found = self.read("reading object", |db| {
            sql::object_content(db, store, digest)
        })?;
        match found {
            None | Some((Place::InlineMissing(_), _)) => Ok(None),
            Some((Place::Inline(_), inline)) => {
                Ok(inline.map(|bytes| Box::new(io::Cursor::new(bytes)) as Box<dyn Read + Send>))
            }
            Some((Place::File, _)) => self.layout.open_reader(store, digest),
        }
    }
}

/// Takes `index.lock` for the engine's life. When no other process has
/// the root open, first checks the index's write-ahead log: a frame that
/// fails its check with later frames of the same log after it means
/// SQLite is about to drop acknowledged commits silently. That is
/// recorded in `index.damage`, which `verify` reports until an operator
/// deals with it and removes the file; the root opens as SQLite leaves it.
fn check_log_before_opening(path: &Path, changes: &ChangeCounter) -> Result<File> {
    let lock_path = path.join("index.lock");
    let io = |action, source| StoreError::Io {
        store: "root".into(),
        action,
        path: lock_path.clone(),
        source,
    };
    let lock = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|source| io("opening the index lock", source))?;
    if lock.try_lock().is_ok() {
        changes.forget_waiters();
        let log = path.join("index.sqlite-wal");
        let damage = wal::check(&log, changes.acknowledged_log_end())
            .map_err(|source| io("checking the index log", source))?;
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let log_is_empty = std::fs::metadata(&log).map_or(true, |metadata| metadata.len() == 0);
        let unfolded = changes.unfolded();
        let finding = match damage {
            Some(damage) => Some(format!(
                "{at}: index.sqlite-wal was damaged when the root was opened: {damage}. The \
                 labels those commits changed are back as they were before them; restore them \
                 from a package, then delete {DAMAGE_FILE}\n"
            )),
            None if log_is_empty && unfolded && !index_is_missing(&path.join("index.sqlite")) => {
                changes.forget_log_end();
                Some(format!(
                    "{at}: index.sqlite-wal was missing or empty when the root was opened, but \
                     commits made since the index file last took in the log are not \
                     known to be in it: the labels and small content they wrote may be lost (the \
                     log was deleted, or the machine lost power under buffered durability). \
                     Check the labels you rely on, restore them from a package, then delete \
                     {DAMAGE_FILE}\n"
                ))
            }
            None => None,
        };
        if let Some(line) = finding {
            let findings = path.join(DAMAGE_FILE);
            let written = File::options()
                .create(true)
                .append(true)
                .open(&findings)
                .and_then(|mut file| {
                    file.write_all(line.as_bytes())
                        .and_then(|()| file.sync_all())
                });
            written.map_err(|source| io("recording index damage", source))?;
            // A damaged log is kept beside the index for inspection.
            if !log_is_empty {
                let kept = path.join(format!("index.sqlite-wal.damaged-{}", std::process::id()));
                let _ = std::fs::copy(&log, kept);
            }
        }
        lock.unlock()
            .map_err(|source| io("releasing the index lock", source))?;
    }
    lock.lock_shared()
        .map_err(|source| io("taking the index lock", source))?;
    Ok(lock)
}

/// Upgrades a root made by the first release, which named store directories
/// by the id verbatim, to case-safe names (see `layout::store_dir_name`).
/// Runs inside the schema upgrade's transaction, so concurrent openers wait
/// and a crash half way is finished by the next open: moving is idempotent.
fn move_stores_to_case_safe_dirs(
    db: &rusqlite::Connection,
    layout: &ObjectFiles,
) -> std::result::Result<(), BoxError> {
    let ids = sql::store_ids(db)?;
    for id in ids
        .iter()
        .filter(|id| id.bytes().any(|b| b.is_ascii_uppercase()))
    {
        let store = StoreId::parse(id)?;
        let (old, new) = (layout.legacy_store_dir(id), layout.store_dir(&store));
        if !old.exists() || new.exists() {
            continue;
        }
        // On a case-insensitive file system, ids that differ only in case
        // shared one directory: copy this store's own objects out of it
        // rather than take the other store's files along.
        let shares_dir = ids.iter().any(|other| {
            other != id
                && other.eq_ignore_ascii_case(id)
                && same_dir(&old, &layout.legacy_store_dir(other))
        });
        if shares_dir {
            for digest in sql::objects(db, &store)? {
                let target = layout.object_path(&store, digest);
                std::fs::create_dir_all(target.parent().expect("objects have a shard"))?;
                std::fs::copy(old.join(target.strip_prefix(&new)?), &target)?;
            }
        } else {
            std::fs::rename(&old, &new)?;
        }
    }
    Ok(())
}

/// Whether two paths name one directory (as two spellings do on a
/// case-insensitive file system).
#[cfg(unix)]
fn same_dir(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Without inode numbers, two spellings that both exist are taken to be
/// one directory: copying is right either way, renaming is not.
#[cfg(not(unix))]
fn same_dir(a: &Path, b: &Path) -> bool {
    a.exists() && b.exists()
}

/// Whether the index file is missing or empty (as a new root's is before
/// its first open).
fn index_is_missing(db: &Path) -> bool {
    std::fs::metadata(db).map_or(true, |metadata| metadata.len() == 0)
}

/// Refuses to open a root whose index is missing while store directories
/// hold content files: a new, empty index would hide them, and gc would
/// take them for crash leftovers. [`create_index`] is the way past this.
fn refuse_a_lost_index(path: &Path, db: &Path, durability: crate::Durability) -> Result<()> {
    if !index_is_missing(db) {
        return Ok(());
    }
    let layout = ObjectFiles::new(path, durability);
    let listing = |source| StoreError::Io {
        store: "root".into(),
        action: "listing store directories",
        path: path.join("stores"),
        source,
    };
    let mut holding = 0;
    for id in layout.store_dir_ids().map_err(listing)? {
        let store = match StoreId::parse(&id) {
            Ok(store) => store,
            // The root's own stores (`_chains`, the compile cache).
            Err(_) if id.starts_with('_') => StoreId::reserved(id),
            Err(_) => continue,
        };
        if !layout.object_files(&store)?.is_empty() {
            holding += 1;
        }
    }
    if holding > 0 {
        return Err(StoreError::IndexMissing {
            root: path.to_owned(),
            stores: holding,
        });
    }
    Ok(())
}

/// Creates an empty index for a root whose index is missing, so that it
/// opens and its content files can be indexed again
/// ([`crate::StoreRoot::reindex`]). Does nothing when the index exists.
pub(crate) fn create_index(path: &Path) -> Result<()> {
    let db = path.join("index.sqlite");
    if !index_is_missing(&db) {
        return Ok(());
    }
    let mut connection = sql::open_connection(&db, crate::Durability::Synced, true)
        .map_err(|source| index_error(path, "creating", source))?;
    sql::create_schema(&mut connection, |_, _| Ok(()))
        .map_err(|source| index_error(path, "creating schema", source))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::engine::steps::{RECORDED, Step};
    use crate::{Durability, StoreRoot};

    fn take_steps() -> Vec<Step> {
        std::mem::take(&mut *RECORDED.lock().unwrap())
    }

    fn position(steps: &[Step], wanted: impl Fn(&Step) -> bool) -> usize {
        steps
            .iter()
            .position(wanted)
            .unwrap_or_else(|| panic!("step missing from {steps:?}"))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn synced_writes_flush_exactly_what_they_wrote_before_the_acknowledgement() {
        let _alone = crate::engine::steps::WRITING.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let root = StoreRoot::with_durability(dir.path(), Durability::Synced);
        let store = root.store("synced").unwrap();
        store.store(vec![1u8; 100_000]).await.unwrap();

        // A file object: its contents, then its rename, then the directory
        // holding the new name, then the index commit, then the answer.
        take_steps();
        store.store(vec![2u8; 100_000]).await.unwrap();
        let steps = take_steps();
        let synced = position(&steps, |s| matches!(s, Step::FileSynced(_)));
        let Step::FileSynced(staged) = &steps[synced] else {
            unreachable!()
        };
        let published = position(
            &steps,
            |s| matches!(s, Step::Published(from, _) if from == staged),
        );
        let Step::Published(_, object) = &steps[published] else {
            unreachable!()
        };
        let shard = object.parent().unwrap().to_owned();
        let dir_synced = position(&steps, |s| *s == Step::DirSynced(shard.clone()));
        let committed = position(&steps, |s| *s == Step::Committed);
        let acknowledged = position(&steps, |s| *s == Step::Acknowledged);
        assert!(
            synced < published
                && published < dir_synced
                && dir_synced < committed
                && committed < acknowledged,
            "{steps:?}"
        );

        // Inline objects and labels: the commit (which fsyncs the log) is
        // the only flush, and it comes before the answer.
        store
            .store_at_label("small", b"small".to_vec())
            .await
            .unwrap();
        assert_eq!(take_steps(), [Step::Committed, Step::Acknowledged]);

        // Concurrent small writes share commits and flush no file or directory.
        let writes: Vec<_> = (0..16u8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.store(vec![i; 100]).await.unwrap() })
            })
            .collect();
        for write in writes {
            write.await.unwrap();
        }
        let steps = take_steps();
        let commits = steps.iter().filter(|s| **s == Step::Committed).count();
        let answers = steps.iter().filter(|s| **s == Step::Acknowledged).count();
        assert_eq!(answers, 16);
        assert!(
            commits <= answers && commits + answers == steps.len(),
            "{steps:?}"
        );
    }
}
