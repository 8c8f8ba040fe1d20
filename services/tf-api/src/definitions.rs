//! `/definitions`: the CLI's semantics over HTTP. Applying stores a new version when the content
//! changed, switches `enabled` when only that changed, and does nothing otherwise; the worker's
//! reconciler brings cron definitions' Temporal Schedules in line.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tf_definitions::{Definition, Trigger};
use tf_store::definitions::{self, ApplyOutcome, NewDefinition, Precondition};

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

fn summary(d: &Definition) -> Value {
    let mut v = json!({"id": d.id, "name": d.name, "enabled": d.enabled, "trigger": d.trigger.kind(), "tasks": d.tasks.len()});
    if let Trigger::Cron(c) = &d.trigger {
        let next: Vec<String> = c.schedule.next_fire_times(chrono::Utc::now(), 5).iter().map(chrono::DateTime::to_rfc3339).collect();
        v["next_fire_times"] = json!(next);
    }
    v
}

pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    state.tokens.require(&headers, Scope::Read)?;
    let rows = definitions::latest(&state.pool).await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"id": r.id, "version": r.version, "name": r.name, "enabled": r.enabled, "retired": r.retired,
                   "trigger": r.trigger_kind, "created_at": r.created_at})
        })
        .collect();
    Ok(Json(json!({ "definitions": items })))
}

#[derive(Deserialize)]
pub struct VersionQuery {
    version: Option<i32>,
}

pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<Value>, ApiError> {
    state.tokens.require(&headers, Scope::Read)?;
    let Some(r) = definitions::get(&state.pool, &id, q.version).await? else {
        let version = q.version.map(|v| format!(" version {v}")).unwrap_or_default();
        return Err(ApiError::not_found(format!("no definition {id}{version}")));
    };
    let mut out = json!({"id": r.id, "version": r.version, "name": r.name, "enabled": r.enabled, "retired": r.retired,
                         "trigger": r.trigger_kind, "spec": r.spec, "spec_sha256": r.spec_sha256, "created_at": r.created_at});
    if q.version.is_none() {
        // The latest version: its tag is what a conditional apply compares with.
        out["etag"] = json!(definitions::etag(r.version, r.enabled, r.retired));
    }
    if let Ok(d) = Definition::from_spec_json(r.spec.clone())
        && let Some(next) = summary(&d).get("next_fire_times")
    {
        out["next_fire_times"] = next.clone();
    }
    Ok(Json(out))
}

/// [`get`] over HTTP: the latest version carries its entity tag as `ETag` too, for
/// `If-Match` on the next apply.
pub async fn get_tagged(
    state: State<AppState>,
    headers: HeaderMap,
    id: Path<String>,
    q: Query<VersionQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let Json(out) = get(state, headers, id, q).await?;
    let mut response = Json(&out).into_response();
    if let Some(tag) = out["etag"].as_str().and_then(|t| axum::http::HeaderValue::from_str(t).ok()) {
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

pub async fn validate(State(state): State<AppState>, headers: HeaderMap, body: String) -> Result<Json<Value>, ApiError> {
    state.tokens.require(&headers, Scope::Read)?;
    let defs = parse(&state, &body)?;
    Ok(Json(json!({"valid": true, "definitions": defs.iter().map(summary).collect::<Vec<_>>()})))
}

pub async fn apply(State(state): State<AppState>, headers: HeaderMap, body: String) -> Result<Json<Value>, ApiError> {
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
        let (what, version, previous) = match outcome {
            ApplyOutcome::Created { version } => ("created", version, None),
            ApplyOutcome::NewVersion { version, previous } => ("new_version", version, Some(previous)),
            ApplyOutcome::Unchanged { version } => ("unchanged", version, None),
            ApplyOutcome::Restored { version } => ("restored", version, None),
            ApplyOutcome::EnabledChanged { version, enabled } => (if enabled { "enabled" } else { "disabled" }, version, None),
        };
        state.metrics.definitions_applied.increment(1);
        tracing::info!(token = %caller.token, definition = %d.id, version, outcome = what, "definition applied");
        let enabled = match outcome {
            ApplyOutcome::EnabledChanged { enabled, .. } => enabled,
            _ => d.enabled,
        };
        let mut item = json!({"id": d.id, "outcome": what, "version": version, "etag": definitions::etag(version, enabled, false)});
        if let Some(p) = previous {
            item["previous_version"] = json!(p);
        }
        applied.push(item);
    }
    Ok(Json(json!({ "applied": applied })))
}

pub async fn retire(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let caller = state.tokens.require(&headers, Scope::Write)?;
    let n = definitions::retire(&state.pool, &id).await?;
    if n == 0 {
        return Err(ApiError::not_found(format!("no definition {id}")));
    }
    tracing::info!(token = %caller.token, definition = %id, versions = n, "definition retired");
    Ok(Json(json!({"retired": id, "versions": n})))
}
