//! `wasi:keyvalue` served from the store, driven by a plain WASI command
//! built from the keyvalue WIT alone (guest-examples/kv-counter).

use std::collections::HashMap;

use theater_store::{ContentRef, Outcome};
use theater_store_examples::KV_COUNTER;
use theater_store_host::{
    Access, ChainRecording, CommandOutput, CommandRun, Grants, Limits, RunOptions,
};

use crate::Harness;

fn granted(bucket: &str, access: Access) -> RunOptions {
    RunOptions {
        grants: Grants::none().store(bucket, access),
        ..RunOptions::default()
    }
}

async fn command(h: &Harness, options: RunOptions, args: &[&str]) -> CommandRun {
    let argv: Vec<String> = std::iter::once("kv_counter")
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect();
    h.host
        .run_command(&h.load(KV_COUNTER), options, &argv, CommandOutput::Capture)
        .await
}

/// Runs the command, which must exit 0, and parses its `key=value` lines.
async fn succeed(h: &Harness, options: RunOptions, args: &[&str]) -> HashMap<String, String> {
    let run = command(h, options, args).await;
    let code = run.outcome.unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert_eq!(code, 0, "{args:?}: stderr {}", run.stderr);
    String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// Runs the command, which must fail with exit code 1; returns its stderr.
async fn fail(h: &Harness, options: RunOptions, args: &[&str]) -> String {
    let run = command(h, options, args).await;
    assert_eq!(
        run.outcome.unwrap(),
        1,
        "{args:?} did not fail: {:?}",
        run.stdout
    );
    run.stderr
}

/// Starts the command on the runtime's threads, beside whatever else runs.
fn spawn(h: &Harness, options: RunOptions, args: &[&str]) -> tokio::task::JoinHandle<CommandRun> {
    let (host, component) = (h.host.clone(), h.load(KV_COUNTER));
    let argv: Vec<String> = std::iter::once("kv_counter")
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect();
    tokio::spawn(async move {
        host.run_command(&component, options, &argv, CommandOutput::Capture)
            .await
    })
}

/// Waits for spawned commands, each of which must exit 0.
async fn all_succeed(runs: Vec<tokio::task::JoinHandle<CommandRun>>) -> Vec<String> {
    let mut stdouts = Vec::new();
    for run in runs {
        let run = run.await.unwrap();
        assert_eq!(run.outcome.unwrap(), 0, "stderr: {}", run.stderr);
        stdouts.push(String::from_utf8(run.stdout).unwrap());
    }
    stdouts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_commands_incrementing_one_key_lose_no_update() {
    let h = Harness::start();
    let runs = (0..8)
        .map(|_| {
            let options = granted("counters", Access::ReadWrite);
            spawn(&h, options, &["counters", "increment", "hits", "25"])
        })
        .collect();
    let outputs = all_succeed(runs).await;
    let highest = outputs
        .iter()
        .map(|out| {
            out.trim()
                .strip_prefix("value=")
                .unwrap()
                .parse::<i64>()
                .unwrap()
        })
        .max()
        .unwrap();
    assert_eq!(highest, 200);
    // The counter is a label holding decimal text, visible to everyone.
    let store = h.root().store("counters").unwrap();
    let value = store.get_content_by_label("hits").await.unwrap().unwrap();
    assert_eq!(value, b"200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_swap_appends_from_many_writers_all_land() {
    let h = Harness::start();
    let runs = ["a", "b", "c", "d"]
        .into_iter()
        .map(|text| {
            let options = granted("log", Access::ReadWrite);
            spawn(&h, options, &["log", "append", "entries", text, "20"])
        })
        .collect();
    all_succeed(runs).await;
    let store = h.root().store("log").unwrap();
    let value = store
        .get_content_by_label("entries")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value.len(), 80);
    for letter in b"abcd" {
        assert_eq!(value.iter().filter(|b| *b == letter).count(), 20);
    }
}

#[tokio::test]
async fn batches_set_read_and_delete_many_keys_and_pages_list_them() {
    let h = Harness::start();
    let out = succeed(
        &h,
        granted("b", Access::ReadWrite),
        &["b", "batch", "item:", "1500"],
    )
    .await;
    assert_eq!(out["found"], "1500");
    assert_eq!(out["intact"], "true");
    // Half deleted in one call; the rest listed over two pages.
    assert_eq!(out["left"], "750");
    assert_eq!(out["first_left"], "item:0001");
    let store = h.root().store("b").unwrap();
    assert_eq!(store.stats().await.unwrap().labels, 750);
    assert_eq!(
        store
            .get_content_by_label("item:1499")
            .await
            .unwrap()
            .unwrap(),
        b"value 1499"
    );
    assert_eq!(store.get_by_label("item:1498").await.unwrap(), None);
}

#[tokio::test]
async fn keys_are_labels_both_ways() {
    let h = Harness::start();
    let store = h.root().store("shared").unwrap();
    store
        .store_at_label("from-host", b"hello".to_vec())
        .await
        .unwrap();
    let out = succeed(
        &h,
        granted("shared", Access::ReadOnly),
        &["shared", "get", "from-host"],
    )
    .await;
    assert_eq!(out["value"], "hello");
    succeed(
        &h,
        granted("shared", Access::ReadWrite),
        &["shared", "set", "from-guest", "hi there"],
    )
    .await;
    assert_eq!(
        store
            .get_content_by_label("from-guest")
            .await
            .unwrap()
            .unwrap(),
        b"hi there"
    );
    // The same value twice is stored once.
    succeed(
        &h,
        granted("shared", Access::ReadWrite),
        &["shared", "set", "copy", "hi there"],
    )
    .await;
    assert_eq!(store.stats().await.unwrap().objects, 2);
}

#[tokio::test]
async fn refusals_are_keyvalue_errors_and_change_nothing() {
    let h = Harness::start();
    let store = h.root().store("guarded").unwrap();
    store
        .store_at_label("n", b"not a number".to_vec())
        .await
        .unwrap();

    let denied = fail(&h, RunOptions::default(), &["guarded", "get", "n"]).await;
    assert!(denied.contains("access denied"), "{denied}");
    let read_only = fail(
        &h,
        granted("guarded", Access::ReadOnly),
        &["guarded", "set", "x", "1"],
    )
    .await;
    assert!(read_only.contains("access denied"), "{read_only}");
    let no_store = fail(&h, RunOptions::default(), &["../etc", "get", "n"]).await;
    assert!(no_store.contains("no such store"), "{no_store}");

    let long_key = "k".repeat(1100);
    let rw = || granted("guarded", Access::ReadWrite);
    let too_long = fail(&h, rw(), &["guarded", "set", &long_key, "v"]).await;
    assert!(
        too_long.contains("invalid key") && too_long.contains("1024"),
        "{too_long}"
    );
    let nul = fail(&h, rw(), &["guarded", "set", "a\0b", "v"]).await;
    assert!(nul.contains("invalid key") && nul.contains("NUL"), "{nul}");

    let not_number = fail(&h, rw(), &["guarded", "increment", "n", "1"]).await;
    assert!(not_number.contains("decimal integer"), "{not_number}");

    let small = RunOptions {
        limits: Limits {
            max_content_bytes: 1024,
            ..Limits::default()
        },
        ..rw()
    };
    let big = "x".repeat(2048);
    let oversize = fail(&h, small, &["guarded", "set", "big", &big]).await;
    assert!(oversize.contains("over the limit"), "{oversize}");

    let few = RunOptions {
        limits: Limits {
            max_list_entries: 10,
            ..Limits::default()
        },
        ..rw()
    };
    let batch = fail(&h, few, &["guarded", "batch", "p", "20"]).await;
    assert!(batch.contains("this batch carries 20 keys"), "{batch}");

    // None of it wrote anything.
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.objects, stats.labels), (1, 1));
    // A command's own failure is its exit code, passed through (WASI 0.2
    // carries success or failure: `exit(2)` arrives as 1).
    let run = command(&h, rw(), &["guarded", "frobnicate"]).await;
    assert_eq!(run.outcome.unwrap(), 1);
    assert!(run.stderr.contains("unknown command"), "{}", run.stderr);
}

