//! Every SQL statement of the shared engine: the index in PostgreSQL.
//!
//! Tables mirror the local engine's: stores with running totals (kept by
//! triggers, so totals are O(1)), object rows (with the bytes of small
//! objects inline), and labels. Text columns use `COLLATE "C"`, so labels
//! list in byte order. Writes that must be atomic and fast are server-side
//! functions, one round trip each: adding an object (with its label) and
//! writing a label, conditional or not.
//!
//! Statements that look rows up by many keys at once take each key on its
//! own (`unnest` of the keys, then a `LATERAL` lookup with `LIMIT 1`),
//! never `key = ANY($keys)`. For the latter PostgreSQL may plan a scan of
//! the whole store, filtered, when its statistics were taken while the
//! store was small: each batch then reads more than the one before (a
//! sync of 80,000 labels into a new root took 44 s). The lookup form is
//! planned as a seek per key however stale the statistics, at the same
//! cost per key. (A plan cached while a table held a single page can
//! still scan it per key; the engine analyzes a table each time it
//! doubles, statistics.rs, which replaces such plans.)

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use crate::engine::{ChainHead, ChangeLog, ChangeRow, LabelRow, ObjectRow};
use crate::links::Links;
use crate::names::{Digest, StoreId};
use crate::stats::{
    LABEL_OVERHEAD_BYTES, LABEL_SPILL_BYTES, LABEL_SPILLED_COST, StoreQuota, StoreStats,
};

/// The schema version this build writes; a database at a newer version is
/// refused rather than written by a build that does not know its rules.
/// (Version 2 keeps totals with statement-level triggers; the script
/// below drops version 1's row-level ones. Version 3 keeps a chain's open
/// segment in its head label's row. Version 4 records links between
/// objects: refs written inside content, which gc follows. Version 5
/// keeps a change log per store, written by a trigger on labels; version
/// 6 indexes it by label, for history and reads at a past point; version
/// 7 adds the functions that check a write against a quota in its own
/// statement; version 8 files change log entries once per statement
/// rather than once per label row; version 9 leaves waking other hosts'
/// watchers to the writing host, after its commit, `listen.rs`.)
pub(super) const SCHEMA_VERSION: i64 = 9;

/// The first version that records links: objects from before it are
/// marked as not yet scanned for them when a database is brought up to it.
const LINKS_SINCE: i64 = 4;

/// The channel on which hosts announce that labels of a store moved (its
/// payload: the store).
pub(super) const CHANGES_CHANNEL: &str = "theater_changes";

/// Serializes schema creation between hosts that open the root at once.
const SCHEMA_LOCK: i64 = 0x7468_6561_7465_7221;

