//! The label index: one SQLite database per root, in WAL mode.
//!
//! It holds, per store, which objects exist (with their sizes), what every
//! label points at, and running totals kept by triggers, so that lookups are
//! O(log n) and totals O(1). SQLite gives us atomic multi-row updates, and
//! locking that works across processes. All writes go through the root's
//! single writer thread ([`crate::writer`]); reads use a small pool of
//! read-only connections and never block the writer (WAL).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::error::{BoxError, Result, StoreError};
use crate::names::{Digest, StoreId};
use crate::objects::{ObjectFiles, io_error};
use crate::root::Durability;

/// Read connections kept open between reads; bursts beyond this open more
/// and close them afterwards.
const MAX_IDLE_READERS: usize = 16;

/// How long a connection waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The first release's schema. Every root starts from it and is brought up
/// to date by [`MIGRATIONS`], so new and old roots take the same path.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS stores (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    object_count INTEGER NOT NULL DEFAULT 0,
    total_bytes INTEGER NOT NULL DEFAULT 0,
    label_count INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    store TEXT NOT NULL,
    hash BLOB NOT NULL,
    size INTEGER NOT NULL,
    stored_at INTEGER NOT NULL,
    PRIMARY KEY (store, hash)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS labels (
    store TEXT NOT NULL,
    name TEXT NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (store, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS labels_by_target ON labels (store, hash);
CREATE TRIGGER IF NOT EXISTS object_added AFTER INSERT ON objects BEGIN
    UPDATE stores SET object_count = object_count + 1, total_bytes = total_bytes + NEW.size
    WHERE id = NEW.store;
END;
CREATE TRIGGER IF NOT EXISTS object_removed AFTER DELETE ON objects BEGIN
    UPDATE stores SET object_count = object_count - 1, total_bytes = total_bytes - OLD.size
    WHERE id = OLD.store;
END;
CREATE TRIGGER IF NOT EXISTS label_added AFTER INSERT ON labels BEGIN
    UPDATE stores SET label_count = label_count + 1 WHERE id = NEW.store;
END;
CREATE TRIGGER IF NOT EXISTS label_removed AFTER DELETE ON labels BEGIN
    UPDATE stores SET label_count = label_count - 1 WHERE id = OLD.store;
END;
";

/// Version 2: what labels take in the index is totalled per store (see
/// [`label_footprint`]), so that quotas can charge labels for their space.
/// (Version 2 also moved store directories to case-safe names; the
/// writer's open does that part, see root.rs.)
fn migration_v2() -> String {
    let cost = |name: &str| {
        format!(
            "CASE WHEN length(CAST({name} AS BLOB)) > {LABEL_SPILL_BYTES} \
             THEN {LABEL_SPILLED_COST} \
             ELSE 2 * length(CAST({name} AS BLOB)) + {LABEL_OVERHEAD_BYTES} END"
        )
    };
    let (all, new, old) = (cost("name"), cost("NEW.name"), cost("OLD.name"));
    format!(
        "
ALTER TABLE stores ADD COLUMN label_footprint INTEGER NOT NULL DEFAULT 0;
UPDATE stores SET label_footprint = (
    SELECT COALESCE(SUM({all}), 0) FROM labels WHERE labels.store = stores.id
);
DROP TRIGGER label_added;
DROP TRIGGER label_removed;
CREATE TRIGGER label_added AFTER INSERT ON labels BEGIN
    UPDATE stores SET label_count = label_count + 1, label_footprint = label_footprint + {new}
    WHERE id = NEW.store;
END;
CREATE TRIGGER label_removed AFTER DELETE ON labels BEGIN
    UPDATE stores SET label_count = label_count - 1, label_footprint = label_footprint - {old}
    WHERE id = OLD.store;
END;
"
    )
}

/// Schema changes after version 1, in order; entry `i` brings a root from
/// version `i + 1` to `i + 2`.
const MIGRATIONS: &[fn() -> String] = &[migration_v2];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = 1 + MIGRATIONS.len() as i64;

/// Space a store is charged per object on top of its content: the file's
/// inode and partly used last block, and the object's index row. Small
/// objects cost a whole file-system block, so a flood of tiny objects is
/// charged for what it really takes on disk.
pub const OBJECT_OVERHEAD_BYTES: u64 = 4096;

/// Space a label takes in the index on top of twice its name (the label
/// table and the by-target index each hold it): the target hash twice, the
/// store id and b-tree overhead. Measured on 4 KiB pages.
pub const LABEL_OVERHEAD_BYTES: u64 = 200;

/// Labels longer than this no longer fit in a b-tree cell: each of their
/// two index entries spills into an overflow page of its own.
const LABEL_SPILL_BYTES: u64 = 900;

/// What a spilled label takes: two overflow pages plus the parts kept in
/// the b-trees (measured: 9.4 KiB per 1,020-byte label).
const LABEL_SPILLED_COST: u64 = 2 * (4096 + 512) + LABEL_OVERHEAD_BYTES;

/// Space a label of `length` bytes takes in the index, as quotas count it:
/// twice its name plus [`LABEL_OVERHEAD_BYTES`], or 9.2 KiB for a label
/// over 900 bytes, which spills into overflow pages.
pub fn label_footprint(length: usize) -> u64 {
    let length = length as u64;
    if length > LABEL_SPILL_BYTES {
        LABEL_SPILLED_COST
    } else {
        2 * length + LABEL_OVERHEAD_BYTES
    }
}

/// Totals for one store, read in O(1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// Distinct objects stored.
    pub objects: u64,
    /// Sum of their sizes in bytes, each distinct content counted once.
    pub bytes: u64,
    /// Labels defined.
    pub labels: u64,
    /// Space the labels take in the index, summed over labels as
    /// [`label_footprint`] estimates it.
    pub label_footprint: u64,
}

impl StoreStats {
    /// What the store takes on disk, as quotas count it: content, plus
    /// [`OBJECT_OVERHEAD_BYTES`] per object, plus its labels'
    /// [`label_footprint`]s.
    pub fn footprint(&self) -> u64 {
        self.bytes
            .saturating_add(self.objects.saturating_mul(OBJECT_OVERHEAD_BYTES))
            .saturating_add(self.label_footprint)
    }
}

/// What a label write requires of the label's current value.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
    /// Write unconditionally.
    Anything,
    /// Write only if the label currently points at this (or is absent, for `None`).
    Exactly(Option<Digest>),
}

