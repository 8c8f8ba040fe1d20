//! docs/definitions.md is the definition reference: every complete definition in it must parse,
//! and every field, task type and param the code knows must be in it.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use tf_definitions::Definition;
use tf_definitions::definition::{HTTP_TASK_PARAMS, KAFKA_TASK_PARAMS};

const REFERENCE: &str = include_str!("../../../docs/definitions.md");

fn yaml_blocks() -> Vec<&'static str> {
    REFERENCE.split("```yaml\n").skip(1).filter_map(|b| b.split("\n```").next()).collect()
}

#[test]
fn every_example_in_the_reference_is_a_valid_definition() {
    let examples: Vec<&str> = yaml_blocks().into_iter().filter(|b| b.starts_with("id:")).collect();
    assert!(examples.len() >= 7, "found {} examples", examples.len());
    let mut ids = Vec::new();
    for (i, text) in examples.iter().enumerate() {
        let parsed = Definition::from_yaml(&format!("docs/definitions.md example {}", i + 1), text);
        let d = parsed.unwrap_or_else(|e| panic!("{e}\n{text}")).remove(0);
        ids.push(d.id);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(ids.len(), unique.len(), "example ids are distinct: {ids:?}");
}

#[test]
fn the_reference_names_every_field_task_type_and_param() {
    let fields = [
        "id",
        "name",
        "enabled",
        "trigger",
        "dedupe",
        "key",
        "window",
        "context",
        "tasks",
        "topics",
        "type",
        "filter",
        "expression",
        "timezone",
        "jitter",
        "catchup_window",
        "overlap",
        "start",
        "end",
        "static",
        "sql",
        "http",
        "datasource",
        "query",
        "params",
        "cache",
        "method",
        "url",
        "body",
        "text",
        "headers",
        "timeout",
        "expect",
        "when",
        "for_each",
        "retry",
        "max_attempts",
        "initial_interval",
        "max_interval",
        "backoff",
        "on_timeout",
        "timeout_output",
        "execution",
        "flow_control",
        "concurrency",
        "throttle",
        "rate_limit",
        "priority",
        "limit",
        "period",
        "burst",
        "budget",
        "singleton",
        "mode",
        "debounce",
        "max_wait",
        "batch",
        "max_size",
        "events",
        "after",
        "always",
        "cancel_on",
        "match",
        "incoming",
        "run",
        "event",
        "every",
        "offset",
        "misfire",
    ];
    for f in fields {
        assert!(REFERENCE.contains(&format!("`{f}`")), "docs/definitions.md does not describe `{f}`");
    }
    for misfire in ["skip", "once", "all"] {
        assert!(REFERENCE.contains(&format!("| `{misfire}` |")), "misfire {misfire} has no row");
    }
    for overlap in ["skip", "buffer_one", "buffer_all", "cancel_other", "terminate_other", "allow_all"] {
        assert!(REFERENCE.contains(&format!("`{overlap}`")), "overlap {overlap}");
    }
    for t in tf_definitions::TaskType::ALL {
        assert!(REFERENCE.contains(&format!("### `{t}`")), "task type {t} has no section");
    }
    let sleep = tf_definitions::task_params::SLEEP_PARAMS;
    for p in
        HTTP_TASK_PARAMS.iter().chain(KAFKA_TASK_PARAMS.iter()).chain(sleep.iter()).chain(["workflow_type", "task_queue", "input"].iter())
    {
        assert!(REFERENCE.contains(&format!("`{p}`")), "param {p}");
    }
}