/// The schema, created idempotently.
fn schema() -> String {
    let change_overhead = crate::stats::CHANGE_OVERHEAD_BYTES;
    let object_overhead = crate::stats::OBJECT_OVERHEAD_BYTES;
    let labels_added = label_statement_trigger(
        "theater_labels_added",
        "SELECT store, name, NULL::bytea AS old, target AS new FROM added",
        Some('+'),
    );
    let labels_removed = label_statement_trigger(
        "theater_labels_removed",
        "SELECT store, name, target AS old, NULL::bytea AS new FROM removed",
        Some('-'),
    );
    let labels_retargeted = label_statement_trigger(
        "theater_labels_retargeted",
        "SELECT store, name, o.target AS old, n.target AS new
         FROM new_rows n JOIN old_rows o USING (store, name)
         WHERE o.target IS DISTINCT FROM n.target",
        None,
    );
    format!(
        r#"
CREATE TABLE IF NOT EXISTS theater_meta (key text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE IF NOT EXISTS theater_stores (
    id text COLLATE "C" PRIMARY KEY,
    created_at bigint NOT NULL,
    object_count bigint NOT NULL DEFAULT 0,
    total_bytes bigint NOT NULL DEFAULT 0,
    label_count bigint NOT NULL DEFAULT 0,
    label_footprint bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS theater_objects (
    store text COLLATE "C" NOT NULL,
    digest bytea NOT NULL,
    size bigint NOT NULL,
    stored_at bigint NOT NULL,
    inline bytea,
    PRIMARY KEY (store, digest)
);
CREATE TABLE IF NOT EXISTS theater_labels (
    store text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    target bytea NOT NULL,
    chain_length bigint,
    PRIMARY KEY (store, name)
);
ALTER TABLE theater_labels ADD COLUMN IF NOT EXISTS chain_open bytea;
ALTER TABLE theater_labels ADD COLUMN IF NOT EXISTS chain_sealed bytea;
CREATE INDEX IF NOT EXISTS theater_labels_by_target
    ON theater_labels (store, target) WHERE chain_length IS NULL;

-- Links between objects: refs written inside content (links.rs), kept in
-- the object's own row (the digests end to end, NULL for none), so that a
-- linked write touches no other index page. Objects whose links are not
-- all recorded (held before links were, or with too many) await a scan.
ALTER TABLE theater_objects ADD COLUMN IF NOT EXISTS links bytea;
CREATE TABLE IF NOT EXISTS theater_links_unscanned (
    store text COLLATE "C" NOT NULL,
    digest bytea NOT NULL,
    PRIMARY KEY (store, digest)
);
CREATE OR REPLACE FUNCTION theater_links_released() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM theater_links_unscanned u USING removed r
        WHERE u.store = r.store AND u.digest = r.digest;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER theater_links_released AFTER DELETE ON theater_objects
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION theater_links_released();

-- Totals move once per statement (a batch of 256 rows updates its store's
-- row once, not 256 times).
DROP TRIGGER IF EXISTS theater_object_totals ON theater_objects;
DROP TRIGGER IF EXISTS theater_label_totals ON theater_labels;
CREATE OR REPLACE FUNCTION theater_objects_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE theater_stores s SET object_count = s.object_count + n.count,
        total_bytes = s.total_bytes + n.bytes
    FROM (SELECT store, count(*) AS count, sum(size) AS bytes FROM added GROUP BY store) n
    WHERE s.id = n.store;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION theater_objects_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE theater_stores s SET object_count = s.object_count - n.count,
        total_bytes = s.total_bytes - n.bytes
    FROM (SELECT store, count(*) AS count, sum(size) AS bytes FROM removed GROUP BY store) n
    WHERE s.id = n.store;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER theater_objects_added AFTER INSERT ON theater_objects
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION theater_objects_added();
CREATE OR REPLACE TRIGGER theater_objects_removed AFTER DELETE ON theater_objects
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION theater_objects_removed();

-- The change log (version 5): each label row that changes in a store
-- that is not reserved gets the store's next sequence number, taken from
-- its row under the row's lock in the same transaction (never a clock),
-- so that entries commit in sequence order. The actor is the session's
-- `theater.actor` setting; commit wakes the LISTENers of every host.
ALTER TABLE theater_stores ADD COLUMN IF NOT EXISTS change_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE theater_stores ADD COLUMN IF NOT EXISTS changes_trimmed bigint NOT NULL DEFAULT 0;
ALTER TABLE theater_stores ADD COLUMN IF NOT EXISTS change_count bigint NOT NULL DEFAULT 0;
ALTER TABLE theater_stores ADD COLUMN IF NOT EXISTS change_footprint bigint NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS theater_changes (
    store text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    label text COLLATE "C" NOT NULL,
    old bytea,
    new bytea,
    at bigint NOT NULL,
    actor text,
    PRIMARY KEY (store, seq)
);
CREATE INDEX IF NOT EXISTS theater_changes_by_label ON theater_changes (store, label, seq);
-- Label totals and change log entries move once per statement (version
-- 8): each store's row is updated once however many labels the
-- statement wrote, and its entries numbered after the store's last in
-- (store, name) order. (A trigger per row updated the store's row once
-- per label, and PostgreSQL walks every version a transaction left of a
-- row to update it again: quadratic in the labels of one transaction.)
DROP TRIGGER IF EXISTS theater_label_logged ON theater_labels;
DROP FUNCTION IF EXISTS theater_label_logged();
{labels_added}
{labels_removed}
{labels_retargeted}
CREATE OR REPLACE TRIGGER theater_labels_added AFTER INSERT ON theater_labels
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION theater_labels_added();
CREATE OR REPLACE TRIGGER theater_labels_removed AFTER DELETE ON theater_labels
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION theater_labels_removed();
CREATE OR REPLACE TRIGGER theater_labels_retargeted AFTER UPDATE ON theater_labels
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION theater_labels_retargeted();
CREATE OR REPLACE FUNCTION theater_changes_trimmed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE theater_stores s SET change_count = s.change_count - n.count,
        change_footprint = s.change_footprint - n.footprint,
        changes_trimmed = greatest(s.changes_trimmed, n.through)
    FROM (SELECT store, count(*) AS count,
              sum(octet_length(label) + {change_overhead}) AS footprint, max(seq) AS through
          FROM removed GROUP BY store) n
    WHERE s.id = n.store;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER theater_changes_trimmed AFTER DELETE ON theater_changes
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION theater_changes_trimmed();
CREATE OR REPLACE FUNCTION theater_store_forgotten() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM theater_changes c USING removed r WHERE c.store = r.id;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER theater_store_forgotten AFTER DELETE ON theater_stores
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION theater_store_forgotten();

-- Adds (or refreshes) an object row with its links column, and points
-- p_label at it. A new row's targets (p_targets) that were stored before
-- p_fresh_after count as stored again: a collection that listed objects
-- before this write then finds them too young (and one that locked a
-- target first has removed it before this write sees it). Returns 1 when
-- the row is new, 0 when it was held already.
DROP FUNCTION IF EXISTS theater_add_object(text, bytea, bigint, bytea, text, bigint, bigint);
DROP FUNCTION IF EXISTS theater_add_object(
    text, bytea, bigint, bytea, text, bigint, bigint, bytea[], boolean);
CREATE OR REPLACE FUNCTION theater_add_object(
    p_store text, p_digest bytea, p_size bigint, p_inline bytea, p_label text,
    p_now bigint, p_fresh_after bigint, p_links bytea, p_targets bytea[],
    p_unscanned boolean)
    RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    held_at bigint;
    inserted boolean;
BEGIN
    INSERT INTO theater_stores (id, created_at) VALUES (p_store, p_now) ON CONFLICT DO NOTHING;
    SELECT stored_at INTO held_at FROM theater_objects
        WHERE store = p_store AND digest = p_digest FOR UPDATE;
    IF FOUND THEN
        inserted := false;
        IF held_at < p_fresh_after THEN
            -- Stored again after a while: refresh its age, and heal inline bytes.
            UPDATE theater_objects SET stored_at = p_now,
                inline = CASE WHEN inline IS NULL THEN NULL ELSE COALESCE(p_inline, inline) END
                WHERE store = p_store AND digest = p_digest;
        END IF;
    ELSE
        INSERT INTO theater_objects (store, digest, size, stored_at, inline, links)
            VALUES (p_store, p_digest, p_size, p_now, p_inline, p_links)
            ON CONFLICT (store, digest) DO UPDATE SET stored_at = EXCLUDED.stored_at
            RETURNING (xmax = 0) INTO inserted;
    END IF;
    IF inserted AND cardinality(p_targets) > 0 THEN
        UPDATE theater_objects SET stored_at = p_now
            WHERE store = p_store AND digest = ANY(p_targets) AND stored_at < p_fresh_after;
    END IF;
    IF inserted AND p_unscanned THEN
        INSERT INTO theater_links_unscanned (store, digest) VALUES (p_store, p_digest)
            ON CONFLICT DO NOTHING;
    END IF;
    IF p_label IS NOT NULL THEN
        INSERT INTO theater_labels (store, name, target) VALUES (p_store, p_label, p_digest)
            ON CONFLICT (store, name) DO UPDATE SET target = EXCLUDED.target;
    END IF;
    RETURN CASE WHEN inserted THEN 1 ELSE 0 END;
END $$;

-- Points p_label at p_target (or removes it, for NULL). With p_conditional,
-- only if the label now points at p_expected (or is absent, for NULL).
-- Returns 1 when written, 0 when the expectation failed, -1 when the
-- target is not held. The target's row is locked in share mode, so a
-- collection that deletes it waits for this write and then sees the label.
CREATE OR REPLACE FUNCTION theater_set_label(
    p_store text, p_label text, p_target bytea, p_conditional boolean, p_expected bytea)
    RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    IF p_target IS NOT NULL THEN
        PERFORM 1 FROM theater_objects WHERE store = p_store AND digest = p_target FOR SHARE;
        IF NOT FOUND THEN RETURN -1; END IF;
    END IF;
    IF p_conditional AND p_expected IS NULL THEN
        IF p_target IS NULL THEN
            PERFORM 1 FROM theater_labels WHERE store = p_store AND name = p_label;
            RETURN CASE WHEN FOUND THEN 0 ELSE 1 END;
        END IF;
        INSERT INTO theater_labels (store, name, target) VALUES (p_store, p_label, p_target)
            ON CONFLICT DO NOTHING;
        RETURN CASE WHEN FOUND THEN 1 ELSE 0 END;
    ELSIF p_conditional THEN
        IF p_target IS NULL THEN
            DELETE FROM theater_labels
                WHERE store = p_store AND name = p_label AND target = p_expected;
        ELSE
            UPDATE theater_labels SET target = p_target
                WHERE store = p_store AND name = p_label AND target = p_expected;
        END IF;
        RETURN CASE WHEN FOUND THEN 1 ELSE 0 END;
    END IF;
    IF p_target IS NULL THEN
        DELETE FROM theater_labels WHERE store = p_store AND name = p_label;
    ELSE
        INSERT INTO theater_labels (store, name, target) VALUES (p_store, p_label, p_target)
            ON CONFLICT (store, name) DO UPDATE SET target = EXCLUDED.target;
    END IF;
    RETURN 1;
END $$;

-- A write under a quota, in its own statement: theater_quota_before locks
-- the store's row and returns its totals; theater_quota_after compares them
-- with the totals now and raises 'theater quota exceeded' (undoing the
-- statement) if the write grew the footprint past p_bytes or the objects
-- past p_objects, with the totals before and what it added as the detail;
-- otherwise it returns what the write added to the footprint.
CREATE OR REPLACE FUNCTION theater_footprint(s theater_stores) RETURNS bigint
    LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(s.total_bytes + s.object_count * {object_overhead}
                    + s.label_footprint + s.change_footprint, 0)
$$;

CREATE OR REPLACE FUNCTION theater_quota_before(p_store text) RETURNS theater_stores
    LANGUAGE plpgsql AS $$
DECLARE
    b theater_stores;
BEGIN
    SELECT * INTO b FROM theater_stores WHERE id = p_store FOR UPDATE;
    RETURN b;
END $$;

CREATE OR REPLACE FUNCTION theater_quota_after(
    p_store text, b theater_stores, p_bytes bigint, p_objects bigint)
    RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    a theater_stores;
    was bigint := theater_footprint(b);
    now_ bigint;
BEGIN
    SELECT * INTO a FROM theater_stores WHERE id = p_store;
    now_ := theater_footprint(a);
    IF (now_ > was AND now_ > p_bytes)
        OR (coalesce(a.object_count, 0) > coalesce(b.object_count, 0)
            AND coalesce(a.object_count, 0) > p_objects) THEN
        RAISE EXCEPTION 'theater quota exceeded' USING DETAIL = format('%s %s %s %s',
            was, coalesce(b.object_count, 0), coalesce(b.label_count, 0), now_ - was);
    END IF;
    RETURN greatest(now_ - was, 0);
END $$;

-- theater_add_object under a quota: returns its answer and the growth.
CREATE OR REPLACE FUNCTION theater_add_object_within(
    p_bytes bigint, p_objects bigint,
    p_store text, p_digest bytea, p_size bigint, p_inline bytea, p_label text,
    p_now bigint, p_fresh_after bigint, p_links bytea, p_targets bytea[],
    p_unscanned boolean)
    RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    b theater_stores;
    answer int;
BEGIN
    -- Registered first, so that its row is there to lock.
    INSERT INTO theater_stores (id, created_at) VALUES (p_store, p_now) ON CONFLICT DO NOTHING;
    b := theater_quota_before(p_store);
    answer := theater_add_object(p_store, p_digest, p_size, p_inline, p_label, p_now,
        p_fresh_after, p_links, p_targets, p_unscanned);
    RETURN ARRAY[answer, theater_quota_after(p_store, b, p_bytes, p_objects)];
END $$;

-- theater_set_label under a quota: returns its answer and the growth.
CREATE OR REPLACE FUNCTION theater_set_label_within(
    p_bytes bigint, p_objects bigint,
    p_store text, p_label text, p_target bytea, p_conditional boolean, p_expected bytea)
    RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    b theater_stores;
    answer int;
BEGIN
    b := theater_quota_before(p_store);
    answer := theater_set_label(p_store, p_label, p_target, p_conditional, p_expected);
    IF answer <> 1 THEN
        RETURN ARRAY[answer, 0];
    END IF;
    RETURN ARRAY[answer, theater_quota_after(p_store, b, p_bytes, p_objects)];
END $$;
"#
    )
}

/// The function of a statement-level trigger on `theater_labels`: for
/// the rows `moves` selects (`store, name, old, new`, one per label the
/// statement changed), it moves each store's label totals by `sign`
/// (`+` added, `-` removed, `None` for labels pointed elsewhere), and in
/// stores that are not reserved files one change log entry per label,
/// numbered after the store's last under its row's lock. One update of
/// each store's row per statement. (It sends no notification: a NOTIFY
/// holds a lock on the whole database from before its transaction's
/// commit until the commit is on disk, so every label write of every
/// store would commit one after another; listen.rs announces instead.)
fn label_statement_trigger(function: &str, moves: &str, sign: Option<char>) -> String {
    let change_overhead = crate::stats::CHANGE_OVERHEAD_BYTES;
    // Labels pointed elsewhere leave the totals as they are: no footprint
    // to add up.
    let (totals, label_cost) = match sign {
        Some(sign) => (
            format!(
                "label_count = s.label_count {sign} n.count,
            label_footprint = s.label_footprint {sign} n.footprint,"
            ),
            label_cost("l.name"),
        ),
        None => (String::new(), "0".to_owned()),
    };
    format!(
        r#"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    stores_moved bigint;
BEGIN
    WITH m AS ({moves}),
    n AS (
        SELECT store, count(*) AS count, sum({label_cost}) AS footprint,
            CASE WHEN left(store, 1) = '_' THEN 0 ELSE count(*) END AS logged,
            CASE WHEN left(store, 1) = '_' THEN 0
                ELSE sum(octet_length(l.name) + {change_overhead}) END AS log_footprint
        FROM m l GROUP BY store
    ),
    s AS (
        UPDATE theater_stores s SET {totals}
            change_seq = s.change_seq + n.logged,
            change_count = s.change_count + n.logged,
            change_footprint = s.change_footprint + n.log_footprint
        FROM n WHERE s.id = n.store
        RETURNING s.id, n.logged, s.change_seq - n.logged AS base
    ),
    filed AS (
        INSERT INTO theater_changes (store, seq, label, old, new, at, actor)
        SELECT l.store, s.base + row_number() OVER (PARTITION BY l.store ORDER BY l.name),
            l.name, l.old, l.new, (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
            nullif(current_setting('theater.actor', true), '')
        FROM m l JOIN s ON s.id = l.store WHERE s.logged > 0
    )
    SELECT count(*) INTO stores_moved FROM s;
    RETURN NULL;
END $$;"#
    )
}

/// What a label of this name (the SQL expression `name`) counts against
/// its store's quota, as the local engine counts it.
fn label_cost(name: &str) -> String {
    format!(
        "CASE WHEN octet_length({name}) > {LABEL_SPILL_BYTES} THEN {LABEL_SPILLED_COST} \
         ELSE 2 * octet_length({name}) + {LABEL_OVERHEAD_BYTES} END"
    )
}

/// A PostgreSQL error shown with what the server said: its own `Display`
/// is only "db error".
#[derive(Debug)]
pub(super) struct PostgresError(pub(super) tokio_postgres::Error);

impl std::fmt::Display for PostgresError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_db_error() {
            Some(db) => {
                write!(f, "{}: {}", db.severity(), db.message())?;
                if let Some(detail) = db.detail() {
                    write!(f, " ({detail})")?;
                }
                Ok(())
            }
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::error::Error for PostgresError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

/// Creates the schema if needed and checks its version.
pub(super) async fn create_schema(client: &mut deadpool_postgres::Object) -> Result<(), String> {
    let transaction = client
        .transaction()
        .await
        .map_err(|e| PostgresError(e).to_string())?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(|e| PostgresError(e).to_string())?;
    let exists: bool = transaction
        .query_one("SELECT to_regclass('theater_meta') IS NOT NULL", &[])
        .await
        .map_err(|e| PostgresError(e).to_string())?
        .get(0);
    let version: Option<i64> = if exists {
        transaction
            .query_opt(
                "SELECT value FROM theater_meta WHERE key = 'schema_version'",
                &[],
            )
            .await
            .map_err(|e| PostgresError(e).to_string())?
            .map(|row| row.get(0))
    } else {
        None
    };
    if let Some(version) = version
        && version > SCHEMA_VERSION
    {
        return Err(format!(
            "the database is at schema version {version}, newer than this build's \
             {SCHEMA_VERSION}: use a newer theater-store"
        ));
    }
    if version == Some(SCHEMA_VERSION) {
        // Up to date: no DDL, whose table locks would make every host's
        // open wait for (and hold up) other hosts' writes.
        return transaction
            .commit()
            .await
            .map_err(|e| PostgresError(e).to_string());
    }
    transaction
        .batch_execute(&schema())
        .await
        .map_err(|e| PostgresError(e).to_string())?;
    if version.is_some_and(|version| version < LINKS_SINCE) {
        transaction
            .execute(
                "INSERT INTO theater_links_unscanned (store, digest)
                 SELECT store, digest FROM theater_objects ON CONFLICT DO NOTHING",
                &[],
            )
            .await
            .map_err(|e| PostgresError(e).to_string())?;
    }
    transaction
        .execute(
            "INSERT INTO theater_meta (key, value) VALUES ('schema_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&SCHEMA_VERSION],
        )
        .await
        .map_err(|e| PostgresError(e).to_string())?;
    transaction
        .commit()
        .await
        .map_err(|e| PostgresError(e).to_string())
}

/// Adds or refreshes an object row and points `label` at it (see
/// `theater_add_object`); `times` is now and the refresh cutoff, in unix
/// milliseconds. Returns whether the row is new.
#[allow(clippy::too_many_arguments)]
pub(super) async fn add_object(
    client: &impl GenericClient,
    store: &StoreId,
    digest: Digest,
    size: u64,
    inline: Option<&[u8]>,
    label: Option<&str>,
    links: &Links,
    times: (i64, i64),
) -> Result<bool, tokio_postgres::Error> {
    let object = (store, digest, size, inline, label, links);
    match add_object_under(client, None, object, times).await? {
        Ok((new, _)) => Ok(new),
        Err(_) => unreachable!("a write under no quota is never refused for one"),
    }
}

/// [`add_object`] checked against `quota` in the same statement (see
/// `theater_add_object_within`): whether the row is new and what the write
/// added to the store's footprint, or the refusal.
pub(super) async fn add_object_within(
    client: &impl GenericClient,
    quota: StoreQuota,
    object: (&StoreId, Digest, u64, Option<&[u8]>, Option<&str>, &Links),
    times: (i64, i64),
) -> Result<Result<(bool, u64), OverQuota>, tokio_postgres::Error> {
    add_object_under(client, Some(quota), object, times).await
}

async fn add_object_under(
    client: &impl GenericClient,
    quota: Option<StoreQuota>,
    (store, digest, size, inline, label, links): (
        &StoreId,
        Digest,
        u64,
        Option<&[u8]>,
        Option<&str>,
        &Links,
    ),
    (now, fresh_after): (i64, i64),
) -> Result<Result<(bool, u64), OverQuota>, tokio_postgres::Error> {
    let targets: Vec<&[u8]> = links.targets.iter().map(|target| &target.0[..]).collect();
    let column = links.column();
    let (size, digest) = (to_i64(size), &digest.0[..]);
    let store = store.as_str();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] = [
        &store,
        &digest,
        &size,
        &inline,
        &label,
        &now,
        &fresh_after,
        &column,
        &targets,
        &links.overflowed,
    ];
    let Some(quota) = quota else {
        let statement = client
            .prepare_cached("SELECT theater_add_object($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .await?;
        let row = client.query_one(&statement, &params).await?;
        return Ok(Ok((row.get::<_, i32>(0) == 1, 0)));
    };
    let statement = client
        .prepare_cached(
            "SELECT theater_add_object_within($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .await?;
    let (bytes, objects) = (to_i64(quota.bytes), to_i64(quota.objects));
    let mut all: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&bytes, &objects];
    all.extend(params);
    Ok(within(client.query_one(&statement, &all).await)?
        .map(|(answer, growth)| (answer == 1, growth)))
}

/// What the store held when a write under a quota was refused, and what
/// the write would have added (see `theater_quota_after`).
#[derive(Clone, Copy, Debug)]
pub(super) struct OverQuota {
    pub(super) footprint: u64,
    pub(super) objects: u64,
    pub(super) labels: u64,
    pub(super) adds: u64,
}

/// The answer of a `theater_…_within` call: the write's own answer and
/// its growth, or the refusal its exception carries.
fn within(
    row: Result<tokio_postgres::Row, tokio_postgres::Error>,
) -> Result<Result<(i64, u64), OverQuota>, tokio_postgres::Error> {
    let error = match row {
        Ok(row) => {
            let answer: Vec<i64> = row.get(0);
            return Ok(Ok((answer[0], u64::try_from(answer[1]).unwrap_or(0))));
        }
        Err(error) => error,
    };
    let refused = error
        .as_db_error()
        .filter(|db| db.message() == "theater quota exceeded")
        .and_then(|db| db.detail())
        .and_then(|detail| {
            let numbers: Vec<u64> = detail
                .split(' ')
                .map(|n| n.parse().ok())
                .collect::<Option<_>>()?;
            match numbers[..] {
                [footprint, objects, labels, adds] => Some(OverQuota {
                    footprint,
                    objects,
                    labels,
                    adds,
                }),
                _ => None,
            }
        });
    refused.map(Err).ok_or(error)
}

/// One row of [`add_objects`]: store, digest, size, inline bytes, label,
/// links.
pub(super) type NewObject<'a> = (
    &'a StoreId,
    Digest,
    u64,
    &'a [u8],
    Option<&'a str>,
    &'a Links,
);

/// Adds (or refreshes) many small objects in one statement, and points
/// their labels at them in a second; `times` as for [`add_object`]. The
/// rows must name distinct objects and distinct labels (a statement may
/// touch a row once). Returns, per row, whether it is new.
pub(super) async fn add_objects(
    client: &impl GenericClient,
    rows: &[NewObject<'_>],
    (now, fresh_after): (i64, i64),
) -> Result<Vec<bool>, tokio_postgres::Error> {
    let stores: Vec<&str> = rows.iter().map(|row| row.0.as_str()).collect();
    let digests: Vec<&[u8]> = rows.iter().map(|row| &row.1.0[..]).collect();
    let sizes: Vec<i64> = rows.iter().map(|row| to_i64(row.2)).collect();
    let inlines: Vec<&[u8]> = rows.iter().map(|row| row.3).collect();
    let columns: Vec<Option<Vec<u8>>> = rows.iter().map(|row| row.5.column()).collect();
    let register = client
        .prepare_cached(
            "INSERT INTO theater_stores (id, created_at)
             SELECT DISTINCT id, $2::bigint FROM unnest($1::text[]) AS u(id) ON CONFLICT DO NOTHING",
        )
        .await?;
    client.execute(&register, &[&stores, &now]).await?;
    let insert = client
        .prepare_cached(
            "INSERT INTO theater_objects (store, digest, size, stored_at, inline, links)
             SELECT s, d, z, $5, i, k
             FROM unnest($1::text[], $2::bytea[], $3::bigint[], $4::bytea[], $7::bytea[])
                 AS u(s, d, z, i, k)
             ON CONFLICT (store, digest) DO UPDATE SET stored_at = EXCLUDED.stored_at,
                 inline = CASE WHEN theater_objects.inline IS NULL THEN NULL
                               ELSE EXCLUDED.inline END
                 WHERE theater_objects.stored_at < $6
             RETURNING store, digest, (xmax = 0)",
        )
        .await?;
    let changed = client
        .query(
            &insert,
            &[
                &stores,
                &digests,
                &sizes,
                &inlines,
                &now,
                &fresh_after,
                &columns,
            ],
        )
        .await?;
    let new: std::collections::HashSet<(String, Digest)> = changed
        .iter()
        .filter(|row| row.get::<_, bool>(2))
        .filter_map(|row| Some((row.get(0), digest_column(row, 1)?)))
        .collect();
    // A new row's targets count as stored again, as theater_add_object
    // says; a row already held named them when it was first stored.
    let (mut link_stores, mut targets) = (Vec::new(), Vec::new());
    for row in rows
        .iter()
        .filter(|row| new.contains(&(row.0.as_str().to_owned(), row.1)))
    {
        for target in &row.5.targets {
            link_stores.push(row.0.as_str());
            targets.push(&target.0[..]);
        }
    }
    if !targets.is_empty() {
        let refresh = client
            .prepare_cached(
                "UPDATE theater_objects o SET stored_at = $3
                 FROM unnest($1::text[], $2::bytea[]) AS u(s, t)
                 WHERE o.store = u.s AND o.digest = u.t AND o.stored_at < $4",
            )
            .await?;
        client
            .execute(&refresh, &[&link_stores, &targets, &now, &fresh_after])
            .await?;
    }
    let overflowed: Vec<&NewObject<'_>> = rows
        .iter()
        .filter(|row| row.5.overflowed && new.contains(&(row.0.as_str().to_owned(), row.1)))
        .collect();
    for row in overflowed {
        mark_unscanned(client, row.0, row.1, true).await?;
    }
    let labelled: Vec<&NewObject<'_>> = rows.iter().filter(|row| row.4.is_some()).collect();
    if !labelled.is_empty() {
        let stores: Vec<&str> = labelled.iter().map(|row| row.0.as_str()).collect();
        let names: Vec<&str> = labelled.iter().filter_map(|row| row.4).collect();
        let targets: Vec<&[u8]> = labelled.iter().map(|row| &row.1.0[..]).collect();
        let label = client
            .prepare_cached(
                "INSERT INTO theater_labels (store, name, target)
                 SELECT s, n, t FROM unnest($1::text[], $2::text[], $3::bytea[]) AS u(s, n, t)
                 ON CONFLICT (store, name) DO UPDATE SET target = EXCLUDED.target",
            )
            .await?;
        client.execute(&label, &[&stores, &names, &targets]).await?;
    }
    Ok(rows
        .iter()
        .map(|row| new.contains(&(row.0.as_str().to_owned(), row.1)))
        .collect())
}

/// Locks the objects of store `$1` among digests `$2` in share mode;
/// answers those held.
const LOCK_TARGETS: &str = "SELECT found.digest FROM unnest($2::bytea[]) AS asked(digest)
     CROSS JOIN LATERAL (
         SELECT digest FROM theater_objects
         WHERE store = $1 AND digest = asked.digest LIMIT 1 FOR SHARE
     ) found";

/// Locks the labels of store `$1` among names `$2` for update; answers
/// those there with their targets.
const LOCK_LABELS: &str = "SELECT found.name, found.target FROM unnest($2::text[]) AS asked(name)
     CROSS JOIN LATERAL (
         SELECT name, target FROM theater_labels
         WHERE store = $1 AND name = asked.name LIMIT 1 FOR UPDATE
     ) found";

/// Removes the labels of store `$1` named in `$2`: each row is found and
/// locked on its own, then removed by its place (which a locked row
/// keeps).
const DELETE_LABELS: &str = "DELETE FROM theater_labels WHERE ctid = ANY(ARRAY(
     SELECT found.ctid FROM unnest($2::text[]) AS asked(name)
     CROSS JOIN LATERAL (
         SELECT ctid FROM theater_labels
         WHERE store = $1 AND name = asked.name LIMIT 1 FOR UPDATE
     ) found))";

/// The inline content of the objects of store `$1` among digests `$2`.
const INLINE_MANY: &str =
    "SELECT found.digest, found.inline FROM unnest($2::bytea[]) AS asked(digest)
     CROSS JOIN LATERAL (
         SELECT digest, inline FROM theater_objects
         WHERE store = $1 AND digest = asked.digest AND inline IS NOT NULL
         LIMIT 1
     ) found";

/// [`INLINE_MANY`] within a budget of `$3` bytes: only the objects, in
/// digest order, whose bytes before them stay under it. Sizes are summed
/// first (from the `size` column: a window over the content itself would
/// buffer it, past `work_mem`, into a temporary file), then the content
/// of those is read.
const INLINE_WITHIN: &str = "SELECT found.digest, found.inline FROM unnest(ARRAY(
         SELECT digest FROM (
             SELECT sized.digest,
                    (sum(sized.size) OVER (ORDER BY sized.digest) - sized.size)::bigint AS before
             FROM unnest($2::bytea[]) AS asked(digest)
             CROSS JOIN LATERAL (
                 SELECT digest, size FROM theater_objects
                 WHERE store = $1 AND digest = asked.digest AND inline IS NOT NULL
                 LIMIT 1
             ) sized
         ) ordered
         WHERE before = 0 OR before < $3)) AS kept(digest)
     CROSS JOIN LATERAL (
         SELECT digest, inline FROM theater_objects
         WHERE store = $1 AND digest = kept.digest LIMIT 1
     ) found";

