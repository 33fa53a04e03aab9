//! Event chains: appends link in order, recorded writes carry their event,
//! many writers never fork a chain, tampering is named, gc keeps events.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    alter_event, move_chain_head, restore_events, root_string_for, sealed_segment,
    set_chain_length, set_sealed_segment, temp_root,
};
use theater_store::{
    ChainEvent, Checkpoint, ContentRef, Event, EventChain, GcOptions, Options, Outcome, Record,
    StoreError, StoreRoot, TrimBefore,
};

fn event(kind: &str, store: &str) -> Event {
    Event {
        store: Some(store.to_owned()),
        ..Event::new(kind)
    }
}

async fn types(chain: &EventChain) -> Vec<String> {
    let mut events = chain.events(usize::MAX).await.unwrap();
    events.reverse();
    events
        .into_iter()
        .map(|entry| entry.event.event.event_type)
        .collect()
}

#[tokio::test]
async fn appends_link_each_event_to_the_one_before() {
    let (_dir, root) = temp_root();
    let chain = root.event_chain("actor-1").unwrap();
    assert_eq!(chain.head().await.unwrap(), None);
    for kind in ["new", "store", "get"] {
        chain.append(event(kind, "s")).await.unwrap();
    }
    let events = chain.events(usize::MAX).await.unwrap();
    assert_eq!(events.len(), 3);
    let seqs: Vec<u64> = events.iter().map(|e| e.event.seq).collect();
    assert_eq!(seqs, [2, 1, 0]);
    for pair in events.windows(2) {
        assert_eq!(
            pair[0].event.parent.as_deref(),
            Some(pair[1].content_ref.hash())
        );
        assert_eq!(pair[0].parent_link_id(), Some(pair[1].link_id()));
        assert!(pair[0].event.at >= pair[1].event.at);
    }
    assert_eq!(events[2].event.parent, None);
    // Each event is content: its ref is the hash of its JSON bytes.
    for entry in &events {
        assert_eq!(ContentRef::for_content(&entry.bytes), entry.content_ref);
        let json: serde_json::Value = serde_json::from_slice(&entry.bytes).unwrap();
        assert_eq!(json["store"], "s");
    }
    assert_eq!(
        chain.head().await.unwrap(),
        Some((events[0].content_ref.clone(), 3))
    );
    assert_eq!(chain.events(2).await.unwrap().len(), 2);
    let report = chain.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!((report.events_checked, report.recorded_length), (3, 3));
    assert_eq!(root.chain_actors().await.unwrap(), ["actor-1"]);
}

#[tokio::test]
async fn a_recorded_write_carries_its_event_with_the_ref_it_stored() {
    let (_dir, root) = temp_root();
    let chain = root.event_chain("writer").unwrap();
    let store = root.store("data").unwrap();

    let record = Record::new(
        &chain,
        Event {
            label: Some("doc".into()),
            ..event("store-at-label", "data")
        },
    );
    let stored = store
        .with_record(&record)
        .store_at_label("doc", b"hello".to_vec())
        .await
        .unwrap();
    // Already recorded with the write: finishing adds nothing.
    record.finish(Outcome::Ok).await.unwrap();
    let events = chain.events(usize::MAX).await.unwrap();
    assert_eq!(events.len(), 1);
    let recorded = &events[0].event.event;
    assert_eq!(recorded.refs, [stored.hash().to_owned()]);
    assert_eq!(recorded.size, Some(5));
    assert_eq!(recorded.label.as_deref(), Some("doc"));
    assert_eq!(recorded.outcome, Outcome::Ok);

    // A write refused inside its transaction records nothing with it; the
    // caller records the failure on its own.
    let missing = ContentRef::for_content(b"never stored");
    let record = Record::new(&chain, event("label", "data"));
    let refused = store.with_record(&record).label("x", &missing).await;
    assert!(matches!(refused, Err(StoreError::NotFound { .. })));
    assert_eq!(chain.events(usize::MAX).await.unwrap().len(), 1);
    let failure = Outcome::Error {
        kind: "not-found".into(),
        message: refused.unwrap_err().to_string(),
    };
    record.finish(failure.clone()).await.unwrap();
    let events = chain.events(usize::MAX).await.unwrap();
    assert_eq!(events[0].event.event.outcome, failure);
    assert_eq!(store.get_by_label("x").await.unwrap(), None);

    // A compare-and-swap whose expectation fails is recorded as not applied.
    let record = Record::new(&chain, event("compare-and-swap", "data"));
    let swapped = store
        .with_record(&record)
        .compare_and_swap_label("doc", None, Some(&stored))
        .await
        .unwrap();
    assert!(!swapped);
    record.finish(Outcome::Ok).await.unwrap();
    let events = chain.events(usize::MAX).await.unwrap();
    assert_eq!(events[0].event.event.outcome, Outcome::NotApplied);
    assert_eq!(
        types(&chain).await,
        ["store-at-label", "label", "compare-and-swap"]
    );
}

