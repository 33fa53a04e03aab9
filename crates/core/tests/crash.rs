//! Crash consistency: a child process runs a long random mix of writes and
//! is killed with SIGKILL at random moments, cycle after cycle. After every
//! kill the store must verify clean, every acknowledged write must be there,
//! and every label must hold the value of its last acknowledged write or of
//! the write in flight when the child died. Every operation is also
//! recorded in an event chain: after every kill the chain must be intact
//! and hold exactly the acknowledged operations, in order, plus at most the
//! one in flight.
//!
//! `CRASH_CYCLES` sets the number of cycles (default 200; `just crash` runs 1000).
//! `THEATER_STORE_TEST_ENGINE=log` runs it on a log root, which the parent
//! opens only between children (one process holds a log root at a time).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use theater_store::{
    ContentRef, ContentStore, Durability, Event, EventChain, Options, Outcome, Record, StoreRoot,
};

const LABELS: usize = 12;

/// A small deterministic generator, so the child needs no extra crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The bytes of the `n`th piece of content: sizes from 0 to about 40 KiB,
/// on both sides of the inline threshold (16 KiB), which [`options`] makes
/// a log root's file threshold too: rows (or records) and files alike.
fn content(n: u64) -> Vec<u8> {
    let size = (n * 7919) % 40_000;
    let mut bytes = format!("content {n};").into_bytes();
    bytes.resize(bytes.len() + size as usize, (n % 251) as u8);
    bytes
}

/// The root's options: content over 16 KiB in files on either engine.
fn options(durability: Durability) -> Options {
    Options {
        durability,
        log_file_threshold: Options::default().inline_threshold,
        ..Options::default()
    }
}

fn label(i: u64) -> String {
    format!("crash:{i}")
}