/// One change to the index (and the object files it governs), applied by
/// the writer thread inside its transaction.
#[derive(Debug)]
pub(crate) enum WriteOp {
    /// Record an object, first renaming its staged temporary file into place
    /// when there is one, and point `label` at it in the same transaction.
    /// Refreshes `stored_at` when already recorded. Without a staged file
    /// the object must still be indexed, or the op fails with `NotFound`
    /// (a collection removed it since the caller looked). Returns whether
    /// the object was new.
    AddObject {
        store: StoreId,
        digest: Digest,
        size: u64,
        staged: Option<PathBuf>,
        label: Option<String>,
    },
    /// Point `label` at `target`, or remove it for `None`. Returns whether
    /// the expectation held and the write happened.
    SetLabel {
        store: StoreId,
        label: String,
        target: Option<Digest>,
        expect: Expect,
    },
    /// Point every label at its target, all or nothing.
    SetLabels {
        store: StoreId,
        labels: Vec<(String, Digest)>,
    },
    /// Delete an object (row and file) if no label reaches it and it was
    /// last stored before `cutoff` (unix milliseconds). Returns whether it did.
    RemoveObject {
        store: StoreId,
        digest: Digest,
        cutoff: i64,
    },
    /// Delete an object file that has no index row, if it was last modified
    /// before `cutoff`. Returns whether it did.
    RemoveUnindexedFile {
        store: StoreId,
        digest: Digest,
        cutoff: SystemTime,
    },
    /// Move a corrupt object's file to quarantine and forget its row, unless
    /// the file is intact again (stored anew since it was found damaged).
    /// Returns whether it quarantined.
    QuarantineObject { store: StoreId, digest: Digest },
    /// Register a store so that it shows in listings before its first write.
    CreateStore { store: StoreId },
    /// Remove up to `limit` labels of the store. Returns whether any were left.
    RemoveLabels { store: StoreId, limit: usize },
    /// Forget a store that holds no object and no label and was created
    /// before `cutoff` (unix milliseconds), and delete its files, keeping
    /// those of writes in flight. Returns whether it did.
    RemoveEmptyStore { store: StoreId, cutoff: i64 },
}

