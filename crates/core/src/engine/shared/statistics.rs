//! Keeping PostgreSQL's picture of the index's size current.
//!
//! PostgreSQL plans a prepared statement, ours and each one inside the
//! schema's functions, for the table as it is then, and a session keeps
//! that plan until the table's statistics change. A plan made while a
//! table was small reads it whole, which is right then and ruinous a
//! hundred thousand rows later. Autovacuum renews statistics only once a
//! tenth of a table has changed, and checks at most once a minute, so a
//! bulk load into a new root outgrew its plans by orders of magnitude
//! (measured: 2,000 writes of content naming a ref into a store grown
//! from 220 to 50,000 objects took 60.8 s, one scan of the objects per
//! write; 1.1 s once analyzed).
//!
//! So the engine analyzes a table itself once the table has doubled since
//! its last analyze: no plan then outlives twice the size it was made
//! for. Each host checks after every [`CHECK_EVERY`] rows it writes; the
//! check is one catalog query, and an analyze samples a bounded number of
//! rows, so a table growing to n rows is analyzed about log2(n) times.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Inner;
use crate::engine::Change;
use crate::error::Result;

/// Rows a host writes between two checks of the tables' sizes.
pub(super) const CHECK_EVERY: u64 = 256;

/// The tables whose growth a plan must follow: those looked up by key on
/// every write or read. (`theater_links_unscanned` stays small.)
const GROWING_TABLES: [&str; 4] = [
    "theater_objects",
    "theater_labels",
    "theater_changes",
    "theater_stores",
];

/// Those of [`GROWING_TABLES`] at least twice as big as at their last
/// analyze (`relpages`, which only `ANALYZE` and `VACUUM` set; 0 before
/// either ran).
const OUTGROWN: &str = "SELECT c.relname::text FROM pg_class c
    WHERE c.oid = ANY(ARRAY(SELECT to_regclass(t) FROM unnest($1::text[]) t))
      AND pg_relation_size(c.oid) > 2 * current_setting('block_size')::bigint
          * GREATEST(c.relpages, 1)";

impl Inner {
    /// Counts rows this host wrote, and checks the tables' sizes in the
    /// background after every [`CHECK_EVERY`] of them (one check at a time).
    pub(super) fn wrote(self: &Arc<Self>, rows: u64) {
        let written = self.rows_written.fetch_add(rows, Ordering::Relaxed) + rows;
        if written < CHECK_EVERY || self.checking_statistics.swap(true, Ordering::AcqRel) {
            return;
        }
        self.rows_written.store(0, Ordering::Relaxed);
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            // A failure here costs only plans: the writes stand, and the
            // next check tries again.
            if let Err(error) = inner.analyze_outgrown().await {
                tracing::debug!(root = %inner.location.display, %error, "checking the index's statistics");
            }
            inner.checking_statistics.store(false, Ordering::Release);
        });
    }

    /// Analyzes each growing table that doubled since its last analyze;
    /// returns the tables analyzed.
    async fn analyze_outgrown(&self) -> Result<Vec<String>> {
        let client = self.client().await?;
        let tables: Vec<&str> = GROWING_TABLES.to_vec();
        let outgrown = client.query(OUTGROWN, &[&tables]).await;
        let outgrown: Vec<String> = self
            .index(outgrown, "reading the index's size")?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if !outgrown.is_empty() {
            // Names from GROWING_TABLES only; another host analyzing the
            // same table at the same time makes this one skip it.
            let analyzed = client
                .batch_execute(&format!("ANALYZE (SKIP_LOCKED) {}", outgrown.join(", ")))
                .await;
            self.index(analyzed, "analyzing the index")?;
        }
        Ok(outgrown)
    }
}

/// About how many rows `change` adds to the index: what [`Inner::wrote`]
/// counts (removals count as one; they shrink no plan's picture).
pub(super) fn rows_added(change: &Change) -> u64 {
    match change {
        Change::SetLabels { labels, .. } => labels.len() as u64,
        Change::ByActor { change, .. } | Change::WithinQuota { change, .. } => rows_added(change),
        Change::Record {
            change: Some(change),
            ..
        } => 1 + rows_added(change),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    /// A bulk load into a new root, with autovacuum off, leaves
    /// PostgreSQL's statistics within a small factor of the tables' size:
    /// the engine analyzed them itself as they doubled. (Without it, the
    /// statistics stay those of the first rows, and so do the plans.)
    #[test]
    fn a_bulk_load_keeps_the_statistics_within_twice_the_tables_size() {
        let test = super::super::TestRoot::new();
        let store = test.root.store("bulk").unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let first = runtime
            .block_on(store.store_at_label("first", "x"))
            .unwrap();
        test.psql(
            "ALTER TABLE theater_objects SET (autovacuum_enabled = false);
             ALTER TABLE theater_labels SET (autovacuum_enabled = false);
             ANALYZE theater_objects, theater_labels;",
        );

        const LABELS: usize = 20_000;
        const OBJECTS: usize = 2_000;
        runtime.block_on(async {
            for batch in 0..LABELS / 1_000 {
                let labels: Vec<_> = (0..1_000)
                    .map(|i| (format!("l{batch:02}-{i:04}"), Some(first.clone())))
                    .collect();
                store.set_labels(&labels).await.unwrap();
            }
            for i in 0..OBJECTS {
                store.store(format!("object {i}")).await.unwrap();
            }
        });

        // The last check runs in the background after the last write.
        let estimate = |table: &str| -> f64 {
            test.psql(&format!(
                "SELECT reltuples FROM pg_class WHERE relname = '{table}'"
            ))
            .trim()
            .parse()
            .unwrap()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (labels, objects) = (estimate("theater_labels"), estimate("theater_objects"));
            // Within twice the size at the last check, which may come up
            // to CHECK_EVERY rows before the end: a quarter is the bound.
            if labels >= (LABELS / 4) as f64 && objects >= (OBJECTS / 4) as f64 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "PostgreSQL estimates {labels} labels and {objects} objects after {LABELS} \
                 labels and {OBJECTS} objects were written"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}
