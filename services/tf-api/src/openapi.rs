//! The API's table of operations, from which both the axum router and the OpenAPI 3.1 document
//! (`GET /openapi.json`) are built: a route cannot exist undocumented, nor a documented one
//! unrouted. Query parameters and body schemas are derived from the handlers' own types
//! (utoipa's `IntoParams` and `ToSchema`), so a field added to a handler's type is documented
//! by the same change.

use std::collections::BTreeMap;

use axum::routing::{MethodRouter, delete, get, post};
use serde_json::{Map, Value, json};
use utoipa::openapi::path::ParameterIn;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Scope;
use crate::{AppState, definitions, dlq, flow, ingress, runs, schedules, tasks};

/// Named schemas collected while the document is built (`components.schemas`).
type Schemas = BTreeMap<String, Value>;

/// A request body's media types and their schemas.
type Body = fn(&mut Schemas) -> Map<String, Value>;

/// One operation: method, path, the scope it needs (`None`: open), what it does, and the
/// types its parameters and bodies come from.
pub struct Operation {
    pub method: &'static str,
    /// As OpenAPI writes it: `/runs/{run_id}/retry`.
    pub path: &'static str,
    /// The axum route that serves it. Run and task ids hold `/`, so the actions on one share a
    /// wildcard route (`/runs/{*run_id}`) and the handler reads the action from the path's last
    /// segment; the document still has one operation per action.
    pub route: &'static str,
    pub operation_id: &'static str,
    pub scope: Option<Scope>,
    pub summary: &'static str,
    /// Request body media types and their schemas, if it takes one.
    pub body: Option<Body>,
    /// Whether the body may be left out (every field of it is optional).
    pub body_optional: bool,
    /// The success status.
    pub success: u16,
    pub response: fn(&mut Schemas) -> Value,
    pub query: fn() -> Vec<Value>,
    pub handler: fn() -> MethodRouter<AppState>,
}

impl Operation {
    fn new(
        method: &'static str,
        path: &'static str,
        operation_id: &'static str,
        scope: Option<Scope>,
        summary: &'static str,
        handler: fn() -> MethodRouter<AppState>,
    ) -> Operation {
        Operation {
            method,
            path,
            route: path,
            operation_id,
            scope,
            summary,
            body: None,
            body_optional: false,
            success: 200,
            response: |_| json!({"type": "string"}),
            query: Vec::new,
            handler,
        }
    }

    fn routed(self, route: &'static str) -> Operation {
        Operation { route, ..self }
    }

    fn status(self, success: u16) -> Operation {
        Operation { success, ..self }
    }

    fn returns<T: ToSchema>(self) -> Operation {
        Operation { response: schema_ref::<T>, ..self }
    }

    fn query<Q: IntoParams>(self) -> Operation {
        Operation { query: params::<Q>, ..self }
    }

    fn takes_json<T: ToSchema>(self) -> Operation {
        Operation { body: Some(|s| Map::from_iter([("application/json".to_string(), json!({"schema": schema_ref::<T>(s)}))])), ..self }
    }

    /// A JSON body of `T` that may be left out.
    fn may_take_json<T: ToSchema>(self) -> Operation {
        Operation { body_optional: true, ..self.takes_json::<T>() }
    }

    fn takes(self, body: Body) -> Operation {
        Operation { body: Some(body), ..self }
    }

    /// The success body's media type.
    fn media(&self) -> &'static str {
        if matches!(self.path, "/healthz" | "/readyz") { "text/plain" } else { "application/json" }
    }
}