#[tokio::test]
async fn many_writers_in_many_roots_never_fork_a_chain() {
    let (dir, root) = temp_root();
    // Separate root handles on one root share nothing in memory, as
    // separate processes (or hosts) would.
    let roots: Vec<StoreRoot> = (0..4)
        .map(|i| {
            let location = root_string_for(&root, dir.path(), &format!("writer-{i}"));
            StoreRoot::at(&location, Options::default()).unwrap()
        })
        .collect();
    let mut tasks = Vec::new();
    for (writer, root) in roots.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let chain = root.event_chain("shared").unwrap();
            let store = root.store("data").unwrap();
            for i in 0..50 {
                let record = Record::new(&chain, event("store", "data"));
                let content = format!("writer {writer} item {i}");
                store.with_record(&record).store(content).await.unwrap();
                record.finish(Outcome::Ok).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let chain = root.event_chain("shared").unwrap();
    let report = chain.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.events_checked, 200);
    assert_eq!(report.recorded_length, 200);
}

#[tokio::test]
async fn an_altered_event_is_named_by_verify_whether_sealed_or_open() {
    if common::kept_by_this_process() {
        return; // Nothing to do in memory: the chain's rows or segments are edited by hand below.
    }
    let (_dir, root) = temp_root();
    let chain = root.event_chain("victim").unwrap();
    for i in 0..12 {
        chain
            .append(event("store", &format!("s{i}")))
            .await
            .unwrap();
    }
    let events = chain.events(usize::MAX).await.unwrap();
    // The oldest events are sealed into segments, content of the chain
    // store; the newest are still in the head's open segment.
    let sealed = &events[10]; // seq 1
    assert!(sealed.stored_in.is_some());
    assert!(events[0].stored_in.is_none());
    let segment = sealed.stored_in.clone().unwrap();
    assert!(root.chain_store().exists(&segment).await.unwrap());

    for (target, checked) in [(&events[0], 0), (sealed, 10)] {
        let mut forged = target.bytes.clone();
        let at = forged.len() / 2;
        forged[at] ^= 1;
        let original = alter_event(&root, "victim", target, &forged).await;

        let report = chain.verify().await.unwrap();
        let broken = report.broken.expect("the altered event is found");
        assert_eq!(broken.seq, target.event.seq);
        assert_eq!(broken.reference.as_deref(), Some(target.content_ref.hash()));
        assert!(broken.problem.contains("altered"), "{}", broken.problem);
        assert_eq!(report.events_checked, checked);
        // Reading the chain stops at the altered event too.
        let refused = chain.events(usize::MAX).await.unwrap_err();
        assert!(
            refused.to_string().contains(target.content_ref.hash()),
            "{refused}"
        );

        restore_events(&root, "victim", target, &original);
        assert!(chain.verify().await.unwrap().is_intact());
    }
}

