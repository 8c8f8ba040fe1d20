//! Turning a definition's task templates into concrete tasks: pure and deterministic, so the
//! RunActivity workflow can call it directly and replay it.

use std::time::Duration;

use serde_json::{Map, Value as Json, json};

use crate::definition::{Definition, RetryPolicy};
use crate::document::{Execution, OnTimeout};
use crate::expr::{Bindings, EvalError};
use crate::run::{RunId, TaskId, TaskType};

/// One task to spawn; `task_id` is `<run id>/<template>/<index>`.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTask {
    pub task_id: TaskId,
    pub template: String,
    /// Position in the `for_each` list (0 without `for_each`); stable when `when` skips items.
    pub index: u32,
    pub task_type: TaskType,
    pub params: Json,
    pub retry: RetryPolicy,
    pub timeout: Duration,
    /// Human tasks: how long to wait for a person, and what then.
    pub human_timeout: Option<Duration>,
    pub on_timeout: OnTimeout,
    pub timeout_output: Option<Json>,
    pub execution: Execution,
    /// The shared budget the task holds while it executes.
    pub budget: Option<String>,
}

/// The most tasks one run may spawn: each is a child workflow, and a `for_each` over a large
/// list in an event would otherwise fan out without bound.
pub const MAX_TASKS_PER_RUN: usize = 1000;

impl Definition {
    /// Evaluates every template against `bindings` (`item` is set per `for_each` element and
    /// `when` is evaluated per element): the plan of a run that does not unfold.
    pub fn plan_tasks(&self, run_id: &RunId, bindings: &Bindings) -> Result<Vec<PlannedTask>, EvalError> {
        let mut out = Vec::new();
        for t in &self.tasks {
            let planned = self.plan_template(&t.name, run_id, bindings, out.len(), 0)?;
            out.extend(planned);
        }
        Ok(out)
    }