/// `T`'s schema by reference, with it and every schema it names added to `schemas`.
fn schema_ref<T: ToSchema>(schemas: &mut Schemas) -> Value {
    let mut named = Vec::new();
    T::schemas(&mut named);
    for (name, schema) in named {
        schemas.insert(name, serde_json::to_value(schema).expect("a schema serializes"));
    }
    let name = T::name().to_string();
    schemas.insert(name.clone(), serde_json::to_value(T::schema()).expect("a schema serializes"));
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn params<Q: IntoParams>() -> Vec<Value> {
    Q::into_params(|| Some(ParameterIn::Query)).into_iter().map(|p| serde_json::to_value(p).expect("a parameter serializes")).collect()
}

pub fn operations() -> Vec<Operation> {
    use Scope::*;
    vec![
        Operation::new("get", "/healthz", "healthz", None, "Liveness (open).", || get(|| async { "ok\n" })),
        Operation::new("get", "/readyz", "readyz", None, "Readiness (open).", || get(|| async { "ready\n" })),
        Operation {
            response: |_| json!({"type": "object", "required": ["openapi", "info", "paths"]}),
            ..Operation::new("get", "/openapi.json", "openapi", None, "This document (open).", || get(|| async { axum::Json(document()) }))
        },
        Operation::new("get", "/definitions", "list_definitions", Some(Read), "Latest version of each definition, by id, with a cursor.", || {
            get(definitions::list)
        })
        .query::<definitions::ListQuery>()
        .returns::<definitions::DefinitionPage>(),
        Operation::new(
            "post",
            "/definitions",
            "apply_definitions",
            Some(Write),
            "Apply definitions (YAML or JSON), with the CLI's semantics. With `If-Match: <ETag>` (or `*`) or `If-None-Match: *`, one definition is applied only if it is still as read (else 412).",
            || post(definitions::apply),
        )
        .takes(definitions_body)
        .returns::<definitions::ApplyResult>(),
        Operation::new(
            "post",
            "/definitions/validate",
            "validate_definitions",
            Some(Read),
            "Validate definitions; 422 lists every problem by field.",
            || post(definitions::validate),
        )
        .takes(definitions_body)
        .returns::<definitions::Validation>(),
        Operation::new(
            "get",
            "/definitions/{id}",
            "get_definition",
            Some(Read),
            "One definition version (default the latest, which carries an `ETag` for `If-Match`).",
            || get(definitions::get_tagged),
        )
        .query::<definitions::VersionQuery>()
        .returns::<definitions::DefinitionVersion>(),
        Operation::new("delete", "/definitions/{id}", "retire_definition", Some(Write), "Retire a definition.", || delete(definitions::retire))
            .returns::<definitions::Retired>(),
        Operation::new(
            "get",
            "/definitions/{id}/schedule",
            "get_schedule",
            Some(Read),
            "A time-triggered definition's Temporal Schedule: paused (with its note), runs started, recent and next fires.",
            || get(schedules::show),
        )
        .returns::<tf_temporal::schedule_control::ScheduleView>(),
        Operation::new(
            "post",
            "/definitions/{id}/schedule/pause",
            "pause_schedule",
            Some(Write),
            "Pause the schedule with a note (kept until an operator resumes it; the reconciler never does).",
            || post(schedules::pause),
        )
        .may_take_json::<schedules::PauseBody>()
        .returns::<schedules::ScheduleActionOutcome>(),
        Operation::new("post", "/definitions/{id}/schedule/resume", "resume_schedule", Some(Write), "Resume a paused schedule.", || {
            post(schedules::resume)
        })
        .returns::<schedules::ScheduleActionOutcome>(),
        Operation::new(
            "post",
            "/definitions/{id}/schedule/trigger",
            "trigger_schedule",
            Some(Write),
            "Start one run now (its scheduled time is now).",
            || post(schedules::trigger),
        )
        .returns::<schedules::ScheduleActionOutcome>(),
        Operation::new(
            "post",
            "/definitions/{id}/schedule/backfill",
            "backfill_schedule",
            Some(Write),
            "Run every fire from `from` to `to`, both included (at most 366 days); 202 once Temporal took it. Progress: `actions` of GET .../schedule against `actions_before`.",
            || post(schedules::backfill),
        )
        .takes_json::<schedules::BackfillBody>()
        .status(202)
        .returns::<schedules::ScheduleActionOutcome>(),
        Operation::new("get", "/runs", "list_runs", Some(Read), "Runs, newest first, with filters and a cursor.", || get(runs::list))
            .query::<runs::ListQuery>()
            .returns::<runs::RunPage>(),
        Operation::new(
            "get",
            "/runs/{run_id}",
            "get_run",
            Some(Read),
            "One run's lineage: source, definition version, context, tasks, results.",
            || get(runs::describe),
        )
        .routed("/runs/{*run_id}")
        .returns::<tf_store::runs::RunLineage>(),
        Operation::new(
            "post",
            "/runs/{run_id}/retry",
            "retry_run",
            Some(Write),
            "Start the next attempt of a failed or cancelled run; 202 once Temporal took it.",
            || post(runs::act),
        )
        .routed("/runs/{*run_id}")
        .may_take_json::<runs::ReasonBody>()
        .status(202)
        .returns::<runs::RunActionOutcome>(),
        Operation::new("post", "/runs/{run_id}/cancel", "cancel_run", Some(Write), "Cancel a running run; 202 once Temporal took it.", || {
            post(runs::act)
        })
        .routed("/runs/{*run_id}")
        .may_take_json::<runs::ReasonBody>()
        .status(202)
        .returns::<runs::RunActionOutcome>(),
        Operation::new(
            "post",
            "/events/{topic}",
            "ingest_events",
            Some(Ingest),
            "CloudEvents ingress: structured, binary (ce-* headers) or batch; 202 after the broker's ack.",
            || post(ingress::ingest),
        )
        .takes(cloudevents_body)
        .status(202)
        .returns::<ingress::AcceptedEvents>(),
        Operation::new(
            "get",
            "/dead-letters",
            "list_dead_letters",
            Some(Read),
            "Browse the DLQ: stage, reason, source, decoded event, redrive; in (partition, offset) order with a cursor.",
            || get(dlq::browse),
        )
        .query::<dlq::Filter>()
        .returns::<dlq::DeadLetterPage>(),
        Operation::new(
            "post",
            "/dead-letters/redrive",
            "redrive_dead_letters",
            Some(Write),
            "Send dead letters back to their source topic, once per DLQ offset.",
            || post(dlq::redrive),
        )
        .takes_json::<dlq::RedriveRequest>()
        .returns::<dlq::RedriveResult>(),
        Operation::new(
            "get",
            "/flow/limits",
            "flow_limits",
            Some(Read),
            "Flow-control limits holding or queueing work now: held/capacity, waiting, next in line (at most 500, most waiters first).",
            || get(flow::limits),
        )
        .returns::<tf_store::flow::Limits>(),
        Operation::new("get", "/tasks", "list_tasks", Some(Tasks), "The human-task inbox, oldest first, with a cursor.", || get(tasks::inbox))
            .query::<tasks::InboxQuery>()
            .returns::<tasks::TaskPage>(),
        Operation::new("post", "/tasks/{task_id}/claim", "claim_task", Some(Tasks), "Claim a human task for the caller.", || {
            post(tasks::act)
        })
        .routed("/tasks/{*task_id}")
        .returns::<tasks::TaskActionOutcome>(),
        Operation::new(
            "post",
            "/tasks/{task_id}/complete",
            "complete_task",
            Some(Tasks),
            "Complete a human task with its `output` (any JSON).",
            || post(tasks::act),
        )
        .routed("/tasks/{*task_id}")
        .takes_json::<tasks::DecisionBody>()
        .returns::<tasks::TaskActionOutcome>(),
        Operation::new("post", "/tasks/{task_id}/reject", "reject_task", Some(Tasks), "Reject a human task with a `reason`.", || {
            post(tasks::act)
        })
        .routed("/tasks/{*task_id}")
        .takes_json::<tasks::DecisionBody>()
        .returns::<tasks::TaskActionOutcome>(),
    ]
}

fn definitions_body(_: &mut Schemas) -> Map<String, Value> {
    Map::from_iter([
        (
            "application/yaml".to_string(),
            json!({"schema": {"type": "string", "description": "one or more definition documents (YAML, or JSON)"}}),
        ),
        (
            "application/json".to_string(),
            json!({"schema": {"oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]}}),
        ),
    ])
}

/// The CloudEvents 1.0 attributes the ingress requires (structured mode). The ingress parses
/// events by hand (to name the failing field of a batch), so this schema is written here.
fn cloudevent() -> Value {
    json!({"type": "object", "required": ["specversion", "id", "source", "type"], "properties": {
        "specversion": {"const": "1.0"}, "id": {"type": "string"}, "source": {"type": "string"}, "type": {"type": "string"},
        "subject": {"type": "string"}, "time": {"type": "string", "format": "date-time"}, "datacontenttype": {"type": "string"},
        "data": {}, "partitionkey": {"type": "string"}}})
}

fn cloudevents_body(_: &mut Schemas) -> Map<String, Value> {
    Map::from_iter([
        ("application/cloudevents+json".to_string(), json!({"schema": cloudevent()})),
        ("application/cloudevents-batch+json".to_string(), json!({"schema": {"type": "array", "items": cloudevent(), "maxItems": 1000}})),
        (
            "application/json".to_string(),
            json!({"schema": {"description": "binary mode: the event's data; its attributes come in ce-* headers"}}),
        ),
    ])
}

/// The path parameters of an OpenAPI path.
fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            let description = match name {
                "run_id" | "task_id" => "holds `/`; send it as is or percent-encoded",
                _ => "",
            };
            json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
        })
        .collect()
}

/// The OpenAPI 3.1 document of [`operations`].
pub fn document() -> Value {
    let error = json!({"description": "a problem document (RFC 9457)", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let unavailable = json!({"description": "a dependency is unavailable; retry after the `Retry-After` seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut schemas = Schemas::new();
    let mut paths: Map<String, Value> = Map::new();
    for o in operations() {
        let mut parameters = path_params(o.path);
        parameters.extend((o.query)());
        let mut responses = Map::new();
        let mut success = json!({"description": "success", "content": {o.media(): {"schema": (o.response)(&mut schemas)}}});
        if o.operation_id == "get_definition" {
            success["headers"] =
                json!({"ETag": {"description": "the latest version's entity tag, for If-Match", "schema": {"type": "string"}}});
        }
        responses.insert(o.success.to_string(), success);
        for code in ["400", "404", "409", "413", "422"] {
            responses.insert(code.into(), error.clone());
        }
        responses.insert("503".into(), unavailable.clone());
        if o.operation_id == "apply_definitions" {
            responses.insert("412".into(), error.clone());
        }
        let mut operation = json!({
            "operationId": o.operation_id,
            "summary": o.summary,
            "parameters": parameters,
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
        if let Some(body) = o.body {
            let content = body(&mut schemas);
            operation["requestBody"] = json!({"required": !o.body_optional, "content": content});
        }
        paths.entry(o.path.to_string()).or_insert_with(|| json!({}))[o.method] = operation;
    }
    schemas.insert("Error".into(), error_schema());
    json!({
        "openapi": "3.1.0",
        "info": {"title": "task factory API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Definitions, runs with lineage, human tasks, dead letters and CloudEvents ingress. Bearer tokens carry scopes: read, write, ingest, tasks. Every list pages with `limit` and `cursor` (the previous page's `next_cursor`)."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A token configured by its SHA-256 (tf-api hash-token); scopes: read, write, ingest, tasks."}},
            "schemas": schemas,
        },
        "security": [{"bearer": []}]
    })
}

fn error_schema() -> Value {
    json!({"type": "object", "required": ["type", "title", "status", "detail", "code", "error"], "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"},
        "code": {"type": "string"}, "field": {"type": "string"}, "details": {},
        "error": {"type": "object", "required": ["code", "message"], "description": "the same, in the shape of versions before 0.2",
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}, "details": {}}}}})
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
            let op = &doc["paths"][o.path][o.method];
            assert!(op.is_object(), "{} {} is missing", o.method, o.path);
            assert!(ids.insert(op["operationId"].as_str().unwrap().to_string()), "operationIds are unique");
            assert!(op["responses"][o.success.to_string()].is_object());
            for p in op["parameters"].as_array().unwrap().iter().filter(|p| p["in"] == "path") {
                assert!(o.path.contains(&format!("{{{}}}", p["name"].as_str().unwrap())), "{}", o.path);
            }
            if o.scope.is_some() {
                assert!(op["responses"]["401"].is_object() && op["responses"]["403"].is_object());
            }
            // Every $ref names a schema of the document.
            for r in refs(op) {
                let name = r.strip_prefix("#/components/schemas/").unwrap();
                assert!(doc["components"]["schemas"][name].is_object(), "{} {} refers to {r}, which is missing", o.method, o.path);
            }
            // The route serves the path: a wildcard route covers the path's tail.
            let prefix = o.route.split("{*").next().unwrap();
            assert!(o.path.starts_with(prefix), "{} is not served by {}", o.path, o.route);
        }
        let methods: usize = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(methods, operations().len());
        assert!(!doc.to_string().contains("{*"), "axum wildcards are written as OpenAPI parameters");
    }

    /// Each list takes `limit` and `cursor` and answers `next_cursor`: one pagination for all.
    #[test]
    fn every_list_pages_with_one_cursor() {
        let doc = document();
        for o in operations().iter().filter(|o| o.method == "get" && o.operation_id.starts_with("list_")) {
            let names: Vec<&str> =
                doc["paths"][o.path]["get"]["parameters"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
            assert!(names.contains(&"limit") && names.contains(&"cursor"), "{}: {names:?}", o.path);
            let page = doc["paths"][o.path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].as_str().unwrap();
            let page = &doc["components"]["schemas"][page.rsplit('/').next().unwrap()];
            assert!(page["properties"]["next_cursor"].is_object(), "{}: {page}", o.path);
        }
    }

    /// The filters of `GET /runs` are in the document with their types, not only in the code.
    #[test]
    fn query_parameters_come_from_the_handlers_types() {
        let doc = document();
        let params = doc["paths"]["/runs"]["get"]["parameters"].as_array().unwrap();
        let status = params.iter().find(|p| p["name"] == "status").expect("status is documented");
        assert_eq!(status["in"], "query");
        assert!(status.to_string().contains("completed"), "the status enum is documented: {status}");
        for name in ["definition", "key", "trigger", "since", "until", "limit", "cursor"] {
            assert!(params.iter().any(|p| p["name"] == name), "{name} is missing");
        }
    }

    fn refs(v: &Value) -> Vec<String> {
        match v {
            Value::Object(m) => {
                m.iter().flat_map(|(k, v)| if k == "$ref" { vec![v.as_str().unwrap().to_string()] } else { refs(v) }).collect()
            }
            Value::Array(a) => a.iter().flat_map(refs).collect(),
            _ => vec![],
        }
    }
}
