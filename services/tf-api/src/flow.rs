//! What flow control holds back (docs/flow-control.md): every limit and key with live holders
//! or waiters, busiest first, and who is next. The runs themselves, with why each waits, are in
//! `GET /runs?status=waiting`.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use tf_store::flow::Limits;

use crate::auth::Scope;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn limits(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Limits>, ApiError> {
    state.tokens.require(&headers, Scope::Read)?;
    Ok(Json(tf_store::flow::limits(&state.pool).await?))
}
