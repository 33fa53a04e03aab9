//! The handlers: each checks access, then makes one or two core calls.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::TryStreamExt;
use futures_util::stream::{Stream, StreamExt};
use serde::Deserialize;
use theater_store::{ContentRef, ContentStore, ErrorKind, StoreError, StoreQuota, StoreRoot};
use tower::ServiceBuilder;
use tower::limit::ConcurrencyLimitLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::Limits;
use crate::access::{Access, Need};
use crate::error::ApiError;

/// What every handler shares.
pub(crate) struct Gateway {
    pub(crate) root: StoreRoot,
    pub(crate) access: Access,
    pub(crate) limits: Limits,
}

type Shared = State<Arc<Gateway>>;

pub(crate) fn router(gateway: Arc<Gateway>) -> Router {
    let limits = gateway.limits.clone();
    // Outermost first: a body over the limit is refused (413) before
    // anything else; then the deadline; then the queue for a slot.
    let layers = ServiceBuilder::new()
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(DefaultBodyLimit::disable())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.timeout,
        ))
        .layer(ConcurrencyLimitLayer::new(limits.max_concurrent_requests));
    Router::new()
        .route("/", get(ui))
        .route("/v1/stores", get(list_stores))
        .route("/v1/stores/{store}/labels", get(list_labels))
        .route(
            "/v1/stores/{store}/labels/{*label}",
            get(get_label).put(put_label).delete(delete_label),
        )
        .route(
            "/v1/stores/{store}/content",
            axum::routing::post(post_content),
        )
        .route("/v1/stores/{store}/content/{reference}", get(get_content))
        .route("/v1/stores/{store}/changes", get(changes))
        .route("/v1/chains/{actor}", get(chain))
        .route("/metrics", get(crate::observe::metrics_page))
        .fallback(crate::error::no_route)
        .layer(layers)
        .layer(axum::middleware::from_fn(crate::error::json_errors))
        .layer(axum::middleware::from_fn(crate::observe::observe))
        .with_state(gateway)
}

impl Gateway {
    /// `store`, with its writes refused inside their transaction if they
    /// would take it past the gateway's quota (counted as a refusal).
    fn within_quota(&self, store: &ContentStore) -> ContentStore {
        store.within_quota(StoreQuota {
            bytes: self.limits.max_store_bytes,
            objects: u64::MAX,
        })
    }

    /// Store `id`, if the request may do `need` to it.
    /// Writes through it are logged as the request's token's
    /// ([`Access::writer`]).
    fn store(&self, headers: &HeaderMap, id: &str, need: Need) -> Result<ContentStore, ApiError> {
        let store = self.root.store(id)?;
        self.access.check(headers, id, need)?;
        Ok(match need {
            Need::Write => store.by_actor(&self.access.writer(headers)),
            Need::Read => store,
        })
    }
}

/// The browser UI: one page, its script a client of the API above.
async fn ui() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob:",
            ),
        ],
        include_str!("../ui/index.html"),
    )
        .into_response()
}

async fn list_stores(State(gateway): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    gateway.access.authenticate(&headers)?;
    let stores: Vec<_> = gateway
        .root
        .stores()
        .await?
        .into_iter()
        .filter(|summary| {
            gateway
                .access
                .check(&headers, &summary.id, Need::Read)
                .is_ok()
        })
        .collect();
    Ok(Json(stores).into_response())
}

#[derive(Deserialize)]
struct LabelsQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_labels(
    State(gateway): Shared,
    headers: HeaderMap,
    Path(store): Path<String>,
    Query(query): Query<LabelsQuery>,
) -> Result<Response, ApiError> {
    let store = gateway.store(&headers, &store, Need::Read)?;
    let limit = query
        .limit
        .unwrap_or(1000)
        .clamp(1, gateway.limits.max_page);
    let labels = store
        .list_labels_page(&query.prefix, query.after.as_deref(), limit)
        .await?;
    let next = (labels.len() == limit).then(|| labels.last().map(|entry| entry.label.clone()));
    Ok(Json(serde_json::json!({
        "store": store.id(),
        "labels": labels,
        "next": next.flatten(),
    }))
    .into_response())
}