/// Up to `$3` change log entries of store `$1` after sequence `$2`, and
/// at most through `$4` (`$2 + $3`).
const CHANGES_PAGE: &str = "SELECT seq, label, old, new, at, actor FROM theater_changes
     WHERE store = $1 AND seq > $2 AND seq <= $4 ORDER BY seq LIMIT $3";

/// Writes many labels of one store, all or nothing: each points at its
/// target (or is removed, for `None`). With `expected` (one per label),
/// only if every label still points at its expected value (`None`:
/// absent). The targets' rows are locked in share mode, and the labels'
/// rows for update, before anything is checked or written. Names must be
/// distinct. Returns whether it wrote, or a target that is not held.
pub(super) async fn set_labels(
    client: &impl GenericClient,
    store: &StoreId,
    labels: &[(String, Option<Digest>)],
    expected: Option<&[Option<Digest>]>,
) -> Result<Result<bool, Digest>, tokio_postgres::Error> {
    let targets: Vec<&[u8]> = labels
        .iter()
        .filter_map(|(_, target)| target.as_ref().map(|digest| &digest.0[..]))
        .collect();
    let lock_targets = client.prepare_cached(LOCK_TARGETS).await?;
    let held = client
        .query(&lock_targets, &[&store.as_str(), &targets])
        .await?;
    let held: std::collections::HashSet<&[u8]> = held.iter().map(|row| row.get(0)).collect();
    let missing = labels
        .iter()
        .filter_map(|(_, target)| *target)
        .find(|target| !held.contains(&target.0[..]));
    if let Some(missing) = missing {
        return Ok(Err(missing));
    }
    let names: Vec<&str> = labels.iter().map(|(name, _)| name.as_str()).collect();
    let mut must_insert = std::collections::HashSet::new();
    if let Some(expected) = expected {
        let lock_labels = client.prepare_cached(LOCK_LABELS).await?;
        let current = client
            .query(&lock_labels, &[&store.as_str(), &names])
            .await?;
        let current: std::collections::HashMap<String, Option<Digest>> = current
            .iter()
            .map(|row| (row.get(0), digest_column(row, 1)))
            .collect();
        for ((name, _), expected) in labels.iter().zip(expected) {
            if current.get(name).copied().flatten() != *expected {
                return Ok(Ok(false));
            }
            if expected.is_none() {
                must_insert.insert(name.as_str());
            }
        }
    }
    let (set, removed): (Vec<_>, Vec<_>) = labels.iter().partition(|(_, target)| target.is_some());
    if !set.is_empty() {
        let set_names: Vec<&str> = set.iter().map(|(name, _)| name.as_str()).collect();
        let set_targets: Vec<&[u8]> = set
            .iter()
            .filter_map(|(_, target)| target.as_ref().map(|digest| &digest.0[..]))
            .collect();
        let upsert = client
            .prepare_cached(
                "INSERT INTO theater_labels (store, name, target)
                 SELECT $1, n, t FROM unnest($2::text[], $3::bytea[]) AS u(n, t)
                 ON CONFLICT (store, name) DO UPDATE SET target = EXCLUDED.target
                 RETURNING name, (xmax = 0)",
            )
            .await?;
        let written = client
            .query(&upsert, &[&store.as_str(), &set_names, &set_targets])
            .await?;
        // A label expected absent that another host created meanwhile
        // (there was no row to lock) was updated, not inserted: refused.
        let raced = written
            .iter()
            .any(|row| !row.get::<_, bool>(1) && must_insert.contains(row.get::<_, &str>(0)));
        if raced {
            return Ok(Ok(false));
        }
    }
    if !removed.is_empty() {
        let removed_names: Vec<&str> = removed.iter().map(|(name, _)| name.as_str()).collect();
        let delete = client.prepare_cached(DELETE_LABELS).await?;
        client
            .execute(&delete, &[&store.as_str(), &removed_names])
            .await?;
    }
    Ok(Ok(true))
}

