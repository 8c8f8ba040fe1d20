//! Matching one event against the enabled definitions: pure, so every rule is unit-tested.

use serde_json::Value as Json;
use tf_definitions::{Bindings, DedupeKey, Definition, Scope, Trigger};
use tf_temporal::{RunInput, RunSource};

/// An enabled event definition at the version runs will be pinned to.
#[derive(Debug, Clone)]
pub struct Active {
    pub definition: Definition,
    pub version: i32,
}

/// Where the event sits in Kafka.
#[derive(Debug, Clone)]
pub struct Position<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// A definition whose expressions failed on this event.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteError {
    pub definition_id: String,
    /// `filter` or `dedupe-key`.
    pub stage: &'static str,
    pub message: String,
}

/// The runs to start for `event` (as expressions see it) and the definitions that failed on it.
pub fn route(
    active: &[Active],
    at: &Position<'_>,
    event: &Json,
    event_time_ms: i64,
    traceparent: Option<&str>,
) -> (Vec<RunInput>, Vec<RouteError>) {
    let event_type = event["type"].as_str().unwrap_or_default();
    // Made once: every definition's filter and key are evaluated against the same scope.
    let scope = Scope::new(&Bindings { event: event.clone(), ..Bindings::default() });
    let mut runs = Vec::new();
    let mut errors = Vec::new();
    for a in active {
        let d = &a.definition;
        let Trigger::Event(trigger) = &d.trigger else { continue };
        if !d.enabled || !trigger.topics.iter().any(|t| t == at.topic) || !trigger.type_pattern.matches(event_type) {
            continue;
        }
        let fail = |stage, message: String| RouteError { definition_id: d.id.clone(), stage, message };
        if let Some(filter) = &trigger.filter {
            match filter.eval_bool_in(&scope) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    errors.push(fail("filter", e.to_string()));
                    continue;
                }
            }
        }
        let key = match d.dedupe.key.eval_string_in(&scope).map(DedupeKey::parse) {
            Ok(Ok(k)) => k,
            Ok(Err(e)) => {
                errors.push(fail(
                    "dedupe-key",
                    format!("{}: `{}` gave a key no store accepts: {e}", d.dedupe.key.path(), d.dedupe.key.source()),
                ));
                continue;
            }
            Err(e) => {
                errors.push(fail("dedupe-key", e.to_string()));
                continue;
            }
        };
        runs.push(RunInput {
            definition_id: d.id.clone(),
            definition_version: a.version,
            dedupe_key: key.into(),
            dedupe_window_secs: d.dedupe.window.as_secs(),
            generation: 0,
            event_time_ms: Some(event_time_ms),
            trigger: RunSource::event(at.topic, at.partition, at.offset, event["id"].as_str().map(String::from)),
            event: Some(event.clone()),
            traceparent: traceparent.map(String::from),
        });
    }
    (runs, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn active(yaml: &str, version: i32) -> Active {
        Active { definition: Definition::from_yaml("t", yaml).unwrap().remove(0), version }
    }

    const ORDERS: &str = "id: orders\nname: O\ntrigger: {event: {topics: [events.a], type: 'order.*', filter: 'event.data.amount > 10'}}\ndedupe: {key: event.data.id}\ntasks: [{name: t, type: human}]\n";
    const AT: Position<'static> = Position { topic: "events.a", partition: 2, offset: 41 };

    #[test]
    fn matches_on_topic_type_and_filter() {
        let defs = [active(ORDERS, 3)];
        let ev = json!({"id": "e1", "type": "order.created", "data": {"amount": 20, "id": "o-9"}});
        let (runs, errors) = route(&defs, &AT, &ev, 1_000, Some("00-tp"));
        assert!(errors.is_empty());
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].dedupe_key.as_str(), runs[0].definition_version), ("o-9", 3));
        assert_eq!(runs[0].trigger.offset, Some(41));
        assert_eq!(runs[0].event_time_ms, Some(1_000));
        assert_eq!(runs[0].traceparent.as_deref(), Some("00-tp"));

        let small = json!({"id": "e2", "type": "order.created", "data": {"amount": 5, "id": "o-1"}});
        assert!(route(&defs, &AT, &small, 1_000, None).0.is_empty(), "filter false: no run");
        let other_type = json!({"id": "e3", "type": "invoice.created", "data": {"amount": 50, "id": "i"}});
        assert!(route(&defs, &AT, &other_type, 1_000, None).0.is_empty());
        let other_topic = Position { topic: "events.b", ..AT };
        assert!(route(&defs, &other_topic, &ev, 1_000, None).0.is_empty());
    }

    #[test]
    fn expression_errors_name_the_definition_and_stage() {
        let defs = [active(ORDERS, 1)];
        let no_amount = json!({"id": "e", "type": "order.created", "data": {"id": "o"}});
        let (runs, errors) = route(&defs, &AT, &no_amount, 1_000, None);
        assert!(runs.is_empty());
        assert_eq!((errors[0].definition_id.as_str(), errors[0].stage), ("orders", "filter"));
        let no_key = json!({"id": "e", "type": "order.created", "data": {"amount": 99}});
        let (_, errors) = route(&defs, &AT, &no_key, 1_000, None);
        assert_eq!(errors[0].stage, "dedupe-key");
        assert!(errors[0].message.starts_with("dedupe.key: `event.data.id` failed"), "{}", errors[0].message);
        for (bad, why) in
            [(json!("a\u{0}b"), "control character U+0000"), (json!(""), "empty"), (json!("k".repeat(2000)), "over the 1024-byte limit")]
        {
            let ev = json!({"id": "e", "type": "order.created", "data": {"amount": 99, "id": bad}});
            let (runs, errors) = route(&defs, &AT, &ev, 1_000, None);
            assert!(runs.is_empty());
            assert_eq!(errors[0].stage, "dedupe-key");
            assert!(errors[0].message.contains(why), "{}", errors[0].message);
        }
    }
}