/// Opens a connection to the index. Only the writer's connection sets WAL
/// mode (a no-op once set, but one that can meet a lock held by another
/// process opening the same root at the same moment, hence the retries).
pub(crate) fn open_connection(
    db: &Path,
    durability: Durability,
    writer: bool,
) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    if writer {
        let mut attempts = 0;
        loop {
            match connection.query_row("PRAGMA journal_mode = WAL", [], |row| {
                row.get::<_, String>(0)
            }) {
                Ok(_) => break,
                Err(rusqlite::Error::SqliteFailure(error, _))
                    if error.code == rusqlite::ErrorCode::DatabaseBusy && attempts < 200 =>
                {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(error) => return Err(error),
            }
        }
    }
    // In synced mode on Linux the writer makes each committed batch durable
    // with one syncfs (see writer.rs), so SQLite need not fsync on its own.
    let synchronous = match durability {
        Durability::Synced if !cfg!(target_os = "linux") => "FULL",
        _ => "NORMAL",
    };
    connection.pragma_update(None, "synchronous", synchronous)?;
    Ok(connection)
}

/// Creates the schema in a new index, or brings an older one up to date.
/// Returns the version the index had before (0 for a new one); the caller
/// runs `upgrade_layout` inside the same transaction, so the migration of
/// the database and of the files commit together or not at all.
pub(crate) fn create_schema(
    connection: &mut Connection,
    upgrade_layout: impl FnOnce(&Connection, i64) -> std::result::Result<(), BoxError>,
) -> std::result::Result<i64, BoxError> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = transaction.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "the index has schema version {version}, newer than this build's {SCHEMA_VERSION}; \
             use a newer theater-store"
        )
        .into());
    }
    transaction.execute_batch(SCHEMA_V1)?;
    for migration in MIGRATIONS.iter().skip((version.max(1) - 1) as usize) {
        transaction.execute_batch(&migration())?;
    }
    if version < SCHEMA_VERSION {
        upgrade_layout(&transaction, version)?;
        transaction.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    transaction.commit()?;
    Ok(version)
}

/// Every store id in the index.
pub(crate) fn store_ids(connection: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = connection.prepare("SELECT id FROM stores ORDER BY id")?;
    let rows = statement.query_map([], |row| row.get(0))?;
    rows.collect()
}