#[tokio::test]
async fn moving_the_head_back_is_detected_even_after_more_appends() {
    if common::kept_by_this_process() {
        return; // Nothing to do in memory: the chain's rows or segments are edited by hand below.
    }
    let (_dir, root) = temp_root();
    let chain = root.event_chain("victim").unwrap();
    for _ in 0..4 {
        chain.append(event("get", "s")).await.unwrap();
    }
    let events = chain.events(usize::MAX).await.unwrap();
    move_chain_head(&root, "victim", &events[2].content_ref);

    let report = chain.verify().await.unwrap();
    let broken = report.broken.expect("the moved head is found");
    assert_eq!(broken.seq, 3);
    assert_eq!(
        broken.reference.as_deref(),
        Some(events[2].content_ref.hash())
    );
    assert!(
        broken.problem.contains("head label was moved"),
        "{}",
        broken.problem
    );

    // Events appended on top link to where the head was moved and keep
    // counting from the recorded length, so the cut stays visible below
    // them.
    chain.append(event("get", "s")).await.unwrap();
    let report = chain.verify().await.unwrap();
    let broken = report.broken.expect("the cut is still found");
    assert_eq!(broken.seq, 3);
    assert_eq!(
        broken.reference.as_deref(),
        Some(events[2].content_ref.hash())
    );
    assert_eq!(report.events_checked, 1);

    // A head label set by hand carries no length: the chain refuses
    // appends rather than guess where it stands.
    let chains = root.chain_store();
    chains.remove_label("head/victim").await.unwrap();
    let stray = chains.store(b"not an event".to_vec()).await.unwrap();
    chains.label("head/victim", &stray).await.unwrap();
    let refused = chain.append(event("get", "s")).await.unwrap_err();
    assert!(
        matches!(&refused, StoreError::ChainDamaged { actor, .. } if actor == "victim"),
        "{refused}"
    );
    assert!(!chain.verify().await.unwrap().is_intact());
}

#[tokio::test]
async fn gc_keeps_every_event_a_head_reaches_and_the_chain_store_is_hidden() {
    let (_dir, root) = temp_root();
    let chain = root.event_chain("kept").unwrap();
    for _ in 0..20 {
        chain.append(event("exists", "s")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let options = GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    };
    let report = root
        .chain_store()
        .collect_garbage(options, Arc::new(()))
        .await
        .unwrap();
    // Nothing goes: every segment is reachable from the head.
    let segments = root.chain_store().stats().await.unwrap().objects;
    assert!(segments >= 2, "20 events fill more than one segment");
    assert_eq!(report.objects_removed, 0);
    assert_eq!(report.kept_labelled, segments);
    let verified = chain.verify().await.unwrap();
    assert!(verified.is_intact(), "{verified:?}");
    assert_eq!(verified.events_checked, 20);
    let checked = root.chain_store().verify(Arc::new(())).await.unwrap();
    assert!(checked.is_clean(), "{checked:?}");

    assert!(root.stores().await.unwrap().is_empty());
    assert!(matches!(
        root.store("_chains"),
        Err(StoreError::InvalidStoreId { .. })
    ));
    assert!(matches!(
        root.event_chain("../x"),
        Err(StoreError::InvalidActorId { .. })
    ));
}

#[tokio::test]
async fn a_chain_recorded_one_object_per_event_is_read_and_continued() {
    if common::kept_by_this_process() {
        return; // Nothing to do in memory: the chain's rows or segments are edited by hand below.
    }
    let (_dir, root) = temp_root();
    // What older builds wrote: each event an object of its own, the head
    // label at the newest with the length beside it.
    let chains = root.chain_store();
    let mut parent = None;
    let mut legacy = Vec::new();
    for seq in 0..3 {
        let linked = ChainEvent {
            seq,
            parent: parent.clone(),
            at: 1_700_000_000_000 + seq,
            event: event("get", "s"),
        };
        let stored = chains
            .store(serde_json::to_vec(&linked).unwrap())
            .await
            .unwrap();
        parent = Some(stored.hash().to_owned());
        legacy.push(stored);
    }
    chains.label("head/elder", &legacy[2]).await.unwrap();
    set_chain_length(&root, "elder", 3);

    let chain = root.event_chain("elder").unwrap();
    for _ in 0..8 {
        chain.append(event("store", "s")).await.unwrap();
    }
    let report = chain.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!((report.events_checked, report.recorded_length), (11, 11));
    let events = chain.events(usize::MAX).await.unwrap();
    assert_eq!(events[8].event.parent.as_deref(), Some(legacy[1].hash()));
    for (entry, object) in events[8..].iter().zip(legacy.iter().rev()) {
        assert_eq!(&entry.content_ref, object);
        assert_eq!(entry.stored_in.as_ref(), Some(object));
    }
    assert_eq!(events[7].event.parent.as_deref(), Some(legacy[2].hash()));

    // Garbage collection keeps the old objects as well as the segments.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let options = GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    };
    let collected = chains.collect_garbage(options, Arc::new(())).await.unwrap();
    assert_eq!(collected.objects_removed, 0);
    assert!(chain.verify().await.unwrap().is_intact());
}

#[tokio::test]
async fn gc_collects_nothing_from_a_chain_it_cannot_follow_to_its_start() {
    if common::kept_by_this_process() {
        return; // Nothing to do in memory: the chain's rows or segments are edited by hand below.
    }
    let (_dir, root) = temp_root();
    let chain = root.event_chain("torn").unwrap();
    for _ in 0..30 {
        chain.append(event("get", "s")).await.unwrap();
    }
    let chains = root.chain_store();
    let segments = chains.stats().await.unwrap().objects;
    assert!(segments >= 2);
    // The head's link to the sealed segments damaged: where they are is no
    // longer known, so none of them may go.
    let sealed = sealed_segment(&root, "torn");
    let mut damaged = sealed.clone();
    damaged[0] ^= 1;
    set_sealed_segment(&root, "torn", &damaged);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let options = GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    };
    let refused = chains
        .collect_garbage(options, Arc::new(()))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::ChainDamaged { actor, .. } if actor == "torn"),
        "{refused}"
    );
    assert_eq!(chains.stats().await.unwrap().objects, segments);
    assert!(!chain.verify().await.unwrap().is_intact());

    // Put right, the chain is whole again and gc keeps all of it.
    set_sealed_segment(&root, "torn", &sealed);
    let report = chains.collect_garbage(options, Arc::new(())).await.unwrap();
    assert_eq!(report.objects_removed, 0);
    assert!(chain.verify().await.unwrap().is_intact());
}

