//! The store-keeping commands: each parses its arguments, makes one or a few
//! core calls, and prints the result as text or JSON.

// `writeln!` into a page of text.
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use theater_store::{ContentRef, ContentStore, GcOptions, Progress, StoreRoot};
use tokio::io::{AsyncBufReadExt, AsyncRead};

use crate::missing::Missing;
use crate::out::{count, out, outln};
use crate::parse::ByteRange;
use crate::progress::Bar;

/// `text` with control characters escaped (`\n`, `\t`, `\u{1b}`), so that
/// text from a label or an actor can neither forge output lines nor steer
/// the terminal. JSON output escapes them by itself.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_debug());
        } else {
            escaped.push(c);
        }
    }
    escaped.into()
}

/// A uniquely named temporary file beside `path`, to be renamed onto it
/// once whole: a failure leaves no partial file, and concurrent writers of
/// nearby paths never share a temporary file.
pub fn temp_file_beside(path: &Path) -> anyhow::Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))
}

/// Prints `value` as one line of JSON.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Store `store`: an ordinary store, or the chain store by its reserved
/// id (`_chains`), which export, import and sync carry like any other.
/// Label changes made through it are logged as the operator's
/// ([`operator`]).
fn open(root: &StoreRoot, store: &str) -> anyhow::Result<ContentStore> {
    let chains = root.chain_store();
    if store == chains.id() {
        return Ok(chains);
    }
    Ok(root.store(store)?.by_actor(&operator()))
}

/// Who the change log says made a CLI write: `cli:` and the user's name
/// (`$USER`, else the numeric user id), so that `changes` and `watch`
/// tell an operator's edits from an actor's.
fn operator() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|user| !user.is_empty())
        // SAFETY: getuid has no preconditions and cannot fail.
        .unwrap_or_else(|| unsafe { libc::getuid() }.to_string());
    format!("cli:{user}")
}

fn parse_ref(reference: &str) -> anyhow::Result<ContentRef> {
    ContentRef::parse(reference).context("refs are printed by `put` and `labels`")
}

/// The stores to work on: one by id, or every store in the root and the
/// root's own (event chains, whose events gc keeps while a head reaches
/// them; the component cache, whose old entries gc drops).
async fn selected(root: &StoreRoot, store: Option<&str>) -> anyhow::Result<Vec<ContentStore>> {
    let Some(id) = store else {
        let mut stores = root
            .stores()
            .await?
            .iter()
            .map(|summary| open(root, &summary.id))
            .collect::<anyhow::Result<Vec<_>>>()?;
        stores.extend(root.reserved_stores().await?);
        return Ok(stores);
    };
    Ok(vec![existing(root, id).await?])
}

/// Store `id`, which must exist: maintenance of a mistyped store would
/// otherwise report an empty store as healthy.
pub async fn existing(root: &StoreRoot, id: &str) -> anyhow::Result<ContentStore> {
    let store = open(root, id)?;
    let listed = root.stores().await?.iter().any(|summary| summary.id == id)
        || root
            .reserved_stores()
            .await?
            .iter()
            .any(|reserved| reserved.id() == id);
    if !listed {
        return Err(Missing(format!(
            "store {} does not exist in root {} (`theater-store stores` lists them)",
            printable(id),
            root.describe().unwrap_or_default()
        ))
        .into());
    }
    Ok(store)
}

