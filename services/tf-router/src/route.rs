//! Matching one event against the enabled definitions: pure, so every rule is unit-tested.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value as Json;
use tf_definitions::{DedupeKey, Definition, EvalError, Scope, Trigger};
use tf_kafka::dlq::Stage;
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
    pub stage: Stage,
    pub message: String,
}

/// The enabled event definitions, indexed once when they load so that matching costs little per
/// event: by topic (traffic no definition listens to costs one lookup), and with every distinct
/// filter and key expression evaluated at most once per event (definitions often share one,
/// say `event.data.order_id`).
#[derive(Debug, Default)]
pub struct Routes {
    active: Vec<Active>,
    by_topic: HashMap<String, Vec<Entry>>,
    filters: usize,
    keys: usize,
}

/// One definition listening on a topic, with the slots its filter and key evaluate into.
#[derive(Debug)]
struct Entry {
    index: usize,
    filter: Option<usize>,
    key: usize,
}

impl Routes {
    /// Indexes `active`; definitions that are disabled or not event-triggered never match.
    pub fn new(active: Vec<Active>) -> Routes {
        let mut by_topic: HashMap<String, Vec<Entry>> = HashMap::new();
        // Slots are per (field path, source): an error message names both.
        let mut filters: HashMap<(&str, &str), usize> = HashMap::new();
        let mut keys: HashMap<(&str, &str), usize> = HashMap::new();
        for (index, a) in active.iter().enumerate() {
            let d = &a.definition;
            let Trigger::Event(trigger) = &d.trigger else { continue };
            if !d.enabled {
                continue;
            }
            let filter = trigger.filter.as_ref().map(|f| {
                let next = filters.len();
                *filters.entry((f.path(), f.source())).or_insert(next)
            });
            let next = keys.len();
            let key = *keys.entry((d.dedupe.key.path(), d.dedupe.key.source())).or_insert(next);
            let mut topics: Vec<&String> = trigger.topics.iter().collect();
            topics.sort();
            topics.dedup();
            for topic in topics {
                by_topic.entry(topic.clone()).or_default().push(Entry { index, filter, key });
            }
        }
        let (filters, keys) = (filters.len(), keys.len());
        Routes { active, by_topic, filters, keys }
    }

    /// How many definitions were loaded.
    pub fn count(&self) -> usize {
        self.active.len()
    }
}

/// A definition the event matched, with the dedupe key it gave.
#[derive(Debug)]
pub struct Match<'a> {
    pub active: &'a Active,
    pub key: DedupeKey,
}

impl Match<'_> {
    /// The start request of this match's run.
    pub fn run_input(&self, at: &Position<'_>, event: &Arc<Json>, event_time_ms: i64) -> RunInput {
        let d = &self.active.definition;
        RunInput {
            definition_id: d.id.clone(),
            definition_version: self.active.version,
            dedupe_key: self.key.clone().into(),
            dedupe_window_secs: d.dedupe.window.as_secs(),
            generation: 0,
            event_time_ms: Some(event_time_ms),
            trigger: RunSource::event(at.topic, at.partition, at.offset, event["id"].as_str().map(String::from)),
            event: Some(Arc::clone(event)),
            traceparent: None,
            operator_retry: false,
        }
    }
}

