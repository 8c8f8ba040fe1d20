//! Every error the API answers with: a status and an RFC 9457 problem document
//! (`application/problem+json`) naming what was wrong. Besides the standard members it carries
//! `code`, `field` and `details`, and, for clients written before it was a problem document, the
//! same under `error`:
//! `{"type": "urn:taskfactory:problem:invalid", "title": "Bad Request", "status": 400,
//!   "detail": "...", "code": "invalid", "field": "data.amount", "error": {"code": "invalid", ...}}`.
//! A 503 says when to come back (`Retry-After`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, when there is one.
    pub field: Option<String>,
    /// More detail (every problem of a definition).
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), field: None, details: None }
    }

    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError { field: Some(field.into()), ..ApiError::new(StatusCode::BAD_REQUEST, "invalid", message) }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn with_details(mut self, details: serde_json::Value) -> ApiError {
        self.details = Some(details);
        self
    }
}

/// A list endpoint's `limit`: `default` when absent, else 1 to 500.
pub fn page_limit(limit: Option<i64>, default: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=500).contains(&limit) { Ok(limit) } else { Err(ApiError::bad_request("limit", "must be between 1 and 500")) }
}

/// The `cursor` query parameter of the lists that page by time and id (runs, tasks,
/// definitions): the previous page's `next_cursor`.
pub fn page_cursor(v: Option<&str>) -> Result<Option<tf_store::Cursor>, ApiError> {
    v.map(str::parse).transpose().map_err(|e: tf_store::BadCursor| ApiError::bad_request("cursor", e.to_string()))
}

impl From<tf_store::StoreError> for ApiError {
    fn from(e: tf_store::StoreError) -> ApiError {
        if let tf_store::StoreError::Stale { current, .. } = &e {
            return ApiError::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", format!("{e}; read it again and reapply"))
                .with_details(json!({ "current_etag": current }));
        }
        if e.is_bad_value() {
            tracing::info!(error = %e, "the database refused a value of the request");
            return ApiError::bad_request(
                "request",
                "a value of the request cannot be stored (a NUL character, an invalid byte sequence, a number out of range)",
            );
        }
        tracing::error!(error = %e, "database");
        if e.is_transient() {
            ApiError::unavailable("the database is unavailable; retry later")
        } else {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the database refused the request")
        }
    }
}

/// Seconds a client should wait before retrying a 503 (the database or Temporal unavailable).
pub const RETRY_AFTER_SECS: u64 = 5;

impl ApiError {
    /// The problem document of this error.
    pub fn problem(&self) -> serde_json::Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(f) = &self.field {
            error["field"] = json!(f);
        }
        if let Some(d) = &self.details {
            error["details"] = d.clone();
        }
        let mut problem = json!({
            "type": format!("urn:taskfactory:problem:{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.message,
            "code": self.code,
        });
        if let Some(f) = &self.field {
            problem["field"] = json!(f);
        }
        if let Some(d) = &self.details {
            problem["details"] = d.clone();
        }
        problem["error"] = error;
        problem
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.problem().to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_problem_documents_and_a_503_says_when_to_retry() {
        let e = ApiError::bad_request("data.amount", "must be a number");
        let p = e.problem();
        assert_eq!(p["type"], "urn:taskfactory:problem:invalid");
        assert_eq!((p["status"].as_u64(), p["title"].as_str(), p["field"].as_str()), (Some(400), Some("Bad Request"), Some("data.amount")));
        assert_eq!(p["error"]["message"], "must be a number", "the older shape is still there");
        let r = e.into_response();
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/problem+json");
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
        let r = ApiError::unavailable("the database is unavailable; retry later").into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
    }
}