/// Applies one write inside the writer's open transaction. Directories
/// whose entries changed are added to `touched`, for fsync in synced mode.
/// An `Ok(Err(_))` is a refusal: the caller rolls this change back alone.
pub(crate) fn apply(
    connection: &Connection,
    objects: &ObjectFiles,
    op: WriteOp,
    touched: &mut BTreeSet<PathBuf>,
) -> rusqlite::Result<Result<bool>> {
    match op {
        WriteOp::CreateStore { store } => ensure_store(connection, &store).map(Ok),
        WriteOp::AddObject {
            store,
            digest,
            size,
            staged,
            label,
        } => {
            ensure_store(connection, &store)?;
            let new = !has_object(connection, &store, digest)?;
            if new && staged.is_none() {
                return Ok(Err(not_found(&store, digest)));
            }
            connection.execute(
                "INSERT INTO objects (store, hash, size, stored_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (store, hash) DO UPDATE SET stored_at = excluded.stored_at",
                params![
                    store.as_str(),
                    &digest.0[..],
                    i64::try_from(size).unwrap_or(i64::MAX),
                    unix_now()
                ],
            )?;
            if let Some(staged) = staged {
                match objects.publish(&store, &staged, digest) {
                    Ok(shard) => {
                        touched.insert(shard);
                    }
                    Err(source) => {
                        let _ = std::fs::remove_file(&staged);
                        let path = objects.object_path(&store, digest);
                        return Ok(Err(io_error(&store, "publishing object", &path, source)));
                    }
                }
            }
            if let Some(label) = label {
                upsert_label(connection, &store, &label, digest)?;
            }
            Ok(Ok(new))
        }
        WriteOp::SetLabel {
            store,
            label,
            target,
            expect,
        } => {
            if let Some(target) = target
                && !has_object(connection, &store, target)?
            {
                return Ok(Err(not_found(&store, target)));
            }
            if let Expect::Exactly(expected) = expect
                && label_target(connection, &store, &label)? != expected
            {
                return Ok(Ok(false));
            }
            match target {
                Some(target) => upsert_label(connection, &store, &label, target)?,
                None => {
                    connection.execute(
                        "DELETE FROM labels WHERE store = ?1 AND name = ?2",
                        params![store.as_str(), label],
                    )?;
                }
            }
            Ok(Ok(true))
        }
        WriteOp::SetLabels { store, labels } => {
            for (label, target) in &labels {
                if !has_object(connection, &store, *target)? {
                    return Ok(Err(not_found(&store, *target)));
                }
                upsert_label(connection, &store, label, *target)?;
            }
            Ok(Ok(true))
        }
        WriteOp::RemoveObject {
            store,
            digest,
            cutoff,
        } => {
            let removed = connection.execute(
                "DELETE FROM objects WHERE store = ?1 AND hash = ?2 AND stored_at < ?3
                 AND NOT EXISTS (SELECT 1 FROM labels WHERE store = ?1 AND hash = ?2)",
                params![store.as_str(), &digest.0[..], cutoff],
            )?;
            if removed == 0 {
                return Ok(Ok(false));
            }
            let path = objects.object_path(&store, digest);
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(Ok(true)),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Ok(true)),
                Err(source) => Ok(Err(io_error(&store, "removing object", &path, source))),
            }
        }
        WriteOp::RemoveUnindexedFile {
            store,
            digest,
            cutoff,
        } => {
            if has_object(connection, &store, digest)? {
                return Ok(Ok(false));
            }
            let path = objects.object_path(&store, digest);
            let old_enough = std::fs::symlink_metadata(&path)
                .and_then(|metadata| metadata.modified())
                .is_ok_and(|modified| modified < cutoff);
            if !old_enough {
                return Ok(Ok(false));
            }
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(Ok(true)),
                Err(source) => Ok(Err(io_error(
                    &store,
                    "removing unindexed object",
                    &path,
                    source,
                ))),
            }
        }
        WriteOp::QuarantineObject { store, digest } => {
            // verify found the file damaged a while ago; someone may have
            // stored the same bytes since, which rewrote it. Check again,
            // under the write lock, so healed content is never taken away.
            match objects.is_intact(&store, digest) {
                Ok(true) => return Ok(Ok(false)),
                Ok(false) => {}
                Err(refused) => return Ok(Err(refused)),
            }
            connection.execute(
                "DELETE FROM objects WHERE store = ?1 AND hash = ?2",
                params![store.as_str(), &digest.0[..]],
            )?;
            match objects.quarantine(&store, digest) {
                Ok(_) => Ok(Ok(true)),
                Err(source) => {
                    let path = objects.object_path(&store, digest);
                    Ok(Err(io_error(&store, "quarantining object", &path, source)))
                }
            }
        }
        WriteOp::RemoveLabels { store, limit } => {
            let removed = connection.execute(
                "DELETE FROM labels WHERE store = ?1 AND name IN
                 (SELECT name FROM labels WHERE store = ?1 ORDER BY name LIMIT ?2)",
                params![store.as_str(), i64::try_from(limit).unwrap_or(i64::MAX)],
            )?;
            Ok(Ok(removed > 0))
        }
        WriteOp::RemoveEmptyStore { store, cutoff } => {
            let removed = connection.execute(
                "DELETE FROM stores WHERE id = ?1 AND object_count = 0 AND label_count = 0
                 AND created_at < ?2",
                params![store.as_str(), cutoff],
            )?;
            if removed == 0 {
                return Ok(Ok(false));
            }
            match objects.remove_store_files(&store) {
                Ok(()) => Ok(Ok(true)),
                Err(refused) => Ok(Err(refused)),
            }
        }
    }
}

fn not_found(store: &StoreId, digest: Digest) -> StoreError {
    StoreError::NotFound {
        store: store.to_string(),
        reference: digest.to_hex(),
    }
}

fn upsert_label(
    connection: &Connection,
    store: &StoreId,
    label: &str,
    target: Digest,
) -> rusqlite::Result<()> {
    ensure_store(connection, store)?;
    connection.execute(
        "INSERT INTO labels (store, name, hash) VALUES (?1, ?2, ?3)
         ON CONFLICT (store, name) DO UPDATE SET hash = excluded.hash",
        params![store.as_str(), label, &target.0[..]],
    )?;
    Ok(())
}