/// What [`set_label`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LabelWrite {
    Written,
    ExpectationFailed,
    TargetMissing,
}

/// Writes one label (see `theater_set_label`).
pub(super) async fn set_label(
    client: &impl GenericClient,
    store: &StoreId,
    label: &str,
    target: Option<Digest>,
    expected: Option<Option<Digest>>,
) -> Result<LabelWrite, tokio_postgres::Error> {
    match set_label_under(client, None, store, label, target, expected).await? {
        Ok((written, _)) => Ok(written),
        Err(_) => unreachable!("a write under no quota is never refused for one"),
    }
}

/// [`set_label`] checked against `quota` in the same statement (see
/// `theater_set_label_within`): how it went and what it added to the
/// store's footprint, or the refusal.
pub(super) async fn set_label_within(
    client: &impl GenericClient,
    quota: StoreQuota,
    store: &StoreId,
    label: &str,
    target: Option<Digest>,
    expected: Option<Option<Digest>>,
) -> Result<Result<(LabelWrite, u64), OverQuota>, tokio_postgres::Error> {
    set_label_under(client, Some(quota), store, label, target, expected).await
}

async fn set_label_under(
    client: &impl GenericClient,
    quota: Option<StoreQuota>,
    store: &StoreId,
    label: &str,
    target: Option<Digest>,
    expected: Option<Option<Digest>>,
) -> Result<Result<(LabelWrite, u64), OverQuota>, tokio_postgres::Error> {
    let target = target.map(|digest| digest.0.to_vec());
    let (conditional, expected) = match expected {
        Some(expected) => (true, expected.map(|digest| digest.0.to_vec())),
        None => (false, None),
    };
    let store = store.as_str();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&store, &label, &target, &conditional, &expected];
    let answered = match quota {
        None => {
            let statement = client
                .prepare_cached("SELECT theater_set_label($1, $2, $3, $4, $5)")
                .await?;
            let row = client.query_one(&statement, &params).await?;
            Ok((i64::from(row.get::<_, i32>(0)), 0))
        }
        Some(quota) => {
            let statement = client
                .prepare_cached("SELECT theater_set_label_within($1, $2, $3, $4, $5, $6, $7)")
                .await?;
            let (bytes, objects) = (to_i64(quota.bytes), to_i64(quota.objects));
            let mut all: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&bytes, &objects];
            all.extend(params);
            within(client.query_one(&statement, &all).await)?
        }
    };
    Ok(answered.map(|(answer, growth)| {
        let written = match answer {
            1 => LabelWrite::Written,
            0 => LabelWrite::ExpectationFailed,
            _ => LabelWrite::TargetMissing,
        };
        (written, growth)
    }))
}

