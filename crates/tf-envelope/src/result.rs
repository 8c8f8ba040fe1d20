//! The task result record of `taskfactory.results` (schemas/avro/task_result.avsc).

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task_id: String,
    pub run_id: String,
    pub definition_id: String,
    pub definition_version: i32,
    pub template: String,
    pub task_type: String,
    /// SUCCEEDED, FAILED or CANCELLED.
    pub status: String,
    /// JSON text.
    pub output: Option<String>,
    pub error: Option<String>,
    pub attempts: i32,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub trigger: ResultTrigger,
    /// Output and error were replaced by a note because the record was too large.
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultTrigger {
    /// EVENT, CRON or MANUAL.
    pub kind: String,
    pub event_id: Option<String>,
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub schedule_id: Option<String>,
    pub scheduled_for_ms: Option<i64>,
}

const STATUSES: [&str; 3] = ["SUCCEEDED", "FAILED", "CANCELLED"];
const KINDS: [&str; 3] = ["EVENT", "CRON", "MANUAL"];

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(x) => Value::Union(1, Box::new(f(x))),
    }
}

fn symbol(symbols: &[&str], s: &str) -> Value {
    let i = symbols.iter().position(|x| *x == s).unwrap_or(0);
    Value::Enum(i as u32, symbols[i].to_string())
}

impl TaskResult {
    /// This result with `output` and `error` replaced by a note pointing at the task, for a
    /// record over the topic's size limit.
    pub fn truncated(&self, original_bytes: usize) -> TaskResult {
        let note = serde_json::json!({
            "truncated": true,
            "original_bytes": original_bytes,
            "task_id": self.task_id,
            "run_id": self.run_id,
            "note": "too large for the results topic; the full output is in the task factory's tasks table",
        });
        TaskResult {
            output: self.output.as_ref().map(|_| note.to_string()),
            error: self.error.as_ref().map(|e| e.chars().take(1000).collect()),
            truncated: true,
            ..self.clone()
        }
    }

    pub fn to_avro(&self) -> Value {
        let t = &self.trigger;
        Value::Record(vec![
            ("task_id".into(), Value::String(self.task_id.clone())),
            ("run_id".into(), Value::String(self.run_id.clone())),
            ("definition_id".into(), Value::String(self.definition_id.clone())),
            ("definition_version".into(), Value::Int(self.definition_version)),
            ("template".into(), Value::String(self.template.clone())),
            ("task_type".into(), Value::String(self.task_type.clone())),
            ("status".into(), symbol(&STATUSES, &self.status)),
            ("output".into(), opt(self.output.clone(), Value::String)),
            ("error".into(), opt(self.error.clone(), Value::String)),
            ("attempts".into(), Value::Int(self.attempts)),
            ("started_at".into(), Value::TimestampMillis(self.started_at_ms)),
            ("finished_at".into(), Value::TimestampMillis(self.finished_at_ms)),
            (
                "trigger".into(),
                Value::Record(vec![
                    ("kind".into(), symbol(&KINDS, &t.kind)),
                    ("event_id".into(), opt(t.event_id.clone(), Value::String)),
                    ("topic".into(), opt(t.topic.clone(), Value::String)),
                    ("partition".into(), opt(t.partition, Value::Int)),
                    ("offset".into(), opt(t.offset, Value::Long)),
                    ("schedule_id".into(), opt(t.schedule_id.clone(), Value::String)),
                    ("scheduled_for".into(), opt(t.scheduled_for_ms, Value::TimestampMillis)),
                ]),
            ),
            ("truncated".into(), Value::Boolean(self.truncated)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::{Schema, from_avro_datum, to_avro_datum};

    #[test]
    fn encodes_with_the_committed_schema() {
        let schema = Schema::parse_str(crate::TASK_RESULT_SCHEMA).unwrap();
        let r = TaskResult {
            task_id: "run/d/k/ship/0".into(),
            run_id: "run/d/k".into(),
            definition_id: "d".into(),
            definition_version: 3,
            template: "ship".into(),
            task_type: "kafka".into(),
            status: "SUCCEEDED".into(),
            output: Some("{\"ok\":true}".into()),
            error: None,
            attempts: 1,
            started_at_ms: 1,
            finished_at_ms: 2,
            trigger: ResultTrigger {
                kind: "EVENT".into(),
                event_id: Some("e".into()),
                topic: Some("events.demo".into()),
                partition: Some(2),
                offset: Some(40),
                schedule_id: None,
                scheduled_for_ms: None,
            },
            truncated: false,
        };
        let bytes = to_avro_datum(&schema, r.to_avro()).unwrap();
        let back = crate::json::avro_to_json(from_avro_datum(&schema, &mut &bytes[..], None).unwrap());
        assert_eq!(back["status"], "SUCCEEDED");
        assert_eq!(back["trigger"]["offset"], 40);
        assert_eq!(back["definition_version"], 3);
    }
}