fn ensure_store(connection: &Connection, store: &StoreId) -> rusqlite::Result<bool> {
    let inserted = connection.execute(
        "INSERT OR IGNORE INTO stores (id, created_at) VALUES (?1, ?2)",
        params![store.as_str(), unix_now()],
    )?;
    Ok(inserted == 1)
}

/// Milliseconds since the Unix epoch: the unit of `stored_at`.
pub(crate) fn unix_millis(time: SystemTime) -> i64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

pub(crate) fn unix_now() -> i64 {
    unix_millis(SystemTime::now())
}

fn digest_column(row: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<Digest> {
    let bytes: Vec<u8> = row.get(column)?;
    Digest::from_slice(&bytes).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Blob,
            "a stored digest is not 32 bytes".into(),
        )
    })
}

pub(crate) fn has_object(
    connection: &Connection,
    store: &StoreId,
    digest: Digest,
) -> rusqlite::Result<bool> {
    connection
        .prepare_cached("SELECT 1 FROM objects WHERE store = ?1 AND hash = ?2")?
        .exists(params![store.as_str(), &digest.0[..]])
}

/// When the object was last stored (unix milliseconds), if it is indexed.
pub(crate) fn object_stored_at(
    connection: &Connection,
    store: &StoreId,
    digest: Digest,
) -> rusqlite::Result<Option<i64>> {
    connection
        .prepare_cached("SELECT stored_at FROM objects WHERE store = ?1 AND hash = ?2")?
        .query_row(params![store.as_str(), &digest.0[..]], |row| row.get(0))
        .optional()
}

/// The size of an indexed object.
pub(crate) fn object_size(
    connection: &Connection,
    store: &StoreId,
    digest: Digest,
) -> rusqlite::Result<Option<u64>> {
    connection
        .prepare_cached("SELECT size FROM objects WHERE store = ?1 AND hash = ?2")?
        .query_row(params![store.as_str(), &digest.0[..]], |row| {
            row.get::<_, i64>(0)
        })
        .optional()
        .map(|size| size.map(|size| u64::try_from(size).unwrap_or(0)))
}

/// When the store was registered (unix milliseconds), if it is.
pub(crate) fn store_created_at(
    connection: &Connection,
    store: &StoreId,
) -> rusqlite::Result<Option<i64>> {
    connection
        .prepare_cached("SELECT created_at FROM stores WHERE id = ?1")?
        .query_row([store.as_str()], |row| row.get(0))
        .optional()
}

/// Every indexed object of a store with its size and `stored_at`, and
/// whether any label reaches it.
pub(crate) fn object_rows(
    connection: &Connection,
    store: &StoreId,
) -> rusqlite::Result<Vec<ObjectRow>> {
    let mut statement = connection.prepare_cached(
        "SELECT o.hash, o.size, o.stored_at,
                EXISTS (SELECT 1 FROM labels l WHERE l.store = o.store AND l.hash = o.hash)
         FROM objects o WHERE o.store = ?1 ORDER BY o.hash",
    )?;
    let rows = statement.query_map([store.as_str()], |row| {
        Ok(ObjectRow {
            digest: digest_column(row, 0)?,
            size: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
            stored_at: row.get(2)?,
            labelled: row.get(3)?,
        })
    })?;
    rows.collect()
}

/// A label and its target.
pub(crate) type LabelRow = (String, Digest);

/// The labels starting with `prefix` and every indexed object of the store,
/// read in one transaction so that they describe one moment.
pub(crate) fn snapshot(
    connection: &Connection,
    store: &StoreId,
    prefix: &str,
) -> rusqlite::Result<(Vec<LabelRow>, Vec<ObjectRow>)> {
    let transaction = connection.unchecked_transaction()?;
    let labels = labels_page(&transaction, store, prefix, None, usize::MAX)?;
    let rows = object_rows(&transaction, store)?;
    Ok((labels, rows))
}

/// One indexed object, as [`object_rows`] lists it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ObjectRow {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) stored_at: i64,
    pub(crate) labelled: bool,
}