async fn get_label(
    State(gateway): Shared,
    headers: HeaderMap,
    Path((store, label)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let store = gateway.store(&headers, &store, Need::Read)?;
    let Some(content_ref) = store.get_by_label(&label).await? else {
        return Err(ApiError::NotFound(format!(
            "store {}: no label {label:?}",
            store.id()
        )));
    };
    content(&store, &content_ref, &headers, false).await
}

async fn get_content(
    State(gateway): Shared,
    headers: HeaderMap,
    Path((store, reference)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let store = gateway.store(&headers, &store, Need::Read)?;
    let content_ref = ContentRef::parse(&reference)?;
    content(&store, &content_ref, &headers, true).await
}

/// Content as an answer: 304 when the client holds it, 206 for one range,
/// else 200; the body read and verified as it streams (a piece that fails
/// verification ends the body early, so no corrupt byte is served).
async fn content(
    store: &ContentStore,
    content_ref: &ContentRef,
    headers: &HeaderMap,
    immutable: bool,
) -> Result<Response, ApiError> {
    let etag = format!("\"{}\"", content_ref.hash());
    let mut response = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes");
    if immutable {
        response = response.header(header::CACHE_CONTROL, "public, max-age=31536000, immutable");
    }
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| {
            // Weak comparison, as RFC 9110 has for If-None-Match.
            tags.split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
        })
    {
        return Ok(response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("valid headers"));
    }
    let size = store.content_size(content_ref).await?;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(range) => byte_range(range, size)?,
        None => None,
    };
    let (status, start, len) = match range {
        Some((start, end)) => {
            response = response.header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", end - 1),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start)
        }
        None => (StatusCode::OK, 0, size),
    };
    // The reader's verified windows (256 KiB) go out as they are, without
    // a copy: loopback TCP here moves 1.2–1.6 GiB/s in 64 KiB writes and
    // 2.0–2.5 GiB/s in 256 KiB ones, and a 4 KiB piece per write (tokio's
    // `ReaderStream` default) would cap a 1 GiB body far lower.
    let reader = store.range_reader(content_ref, start, Some(len)).await?;
    let pieces = reader.into_inner().into_pieces().map_ok(Bytes::from_owner);
    Ok(response
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(pieces))
        .expect("valid headers"))
}

/// One range of `Range: bytes=…` as `[start, end)`: `a-b`, `a-` or `-n`.
/// `None` (serve the whole, as RFC 9110 lets a server do) for several
/// ranges, another unit, or a header that does not parse or whose last
/// byte comes before its first; 416 for a range that starts past the
/// content (or asks for its last 0 bytes).
fn byte_range(text: &str, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Ok(None);
    };
    let number = |digits: &str| digits.trim().parse::<u64>().ok();
    let (start, end) = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let Some(suffix) = number(suffix) else {
                return Ok(None);
            };
            let suffix = suffix.min(size);
            (size - suffix, size)
        }
        (first, last) => {
            let (Some(start), Some(last)) = (
                number(first),
                number(last).or(last.is_empty().then_some(u64::MAX)),
            ) else {
                return Ok(None);
            };
            if last < start {
                return Ok(None);
            }
            (start, last.saturating_add(1).min(size))
        }
    };
    if start >= end || start >= size {
        return Err(ApiError::RangeNotSatisfiable { size });
    }
    Ok(Some((start, end)))
}

/// What `If-Match` or `If-None-Match: *` asks a label to hold first:
/// `None` (no precondition), `Some(None)` (absent), `Some(Some(ref))`.
fn precondition(headers: &HeaderMap) -> Result<Option<Option<ContentRef>>, ApiError> {
    if let Some(value) = headers.get(header::IF_MATCH) {
        let text = value.to_str().unwrap_or_default().trim();
        let hash = text
            .strip_prefix('"')
            .and_then(|rest| rest.strip_suffix('"'))
            .ok_or_else(|| ApiError::BadRequest("If-Match takes one quoted ref".into()))?;
        return Ok(Some(Some(ContentRef::parse(hash)?)));
    }
    match headers
        .get(header::IF_NONE_MATCH)
        .map(HeaderValue::as_bytes)
    {
        Some(b"*") => Ok(Some(None)),
        Some(_) => Err(ApiError::BadRequest(
            "a write takes If-None-Match: * (create only) or If-Match: \"REF\"".into(),
        )),
        None => Ok(None),
    }
}

