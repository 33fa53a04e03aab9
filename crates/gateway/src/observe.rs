//! What the gateway tells operators: a `tracing` span and a log line per
//! request, and Prometheus metrics at `/metrics`. Requests are named by
//! their route's pattern (`/v1/stores/{store}/labels/{label}`), so that
//! metrics stay few whatever the stores and labels; logs carry the path
//! (store, label, ref) but never a header, so never a token.

use std::sync::OnceLock;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;

/// The process's Prometheus recorder, installed the first time a gateway
/// is built. If the embedder installed another `metrics` recorder first,
/// ours stays empty and the embedder's exporter has the figures instead.
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ])
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Makes sure the recorder is in place before the first request.
pub(crate) fn install() {
    prometheus();
}

/// `GET /metrics`: every metric in Prometheus's text format.
pub(crate) async fn metrics_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}

/// Times, counts and logs each request.
pub(crate) async fn observe(request: Request<Body>, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let route = route_of(request.uri().path());
    let bytes_in = content_length(request.headers());
    let span = tracing::info_span!("http", %method, path = %request.uri().path(), route);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16().to_string();
    let bytes_out = content_length(response.headers());
    span.in_scope(|| {
        tracing::info!(status = %status, seconds, bytes_in, bytes_out, "request");
    });
    let labels = [
        ("method", method),
        ("route", route.to_owned()),
        ("status", status),
    ];
    metrics::counter!("theater_gateway_requests_total", &labels).increment(1);
    metrics::histogram!("theater_gateway_request_seconds", &labels[..2]).record(seconds);
    metrics::counter!("theater_gateway_bytes_in_total", &labels[..2]).increment(bytes_in);
    metrics::counter!("theater_gateway_bytes_out_total", &labels[..2]).increment(bytes_out);
    response
}

fn content_length(headers: &HeaderMap) -> u64 {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// The route pattern a path falls under (or `other`).
fn route_of(path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        [""] => "/",
        ["metrics"] => "/metrics",
        ["v1", "stores"] => "/v1/stores",
        ["v1", "stores", _, "labels"] => "/v1/stores/{store}/labels",
        ["v1", "stores", _, "labels", _, ..] => "/v1/stores/{store}/labels/{label}",
        ["v1", "stores", _, "content"] => "/v1/stores/{store}/content",
        ["v1", "stores", _, "content", _] => "/v1/stores/{store}/content/{ref}",
        ["v1", "stores", _, "changes"] => "/v1/stores/{store}/changes",
        ["v1", "chains", _] => "/v1/chains/{actor}",
        _ => "other",
    }
}
