//! The Temporal side of the contract between router, scheduler and worker: the RunActivity
//! workflow's name, input and output, how its workflow id derives from the dedupe key, the
//! search attributes, and starting it with the dedupe policies of DESIGN.md (layer 1).

pub mod schedules;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use temporalio_client::errors::WorkflowStartError;
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, WorkflowIdConflictPolicy, WorkflowIdReusePolicy,
    WorkflowStartOptions,
};
use temporalio_common::search_attributes::{SearchAttributeKey, SearchAttributes};
use temporalio_common::{HasWorkflowDefinition, WorkflowDefinition};

pub const RUN_ACTIVITY: &str = "RunActivity";
pub const RUN_TASK: &str = "RunTask";

pub const ACTIVITY_ID: SearchAttributeKey<String> = SearchAttributeKey::keyword("ActivityId");
pub const DEDUPE_KEY: SearchAttributeKey<String> = SearchAttributeKey::keyword("DedupeKey");
pub const TRIGGER_KIND: SearchAttributeKey<String> = SearchAttributeKey::keyword("TriggerKind");

/// What started a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerInfo {
    /// `event`, `cron` or `manual`.
    pub kind: String,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub partition: Option<i32>,
    #[serde(default)]
    pub offset: Option<i64>,
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(default)]
    pub schedule_id: Option<String>,
    /// The nominal time of a scheduled run, ms since the epoch.
    #[serde(default)]
    pub scheduled_for_ms: Option<i64>,
}

/// Input of RunActivity. The definition version is pinned here, at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInput {
    pub definition_id: String,
    pub definition_version: i32,
    pub dedupe_key: String,
    pub dedupe_window_secs: u64,
    pub trigger: TriggerInfo,
    /// The event as expressions see it (`event`), for event triggers.
    #[serde(default)]
    pub event: Option<Json>,
    /// W3C trace context carried from the Kafka header or the envelope.
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// Output of RunActivity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// `completed`, `failed` or `deduplicated`.
    pub status: String,
    pub tasks_spawned: u32,
    pub tasks_failed: u32,
}

/// Typed handle on the RunActivity workflow type for clients that do not host it.
pub struct RunActivity;

impl WorkflowDefinition for RunActivity {
    type Input = RunInput;
    type Output = RunSummary;
    fn name(&self) -> &str {
        RUN_ACTIVITY
    }
}

impl HasWorkflowDefinition for RunActivity {
    type Run = Self;
}

/// Workflow ids keep a readable prefix; keys that are long or unusual are hashed so the id
/// stays within Temporal's limits and free of characters that confuse visibility queries.
pub fn workflow_id(definition_id: &str, dedupe_key: &str) -> String {
    const MAX_KEY: usize = 120;
    let plain = dedupe_key.len() <= MAX_KEY
        && dedupe_key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '/'));
    if plain {
        format!("run/{definition_id}/{dedupe_key}")
    } else {
        let digest: String = Sha256::digest(dedupe_key.as_bytes()).iter().take(16).map(|b| format!("{b:02x}")).collect();
        let prefix: String = dedupe_key
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .take(48)
            .collect();
        format!("run/{definition_id}/{prefix}~{digest}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemporalError {
    #[error("cannot connect to Temporal at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("starting workflow {workflow_id}: {source}")]
    Start { workflow_id: String, source: WorkflowStartError },
}

pub async fn connect(url: &str, namespace: &str, identity: &str) -> Result<Client, TemporalError> {
    let err = |reason: String| TemporalError::Connect { url: url.to_string(), reason };
    let parsed = url::Url::parse(url).map_err(|e| err(format!("not a URL: {e}")))?;
    let conn = Connection::connect(ConnectionOptions::new(parsed).identity(identity.to_string()).build())
        .await
        .map_err(|e| err(e.to_string()))?;
    Client::new(conn, ClientOptions::new(namespace).build()).map_err(|e| err(e.to_string()))
}

/// Whether a start created a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    Started { run_id: String },
    /// A run with this workflow id is open, or closed but still retained: layer-1 dedupe.
    Duplicate { existing_run_id: Option<String> },
}

