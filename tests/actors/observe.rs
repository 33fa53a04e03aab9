//! What operators see of an actor's calls: a `host_call` span per call
//! naming the operation, store and label (never the content), with the
//! core's work inside it, and metrics by operation and outcome.

use std::io::Write;
use std::sync::{Arc, Mutex};

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use theater_store_examples::KV_COUNTER;
use theater_store_host::{Access, CommandOutput, Grants, RunOptions};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::Harness;

/// Log output collected in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Runs the keyvalue command with `args` under `access` to bucket `b`,
/// tracing at `trace` level and recording metrics, on this thread only.
/// Returns the log text and the counters as `(name{labels}, value)`.
fn observed_run(access: Access, args: &[&str]) -> (String, Vec<(String, u64)>) {
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_env_filter("theater_store=trace,theater_store_host=trace")
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(false)
        .finish();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let argv: Vec<String> = std::iter::once("kv_counter")
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect();
    let h = Harness::start();
    let component = h.load(KV_COUNTER);
    let options = RunOptions {
        grants: Grants::none().store("b", access),
        ..RunOptions::default()
    };
    // While only one dispatcher is registered, tracing decides whether a
    // callsite is on from the default of whichever thread first reaches it:
    // another test reaching `ContentStore::write` first would switch it
    // off for this one. A second live dispatcher makes it ask every
    // registered one, this test's included, and the rebuild corrects
    // callsites decided before this test's subscriber existed.
    let _every_dispatcher_asked =
        tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let run = tracing::subscriber::with_default(subscriber, || {
        tracing::callsite::rebuild_interest_cache();
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(
                h.host
                    .run_command(&component, options, &argv, CommandOutput::Capture),
            )
        })
    });
    run.outcome.unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let counters = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(count) => {
                let key = key.key();
                let labels: Vec<String> = key
                    .labels()
                    .map(|label| format!("{}={}", label.key(), label.value()))
                    .collect();
                Some((format!("{}{{{}}}", key.name(), labels.join(",")), count))
            }
            _ => None,
        })
        .collect();
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    (log, counters)
}

fn counter(counters: &[(String, u64)], name: &str) -> u64 {
    counters
        .iter()
        .find(|(key, _)| key == name)
        .map_or(0, |(_, count)| *count)
}

#[test]
fn each_call_has_a_span_naming_its_store_and_label_but_not_its_content() {
    let (log, counters) = observed_run(Access::ReadWrite, &["b", "set", "greeting", "s3cret"]);
    let call = log
        .lines()
        .find(|line| line.contains("host_call{op=\"wasi:keyvalue/store.set\""))
        .unwrap_or_else(|| panic!("no span for the set in:\n{log}"));
    assert!(call.contains("store=\"b\""), "{call}");
    assert!(call.contains("label=\"greeting\""), "{call}");
    // The core's write runs inside the call's span.
    assert!(
        log.lines().any(|line| line.contains("host_call{")
            && line.contains("write{store=b label=\"greeting\"}")),
        "no core span inside the call:\n{log}"
    );
    assert!(!log.contains("s3cret"), "content was logged:\n{log}");
    assert_eq!(
        counter(
            &counters,
            "theater_host_calls_total{op=wasi:keyvalue/store.set,outcome=ok}"
        ),
        1,
        "{counters:?}"
    );
}

#[test]
fn refused_calls_are_counted_by_their_error_kind() {
    let (log, counters) = observed_run(Access::ReadOnly, &["b", "set", "greeting", "hello"]);
    assert_eq!(
        counter(
            &counters,
            "theater_host_calls_total{op=wasi:keyvalue/store.set,outcome=access-denied}"
        ),
        1,
        "{counters:?}"
    );
    assert_eq!(
        counter(
            &counters,
            "theater_host_calls_total{op=wasi:keyvalue/store.set,outcome=ok}"
        ),
        0
    );
    assert!(
        log.contains("outcome=\"access-denied\""),
        "the span does not say how the call ended:\n{log}"
    );
}
