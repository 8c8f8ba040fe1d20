//! `/definitions`: the CLI's semantics over HTTP. Applying stores a new version when the content
//! changed, switches `enabled` when only that changed, and does nothing otherwise; the worker's
//! reconciler brings cron definitions' Temporal Schedules in line.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tf_definitions::Definition;
use tf_store::definitions::{self, NewDefinition, Precondition, StoredDefinition};
pub use tf_store::definitions::{Applied, ApplyResult, DefinitionCheck, DefinitionSummary, DefinitionVersion, Retired, Validation};

use crate::auth::Scope;
use crate::error::ApiError;
use crate::state::AppState;

/// Parses a YAML (or JSON) body of one or more definitions, checking datasource names when the
/// API sees a datasource configuration; every problem is in the error's `details`.
fn parse(state: &AppState, body: &str) -> Result<Vec<Definition>, ApiError> {
    if body.trim().is_empty() {
        return Err(ApiError::bad_request("body", "the body must hold a definition (YAML or JSON)"));
    }
    let invalid = |e: tf_definitions::InvalidDefinition| {
        let details: Vec<Value> = e.errors.iter().map(|f| json!({"field": f.path, "message": f.message})).collect();
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_definition", e.to_string()).with_details(Value::Array(details))
    };
    let defs = Definition::from_yaml("request body", body).map_err(invalid)?;
    if let Some(ds) = &state.datasources {
        for d in &defs {
            let errors = d.check_datasources(|n| ds.get(n).map(tf_config::Datasource::kind), &ds.describe());
            if !errors.is_empty() {
                return Err(invalid(tf_definitions::InvalidDefinition { origin: format!("definition {}", d.id), errors }));
            }
        }
    }
    Ok(defs)
}

/// A page of definitions (latest version each), by id.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct DefinitionPage {
    pub definitions: Vec<DefinitionSummary>,
    /// The next page's `cursor`; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /definitions` query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to 500 (default 100).
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DefinitionPage>, ApiError> {
    state.tokens.require(&headers, Scope::Read)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    let limit = crate::error::page_limit(q.limit, 100)? as usize;
    let after = crate::error::page_cursor(q.cursor.as_deref())?;
    // Definitions are few (one row per id), so the page is cut here rather than in SQL.
    let mut rows = definitions::latest(&state.pool).await?;
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    let rest: Vec<&StoredDefinition> = rows.iter().filter(|r| after.as_ref().is_none_or(|c| r.id > c.id)).collect();
    let next = (rest.len() > limit).then(|| tf_store::Cursor { micros: 0, id: rest[limit - 1].id.clone() }.to_string());
    Ok(Json(DefinitionPage { definitions: rest.into_iter().take(limit).map(DefinitionSummary::from).collect(), next_cursor: next }))
}

/// `GET /definitions/{id}` query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VersionQuery {
    /// This version (default: the latest).
    version: Option<i32>,
}

pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<VersionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DefinitionVersion>, ApiError> {
    state.tokens.require(&headers, Scope::Read)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    let Some(r) = definitions::get(&state.pool, &id, q.version).await? else {
        let version = q.version.map(|v| format!(" version {v}")).unwrap_or_default();
        return Err(ApiError::not_found(format!("no definition {id}{version}")));
    };
    // The latest version: its tag is what a conditional apply compares with.
    let etag = q.version.is_none().then(|| definitions::etag(r.version, r.enabled, r.retired));
    let next_fire_times = Definition::from_spec_json(r.spec.clone()).ok().as_ref().and_then(definitions::next_fire_times);
    Ok(Json(DefinitionVersion { summary: DefinitionSummary::from(&r), spec: r.spec, spec_sha256: r.spec_sha256, etag, next_fire_times }))
}

/// [`get`] over HTTP: the latest version carries its entity tag as `ETag` too, for
/// `If-Match` on the next apply.
pub async fn get_tagged(
    state: State<AppState>,
    headers: HeaderMap,
    id: Path<String>,
    q: Result<Query<VersionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let Json(out) = get(state, headers, id, q).await?;
    let mut response = Json(&out).into_response();
    if let Some(tag) = out.etag.as_deref().and_then(|t| axum::http::HeaderValue::from_str(t).ok()) {
        response.headers_mut().insert(axum::http::header::ETAG, tag);
    }
    Ok(response)
}

/// The precondition of an apply from `If-Match` / `If-None-Match` (RFC 9110): a list of entity
/// tags or `*`. Weak tags never match (a definition's tags are strong).
fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let text = |name: &str| -> Result<Option<String>, ApiError> {
        headers
            .get(name)
            .map(|v| v.to_str().map(|s| s.trim().to_string()).map_err(|_| ApiError::bad_request(name, "must be visible ASCII")))
            .transpose()
    };
    match (text("if-match")?, text("if-none-match")?) {
        (Some(_), Some(_)) => Err(ApiError::bad_request("if-none-match", "send If-Match or If-None-Match, not both")),
        (Some(m), None) if m == "*" => Ok(Precondition::Exists),
        (Some(m), None) => {
            let tags: Vec<String> = m.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
            if tags.is_empty() || tags.iter().any(|t| !(t.starts_with('"') || t.starts_with("W/\"")) || !t.ends_with('"')) {
                return Err(ApiError::bad_request("if-match", "must be * or quoted entity tags (the ETag of GET /definitions/{id})"));
            }
            Ok(Precondition::Matches(tags))
        }
        (None, Some(n)) if n == "*" => Ok(Precondition::Absent),
        (None, Some(_)) => Err(ApiError::bad_request("if-none-match", "only * is supported: apply only if the definition does not exist")),
        (None, None) => Ok(Precondition::None),
    }
}

pub async fn validate(State(state): State<AppState>, headers: HeaderMap, body: String) -> Result<Json<Validation>, ApiError> {
    state.tokens.require(&headers, Scope::Read)?;
    let defs = parse(&state, &body)?;
    Ok(Json(Validation { valid: true, definitions: defs.iter().map(DefinitionCheck::of).collect() }))
}

pub async fn apply(State(state): State<AppState>, headers: HeaderMap, body: String) -> Result<Json<ApplyResult>, ApiError> {
    let caller = state.tokens.require(&headers, Scope::Write)?;
    let pre = precondition(&headers)?;
    let defs = parse(&state, &body)?;
    if pre != Precondition::None && defs.len() != 1 {
        return Err(ApiError::bad_request("if-match", format!("a precondition applies to one definition; the body holds {}", defs.len())));
    }
    let mut applied = Vec::new();
    for d in &defs {
        let spec = d.spec_json();
        let sha = d.spec_sha256();
        let outcome = definitions::apply_if(
            &state.pool,
            &NewDefinition { id: &d.id, name: &d.name, enabled: d.enabled, trigger_kind: d.trigger.kind(), spec: &spec, spec_sha256: &sha },
            &pre,
        )
        .await?;
        let item = Applied::of(&d.id, &outcome, d.enabled);
        state.metrics.definitions_applied.increment(1);
        tracing::info!(token = %caller.token, definition = %d.id, version = item.version, outcome = %item.outcome, "definition applied");
        applied.push(item);
    }
    Ok(Json(ApplyResult { applied }))
}

pub async fn retire(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<Retired>, ApiError> {
    let caller = state.tokens.require(&headers, Scope::Write)?;
    let n = definitions::retire(&state.pool, &id).await?;
    if n == 0 {
        return Err(ApiError::not_found(format!("no definition {id}")));
    }
    tracing::info!(token = %caller.token, definition = %id, versions = n, "definition retired");
    Ok(Json(Retired { retired: id, versions: n }))
}