// ---- Chains in backups and syncs ----------------------------------------

fn no_progress() -> Arc<dyn theater_store::Progress> {
    Arc::new(())
}

async fn chain_package(root: &StoreRoot, prefix: Option<&str>) -> Vec<u8> {
    let (summary, package) = root
        .chain_store()
        .export_package(prefix, Vec::new(), no_progress())
        .await
        .unwrap();
    assert!(summary.chains > 0, "{summary:?}");
    package
}

async fn import_chains(
    root: &StoreRoot,
    package: Vec<u8>,
) -> theater_store::Result<theater_store::PackageSummary> {
    root.chain_store()
        .import_package(std::io::Cursor::new(package), no_progress())
        .await
}

#[tokio::test]
async fn a_chain_exported_and_imported_verifies_and_moves_forward_but_never_sideways() {
    let (_dir, a) = temp_root();
    let chain = a.event_chain("worker").unwrap();
    for i in 0..12 {
        chain
            .append(event("store", &format!("s{i}")))
            .await
            .unwrap();
    }
    a.event_chain("other")
        .unwrap()
        .append(event("get", "x"))
        .await
        .unwrap();
    // One actor's chain, by its head label.
    let package = chain_package(&a, Some("head/worker")).await;

    let (_dir2, b) = temp_root();
    let summary = import_chains(&b, package).await.unwrap();
    assert_eq!(
        (summary.chains, summary.conflicts.len()),
        (1, 0),
        "{summary:?}"
    );
    let copy = b.event_chain("worker").unwrap();
    let report = copy.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.events_checked, 12);
    assert_eq!(copy.head().await.unwrap(), chain.head().await.unwrap());
    assert_eq!(b.event_chain("other").unwrap().head().await.unwrap(), None);

    // The source goes on: importing again moves the copy forward.
    for _ in 0..3 {
        chain.append(event("get", "s")).await.unwrap();
    }
    let summary = import_chains(&b, chain_package(&a, None).await)
        .await
        .unwrap();
    assert!(summary.conflicts.is_empty(), "{summary:?}");
    assert_eq!(copy.head().await.unwrap(), chain.head().await.unwrap());
    assert_eq!(copy.verify().await.unwrap().events_checked, 15);

    // A copy that recorded events of its own is a conflict, and kept.
    copy.append(event("store", "elsewhere")).await.unwrap();
    chain.append(event("get", "s")).await.unwrap();
    let own = copy.head().await.unwrap();
    let summary = import_chains(&b, chain_package(&a, None).await)
        .await
        .unwrap();
    assert_eq!(summary.conflicts.len(), 1, "{summary:?}");
    assert_eq!(summary.conflicts[0].label, "head/worker");
    assert_eq!(copy.head().await.unwrap(), own);
    assert!(copy.verify().await.unwrap().is_intact());
}

