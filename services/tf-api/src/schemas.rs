//! JSON Schemas of request and response bodies, for the OpenAPI document. The integration
//! tests check every answer they get against these, so a handler that changes its shape
//! without this file fails them.

use serde_json::{Value, json};

fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}

fn list_of(key: &str, item: Value) -> Value {
    object(&[key], json!({ key: {"type": "array", "items": item} }))
}

const STR: &str = "string";

fn t(kind: &str) -> Value {
    json!({ "type": kind })
}

fn nullable(kind: &str) -> Value {
    json!({ "type": [kind, "null"] })
}

fn definition_row() -> Value {
    object(
        &["id", "version", "name", "enabled", "retired", "trigger", "created_at"],
        json!({"id": t(STR), "version": t("integer"), "name": t(STR), "enabled": t("boolean"), "retired": t("boolean"),
               "trigger": {"enum": ["event", "cron"]}, "created_at": t(STR)}),
    )
}

fn run_row() -> Value {
    object(
        &["run_id", "definition_id", "definition_version", "dedupe_key", "generation", "attempt", "status", "trigger_kind", "fired_at"],
        json!({"run_id": t(STR), "definition_id": t(STR), "definition_version": t("integer"), "dedupe_key": t(STR),
               "generation": t("integer"), "attempt": t("integer"), "trigger_kind": {"enum": ["event", "cron"]},
               "status": {"enum": ["running", "completed", "failed", "cancelled", "deduplicated"]},
               "source_topic": nullable(STR), "source_partition": nullable("integer"), "source_offset": nullable("integer"),
               "event_id": nullable(STR), "schedule_id": nullable(STR), "scheduled_for": nullable(STR), "fired_at": t(STR),
               "finished_at": nullable(STR), "tasks_spawned": t("integer"), "temporal_ui": t(STR)}),
    )
}

fn task_row() -> Value {
    object(
        &["task_id", "run_id", "definition_id", "status", "params", "created_at"],
        json!({"task_id": t(STR), "run_id": t(STR), "definition_id": t(STR), "definition_version": t("integer"),
               "template": t(STR), "index": t("integer"), "status": t(STR), "params": {}, "claimed_by": nullable(STR),
               "claimed_at": nullable(STR), "created_at": t(STR), "output": {}, "error": nullable(STR)}),
    )
}

fn coordinates() -> Value {
    object(&["partition", "offset"], json!({"partition": t("integer"), "offset": t("integer")}))
}

/// The CloudEvents 1.0 attributes the ingress requires (structured mode).
fn cloudevent() -> Value {
    object(
        &["specversion", "id", "source", "type"],
        json!({"specversion": {"const": "1.0"}, "id": t(STR), "source": t(STR), "type": t(STR), "subject": t(STR),
               "time": {"type": "string", "format": "date-time"}, "datacontenttype": t(STR), "data": {},
               "partitionkey": t(STR)}),
    )
}

/// The request body's schema per media type, for operations that take one.
pub fn request(method: &str, path: &str) -> Option<Value> {
    let definitions_text = json!({"type": "string", "description": "one or more definition documents (YAML, or JSON)"});
    Some(match (method, path) {
        ("post", "/definitions") | ("post", "/definitions/validate") => {
            json!({"application/yaml": {"schema": definitions_text}, "application/json": {"schema": {"type": ["object", "array"]}}})
        }
        ("post", "/runs/{*run_id}") => {
            json!({"application/json": {"schema": {"type": "object", "properties": {"reason": {"type": "string", "maxLength": 1024}}}}})
        }
        ("post", "/events/{topic}") => json!({
            "application/cloudevents+json": {"schema": cloudevent()},
            "application/cloudevents-batch+json": {"schema": {"type": "array", "items": cloudevent(), "maxItems": 1000}},
            "application/json": {"schema": {"description": "binary mode: the event's data; its attributes come in ce-* headers"}},
        }),
        ("post", "/dead-letters/redrive") => json!({"application/json": {"schema": {"type": "object", "properties": {
            "records": {"type": "array", "items": coordinates()}, "topic": t(STR), "stage": t(STR), "limit": t("integer")}}}}),
        ("post", "/tasks/{*path}") => json!({"application/json": {"schema": {"type": "object", "properties": {
            "output": {"description": "complete: the task's output, any JSON"}, "reason": {"type": "string", "description": "reject: why"}}}}}),
        _ => return None,
    })
}

