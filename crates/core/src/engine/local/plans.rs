//! A check that no statement of the local engine scans what it should
//! seek (tests only). Every connection the engine opens in a test records
//! the SQL it runs; the test below drives every kind of call through the
//! public API and then asks SQLite for each statement's plan. A call that
//! scans a store's labels per object (the quadratic gc of issue 32) or a
//! whole table per call fails it, naming the statement and its plan.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::Connection;
use rusqlite::trace::{TraceEvent, TraceEventCodes};

/// Every statement text run on a watched connection, in any test, with
/// the index file it ran on.
static SEEN: Mutex<BTreeSet<(PathBuf, String)>> = Mutex::new(BTreeSet::new());

/// `connection` to the index at `db`, recording from now on the text of
/// every statement it runs.
pub(super) fn watched(mut connection: Connection, db: &Path) -> Connection {
    let db = db.to_owned();
    connection
        .trace_v2(
            TraceEventCodes::SQLITE_TRACE_STMT,
            Some(move |event: TraceEvent<'_>| {
                if let TraceEvent::Stmt(statement, _) = event {
                    let sql = statement.sql().trim().to_owned();
                    if !sql.is_empty() {
                        SEEN.lock().unwrap().insert((db.clone(), sql));
                    }
                }
            }),
        )
        .expect("tracing a test connection");
    connection
}

/// What a plan may scan whole: a constant row, or a subquery's few rows.
const SMALL: [&str; 2] = ["CONSTANT ROW", "("];

/// Statements that read a whole table on purpose, once per run of a
/// whole-root job (verify's integrity check, the store listing) or once
/// per root (a migration bringing it up to date), never per object or per
/// call on a store.
const WHOLE_TABLE_ON_PURPOSE: [&str; 10] = [
    // migration 12: each entry and label linked to its label's newest.
    "UPDATE changes SET mark = 1",
    "UPDATE changes SET prev = (",
    "UPDATE labels SET log_seq = (",
    // migration 12: each store's row copied, with its log end, once.
    "INSERT INTO stores_v12",
    // verify: labels and objects whose store has no row.
    "NOT IN (SELECT id FROM stores)",
    // verify: each store's counted totals against its rows.
    "s.label_count <>",
    // `stores`: one row per store with its totals.
    "FROM stores s ORDER BY id",
    // migration 8: label checksums written once.
    "SELECT store, name, hash FROM labels",
    // migration 7: every object held then awaits a scan for links.
    "INSERT INTO links_unscanned (store, hash) SELECT store, hash FROM objects",
    // migration 2: each store's label footprint added up once.
    "UPDATE stores SET label_footprint = (",
];

/// What a statement that looks up one row (or one label's rows) names
/// beside the store.
const POINT_KEYS: [&str; 4] = ["name = ?", "hash = ?", "label = ?", "id = ?"];

/// A search by store alone that stops at the first row: the newest entry
/// of a store's change log (its primary key is the store, then seq).
const NEWEST_ENTRY: &str = "ORDER BY seq DESC LIMIT 1";