#[tokio::test]
async fn a_chain_that_does_not_verify_is_refused_on_import() {
    if common::kept_by_this_process() {
        return; // Nothing to do in memory: the chain's rows or segments are edited by hand below.
    }
    let (_dir, a) = temp_root();
    let chain = a.event_chain("victim").unwrap();
    for _ in 0..4 {
        chain.append(event("get", "s")).await.unwrap();
    }
    let events = chain.events(usize::MAX).await.unwrap();
    move_chain_head(&a, "victim", &events[2].content_ref);
    let package = chain_package(&a, None).await;

    let (_dir2, b) = temp_root();
    let refused = import_chains(&b, package).await.unwrap_err();
    assert!(
        matches!(&refused, StoreError::InvalidPackage { reason, .. }
            if reason.contains("actor victim does not verify")),
        "{refused}"
    );
    assert_eq!(b.event_chain("victim").unwrap().head().await.unwrap(), None);
}

#[tokio::test]
async fn chains_sync_between_roots_and_verify_there() {
    let (dir, a) = temp_root();
    let b = StoreRoot::new(dir.path().join("b"));
    let chain = a.event_chain("synced").unwrap();
    // Enough events that some are sealed into segments (objects).
    for i in 0..40 {
        chain
            .append(event("store", &format!("s{i}")))
            .await
            .unwrap();
    }
    let sync = |from: StoreRoot, to: StoreRoot| async move {
        from.sync_store_to(
            &to,
            "_chains",
            &theater_store::SyncOptions::default(),
            no_progress(),
        )
        .await
        .unwrap()
    };
    let report = sync(a.clone(), b.clone()).await;
    assert_eq!(report.labels_moved, 1, "{report:?}");
    assert!(report.objects_copied > 0, "{report:?}");
    let copy = b.event_chain("synced").unwrap();
    assert!(copy.verify().await.unwrap().is_intact());
    assert_eq!(copy.head().await.unwrap(), chain.head().await.unwrap());
    let again = sync(a.clone(), b.clone()).await;
    assert_eq!(
        (again.labels_moved, again.labels_in_sync),
        (0, 1),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_trimmed_chain_verifies_frees_its_segments_and_travels_with_its_checkpoint() {
    let (dir, a) = temp_root();
    let chain = a.event_chain("long").unwrap();
    for i in 0..60 {
        chain
            .append(event("store", &format!("s{i}")))
            .await
            .unwrap();
    }
    let before_trim = chain.events(usize::MAX).await.unwrap();
    let segments_before = a.chain_store().stats().await.unwrap().objects;

    // Whole segments go: the chain keeps every event from #30, and at
    // most the few older ones that share #30's segment.
    let trimmed = chain.trim(TrimBefore::Seq(30)).await.unwrap();
    assert!(
        (20..=30).contains(&trimmed.starts_at),
        "{trimmed:?} keeps from #30 with whole segments"
    );
    assert_eq!(trimmed.events_trimmed, trimmed.starts_at);
    assert_eq!(trimmed.recorded_length, 60);
    let start = trimmed.starts_at;
    let report = chain.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.events_checked, 60 - start);
    let checkpoint = report.trimmed.expect("the walk ended at the checkpoint");
    assert_eq!(checkpoint.before, start);
    // The checkpoint names the hash the dropped prefix ended at.
    let last_dropped = &before_trim[(60 - start) as usize];
    assert_eq!(last_dropped.event.seq, start - 1);
    assert_eq!(checkpoint.ended_at, last_dropped.content_ref.hash());
    let kept = chain.events(usize::MAX).await.unwrap();
    assert_eq!(kept.last().unwrap().event.seq, start);

    // A trim never moves the start back.
    let again = chain.trim(TrimBefore::Seq(5)).await.unwrap();
    assert_eq!((again.events_trimmed, again.starts_at), (0, start));

    // gc frees the dropped segments and keeps what the chain reaches.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let collected = a
        .chain_store()
        .collect_garbage(
            GcOptions {
                grace: Duration::ZERO,
                dry_run: false,
            },
            no_progress(),
        )
        .await
        .unwrap();
    assert!(collected.objects_removed > 0, "{collected:?}");
    let segments_after = a.chain_store().stats().await.unwrap().objects;
    assert!(
        segments_after < segments_before,
        "{segments_after} < {segments_before}"
    );
    assert!(chain.verify().await.unwrap().is_intact());
    assert!(
        a.chain_store()
            .verify(no_progress())
            .await
            .unwrap()
            .is_clean()
    );

    // Appends go on; the chain keeps counting from its recorded length.
    chain.append(event("get", "s")).await.unwrap();
    let report = chain.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.events_checked, 61 - start);

    // The chain travels with its checkpoint, by its head label alone,
    // and a later trim at the source moves the copy's start forward.
    let b = StoreRoot::new(dir.path().join("b"));
    let summary = import_chains(&b, chain_package(&a, Some("head/long")).await)
        .await
        .unwrap();
    assert!(summary.conflicts.is_empty(), "{summary:?}");
    let copy = b.event_chain("long").unwrap();
    let copied = copy.verify().await.unwrap();
    assert!(copied.is_intact(), "{copied:?}");
    assert_eq!(copied.trimmed.map(|c| c.before), Some(start));
    let newer = chain.trim(TrimBefore::Time(u64::MAX)).await.unwrap();
    assert!(newer.starts_at > start && newer.starts_at < 61, "{newer:?}");
    let sync = a
        .sync_store_to(
            &b,
            "_chains",
            &theater_store::SyncOptions::default(),
            no_progress(),
        )
        .await
        .unwrap();
    assert!(sync.conflicts.is_empty(), "{sync:?}");
    let copied = copy.verify().await.unwrap();
    assert!(copied.is_intact(), "{copied:?}");
    assert_eq!(copied.trimmed.map(|c| c.before), Some(newer.starts_at));
    assert_eq!(copied.events_checked, 61 - newer.starts_at);
}

