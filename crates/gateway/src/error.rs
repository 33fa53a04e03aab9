//! Errors as HTTP answers: a status and `{"error": message, "kind": kind}`,
//! the kinds being the store's own (`theater_store::ErrorKind`).

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use theater_store::{ErrorKind, StoreError};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No token, or one the tokens file does not hold.
    #[error("a valid bearer token is needed (Authorization: Bearer TOKEN)")]
    Unauthenticated,
    /// The token does not reach that store, or not for writing.
    #[error("{0}")]
    Forbidden(String),
    /// The request names something that is not there.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// `If-Match` or `If-None-Match` did not hold; the label's ref now.
    #[error("the label {label} did not match the request's precondition")]
    PreconditionFailed {
        /// The label.
        label: String,
        /// What it names now.
        current: Option<String>,
    },
    /// A range outside the content.
    #[error("range not satisfiable: the content is {size} bytes")]
    RangeNotSatisfiable {
        /// The content's size.
        size: u64,
    },
    /// What the store said.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    fn status_and_kind(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorKind::AccessDenied.as_str()),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, ErrorKind::NotFound.as_str()),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            Self::PreconditionFailed { .. } => {
                (StatusCode::PRECONDITION_FAILED, "precondition-failed")
            }
            Self::RangeNotSatisfiable { .. } => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorKind::InvalidRef.as_str(),
            ),
            // An actor id is checked by the store but has no kind of its own.
            Self::Store(StoreError::InvalidActorId { .. }) => {
                (StatusCode::BAD_REQUEST, "bad-request")
            }
            Self::Store(error) => {
                let kind = error.kind();
                let status = match kind {
                    ErrorKind::NotFound => StatusCode::NOT_FOUND,
                    ErrorKind::AccessDenied => StatusCode::FORBIDDEN,
                    ErrorKind::InvalidLabel | ErrorKind::InvalidRef | ErrorKind::InvalidStoreId => {
                        StatusCode::BAD_REQUEST
                    }
                    ErrorKind::TooLarge | ErrorKind::QuotaExceeded => StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorKind::Trimmed => StatusCode::GONE,
                    ErrorKind::Contended => StatusCode::CONFLICT,
                    ErrorKind::TimedOut => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (status, kind.as_str())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_and_kind();
        let body = Json(serde_json::json!({"error": self.to_string(), "kind": kind}));
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthenticated => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::PreconditionFailed {
                current: Some(current),
                ..
            } => {
                if let Ok(etag) = HeaderValue::from_str(&format!("\"{current}\"")) {
                    headers.insert(header::ETAG, etag);
                }
            }
            Self::RangeNotSatisfiable { size } => {
                if let Ok(range) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, range);
                }
            }
            _ => {}
        }
        response
    }
}

/// The most of a plain-text error body kept as its message.
const MAX_PLAIN_ERROR_BYTES: usize = 4096;

/// Gives the answers the HTTP stack makes on its own (a path or query
/// that does not parse, a method a path does not take, a body over the
/// limit, a request past its deadline) the same JSON shape as the
/// handlers' errors, keeping their status and headers (`Allow`).
pub(crate) async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_PLAIN_ERROR_BYTES)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let allowed = parts
        .headers
        .get(header::ALLOW)
        .and_then(|value| value.to_str().ok());
    let message = match (status, allowed) {
        (StatusCode::METHOD_NOT_ALLOWED, Some(allowed)) => {
            format!("this path does not take {method} (it takes {allowed})")
        }
        (StatusCode::REQUEST_TIMEOUT, _) => "the request was not answered in time".to_owned(),
        (StatusCode::PAYLOAD_TOO_LARGE, _) => "the request body is over the limit".to_owned(),
        _ if !text.is_empty() => text,
        _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let kind = match status {
        StatusCode::NOT_FOUND => ErrorKind::NotFound.as_str(),
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::REQUEST_TIMEOUT => ErrorKind::TimedOut.as_str(),
        StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::TooLarge.as_str(),
        status if status.is_client_error() => "bad-request",
        _ => ErrorKind::Io.as_str(),
    };
    let mut answer = (
        status,
        Json(serde_json::json!({"error": message, "kind": kind})),
    )
        .into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().append(name, value.clone());
        }
    }
    answer
}

/// What a path outside the API gets.
pub(crate) async fn no_route(request: Request) -> ApiError {
    let path = request.uri().path();
    let hint = if path.starts_with("/v1/") {
        "docs/HTTP.md lists the routes"
    } else {
        "the API is under /v1 (docs/HTTP.md)"
    };
    ApiError::NotFound(format!("no route for {} {path}: {hint}", request.method()))
}
