//! What the host tells operators about each call an actor makes: a
//! `tracing` span (`host_call`, at debug level) that covers the call's
//! work in the core, and `metrics` counters and a latency histogram by
//! operation. The span names the operation, actor, store, label and ref;
//! never content, values or log lines.
//!
//! Metrics go to whatever `metrics` recorder the process installed (the
//! gateway's Prometheus exporter, or the embedder's own) when the actor's
//! context first made a call of that operation: each context registers
//! its handles once per operation, so that a call costs two clock reads
//! and two handle updates rather than two registry lookups.
//!
//! - `theater_host_calls_total{op, outcome}`: calls, by how they ended
//!   (`ok` or an error kind such as `quota-exceeded`);
//! - `theater_host_call_seconds{op}`: how long they took;
//! - `theater_quota_refusals_total{by="host"}`: writes refused for quota.

use std::time::Instant;

use metrics::{Counter, Histogram};
use theater_store::{ErrorKind, Event};
use tracing::Span;
use tracing::field::Empty;

/// One call in progress, from [`CallObserver::start`] to
/// [`CallObserver::finish`].
#[derive(Debug)]
pub(crate) struct CallObserver {
    op: &'static str,
    started: Instant,
    span: Span,
}

impl CallObserver {
    /// Starts observing a call of operation `op` by `actor` (when known).
    pub(crate) fn start(op: &'static str, actor: Option<&str>) -> Self {
        let span = tracing::debug_span!(
            "host_call",
            op,
            actor,
            store = Empty,
            label = Empty,
            content_ref = Empty,
            outcome = Empty,
        );
        Self {
            op,
            started: Instant::now(),
            span,
        }
    }

    /// Whether the span is recorded, so that describing it is worth the
    /// work.
    pub(crate) fn wants_details(&self) -> bool {
        !self.span.is_disabled()
    }

    /// Names on the span the store, label and first ref of `event`.
    pub(crate) fn describe(&self, event: &Event) {
        if let Some(store) = &event.store {
            self.span.record("store", store.as_str());
        }
        if let Some(label) = &event.label {
            self.span.record("label", label.as_str());
        }
        if let Some(content_ref) = event.refs.first() {
            self.span.record("content_ref", content_ref.as_str());
        }
    }

    /// The span the call's core work runs in.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Ends the call: records its outcome on the span and in `metrics`.
    pub(crate) fn finish(self, failure: Option<ErrorKind>, metrics: &mut CallMetrics) {
        let seconds = self.started.elapsed().as_secs_f64();
        let handles = metrics.of(self.op);
        handles.seconds.record(seconds);
        let outcome = match failure {
            None => {
                handles.ok.increment(1);
                "ok"
            }
            // Failures are rarer: their counters are looked up each time.
            Some(kind) => {
                metrics::counter!("theater_host_calls_total", "op" => self.op, "outcome" => kind.as_str())
                    .increment(1);
                if kind == ErrorKind::QuotaExceeded {
                    metrics::counter!("theater_quota_refusals_total", "by" => "host").increment(1);
                }
                kind.as_str()
            }
        };
        if !self.span.is_disabled() {
            self.span.record("outcome", outcome);
            self.span
                .in_scope(|| tracing::debug!(seconds, "host call ended"));
        }
    }
}

/// One operation's metric handles.
#[derive(Debug)]
struct OpHandles {
    op: &'static str,
    ok: Counter,
    seconds: Histogram,
}

/// The metric handles of the operations one context has called, each
/// registered on its first call.
#[derive(Debug, Default)]
pub(crate) struct CallMetrics {
    ops: Vec<OpHandles>,
}

impl CallMetrics {
    fn of(&mut self, op: &'static str) -> &OpHandles {
        match self.ops.iter().position(|handles| handles.op == op) {
            Some(index) => &self.ops[index],
            None => {
                self.ops.push(OpHandles {
                    op,
                    ok: metrics::counter!("theater_host_calls_total", "op" => op, "outcome" => "ok"),
                    seconds: metrics::histogram!("theater_host_call_seconds", "op" => op),
                });
                self.ops.last().expect("just pushed")
            }
        }
    }
}