/// Registers a store; returns whether it was new.
pub(super) async fn ensure_store(
    client: &impl GenericClient,
    store: &StoreId,
    now: i64,
) -> Result<bool, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "INSERT INTO theater_stores (id, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .await?;
    Ok(client.execute(&statement, &[&store.as_str(), &now]).await? == 1)
}

/// An object row: its size, when it was stored, and its inline bytes
/// (`None`: the bytes are in the object store).
pub(super) struct HeldObject {
    pub(super) size: u64,
    pub(super) stored_at: i64,
    pub(super) inline: Option<Vec<u8>>,
}

/// An object's row, with its inline bytes when `with_bytes`.
pub(super) async fn object(
    client: &impl GenericClient,
    store: &StoreId,
    digest: Digest,
    with_bytes: bool,
) -> Result<Option<HeldObject>, tokio_postgres::Error> {
    let sql = if with_bytes {
        "SELECT size, stored_at, inline FROM theater_objects WHERE store = $1 AND digest = $2"
    } else {
        "SELECT size, stored_at, CASE WHEN inline IS NULL THEN NULL ELSE ''::bytea END
         FROM theater_objects WHERE store = $1 AND digest = $2"
    };
    let statement = client.prepare_cached(sql).await?;
    let row = client
        .query_opt(&statement, &[&store.as_str(), &&digest.0[..]])
        .await?;
    Ok(row.map(|row| HeldObject {
        size: size_column(&row, 0),
        stored_at: row.get(1),
        inline: row.get(2),
    }))
}