/// The success body's schema.
pub fn response(method: &str, path: &str) -> Value {
    match (method, path) {
        ("get", "/healthz") | ("get", "/readyz") => json!({"type": "string"}),
        ("get", "/openapi.json") => object(&["openapi", "info", "paths"], json!({})),
        ("get", "/definitions") => list_of("definitions", definition_row()),
        ("post", "/definitions") => list_of(
            "applied",
            object(
                &["id", "outcome", "version"],
                json!({"id": t(STR), "version": t("integer"), "previous_version": t("integer"),
                "outcome": {"enum": ["created", "new_version", "unchanged", "enabled", "disabled", "restored"]}}),
            ),
        ),
        ("post", "/definitions/validate") => object(
            &["valid", "definitions"],
            json!({"valid": {"const": true}, "definitions": {"type": "array", "items": object(&["id", "name", "enabled", "trigger", "tasks"],
                json!({"id": t(STR), "name": t(STR), "enabled": t("boolean"), "trigger": t(STR), "tasks": t("integer"),
                       "next_fire_times": {"type": "array", "items": t(STR)}}))}}),
        ),
        ("get", "/definitions/{id}") => {
            let mut d = definition_row();
            d["required"].as_array_mut().expect("required").extend([json!("spec"), json!("spec_sha256")]);
            d["properties"]["spec"] = t("object");
            d["properties"]["spec_sha256"] = t(STR);
            d["properties"]["next_fire_times"] = json!({"type": "array", "items": t(STR)});
            d
        }
        ("delete", "/definitions/{id}") => object(&["retired", "versions"], json!({"retired": t(STR), "versions": t("integer")})),
        ("get", "/runs") => {
            let mut l = list_of("runs", run_row());
            l["required"].as_array_mut().expect("required").push(json!("next_cursor"));
            l["properties"]["next_cursor"] = nullable(STR);
            l
        }
        ("get", "/runs/{*run_id}") => object(
            &["run_id", "definition", "dedupe_key", "generation", "attempt", "status", "source", "tasks", "results", "temporal_ui"],
            json!({"run_id": t(STR), "definition": object(&["id", "version"], json!({"id": t(STR), "version": t("integer")})),
                   "dedupe_key": t(STR), "generation": t("integer"), "attempt": t("integer"), "status": t(STR),
                   "source": object(&["kind"], json!({"kind": {"enum": ["event", "cron"]}, "topic": nullable(STR),
                       "partition": nullable("integer"), "offset": nullable("integer"), "event_id": nullable(STR),
                       "schedule_id": nullable(STR), "scheduled_for": nullable(STR)})),
                   "context": {}, "context_sources": {}, "tasks": {"type": "array", "items": object(&["task_id", "status"], json!({}))},
                   "results": {"type": "array", "items": object(&["task_id", "status"], json!({"partition": nullable("integer"), "offset": nullable("integer")}))},
                   "temporal_ui": t(STR)}),
        ),
        ("post", "/runs/{*run_id}") => object(
            &["run_id", "action", "outcome"],
            json!({"run_id": t(STR), "action": {"enum": ["retry", "cancel"]}, "outcome": {"enum": ["retry started", "cancel requested"]}}),
        ),
        ("post", "/events/{topic}") => list_of(
            "accepted",
            object(
                &["id", "topic", "partition", "offset"],
                json!({"id": t(STR), "topic": t(STR), "partition": t("integer"), "offset": t("integer")}),
            ),
        ),
        ("get", "/dead-letters") => {
            let mut l = list_of(
                "dead_letters",
                object(
                    &["partition", "offset", "stage", "reason", "source", "bytes"],
                    json!({"partition": t("integer"), "offset": t("integer"),
                    "stage": nullable(STR), "reason": nullable(STR), "source": t("object"), "bytes": t("integer"), "event": {},
                    "decode_error": nullable(STR), "redrive": {}}),
                ),
            );
            l["required"].as_array_mut().expect("required").push(json!("topic"));
            l["properties"]["topic"] = t(STR);
            l
        }
        ("post", "/dead-letters/redrive") => object(
            &["redriven", "skipped"],
            json!({"redriven": {"type": "array", "items": object(&["dead_letter", "topic", "partition", "offset"], json!({}))},
                   "skipped": {"type": "array", "items": object(&["dead_letter", "reason"], json!({}))}}),
        ),
        ("get", "/tasks") => list_of("tasks", task_row()),
        ("post", "/tasks/{*path}") => object(
            &["task_id"],
            json!({"task_id": t(STR), "claimed_by": t(STR),
            "decision": {"enum": ["complete", "reject"]}, "by": t(STR)}),
        ),
        _ => json!({"type": "object"}),
    }
}