async fn put_label(
    State(gateway): Shared,
    headers: HeaderMap,
    Path((store, label)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let store = gateway.store(&headers, &store, Need::Write)?;
    theater_store::validate_label(&label)?;
    let expected = precondition(&headers)?;
    let bounded = gateway.within_quota(&store);
    let stored = match &expected {
        None => counted(bounded.store_at_label(&label, body.to_vec()).await)?,
        Some(expected) => {
            let stored = counted(bounded.write(body.to_vec(), None).await)?.content_ref;
            let swapped = bounded
                .compare_and_swap_label(&label, expected.as_ref(), Some(&stored))
                .await;
            if !counted(swapped)? {
                return Err(precondition_failed(&store, &label).await);
            }
            stored
        }
    };
    Ok(written(&store, Some(&label), &stored))
}

async fn delete_label(
    State(gateway): Shared,
    headers: HeaderMap,
    Path((store, label)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let store = gateway.store(&headers, &store, Need::Write)?;
    theater_store::validate_label(&label)?;
    let removed = match precondition(&headers)? {
        Some(Some(expected)) => store.remove_from_label(&label, &expected).await?,
        Some(None) => {
            return Err(ApiError::BadRequest(
                "If-None-Match: * cannot hold for a label being removed".into(),
            ));
        }
        None => match store.get_by_label(&label).await? {
            Some(current) => store.remove_from_label(&label, &current).await?,
            None => false,
        },
    };
    if !removed {
        return Err(match store.get_by_label(&label).await? {
            None => ApiError::NotFound(format!("store {}: no label {label:?}", store.id())),
            Some(_) => precondition_failed(&store, &label).await,
        });
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn precondition_failed(store: &ContentStore, label: &str) -> ApiError {
    let current = store.get_by_label(label).await.ok().flatten();
    ApiError::PreconditionFailed {
        label: label.to_owned(),
        current: current.map(|r| r.hash().to_owned()),
    }
}

async fn post_content(
    State(gateway): Shared,
    headers: HeaderMap,
    Path(store): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let store = gateway.store(&headers, &store, Need::Write)?;
    let stored = gateway.within_quota(&store).store(body.to_vec()).await;
    Ok(written(&store, None, &counted(stored)?))
}

/// `result`, counting a quota refusal in the metrics.
fn counted<T>(result: Result<T, StoreError>) -> Result<T, StoreError> {
    if let Err(error) = &result
        && error.kind() == ErrorKind::QuotaExceeded
    {
        metrics::counter!("theater_quota_refusals_total", "by" => "gateway").increment(1);
    }
    result
}

/// 201 with the ref, as JSON and as the ETag.
fn written(store: &ContentStore, label: Option<&str>, stored: &ContentRef) -> Response {
    let mut response = (
        StatusCode::CREATED,
        Json(serde_json::json!({"store": store.id(), "label": label, "ref": stored})),
    )
        .into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", stored.hash())) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

#[derive(Deserialize)]
struct ChangesQuery {
    since: Option<u64>,
    #[serde(default)]
    prefix: String,
}

/// The change log as Server-Sent Events: each change an event `change`
/// with its `seq` as the id and the change as JSON; a client reconnecting
/// with `Last-Event-ID` carries on after it. Without `since` or
/// `Last-Event-ID`, from now. A trimmed log ends the stream with an event
/// `error`.
async fn changes(
    State(gateway): Shared,
    headers: HeaderMap,
    Path(store): Path<String>,
    Query(query): Query<ChangesQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let store = gateway.store(&headers, &store, Need::Read)?;
    let resumed = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(|text| {
            text.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::BadRequest("Last-Event-ID is a change's seq".into()))
        })
        .transpose()?;
    let since = match resumed.or(query.since) {
        Some(since) => since,
        None => store.last_change().await?,
    };
    let events = store.watch(&query.prefix, since).map(|change| {
        Ok(match change {
            Ok(change) => Event::default()
                .id(change.seq.to_string())
                .event("change")
                .json_data(&change)
                .unwrap_or_else(|_| Event::default().event("error")),
            Err(error) => Event::default().event("error").data(
                serde_json::json!({"error": error.to_string(), "kind": error.kind().as_str()})
                    .to_string(),
            ),
        })
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

#[derive(Deserialize)]
struct ChainQuery {
    limit: Option<usize>,
}

/// An actor's newest events, newest first, each checked link by link from
/// the chain's head: `{"actor", "events", "verified", "error"}`. A chain
/// damaged below the head lists the events above the damage, with
/// `verified: false` and what is wrong.
async fn chain(
    State(gateway): Shared,
    headers: HeaderMap,
    Path(actor): Path<String>,
    Query(query): Query<ChainQuery>,
) -> Result<Response, ApiError> {
    gateway.access.check_chains(&headers)?;
    let chain = gateway.root.event_chain(&actor)?;
    let limit = query.limit.unwrap_or(100).clamp(1, gateway.limits.max_page);
    let mut events = Vec::new();
    let walked = chain
        .for_each_event(limit, |entry| {
            events.push(entry.to_json());
            true
        })
        .await;
    let error = match walked {
        Ok(()) => None,
        Err(damaged @ theater_store::StoreError::ChainDamaged { .. }) => Some(damaged.to_string()),
        Err(other) => return Err(other.into()),
    };
    if events.is_empty() && error.is_none() {
        return Err(ApiError::NotFound(format!(
            "no event chain for actor {actor}"
        )));
    }
    Ok(Json(serde_json::json!({
        "actor": actor,
        "events": events,
        "verified": error.is_none(),
        "error": error,
    }))
    .into_response())
}
