//! Every SQL statement of the local engine: the index, one SQLite database
//! per root, in WAL mode. Nothing here touches a file other than the
//! database.
//!
//! It holds, per store, which objects exist (with their sizes), the bytes
//! of small objects (inline content), what every label points at, and
//! running totals kept by triggers, so that lookups are O(log n) and totals
//! O(1). SQLite gives us atomic multi-row updates, and locking that works
//! across processes. All writes go through the root's single writer thread
//! (`writer.rs`); reads use a small pool of connections and never block
//! the writer (WAL).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::durability::Durability;
use crate::engine::{
    ChainHead, ChangeLog, ChangeRow, LinkRow, ObjectRow, ReplacedTargets, Snapshot, TargetSnapshot,
    unix_now,
};
use crate::error::{BoxError, Result, StoreError};
use crate::names::{Digest, StoreId};
use crate::stats::{LABEL_OVERHEAD_BYTES, LABEL_SPILL_BYTES, LABEL_SPILLED_COST, StoreStats};

/// How long a connection waits for another process's lock before failing.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

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
/// [`crate::stats::label_footprint`]), so that quotas can charge labels for their space.
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

/// Version 3: small content lives in the index. An object row with an
/// `inline_id` has its bytes in `inline_content`; one without has them in
/// a file. Existing objects stay files, so upgrading moves no data.
fn migration_v3() -> String {
    "
CREATE TABLE inline_content (id INTEGER PRIMARY KEY, content BLOB NOT NULL);
ALTER TABLE objects ADD COLUMN inline_id INTEGER;
CREATE TRIGGER inline_content_released AFTER DELETE ON objects
WHEN OLD.inline_id IS NOT NULL BEGIN
    DELETE FROM inline_content WHERE id = OLD.inline_id;
END;
"
    .to_owned()
}

/// Version 4: a label that heads an event chain carries the chain's length
/// beside its target, so that moving the label back to an older event
/// shows. Other labels leave it empty, and plain label writes keep it.
fn migration_v4() -> String {
    "
ALTER TABLE labels ADD COLUMN chain_length INTEGER;
DROP INDEX labels_by_target;
CREATE INDEX labels_by_target ON labels (store, hash) WHERE chain_length IS NULL;
"
    .to_owned()
}

/// Version 5 changes no table: from it on, every commit is announced in
/// `index.changes`, which lets readers answer repeated reads from memory.
/// A build that does not announce its commits would leave them stale, so
/// the version number is what keeps older builds from opening the root.
fn migration_v5() -> String {
    String::new()
}

/// Version 6: a chain's head row also carries its open segment, the newest
/// events not yet sealed into an object, and the ref of the newest sealed
/// one (see chain.rs). Older builds would append past them, so they must
/// not open the root.
fn migration_v6() -> String {
    "
ALTER TABLE labels ADD COLUMN chain_open BLOB;
ALTER TABLE labels ADD COLUMN chain_sealed BLOB;
"
    .to_owned()
}

/// Version 7: links between objects (refs written inside content, see
/// links.rs), so that gc keeps what reachable content names. An object's
/// links live in its own row (`links`: the digests end to end, NULL for
/// none), so recording them costs a linked write no extra index page.
/// Objects already held are marked as not yet scanned; gc scans them once
/// before it collects anything.
fn migration_v7() -> String {
    "
ALTER TABLE objects ADD COLUMN links BLOB;
CREATE TABLE links_unscanned (
    store TEXT NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (store, hash)
) WITHOUT ROWID;
INSERT INTO links_unscanned (store, hash) SELECT store, hash FROM objects;
CREATE TRIGGER links_released AFTER DELETE ON objects BEGIN
    DELETE FROM links_unscanned WHERE store = OLD.store AND hash = OLD.hash;
END;
"
    .to_owned()
}

/// Version 8: every label row carries a checksum of its fields (see
/// [`label_checksum`]), so that a byte flipped in a row (a label's name
/// or target changed, silently, as far as SQLite can tell) is found by
/// `verify`. Rows already held get theirs in the same migration.
fn migration_v8() -> String {
    "ALTER TABLE labels ADD COLUMN checksum INTEGER;".to_owned()
}

/// The time now in milliseconds since the Unix epoch, in SQL (the change
/// log's triggers stamp entries with it).
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// When a change log trigger on `labels` fires for event `when` (`INSERT`,
/// `UPDATE OF hash`, `DELETE`) of row `row` (`NEW` or `OLD`): a label of a
/// store that keeps a log, and for an update only a real move.
fn logged_label_change(when: &str, row: &str) -> String {
    let moved = if when.starts_with("UPDATE") {
        " AND OLD.hash IS NOT NEW.hash"
    } else {
        ""
    };
    format!("AFTER {when} ON labels WHEN substr({row}.store, 1, 1) <> '_'{moved}")
}

/// Version 9: a change log per store (`changes`), written by triggers on
/// `labels`, so that every label write of every path lands in it in its
/// own transaction. Logging a change writes its row and nothing else: the
/// row carries the store's running total of log footprint (`total`), so
/// the next sequence and the log's totals are read from the newest row
/// (an index seek) rather than kept in the store's row, which would be one
/// more page written per change. `stores.changes_trimmed` and
/// `trimmed_total` are where the last trim left the log. Reserved stores
/// (`_…`) keep no log. The writer named the actor in the entries
/// afterwards (until schema 12, whose triggers read it from the store's
/// row, see [`act_as`]).
fn migration_v9() -> String {
    let now = NOW_MS;
    let overhead = crate::stats::CHANGE_OVERHEAD_BYTES;
    let log = |when: &str, row: &str, old: &str, new: &str| {
        let fires = logged_label_change(when, row);
        format!(
            "{fires} BEGIN
    INSERT INTO changes (store, seq, label, old, new, at, total)
    SELECT {row}.store, last.seq + 1, {row}.name, {old}, {new}, {now},
        last.total + length(CAST({row}.name AS BLOB)) + {overhead}
    FROM (SELECT seq, total FROM (
              SELECT seq, total FROM changes WHERE store = {row}.store
              ORDER BY seq DESC LIMIT 1)
          UNION ALL
          SELECT changes_trimmed, trimmed_total FROM stores WHERE id = {row}.store
          LIMIT 1) AS last;
END;"
        )
    };
    format!(
        "
ALTER TABLE stores ADD COLUMN changes_trimmed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE stores ADD COLUMN trimmed_total INTEGER NOT NULL DEFAULT 0;
CREATE TABLE changes (
    store TEXT NOT NULL,
    seq INTEGER NOT NULL,
    label TEXT NOT NULL,
    old BLOB,
    new BLOB,
    at INTEGER NOT NULL,
    actor TEXT,
    total INTEGER NOT NULL,
    PRIMARY KEY (store, seq)
) WITHOUT ROWID;
CREATE TRIGGER label_set_logged {set}
CREATE TRIGGER label_moved_logged {moved}
CREATE TRIGGER label_removed_logged {removed}
CREATE TRIGGER store_forgotten AFTER DELETE ON stores BEGIN
    DELETE FROM changes WHERE store = OLD.id;
END;
",
        set = log("INSERT", "NEW", "NULL", "NEW.hash"),
        moved = log("UPDATE OF hash", "NEW", "OLD.hash", "NEW.hash"),
        removed = log("DELETE", "OLD", "OLD.hash", "NULL"),
    )
}