/// What is wrong with `sql`'s plan, if anything: a full scan of a table,
/// a search by store alone inside a correlated subquery (run once per row
/// of the outer query, so quadratic in the store's size), or a lookup of
/// one key that searches by store alone.
fn plan_problem(connection: &Connection, sql: &str) -> Option<String> {
    // What the statement's text says, the same for every row of its plan.
    let on_purpose = WHOLE_TABLE_ON_PURPOSE.iter().any(|s| sql.contains(s));
    let mut statement = match connection.prepare(&format!("EXPLAIN QUERY PLAN {sql}")) {
        Ok(statement) => statement,
        // A migration's statement on a table it then replaced.
        Err(_) if on_purpose => return None,
        Err(error) => panic!("planning `{sql}`: {error}"),
    };
    // Parameters left unbound: the plan does not depend on their values
    // (each connection plans a statement once, see `open_connection`).
    let mut raw = statement.raw_query();
    let mut rows: Vec<(i64, i64, String)> = Vec::new();
    while let Some(row) = raw.next().unwrap() {
        rows.push((
            row.get(0).unwrap(),
            row.get(1).unwrap(),
            row.get(3).unwrap(),
        ));
    }
    let correlated: BTreeSet<i64> = rows
        .iter()
        .filter(|(_, _, detail)| detail.starts_with("CORRELATED"))
        .map(|(id, _, _)| *id)
        .collect();
    let inside_correlated = |mut parent: i64| {
        while parent != 0 {
            if correlated.contains(&parent) {
                return true;
            }
            parent = rows
                .iter()
                .find(|(id, _, _)| *id == parent)
                .map_or(0, |(_, up, _)| *up);
        }
        false
    };
    let materialized: Vec<&str> = rows
        .iter()
        .filter_map(|(_, _, detail)| detail.strip_prefix("MATERIALIZE "))
        .collect();
    let plan = rows
        .iter()
        .map(|(_, _, detail)| detail.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let one_key = POINT_KEYS.iter().any(|key| sql.contains(key));
    let newest_entry = sql.contains(NEWEST_ENTRY);
    for (_, parent, detail) in &rows {
        // Tables by name or by the alias a statement gives them. A
        // materialized subquery is judged by its own plan's rows.
        // A virtual table is a store's log tail (`jsonb_each`), a few
        // entries in its row, never a table.
        let reads_table = |verb: &str| {
            detail.starts_with(&format!("{verb} "))
                && !detail.contains(" VIRTUAL TABLE ")
                && !SMALL
                    .iter()
                    .any(|small| detail.starts_with(&format!("{verb} {small}")))
                && !materialized.iter().any(|name| {
                    detail.starts_with(&format!("{verb} {name} "))
                        || detail == &format!("{verb} {name}")
                })
        };
        let per_row = inside_correlated(*parent);
        if reads_table("SCAN") && (per_row || !on_purpose) {
            return Some(plan);
        }
        let whole_store = detail.ends_with("(store=?)") && !newest_entry;
        if per_row && reads_table("SEARCH") && whole_store && !on_purpose {
            return Some(plan);
        }
        // A lookup of one label, object or label's history that reads the
        // whole store to find it.
        if reads_table("SEARCH") && whole_store && one_key {
            return Some(plan);
        }
    }
    None
}

/// Whether `sql` is a statement a plan can be asked of (not transaction
/// control, a pragma or a schema change).
fn plannable(sql: &str) -> bool {
    let first = sql
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    matches!(
        first.as_str(),
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "WITH"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn no_statement_scans_what_it_should_seek() {
    use std::time::Duration;

    use crate::{GcOptions, StoreRoot};

    // It writes: the test of the recorded durability steps must not see them.
    let _alone = crate::engine::steps::WRITING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let root = StoreRoot::new(dir.path());
    let store = root.create_store().await.unwrap();
    // Enough rows that SQLite's planner sees tables worth an index.
    for i in 0..300 {
        store
            .store_at_label(&format!("doc/{i}"), format!("document {i}"))
            .await
            .unwrap();
    }
    let big = store.store(vec![7u8; 200_000]).await.unwrap();
    let small = store.store("unlabelled").await.unwrap();
    store.label("big", &big).await.unwrap();
    store.get(&big).await.unwrap();
    store.get(&small).await.unwrap();
    store.exists(&small).await.unwrap();
    store.get_by_label("doc/7").await.unwrap();
    store.list_labels_page("doc/", None, 50).await.unwrap();
    let now = store.get_by_label("doc/1").await.unwrap().unwrap();
    assert!(
        store
            .compare_and_swap_label("doc/1", Some(&now), Some(&small))
            .await
            .unwrap()
    );
    store
        .compare_and_swap_labels(&[("doc/3".into(), None, Some(small.clone()))])
        .await
        .unwrap();
    store.remove_label("doc/2").await.unwrap();
    store.changes(0, 100).await.unwrap();
    store.history("doc/1", 10).await.unwrap();
    store.label_at("doc/1", 1).await.unwrap();
    store.labels_at("doc/", 5).await.unwrap();
    store.stats().await.unwrap();
    root.stores().await.unwrap();
    let chain = root.event_chain("planner").unwrap();
    chain.append(crate::Event::new("store")).await.unwrap();
    chain.verify().await.unwrap();
    store.verify(()).await.unwrap();
    let grace = GcOptions {
        grace: Duration::ZERO,
        ..GcOptions::default()
    };
    let dry_run = GcOptions {
        dry_run: true,
        ..grace
    };
    store.collect_garbage(dry_run, ()).await.unwrap();
    store.collect_garbage(grace, ()).await.unwrap();
    store.export_package(None, Vec::new(), ()).await.unwrap();
    store.unreachable(Duration::ZERO).await.unwrap();
    store.quarantined().await.unwrap();
    store.list_all_content().await.unwrap();
    store
        .at(crate::Point::After(3))
        .await
        .unwrap()
        .get_by_label("doc/1")
        .await
        .unwrap();
    store.revert_to("doc/", 3, false).await.unwrap();
    chain.trim(crate::TrimBefore::Seq(1)).await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let mirror = StoreRoot::new(other.path());
    for _ in 0..2 {
        root.sync_store_to(&mirror, store.id(), &crate::SyncOptions::default(), ())
            .await
            .unwrap();
    }
    let doomed = root.create_store().await.unwrap();
    doomed.store_at_label("gone", "soon").await.unwrap();
    root.remove_store(doomed.id(), false).await.unwrap();

    let db = dir.path().join("index.sqlite");
    let connection = Connection::open(&db).unwrap();
    // Statements that fire the log's triggers plan only where they can
    // ask who acts.
    super::sql::Acting::default()
        .answer_on(&connection)
        .unwrap();
    let seen: BTreeSet<String> = SEEN
        .lock()
        .unwrap()
        .iter()
        .filter(|(on, _)| *on == db)
        .map(|(_, sql)| sql.clone())
        .collect();
    let problems: Vec<String> = seen
        .iter()
        .filter(|sql| plannable(sql))
        .filter_map(|sql| plan_problem(&connection, sql).map(|plan| format!("{sql}\n  => {plan}")))
        .collect();
    assert!(
        seen.iter().filter(|sql| plannable(sql)).count() > 30,
        "too few statements recorded: {seen:?}"
    );
    assert!(
        problems.is_empty(),
        "statements that scan:\n{}",
        problems.join("\n")
    );
}
