//! The API's table of operations, from which both the axum router and the OpenAPI 3.1 document
//! (`GET /openapi.json`) are built: a route cannot exist undocumented, nor a documented one
//! unrouted.

use axum::routing::{MethodRouter, delete, get, post};
use serde_json::{Map, Value, json};

use crate::auth::Scope;
use crate::{AppState, definitions, dlq, ingress, runs, tasks};

/// One operation: method, axum path, the scope it needs (`None`: open), what it does.
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub scope: Option<Scope>,
    pub summary: &'static str,
    /// Request body media types, if it takes one.
    pub body: &'static [&'static str],
    /// The success status.
    pub success: u16,
    pub handler: fn() -> MethodRouter<AppState>,
}

pub fn operations() -> Vec<Operation> {
    use Scope::*;
    vec![
        op("get", "/healthz", None, "Liveness (open).", &[], 200, || get(|| async { "ok\n" })),
        op("get", "/readyz", None, "Readiness (open).", &[], 200, || get(|| async { "ready\n" })),
        op("get", "/openapi.json", None, "This document (open).", &[], 200, || get(|| async { axum::Json(document()) })),
        op("get", "/definitions", Some(Read), "Latest version of each definition.", &[], 200, || get(definitions::list)),
        op(
            "post",
            "/definitions",
            Some(Write),
            "Apply definitions (YAML or JSON), with the CLI's semantics. With `If-Match: <ETag>` (or `*`) or `If-None-Match: *`, one definition is applied only if it is still as read (else 412).",
            YAML,
            200,
            || post(definitions::apply),
        ),
        op("post", "/definitions/validate", Some(Read), "Validate definitions; 422 lists every problem by field.", YAML, 200, || {
            post(definitions::validate)
        }),
        op(
            "get",
            "/definitions/{id}",
            Some(Read),
            "One definition version (`?version=N`, default latest, which carries an `ETag` for `If-Match`).",
            &[],
            200,
            || get(definitions::get_tagged),
        ),
        op("delete", "/definitions/{id}", Some(Write), "Retire a definition.", &[], 200, || delete(definitions::retire)),
        op("get", "/runs", Some(Read), "Runs, newest first, with filters and a cursor.", &[], 200, || get(runs::list)),
        op(
            "get",
            "/runs/{*run_id}",
            Some(Read),
            "One run's lineage: source, definition version, context, tasks, results.",
            &[],
            200,
            || get(runs::describe),
        ),
        op(
            "post",
            "/runs/{*run_id}",
            Some(Write),
            "`<run id>/retry` (a failed or cancelled run, next attempt) or `<run id>/cancel` ({reason}); 202 once Temporal took it.",
            JSON,
            202,
            || post(runs::act),
        ),
        op(
            "post",
            "/events/{topic}",
            Some(Ingest),
            "CloudEvents ingress: structured, binary (ce-* headers) or batch; 202 after the broker's ack.",
            &["application/cloudevents+json", "application/cloudevents-batch+json", "application/json"],
            202,
            || post(ingress::ingest),
        ),
        op("get", "/dead-letters", Some(Read), "Browse the DLQ: stage, reason, source, decoded event, redrive.", &[], 200, || {
            get(dlq::browse)
        }),
        op(
            "post",
            "/dead-letters/redrive",
            Some(Write),
            "Send dead letters back to their source topic, once per DLQ offset.",
            JSON,
            200,
            || post(dlq::redrive),
        ),
        op("get", "/tasks", Some(Tasks), "The human-task inbox.", &[], 200, || get(tasks::inbox)),
        op("post", "/tasks/{*path}", Some(Tasks), "`<task id>/claim`, `/complete` ({output}) or `/reject` ({reason}).", JSON, 200, || {
            post(tasks::act)
        }),
    ]
}

const YAML: &[&str] = &["application/yaml", "application/json"];
const JSON: &[&str] = &["application/json"];

#[allow(clippy::too_many_arguments)]
fn op(
    method: &'static str,
    path: &'static str,
    scope: Option<Scope>,
    summary: &'static str,
    body: &'static [&'static str],
    success: u16,
    handler: fn() -> MethodRouter<AppState>,
) -> Operation {
    Operation { method, path, scope, summary, body, success, handler }
}

/// The axum path `/runs/{*run_id}` as OpenAPI writes it: `/runs/{run_id}`.
fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
}

