//! What a planned task's params are to the worker, by task type: typed values parsed from the
//! JSON planning evaluated. The names a definition may use and the ones it must use are listed
//! beside the types, and a test holds the lists and the types together.

use serde::Deserialize;
use serde_json::{Map, Value as Json};

use crate::TaskType;

/// Params an `http` task understands; anything else is a typo worth an error.
pub const HTTP_TASK_PARAMS: [&str; 7] = ["url", "method", "body", "text", "headers", "expect", "datasource"];
/// Params a `kafka` task understands.
pub const KAFKA_TASK_PARAMS: [&str; 3] = ["topic", "key", "value"];
/// Params a `sleep` step understands: exactly one of them.
pub const SLEEP_PARAMS: [&str; 2] = ["for", "until"];

/// Params each task type needs to do anything.
pub fn required_params(t: TaskType) -> &'static [&'static str] {
    match t {
        TaskType::Http => &["url"],
        TaskType::Kafka => &["topic", "value"],
        TaskType::Human => &[],
        TaskType::Workflow => &["workflow_type", "task_queue"],
        TaskType::Sleep | TaskType::WaitForEvent => &[],
    }
}

/// A `kafka` task: one record.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaParams {
    pub topic: String,
    /// The record's key: a string as it is, any other value as its JSON text.
    #[serde(default)]
    pub key: Option<Json>,
    /// The record's value, as JSON.
    pub value: Json,
}

impl KafkaParams {
    pub fn key_text(&self) -> Option<String> {
        match &self.key {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        }
    }
}

/// An `http` task: one request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpParams {
    pub url: String,
    /// Default: `GET` without a body, `POST` with one.
    #[serde(default)]
    pub method: Option<String>,
    /// A JSON body.
    #[serde(default)]
    pub body: Option<Json>,
    /// A text body (when there is no `body`).
    #[serde(default)]
    pub text: Option<String>,
    /// Header name to value (a string as it is, anything else as JSON).
    #[serde(default)]
    pub headers: Option<Map<String, Json>>,
    /// Status codes that count as success; empty or absent: any 2xx.
    #[serde(default)]
    pub expect: Option<Vec<u16>>,
    /// The named datasource whose base URL and secrets the call goes through.
    #[serde(default)]
    pub datasource: Option<String>,
}

impl HttpParams {
    pub fn method(&self) -> &str {
        match &self.method {
            Some(m) => m,
            None if self.body.is_none() && self.text.is_none() => "GET",
            None => "POST",
        }
    }
}

/// A `workflow` task: a child workflow of the user's type on the user's queue.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WorkflowParams {
    pub workflow_type: String,
    pub task_queue: String,
    /// The workflow's input, as JSON.
    #[serde(default)]
    pub input: Json,
}

/// Why a task's params are not what its type takes: `<type> task: <serde's words>`.
#[derive(Debug, thiserror::Error)]
#[error("{task_type} task: params {source}")]
pub struct ParamsError {
    pub task_type: TaskType,
    #[source]
    pub source: serde_json::Error,
}

fn parse<T: serde::de::DeserializeOwned>(task_type: TaskType, params: &Json) -> Result<T, ParamsError> {
    // A JSON null body deserializes as absent: `Option` fields read null as `None`.
    T::deserialize(params).map_err(|source| ParamsError { task_type, source })
}

impl KafkaParams {
    pub fn parse(params: &Json) -> Result<KafkaParams, ParamsError> {
        parse(TaskType::Kafka, params)
    }
}

impl HttpParams {
    pub fn parse(params: &Json) -> Result<HttpParams, ParamsError> {
        let mut p: HttpParams = parse(TaskType::Http, params)?;
        // `body: null` is no body, as an absent one is.
        if p.body == Some(Json::Null) {
            p.body = None;
        }
        Ok(p)
    }
}

impl WorkflowParams {
    pub fn parse(params: &Json) -> Result<WorkflowParams, ParamsError> {
        parse(TaskType::Workflow, params)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The name lists the validator and the docs use are exactly what the types take.
    #[test]
    fn the_param_lists_are_the_types_fields() {
        for name in HTTP_TASK_PARAMS {
            let mut p = json!({"url": "https://x"});
            p[name] = match name {
                "expect" => json!([200]),
                "headers" => json!({}),
                "body" => json!({"a": 1}),
                _ => json!("s"),
            };
            HttpParams::parse(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for name in KAFKA_TASK_PARAMS {
            let mut p = json!({"topic": "t", "value": 1});
            p[name] = json!("s");
            KafkaParams::parse(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(HttpParams::parse(&json!({"url": "u", "nope": 1})).is_err());
        assert!(KafkaParams::parse(&json!({"topic": "t", "value": 1, "nope": 1})).is_err());
        for (t, p) in
            [(TaskType::Http, json!({})), (TaskType::Kafka, json!({"value": 1})), (TaskType::Workflow, json!({"task_queue": "q"}))]
        {
            let missing = required_params(t).iter().find(|r| p.get(**r).is_none()).unwrap();
            let err = match t {
                TaskType::Http => HttpParams::parse(&p).map(|_| ()),
                TaskType::Kafka => KafkaParams::parse(&p).map(|_| ()),
                _ => WorkflowParams::parse(&p).map(|_| ()),
            }
            .unwrap_err();
            assert!(err.to_string().contains(missing), "{err}");
        }
    }

    #[test]
    fn defaults_and_readable_errors() {
        let h = HttpParams::parse(&json!({"url": "u"})).unwrap();
        assert_eq!(h.method(), "GET");
        assert_eq!(HttpParams::parse(&json!({"url": "u", "body": null})).unwrap().method(), "GET");
        assert_eq!(HttpParams::parse(&json!({"url": "u", "text": "hi"})).unwrap().method(), "POST");
        let err = HttpParams::parse(&json!({"url": "u", "expect": ["200"]})).unwrap_err().to_string();
        assert!(err.starts_with("http task: params invalid type"), "{err}");
        let k = KafkaParams::parse(&json!({"topic": "t", "value": {"a": 1}, "key": 7})).unwrap();
        assert_eq!(k.key_text().as_deref(), Some("7"));
        assert_eq!(KafkaParams::parse(&json!({"topic": "t", "value": 1, "key": null})).unwrap().key_text(), None);
    }
}
