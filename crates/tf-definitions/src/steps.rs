//! Runs that unfold over time (docs/steps.md): task templates that run after others and read
//! their outputs (`after`, `tasks.<name>`), durable sleeps (`type: sleep`), waits for another
//! event (`type: wait_for_event`) and a definition-level `cancel_on`. The document's parts, their
//! checks and the pure evaluation the worker and router share.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::checker::Checker;
use crate::expr::{Bindings, EvalError, Expr, Scope};

/// Another event a run waits for or is cancelled by: its type, where it may come from and how it
/// is matched to the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMatchDoc {
    /// The incoming event's type, exactly.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Topics it may arrive on (they must be among the router's); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// The two sides of an equality: `incoming` over the incoming event, `run` over this run.
    #[serde(rename = "match")]
    pub correlate: MatchDoc,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchDoc {
    /// CEL over the incoming event (`event` is that event): evaluated by the router.
    pub incoming: String,
    /// CEL over this run (its `event`, `run`, and for a wait step `context` and `tasks`):
    /// evaluated once, when the wait begins.
    pub run: String,
}

/// A checked [`EventMatchDoc`].
#[derive(Debug, Clone)]
pub struct EventMatch {
    pub event_type: String,
    pub topics: Vec<String>,
    pub incoming: Expr,
    pub run: Expr,
}

/// The most an event type or a topic may be long (they are index keys).
const MAX_NAME_BYTES: usize = 249;

pub(crate) fn check_match(c: &mut Checker, path: &str, m: &EventMatchDoc) -> Option<EventMatch> {
    if m.event_type.is_empty() || m.event_type.len() > MAX_NAME_BYTES || m.event_type.chars().any(char::is_control) {
        c.fail(format!("{path}.type"), "must be an event type: 1-249 characters, no control characters");
    }
    for (i, topic) in m.topics.iter().enumerate() {
        if topic.is_empty() || topic.len() > MAX_NAME_BYTES || !topic.chars().all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch)) {
            c.fail(format!("{path}.topics[{i}]"), format!("{topic:?} is not a Kafka topic name"));
        }
    }
    let incoming = c.expr(format!("{path}.match.incoming"), &m.correlate.incoming);
    if let Some(e) = &incoming
        && let Some(other) = ["context", "item", "run", "events", "tasks"].iter().find(|v| e.uses_variable(v))
    {
        c.fail(format!("{path}.match.incoming"), format!("sees only the incoming `event`, not `{other}`"));
    }
    let run = c.expr(format!("{path}.match.run"), &m.correlate.run);
    Some(EventMatch { event_type: m.event_type.clone(), topics: m.topics.clone(), incoming: incoming?, run: run? })
}

impl EventMatch {
    /// The run's side, computed when the wait begins.
    pub fn run_key(&self, bindings: &Bindings) -> Result<String, EvalError> {
        self.run.eval_string(bindings).map(crate::flow::stored_key)
    }

    /// What identifies the incoming side in the store: the same expression in two definitions
    /// (or versions) gives one key to compute per event.
    pub fn matcher(&self) -> String {
        matcher_of(self.incoming.source())
    }
}

/// The incoming event's side of a match, `incoming` evaluated over the event's scope (by the
/// router, and by a wait that looks back); `None` when the event does not have what the
/// expression reads (it then matches nothing).
pub fn incoming_key(incoming: &Expr, scope: &Scope) -> Option<String> {
    incoming.eval_string_in(scope).ok().map(crate::flow::stored_key)
}

/// The store's name for an incoming expression: its SHA-256.
pub fn matcher_of(incoming: &str) -> String {
    crate::sha256_hex(incoming.as_bytes())
}

/// The longest a run may sleep or wait: past it, a definition is more likely wrong than patient.
pub const MAX_SLEEP: Duration = Duration::from_secs(366 * 86_400);

