//! The YAML document as written by people: plain data, parsed by serde, unknown fields refused.
//! [`crate::Definition::parse`] turns it into a checked, compiled definition.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::flow::FlowControlDoc;
pub use crate::steps::{EventMatchDoc, MatchDoc};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Stable identifier: lowercase letters, digits, `.`, `_`, `-`.
    pub id: String,
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub trigger: TriggerDoc,
    #[serde(default, skip_serializing_if = "DedupeDoc::is_default")]
    pub dedupe: DedupeDoc,
    /// Named context sources, resolved in name order before the tasks are evaluated.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, ContextSourceDoc>,
    #[serde(default)]
    pub tasks: Vec<TaskDoc>,
    /// Limits on runs per key (docs/flow-control.md). Left out of the stored spec when empty,
    /// so the specs (and hashes) of definitions written before it are unchanged.
    #[serde(default, skip_serializing_if = "FlowControlDoc::is_empty")]
    pub flow_control: FlowControlDoc,
    /// Events that cancel a run of this definition while it runs (docs/steps.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancel_on: Vec<EventMatchDoc>,
}

fn yes() -> bool {
    true
}

/// Exactly one of `event` or `cron`. A struct rather than an enum so YAML and JSON read it the
/// same way and a document with both or neither gets a clear error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventTriggerDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<CronTriggerDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTriggerDoc {
    pub topics: Vec<String>,
    /// Pattern on the event type; `*` matches any run of characters. Default: every type.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_pattern: Option<String>,
    /// CEL condition over `event`; the definition matches only when it is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronTriggerDoc {
    /// A cron expression (5 fields, or 6 with seconds first); optional with `every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// An interval (`15m`), counted from the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// Shifts the interval's fires (`2m`: at :02, :17, ... for `every: 15m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
    /// What fires missed while the schedule could not run (Temporal down) become.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire: Option<Misfire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catchup_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<Overlap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

/// What a time trigger does with fires it missed (docs/definitions.md, "Misfires"): `skip` them,
/// run `once` for all of them, or run `all`, one after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    Skip,
    Once,
    All,
}

/// Temporal's schedule overlap policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    Skip,
    BufferOne,
    BufferAll,
    CancelOther,
    TerminateOther,
    AllowAll,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeDoc {
    /// CEL expression giving the dedupe key (a string). Default: `event.id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// How long a key blocks a second run. Default: 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

impl DedupeDoc {
    fn is_default(&self) -> bool {
        self == &DedupeDoc::default()
    }
}

/// Exactly one of `sql`, `http` or `static`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextSourceDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<SqlSourceDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSourceDoc>,
    /// A constant value.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub constant: Option<serde_json::Value>,
}

/// A read-only query on a datasource the operator configured; `$1..$n` bound to the CEL
/// `params`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSourceDoc {
    /// Name of a `postgres` datasource (`TF_DATASOURCES`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datasource: Option<String>,
    pub query: String,
    #[serde(default)]
    pub params: Vec<String>,
    /// Reuse an answer to the same query and params for this long (`30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
}

/// An HTTP call whose response (JSON, or text when it is not JSON) becomes the source's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceDoc {
    /// Name of an `http` datasource: `url` is then a path below its base URL, and its headers
    /// and timeout apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datasource: Option<String>,
    #[serde(default = "get")]
    pub method: String,
    /// CEL expression giving the URL (or the path, with a datasource).
    pub url: String,
    /// CEL expression giving the JSON body (POST/PUT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// CEL expression giving a text body, sent as it is (instead of `body`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Header name to CEL expression; the only place `secret('name')` may be used.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Status codes that count as success (default: any 2xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
}

fn get() -> String {
    "GET".into()
}

pub use crate::run::TaskType;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDoc {
    pub name: String,
    #[serde(rename = "type")]
    pub task_type: TaskType,
    /// CEL condition; the task is spawned only when true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// CEL list; one task per element, visible as `item`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// Each value a CEL expression.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryDoc>,
    /// Per attempt; for a human task, how long it waits for a person (it waits forever without).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Human tasks: what a timeout does (default `fail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<OnTimeout>,
    /// Human tasks with `on_timeout: complete`: CEL giving the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_output: Option<String>,
    /// `http` and `kafka` tasks: `activity` (an activity of the run, the default) or `child` (a
    /// RunTask child workflow of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<Execution>,
    /// `http` and `kafka` tasks: a shared concurrency budget (`TF_BUDGETS`) held while the task
    /// executes, so "at most 3 calls to the CRM at once" holds across definitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    /// Templates whose tasks must all have ended before this one is planned; its CEL then sees
    /// their outcomes as `tasks.<name>` (docs/steps.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Run even when a template it runs after failed (default: it is skipped).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub always: bool,
    /// `wait_for_event` steps: the event waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventMatchDoc>,
}

/// How the run executes a task. An `http` or `kafka` task is by default an activity of the
/// run: the same retries, task row and result as a child, at a fraction of the cost for Temporal
/// (loadtest/README.md: the `tasks` profile keeps up with 9-12 events/s instead of 4-5). A child
/// workflow has its own history under the task id. Human and `workflow` tasks are always
/// children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Execution {
    Child,
    Activity,
}

impl Execution {
    /// What a template of `task_type` gets without an `execution` field.
    pub fn default_for(task_type: TaskType) -> Execution {
        match task_type {
            TaskType::Http | TaskType::Kafka => Execution::Activity,
            TaskType::Human | TaskType::Workflow => Execution::Child,
            // Steps of the run itself: a timer, or a wait in its history.
            TaskType::Sleep | TaskType::WaitForEvent => Execution::Activity,
        }
    }
}

/// What a human task does when nobody decided within its `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// The task fails (and so does its run).
    Fail,
    /// The task succeeds with `timeout_output`.
    Complete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<f64>,
}