pub(crate) fn label_target(
    connection: &Connection,
    store: &StoreId,
    label: &str,
) -> rusqlite::Result<Option<Digest>> {
    connection
        .prepare_cached("SELECT hash FROM labels WHERE store = ?1 AND name = ?2")?
        .query_row(params![store.as_str(), label], |row| digest_column(row, 0))
        .optional()
}

/// Up to `limit` labels starting with `prefix`, strictly after `after`, in
/// byte order. Uses a range scan on the primary key, so a page costs
/// O(log n + limit) however many labels the store holds.
pub(crate) fn labels_page(
    connection: &Connection,
    store: &StoreId,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<(String, Digest)>> {
    let lower = match after {
        Some(after) if after >= prefix => after,
        _ => prefix,
    };
    let inclusive = after.is_none_or(|after| after < prefix);
    let upper = prefix_upper_bound(prefix);
    let sql = format!(
        "SELECT name, hash FROM labels WHERE store = ?1 AND name {} ?2 AND (?3 IS NULL OR name < ?3)
         ORDER BY name LIMIT ?4",
        if inclusive { ">=" } else { ">" }
    );
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut statement = connection.prepare_cached(&sql)?;
    let rows = statement.query_map(params![store.as_str(), lower, upper, limit], |row| {
        Ok((row.get(0)?, digest_column(row, 1)?))
    })?;
    rows.collect()
}

/// The smallest string greater than every string starting with `prefix`,
/// or `None` when there is none (empty prefix, or all `char::MAX`).
/// UTF-8 byte order equals code point order, so this bounds a BINARY range.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

pub(crate) fn objects(connection: &Connection, store: &StoreId) -> rusqlite::Result<Vec<Digest>> {
    let mut statement =
        connection.prepare_cached("SELECT hash FROM objects WHERE store = ?1 ORDER BY hash")?;
    let rows = statement.query_map([store.as_str()], |row| digest_column(row, 0))?;
    rows.collect()
}

pub(crate) fn store_stats(
    connection: &Connection,
    store: &StoreId,
) -> rusqlite::Result<StoreStats> {
    connection
        .prepare_cached(
            "SELECT object_count, total_bytes, label_count, label_footprint FROM stores WHERE id = ?1",
        )?
        .query_row([store.as_str()], stats_columns)
        .optional()
        .map(Option::unwrap_or_default)
}

pub(crate) fn stores(connection: &Connection) -> rusqlite::Result<Vec<(String, StoreStats)>> {
    let mut statement = connection.prepare_cached(
        "SELECT object_count, total_bytes, label_count, label_footprint, id FROM stores ORDER BY id",
    )?;
    let rows = statement.query_map([], |row| Ok((row.get(4)?, stats_columns(row)?)))?;
    rows.collect()
}

fn stats_columns(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoreStats> {
    let count = |column| {
        row.get::<_, i64>(column)
            .map(|n| u64::try_from(n).unwrap_or(0))
    };
    Ok(StoreStats {
        objects: count(0)?,
        bytes: count(1)?,
        labels: count(2)?,
        label_footprint: count(3)?,
    })
}

/// A pool of read connections, so concurrent readers do not queue on one.
#[derive(Debug)]
pub(crate) struct Readers {
    db: PathBuf,
    root: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(crate) fn new(db: PathBuf, root: PathBuf) -> Self {
        Self {
            db,
            root,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `query` on an idle connection (opening one if none is idle).
    pub(crate) fn read<T>(
        &self,
        action: &'static str,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let connection = match pooled {
            Some(connection) => connection,
            None => open_connection(&self.db, Durability::Buffered, false)
                .map_err(|source| index_error(&self.root, "opening", source))?,
        };
        let result = query(&connection).map_err(|source| index_error(&self.root, action, source));
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(connection);
        }
        result
    }
}

pub(crate) fn index_error(
    root: &Path,
    action: &'static str,
    source: impl Into<crate::error::BoxError>,
) -> StoreError {
    StoreError::Index {
        root: root.to_owned(),
        action,
        source: source.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_upper_bound;

    #[test]
    fn prefix_upper_bound_is_the_next_string_after_the_prefix_range() {
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("log:"), Some("log;".into()));
        assert_eq!(prefix_upper_bound("a\u{10FFFF}"), Some("b".into()));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
        assert_eq!(prefix_upper_bound("\u{D7FF}"), Some("\u{E000}".into()));
    }
}