#[tokio::test]
async fn keyvalue_calls_are_recorded_in_the_actors_chain() {
    let h = Harness::start();
    let options = RunOptions {
        chain: ChainRecording::Actor("kv-app".into()),
        ..granted("kv", Access::ReadWrite)
    };
    succeed(&h, options.clone(), &["kv", "set", "greeting", "hello"]).await;
    let got = succeed(&h, options, &["kv", "get", "greeting"]).await;
    assert_eq!(got["value"], "hello");

    let chain = h.root().event_chain("kv-app").unwrap();
    let mut events = chain.events(usize::MAX).await.unwrap();
    events.reverse();
    let types: Vec<&str> = events
        .iter()
        .map(|entry| entry.event.event.event_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "run-start",
            "wasi:keyvalue/store.open",
            "wasi:keyvalue/store.set",
            "run-end",
            "run-start",
            "wasi:keyvalue/store.open",
            "wasi:keyvalue/store.get",
            "run-end",
        ]
    );
    let hello = ContentRef::for_content(b"hello");
    for entry in [&events[2], &events[6]] {
        let event = &entry.event.event;
        assert_eq!(event.store.as_deref(), Some("kv"), "{event:?}");
        assert_eq!(event.label.as_deref(), Some("greeting"), "{event:?}");
        assert_eq!(event.refs, [hello.hash()], "{event:?}");
        assert_eq!(event.size, Some(5), "{event:?}");
        assert_eq!(event.outcome, Outcome::Ok, "{event:?}");
    }
    assert!(chain.verify().await.unwrap().is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actors_label_changes_name_it_in_the_change_log() {
    let h = Harness::start();
    let options = RunOptions {
        chain: ChainRecording::Actor("kv-writer".into()),
        ..granted("kv", Access::ReadWrite)
    };
    succeed(&h, options.clone(), &["kv", "set", "greeting", "hello"]).await;
    succeed(&h, options, &["kv", "set", "greeting", "bye"]).await;
    // A write from outside any actor names no one.
    let store = h.root().store("kv").unwrap();
    store
        .store_at_label("by-host", b"x".to_vec())
        .await
        .unwrap();
    let changes = store.changes(0, 100).await.unwrap().changes;
    let seen: Vec<(&str, bool, Option<&str>)> = changes
        .iter()
        .map(|c| (c.label.as_str(), c.old.is_some(), c.actor.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            ("greeting", false, Some("kv-writer")),
            ("greeting", true, Some("kv-writer")),
            ("by-host", false, None),
        ]
    );
}
