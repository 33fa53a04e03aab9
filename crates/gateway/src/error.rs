//! Errors as HTTP answers: a status and `{"error": message, "kind": kind}`,
//! the kinds being the store's own (`theater_store::ErrorKind`).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
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
