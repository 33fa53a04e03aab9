//! `theater-store sync FROM TO [STORE...]`: brings stores in one root up to
//! date with another (the rules are the core's, in `sync.rs`).

use std::process::ExitCode;

use anyhow::{Context, bail};
use theater_store::{Options, StoreRoot, SyncOptions, SyncReport};

use crate::out::outln;
use crate::progress::Bar;
use crate::stores::{print_json, printable};

/// A root named on the command line: a directory or a root string.
fn root_at(location: &str) -> anyhow::Result<StoreRoot> {
    Ok(StoreRoot::at(location, Options::default())?)
}

/// The two roots of a sync and how to name them (as they describe
/// themselves: never with a password); two names for one root are refused.
fn open_both(from: &str, to: &str) -> anyhow::Result<(StoreRoot, StoreRoot, String, String)> {
    let (source, destination) = (root_at(from)?, root_at(to)?);
    let name = |root: &StoreRoot| printable(&root.describe().unwrap_or_default()).to_string();
    let (from, to) = (name(&source), name(&destination));
    if source.same_root_as(&destination) {
        bail!("{from} and {to} are the same root");
    }
    Ok((source, destination, from, to))
}

/// Runs the sync of `stores` (every store in `from` when empty) and
/// reports each; exit 1 when any label is in conflict.
pub async fn sync(
    from: &str,
    to: &str,
    stores: Vec<String>,
    options: SyncOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (source, destination, from, to) = open_both(from, to)?;
    let stores = if stores.is_empty() {
        let listed = source
            .stores()
            .await
            .with_context(|| format!("listing the stores of {from}"))?;
        listed.into_iter().map(|summary| summary.id).collect()
    } else {
        stores
    };
    let mut reports = Vec::with_capacity(stores.len());
    for store in &stores {
        let bar = Bar::new(&format!("syncing {store}"), false);
        let synced = source
            .sync_store_to(&destination, store, &options, bar.clone())
            .await;
        bar.finish();
        let report =
            synced.with_context(|| format!("syncing store {store} from {from} to {to}"))?;
        if !json {
            print_report(&report);
        }
        reports.push(report);
    }
    if json {
        print_json(&reports)?;
    }
    let converged = reports.iter().all(SyncReport::converged);
    Ok(if converged {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `sync --follow`: syncs one store, then again after each change to it,
/// printing each report (one JSON object per line with --json), until
/// stopped.
pub async fn follow(
    from: &str,
    to: &str,
    stores: Vec<String>,
    options: SyncOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let [store] = &stores[..] else {
        bail!(
            "sync --follow follows one store: name it after the roots (`sync FROM TO STORE --follow`)"
        );
    };
    let (source, destination, from, to) = open_both(from, to)?;
    let mut printed = Ok(());
    source
        .follow_store_to(&destination, store, &options, |report| {
            if json {
                if printed.is_ok() {
                    printed = print_json(&report);
                }
            } else {
                print_report(&report);
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
        })
        .await
        .with_context(|| format!("following store {store} from {from} to {to}"))?;
    printed?;
    Ok(ExitCode::SUCCESS)
}

fn print_report(report: &SyncReport) {
    if report.incremental {
        outln!(
            "{}: read {} since the last sync",
            report.store,
            crate::out::count(report.changes_read, "change")
        );
    }
    if let Some(why) = &report.first_sync {
        outln!(
            "{}: first sync, as {why}: nothing is deleted, and labels the two roots disagree on are conflicts",
            report.store
        );
    }
    let verb = if report.dry_run {
        "would copy"
    } else {
        "copied"
    };
    outln!(
        "{}: {verb} {} ({} bytes), {} already there; labels: {} moved, {} in sync, {} kept as changed here, {} in conflict",
        report.store,
        crate::out::count(report.objects_copied, "object"),
        report.bytes_copied,
        report.objects_present,
        report.labels_moved,
        report.labels_in_sync,
        report.labels_kept,
        report.conflicts.len()
    );
    let show = |value: &Option<theater_store::ContentRef>| {
        value
            .as_ref()
            .map_or_else(|| "(none)".to_owned(), ToString::to_string)
    };
    for conflict in &report.conflicts {
        outln!(
            "conflict in {}: label {} is {} at the source and {} at the destination",
            report.store,
            printable(&conflict.label),
            show(&conflict.source),
            show(&conflict.destination)
        );
    }
}
