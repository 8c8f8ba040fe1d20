//! The task result record of `taskfactory.results` (schemas/avro/task_result.avsc).

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};
use tf_definitions::{RunId, RunSource, TaskId, TaskStatus, TaskType};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task_id: TaskId,
    pub run_id: RunId,
    pub definition_id: String,
    pub definition_version: i32,
    pub template: String,
    pub task_type: TaskType,
    /// Final: succeeded, failed or cancelled (the Avro symbols SUCCEEDED, FAILED, CANCELLED).
    pub status: TaskStatus,
    /// JSON text.
    pub output: Option<String>,
    pub error: Option<String>,
    pub attempts: i32,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub trigger: RunSource,
    /// Output and error were replaced by a note because the record was too large.
    #[serde(default)]
    pub truncated: bool,
}

const STATUSES: [&str; 3] = ["SUCCEEDED", "FAILED", "CANCELLED"];
const KINDS: [&str; 3] = ["EVENT", "CRON", "MANUAL"];

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(x) => Value::Union(1, Box::new(f(x))),
    }
}

/// A result the task-result schema cannot express: a status or trigger kind that is not one of
/// its symbols (a task still `running`, say). Publishing it as some other symbol would lie.
#[derive(Debug, thiserror::Error)]
#[error("task result {field} {value} is none of the schema's symbols ({allowed})")]
pub struct NotASymbol {
    pub field: &'static str,
    pub value: String,
    pub allowed: String,
}

fn symbol(field: &'static str, symbols: &[&str], s: &str) -> Result<Value, NotASymbol> {
    let i = symbols.iter().position(|x| *x == s).ok_or_else(|| NotASymbol { field, value: s.to_string(), allowed: symbols.join(", ") })?;
    Ok(Value::Enum(i as u32, symbols[i].to_string()))
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
        // The event id is the producer's to choose, and as long as it likes: cut it too, so
        // what is left is small whatever the producer sent.
        let trigger = tf_definitions::RunSource {
            event_id: self.trigger.event_id.as_ref().map(|e| e.chars().take(256).collect()),
            ..self.trigger.clone()
        };
        TaskResult {
            output: self.output.as_ref().map(|_| note.to_string()),
            error: self.error.as_ref().map(|e| e.chars().take(1000).collect()),
            trigger,
            truncated: true,
            ..self.clone()
        }
    }

    /// The Avro record; a status or trigger kind the schema has no symbol for is refused.
    pub fn to_avro(&self) -> Result<Value, NotASymbol> {
        let t = &self.trigger;
        Ok(Value::Record(vec![
            ("task_id".into(), Value::String(self.task_id.to_string())),
            ("run_id".into(), Value::String(self.run_id.to_string())),
            ("definition_id".into(), Value::String(self.definition_id.clone())),
            ("definition_version".into(), Value::Int(self.definition_version)),
            ("template".into(), Value::String(self.template.clone())),
            ("task_type".into(), Value::String(self.task_type.as_str().to_string())),
            ("status".into(), symbol("status", &STATUSES, &self.status.symbol())?),
            ("output".into(), opt(self.output.clone(), Value::String)),
            ("error".into(), opt(self.error.clone(), Value::String)),
            ("attempts".into(), Value::Int(self.attempts)),
            ("started_at".into(), Value::TimestampMillis(self.started_at_ms)),
            ("finished_at".into(), Value::TimestampMillis(self.finished_at_ms)),
            (
                "trigger".into(),
                Value::Record(vec![
                    ("kind".into(), symbol("trigger.kind", &KINDS, &t.kind.symbol())?),
                    ("event_id".into(), opt(t.event_id.clone(), Value::String)),
                    ("topic".into(), opt(t.topic.clone(), Value::String)),
                    ("partition".into(), opt(t.partition, Value::Int)),
                    ("offset".into(), opt(t.offset, Value::Long)),
                    ("schedule_id".into(), opt(t.schedule_id.clone(), Value::String)),
                    ("scheduled_for".into(), opt(t.scheduled_for_ms, Value::TimestampMillis)),
                ]),
            ),
            ("truncated".into(), Value::Boolean(self.truncated)),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::{Schema, from_avro_datum, to_avro_datum};

    fn result() -> TaskResult {
        TaskResult {
            task_id: RunId::from_workflow_id("run/d/k").task("ship", 0),
            run_id: RunId::from_workflow_id("run/d/k"),
            definition_id: "d".into(),
            definition_version: 3,
            template: "ship".into(),
            task_type: TaskType::Kafka,
            status: TaskStatus::Succeeded,
            output: Some("{\"ok\":true}".into()),
            error: None,
            attempts: 1,
            started_at_ms: 1,
            finished_at_ms: 2,
            trigger: RunSource::event("events.demo", 2, 40, Some("e".into())),
            truncated: false,
        }
    }

    #[test]
    fn a_truncated_result_is_small_whatever_the_producer_chose() {
        let mut big = result();
        big.output = Some("x".repeat(100_000));
        big.error = Some("e".repeat(100_000));
        big.trigger.event_id = Some("i".repeat(100_000));
        let small = big.truncated(300_000);
        let schema = Schema::parse_str(crate::TASK_RESULT_SCHEMA).unwrap();
        let bytes = to_avro_datum(&schema, small.to_avro().unwrap()).unwrap();
        assert!(bytes.len() < 2_000, "{} bytes", bytes.len());
        assert!(small.truncated && small.trigger.event_id.as_deref().is_some_and(|e| e.len() == 256));
    }

    #[test]
    fn encodes_with_the_committed_schema() {
        let schema = Schema::parse_str(crate::TASK_RESULT_SCHEMA).unwrap();
        let bytes = to_avro_datum(&schema, result().to_avro().unwrap()).unwrap();
        let back = crate::json::avro_to_json(from_avro_datum(&schema, &mut &bytes[..], None).unwrap());
        assert_eq!(back["status"], "SUCCEEDED");
        assert_eq!(back["trigger"]["offset"], 40);
        assert_eq!(back["definition_version"], 3);
    }

    #[test]
    fn a_status_the_schema_has_no_symbol_for_is_refused_not_published_as_another() {
        let running = TaskResult { status: TaskStatus::Running, ..result() };
        let err = running.to_avro().unwrap_err();
        assert_eq!((err.field, err.value.as_str()), ("status", "RUNNING"));
        assert!(err.to_string().contains("SUCCEEDED, FAILED, CANCELLED"), "{err}");
    }
}