/// Where a store's change log ends: the newest sequence and running total
/// (kept in its row since schema 12).
fn log_end(connection: &Connection, store: &StoreId) -> rusqlite::Result<(i64, i64)> {
    connection
        .prepare_cached("SELECT log_seq, log_total FROM stores WHERE id = ?1")?
        .query_row([store.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()
        .map(Option::unwrap_or_default)
}

/// The newest sequence given in a store's change log (0: none).
pub(crate) fn change_seq(connection: &Connection, store: &StoreId) -> rusqlite::Result<u64> {
    let (seq, _) = log_end(connection, store)?;
    Ok(u64::try_from(seq).unwrap_or(0))
}

/// The newest sequence of a store's change log, then every distinct
/// `old` ref of its kept entries (see `Engine::replaced_targets`).
pub(crate) fn replaced_targets(
    connection: &Connection,
    store: &StoreId,
    before: i64,
    keep_last: u64,
) -> rusqlite::Result<ReplacedTargets> {
    let transaction = connection.unchecked_transaction()?;
    let log_end = change_seq(&transaction, store)?;
    let by_count = i64::try_from(log_end.saturating_sub(keep_last)).unwrap_or(i64::MAX);
    let filed = "SELECT DISTINCT old FROM changes
                 WHERE store = ?1 AND old IS NOT NULL AND (seq > ?2 OR at >= ?3)";
    let in_row = concat!(
        "SELECT DISTINCT old FROM (",
        tail_rows!(),
        ")
         WHERE old IS NOT NULL AND (seq > ?2 OR at >= ?3)"
    );
    let mut digests = BTreeSet::new();
    for sql in [filed, in_row] {
        let mut statement = transaction.prepare_cached(sql)?;
        let rows = statement.query_map(params![store.as_str(), by_count, before], |row| {
            digest_column(row, 0)
        })?;
        for digest in rows {
            digests.insert(digest?);
        }
    }
    Ok(ReplacedTargets {
        log_end,
        digests: digests.into_iter().collect(),
    })
}

/// Who makes the label changes the writer's open transaction writes, as
/// the change log's triggers ask for it (`theater_actor(store)`, see
/// [`migration_v14`]): an actor and its store, or no one. Kept in memory
/// beside the connection rather than in a row, so that naming an actor
/// writes nothing.
#[derive(Clone, Debug, Default)]
pub(crate) struct Acting(Arc<Mutex<Option<ActorOf>>>);

/// An actor, and the store whose changes it makes.
type ActorOf = (StoreId, Arc<str>);

impl Acting {
    /// Names `actor` (`None`: no one) as the maker of the label changes
    /// written to `store` from now on.
    pub(crate) fn set(&self, store: &StoreId, actor: Option<&str>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) =
            actor.map(|actor| (store.clone(), Arc::from(actor)));
    }

    /// Answers the triggers' `theater_actor(store)` on `connection` from
    /// this one. Every connection that writes labels needs the function
    /// (SQLite resolves it when a statement that fires the triggers is
    /// prepared), so [`open_connection`] gives each one that answers no
    /// one; the writer's answers with what it sets.
    pub(crate) fn answer_on(&self, connection: &Connection) -> rusqlite::Result<()> {
        let acting = self.clone();
        connection.create_scalar_function(
            "theater_actor",
            1,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_INNOCUOUS,
            move |context| {
                let store = context.get_raw(0).as_str().ok();
                let acting = acting.0.lock().unwrap_or_else(|e| e.into_inner());
                Ok(acting
                    .as_ref()
                    .filter(|(of, _)| Some(of.as_str()) == store)
                    .map(|(_, actor)| Arc::clone(actor)))
            },
        )
    }
}

/// Version 10: the change log indexed by label (`changes_by_label`), so
/// that a label's history and its value at a past point are index seeks
/// rather than scans of every change since. Costs one index entry per
/// change.
fn migration_v10() -> String {
    "CREATE INDEX changes_by_label ON changes (store, label, seq);".to_owned()
}

/// Version 11: only reserved stores index their labels by target. A
/// collection of any other store checks its change log instead (a label
/// moved since the listing moved the log), so the index was one more
/// B-tree page, at a place the content's hash picks, in every labelled
/// write. Reserved stores keep no log and few labels.
fn migration_v11() -> String {
    "
DROP INDEX labels_by_target;
CREATE INDEX labels_by_target ON labels (store, hash)
    WHERE chain_length IS NULL AND substr(store, 1, 1) = '_';
"
    .to_owned()
}

/// Links of a label's history chain between two that are indexed (see
/// [`migration_v12`]): a read at a past point walks at most this many.
const MARK_EVERY: u32 = 16;

/// Bytes of unfiled change log entries a store's row holds before they are
/// filed into `changes` (see [`migration_v12`]). Small enough that the row
/// stays on its page (SQLite keeps a row of up to about 4 KiB there).
const LOG_TAIL_BYTES: usize = 2048;

/// Version 12: logging a change costs no page of its own. Before it,
/// every change wrote a leaf of `changes` and one of `changes_by_label`
/// (7.5 pages per 1 KiB `store_at_label` instead of 5).
/// - A store's newest entries live in its own row (`stores.log_tail`, a
///   JSONB array), beside its totals and log end (`log_seq`,
///   `log_total`), a row every put writes anyway, and are filed into
///   `changes` together once they pass [`LOG_TAIL_BYTES`]. Who makes a
///   change was read from the row too (`acting`, until [`migration_v14`]).
/// - A label's history is a chain (see [`History`]): each entry names the
///   label's entry before it (`prev`) and the label's row its newest
///   (`labels.log_seq`), a row the change writes anyway. Only every
///   [`MARK_EVERY`]th link of a chain (`mark`) and removals are indexed
///   by label (`changes_marks`, `changes_removals`), so a read at a past
///   point walks at most that many links.
/// - `stores` becomes a rowid table (its id a unique key): a row of a
///   table without rowid spills to overflow pages past about 1 KiB, and a
///   spilled row costs pages of its own at every write.
///
/// Readers of the log read the row and the table ([`tail_rows`]).
fn migration_v12() -> String {
    let newest = |column: &str, otherwise: &str| {
        format!(
            "coalesce((SELECT {column} FROM changes WHERE store = stores.id
                       ORDER BY seq DESC LIMIT 1), {otherwise})"
        )
    };
    format!(
        "
CREATE TABLE stores_v12 (
    id TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    object_count INTEGER NOT NULL DEFAULT 0,
    total_bytes INTEGER NOT NULL DEFAULT 0,
    label_count INTEGER NOT NULL DEFAULT 0,
    label_footprint INTEGER NOT NULL DEFAULT 0,
    changes_trimmed INTEGER NOT NULL DEFAULT 0,
    trimmed_total INTEGER NOT NULL DEFAULT 0,
    log_seq INTEGER NOT NULL DEFAULT 0,
    log_total INTEGER NOT NULL DEFAULT 0,
    log_tail BLOB,
    acting TEXT
);
INSERT INTO stores_v12 (id, created_at, object_count, total_bytes, label_count,
    label_footprint, changes_trimmed, trimmed_total, log_seq, log_total)
SELECT id, created_at, object_count, total_bytes, label_count, label_footprint,
    changes_trimmed, trimmed_total, {seq}, {total}
FROM stores ORDER BY id;
DROP TABLE stores;
-- The triggers on other tables that name `stores` would fail a modern
-- rename's check while no table has that name; they name it again after.
PRAGMA legacy_alter_table = ON;
ALTER TABLE stores_v12 RENAME TO stores;
PRAGMA legacy_alter_table = OFF;
CREATE TRIGGER store_forgotten AFTER DELETE ON stores BEGIN
    DELETE FROM changes WHERE store = OLD.id;
END;
ALTER TABLE changes ADD COLUMN prev INTEGER;
ALTER TABLE changes ADD COLUMN mark INTEGER;
UPDATE changes SET mark = 1;
UPDATE changes SET prev = (
    SELECT c.seq FROM changes AS c
    WHERE c.store = changes.store AND c.label = changes.label AND c.seq < changes.seq
    ORDER BY c.seq DESC LIMIT 1)
WHERE old IS NOT NULL;
ALTER TABLE labels ADD COLUMN log_seq INTEGER;
ALTER TABLE labels ADD COLUMN log_depth INTEGER;
UPDATE labels SET log_seq = (
    SELECT c.seq FROM changes AS c
    WHERE c.store = labels.store AND c.label = labels.name
    ORDER BY c.seq DESC LIMIT 1)
WHERE substr(store, 1, 1) <> '_';
DROP INDEX changes_by_label;
CREATE INDEX changes_removals ON changes (store, label, seq) WHERE new IS NULL;
CREATE INDEX changes_marks ON changes (store, label, seq) WHERE mark IS NOT NULL;
DROP TRIGGER label_set_logged;
DROP TRIGGER label_moved_logged;
DROP TRIGGER label_removed_logged;
{logged}
CREATE TRIGGER log_tail_filed AFTER UPDATE OF log_tail ON stores
WHEN length(NEW.log_tail) >= {LOG_TAIL_BYTES} BEGIN
    {file_into} SELECT NEW.id, {columns} FROM jsonb_each(NEW.log_tail) AS e;
    UPDATE stores SET log_tail = NULL WHERE id = NEW.id;
END;
",
        seq = newest("seq", "changes_trimmed"),
        total = newest("total", "trimmed_total"),
        logged = logged_label_triggers(|_| "acting".to_owned()),
        file_into = file_into_changes!(),
        columns = tail_columns!(),
    )
}

/// The change log's three triggers on `labels` as schema 12 made them
/// (see [`migration_v12`]), with `actor` giving the expression for who
/// made a change, from the trigger's row (`NEW` or `OLD`).
fn logged_label_triggers(actor: impl Fn(&str) -> String) -> String {
    let now = NOW_MS;
    let overhead = crate::stats::CHANGE_OVERHEAD_BYTES;
    let log = |when: &str, row: &str, old: &str, new: &str, prev: &str, depth: &str| {
        let actor = actor(row);
        let fires = logged_label_change(when, row);
        // A label that is still there remembers its newest entry and how
        // far down its chain that is.
        let remembered = if row == "NEW" {
            format!(
                "
    UPDATE labels SET log_seq = (SELECT log_seq FROM stores WHERE id = NEW.store),
        log_depth = {depth}
    WHERE store = NEW.store AND name = NEW.name;"
            )
        } else {
            String::new()
        };
        format!(
            "{fires} BEGIN
    UPDATE stores SET
        log_seq = log_seq + 1,
        log_total = log_total + length(CAST({row}.name AS BLOB)) + {overhead},
        log_tail = jsonb_insert(coalesce(log_tail, jsonb_array()), '$[#]', jsonb_array(
            log_seq + 1, {row}.name, {old}, {new}, {now}, {actor},
            log_total + length(CAST({row}.name AS BLOB)) + {overhead}, {prev},
            CASE WHEN {depth} % {MARK_EVERY} = 0 THEN 1 END))
    WHERE id = {row}.store;{remembered}
END;"
        )
    };
    format!(
        "CREATE TRIGGER label_set_logged {set}
CREATE TRIGGER label_moved_logged {moved}
CREATE TRIGGER label_removed_logged {removed}",
        // A chain starts at depth 0 (marked) when its label is made, and
        // at a change of a label from before schema 12.
        set = log("INSERT", "NEW", "NULL", "hex(NEW.hash)", "NULL", "0"),
        moved = log(
            "UPDATE OF hash",
            "NEW",
            "hex(OLD.hash)",
            "hex(NEW.hash)",
            "OLD.log_seq",
            "coalesce(OLD.log_depth + 1, 0)"
        ),
        removed = log(
            "DELETE",
            "OLD",
            "hex(OLD.hash)",
            "NULL",
            "OLD.log_seq",
            "coalesce(OLD.log_depth + 1, 0)"
        ),
    )
}