/// The inline bytes of each of `digests` held inline; `None` for others.
pub(super) async fn inline_many(
    client: &impl GenericClient,
    store: &StoreId,
    digests: &[Digest],
    budget: u64,
) -> Result<Vec<Option<Vec<u8>>>, tokio_postgres::Error> {
    let keys: Vec<&[u8]> = digests.iter().map(|digest| &digest.0[..]).collect();
    // Rows looked up one key at a time (see the module's docs).
    let rows = if budget == u64::MAX {
        let statement = client.prepare_cached(INLINE_MANY).await?;
        client.query(&statement, &[&store.as_str(), &keys]).await?
    } else {
        let statement = client.prepare_cached(INLINE_WITHIN).await?;
        let budget = i64::try_from(budget).unwrap_or(i64::MAX);
        client
            .query(&statement, &[&store.as_str(), &keys, &budget])
            .await?
    };
    let mut found: std::collections::HashMap<Digest, Vec<u8>> = rows
        .iter()
        .filter_map(|row| Some((digest_column(row, 0)?, row.get(1))))
        .collect();
    let bytes: u64 = found.values().map(|content| content.len() as u64).sum();
    let answered = match found.keys().max() {
        // The budget was reached: what comes after the last object read
        // in digest order waits for the next call (callers ask in digest
        // order; asked otherwise, an object left out is answered `None`,
        // which has it read on its own).
        Some(&last) if bytes >= budget => digests
            .iter()
            .take_while(|&&digest| digest <= last)
            .count()
            .max(1),
        _ => digests.len(),
    };
    Ok(digests[..answered]
        .iter()
        .map(|digest| found.remove(digest))
        .collect())
}

/// A label's target, with what a chain's head keeps beside it.
pub(super) async fn label(
    client: &impl GenericClient,
    store: &StoreId,
    label: &str,
) -> Result<Option<ChainHead>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "SELECT target, chain_length, chain_open, chain_sealed FROM theater_labels
             WHERE store = $1 AND name = $2",
        )
        .await?;
    let row = client
        .query_opt(&statement, &[&store.as_str(), &label])
        .await?;
    Ok(row.and_then(|row| {
        let length: Option<i64> = row.get(1);
        Some(ChainHead {
            head: digest_column(&row, 0)?,
            length: length.and_then(|length| u64::try_from(length).ok()),
            open: row.get(2),
            sealed: row
                .get::<_, Option<&[u8]>>(3)
                .map(Digest::from_slice)
                .unwrap_or_default(),
        })
    }))
}

/// Writes a chain's head label row.
pub(super) async fn set_chain_head(
    client: &impl GenericClient,
    store: &StoreId,
    label: &str,
    head: &ChainHead,
) -> Result<(), tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "INSERT INTO theater_labels
                 (store, name, target, chain_length, chain_open, chain_sealed)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (store, name) DO UPDATE SET target = EXCLUDED.target,
             chain_length = EXCLUDED.chain_length, chain_open = EXCLUDED.chain_open,
             chain_sealed = EXCLUDED.chain_sealed",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &store.as_str(),
                &label,
                &&head.head.0[..],
                &head.length.map(to_i64),
                &head.open.as_deref(),
                &head.sealed.as_ref().map(|digest| &digest.0[..]),
            ],
        )
        .await?;
    Ok(())
}

/// Up to `limit` labels starting with `prefix`, after `after`, in byte order.
pub(super) async fn labels_page(
    client: &impl GenericClient,
    store: &StoreId,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<LabelRow>, tokio_postgres::Error> {
    // The prefix is also given as a range of the primary key, so that a
    // page costs O(log n + limit) however many labels the store holds.
    let statement = client
        .prepare_cached(
            "SELECT name, target FROM theater_labels
             WHERE store = $1 AND name >= $2 AND ($5::text IS NULL OR name < $5)
               AND starts_with(name, $2) AND ($3::text IS NULL OR name > $3)
             ORDER BY name LIMIT $4",
        )
        .await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let end = prefix_end(prefix);
    let rows = client
        .query(
            &statement,
            &[&store.as_str(), &prefix, &after, &limit, &end],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| Some((row.get(0), digest_column(row, 1)?)))
        .collect())
}

/// The digests `query` (one digest column, the store as `$1`) lists.
async fn store_digests(
    client: &impl GenericClient,
    query: &str,
    store: &StoreId,
) -> Result<Vec<Digest>, tokio_postgres::Error> {
    let statement = client.prepare_cached(query).await?;
    let rows = client.query(&statement, &[&store.as_str()]).await?;
    Ok(rows
        .iter()
        .filter_map(|row| digest_column(row, 0))
        .collect())
}

/// Every object of a store, in digest order (no other columns).
pub(super) async fn digests(
    client: &impl GenericClient,
    store: &StoreId,
) -> Result<Vec<Digest>, tokio_postgres::Error> {
    let query = "SELECT digest FROM theater_objects WHERE store = $1 ORDER BY digest";
    store_digests(client, query, store).await
}

/// What every label of a store points at, in no particular order.
pub(super) async fn label_targets(
    client: &impl GenericClient,
    store: &StoreId,
) -> Result<Vec<Digest>, tokio_postgres::Error> {
    let query = "SELECT target FROM theater_labels WHERE store = $1";
    store_digests(client, query, store).await
}

/// Every object row of a store, in digest order: one index range scan
/// (what reaches each object is worked out in memory, not per row).
pub(super) async fn object_rows(
    client: &impl GenericClient,
    store: &StoreId,
) -> Result<Vec<ObjectRow>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT digest, size, stored_at FROM theater_objects
             WHERE store = $1 ORDER BY digest",
            &[&store.as_str()],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            Some(ObjectRow {
                digest: digest_column(row, 0)?,
                size: size_column(row, 1),
                stored_at: row.get(2),
            })
        })
        .collect())
}

/// Every object of a store that links to others, with its links column
/// (the digests end to end, see links.rs).
pub(super) async fn links(
    client: &impl GenericClient,
    store: &StoreId,
) -> Result<Vec<(Digest, Vec<u8>)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT digest, links FROM theater_objects WHERE store = $1 AND links IS NOT NULL",
            &[&store.as_str()],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| Some((digest_column(row, 0)?, row.get(1))))
        .collect())
}

/// A change log entry from a row of `seq, label, old, new, at, actor`.
fn change_row(row: &Row) -> ChangeRow {
    let optional_digest = |column| {
        row.get::<_, Option<&[u8]>>(column)
            .and_then(Digest::from_slice)
    };
    ChangeRow {
        seq: size_column(row, 0),
        label: row.get(1),
        old: optional_digest(2),
        new: optional_digest(3),
        at: row.get(4),
        actor: row.get(5),
    }
}

/// The first entry of a store's change log for `label` after `seq`.
pub(super) async fn label_change_after(
    client: &impl GenericClient,
    store: &StoreId,
    label: &str,
    seq: u64,
) -> Result<Option<ChangeRow>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "SELECT seq, label, old, new, at, actor FROM theater_changes
             WHERE store = $1 AND label = $2 AND seq > $3 ORDER BY seq LIMIT 1",
        )
        .await?;
    let row = client
        .query_opt(&statement, &[&store.as_str(), &label, &to_i64(seq)])
        .await?;
    Ok(row.as_ref().map(change_row))
}

/// Up to `limit` entries of a store's change log for `label` before
/// `before`, newest first.
pub(super) async fn label_changes_before(
    client: &impl GenericClient,
    store: &StoreId,
    label: &str,
    before: u64,
    limit: usize,
) -> Result<Vec<ChangeRow>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "SELECT seq, label, old, new, at, actor FROM theater_changes
             WHERE store = $1 AND label = $2 AND seq < $3 ORDER BY seq DESC LIMIT $4",
        )
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &store.as_str(),
                &label,
                &to_i64(before),
                &to_i64(limit as u64),
            ],
        )
        .await?;
    Ok(rows.iter().map(change_row).collect())
}

