//! What flow control holds back (docs/flow-control.md): every limit and key with live holders
//! or waiters, busiest first, and who is next. The runs themselves, with why each waits, are in
//! `GET /runs?status=waiting`.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;
use tf_store::flow::LimitView;

use crate::auth::Scope;
use crate::error::ApiError;
use crate::state::AppState;

/// At most 500 limits and keys, those with the most waiters first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Limits {
    pub limits: Vec<LimitView>,
}

pub async fn limits(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Limits>, ApiError> {
    state.tokens.require(&headers, Scope::Read)?;
    Ok(Json(Limits { limits: tf_store::flow::limits(&state.pool).await? }))
}