/// The OpenAPI 3.1 document of [`operations`].
pub fn document() -> Value {
    let error = json!({"description": "a problem document (RFC 9457)", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let unavailable = json!({"description": "a dependency is unavailable; retry after the `Retry-After` seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut paths: Map<String, Value> = Map::new();
    for o in operations() {
        let path = openapi_path(o.path);
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut responses = Map::new();
        let media = if o.path.ends_with("healthz") || o.path.ends_with("readyz") { "text/plain" } else { "application/json" };
        responses.insert(
            o.success.to_string(),
            json!({"description": "success", "content": {media: {"schema": crate::schemas::response(o.method, o.path)}}}),
        );
        for code in ["400", "404", "409", "413", "422"] {
            responses.insert(code.into(), error.clone());
        }
        responses.insert("503".into(), unavailable.clone());
        if (o.method, o.path) == ("post", "/definitions") {
            responses.insert("412".into(), error.clone());
        }
        if (o.method, o.path) == ("get", "/definitions/{id}") {
            responses[&o.success.to_string()]["headers"] =
                json!({"ETag": {"description": "the latest version's entity tag, for If-Match", "schema": {"type": "string"}}});
        }
        let mut operation = json!({
            "operationId": format!("{}{}", o.method, path.replace(['/', '{', '}', '.', '-'], "_")),
            "summary": o.summary,
            "parameters": params,
            "responses": responses,
        });
        match o.scope {
            None => operation["security"] = json!([]),
            Some(scope) => {
                operation["security"] = json!([{"bearer": [scope.as_str()]}]);
                operation["responses"]["401"] = error.clone();
                operation["responses"]["403"] = error.clone();
            }
        }
        if !o.body.is_empty() {
            let schemas = crate::schemas::request(o.method, o.path).unwrap_or_else(|| json!({}));
            let content: Map<String, Value> =
                o.body.iter().map(|m| (m.to_string(), schemas.get(*m).cloned().unwrap_or_else(|| json!({"schema": {}})))).collect();
            operation["requestBody"] = json!({"required": true, "content": content});
        }
        paths.entry(path).or_insert_with(|| json!({}))[o.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "task factory API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Definitions, runs with lineage, human tasks, dead letters and CloudEvents ingress. Bearer tokens carry scopes: read, write, ingest, tasks."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A token configured by its SHA-256 (tf-api hash-token); scopes: read, write, ingest, tasks."}},
            "schemas": {"Error": {"type": "object", "required": ["type", "title", "status", "detail", "code", "error"], "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"},
                "code": {"type": "string"}, "field": {"type": "string"}, "details": {},
                "error": {"type": "object", "required": ["code", "message"], "description": "the same, in the shape of versions before 0.2",
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}, "details": {}}}}}}
        },
        "security": [{"bearer": []}]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document is well formed OpenAPI 3.1 as far as its structure goes, and names every
    /// operation of the table (which is also what the router is built from).
    #[test]
    fn the_document_covers_every_operation() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
        let mut ids = std::collections::HashSet::new();
        for o in operations() {
            let op = &doc["paths"][openapi_path(o.path)][o.method];
            assert!(op.is_object(), "{} {} is missing", o.method, o.path);
            assert!(ids.insert(op["operationId"].as_str().unwrap().to_string()), "operationIds are unique");
            assert!(op["responses"][o.success.to_string()].is_object());
            for p in op["parameters"].as_array().unwrap() {
                assert!(openapi_path(o.path).contains(&format!("{{{}}}", p["name"].as_str().unwrap())), "{o:?}", o = o.path);
            }
            if o.scope.is_some() {
                assert!(op["responses"]["401"].is_object() && op["responses"]["403"].is_object());
            }
            // Every body has a real schema, not the catch-all.
            let success = op["responses"][o.success.to_string()]["content"].as_object().unwrap().values().next().unwrap();
            assert_ne!(success["schema"], json!({"type": "object"}), "{} {} has no response schema", o.method, o.path);
            for (media, body) in op["requestBody"]["content"].as_object().into_iter().flatten() {
                assert!(body["schema"].as_object().is_some_and(|s| !s.is_empty()), "{} {} {media} has no request schema", o.method, o.path);
            }
        }
        let methods: usize = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(methods, operations().len());
        assert!(!doc.to_string().contains("{*"), "axum wildcards are written as OpenAPI parameters");
    }
}
