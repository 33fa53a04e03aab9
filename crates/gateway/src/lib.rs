//! An HTTP view of a theater-store root, under `/v1`:
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /v1/stores` | the stores the caller may read, with their totals |
//! | `GET /v1/stores/{store}/labels?prefix=&after=&limit=` | one page of labels, and the cursor of the next |
//! | `GET /v1/stores/{store}/labels/{label}` | the content a label names, streamed and verified |
//! | `GET /v1/stores/{store}/content/{ref}` | content by ref, cacheable forever |
//! | `PUT /v1/stores/{store}/labels/{label}` | the body stored and labelled; `If-Match: "REF"` or `If-None-Match: *` make it a compare-and-swap |
//! | `DELETE /v1/stores/{store}/labels/{label}` | the label removed (`If-Match` as for `PUT`) |
//! | `POST /v1/stores/{store}/content` | the body stored, its ref answered |
//! | `GET /v1/stores/{store}/changes?since=&prefix=` | the change log as Server-Sent Events, resumable with `Last-Event-ID` |
//!
//! A ref is a strong `ETag` (`"<64 hex>"`); `If-None-Match` answers 304;
//! a single `Range: bytes=…` is answered 206 from a verified range read
//! (a request naming several ranges gets the whole content, 200). Errors
//! are JSON, `{"error", "kind"}`, with the store's error kinds. Access is
//! checked per store ([`Access`]). `GET /` is a browser UI over the same
//! API; `GET /metrics` gives Prometheus metrics (requests, latency and
//! bytes by route); each request is a `tracing` span.

#![warn(missing_docs)]

mod access;
mod error;
mod observe;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use theater_store::StoreRoot;

pub use access::{Access, MIN_TOKEN_CHARS, Need, Tokens};
pub use error::ApiError;

/// Where the gateway listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";

/// Limits on what one request may ask of the gateway.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest request body (`PUT`, `POST`). Default: 64 MiB.
    pub max_body_bytes: usize,
    /// How long a request may take to be answered (its headers; a body
    /// then streams at the client's pace). Default: 30 s.
    pub timeout: Duration,
    /// Requests handled at once; more wait their turn. Default: 64.
    pub max_concurrent_requests: usize,
    /// The most labels one page lists. Default: 10,000.
    pub max_page: usize,
    /// How long a connection may take to send a request's headers.
    /// Default: 10 s.
    pub header_timeout: Duration,
    /// The most bytes a request's head may take (at least 8 KiB).
    /// Default: 64 KiB.
    pub max_header_bytes: usize,
    /// Connections open at once. Default: 1024.
    pub max_connections: usize,
    /// The most space a store may take, as `StoreStats::footprint` counts
    /// it, for writes through the gateway to be taken: a write that would
    /// pass it gets 413. It is checked inside each write's transaction,
    /// so concurrent requests (and actors and other hosts writing the
    /// same store) cannot pass it together. Default: 1 GiB, as for
    /// `theater-store run`.
    pub max_store_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 << 20,
            timeout: Duration::from_secs(30),
            max_concurrent_requests: 64,
            max_page: 10_000,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            max_connections: 1024,
            max_store_bytes: 1 << 30,
        }
    }
}

/// The gateway's routes over `root`, for `access`, within `limits`: an
/// axum [`Router`] to serve (see [`serve`]) or to nest in another.
pub fn router(root: StoreRoot, access: Access, limits: Limits) -> Router {
    observe::install();
    routes::router(Arc::new(routes::Gateway {
        root,
        access,
        limits,
    }))
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting connections. Each connection must send a request's headers
/// within [`Limits::header_timeout`] (also between requests on a kept-alive
/// connection) and within [`Limits::max_header_bytes`]; beyond
/// [`Limits::max_connections`] open at once, new ones are closed at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors, a connection reset before it
                // was taken: the listener itself is fine. A pause, so
                // that running out of descriptors does not spin.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        // A response goes out as its head, then its body: with Nagle's
        // algorithm on, a small body waits for the client's delayed ACK
        // (about 40 ms on Linux), which caps a keep-alive connection at
        // some 25 requests a second.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192));
        tokio::spawn(async move {
            let _permit = permit;
            // A connection that ends badly (a client gone, headers too
            // slow or too large) concerns only itself.
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