    /// Plans one template: its tasks given `bindings` (with `tasks` set to what it runs after,
    /// in an unfolding run), `planned` tasks already planned in the run and `now_ms` the
    /// workflow time a `sleep ... for` counts from.
    pub fn plan_template(
        &self,
        name: &str,
        run_id: &RunId,
        bindings: &Bindings,
        planned: usize,
        now_ms: i64,
    ) -> Result<Vec<PlannedTask>, EvalError> {
        let Some(position) = self.tasks.iter().position(|x| x.name == name) else {
            return Err(EvalError { path: "tasks".into(), source_text: name.into(), reason: "names no task template".into() });
        };
        let t = &self.tasks[position];
        let items = match &t.for_each {
            Some(list) => list.eval_items(bindings)?,
            None => vec![Json::Null],
        };
        if planned + items.len() > MAX_TASKS_PER_RUN {
            return Err(EvalError {
                path: format!("tasks[{position}].for_each"),
                source_text: t.for_each.as_ref().map(|e| e.source().to_string()).unwrap_or_default(),
                reason: format!("would make the run spawn more than {MAX_TASKS_PER_RUN} tasks"),
            });
        }
        let mut out = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            let scope = Bindings { item, ..bindings.clone() };
            if let Some(when) = &t.when
                && !when.eval_bool(&scope)?
            {
                continue;
            }
            let mut params = Map::new();
            for (name, expr) in &t.params {
                let mut value = expr.eval(&scope)?;
                // Only headers may hold secret references (the definition was checked for
                // that); they are stored as `${secret:name}` and expanded when sent.
                if name == "headers" {
                    crate::expr::seal_secret_refs(&mut value).map_err(|e| EvalError {
                        path: expr.path().to_string(),
                        source_text: expr.source().to_string(),
                        reason: e.to_string(),
                    })?;
                }
                params.insert(name.clone(), value);
            }
            let params = match t.task_type {
                // A sleep's params are the instant it ends, so the plan (in history) fixes it.
                TaskType::Sleep => {
                    let until_ms = crate::steps::sleep_until(&params, now_ms).map_err(|reason| EvalError {
                        path: format!("tasks[{position}].params"),
                        source_text: String::new(),
                        reason,
                    })?;
                    json!({"until_ms": until_ms})
                }
                TaskType::WaitForEvent => {
                    let w = t.wait.as_ref().expect("a checked wait_for_event template has its event");
                    json!({
                        "type": w.event_type,
                        "topics": w.topics,
                        "key": w.run_key(&scope)?,
                        "incoming": w.incoming.source(),
                    })
                }
                _ => Json::Object(params),
            };
            let timeout_output = t.timeout_output.as_ref().map(|e| e.eval(&scope)).transpose()?;
            out.push(PlannedTask {
                task_id: run_id.task(&t.name, index as u32),
                template: t.name.clone(),
                index: index as u32,
                task_type: t.task_type,
                params,
                retry: t.retry.clone(),
                timeout: t.timeout,
                human_timeout: t.human_timeout,
                on_timeout: t.on_timeout,
                timeout_output,
                execution: t.execution,
                budget: t.budget.clone(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEF: &str = r#"
id: orders
name: Orders
trigger: {event: {topics: [t]}}
tasks:
  - name: ship
    type: kafka
    for_each: event.data.items
    when: item.qty > 0
    params: {topic: "'s'", value: "{'sku': item.sku, 'region': context.wh.region}"}
  - name: review
    type: human
    when: event.data.gold
    params: {title: "'Review ' + run.id"}
"#;

    #[test]
    fn fans_out_filters_and_numbers_tasks_stably() {
        let d = Definition::from_yaml("t", DEF).unwrap().remove(0);
        let b = Bindings {
            event: json!({"data": {"gold": true, "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 0}, {"sku": "c", "qty": 2}]}}),
            context: json!({"wh": {"region": "eu"}}),
            run: json!({"id": "run/orders/o1"}),
            ..Bindings::default()
        };
        let tasks = d.plan_tasks(&RunId::from_workflow_id("run/orders/o1"), &b).unwrap();
        let ids: Vec<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
        assert_eq!(ids, ["run/orders/o1/ship/0", "run/orders/o1/ship/2", "run/orders/o1/review/0"]);
        assert_eq!(tasks[1].params, json!({"topic": "s", "value": {"sku": "c", "region": "eu"}}));
        assert_eq!(tasks[2].params["title"], "Review run/orders/o1");
        assert_eq!(d.plan_tasks(&RunId::from_workflow_id("run/orders/o1"), &b).unwrap(), tasks, "deterministic");
    }

    #[test]
    fn for_each_over_a_map_follows_key_order() {
        let yaml = "id: m\nname: M\ntrigger: {event: {topics: [t]}}\ntasks:\n  - {name: per, type: human, for_each: event.data.regions, params: {r: item.key, n: item.value}}\n";
        let d = Definition::from_yaml("t", yaml).unwrap().remove(0);
        let regions: serde_json::Map<String, Json> = (0..50).map(|i| (format!("r{i:02}"), json!(i))).collect();
        let b = Bindings { event: json!({"data": {"regions": regions}}), ..Bindings::default() };
        let tasks = d.plan_tasks(&RunId::from_workflow_id("run"), &b).unwrap();
        assert_eq!(tasks.len(), 50);
        for (i, t) in tasks.iter().enumerate() {
            assert_eq!(t.params, json!({"r": format!("r{i:02}"), "n": i}), "index {i} is the i-th key");
        }
        // A map built inside CEL iterates in hash order there; for_each still sorts it.
        let built = "id: m\nname: M\ntrigger: {event: {topics: [t]}}\ntasks:\n  - {name: per, type: human, for_each: \"{'b': 2, 'a': 1, 'c': 3}\", params: {r: item.key}}\n";
        let d = Definition::from_yaml("t", built).unwrap().remove(0);
        let keys: Vec<Json> = d
            .plan_tasks(&RunId::from_workflow_id("run"), &Bindings::default())
            .unwrap()
            .into_iter()
            .map(|t| t.params["r"].clone())
            .collect();
        assert_eq!(keys, [json!("a"), json!("b"), json!("c")]);
    }

    #[test]
    fn fan_out_is_bounded() {
        let yaml = "id: m\nname: M\ntrigger: {event: {topics: [t]}}\ntasks:\n  - {name: per, type: human, for_each: event.data.items}\n";
        let d = Definition::from_yaml("t", yaml).unwrap().remove(0);
        let b = |n: usize| Bindings { event: json!({"data": {"items": vec![1; n]}}), ..Bindings::default() };
        assert_eq!(d.plan_tasks(&RunId::from_workflow_id("r"), &b(MAX_TASKS_PER_RUN)).unwrap().len(), MAX_TASKS_PER_RUN);
        let err = d.plan_tasks(&RunId::from_workflow_id("r"), &b(MAX_TASKS_PER_RUN + 1)).unwrap_err();
        assert_eq!(err.path, "tasks[0].for_each");
        assert!(err.reason.contains("more than 1000 tasks"), "{err}");
    }

    #[test]
    fn a_failing_expression_names_its_field() {
        let d = Definition::from_yaml("t", DEF).unwrap().remove(0);
        let b = Bindings { event: json!({"data": {"gold": false}}), ..Bindings::default() };
        let err = d.plan_tasks(&RunId::from_workflow_id("r"), &b).unwrap_err();
        assert_eq!(err.path, "tasks[0].for_each");
    }
}