#[tokio::test]
async fn a_forged_checkpoint_or_a_damaged_chain_is_caught_and_never_trimmed() {
    if common::kept_by_this_process() {
        return; // Nothing to do in memory: the chain's rows or segments are edited by hand below.
    }
    let (_dir, root) = temp_root();
    let chain = root.event_chain("guarded").unwrap();
    for i in 0..30 {
        chain
            .append(event("store", &format!("s{i}")))
            .await
            .unwrap();
    }
    let trimmed = chain.trim(TrimBefore::Seq(15)).await.unwrap();
    let genuine = chain.checkpoint().await.unwrap().unwrap();

    // A checkpoint claiming the prefix ended elsewhere is named by verify.
    let forged = Checkpoint {
        ended_at: "0".repeat(64),
        ..genuine.clone()
    };
    let chains = root.chain_store();
    let forged_ref = chains
        .store(serde_json::to_vec(&forged).unwrap())
        .await
        .unwrap();
    chains
        .label("checkpoint/guarded", &forged_ref)
        .await
        .unwrap();
    let report = chain.verify().await.unwrap();
    let broken = report.broken.expect("the forged checkpoint is caught");
    assert_eq!(broken.seq, trimmed.starts_at);
    assert!(
        broken.problem.contains("trimmed events ended at"),
        "{broken}"
    );

    // A damaged event in the kept part refuses the trim, changing nothing.
    let genuine_ref = chains
        .store(serde_json::to_vec(&genuine).unwrap())
        .await
        .unwrap();
    chains
        .label("checkpoint/guarded", &genuine_ref)
        .await
        .unwrap();
    let events = chain.events(usize::MAX).await.unwrap();
    let victim = &events[3];
    let forged_event = String::from_utf8(victim.bytes.clone())
        .unwrap()
        .replace("\"s26\"", "\"sX6\"");
    alter_event(&root, "guarded", victim, forged_event.as_bytes()).await;
    let refused = chain.trim(TrimBefore::Seq(29)).await.unwrap_err();
    assert!(
        matches!(&refused, StoreError::ChainDamaged { reason, .. } if reason.contains("nothing was trimmed")),
        "{refused}"
    );
    assert_eq!(chain.checkpoint().await.unwrap(), Some(genuine));
}