/// The newest sequence of a store's change log, then every distinct
/// `old` ref of its kept entries (see `Engine::replaced_targets`).
pub(super) async fn replaced_targets(
    client: &impl GenericClient,
    store: &StoreId,
    before: i64,
    keep_last: u64,
) -> Result<(u64, Vec<Digest>), tokio_postgres::Error> {
    let log_end = client
        .query_opt(
            "SELECT change_seq FROM theater_stores WHERE id = $1",
            &[&store.as_str()],
        )
        .await?
        .map_or(0, |row| size_column(&row, 0));
    let by_count = i64::try_from(log_end.saturating_sub(keep_last)).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "SELECT DISTINCT old FROM theater_changes
             WHERE store = $1 AND old IS NOT NULL AND (seq > $2 OR at >= $3)",
            &[&store.as_str(), &by_count, &before],
        )
        .await?;
    let digests = rows
        .iter()
        .filter_map(|row| digest_column(row, 0))
        .collect();
    Ok((log_end, digests))
}

/// Objects of a store not yet scanned for links.
pub(super) async fn unscanned_links(
    client: &impl GenericClient,
    store: &StoreId,
) -> Result<Vec<Digest>, tokio_postgres::Error> {
    let query = "SELECT digest FROM theater_links_unscanned WHERE store = $1";
    store_digests(client, query, store).await
}

/// Marks an object as not yet scanned for links, or (`false`) as scanned.
pub(super) async fn mark_unscanned(
    client: &impl GenericClient,
    store: &StoreId,
    digest: Digest,
    unscanned: bool,
) -> Result<(), tokio_postgres::Error> {
    let sql = if unscanned {
        "INSERT INTO theater_links_unscanned (store, digest) VALUES ($1, $2) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM theater_links_unscanned WHERE store = $1 AND digest = $2"
    };
    let statement = client.prepare_cached(sql).await?;
    client
        .execute(&statement, &[&store.as_str(), &&digest.0[..]])
        .await
        .map(drop)
}

/// Records the links a later scan of an object found, and marks it as
/// scanned, if it is still held. Returns whether it is.
pub(super) async fn set_links(
    client: &impl GenericClient,
    store: &StoreId,
    source: Digest,
    targets: &[Digest],
) -> Result<bool, tokio_postgres::Error> {
    let column = (!targets.is_empty()).then(|| crate::links::targets_column(targets));
    let updated = client
        .execute(
            "UPDATE theater_objects SET links = $3 WHERE store = $1 AND digest = $2",
            &[&store.as_str(), &&source.0[..], &column],
        )
        .await?;
    if updated == 0 {
        return Ok(false);
    }
    mark_unscanned(client, store, source, false).await?;
    Ok(true)
}

/// What a store's totals are read with.
macro_rules! store_totals {
    () => {
        "SELECT object_count, total_bytes, label_count, label_footprint, change_count,
             change_footprint
         FROM theater_stores WHERE id = $1"
    };
}

/// A store's totals (zero for a store never written).
pub(super) async fn store_stats(
    client: &impl GenericClient,
    store: &StoreId,
) -> Result<StoreStats, tokio_postgres::Error> {
    let statement = client.prepare_cached(store_totals!()).await?;
    let row = client.query_opt(&statement, &[&store.as_str()]).await?;
    Ok(row.map(|row| stats_columns(&row, 0)).unwrap_or_default())
}

/// A registered store's totals, its row locked until the transaction
/// ends: a write checked against a quota holds it, so writes to one store
/// from every host are checked one after another. `None` for a store not
/// registered yet.
pub(super) async fn store_stats_locked(
    client: &impl GenericClient,
    store: &StoreId,
) -> Result<Option<StoreStats>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(concat!(store_totals!(), " FOR UPDATE"))
        .await?;
    let row = client.query_opt(&statement, &[&store.as_str()]).await?;
    Ok(row.map(|row| stats_columns(&row, 0)))
}

/// When a store was registered, if it is.
pub(super) async fn store_created_at(
    client: &impl GenericClient,
    store: &StoreId,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached("SELECT created_at FROM theater_stores WHERE id = $1")
        .await?;
    let row = client.query_opt(&statement, &[&store.as_str()]).await?;
    Ok(row.map(|row| row.get(0)))
}

/// Every store with its totals, by id.
pub(super) async fn stores(
    client: &impl GenericClient,
) -> Result<Vec<(String, StoreStats)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, object_count, total_bytes, label_count, label_footprint, change_count,
                 change_footprint
             FROM theater_stores ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), stats_columns(row, 1)))
        .collect())
}

/// Deletes an object row if its age is still `listed_stored_at` (the
/// collection's listing saw it so; a store or a link since refreshed it),
/// no plain label points at it, none of `referrers` (what linked to it
/// when the collection listed objects) is still held, and no object of
/// the store awaits a scan for links. The row is locked first, in a
/// statement of its own, so that a label write holding it in share mode,
/// or a linked write refreshing its age, finishes first and the check, in
/// a later statement, sees it. Returns the deleted row's inline-ness
/// (`Some(true)`: its bytes were inline), or `None`.
pub(super) async fn remove_unreachable(
    client: &impl GenericClient,
    store: &StoreId,
    digest: Digest,
    referrers: &[Digest],
    listed_stored_at: i64,
    log_end: u64,
) -> Result<Option<bool>, tokio_postgres::Error> {
    let referrers: Vec<&[u8]> = referrers.iter().map(|digest| &digest.0[..]).collect();
    client
        .query(
            "SELECT 1 FROM theater_objects WHERE store = $1 AND digest = $2 FOR UPDATE",
            &[&store.as_str(), &&digest.0[..]],
        )
        .await?;
    // Read after the row lock, so that a label write that locked the
    // object first has committed its log entry by now.
    let row = client
        .query_opt(
            "DELETE FROM theater_objects o WHERE o.store = $1 AND o.digest = $2
               AND o.stored_at = $3
               AND COALESCE((SELECT change_seq FROM theater_stores WHERE id = $1), 0) = $5
               AND NOT EXISTS (SELECT 1 FROM theater_labels l
                               WHERE l.store = $1 AND l.target = $2 AND l.chain_length IS NULL)
               AND NOT EXISTS (SELECT 1 FROM theater_objects r
                               WHERE r.store = $1 AND r.digest = ANY($4))
               AND NOT EXISTS (SELECT 1 FROM theater_links_unscanned WHERE store = $1)
             RETURNING o.inline IS NOT NULL",
            &[
                &store.as_str(),
                &&digest.0[..],
                &listed_stored_at,
                &referrers,
                &i64::try_from(log_end).unwrap_or(i64::MAX),
            ],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// Deletes an object row whatever points at it (quarantine).
pub(super) async fn forget_object(
    client: &impl GenericClient,
    store: &StoreId,
    digest: Digest,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM theater_objects WHERE store = $1 AND digest = $2",
            &[&store.as_str(), &&digest.0[..]],
        )
        .await
        .map(drop)
}

/// Deletes up to `limit` labels of a store, in name order; returns how many.
pub(super) async fn delete_labels(
    client: &impl GenericClient,
    store: &StoreId,
    limit: usize,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM theater_labels WHERE store = $1 AND name IN
             (SELECT name FROM theater_labels WHERE store = $1 ORDER BY name LIMIT $2)",
            &[&store.as_str(), &i64::try_from(limit).unwrap_or(i64::MAX)],
        )
        .await
}

/// Announces on [`CHANGES_CHANNEL`] that labels of each of `stores`
/// moved. The transaction does not wait for its commit to reach the disk:
/// a notification is not kept anyway, and a NOTIFY holds a lock on the
/// whole database until its commit is done.
pub(super) async fn announce(
    client: &impl GenericClient,
    stores: &[&str],
) -> Result<(), tokio_postgres::Error> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT count(pg_notify('{CHANGES_CHANNEL}', s))
             FROM set_config('synchronous_commit', 'off', true), unnest($1::text[]) s"
        ))
        .await?;
    client.execute(&statement, &[&stores]).await.map(drop)
}

/// Forgets a store with nothing in it, created before `cutoff`.
pub(super) async fn delete_empty_store(
    client: &impl GenericClient,
    store: &StoreId,
    cutoff: i64,
) -> Result<bool, tokio_postgres::Error> {
    let removed = client
        .execute(
            "DELETE FROM theater_stores WHERE id = $1 AND object_count = 0 AND label_count = 0
             AND created_at < $2",
            &[&store.as_str(), &cutoff],
        )
        .await?;
    Ok(removed == 1)
}