/// Appends one line with a single write, so a kill leaves at most one
/// partial line at the end of the log (which replay ignores).
fn record(log: &mut std::fs::File, line: &str) {
    log.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// The child: random operations forever, each announced in the log before
/// it starts ("begin") and confirmed after it returns ("ack").
#[tokio::test]
#[ignore = "run as a child process by writes_survive_sigkill_at_random_moments"]
async fn crash_child() {
    let root = std::env::var("CRASH_ROOT").expect("started by the parent test");
    let durability = match std::env::var("CRASH_SYNCED").as_deref() {
        Ok("1") => Durability::Synced,
        _ => Durability::Buffered,
    };
    let seed: u64 = std::env::var("CRASH_SEED").unwrap().parse().unwrap();
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(std::env::var("CRASH_LOG").unwrap())
        .unwrap();
    let root = StoreRoot::at(&root, options(durability)).unwrap();
    let store = root.store("crash").unwrap();
    let chain = root.event_chain("crash").unwrap();
    let mut rng = Rng(seed | 1);
    loop {
        let n = seed * 1_000_000 + rng.below(1_000_000);
        let l = rng.below(LABELS as u64);
        let hash = ContentRef::for_content(&content(n)).hash().to_owned();
        // Each line: what is about to happen; then "ack" once it has.
        let line = match rng.below(6) {
            0 | 1 => format!("store {n} {hash}"),
            2 => format!("store-at-label {n} {hash} {l}"),
            3 => format!("remove-label {l}"),
            4 => format!("cas {n} {hash} {l}"),
            _ => format!("label-existing {l}"),
        };
        record(&mut log, &format!("begin {line}"));
        let parts: Vec<&str> = line.split(' ').collect();
        // The operation's event rides in its write's transaction where it
        // has one write, and is appended after it otherwise.
        let chained = Record::new(&chain, op_event(&parts));
        let store = store.with_record(&chained);
        match parts[0] {
            // Odd pieces of content are streamed in, even ones stored whole.
            "store" if n % 2 == 1 => {
                store.store_reader(&content(n)[..]).await.unwrap();
            }
            "store" => {
                store.store(content(n)).await.unwrap();
            }
            "store-at-label" if n % 2 == 1 => {
                let bytes = content(n);
                store
                    .store_reader_at_label(&label(l), &bytes[..])
                    .await
                    .unwrap();
            }
            "store-at-label" => {
                store.store_at_label(&label(l), content(n)).await.unwrap();
            }
            "remove-label" => store.remove_label(&label(l)).await.unwrap(),
            "cas" => {
                let current = store.get_by_label(&label(l)).await.unwrap();
                let plain = root.store("crash").unwrap();
                let new = plain.store(content(n)).await.unwrap();
                if !store
                    .compare_and_swap_label(&label(l), current.as_ref(), Some(&new))
                    .await
                    .unwrap()
                {
                    panic!("no other writer exists, so the swap must succeed");
                }
            }
            _ => {
                // Point the label at content stored earlier, if any.
                if let Some(existing) = store.list_all_content().await.unwrap().first() {
                    record(&mut log, &format!("target {}", existing.hash()));
                    store.label(&label(l), existing).await.unwrap();
                }
            }
        }
        chained.finish(Outcome::Ok).await.unwrap();
        record(&mut log, "ack");
    }
}

/// The event recording one logged operation: its kind, its label and the
/// ref it stores, so that the parent can match events to its log.
fn op_event(parts: &[&str]) -> Event {
    let label = match parts[0] {
        "store" => None,
        "remove-label" | "label-existing" => Some(label(parts[1].parse().unwrap())),
        _ => Some(label(parts[3].parse().unwrap())),
    };
    Event {
        store: Some("crash".into()),
        label,
        // Store-family writes get their ref from the write itself.
        refs: if parts[0] == "cas" {
            vec![parts[2].to_owned()]
        } else {
            Vec::new()
        },
        ..Event::new(parts[0])
    }
}

/// Whether a recorded event is the one `parts` (a logged operation) makes.
fn matches_op(event: &Event, parts: &[String]) -> bool {
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let expected = op_event(&parts);
    let stores = matches!(parts[0], "store" | "store-at-label" | "cas");
    event.event_type == expected.event_type
        && event.label == expected.label
        && event.outcome == Outcome::Ok
        && (!stores || event.refs == [parts[2].to_owned()])
}

/// Checks the chain after a kill: intact, and its events since the last
/// check are this cycle's acknowledged operations, in order, plus perhaps
/// the one in flight. Returns the chain's new length.
async fn check_chain(
    chain: &EventChain,
    checked_length: u64,
    acknowledged: &[Vec<String>],
    in_flight: Option<&Vec<String>>,
) -> u64 {
    let report = chain.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    let length = report.recorded_length;
    let added = usize::try_from(length - checked_length).unwrap();
    let mut events = chain.events(added).await.unwrap();
    events.reverse();
    let allowed = acknowledged.len() + usize::from(in_flight.is_some());
    assert!(
        added == acknowledged.len() || added == allowed,
        "{added} events for {} acknowledged operations (in flight: {in_flight:?})",
        acknowledged.len()
    );
    for (entry, parts) in events.iter().zip(acknowledged.iter().chain(in_flight)) {
        assert!(
            matches_op(&entry.event.event, parts),
            "event #{} is {:?}, the log says {parts:?}",
            entry.event.seq,
            entry.event.event
        );
    }
    length
}

/// What the parent knows must be in the store.
#[derive(Default)]
struct Model {
    objects: BTreeMap<String, u64>,
    labels: BTreeMap<u64, Option<String>>,
}

/// A label and the value an operation gives it (`None`: removed).
type LabelEffect = (u64, Option<String>);

/// The operation in flight at a kill: its logged words and label effect.
type InFlight = (Vec<String>, Option<LabelEffect>);

/// The effect of one logged operation on labels: `(label, new value)`.
fn label_effect(parts: &[&str], target: Option<&str>) -> Option<LabelEffect> {
    match parts[0] {
        "store-at-label" | "cas" => Some((parts[3].parse().unwrap(), Some(parts[2].to_owned()))),
        "remove-label" => Some((parts[1].parse().unwrap(), None)),
        "label-existing" => target.map(|t| (parts[1].parse().unwrap(), Some(t.to_owned()))),
        _ => None,
    }
}

/// Replays one cycle's log into the model; returns the operation that was
/// in flight at the kill, if any, with its label effect.
fn replay(log: &str, model: &mut Model, acknowledged: &mut Vec<Vec<String>>) -> Option<InFlight> {
    let mut pending: Option<Vec<String>> = None;
    let mut target: Option<String> = None;
    // A line cut short by the kill has no newline: drop it.
    let complete = &log[..log.rfind('\n').map_or(0, |end| end + 1)];
    for line in complete.lines() {
        if let Some(op) = line.strip_prefix("begin ") {
            pending = Some(op.split(' ').map(str::to_owned).collect());
            target = None;
        } else if let Some(hash) = line.strip_prefix("target ") {
            target = Some(hash.to_owned());
        } else if line == "ack" {
            let owned = pending.take().expect("ack follows begin");
            let parts: Vec<&str> = owned.iter().map(String::as_str).collect();
            if matches!(parts[0], "store" | "store-at-label" | "cas") {
                model
                    .objects
                    .insert(parts[2].to_owned(), parts[1].parse().unwrap());
            }
            if let Some((l, value)) = label_effect(&parts, target.as_deref()) {
                model.labels.insert(l, value);
            }
            acknowledged.push(owned);
        }
    }
    pending.map(|parts| {
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let effect = label_effect(&refs, target.as_deref());
        (parts, effect)
    })
}

/// Checks the store after a kill: it verifies clean, the objects in
/// `to_read` read back whole, and every label holds an allowed value.
async fn check_after_kill(
    store: &ContentStore,
    model: &mut Model,
    to_read: &BTreeMap<String, u64>,
    in_flight: Option<InFlight>,
) -> u64 {
    let report = store.verify(Arc::new(())).await.unwrap();
    assert!(
        report.quarantined.is_empty()
            && report.missing.is_empty()
            && report.dangling_labels.is_empty(),
        "{report:?}"
    );
    assert!(report.stray_files.is_empty(), "{report:?}");
    let mut checked = report.objects_checked;
    for (hash, n) in to_read {
        // Odd ones are read back as a verified stream (through the outboard
        // of a file object), even ones whole.
        let content_ref = ContentRef::new(hash);
        let read = if n % 2 == 1 {
            read_streamed(store, &content_ref).await
        } else {
            store.get(&content_ref).await
        };
        let bytes = read.unwrap_or_else(|e| panic!("acknowledged {hash} lost: {e}"));
        assert_eq!(bytes, content(*n));
        checked += 1;
    }
    let flying_label = in_flight.as_ref().and_then(|(_, effect)| effect.clone());
    for l in 0..LABELS as u64 {
        let actual = store
            .get_by_label(&label(l))
            .await
            .unwrap()
            .map(|r| r.hash().to_owned());
        // The change log survived with the label: its newest entry for
        // the label names the value the label holds.
        let newest = store.history(&label(l), 1).await.unwrap();
        let logged = newest
            .first()
            .and_then(|change| change.new.as_ref().map(|r| r.hash().to_owned()));
        assert_eq!(
            logged, actual,
            "label {l}: the log's newest entry disagrees"
        );
        let acknowledged = model.labels.get(&l).cloned().flatten();
        match &flying_label {
            Some((fl, value)) if *fl == l && actual == *value => {
                // The in-flight write landed: adopt it.
                model.labels.insert(l, value.clone());
            }
            _ => assert_eq!(
                actual, acknowledged,
                "label {l} holds a value nobody wrote last"
            ),
        }
        checked += 1;
    }
    // And its sequence has no gap.
    let mut since = 0;
    loop {
        let page = store.changes(since, 10_000).await.unwrap();
        for change in &page.changes {
            assert_eq!(change.seq, since + 1, "a gap in the change log");
            since = change.seq;
        }
        if page.changes.is_empty() {
            break;
        }
    }
    // Content of an in-flight store may or may not be there; if it is, it is whole.
    if let Some((parts, _)) = in_flight
        && matches!(parts[0].as_str(), "store" | "store-at-label" | "cas")
    {
        let r = ContentRef::new(&parts[2]);
        if store.exists(&r).await.unwrap() {
            assert_eq!(
                store.get(&r).await.unwrap(),
                content(parts[1].parse().unwrap())
            );
            model
                .objects
                .insert(parts[2].clone(), parts[1].parse().unwrap());
        }
    }
    checked
}

async fn read_streamed(
    store: &ContentStore,
    content_ref: &ContentRef,
) -> Result<Vec<u8>, theater_store::StoreError> {
    use tokio::io::AsyncReadExt;
    let mut reader = store.reader(content_ref).await?;
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .await
        .expect("a verified stream of intact content");
    Ok(bytes)
}

#[tokio::test]
async fn writes_survive_sigkill_at_random_moments() {
    let cycles: u64 = std::env::var("CRASH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let log_engine = std::env::var("THEATER_STORE_TEST_ENGINE").is_ok_and(|engine| engine == "log");
    let root = dir.path().join("root").display().to_string();
    let root = if log_engine {
        format!("log:{root}")
    } else {
        root
    };
    let open = || {
        let root = StoreRoot::at(&root, options(Durability::Buffered)).unwrap();
        (
            root.store("crash").unwrap(),
            root.event_chain("crash").unwrap(),
        )
    };
    // A local root stays open here while the children write to it.
    let held = (!log_engine).then(open);
    let mut chain_length = 0;
    let mut model = Model::default();
    let mut rng = Rng(0x5eed_cafe);
    let (mut operations, mut checks, mut in_flight_kills) = (0u64, 0u64, 0u64);
    for cycle in 1..=cycles {
        let log_path = dir.path().join(format!("cycle-{cycle}.log"));
        std::fs::write(&log_path, "").unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--ignored", "--quiet"])
            .env("CRASH_ROOT", &root)
            .env("CRASH_LOG", &log_path)
            .env("CRASH_SEED", cycle.to_string())
            .env("CRASH_SYNCED", if cycle % 4 == 0 { "1" } else { "0" })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20 + rng.below(120))).await;
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            panic!("cycle {cycle}: the child died by itself ({status}):\n{stderr}");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let (store, chain) = held.clone().unwrap_or_else(open);
        let log = std::fs::read_to_string(&log_path).unwrap();
        operations += log.lines().filter(|line| *line == "ack").count() as u64;
        let before = model.objects.clone();
        let mut acknowledged = Vec::new();
        let in_flight = replay(&log, &mut model, &mut acknowledged);
        let flying = in_flight.as_ref().map(|(parts, _)| parts);
        chain_length = check_chain(&chain, chain_length, &acknowledged, flying).await;
        in_flight_kills += u64::from(in_flight.is_some());
        // Verify re-hashes every object each cycle; reading back every
        // acknowledged object too is done every 25 cycles and at the end,
        // and the objects acknowledged in this cycle every time.
        let to_read = if cycle % 25 == 0 || cycle == cycles {
            model.objects.clone()
        } else {
            model
                .objects
                .iter()
                .filter(|(hash, _)| !before.contains_key(*hash))
                .map(|(h, n)| (h.clone(), *n))
                .collect()
        };
        checks += check_after_kill(&store, &mut model, &to_read, in_flight).await;
    }
    assert!(
        operations > cycles,
        "the children barely ran ({operations} operations)"
    );
    assert!(chain_length >= operations, "the chain lost operations");
    println!(
        "crash suite: {cycles} cycles, {operations} acknowledged operations, {in_flight_kills} kills mid-operation, {checks} checks, {chain_length} chain events"
    );
}
