//! `changes` and `watch`: a store's change log, a page at a time or as it
//! grows, one line per change (text or JSON).

use std::io::Write;
use std::process::ExitCode;

use theater_store::{ContentRef, LabelChange, StoreRoot};

use crate::out::outln;
use crate::stores::{existing, print_json, printable};

/// A ref as text, `-` for none.
fn or_dash(content_ref: Option<&ContentRef>) -> String {
    content_ref.map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// A change's time and actor as text columns (`-` for no actor).
fn when_and_who(change: &LabelChange) -> (String, String) {
    let actor = change
        .actor
        .as_deref()
        .map_or_else(|| "-".to_owned(), |actor| printable(actor).into_owned());
    let time = humantime::format_rfc3339_millis(change.system_time()).to_string();
    (time, actor)
}

/// One change as a line: JSON, or tab-separated text (`-` for nothing).
fn line(change: &LabelChange, json: bool) -> anyhow::Result<String> {
    if json {
        return Ok(serde_json::to_string(change)?);
    }
    let (time, actor) = when_and_who(change);
    Ok(format!(
        "{}\t{time}\t{}\t{}\t{}\t{actor}",
        change.seq,
        printable(&change.label),
        or_dash(change.old.as_ref()),
        or_dash(change.new.as_ref()),
    ))
}

/// Writes `text` as a line to stdout and flushes it; `false` once stdout
/// is closed (a pipe whose reader went away).
fn emit(text: &str) -> anyhow::Result<bool> {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// `theater-store changes`: one page of the log after `since`.
pub async fn changes(
    root: &StoreRoot,
    store: &str,
    since: u64,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = existing(root, store).await?;
    let page = store.changes(since, limit).await?;
    for change in &page.changes {
        if !emit(&line(change, json)?)? {
            return Ok(ExitCode::SUCCESS);
        }
    }
    if let Some(last) = page.changes.last()
        && last.seq < page.last_seq
    {
        eprintln!(
            "more changes follow (up to {}): rerun with --since {}",
            page.last_seq, last.seq
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `theater-store watch`: the changes to labels under `prefix`, from
/// after `since` (or from now), as they happen, until stopped.
pub async fn watch(
    root: &StoreRoot,
    store: &str,
    prefix: &str,
    since: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = existing(root, store).await?;
    let since = match since {
        Some(since) => since,
        None => store.last_change().await?,
    };
    let mut watch = store.watch(prefix, since);
    while let Some(change) = watch.next().await {
        if !emit(&line(&change?, json)?)? {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `theater-store history`: a label's past values, newest first, one line
/// each (seq, time, ref or `-` where it was removed, actor), or with
/// `--json` one object per line: `{"seq", "ref", "old", "time", "actor"}`.
pub async fn history(
    root: &StoreRoot,
    store: &str,
    label: &str,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = existing(root, store).await?;
    for change in store.history(label, limit).await? {
        let text = if json {
            serde_json::json!({
                "seq": change.seq,
                "ref": change.new,
                "old": change.old,
                "time": change.time,
                "actor": change.actor,
            })
            .to_string()
        } else {
            let (time, actor) = when_and_who(&change);
            format!(
                "{}\t{time}\t{}\t{actor}",
                change.seq,
                or_dash(change.new.as_ref())
            )
        };
        if !emit(&text)? {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `labels STORE --at SEQ`: the labels as they were right after change SEQ.
pub async fn labels_at(
    root: &StoreRoot,
    store: &str,
    prefix: &str,
    at: theater_store::Point,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = existing(root, store).await?;
    let then = store.at(at).await?;
    let labels = then.list_labels_page(prefix, None, usize::MAX).await?;
    if json {
        print_json(&labels)?;
    } else {
        for entry in labels {
            if !emit(&format!(
                "{}\t{}",
                printable(&entry.label),
                entry.content_ref
            ))? {
                break;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `revert STORE --to SEQ`: puts labels back, printing each move.
/// What a revert moves.
pub enum Reverted<'a> {
    /// The labels starting with this.
    Prefix(&'a str),
    /// This one label.
    Label(&'a str),
}

pub async fn revert(
    root: &StoreRoot,
    store: &str,
    scope: Reverted<'_>,
    to: theater_store::Point,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = existing(root, store).await?;
    let to = store.resolve_point(to).await?;
    let moved = match scope {
        Reverted::Prefix(prefix) => store.revert_to(prefix, to, dry_run).await?,
        Reverted::Label(label) => store.revert_label_to(label, to, dry_run).await?,
    };
    if json {
        print_json(&serde_json::json!({
            "store": store.id(),
            "dry_run": dry_run,
            "to": to,
            "moved": moved,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    for change in &moved {
        outln!(
            "{}\t{}\t{}",
            printable(&change.label),
            or_dash(change.from.as_ref()),
            or_dash(change.to.as_ref())
        );
    }
    let verb = if dry_run { "would move" } else { "moved" };
    eprintln!(
        "{}: {verb} {} back to how they were after change {to}",
        store.id(),
        crate::out::count(moved.len() as u64, "label")
    );
    Ok(ExitCode::SUCCESS)
}