/// The definitions `event` (as expressions see it) on `topic` matches, and those that failed on it.
pub fn route<'a>(routes: &'a Routes, topic: &str, event: &Json) -> (Vec<Match<'a>>, Vec<RouteError>) {
    let (mut matches, mut errors) = (Vec::new(), Vec::new());
    let Some(entries) = routes.by_topic.get(topic) else { return (matches, errors) };
    let event_type = event["type"].as_str().unwrap_or_default();
    // Made on the first definition that wants the event's type: converting an event to CEL
    // values costs more than most expressions do.
    let mut scope: Option<Scope> = None;
    let mut filters: Vec<Option<Result<bool, EvalError>>> = vec![None; routes.filters];
    let mut keys: Vec<Option<Result<DedupeKey, String>>> = vec![None; routes.keys];
    for entry in entries {
        let a = &routes.active[entry.index];
        let d = &a.definition;
        let Trigger::Event(trigger) = &d.trigger else { continue };
        if !trigger.type_pattern.matches(event_type) {
            continue;
        }
        let scope = &*scope.get_or_insert_with(|| Scope::for_event(event));
        let fail = |stage, message: String| RouteError { definition_id: d.id.clone(), stage, message };
        if let (Some(slot), Some(filter)) = (entry.filter, &trigger.filter) {
            match filters[slot].get_or_insert_with(|| filter.eval_bool_in(scope)) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    errors.push(fail(Stage::Filter, e.to_string()));
                    continue;
                }
            }
        }
        let key = keys[entry.key].get_or_insert_with(|| {
            let k = &d.dedupe.key;
            match k.eval_string_in(scope).map(DedupeKey::parse) {
                Ok(Ok(key)) => Ok(key),
                Ok(Err(e)) => Err(format!("{}: `{}` gave a key no store accepts: {e}", k.path(), k.source())),
                Err(e) => Err(e.to_string()),
            }
        });
        match key {
            Ok(key) => matches.push(Match { active: a, key: key.clone() }),
            Err(message) => errors.push(fail(Stage::DedupeKey, message.clone())),
        }
    }
    (matches, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn active(yaml: &str, version: i32) -> Active {
        Active { definition: Definition::from_yaml("t", yaml).unwrap().remove(0), version }
    }

    fn routes(defs: &[(&str, i32)]) -> Routes {
        Routes::new(defs.iter().map(|(yaml, version)| active(yaml, *version)).collect())
    }

    fn runs(routes: &Routes, at: &Position<'_>, event: &Json) -> Vec<RunInput> {
        let (matches, errors) = route(routes, at.topic, event);
        assert!(errors.is_empty(), "{errors:?}");
        let event = Arc::new(event.clone());
        matches.iter().map(|m| m.run_input(at, &event, 1_000)).collect()
    }

    const ORDERS: &str = "id: orders\nname: O\ntrigger: {event: {topics: [events.a], type: 'order.*', filter: 'event.data.amount > 10'}}\ndedupe: {key: event.data.id}\ntasks: [{name: t, type: human}]\n";
    const AT: Position<'static> = Position { topic: "events.a", partition: 2, offset: 41 };

    #[test]
    fn matches_on_topic_type_and_filter() {
        let defs = routes(&[(ORDERS, 3)]);
        let ev = json!({"id": "e1", "type": "order.created", "data": {"amount": 20, "id": "o-9"}});
        let runs_ = runs(&defs, &AT, &ev);
        assert_eq!(runs_.len(), 1);
        assert_eq!((runs_[0].dedupe_key.as_str(), runs_[0].definition_version), ("o-9", 3));
        assert_eq!(runs_[0].trigger.offset, Some(41));
        assert_eq!(runs_[0].trigger.event_id.as_deref(), Some("e1"));
        assert_eq!(runs_[0].event_time_ms, Some(1_000));
        assert_eq!(runs_[0].event.as_deref(), Some(&ev));

        let small = json!({"id": "e2", "type": "order.created", "data": {"amount": 5, "id": "o-1"}});
        assert!(runs(&defs, &AT, &small).is_empty(), "filter false: no run");
        let other_type = json!({"id": "e3", "type": "invoice.created", "data": {"amount": 50, "id": "i"}});
        assert!(runs(&defs, &AT, &other_type).is_empty());
        let other_topic = Position { topic: "events.b", ..AT };
        assert!(runs(&defs, &other_topic, &ev).is_empty());
    }

    #[test]
    fn disabled_definitions_never_match() {
        let disabled = ORDERS.replace("name: O\n", "name: O\nenabled: false\n");
        let defs = routes(&[(&disabled, 1)]);
        let ev = json!({"id": "e1", "type": "order.created", "data": {"amount": 20, "id": "o-9"}});
        assert!(runs(&defs, &AT, &ev).is_empty());
    }

    #[test]
    fn shared_expressions_give_each_definition_its_own_verdict_and_key() {
        // Three definitions share the filter and the key (evaluated once for the event); a
        // fourth has its own filter, a fifth lists the topic twice and still runs once.
        let same = |id: &str| ORDERS.replace("id: orders", &format!("id: {id}"));
        let strict = ORDERS.replace("id: orders", "id: strict").replace("amount > 10", "amount > 100");
        let twice = ORDERS.replace("id: orders", "id: twice").replace("[events.a]", "[events.a, events.a]");
        let defs = routes(&[(&same("a"), 1), (&same("b"), 2), (&strict, 1), (&same("c"), 4), (&twice, 1)]);
        assert_eq!((defs.filters, defs.keys), (2, 1));
        let ev = json!({"id": "e1", "type": "order.created", "data": {"amount": 20, "id": "o-9"}});
        let got: Vec<(String, String)> = runs(&defs, &AT, &ev).into_iter().map(|r| (r.definition_id, r.dedupe_key)).collect();
        let want = [("a", "o-9"), ("b", "o-9"), ("c", "o-9"), ("twice", "o-9")];
        assert_eq!(got, want.map(|(d, k)| (d.to_string(), k.to_string())));
    }

    #[test]
    fn expression_errors_name_the_definition_and_stage() {
        let defs = routes(&[(ORDERS, 1), (&ORDERS.replace("id: orders", "id: again"), 1)]);
        let no_amount = json!({"id": "e", "type": "order.created", "data": {"id": "o"}});
        let (matches, errors) = route(&defs, AT.topic, &no_amount);
        assert!(matches.is_empty());
        assert_eq!(errors.len(), 2, "each definition sharing the failed filter is named");
        assert_eq!((errors[0].definition_id.as_str(), errors[0].stage), ("orders", Stage::Filter));
        assert_eq!((errors[1].definition_id.as_str(), errors[1].stage), ("again", Stage::Filter));
        let no_key = json!({"id": "e", "type": "order.created", "data": {"amount": 99}});
        let (_, errors) = route(&defs, AT.topic, &no_key);
        assert_eq!(errors[0].stage, Stage::DedupeKey);
        assert!(errors[0].message.starts_with("dedupe.key: `event.data.id` failed"), "{}", errors[0].message);
        for (bad, why) in
            [(json!("a\u{0}b"), "control character U+0000"), (json!(""), "empty"), (json!("k".repeat(2000)), "over the 1024-byte limit")]
        {
            let ev = json!({"id": "e", "type": "order.created", "data": {"amount": 99, "id": bad}});
            let (matches, errors) = route(&defs, AT.topic, &ev);
            assert!(matches.is_empty());
            assert_eq!(errors[0].stage, Stage::DedupeKey);
            assert!(errors[0].message.contains(why), "{}", errors[0].message);
        }
    }
}