pub async fn list_stores(root: &StoreRoot, all: bool, json: bool) -> anyhow::Result<ExitCode> {
    let mut stores = root.stores().await?;
    if all {
        for reserved in root.reserved_stores().await? {
            stores.push(theater_store::StoreSummary {
                id: reserved.id().to_owned(),
                stats: reserved.stats().await?,
            });
        }
        stores.sort_by(|a, b| a.id.cmp(&b.id));
    }
    if json {
        print_json(&stores)?;
    } else if stores.is_empty() {
        eprintln!(
            "no stores in {}",
            root.describe().unwrap_or_else(|| "?".into())
        );
    } else {
        outln!(
            "{:<40} {:>10} {:>14} {:>8}",
            "STORE",
            "OBJECTS",
            "BYTES",
            "LABELS"
        );
        for store in stores {
            let stats = store.stats;
            outln!(
                "{:<40} {:>10} {:>14} {:>8}",
                store.id,
                stats.objects,
                stats.bytes,
                stats.labels
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn labels(
    root: &StoreRoot,
    store: &str,
    prefix: &str,
    limit: Option<usize>,
    after: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = existing(root, store).await?;
    // A page at a time, so that memory stays flat however many labels
    // there are; each page is read as the store is when it is read.
    let mut remaining = limit.unwrap_or(usize::MAX);
    let mut after = after.map(str::to_owned);
    let mut printed = 0usize;
    while remaining > 0 {
        let want = remaining.min(LABELS_PER_PAGE);
        let page = store
            .list_labels_page(prefix, after.as_deref(), want)
            .await?;
        // One write per page, not per label.
        let mut text = String::new();
        for entry in &page {
            if json {
                text.push(if printed == 0 { '[' } else { ',' });
                text.push_str(&serde_json::to_string(entry)?);
            } else {
                writeln!(text, "{}\t{}", printable(&entry.label), entry.content_ref)?;
            }
            printed += 1;
        }
        out!("{text}");
        remaining -= page.len();
        if page.len() < want {
            break;
        }
        after = page.last().map(|entry| entry.label.clone());
    }
    if json {
        outln!("{}", if printed == 0 { "[]" } else { "]" });
    }
    Ok(ExitCode::SUCCESS)
}

/// Labels `labels` reads from the store at a time.
const LABELS_PER_PAGE: usize = 10_000;

pub async fn cat(
    root: &StoreRoot,
    store: &str,
    reference: Option<&str>,
    label: Option<(&str, Option<theater_store::Point>)>,
    range: Option<ByteRange>,
) -> anyhow::Result<ExitCode> {
    let store = open(root, store)?;
    let content_ref = match (reference, label) {
        (Some(reference), _) => parse_ref(reference)?,
        (None, Some((label, None))) => match store.get_by_label(label).await? {
            Some(content_ref) => content_ref,
            None => {
                // A mistyped store reads as one with no labels: say which.
                existing(root, store.id()).await?;
                return Err(no_label(&store, label).into());
            }
        },
        (None, Some((label, Some(point)))) => {
            let then = store.at(point).await?;
            match then.get_by_label(label).await? {
                Some(content_ref) => content_ref,
                None => {
                    return Err(crate::missing::Missing(format!(
                        "store {}: label {} did not exist right after change {}",
                        store.id(),
                        printable(label),
                        then.seq()
                    ))
                    .into());
                }
            }
        }
        (None, None) => unreachable!("clap requires a ref or --label"),
    };
    let range = range.unwrap_or(ByteRange {
        start: 0,
        end: None,
    });
    let len = range.end.map(|end| end - range.start);
    let reader = match store.range_reader(&content_ref, range.start, len).await {
        Ok(reader) => reader,
        Err(error) => {
            existing(root, store.id()).await?;
            return Err(error.into());
        }
    };
    let bar = Bar::new("reading", true);
    bar.start(reader.limit());
    // The verified windows themselves go to stdout, each with one write
    // and no copy of ours (tokio's stdout copies every write and hands it
    // to another thread: a 1 GiB `cat` took 0.42 s through it, 0.28 s so).
    let mut reader = reader.into_inner();
    let copied = async {
        let mut stdout = std::io::stdout().lock();
        while let Some(piece) = reader.next_piece().await? {
            tokio::task::block_in_place(|| stdout.write_all(&piece))?;
            bar.advance(piece.len() as u64);
        }
        stdout.flush()
    };
    let copied = copied.await;
    bar.finish();
    match copied {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        // A verification failure arrives as an I/O error wrapping the store's error.
        Err(error) => match error.into_inner() {
            Some(inner) => Err(anyhow::anyhow!(inner)),
            None => Err(anyhow::anyhow!("writing to stdout failed")),
        },
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

pub async fn put(
    root: &StoreRoot,
    store: &str,
    file: Option<&Path>,
    label: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = open(root, store)?;
    let bar = Bar::new("storing", true);
    let (input, name): (Box<dyn AsyncRead + Unpin>, String) = match file {
        Some(path) if path != Path::new("-") => {
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            if let Ok(metadata) = file.metadata().await {
                bar.start(metadata.len());
            }
            (Box::new(file), path.display().to_string())
        }
        _ => (Box::new(tokio::io::stdin()), "stdin".to_owned()),
    };
    let mut input = tokio::io::BufReader::with_capacity(256 << 10, input);
    let mut writer = store.writer().await?;
    loop {
        let piece = input
            .fill_buf()
            .await
            .with_context(|| format!("reading {name}"))?;
        if piece.is_empty() {
            break;
        }
        let len = piece.len();
        writer.write(piece).await?;
        input.consume(len);
        bar.advance(len as u64);
    }
    let size = writer.bytes_written();
    let stored = match label {
        Some(label) => writer.finish_at_label(label).await?,
        None => writer.finish().await?,
    };
    bar.finish();
    let content_ref = stored.content_ref;
    if json {
        print_json(
            &json!({"store": store.id(), "ref": content_ref.hash(), "bytes": size, "label": label}),
        )?;
    } else {
        outln!("{content_ref}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn label(
    root: &StoreRoot,
    store: &str,
    label: &str,
    reference: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = open(root, store)?;
    let content_ref = parse_ref(reference)?;
    store.label(label, &content_ref).await?;
    if json {
        print_json(&json!({"store": store.id(), "label": label, "ref": content_ref.hash()}))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn unlabel(
    root: &StoreRoot,
    store: &str,
    label: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = existing(root, store).await?;
    let Some(target) = store.get_by_label(label).await? else {
        return Err(no_label(&store, label).into());
    };
    // Only what was read is removed: a label moved meanwhile stays.
    if !store.remove_from_label(label, &target).await? {
        anyhow::bail!(
            "store {}: label {:?} was moved while it was being removed; it stays",
            store.id(),
            printable(label)
        );
    }
    if json {
        print_json(&json!({"store": store.id(), "label": label, "ref": target.hash()}))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `quarantine`: what verify moved aside, per store; with `purge`, what
/// was moved more than that long ago is deleted first.
pub async fn quarantine(
    root: &StoreRoot,
    store: Option<&str>,
    purge: Option<Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let stores = match store {
        Some(id) => vec![existing(root, id).await?],
        None => {
            let mut all = Vec::new();
            for summary in root.stores().await? {
                all.push(root.store(&summary.id)?);
            }
            all.extend(root.reserved_stores().await?);
            all
        }
    };
    let mut listing = Vec::new();
    for store in &stores {
        let purged = match purge {
            Some(older_than) => Some(store.purge_quarantine(older_than).await?),
            None => None,
        };
        let kept = store.quarantined().await?;
        if purged.is_some() || !kept.is_empty() {
            listing.push(json!({"store": store.id(), "purged": purged, "quarantined": kept}));
        }
        if json {
            continue;
        }
        if let Some(purged) = purged {
            outln!("store {}: {purged} quarantined pieces purged", store.id());
        }
        for entry in &kept {
            let moved = std::time::UNIX_EPOCH
                + Duration::from_millis(u64::try_from(entry.quarantined_at_millis).unwrap_or(0));
            outln!(
                "{}\t{}\t{} bytes\tquarantined {}",
                store.id(),
                entry.content_ref,
                entry.size,
                humantime::format_rfc3339_seconds(moved)
            );
        }
    }
    if json {
        print_json(&listing)?;
    } else if listing.is_empty() {
        eprintln!("nothing is quarantined");
    }
    Ok(ExitCode::SUCCESS)
}

/// `labels --unlabelled`: content no label reaches, oldest first, and
/// whether gc with `grace` would take it now.
pub async fn unlabelled(
    root: &StoreRoot,
    store: &str,
    grace: Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = existing(root, store).await?;
    let unreachable = store.unreachable(grace).await?;
    if json {
        print_json(&unreachable)?;
        return Ok(ExitCode::SUCCESS);
    }
    for entry in &unreachable {
        let stored = std::time::UNIX_EPOCH
            + Duration::from_millis(u64::try_from(entry.stored_at_millis).unwrap_or(0));
        let fate = if entry.kept_by_grace {
            "kept by the grace period"
        } else {
            "gc takes it"
        };
        outln!(
            "{}\t{} bytes\tstored {}\t{fate}",
            entry.content_ref,
            entry.size,
            humantime::format_rfc3339_seconds(stored)
        );
    }
    if unreachable.is_empty() {
        eprintln!("store {}: every object is reached by a label", store.id());
    }
    Ok(ExitCode::SUCCESS)
}

/// `du`: labels grouped by their first `depth` `/`-separated parts, each
/// group with the distinct content its labels point at.
pub async fn du(
    root: &StoreRoot,
    store: &str,
    prefix: &str,
    depth: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = existing(root, store).await?;
    let usage = store.usage(prefix, depth).await?;
    if json {
        print_json(&usage)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<40} {:>8} {:>10} {:>14}",
        "PREFIX",
        "LABELS",
        "OBJECTS",
        "BYTES"
    );
    for group in &usage {
        outln!(
            "{:<40} {:>8} {:>10} {:>14}",
            printable(&group.prefix),
            group.labels,
            group.objects,
            group.bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The lines of `file` (`-`: stdin) that carry something: not blank,
/// not a `#` comment.
fn list_lines(file: &Path) -> anyhow::Result<Vec<String>> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file)
            .map_err(|error| anyhow::anyhow!("reading {}: {error}", file.display()))?
    };
    Ok(text
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// How `--from FILE` is named in messages.
fn source_name(file: &Path) -> String {
    if file == Path::new("-") {
        "stdin".to_owned()
    } else {
        file.display().to_string()
    }
}

/// `label --from FILE`: every `LABEL REF` line's label points at its ref,
/// in one transaction; a ref that is not stored changes nothing.
pub async fn label_many(
    root: &StoreRoot,
    store: &str,
    file: &Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = open(root, store)?;
    let mut pairs = Vec::new();
    for (number, line) in list_lines(file)?.into_iter().enumerate() {
        let Some((label, reference)) = line.trim_end().rsplit_once(char::is_whitespace) else {
            anyhow::bail!(
                "{} line {}: expected `LABEL REF`, got {:?}",
                source_name(file),
                number + 1,
                printable(&line)
            );
        };
        let content_ref = parse_ref(reference).map_err(|error| {
            anyhow::anyhow!("{} line {}: {error}", source_name(file), number + 1)
        })?;
        pairs.push((label.trim_end().to_owned(), Some(content_ref)));
    }
    store.set_labels(&pairs).await?;
    if json {
        print_json(&json!({"store": store.id(), "labelled": pairs.len()}))?;
    } else {
        outln!(
            "store {}: {} set",
            store.id(),
            count(pairs.len() as u64, "label")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `unlabel --from FILE`: every listed label is removed, in one
/// transaction; if any is not there, none is removed.
pub async fn unlabel_many(
    root: &StoreRoot,
    store: &str,
    file: &Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = existing(root, store).await?;
    let labels = list_lines(file)?;
    // Each is removed only from what was read: a label moved meanwhile
    // makes the whole removal fail, and nothing changes.
    let mut swaps = Vec::with_capacity(labels.len());
    for label in labels {
        let Some(target) = store.get_by_label(&label).await? else {
            return Err(no_label(&store, &label).into());
        };
        swaps.push((label, Some(target), None));
    }
    if !store.compare_and_swap_labels(&swaps).await? {
        anyhow::bail!(
            "store {}: a listed label was moved while they were being removed; none was removed",
            store.id()
        );
    }
    if json {
        print_json(&json!({"store": store.id(), "unlabelled": swaps.len()}))?;
    } else {
        outln!(
            "store {}: {} removed",
            store.id(),
            count(swaps.len() as u64, "label")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A label `store` does not have.
fn no_label(store: &ContentStore, label: &str) -> Missing {
    Missing(format!(
        "store {}: no label {:?} (see `theater-store labels {}`)",
        store.id(),
        printable(label),
        store.id()
    ))
}

pub async fn verify(
    root: &StoreRoot,
    store: Option<&str>,
    repair_from: Option<&StoreRoot>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    let mut repairs = Vec::new();
    let stores = selected(root, store).await?;
    // The index is checked as a whole once, not once per store.
    let index = root.check_index().await?;
    for store in stores {
        let bar = Bar::new(&format!("verifying {}", store.id()), true);
        let mut report = store.verify_with(&index, bar.clone()).await?;
        bar.finish();
        if let Some(source) = repair_from
            && !report.is_clean()
        {
            let mut damaged: Vec<theater_store::ContentRef> = report.missing.clone();
            damaged.extend(report.quarantined.iter().cloned());
            damaged.extend(report.dangling_labels.iter().map(|e| e.content_ref.clone()));
            damaged.sort();
            damaged.dedup();
            let source_store = source.store(store.id())?;
            let repaired = store.repair_from(&source_store, &damaged).await?;
            if !repaired.healed.is_empty() {
                // Checked again: what the repair left is what is reported.
                report = store.verify(()).await?;
            }
            repairs.push(repaired);
        }
        reports.push(report);
    }
    let clean = reports.iter().all(|report| report.is_clean());
    if json {
        print_json(&json!({"clean": clean, "stores": reports, "repairs": repairs}))?;
    } else {
        for repaired in &repairs {
            outln!(
                "{}: repaired {} from {}; {} not held whole there either",
                repaired.store,
                count(repaired.healed.len() as u64, "object"),
                repair_from
                    .and_then(StoreRoot::describe)
                    .unwrap_or_default(),
                repaired.unavailable.len()
            );
        }
        for report in &reports {
            let verdict = if report.is_clean() { "ok" } else { "PROBLEMS" };
            outln!(
                "{}: {verdict} ({}, {} bytes checked)",
                report.store,
                count(report.objects_checked, "object"),
                report.bytes_checked
            );
            for content_ref in &report.quarantined {
                outln!("  corrupt object {content_ref}: moved to quarantine/");
            }
            for content_ref in &report.missing {
                outln!("  missing object {content_ref}: indexed but its bytes are gone");
            }
            for entry in &report.dangling_labels {
                outln!(
                    "  dangling label {:?} -> {}: its content is missing",
                    entry.label,
                    entry.content_ref
                );
            }
            for label in &report.damaged_labels {
                outln!(
                    "  damaged label row {:?}: it fails its checksum, so its name or target \
                     may not be what was written; set it again, or restore it from an export",
                    printable(label)
                );
            }
            for path in &report.stray_files {
                outln!("  stray file {}: not an object name", path.display());
            }
            for path in &report.leftover_temp_files {
                outln!(
                    "  leftover temporary file {}: `theater-store gc` removes it",
                    path.display()
                );
            }
            if !report.unindexed.is_empty() {
                outln!(
                    "  {} unindexed object files (crash leftovers, harmless; gc removes them)",
                    report.unindexed.len()
                );
            }
        }
        // The index check covers the whole root: report it once.
        if let Some(report) = reports.iter().find(|r| !r.index_problems.is_empty()) {
            outln!("index.sqlite: PROBLEMS (small content lives in it)");
            for problem in &report.index_problems {
                outln!("  {}", printable(problem));
            }
            eprintln!(
                "the index is damaged: copy out what still reads (`export`) or import a recent export into a fresh root"
            );
        }
        if !clean {
            eprintln!(
                "verify found problems; dangling labels can be repaired by storing the same content again"
            );
        }
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn gc(
    root: &StoreRoot,
    store: Option<&str>,
    grace: Duration,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    let mut stores = selected(root, store).await?;
    if store.is_none() {
        // Staging left by writes killed before their store's first commit.
        stores.extend(root.unindexed_stores().await?);
    }
    for store in stores {
        let bar = Bar::new(&format!("collecting {}", store.id()), false);
        let report = store
            .collect_garbage(GcOptions { grace, dry_run }, bar.clone())
            .await?;
        bar.finish();
        reports.push(report);
    }
    if json {
        print_json(&reports)?;
    } else {
        let verb = if dry_run { "would free" } else { "freed" };
        for report in &reports {
            outln!(
                "{}: {verb} {} bytes in {}; kept {} labelled, {} for history and {} within \
                 the grace period; removed {} temporary and {} unindexed files{}",
                report.store,
                report.bytes_freed,
                count(report.objects_removed, "object"),
                report.kept_labelled,
                report.kept_for_history,
                report.kept_recent,
                report.temp_files_removed,
                report.unindexed_files_removed,
                if report.store_removed {
                    "; the store was empty and is removed"
                } else {
                    ""
                }
            );
            if report.interrupted_removals_finished > 0 {
                outln!(
                    "  finished {} removals an interrupted gc had left half done",
                    report.interrupted_removals_finished
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `export` packs.
pub enum Exported<'a> {
    /// One store, or the labels under a prefix and what they reach.
    Store {
        id: &'a str,
        prefix: Option<&'a str>,
        /// As the store was at this point of its change log, if given.
        at: Option<theater_store::Point>,
    },
    /// The whole root: every store and every event chain.
    Root,
}

pub async fn export(
    root: &StoreRoot,
    what: Exported<'_>,
    output: &Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let target = Output::for_path(output)?;
    let bar = Bar::new("exporting", true);
    let (name, exported) = match what {
        Exported::Store { id, prefix, at } => {
            let store = existing(root, id).await?;
            let seq = match at {
                Some(point) => Some(store.resolve_point(point).await?),
                None => None,
            };
            let sink = target.sink()?;
            let exported = match seq {
                Some(seq) => {
                    store
                        .export_package_at(seq, prefix, sink, bar.clone())
                        .await
                }
                None => store.export_package(prefix, sink, bar.clone()).await,
            };
            let name = format!("store {}", store.id());
            (name, exported.map(|(summary, sink)| (vec![summary], sink)))
        }
        Exported::Root => {
            let sink = target.sink()?;
            let exported = root.export_root(sink, bar.clone()).await;
            ("the root".to_owned(), exported)
        }
    };
    bar.finish();
    let summaries = exported
        .map_err(anyhow::Error::from)
        .and_then(|(summaries, mut sink)| {
            sink.flush()?;
            drop(sink);
            target.commit(output)?;
            Ok(summaries)
        })
        .with_context(|| format!("exporting {name} to {}", output.display()))?;
    for summary in &summaries {
        for content_ref in &summary.vanished {
            eprintln!(
                "note: content {content_ref} of store {} was removed by a concurrent collection \
                 during the export and is not in the package (nor is any label that pointed at it)",
                summary.store
            );
        }
    }
    // With the package on stdout, what is said about it goes to stderr.
    let to_stdout = output == Path::new("-");
    let say = |line: String| {
        if to_stdout {
            eprintln!("{line}");
        } else {
            outln!("{line}");
        }
    };
    if json {
        let shown = match &summaries[..] {
            [one] if !matches!(what, Exported::Root) => serde_json::to_string(one)?,
            all => serde_json::to_string(all)?,
        };
        say(shown);
    } else {
        for summary in &summaries {
            say(format!(
                "exported {} ({} bytes) and {} from {} to {}",
                count(summary.objects, "object"),
                summary.bytes,
                count(summary.labels, "label"),
                summary.store,
                output.display()
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where an export writes.
enum Output {
    /// A new regular file (or one to replace): written beside it, then
    /// renamed onto it once whole.
    Replace(tempfile::NamedTempFile),
    /// Something that is not a regular file of its own (a device, a FIFO,
    /// a symlink's target): written into as it is, never replaced.
    Into(std::fs::File),
    /// Standard output (`-o -`).
    Stdout,
}

impl Output {
    fn for_path(path: &Path) -> anyhow::Result<Self> {
        if path == Path::new("-") {
            return Ok(Self::Stdout);
        }
        let replaceable = match std::fs::symlink_metadata(path) {
            Ok(metadata) => metadata.file_type().is_file(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => true,
            Err(error) => {
                return Err(error).with_context(|| format!("inspecting {}", path.display()));
            }
        };
        if replaceable {
            return Ok(Self::Replace(temp_file_beside(path)?));
        }
        // A symlink to a regular file is written through, from the start.
        let truncate = std::fs::metadata(path).is_ok_and(|metadata| metadata.is_file());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(truncate)
            .open(path)
            .with_context(|| format!("opening {} for writing", path.display()))?;
        Ok(Self::Into(file))
    }

    /// A handle the core writes the package through, on a blocking thread.
    fn sink(&self) -> anyhow::Result<Box<dyn std::io::Write + Send>> {
        Ok(match self {
            Self::Replace(partial) => Box::new(partial.as_file().try_clone()?),
            Self::Into(file) => Box::new(file.try_clone()?),
            Self::Stdout => Box::new(std::io::stdout()),
        })
    }

    /// Makes a whole package final: a new file is flushed to disk and
    /// renamed onto `path`.
    fn commit(self, path: &Path) -> anyhow::Result<()> {
        if let Self::Replace(partial) = self {
            partial.as_file().sync_all()?;
            partial.persist(path)?;
        }
        Ok(())
    }
}

/// What `import` fills.
pub enum Imported<'a> {
    /// One store, from a store's package.
    Store(&'a str),
    /// The root, from a whole root's package (`export --all`).
    Root,
}

pub async fn import(
    root: &StoreRoot,
    into: Imported<'_>,
    file: &Path,
    options: theater_store::ImportOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let input =
        std::fs::File::open(file).with_context(|| format!("opening package {}", file.display()))?;
    let length = input.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = Bar::new("importing", true);
    theater_store::Progress::start(&*bar, length);
    let (name, imported) = match into {
        Imported::Store(id) => {
            let store = open(root, id)?;
            let imported = store.import_package_with(input, options, bar.clone()).await;
            (
                format!("store {}", store.id()),
                imported.map(|summary| vec![summary]),
            )
        }
        Imported::Root => {
            let imported = root.import_root(input, options, bar.clone()).await;
            ("the root".to_owned(), imported)
        }
    };
    bar.finish();
    let summaries =
        imported.with_context(|| format!("importing {} into {name}", file.display()))?;
    if json {
        match &summaries[..] {
            [one] if matches!(into, Imported::Store(_)) => print_json(one)?,
            all => print_json(&all)?,
        }
    } else {
        for summary in &summaries {
            print_import(summary);
        }
    }
    let conflicts = summaries
        .iter()
        .any(|summary| !summary.conflicts.is_empty());
    Ok(if conflicts {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_import(summary: &theater_store::PackageSummary) {
    let verb = if summary.dry_run {
        "would import"
    } else {
        "imported"
    };
    outln!(
        "{verb} {} ({} new, {} bytes) and {} into {} ({} already so, {} in conflict)",
        count(summary.objects, "object"),
        summary.new_objects,
        summary.bytes,
        count(summary.labels, "label"),
        summary.store,
        summary.labels_unchanged,
        summary.conflicts.len()
    );
    for conflict in &summary.conflicts {
        outln!(
            "conflict in {}: label {} is {} here and {} in the package; kept (--overwrite replaces it)",
            summary.store,
            printable(&conflict.label),
            conflict.current,
            conflict.package
        );
    }
}

pub async fn rm_store(
    root: &StoreRoot,
    store: &str,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    existing(root, store).await?;
    let report = root.remove_store(store, dry_run).await?;
    if json {
        print_json(&report)?;
    } else {
        let verb = if dry_run { "would remove" } else { "removed" };
        outln!(
            "{}: {verb} {} and {} ({} bytes)",
            report.store,
            count(report.labels_removed, "label"),
            count(report.objects_removed, "object"),
            report.bytes_freed
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Indexes a root's content files again after its index was lost.
pub async fn reindex(root: &StoreRoot, json: bool) -> anyhow::Result<ExitCode> {
    let bar = Bar::new("re-indexing", true);
    let reports = root.reindex(bar.clone()).await?;
    bar.finish();
    if json {
        print_json(&reports)?;
        return Ok(ExitCode::SUCCESS);
    }
    for report in &reports {
        outln!(
            "{}: {} ({} bytes) indexed again, labelled {}REF",
            report.store,
            count(report.objects_recovered, "object"),
            report.bytes_recovered,
            theater_store::RECOVERED_PREFIX
        );
        for content_ref in &report.corrupt {
            outln!("  corrupt file {content_ref}: its bytes do not match its name; left as it is");
        }
    }
    outln!(
        "labels, event chains and small content (up to 16 KiB by default) lived only in the index: restore \
         them from a package (`import --all`); relabel what you need with `label`, and \
         `unlabel` the rest for gc to remove"
    );
    Ok(ExitCode::SUCCESS)
}