/// What a `sleep` step's params became when planned: the instant it ends, in epoch milliseconds.
/// `for` is counted from `now_ms` (when the step was planned).
pub fn sleep_until(params: &serde_json::Map<String, Json>, now_ms: i64) -> Result<i64, String> {
    let until = match (params.get("for"), params.get("until")) {
        (Some(d), None) => {
            let d = match d {
                Json::String(s) => crate::duration::parse(s)?,
                Json::Number(n) => Duration::try_from_secs_f64(n.as_f64().unwrap_or(-1.0))
                    .map_err(|_| format!("`for` is {n}; give seconds >= 0 or a duration like \"5m\""))?,
                other => return Err(format!("`for` gave {other}; give a duration like \"5m\" or a number of seconds")),
            };
            if d > MAX_SLEEP {
                return Err(format!("`for` is longer than {} days", MAX_SLEEP.as_secs() / 86_400));
            }
            now_ms.saturating_add(d.as_millis() as i64)
        }
        (None, Some(t)) => {
            let t = match t {
                Json::String(s) => crate::cron::parse_time(s)?.timestamp_millis(),
                Json::Number(n) => n.as_i64().ok_or_else(|| format!("`until` is {n}; give epoch milliseconds or RFC 3339 text"))?,
                other => return Err(format!("`until` gave {other}; give RFC 3339 text or epoch milliseconds")),
            };
            if t.saturating_sub(now_ms) > MAX_SLEEP.as_millis() as i64 {
                return Err(format!("`until` is more than {} days away", MAX_SLEEP.as_secs() / 86_400));
            }
            t
        }
        _ => return Err("give exactly one of `for` and `until`".into()),
    };
    Ok(until)
}

/// The names `tasks.<name>` reads in `source` (outside string literals). Bracket access
/// (`tasks['x']`) is not seen here; it fails when evaluated if `x` has not run.
pub fn task_references(source: &str) -> Vec<&str> {
    let bytes = source.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let (mut out, mut quote, mut i) = (Vec::new(), None::<u8>, 0);
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if source[i..].starts_with("tasks.") && (i == 0 || !(ident(bytes[i - 1]) || bytes[i - 1] == b'.')) => {
                let start = i + "tasks.".len();
                let end = bytes[start..].iter().position(|b| !ident(*b)).map_or(bytes.len(), |n| start + n);
                if end > start {
                    out.push(&source[start..end]);
                }
                i = end;
                continue;
            }
            None => {}
        }
        i += 1;
    }
    out
}