/// Starts RunActivity with id = f(definition, dedupe key), conflict policy Fail and reuse
/// policy RejectDuplicate, so a second start for the same key is refused by Temporal itself.
pub async fn start_run(client: &Client, task_queue: &str, input: RunInput) -> Result<StartOutcome, TemporalError> {
    let workflow_id = workflow_id(&input.definition_id, &input.dedupe_key);
    let attrs = SearchAttributes::new([
        ACTIVITY_ID.value_set(input.definition_id.clone()),
        DEDUPE_KEY.value_set(input.dedupe_key.clone()),
        TRIGGER_KIND.value_set(input.trigger.kind.clone()),
    ]);
    let opts = WorkflowStartOptions::new(task_queue, workflow_id.clone())
        .id_conflict_policy(WorkflowIdConflictPolicy::Fail)
        .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
        .search_attributes(attrs)
        .task_timeout(Duration::from_secs(10))
        .build();
    match client.start_workflow(RunActivity, input, opts).await {
        Ok(handle) => Ok(StartOutcome::Started { run_id: handle.run_id().unwrap_or_default().to_string() }),
        Err(WorkflowStartError::AlreadyStarted { run_id, .. }) => Ok(StartOutcome::Duplicate { existing_run_id: run_id }),
        Err(source) => Err(TemporalError::Start { workflow_id, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_plain_keys_stay_readable() {
        assert_eq!(workflow_id("orders", "o-42"), "run/orders/o-42");
        assert_eq!(workflow_id("welcome", "a@b.example"), "run/welcome/a@b.example");
    }

    #[test]
    fn long_or_odd_keys_are_hashed_with_a_readable_prefix() {
        let long = "x".repeat(500);
        let id = workflow_id("orders", &long);
        assert!(id.starts_with("run/orders/xxxxxxxx") && id.len() < 120, "{id}");
        let odd = workflow_id("orders", "Zoë's order #1");
        assert!(odd.starts_with("run/orders/Zos") && odd.contains('~'), "{odd}");
        assert_ne!(workflow_id("orders", "a b"), workflow_id("orders", "a_b"), "distinct keys, distinct ids");
        assert_eq!(workflow_id("orders", "a b"), workflow_id("orders", "a b"), "deterministic");
    }
}

/// Input of the RunTask child workflow: one planned task, fully evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInput {
    /// `<run id>/<template>/<index>`; also the child workflow id.
    pub task_id: String,
    pub run_id: String,
    pub definition_id: String,
    pub definition_version: i32,
    pub template: String,
    pub index: u32,
    /// `http`, `kafka`, `human` or `workflow`.
    pub task_type: String,
    pub params: Json,
    pub max_attempts: u32,
    pub initial_interval_ms: u64,
    pub max_interval_ms: u64,
    pub backoff: f64,
    pub timeout_ms: u64,
    pub trigger: TriggerInfo,
    /// The run's W3C trace context, passed on to what the task calls (Kafka and HTTP headers).
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// Output of RunTask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskOutcome {
    /// SUCCEEDED, FAILED or CANCELLED.
    pub status: String,
    pub attempts: u32,
}

/// Typed handle on RunTask for clients (signals to human tasks).
pub struct RunTask;

impl WorkflowDefinition for RunTask {
    type Input = TaskInput;
    type Output = TaskOutcome;
    fn name(&self) -> &str {
        RUN_TASK
    }
}

impl HasWorkflowDefinition for RunTask {
    type Run = Self;
}

/// The signal that completes a human task; its input is the task's output.
pub struct CompleteTask;

pub const COMPLETE_TASK_SIGNAL: &str = "complete";

impl temporalio_common::SignalDefinition for CompleteTask {
    type Workflow = RunTask;
    type Input = Json;
    fn name(&self) -> &str {
        COMPLETE_TASK_SIGNAL
    }
}