/// Version 14: who makes a change is asked of the writer's connection
/// (`theater_actor(store)`, see [`Acting`]) rather than read from the
/// store's row (`stores.acting`, dropped), which an actor's write had to
/// set before its change and clear after: two row writes per write.
fn migration_v14() -> String {
    format!(
        "
DROP TRIGGER label_set_logged;
DROP TRIGGER label_moved_logged;
DROP TRIGGER label_removed_logged;
{logged}
ALTER TABLE stores DROP COLUMN acting;
",
        logged = logged_label_triggers(|row| format!("theater_actor({row}.store)")),
    )
}

/// Version 13: an inline object's last few bytes may be kept in its
/// object row (`objects.inline_tail`), so that its content row packs into
/// the index's pages (see [`inline_head_len`]). Rows from before keep
/// all their bytes in `inline_content`, and read the same.
fn migration_v13() -> String {
    "ALTER TABLE objects ADD COLUMN inline_tail BLOB;".to_owned()
}

/// The columns of a log tail's entries `e` (from `jsonb_each`): each entry
/// is an array `[seq, label, old, new, at, actor, total, prev, mark]`,
/// refs in hex.
macro_rules! tail_columns {
    () => {
        "e.value ->> 0 AS seq, e.value ->> 1 AS label, unhex(e.value ->> 2) AS old, \
         unhex(e.value ->> 3) AS new, e.value ->> 4 AS at, e.value ->> 5 AS actor, \
         e.value ->> 6 AS total, e.value ->> 7 AS prev, e.value ->> 8 AS mark"
    };
}
use tail_columns;

/// The start of the statement that files a store's log tail into
/// `changes`, followed by a `SELECT` of the store and [`tail_columns`].
macro_rules! file_into_changes {
    () => {
        "INSERT INTO changes (store, seq, label, old, new, at, actor, total, prev, mark)"
    };
}
use file_into_changes;

/// Schema changes after version 1, in order; entry `i` brings a root from
/// version `i + 1` to `i + 2`.
const MIGRATIONS: &[fn() -> String] = &[
    migration_v2,
    migration_v3,
    migration_v4,
    migration_v5,
    migration_v6,
    migration_v7,
    migration_v8,
    migration_v9,
    migration_v10,
    migration_v11,
    migration_v12,
    migration_v13,
    migration_v14,
];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = 1 + MIGRATIONS.len() as i64;

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
    #[cfg(test)]
    let connection = super::plans::watched(connection, db);
    connection.busy_timeout(BUSY_TIMEOUT)?;
    Acting::default().answer_on(&connection)?;
    // Plan each statement once. Without this, SQLite (built with STAT4)
    // re-parses and re-plans a cached statement whenever a bound value
    // changes, which tripled the cost of a point read.
    connection.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
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
    // In synced mode every commit fsyncs the write-ahead log, so a
    // committed batch is durable before its writes are acknowledged. In
    // buffered mode the log is fsync'd only at checkpoints.
    let synchronous = match durability {
        Durability::Synced => "FULL",
        Durability::Buffered => "NORMAL",
    };
    connection.pragma_update(None, "synchronous", synchronous)?;
    Ok(connection)
}

/// Runs a statement without parameters or results, prepared once per
/// connection: the writer's transaction control (`BEGIN IMMEDIATE`,
/// `COMMIT`, savepoints) runs for every change, and parsing it each time
/// showed up in profiles.
pub(crate) fn run_cached(connection: &Connection, sql: &str) -> rusqlite::Result<()> {
    connection.prepare_cached(sql)?.execute([]).map(drop)
}