/// Checks `after` (known names, no cycles) and that every `tasks.<name>` a template reads is
/// one it runs after (directly or not). `exprs` are each template's expressions.
pub(crate) fn check_graph(c: &mut Checker, templates: &[(String, Vec<String>, Vec<&Expr>)]) {
    let index: BTreeMap<&str, usize> = templates.iter().enumerate().map(|(i, (n, _, _))| (n.as_str(), i)).collect();
    for (i, (name, after, _)) in templates.iter().enumerate() {
        for (j, dep) in after.iter().enumerate() {
            if !index.contains_key(dep.as_str()) {
                c.fail(format!("tasks[{i}].after[{j}]"), format!("no task template is named {dep:?}"));
            } else if dep == name {
                c.fail(format!("tasks[{i}].after[{j}]"), "a task cannot run after itself");
            }
        }
    }
    let ancestors = |i: usize| -> Result<BTreeSet<usize>, ()> {
        let (mut seen, mut todo) = (BTreeSet::new(), vec![i]);
        while let Some(k) = todo.pop() {
            for dep in &templates[k].1 {
                let Some(&d) = index.get(dep.as_str()) else { continue };
                if d == i {
                    return Err(());
                }
                if seen.insert(d) {
                    todo.push(d);
                }
            }
        }
        Ok(seen)
    };
    for (i, (_, _, exprs)) in templates.iter().enumerate() {
        let Ok(before) = ancestors(i) else {
            c.fail(format!("tasks[{i}].after"), "forms a cycle: the task would wait for itself");
            continue;
        };
        for e in exprs {
            for name in task_references(e.source()) {
                match index.get(name) {
                    None => c.fail(e.path(), format!("reads tasks.{name}, but no task template is named {name:?}")),
                    Some(d) if !before.contains(d) => {
                        c.fail(e.path(), format!("reads tasks.{name}, which it does not run after (add {name:?} to `after`)"));
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

/// How one template's tasks ended, as its dependents see it in `tasks.<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    /// `succeeded`, `failed` (any of its tasks failed or was cancelled), `skipped` (a dependency
    /// failed) or `none` (its `when` was false for every item).
    pub status: String,
    /// The output; a list in index order for a `for_each` template.
    pub output: Json,
}

impl StepView {
    /// Whether dependents without `always` are skipped because of it.
    pub fn blocks(&self) -> bool {
        matches!(self.status.as_str(), "failed" | "skipped")
    }

    /// A template's view from its tasks' `(index, succeeded, output)`.
    pub fn of(for_each: bool, tasks: &[(u32, bool, Json)]) -> StepView {
        let mut tasks = tasks.to_vec();
        tasks.sort_by_key(|t| t.0);
        let status = if tasks.is_empty() {
            "none"
        } else if tasks.iter().all(|t| t.1) {
            "succeeded"
        } else {
            "failed"
        };
        let output = if for_each {
            Json::Array(tasks.into_iter().map(|t| t.2).collect())
        } else {
            tasks.into_iter().next().map_or(Json::Null, |t| t.2)
        };
        StepView { status: status.into(), output }
    }

    pub fn skipped() -> StepView {
        StepView { status: "skipped".into(), output: Json::Null }
    }
}

/// The `tasks` variable: template name to `{status, output}`.
pub fn tasks_binding(views: &BTreeMap<String, StepView>) -> Json {
    Json::Object(views.iter().map(|(k, v)| (k.clone(), json!({"status": v.status, "output": v.output}))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Definition, RunId};

    const CHAIN: &str = r#"
id: chain
name: Chain
trigger: {event: {topics: [t]}}
cancel_on:
  - {type: order.cancelled, match: {incoming: event.data.order_id, run: event.data.order_id}}
tasks:
  - {name: one, type: http, params: {url: "'http://x/1'"}}
  - {name: two, type: http, after: [one], params: {url: "'http://x/' + string(tasks.one.output.body.n)"}}
  - name: pay
    type: wait_for_event
    after: [one]
    event: {type: payment.received, topics: [t], match: {incoming: event.data.order_id, run: event.data.order_id}}
    timeout: 24h
  - {name: nap, type: sleep, after: [pay], params: {for: "'1m'"}}
  - name: three
    type: kafka
    after: [two, nap]
    always: true
    params: {topic: "'out'", value: "{'a': tasks.one.output, 'b': tasks.two.output, 'paid': tasks.pay.output != null}"}
"#;

    fn errors(yaml: &str) -> Vec<String> {
        match Definition::from_yaml("t", yaml) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_chain_parses_and_plans_each_template_when_due() {
        let d = Definition::from_yaml("t", CHAIN).unwrap().remove(0);
        assert!(d.unfolds());
        assert_eq!(d.cancel_on.len(), 1);
        let run = RunId::from_workflow_id("run/chain/o1/1");
        let mut views = BTreeMap::new();
        views.insert("one".to_string(), StepView { status: "succeeded".into(), output: json!({"body": {"n": 7}}) });
        let b = Bindings { event: json!({"data": {"order_id": "o1"}}), tasks: tasks_binding(&views), ..Bindings::default() };
        let two = d.plan_template("two", &run, &b, 0, 0).unwrap();
        assert_eq!(two[0].params["url"], "http://x/7");
        let pay = d.plan_template("pay", &run, &b, 0, 0).unwrap();
        assert_eq!(pay[0].params, json!({"type": "payment.received", "topics": ["t"], "key": "o1", "incoming": "event.data.order_id"}));
        assert_eq!(pay[0].human_timeout, Some(Duration::from_secs(86_400)));
        assert_eq!(d.plan_template("nap", &run, &b, 0, 1_000).unwrap()[0].params, json!({"until_ms": 61_000}));
        // A definition without steps keeps its stored form: the new fields are left out.
        let plain =
            Definition::from_yaml("t", "id: p\nname: P\ntrigger: {event: {topics: [t]}}\ntasks: [{name: a, type: human}]\n").unwrap();
        let spec = plain[0].spec_json();
        assert!(spec.get("cancel_on").is_none() && spec["tasks"][0].get("after").is_none() && !plain[0].unfolds());
    }

    #[test]
    fn graphs_are_checked_with_field_paths() {
        let with = |tasks: &str| format!("id: g\nname: G\ntrigger: {{event: {{topics: [t]}}}}\ntasks:\n{tasks}");
        let e = errors(&with("  - {name: a, type: human, after: [b]}\n  - {name: b, type: human, after: [a]}\n"));
        assert!(e.iter().any(|m| m.starts_with("tasks[0].after: forms a cycle")), "{e:?}");
        let e = errors(&with("  - {name: a, type: human, after: [nope]}\n"));
        assert_eq!(e, ["tasks[0].after[0]: no task template is named \"nope\""]);
        let e = errors(&with("  - {name: a, type: human}\n  - {name: b, type: human, params: {x: tasks.a.output}}\n"));
        assert!(e[0].starts_with("tasks[1].params.x: reads tasks.a, which it does not run after"), "{e:?}");
        let e = errors(&with("  - {name: a, type: human, always: true}\n"));
        assert!(e[0].starts_with("tasks[0].always"), "{e:?}");
        let e = errors(&with("  - {name: s, type: sleep, params: {for: \"'1s'\", until: \"1\"}}\n"));
        assert!(e[0].starts_with("tasks[0].params: a sleep takes exactly one"), "{e:?}");
        let e = errors(&with("  - {name: w, type: wait_for_event}\n"));
        assert!(
            e.iter().any(|m| m.starts_with("tasks[0].event: required")) && e.iter().any(|m| m.starts_with("tasks[0].timeout: required")),
            "{e:?}"
        );
        let e = errors(&with(
            "  - {name: w, type: wait_for_event, timeout: 1h, event: {type: x, match: {incoming: context.a, run: event.id}}}\n",
        ));
        assert_eq!(e, ["tasks[0].event.match.incoming: sees only the incoming `event`, not `context`"]);
        let e = errors(&with("  - {name: a, type: human}\ncancel_on: [{type: x, match: {incoming: event.id, run: tasks.a.output}}]\n"));
        assert!(e[0].starts_with("cancel_on[0].match.run: `tasks`"), "{e:?}");
        let e = errors(&with("  - {name: a, type: http, params: {url: \"string(tasks.a)\"}}\n"));
        assert!(e[0].contains("reads tasks.a, which it does not run after"), "{e:?}");
        // A dense graph at the bound checks quickly; one template more is refused.
        let dense = |n: usize| {
            (0..n)
                .map(|i| {
                    format!(
                        "  - {{name: t{i}, type: human, after: [{}]}}\n",
                        (0..i).map(|j| format!("t{j}")).collect::<Vec<_>>().join(", ")
                    )
                })
                .collect::<String>()
        };
        let started = std::time::Instant::now();
        assert_eq!(errors(&with(&dense(crate::definition::MAX_TEMPLATES))), Vec::<String>::new());
        println!("a {}-template graph with every edge checked in {:?}", crate::definition::MAX_TEMPLATES, started.elapsed());
        let e = errors(&with(&dense(crate::definition::MAX_TEMPLATES + 1)));
        assert!(e.iter().any(|m| m.starts_with("tasks: has 201 templates")), "{e:?}");
    }

    #[test]
    fn references_are_read_outside_strings() {
        assert_eq!(task_references("tasks.a.output + tasks.b_2.output.x"), ["a", "b_2"]);
        assert_eq!(task_references("'tasks.a' + \"tasks.b\" + mytasks.c + x.tasks.d"), Vec::<&str>::new());
        assert_eq!(task_references("size(tasks.a.output) > 0 && 'it\\'s tasks.z' != ''"), ["a"]);
    }

    #[test]
    fn sleeps_end_at_an_instant() {
        let p = |v: Json| v.as_object().cloned().unwrap();
        assert_eq!(sleep_until(&p(json!({"for": "5m"})), 1_000), Ok(301_000));
        assert_eq!(sleep_until(&p(json!({"for": 2.5})), 0), Ok(2_500));
        let at = 1_796_688_000_000; // 2026-12-08T00:00:00Z
        assert_eq!(sleep_until(&p(json!({"until": "2026-12-08T00:00:00Z"})), at - 5_000), Ok(at));
        assert_eq!(sleep_until(&p(json!({"until": 42})), 0), Ok(42));
        assert!(sleep_until(&p(json!({"for": "1s", "until": 1})), 0).is_err());
        assert!(sleep_until(&p(json!({})), 0).is_err());
        assert!(sleep_until(&p(json!({"for": -1})), 0).is_err());
        assert!(sleep_until(&p(json!({"for": "400d"})), 0).unwrap_err().contains("366 days"));
        assert!(sleep_until(&p(json!({"until": true})), 0).is_err());
    }

    #[test]
    fn a_template_view_lists_for_each_outputs_in_index_order() {
        let v = StepView::of(true, &[(2, true, json!("c")), (0, true, json!("a"))]);
        assert_eq!(v, StepView { status: "succeeded".into(), output: json!(["a", "c"]) });
        assert!(StepView::of(false, &[(0, false, Json::Null)]).blocks());
        assert!(!StepView::of(false, &[]).blocks(), "a template whose `when` was false blocks nothing");
        assert!(StepView::skipped().blocks());
    }
}
