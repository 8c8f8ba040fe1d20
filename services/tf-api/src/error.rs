//! Every error the API answers with: a status and a JSON body naming what was wrong.
//! `{"error": {"code": "invalid", "message": "...", "field": "data.amount"}}`

use axum::http::StatusCode;
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

impl From<tf_store::StoreError> for ApiError {
    fn from(e: tf_store::StoreError) -> ApiError {
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(f) = self.field {
            error["field"] = json!(f);
        }
        if let Some(d) = self.details {
            error["details"] = d;
        }
        (self.status, axum::Json(json!({ "error": error }))).into_response()
    }
}