/// Stores whose running totals disagree with their rows.
pub(super) async fn totals_problems(
    client: &impl GenericClient,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT s.id FROM theater_stores s
             WHERE s.object_count <> (SELECT count(*) FROM theater_objects o WHERE o.store = s.id)
                OR s.total_bytes <> (SELECT coalesce(sum(size), 0) FROM theater_objects o
                                     WHERE o.store = s.id)
                OR s.label_count <> (SELECT count(*) FROM theater_labels l WHERE l.store = s.id)",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let id: String = row.get(0);
            format!("store {id}: its running totals disagree with its rows")
        })
        .collect())
}

/// A lock key for an object: publication and collection of the same
/// object take it (shared and exclusive), so they never interleave.
pub(super) fn object_lock(store: &StoreId, digest: Digest) -> i64 {
    lock_key(&[b"object", store.as_str().as_bytes(), &digest.0])
}

/// A lock key for a chain's head: appends to one chain take it in turn.
pub(super) fn chain_lock(store: &StoreId, label: &str) -> i64 {
    lock_key(&[b"chain", store.as_str().as_bytes(), label.as_bytes()])
}

fn lock_key(parts: &[&[u8]]) -> i64 {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let bytes = hasher.finalize();
    i64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The least string above every string that starts with `prefix` (its
/// last character that can be raised, raised), or `None` when there is none.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn stats_columns(row: &Row, first: usize) -> StoreStats {
    StoreStats {
        objects: size_column(row, first),
        bytes: size_column(row, first + 1),
        labels: size_column(row, first + 2),
        label_footprint: size_column(row, first + 3),
        changes: size_column(row, first + 4),
        change_footprint: size_column(row, first + 5),
    }
}

/// Up to `limit` entries of a store's change log after `since`, with the
/// log's bounds. The bounds are read after the page, so a trim between
/// the two shows as trimmed rather than as a silent gap.
///
/// A store's sequence numbers have no gaps (each change takes the next
/// under its store's row lock; a trim removes only the oldest), so the
/// page is the range after `since`, bounded on both sides. Bounded only
/// below, PostgreSQL planned it (its statistics saying the log was short)
/// as a read of the whole rest of the log, sorted: reading a long log
/// page by page was quadratic.
pub(super) async fn changes(
    client: &impl GenericClient,
    store: &StoreId,
    since: u64,
    limit: usize,
) -> Result<ChangeLog, tokio_postgres::Error> {
    let page = client.prepare_cached(CHANGES_PAGE).await?;
    let through = since.saturating_add(limit as u64);
    let rows = client
        .query(
            &page,
            &[
                &store.as_str(),
                &to_i64(since),
                &to_i64(limit as u64),
                &to_i64(through),
            ],
        )
        .await?;
    let entries = rows.iter().map(change_row).collect();
    let bounds = client
        .prepare_cached("SELECT change_seq, changes_trimmed FROM theater_stores WHERE id = $1")
        .await?;
    let (last, trimmed_through) = client
        .query_opt(&bounds, &[&store.as_str()])
        .await?
        .map_or((0, 0), |row| (size_column(&row, 0), size_column(&row, 1)));
    Ok(ChangeLog {
        entries,
        last,
        trimmed_through,
    })
}

/// Deletes a store's change log entries made before `before`, keeping at
/// least the newest `keep_last`; returns how many went.
pub(super) async fn trim_changes(
    client: &impl GenericClient,
    store: &StoreId,
    before: i64,
    keep_last: u64,
) -> Result<u64, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "WITH bound AS (
                 SELECT least(
                     (SELECT change_seq FROM theater_stores WHERE id = $1) - $3,
                     coalesce(
                         (SELECT seq - 1 FROM theater_changes
                          WHERE store = $1 AND at >= $2 ORDER BY seq LIMIT 1),
                         (SELECT change_seq FROM theater_stores WHERE id = $1))) AS through
             )
             DELETE FROM theater_changes
             WHERE store = $1 AND seq <= (SELECT through FROM bound)",
        )
        .await?;
    client
        .execute(&statement, &[&store.as_str(), &before, &to_i64(keep_last)])
        .await
}

fn size_column(row: &Row, column: usize) -> u64 {
    u64::try_from(row.get::<_, i64>(column)).unwrap_or(0)
}

fn digest_column(row: &Row, column: usize) -> Option<Digest> {
    Digest::from_slice(row.get::<_, &[u8]>(column))
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::{
        CHANGES_PAGE, DELETE_LABELS, INLINE_MANY, INLINE_WITHIN, LOCK_LABELS, LOCK_TARGETS,
    };

    /// The statements that look rows up by many keys, planned against
    /// statistics taken while the store held 20 rows when it holds 20,000
    /// (a bulk load into a new root): each still seeks its keys, and a
    /// page of the change log reads only its range. The form they
    /// replaced, `key = ANY($keys)`, was planned there as a scan of the
    /// whole store, filtered (what made a sync into a new shared root
    /// quadratic).
    #[test]
    fn lookups_by_many_keys_seek_each_key_whatever_the_statistics() {
        let test = super::super::TestRoot::new();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime
            .block_on(test.root.store("s").unwrap().store_at_label("first", "x"))
            .unwrap();

        // Digests are the row number in 32 bytes, so that the calls below
        // can name rows.
        let rows = |from: u32, to: u32| {
            format!(
                "INSERT INTO theater_objects (store, digest, size, stored_at, inline)
                   SELECT 's', decode(lpad(to_hex(g), 64, '0'), 'hex'), 1, 0, '\\x00'
                   FROM generate_series({from}, {to}) g;
                 INSERT INTO theater_labels (store, name, target)
                   SELECT 's', 'l' || g, decode(lpad(to_hex(g), 64, '0'), 'hex')
                   FROM generate_series({from}, {to}) g;"
            )
        };
        let mut script = String::from(
            "ALTER TABLE theater_objects SET (autovacuum_enabled = false);
             ALTER TABLE theater_labels SET (autovacuum_enabled = false);
             ALTER TABLE theater_changes SET (autovacuum_enabled = false);",
        );
        script += &rows(1, 20);
        script += "ANALYZE theater_objects, theater_labels, theater_changes;";
        script += &rows(21, 20_000);
        // A batch's worth of keys from the middle of the store.
        let keys = 5_000..5_256;
        let names: Vec<String> = keys.clone().map(|key| format!("l{key}")).collect();
        let digests: Vec<String> = keys.map(|key| format!("\\\\x{key:064x}")).collect();
        let names = format!("'{{{}}}'", names.join(","));
        let digests = format!("'{{{}}}'", digests.join(","));
        let statements = [
            ("lock_targets", LOCK_TARGETS, format!("'s', {digests}")),
            ("lock_labels", LOCK_LABELS, format!("'s', {names}")),
            ("delete_labels", DELETE_LABELS, format!("'s', {names}")),
            ("inline_many", INLINE_MANY, format!("'s', {digests}")),
            (
                "inline_within",
                INLINE_WITHIN,
                format!("'s', {digests}, 8388608"),
            ),
            ("changes_page", CHANGES_PAGE, "'s', 0, 100, 100".to_owned()),
        ];
        for (name, sql, arguments) in &statements {
            script += &format!(
                "PREPARE {name} AS {sql};
                 SELECT '== {name}';
                 EXPLAIN EXECUTE {name}({arguments});"
            );
        }
        let output = test.psql(&script);

        for (name, _, _) in &statements {
            // Each line cut short: a plan shows the keys it was given.
            let plan: Vec<&str> = output
                .split(&format!("== {name}\n"))
                .nth(1)
                .unwrap_or_else(|| panic!("no plan for {name} in {output}"))
                .lines()
                .take_while(|line| !line.starts_with("== "))
                .map(|line| line.get(..160).unwrap_or(line))
                .collect();
            let plan = plan.join("\n");
            if *name == "changes_page" {
                assert!(
                    plan.contains("seq > ") && plan.contains("seq <= "),
                    "{name} reads beyond its page:\n{plan}"
                );
                continue;
            }
            for line in plan
                .lines()
                .filter(|line| line.contains("Scan on theater_"))
            {
                let scan = line.trim_start_matches([' ', '-', '>']);
                assert!(
                    scan.starts_with("Index Scan") || scan.starts_with("Tid Scan"),
                    "{name} scans instead of seeking each key:\n{plan}"
                );
            }
        }
    }
}
