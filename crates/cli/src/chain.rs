//! `theater-store chain` and `verify-chain`: an actor's event chain, read
//! and checked from the host side.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use theater_store::{ChainEntry, Outcome, StoreRoot, TrimBefore};

use crate::missing::Missing;
use crate::out::outln;
use crate::stores::{print_json, printable};

/// Events `chain --json` lists when no `--limit` is given: JSON of a long
/// chain is large, and scripts page with `--limit`.
pub const DEFAULT_JSON_LIMIT: usize = 1000;

/// Lists up to `limit` events of `actor`'s chain, newest first, writing
/// each as it is read (one segment of the chain in memory at a time). A
/// reader that closes the pipe early (`| head`) ends the listing quietly.
pub async fn list(
    root: &StoreRoot,
    actor: &str,
    limit: Option<usize>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let chain = root.event_chain(actor)?;
    if chain.head().await?.is_none() {
        return Err(Missing(no_chain(actor)).into());
    }
    let limit = match (limit, json) {
        (Some(limit), _) => limit,
        (None, true) => DEFAULT_JSON_LIMIT,
        (None, false) => usize::MAX,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut written = 0usize;
    let mut failed: Option<std::io::Error> = None;
    let walk = chain.for_each_event(limit, |entry| {
        let result = if json {
            let separator = if written == 0 { "[" } else { "," };
            write!(out, "{separator}{}", entry.to_json())
        } else {
            writeln!(out, "{}", line(&entry))
        };
        written += 1;
        match result {
            Ok(()) => true,
            Err(error) => {
                failed = Some(error);
                false
            }
        }
    });
    let walked = walk.await;
    let closing = match (&failed, json) {
        (Some(_), _) => Ok(()),
        (None, true) if written == 0 => writeln!(out, "[]"),
        (None, true) => writeln!(out, "]"),
        (None, false) => Ok(()),
    };
    let flushed = closing.and_then(|()| out.flush());
    match failed.or(flushed.err()) {
        Some(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            return Ok(ExitCode::SUCCESS);
        }
        Some(error) => return Err(error.into()),
        None => {}
    }
    walked?;
    Ok(ExitCode::SUCCESS)
}

/// One actor with a chain, for `actors`.
#[derive(serde::Serialize)]
struct ActorSummary {
    actor: String,
    /// Events ever recorded.
    events: u64,
    /// Events still kept (after trims).
    kept: u64,
    /// When the newest event was recorded, in milliseconds since the epoch.
    last_at: Option<u64>,
}

/// Lists every actor with an event chain in the root: its id (what
/// `chain` and `verify-chain` take), its event count, how many are kept
/// after trims, and when it last recorded a call.
pub async fn actors(root: &StoreRoot, json: bool) -> anyhow::Result<ExitCode> {
    let mut summaries = Vec::new();
    for actor in root.chain_actors().await? {
        let chain = root.event_chain(&actor)?;
        let Some((_, events)) = chain.head().await? else {
            continue;
        };
        let trimmed = chain.checkpoint().await?.map_or(0, |point| point.before);
        let newest = chain.events(1).await?;
        summaries.push(ActorSummary {
            actor,
            events,
            kept: events.saturating_sub(trimmed),
            last_at: newest.first().map(|entry| entry.event.at),
        });
    }
    if json {
        print_json(&summaries)?;
        return Ok(ExitCode::SUCCESS);
    }
    if summaries.is_empty() {
        outln!("no actor has recorded a call in this root");
    }
    for summary in &summaries {
        let last = summary.last_at.map_or_else(
            || "never".to_owned(),
            |at| {
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(at))
                    .to_string()
            },
        );
        outln!(
            "{}  {} events ({} kept)  last {last}",
            summary.actor,
            summary.events,
            summary.kept
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What to say about an actor with no events in this root.
fn no_chain(actor: &str) -> String {
    format!(
        "actor {actor} has no event chain in this root (`theater-store chain ACTOR` needs the id \
         `run` printed; nothing was recorded under this one)"
    )
}

/// Trims `actor`'s chain (see [`theater_store::EventChain::trim`]).
pub async fn trim(
    root: &StoreRoot,
    actor: &str,
    before: TrimBefore,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let chain = root.event_chain(actor)?;
    if chain.head().await?.is_none() {
        return Err(Missing(no_chain(actor)).into());
    }
    let report = chain.trim(before).await?;
    if json {
        print_json(&report)?;
    } else if report.events_trimmed == 0 {
        outln!(
            "actor {actor}: nothing trimmed; the chain holds events #{} to #{} and keeps at \
             least its newest segment",
            report.starts_at,
            report.recorded_length.saturating_sub(1)
        );
    } else {
        outln!(
            "actor {actor}: trimmed {} events; the chain now starts at event #{} (checkpoint {}); \
             run `theater-store gc _chains` to free their space",
            report.events_trimmed,
            report.starts_at,
            report.checkpoint.as_deref().unwrap_or("none")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One event on one line: position, time, call, outcome, then what it named.
fn line(entry: &ChainEntry) -> String {
    let recorded = &entry.event;
    let event = &recorded.event;
    let at = UNIX_EPOCH + Duration::from_millis(recorded.at);
    let outcome = match &event.outcome {
        Outcome::Ok => "ok".to_owned(),
        Outcome::NotApplied => "not-applied".to_owned(),
        Outcome::Error { kind, message } => format!("{kind}: {}", printable(message)),
    };
    let mut line = format!(
        "#{:<6} {} {:<24} {outcome}",
        recorded.seq,
        humantime::format_rfc3339_millis(at),
        event.event_type
    );
    if let Some(store) = &event.store {
        line.push_str(&format!(" store={store}"));
    }
    if let Some(label) = &event.label {
        line.push_str(&format!(" label={:?}", printable(label)));
    }
    for reference in &event.refs {
        line.push_str(&format!(" ref={reference}"));
    }
    if let Some(size) = event.size {
        line.push_str(&format!(" size={size}"));
    }
    line
}

/// Walks `actor`'s chain back from its head; exits 1 at a broken link.
pub async fn verify(root: &StoreRoot, actor: &str, json: bool) -> anyhow::Result<ExitCode> {
    let chain = root.event_chain(actor)?;
    if chain.head().await?.is_none() {
        return Err(Missing(no_chain(actor)).into());
    }
    let report = chain.verify().await?;
    if json {
        print_json(&report)?;
    } else {
        match &report.broken {
            None => outln!(
                "actor {actor}: chain intact ({} events, head {}){}",
                report.events_checked,
                report.head.as_deref().unwrap_or("none"),
                report
                    .trimmed
                    .as_ref()
                    .map(|checkpoint| format!(
                        "; events before #{} trimmed, ending at {}",
                        checkpoint.before, checkpoint.ended_at
                    ))
                    .unwrap_or_default()
            ),
            Some(broken) => {
                outln!(
                    "actor {actor}: chain BROKEN at event #{}{}: {}",
                    broken.seq,
                    broken
                        .reference
                        .as_deref()
                        .map(|reference| format!(" ({reference})"))
                        .unwrap_or_default(),
                    broken.problem
                );
                outln!(
                    "  {} of {} recorded events checked before it",
                    report.events_checked.saturating_sub(1),
                    report.recorded_length
                );
            }
        }
    }
    Ok(if report.is_intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