/// Whether an error is another connection holding the lock.
pub(crate) fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::DatabaseBusy)
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
    if version < 8 {
        add_label_checksums(&transaction)?;
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

/// Points a label of a registered store at `target`; a chain head keeps
/// its other columns.
pub(crate) fn put_label(
    connection: &Connection,
    store: &StoreId,
    label: &str,
    target: Digest,
) -> rusqlite::Result<()> {
    let checksum = label_checksum(store.as_str().as_bytes(), label.as_bytes(), &target.0);
    connection
        .prepare_cached(
            "INSERT INTO labels (store, name, hash, checksum) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (store, name) DO UPDATE SET hash = excluded.hash,
                 checksum = excluded.checksum",
        )?
        .execute(params![store.as_str(), label, &target.0[..], checksum])?;
    Ok(())
}

/// The checksum a label row carries: the first 8 bytes of the BLAKE3 hash
/// of its store, name and target, each preceded by its length, so that no
/// change to one can be made up by another. (A chain head's other columns
/// are checked by `verify-chain`, event by event.)
fn label_checksum(store: &[u8], name: &[u8], hash: &[u8]) -> i64 {
    let mut hasher = blake3::Hasher::new();
    for field in [store, name, hash] {
        hasher.update(&(field.len() as u64).to_le_bytes());
        hasher.update(field);
    }
    let hash = hasher.finalize();
    i64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Reads columns `store, name, hash` of a label row as bytes (a flipped
/// byte can leave a name that is not text), with the checksum they have
/// now.
fn row_checksum(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Vec<u8>, Vec<u8>, i64)> {
    let bytes = |column: usize| -> rusqlite::Result<Vec<u8>> {
        Ok(match row.get_ref(column)? {
            rusqlite::types::ValueRef::Text(bytes) | rusqlite::types::ValueRef::Blob(bytes) => {
                bytes.to_vec()
            }
            other => format!("{other:?}").into_bytes(),
        })
    };
    let (store, name, hash) = (bytes(0)?, bytes(1)?, bytes(2)?);
    let checksum = label_checksum(&store, &name, &hash);
    Ok((store, name, checksum))
}

/// Gives every label row written before checksums its checksum.
fn add_label_checksums(connection: &Connection) -> rusqlite::Result<()> {
    let mut rows = Vec::new();
    {
        let mut statement = connection.prepare("SELECT store, name, hash FROM labels")?;
        let mut found = statement.query([])?;
        while let Some(row) = found.next()? {
            let (_, _, checksum) = row_checksum(row)?;
            let store: String = row.get(0)?;
            let name: String = row.get(1)?;
            rows.push((checksum, store, name));
        }
    }
    let mut update =
        connection.prepare("UPDATE labels SET checksum = ?1 WHERE store = ?2 AND name = ?3")?;
    for (checksum, store, name) in rows {
        update.execute(params![checksum, store, name])?;
    }
    Ok(())
}

/// The labels of `store` whose rows no longer match their checksums (their
/// names as they read now): the index was damaged under them.
pub(crate) fn damaged_labels(
    connection: &Connection,
    store: &StoreId,
) -> rusqlite::Result<Vec<String>> {
    let mut statement = connection
        .prepare_cached("SELECT store, name, hash, checksum FROM labels WHERE store = ?1")?;
    let mut found = statement.query([store.as_str()])?;
    let mut damaged = Vec::new();
    while let Some(row) = found.next()? {
        let (_, name, checksum) = row_checksum(row)?;
        let recorded: Option<i64> = row.get(3).ok().flatten();
        if recorded != Some(checksum) {
            damaged.push(String::from_utf8_lossy(&name).into_owned());
        }
    }
    Ok(damaged)
}

/// Writes a chain's head label row: inserted for a chain's first event,
/// updated (`exists`) for the others.
pub(crate) fn set_chain_head(
    connection: &Connection,
    store: &StoreId,
    label: &str,
    head: &ChainHead,
    exists: bool,
) -> rusqlite::Result<()> {
    // An append rewrites a row it has just read: a plain update, which
    // builds the row once (an upsert builds it for the insert it tries
    // first, then again).
    let sql = if exists {
        "UPDATE labels SET hash = ?3, chain_length = ?4, chain_open = ?5, chain_sealed = ?6,
             checksum = ?7
         WHERE store = ?1 AND name = ?2"
    } else {
        "INSERT INTO labels (store, name, hash, chain_length, chain_open, chain_sealed, checksum)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    };
    let length = head
        .length
        .map(|length| i64::try_from(length).unwrap_or(i64::MAX));
    let sealed = head.sealed.as_ref().map(|digest| &digest.0[..]);
    let checksum = label_checksum(store.as_str().as_bytes(), label.as_bytes(), &head.head.0);
    connection.prepare_cached(sql)?.execute(params![
        store.as_str(),
        label,
        &head.head.0[..],
        length,
        head.open.as_deref(),
        sealed,
        checksum,
    ])?;
    Ok(())
}

/// A chain's head label row.
pub(crate) fn chain_tip(
    connection: &Connection,
    store: &StoreId,
    label: &str,
) -> rusqlite::Result<Option<ChainHead>> {
    connection
        .prepare_cached(
            "SELECT hash, chain_length, chain_open, chain_sealed FROM labels
             WHERE store = ?1 AND name = ?2",
        )?
        .query_row(params![store.as_str(), label], |row| {
            let length: Option<i64> = row.get(1)?;
            Ok(ChainHead {
                head: digest_column(row, 0)?,
                length: length.and_then(|l| u64::try_from(l).ok()),
                open: row.get(2)?,
                sealed: match row.get_ref(3)? {
                    rusqlite::types::ValueRef::Null => None,
                    _ => Some(digest_column(row, 3)?),
                },
            })
        })
        .optional()
}

/// Registers `store`; returns whether it was new.
pub(crate) fn ensure_store(connection: &Connection, store: &StoreId) -> rusqlite::Result<bool> {
    let inserted = connection
        .prepare_cached("INSERT OR IGNORE INTO stores (id, created_at) VALUES (?1, ?2)")?
        .execute(params![store.as_str(), unix_now()])?;
    Ok(inserted == 1)
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

/// Where an indexed object's bytes are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// In the index, in this `inline_content` row.
    Inline(i64),
    /// In the index, but the row is gone (the database was damaged).
    InlineMissing(i64),
    /// In a file of its own.
    File,
}

/// Reads a place from two columns: the object's `inline_id`, and whether
/// that row exists.
fn place_column(row: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<Place> {
    let inline_id: Option<i64> = row.get(column)?;
    let row_present: bool = row.get(column + 1)?;
    Ok(match (inline_id, row_present) {
        (None, _) => Place::File,
        (Some(id), true) => Place::Inline(id),
        (Some(id), false) => Place::InlineMissing(id),
    })
}

/// Size, age and place of an indexed object.
pub(crate) fn object_info(
    connection: &Connection,
    store: &StoreId,
    digest: Digest,
) -> rusqlite::Result<Option<(u64, i64, Place)>> {
    connection
        .prepare_cached(
            "SELECT o.size, o.stored_at, o.inline_id, c.id IS NOT NULL
             FROM objects o LEFT JOIN inline_content c ON c.id = o.inline_id
             WHERE o.store = ?1 AND o.hash = ?2",
        )?
        .query_row(params![store.as_str(), &digest.0[..]], |row| {
            Ok((size_column(row, 0)?, row.get(1)?, place_column(row, 2)?))
        })
        .optional()
}

/// An indexed object's place, with its bytes when they are inline; `None`
/// when it is not indexed.
pub(crate) fn object_content(
    connection: &Connection,
    store: &StoreId,
    digest: Digest,
) -> rusqlite::Result<Option<(Place, Option<Vec<u8>>)>> {
    connection
        .prepare_cached(
            "SELECT o.inline_id, c.id IS NOT NULL, c.content, o.inline_tail
             FROM objects o LEFT JOIN inline_content c ON c.id = o.inline_id
             WHERE o.store = ?1 AND o.hash = ?2",
        )?
        .query_row(params![store.as_str(), &digest.0[..]], |row| {
            let content = match row.get_ref(2)? {
                rusqlite::types::ValueRef::Null => None,
                head => Some(joined(
                    head.as_blob().map_err(rusqlite::Error::from)?,
                    tail_column(row, 3),
                )),
            };
            Ok((place_column(row, 0)?, content))
        })
        .optional()
}

/// Calls `visit` with every inline object of the store and its bytes, one
/// row at a time, so that memory stays at one object whatever the store
/// holds. Stops at the first error `visit` returns.
pub(crate) fn for_each_inline<E: From<rusqlite::Error>>(
    connection: &Connection,
    store: &StoreId,
    mut visit: impl FnMut(Digest, &[u8]) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let mut statement = connection.prepare(
        "SELECT o.hash, c.content, o.inline_tail
         FROM objects o JOIN inline_content c ON c.id = o.inline_id
         WHERE o.store = ?1 ORDER BY o.hash",
    )?;
    let mut rows = statement.query([store.as_str()])?;
    while let Some(row) = rows.next()? {
        let digest = digest_column(row, 0)?;
        let head = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
        match tail_column(row, 2) {
            [] => visit(digest, head)?,
            tail => visit(digest, &joined(head, tail))?,
        }
    }
    Ok(())
}

/// An inline object's content from its content row and its object row's
/// tail, in one allocation.
fn joined(head: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(head.len() + tail.len());
    content.extend_from_slice(head);
    content.extend_from_slice(tail);
    content
}

/// An object row's `inline_tail`: empty when it has none (or, after
/// damage, holds something other than bytes, which verification of the
/// whole content then reports).
fn tail_column<'a>(row: &'a rusqlite::Row<'_>, column: usize) -> &'a [u8] {
    match row.get_ref(column) {
        Ok(rusqlite::types::ValueRef::Blob(bytes) | rusqlite::types::ValueRef::Text(bytes)) => {
            bytes
        }
        _ => &[],
    }
}

/// The usable bytes of an index page: SQLite's default page size, which
/// this crate never changes.
const PAGE_BYTES: usize = 4096;

/// The most bytes of an inline object kept in its object row.
const INLINE_TAIL_MAX: usize = 64;

/// The largest inline content row for which `rows` rows share a page.
fn inline_row_capacity(rows: usize) -> usize {
    (LEAF_BYTES / rows.max(1))
        .saturating_sub(CELL_OVERHEAD)
        .min(ON_PAGE_MAX)
}

/// The bytes of a table leaf page that rows can use (8 are its header).
const LEAF_BYTES: usize = PAGE_BYTES - 8;
/// What an inline content row costs its page beside its bytes: a 2-byte
/// cell pointer, its length (2 bytes), its row id (4 bytes for the first
/// 2^28 rows), a 3-byte record header, and one byte more that filling
/// pages shows SQLite keeps (checked by a test below).
const CELL_OVERHEAD: usize = 2 + 2 + 4 + 3 + 1;
/// The longest inline content row SQLite keeps wholly on its page; a
/// longer one spills into an overflow page (found the same way).
const ON_PAGE_MAX: usize = PAGE_BYTES - 39;

/// How many inline content rows of `len` bytes share a page (0: the row
/// spills to an overflow page).
fn inline_rows_per_page(len: usize) -> usize {
    if len > ON_PAGE_MAX {
        return 0;
    }
    LEAF_BYTES / (len + CELL_OVERHEAD)
}

/// How many of an inline object's `len` bytes its `inline_content` row
/// keeps; the rest, at most [`INLINE_TAIL_MAX`], go into its object row,
/// which the write writes anyway. SQLite packs whole rows into pages, so
/// content a few bytes too long for `n` rows to share a page took a page
/// share of `1/(n-1)`: a 1 KiB object a third of a page, a 4 KiB one a
/// page and an overflow page. Moving those bytes out lets `n` share
/// (issue 32: disk per 1 KiB object). Only done where the page share
/// saved is well above the bytes moved.
pub(crate) fn inline_head_len(len: usize) -> usize {
    let natural = inline_rows_per_page(len);
    let packed = inline_rows_per_page(len.saturating_sub(INLINE_TAIL_MAX));
    if packed <= natural {
        return len;
    }
    let head = inline_row_capacity(packed).min(len);
    // A row that spills takes a page of its own beside its share.
    let saved = match natural {
        0 => PAGE_BYTES,
        rows => PAGE_BYTES / rows - PAGE_BYTES / packed,
    };
    // The tail costs about twice its size in the object rows' B-tree.
    if saved > 2 * (len - head) { head } else { len }
}

/// Where an inline object's bytes went: the id of its content row, and
/// the tail its object row keeps (see [`inline_head_len`]).
#[derive(Debug)]
pub(crate) struct InlineRow {
    pub(crate) id: i64,
    pub(crate) tail: Vec<u8>,
}

/// Stores an object's bytes inline: the content row, and the tail that
/// its object row is to keep ([`upsert_object`]).
pub(crate) fn insert_inline(
    connection: &Connection,
    content: &[u8],
) -> rusqlite::Result<InlineRow> {
    let (head, tail) = content.split_at(inline_head_len(content.len()));
    connection
        .prepare_cached("INSERT INTO inline_content (content) VALUES (?1)")?
        .execute([head])?;
    Ok(InlineRow {
        id: connection.last_insert_rowid(),
        tail: tail.to_vec(),
    })
}

/// An object row's `inline_tail` value: `NULL` for none.
fn tail_value(tail: &[u8]) -> Option<&[u8]> {
    (!tail.is_empty()).then_some(tail)
}

/// Adds a sealed chain segment as a new inline object, in two statements:
/// segments are unique (their events name their chain, positions and
/// parents), so the common case needs no lookup first. Returns whether it
/// was new; one already held keeps its row.
pub(crate) fn insert_event(
    connection: &Connection,
    store: &StoreId,
    digest: Digest,
    event: &[u8],
) -> rusqlite::Result<bool> {
    let inline = insert_inline(connection, event)?;
    let added = connection
        .prepare_cached(
            "INSERT INTO objects (store, hash, size, stored_at, inline_id, inline_tail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (store, hash) DO NOTHING",
        )?
        .execute(params![
            store.as_str(),
            &digest.0[..],
            i64::try_from(event.len()).unwrap_or(i64::MAX),
            unix_now(),
            inline.id,
            tail_value(&inline.tail)
        ])?;
    if added == 0 {
        connection
            .prepare_cached("DELETE FROM inline_content WHERE id = ?1")?
            .execute([inline.id])?;
    }
    Ok(added == 1)
}

/// Rewrites an object's inline bytes in place, its content row `id` and
/// its tail (healing a damaged copy).
pub(crate) fn rewrite_inline(
    connection: &Connection,
    store: &StoreId,
    digest: Digest,
    id: i64,
    content: &[u8],
) -> rusqlite::Result<()> {
    let (head, tail) = content.split_at(inline_head_len(content.len()));
    connection
        .prepare_cached("INSERT OR REPLACE INTO inline_content (id, content) VALUES (?1, ?2)")?
        .execute(params![id, head])?;
    connection
        .prepare_cached("UPDATE objects SET inline_tail = ?3 WHERE store = ?1 AND hash = ?2")?
        .execute(params![store.as_str(), &digest.0[..], tail_value(tail)])?;
    Ok(())
}

/// Records an object, or refreshes its `stored_at` when already recorded.
/// `inline` is where its bytes are (`None`: a file); an existing row
/// keeps its place unless `inline` is given and it had none. `links` is
/// the new row's links column (see links.rs); an existing row keeps its
/// own, since the same content names the same refs.
pub(crate) fn upsert_object(
    connection: &Connection,
    store: &StoreId,
    digest: Digest,
    size: u64,
    inline: Option<&InlineRow>,
    links: Option<&[u8]>,
) -> rusqlite::Result<()> {
    // SQLite computes every SET from the row as it was, so the tail
    // follows the place it belongs to.
    connection
        .prepare_cached(
            "INSERT INTO objects (store, hash, size, stored_at, inline_id, inline_tail, links)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (store, hash) DO UPDATE SET stored_at = excluded.stored_at,
                 inline_id = COALESCE(objects.inline_id, excluded.inline_id),
                 inline_tail = CASE WHEN objects.inline_id IS NULL
                     THEN excluded.inline_tail ELSE objects.inline_tail END",
        )?
        .execute(params![
            store.as_str(),
            &digest.0[..],
            i64::try_from(size).unwrap_or(i64::MAX),
            unix_now(),
            inline.map(|row| row.id),
            inline.and_then(|row| tail_value(&row.tail)),
            links
        ])?;
    Ok(())
}

/// Sets `stored_at` to now on each of `targets` the store holds that was
/// last stored before `fresh_after`: content newly named by other content
/// counts as stored again, so that a collection that did not see the new
/// link finds it too young to remove (see `Change::AddObject`). One
/// primary-key probe per target; a write only for an old one.
pub(crate) fn refresh_targets(
    connection: &Connection,
    store: &StoreId,
    targets: &[Digest],
    fresh_after: i64,
) -> rusqlite::Result<()> {
    let mut statement = connection.prepare_cached(
        "UPDATE objects SET stored_at = ?3 WHERE store = ?1 AND hash = ?2 AND stored_at < ?4",
    )?;
    let now = unix_now();
    for target in targets {
        statement.execute(params![store.as_str(), &target.0[..], now, fresh_after])?;
    }
    Ok(())
}

/// Replaces an object's links column (a later scan's findings); returns
/// whether the object is held.
pub(crate) fn set_links(
    connection: &Connection,
    store: &StoreId,
    digest: Digest,
    links: Option<&[u8]>,
) -> rusqlite::Result<bool> {
    let updated = connection
        .prepare_cached("UPDATE objects SET links = ?3 WHERE store = ?1 AND hash = ?2")?
        .execute(params![store.as_str(), &digest.0[..], links])?;
    Ok(updated == 1)
}

/// Marks an object as scanned for links (`false`) or not yet (`true`).
pub(crate) fn mark_unscanned(
    connection: &Connection,
    store: &StoreId,
    digest: Digest,
    unscanned: bool,
) -> rusqlite::Result<()> {
    let sql = if unscanned {
        "INSERT OR IGNORE INTO links_unscanned (store, hash) VALUES (?1, ?2)"
    } else {
        "DELETE FROM links_unscanned WHERE store = ?1 AND hash = ?2"
    };
    connection
        .prepare_cached(sql)?
        .execute(params![store.as_str(), &digest.0[..]])?;
    Ok(())
}

/// Every object of a store that links to others, with its targets: one
/// range scan of the objects' primary key.
pub(crate) fn links(connection: &Connection, store: &StoreId) -> rusqlite::Result<Vec<LinkRow>> {
    let mut statement = connection
        .prepare_cached("SELECT hash, links FROM objects WHERE store = ?1 AND links IS NOT NULL")?;
    let rows = statement.query_map([store.as_str()], |row| {
        let source = digest_column(row, 0)?;
        let column = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
        let targets = crate::links::column_targets(store, source, column).map_err(|damaged| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Blob,
                damaged.into(),
            )
        })?;
        Ok((source, targets))
    })?;
    rows.collect()
}

/// Objects of a store not yet scanned for links.
pub(crate) fn unscanned_links(
    connection: &Connection,
    store: &StoreId,
) -> rusqlite::Result<Vec<Digest>> {
    let mut statement =
        connection.prepare_cached("SELECT hash FROM links_unscanned WHERE store = ?1")?;
    let rows = statement.query_map([store.as_str()], |row| digest_column(row, 0))?;
    rows.collect()
}

/// Marks an object as kept in a file (its inline row was lost).
pub(crate) fn move_to_file(
    connection: &Connection,
    store: &StoreId,
    digest: Digest,
) -> rusqlite::Result<()> {
    connection.execute(
        "UPDATE objects SET inline_id = NULL, inline_tail = NULL WHERE store = ?1 AND hash = ?2",
        params![store.as_str(), &digest.0[..]],
    )?;
    Ok(())
}

/// Whether a plain label (not a chain head) of a reserved store points at
/// the object: a probe of the partial `labels_by_target` index, which
/// holds only reserved stores' labels (see [`migration_v11`]).
pub(crate) fn held_by_label(
    connection: &Connection,
    store: &StoreId,
    digest: Digest,
) -> rusqlite::Result<bool> {
    debug_assert!(!crate::engine::logs_changes(store));
    connection
        .prepare_cached(
            "SELECT 1 FROM labels INDEXED BY labels_by_target
             WHERE store = ?1 AND hash = ?2 AND chain_length IS NULL
               AND substr(store, 1, 1) = '_'",
        )?
        .exists(params![store.as_str(), &digest.0[..]])
}

/// Whether any object of the store awaits a scan for links.
pub(crate) fn awaits_scan(connection: &Connection, store: &StoreId) -> rusqlite::Result<bool> {
    connection
        .prepare_cached("SELECT 1 FROM links_unscanned WHERE store = ?1")?
        .exists(params![store.as_str()])
}

/// Deletes an object row, whatever reaches it (its inline bytes go with
/// it, by trigger).
pub(crate) fn forget_object(
    connection: &Connection,
    store: &StoreId,
    digest: Digest,
) -> rusqlite::Result<()> {
    // Prepared once: gc removes objects one change at a time.
    connection
        .prepare_cached("DELETE FROM objects WHERE store = ?1 AND hash = ?2")?
        .execute(params![store.as_str(), &digest.0[..]])?;
    Ok(())
}

/// Deletes a label; deleting a missing label is not an error.
pub(crate) fn delete_label(
    connection: &Connection,
    store: &StoreId,
    label: &str,
) -> rusqlite::Result<()> {
    connection
        .prepare_cached("DELETE FROM labels WHERE store = ?1 AND name = ?2")?
        .execute(params![store.as_str(), label])?;
    Ok(())
}

/// Deletes up to `limit` labels of a store, in name order; returns how many.
pub(crate) fn delete_labels(
    connection: &Connection,
    store: &StoreId,
    limit: usize,
) -> rusqlite::Result<usize> {
    connection.execute(
        "DELETE FROM labels WHERE store = ?1 AND name IN
         (SELECT name FROM labels WHERE store = ?1 ORDER BY name LIMIT ?2)",
        params![store.as_str(), i64::try_from(limit).unwrap_or(i64::MAX)],
    )
}

/// Forgets a store with no object and no label, created before `cutoff`;
/// returns whether it did.
pub(crate) fn delete_empty_store(
    connection: &Connection,
    store: &StoreId,
    cutoff: i64,
) -> rusqlite::Result<bool> {
    let removed = connection.execute(
        "DELETE FROM stores WHERE id = ?1 AND object_count = 0 AND label_count = 0
         AND created_at < ?2",
        params![store.as_str(), cutoff],
    )?;
    Ok(removed == 1)
}

/// SQLite's own check of every page and index of the database; the
/// problems it reports, none when healthy.
pub(crate) fn integrity_problems(connection: &Connection) -> rusqlite::Result<Vec<String>> {
    // One read transaction: the checks below see one state of the index.
    let transaction = connection.unchecked_transaction()?;
    let mut statement = transaction.prepare("PRAGMA integrity_check")?;
    let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
    let found: Vec<String> = rows.collect::<rusqlite::Result<_>>()?;
    let mut problems: Vec<String> = found.into_iter().filter(|line| line != "ok").collect();
    // Rows whose store is not registered: a byte flipped in a row's store
    // id moves it out of sight of every store's verify.
    for table in ["objects", "labels"] {
        let mut orphans = transaction.prepare(&format!(
            "SELECT DISTINCT CAST(store AS BLOB) FROM {table}
             WHERE store NOT IN (SELECT id FROM stores)"
        ))?;
        let rows = orphans.query_map([], |row| row.get::<_, Vec<u8>>(0))?;
        for store in rows {
            problems.push(format!(
                "{table} of unregistered store {:?}: a damaged row, or its store's entry \
                 is damaged",
                String::from_utf8_lossy(&store?)
            ));
        }
    }
    // Each store's running totals against its rows, in one pass over each
    // table in key order (a subquery per store would read the tables once
    // per store).
    let mut totals = transaction.prepare(
        "SELECT s.id FROM stores s
         LEFT JOIN (SELECT store, COUNT(*) AS n, SUM(size) AS bytes FROM objects GROUP BY store) o
             ON o.store = s.id
         LEFT JOIN (SELECT store, COUNT(*) AS n FROM labels GROUP BY store) l ON l.store = s.id
         WHERE s.object_count <> COALESCE(o.n, 0) OR s.total_bytes <> COALESCE(o.bytes, 0)
            OR s.label_count <> COALESCE(l.n, 0)",
    )?;
    let rows = totals.query_map([], |row| row.get::<_, String>(0))?;
    for store in rows {
        problems.push(format!(
            "store {}: its running totals disagree with its rows",
            store?
        ));
    }
    Ok(problems)
}

fn size_column(row: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<u64> {
    Ok(u64::try_from(row.get::<_, i64>(column)?).unwrap_or(0))
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

/// Every indexed object of a store with its size and `stored_at`: one
/// range scan of the primary key (what reaches each object is worked out
/// from the labels and links in memory, not by a query per row).
pub(crate) fn object_rows(
    connection: &Connection,
    store: &StoreId,
) -> rusqlite::Result<Vec<ObjectRow>> {
    let mut statement = connection.prepare_cached(
        "SELECT hash, size, stored_at FROM objects WHERE store = ?1 ORDER BY hash",
    )?;
    let rows = statement.query_map([store.as_str()], |row| {
        Ok(ObjectRow {
            digest: digest_column(row, 0)?,
            size: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
            stored_at: row.get(2)?,
        })
    })?;
    rows.collect()
}

/// The labels starting with `prefix` and every indexed object of the store,
/// read in one transaction so that they describe one moment.
pub(crate) fn snapshot(
    connection: &Connection,
    store: &StoreId,
    prefix: &str,
) -> rusqlite::Result<Snapshot> {
    let transaction = connection.unchecked_transaction()?;
    let labels = labels_page(&transaction, store, prefix, None, usize::MAX)?;
    let objects = object_rows(&transaction, store)?;
    Ok(Snapshot { labels, objects })
}

/// Every label's target and every object of `store`, in one read
/// transaction.
pub(crate) fn target_snapshot(
    connection: &Connection,
    store: &StoreId,
) -> rusqlite::Result<TargetSnapshot> {
    let transaction = connection.unchecked_transaction()?;
    let targets = transaction
        .prepare_cached("SELECT hash FROM labels WHERE store = ?1")?
        .query_map([store.as_str()], |row| digest_column(row, 0))?
        .collect::<rusqlite::Result<_>>()?;
    let objects = object_rows(&transaction, store)?;
    Ok(TargetSnapshot { targets, objects })
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
            "SELECT object_count, total_bytes, label_count, label_footprint,
                 log_seq - changes_trimmed, log_total - trimmed_total
             FROM stores WHERE id = ?1",
        )?
        .query_row([store.as_str()], stats_columns)
        .optional()
        .map(Option::unwrap_or_default)
}

pub(crate) fn stores(connection: &Connection) -> rusqlite::Result<Vec<(String, StoreStats)>> {
    let mut statement = connection.prepare_cached(
        "SELECT object_count, total_bytes, label_count, label_footprint,
             log_seq - changes_trimmed, log_total - trimmed_total, id
         FROM stores s ORDER BY id",
    )?;
    let rows = statement.query_map([], |row| Ok((row.get(6)?, stats_columns(row)?)))?;
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
        changes: count(4)?,
        change_footprint: count(5)?,
    })
}

/// Up to `limit` entries of a store's change log after `since`, and the
/// log's bounds, in one read transaction.
pub(crate) fn changes(
    connection: &Connection,
    store: &StoreId,
    since: u64,
    limit: usize,
) -> rusqlite::Result<ChangeLog> {
    let transaction = connection.unchecked_transaction()?;
    let (last, _) = log_end(&transaction, store)?;
    let trimmed_through: i64 = transaction
        .prepare_cached("SELECT changes_trimmed FROM stores WHERE id = ?1")?
        .query_row([store.as_str()], |row| row.get(0))
        .optional()?
        .unwrap_or(0);
    let mut statement = transaction.prepare_cached(
        "SELECT seq, label, old, new, at, actor FROM changes
         WHERE store = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let wanted = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement.query_map(params![store.as_str(), since, wanted], change_row)?;
    let mut entries = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    // The store's row holds the newest entries, all after those filed.
    if entries.len() < limit {
        let left = i64::try_from(limit - entries.len()).unwrap_or(i64::MAX);
        let mut statement = transaction.prepare_cached(concat!(
            "SELECT seq, label, old, new, at, actor FROM (",
            tail_rows!(),
            ")
             WHERE seq > ?2 ORDER BY seq LIMIT ?3"
        ))?;
        let rows = statement.query_map(params![store.as_str(), since, left], change_row)?;
        entries.extend(rows.collect::<rusqlite::Result<Vec<_>>>()?);
    }
    Ok(ChangeLog {
        entries,
        last: u64::try_from(last).unwrap_or(0),
        trimmed_through: u64::try_from(trimmed_through).unwrap_or(0),
    })
}

/// A change log entry from a row of `seq, label, old, new, at, actor`.
fn change_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ChangeRow> {
    let optional_digest = |column| -> rusqlite::Result<Option<Digest>> {
        match row.get_ref(column)? {
            rusqlite::types::ValueRef::Null => Ok(None),
            _ => digest_column(row, column).map(Some),
        }
    };
    Ok(ChangeRow {
        seq: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
        label: row.get(1)?,
        old: optional_digest(2)?,
        new: optional_digest(3)?,
        at: row.get(4)?,
        actor: row.get(5)?,
    })
}

/// One entry of a label's history, and the sequence of the entry before
/// it, where the entry knows it.
struct Linked {
    row: ChangeRow,
    prev: Option<i64>,
}

/// A label's history is a chain through the log: each entry names the
/// label's entry before it (`prev`), and the label's row names its newest
/// (`labels.log_seq`), so walking it costs a point read per entry (schema
/// 12; an index of every entry by label cost a page write per change). A
/// creation names no entry before it: that is the label's newest removal
/// before it (a partial index of removals). Every [`MARK_EVERY`]th link
/// is indexed by label, which bounds the walk to a past point. Reads run
/// in one transaction, and see the store's row tail and its filed
/// entries.
struct History<'a> {
    db: &'a Connection,
    store: &'a str,
    label: &'a str,
}

impl History<'_> {
    /// The entry with sequence `seq`, wherever it is kept.
    fn entry(&self, seq: i64) -> rusqlite::Result<Option<Linked>> {
        let linked = |row: &rusqlite::Row<'_>| {
            Ok(Linked {
                row: change_row(row)?,
                prev: row.get(6)?,
            })
        };
        let filed = self
            .db
            .prepare_cached(
                "SELECT seq, label, old, new, at, actor, prev FROM changes
                 WHERE store = ?1 AND seq = ?2",
            )?
            .query_row(params![self.store, seq], linked)
            .optional()?;
        if filed.is_some() {
            return Ok(filed);
        }
        self.db
            .prepare_cached(concat!(
                "SELECT seq, label, old, new, at, actor, prev FROM (",
                tail_rows!(),
                ") WHERE seq = ?2"
            ))?
            .query_row(params![self.store, seq], linked)
            .optional()
    }

    /// The sequence of the label's newest removal before `before`.
    fn removal_before(&self, before: i64) -> rusqlite::Result<Option<i64>> {
        let arguments = params![self.store, self.label, before];
        let in_row: Option<i64> = self
            .db
            .prepare_cached(concat!(
                "SELECT max(seq) FROM (",
                tail_rows!(),
                ")
                 WHERE label = ?2 AND new IS NULL AND seq < ?3"
            ))?
            .query_row(arguments, |row| row.get(0))?;
        if in_row.is_some() {
            return Ok(in_row);
        }
        self.db
            .prepare_cached(
                "SELECT seq FROM changes INDEXED BY changes_removals
                 WHERE store = ?1 AND label = ?2 AND new IS NULL AND seq < ?3
                 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(arguments, |row| row.get(0))
            .optional()
    }

    /// The label's newest entry: its row says, or, for a label not there
    /// now, its newest removal does.
    fn newest(&self) -> rusqlite::Result<Option<Linked>> {
        let held: Option<Option<i64>> = self
            .db
            .prepare_cached("SELECT log_seq FROM labels WHERE store = ?1 AND name = ?2")?
            .query_row(params![self.store, self.label], |row| row.get(0))
            .optional()?;
        let seq = match held {
            Some(seq) => seq,
            None => self.removal_before(i64::MAX)?,
        };
        self.at(seq)
    }

    /// The entry at `seq` when there is one and it is this label's.
    fn at(&self, seq: Option<i64>) -> rusqlite::Result<Option<Linked>> {
        let Some(seq) = seq else {
            return Ok(None);
        };
        Ok(self
            .entry(seq)?
            .filter(|entry| entry.row.label == self.label))
    }

    /// The label's oldest entry after `seq`: from the oldest marked entry
    /// after it (or the newest entry, when none is), back along the chain
    /// while the entries are after `seq`, fewer than [`MARK_EVERY`] links.
    fn first_after(&self, seq: i64) -> rusqlite::Result<Option<Linked>> {
        let arguments = params![self.store, self.label, seq];
        let mut marked: Option<i64> = self
            .db
            .prepare_cached(
                "SELECT seq FROM changes INDEXED BY changes_marks
                 WHERE store = ?1 AND label = ?2 AND mark IS NOT NULL AND seq > ?3
                 ORDER BY seq LIMIT 1",
            )?
            .query_row(arguments, |row| row.get(0))
            .optional()?;
        if marked.is_none() {
            marked = self
                .db
                .prepare_cached(concat!(
                    "SELECT min(seq) FROM (",
                    tail_rows!(),
                    ")
                     WHERE label = ?2 AND mark IS NOT NULL AND seq > ?3"
                ))?
                .query_row(arguments, |row| row.get(0))?;
        }
        let mut next = match marked {
            Some(seq) => self.at(Some(seq))?,
            None => self.newest()?,
        };
        let mut first = None;
        let after = |entry: &Linked| i64::try_from(entry.row.seq).unwrap_or(i64::MAX) > seq;
        while let Some(entry) = next.filter(after) {
            next = self.before(&entry)?;
            first = Some(entry);
        }
        Ok(first)
    }

    /// The label's entry before `entry`.
    fn before(&self, entry: &Linked) -> rusqlite::Result<Option<Linked>> {
        let seq = match entry.prev {
            Some(seq) => Some(seq),
            None if entry.row.old.is_none() => {
                self.removal_before(i64::try_from(entry.row.seq).unwrap_or(i64::MAX))?
            }
            None => None,
        };
        self.at(seq)
    }
}

/// The first entry of a store's change log for `label` after `seq` (see
/// [`History::first_after`]).
pub(crate) fn label_change_after(
    connection: &Connection,
    store: &StoreId,
    label: &str,
    seq: u64,
) -> rusqlite::Result<Option<ChangeRow>> {
    let transaction = connection.unchecked_transaction()?;
    let history = History {
        db: &transaction,
        store: store.as_str(),
        label,
    };
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    Ok(history.first_after(seq)?.map(|entry| entry.row))
}

/// Up to `limit` entries of a store's change log for `label` before
/// `before`, newest first: from the label's entry before its first at or
/// after `before` (or its newest, when none is), back along the chain.
pub(crate) fn label_changes_before(
    connection: &Connection,
    store: &StoreId,
    label: &str,
    before: u64,
    limit: usize,
) -> rusqlite::Result<Vec<ChangeRow>> {
    let transaction = connection.unchecked_transaction()?;
    let history = History {
        db: &transaction,
        store: store.as_str(),
        label,
    };
    let at_or_after = match i64::try_from(before) {
        Ok(seq) => history.first_after(seq - 1)?,
        Err(_) => None,
    };
    let mut next = match &at_or_after {
        Some(entry) => history.before(entry)?,
        None => history.newest()?,
    };
    let mut entries = Vec::new();
    while entries.len() < limit
        && let Some(entry) = next
    {
        next = history.before(&entry)?;
        entries.push(entry.row);
    }
    Ok(entries)
}

/// Deletes a store's change log entries made before `before`, keeping at
/// least the newest `keep_last`; returns how many went. The entries are
/// in time order as well as sequence order, so the scan stops at the
/// first one to keep.
pub(crate) fn trim_changes(
    connection: &Connection,
    store: &StoreId,
    before: i64,
    keep_last: u64,
) -> rusqlite::Result<usize> {
    file_log_tail(connection, store)?;
    let (last, _) = log_end(connection, store)?;
    let by_count = last.saturating_sub(i64::try_from(keep_last).unwrap_or(i64::MAX));
    let first_recent: Option<i64> = connection
        .prepare_cached(
            "SELECT seq FROM changes WHERE store = ?1 AND at >= ?2 ORDER BY seq LIMIT 1",
        )?
        .query_row(params![store.as_str(), before], |row| row.get(0))
        .optional()?;
    let by_time = first_recent.map_or(last, |seq| seq - 1);
    let through = by_count.min(by_time);
    // The newest entry to go: where the log will start from.
    let Some((seq, total)) = connection
        .prepare_cached(
            "SELECT seq, total FROM changes WHERE store = ?1 AND seq <= ?2
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![store.as_str(), through], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .optional()?
    else {
        return Ok(0);
    };
    connection
        .prepare_cached("UPDATE stores SET changes_trimmed = ?2, trimmed_total = ?3 WHERE id = ?1")?
        .execute(params![store.as_str(), seq, total])?;
    connection
        .prepare_cached("DELETE FROM changes WHERE store = ?1 AND seq <= ?2")?
        .execute(params![store.as_str(), seq])
}

/// Files a store's log tail into `changes` now, whatever its size, so that
/// a trim sees every entry in one place.
fn file_log_tail(connection: &Connection, store: &StoreId) -> rusqlite::Result<()> {
    connection
        .prepare_cached(concat!(
            file_into_changes!(),
            " SELECT ?1, * FROM (",
            tail_rows!(),
            ")"
        ))?
        .execute([store.as_str()])?;
    connection
        .prepare_cached("UPDATE stores SET log_tail = NULL WHERE id = ?1 AND log_tail IS NOT NULL")?
        .execute([store.as_str()])?;
    Ok(())
}

/// The entries of the log tail in store `?1`'s row, as rows of `seq,
/// label, old, new, at, actor, total, prev, mark` (see [`tail_columns`]).
/// A macro, so that the statements reading it are built at compile time.
macro_rules! tail_rows {
    () => {
        concat!(
            "SELECT ",
            tail_columns!(),
            " FROM stores AS s, jsonb_each(s.log_tail) AS e WHERE s.id = ?1"
        )
    };
}
use tail_rows;

/// A pool of read connections, so concurrent readers do not queue on one.
#[derive(Debug)]
pub(crate) struct Readers {
    db: PathBuf,
    root: PathBuf,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl Readers {
    pub(crate) fn new(db: PathBuf, root: PathBuf, max_idle: usize) -> Self {
        Self {
            db,
            root,
            idle: Mutex::new(Vec::new()),
            max_idle,
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
        if idle.len() < self.max_idle {
            idle.push(connection);
        }
        result
    }
}

pub(crate) fn index_error(
    root: &Path,
    action: &'static str,
    source: impl Into<BoxError>,
) -> StoreError {
    let source = source.into();
    let damaged = source
        .downcast_ref::<rusqlite::Error>()
        .and_then(rusqlite::Error::sqlite_error_code)
        .is_some_and(|code| {
            matches!(
                code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            )
        });
    let full = source
        .downcast_ref::<rusqlite::Error>()
        .and_then(rusqlite::Error::sqlite_error_code)
        == Some(rusqlite::ErrorCode::DiskFull);
    if full {
        return StoreError::DiskFull {
            root: root.to_owned(),
            action,
        };
    }
    if damaged {
        return StoreError::IndexDamaged {
            root: root.to_owned(),
            action,
            reason: source.to_string(),
        };
    }
    StoreError::Index {
        root: root.to_owned(),
        action,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets `name` in store `store` to a ref made of `byte`.
    fn set(db: &Connection, store: &str, name: &str, byte: u8) {
        db.execute(
            "INSERT INTO labels (store, name, hash) VALUES (?1, ?2, ?3)
             ON CONFLICT (store, name) DO UPDATE SET hash = excluded.hash",
            params![store, name, [byte; 32]],
        )
        .unwrap();
    }

    /// `(seq, label, new ref's first byte, total)` of every entry, filed
    /// ones first, and then (`in_row`) those in the store's row.
    fn log_of(db: &Connection, store: &str, in_row: bool) -> Vec<(i64, String, Option<u8>, i64)> {
        let entries = |sql: &str| -> Vec<(i64, String, Option<u8>, i64)> {
            let mut statement = db.prepare(sql).unwrap();
            statement
                .query_map([store], |row| {
                    let new: Option<Vec<u8>> = row.get(2)?;
                    Ok((row.get(0)?, row.get(1)?, new.map(|n| n[0]), row.get(3)?))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let mut all = entries("SELECT seq, label, new, total FROM changes WHERE store = ?1");
        if in_row {
            all.extend(entries(concat!(
                "SELECT seq, label, new, total FROM (",
                tail_rows!(),
                ")"
            )));
        }
        all
    }

    #[test]
    fn an_inline_object_keeps_at_most_a_small_tail_in_its_object_row() {
        for len in 0..=20_000 {
            let head = inline_head_len(len);
            assert!(
                head <= len && len - head <= INLINE_TAIL_MAX,
                "{len} bytes: head {head}"
            );
        }
        // The sizes whose rows were a few bytes too long to pack.
        assert_eq!(inline_head_len(1024), inline_row_capacity(4));
        assert_eq!(inline_head_len(2048), inline_row_capacity(2));
        assert_eq!(inline_head_len(4096), inline_row_capacity(1));
        // Rows that pack already, small ones, and ones far past a page.
        for len in [0, 100, 1000, 3000, 16 << 10] {
            assert_eq!(inline_head_len(len), len, "{len} bytes");
        }
    }

    /// Pages the index grows by when 400 objects of `len` bytes go inline,
    /// their content rows numbered as in an index of 2^27 rows (the row id
    /// takes its widest assumed size).
    fn pages_for_400_objects(len: usize) -> i64 {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(SCHEMA_V1).unwrap();
        for migration in MIGRATIONS {
            db.execute_batch(&migration()).unwrap();
        }
        db.execute(
            "INSERT INTO inline_content (id, content) VALUES (?1, x'00')",
            [1i64 << 27],
        )
        .unwrap();
        let pages = || -> i64 {
            db.query_row("PRAGMA page_count", [], |row| row.get(0))
                .unwrap()
        };
        let before = pages();
        for i in 0..400usize {
            let mut content = vec![0u8; len];
            content[..8].copy_from_slice(&i.to_le_bytes());
            let row = insert_inline(&db, &content).unwrap();
            assert_eq!(row.tail, content[inline_head_len(len)..]);
        }
        pages() - before
    }

    #[test]
    fn inline_objects_of_1_2_and_4_kib_fill_whole_pages() {
        // Four 1 KiB objects to a page (three before schema 13), two of
        // 2 KiB, one of 4 KiB (and no overflow page); a few pages more
        // for the B-tree's interior.
        for (len, per_page) in [(1024, 4), (2048, 2), (4096, 1)] {
            let pages = pages_for_400_objects(len);
            let full = 400 / per_page;
            assert!(
                pages >= full && pages <= full + full / 20 + 2,
                "{len} bytes: {pages} pages"
            );
        }
    }

    #[test]
    fn an_index_of_schema_13_keeps_who_made_its_changes_and_asks_the_connection_after() {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(SCHEMA_V1).unwrap();
        for migration in &MIGRATIONS[..12] {
            db.execute_batch(&migration()).unwrap();
        }
        db.execute(
            "INSERT INTO stores (id, created_at, acting) VALUES ('s', 0, 'bob')",
            [],
        )
        .unwrap();
        set(&db, "s", "k", 1);
        db.execute_batch(&migration_v14()).unwrap();
        let acting = Acting::default();
        acting.answer_on(&db).unwrap();
        let store = StoreId::parse("s").unwrap();
        acting.set(&store, Some("carol"));
        set(&db, "s", "k", 2);
        // Named for another store: no one, here.
        acting.set(&StoreId::parse("other").unwrap(), Some("dave"));
        set(&db, "s", "k", 3);
        acting.set(&store, None);
        set(&db, "s", "k", 4);
        let actors: Vec<Option<String>> = db
            .prepare(concat!(
                "SELECT actor FROM (",
                tail_rows!(),
                ") ORDER BY seq"
            ))
            .unwrap()
            .query_map(["s"], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            actors,
            [Some("bob".to_owned()), Some("carol".to_owned()), None, None]
        );
        let columns: i64 = db
            .query_row(
                "SELECT count(*) FROM pragma_table_info('stores') WHERE name = 'acting'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(columns, 0, "the row no longer says who acts");
    }

    #[test]
    fn an_index_of_schema_11_keeps_its_log_and_goes_on_from_where_it_ended() {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(SCHEMA_V1).unwrap();
        for migration in &MIGRATIONS[..10] {
            db.execute_batch(&migration()).unwrap();
        }
        db.execute("INSERT INTO stores (id, created_at) VALUES ('s', 0)", [])
            .unwrap();
        for i in 0..5u8 {
            set(&db, "s", &format!("k{i}"), i);
        }
        let before = log_of(&db, "s", false);
        assert_eq!(before.len(), 5);

        db.execute_batch(&migration_v12()).unwrap();
        let store = StoreId::parse("s").unwrap();
        assert_eq!(log_end(&db, &store).unwrap(), (5, before[4].3));
        // Enough changes that the row's tail is filed at least twice.
        for i in 0..40u8 {
            // Schema 12 reads who acts from the store's row.
            db.execute(
                "UPDATE stores SET acting = ?1 WHERE id = 's'",
                [(i == 39).then_some("alice")],
            )
            .unwrap();
            set(&db, "s", "moving", 100 + i);
        }
        let actor: Option<String> = db
            .query_row(
                concat!("SELECT actor FROM (", tail_rows!(), ") WHERE seq = 45"),
                ["s"],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(actor.as_deref(), Some("alice"));
        let after = log_of(&db, "s", true);
        let seqs: Vec<i64> = after.iter().map(|entry| entry.0).collect();
        assert_eq!(seqs, (1..=45).collect::<Vec<_>>());
        assert_eq!(after[..5], before[..]);
        assert_eq!(after[44].2, Some(139));
        let cost = i64::try_from(crate::stats::change_footprint("moving".len())).unwrap();
        assert_eq!(after[44].3, before[4].3 + 40 * cost);
        let filed: i64 = db
            .query_row(
                "SELECT count(*) FROM changes WHERE store = 's'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(filed > 5 && filed < 45, "{filed} of 45 entries filed");
        assert_eq!(log_end(&db, &store).unwrap(), (45, after[44].3));

        // Histories reach back past the migration, and through a removal.
        let history = |label: &str| -> Vec<u64> {
            label_changes_before(&db, &store, label, u64::MAX, 100)
                .unwrap()
                .iter()
                .map(|entry| entry.seq)
                .collect()
        };
        assert_eq!(history("moving"), (6..=45).rev().collect::<Vec<_>>());
        // From any point, through the marked links and between them.
        for seq in 0..46u64 {
            let first = label_change_after(&db, &store, "moving", seq).unwrap();
            let expected = (seq < 45).then_some(seq.max(5) + 1);
            assert_eq!(first.map(|entry| entry.seq), expected, "after {seq}");
            let older = label_changes_before(&db, &store, "moving", seq, 3).unwrap();
            let older: Vec<u64> = older.iter().map(|entry| entry.seq).collect();
            let expected: Vec<u64> = (6..seq).rev().take(3).collect();
            assert_eq!(older, expected, "before {seq}");
        }
        set(&db, "s", "k2", 9);
        db.execute("DELETE FROM labels WHERE store = 's' AND name = 'k2'", [])
            .unwrap();
        assert_eq!(history("k2"), [47, 46, 3]);
        set(&db, "s", "k2", 10);
        assert_eq!(history("k2"), [48, 47, 46, 3]);
        let paged = label_changes_before(&db, &store, "k2", 47, 1).unwrap();
        assert_eq!(paged[0].seq, 46);
        let after_first = label_change_after(&db, &store, "k2", 3).unwrap();
        assert_eq!(after_first.map(|entry| entry.seq), Some(46));
    }

    #[test]
    fn prefix_upper_bound_is_the_next_string_after_the_prefix_range() {
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("log:"), Some("log;".into()));
        assert_eq!(prefix_upper_bound("a\u{10FFFF}"), Some("b".into()));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
        assert_eq!(prefix_upper_bound("\u{D7FF}"), Some("\u{E000}".into()));
    }
}
