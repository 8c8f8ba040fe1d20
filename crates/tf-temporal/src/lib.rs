//! The Temporal side of the contract between router, scheduler and worker: the RunActivity
//! workflow's name, input and output, how its workflow id derives from the dedupe key, the
//! search attributes, and starting it with the dedupe policies of docs/design.md (layer 2).

pub mod run_control;
pub mod schedule_control;
pub mod schedules;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use temporalio_client::errors::WorkflowStartError;
use temporalio_client::{
    Client, ClientOptions, ClientTlsOptions, Connection, ConnectionOptions, TlsOptions, WorkflowIdConflictPolicy, WorkflowIdReusePolicy,
    WorkflowStartOptions,
};
use temporalio_common::search_attributes::{SearchAttributeKey, SearchAttributes};
use temporalio_common::{HasWorkflowDefinition, WorkflowDefinition};
pub use tf_definitions::{DedupeKey, RunId, RunSource, TaskId, TaskType, TriggerKind};

pub const RUN_ACTIVITY: &str = "RunActivity";
pub const RUN_TASK: &str = "RunTask";

pub const ACTIVITY_ID: SearchAttributeKey<String> = SearchAttributeKey::keyword("ActivityId");
pub const DEDUPE_KEY: SearchAttributeKey<String> = SearchAttributeKey::keyword("DedupeKey");
pub const TRIGGER_KIND: SearchAttributeKey<String> = SearchAttributeKey::keyword("TriggerKind");

/// Input of RunActivity. The definition version is pinned here, at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInput {
    pub definition_id: String,
    pub definition_version: i32,
    pub dedupe_key: String,
    pub dedupe_window_secs: u64,
    /// The claim's generation this run belongs to, resolved by the starter; 0 when the run
    /// resolves it itself (scheduled runs: the schedule starts the workflow).
    #[serde(default)]
    pub generation: u32,
    /// The event time that placed the run in its generation, ms since the epoch.
    #[serde(default)]
    pub event_time_ms: Option<i64>,
    pub trigger: RunSource,
    /// The event as expressions see it (`event`), for event triggers. Shared: every run one
    /// event matches carries the same event.
    #[serde(default, with = "shared_json")]
    pub event: Option<Arc<Json>>,
    /// W3C trace context carried from the Kafka header or the envelope.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// Started by an operator's retry, which may take over a cancelled run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub operator_retry: bool,
}

/// `Option<Arc<Json>>` as the `Option<Json>` it stands for (serde's `rc` feature would do the
/// same for every crate in the tree).
mod shared_json {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value as Json;

    pub fn serialize<S: Serializer>(value: &Option<Arc<Json>>, s: S) -> Result<S::Ok, S::Error> {
        value.as_deref().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<Json>>, D::Error> {
        Ok(Option::<Json>::deserialize(d)?.map(Arc::new))
    }
}

/// Output of RunActivity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// `completed` or `deduplicated` (a failed run fails its workflow).
    pub status: tf_definitions::RunStatus,
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

#[derive(Debug, thiserror::Error)]
pub enum TemporalError {
    #[error("cannot connect to Temporal at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("starting workflow {workflow_id}: {source}")]
    Start { workflow_id: String, source: WorkflowStartError },
    #[error("dedupe key refused: {0}")]
    Key(#[from] tf_definitions::DedupeKeyError),
}

/// How a failed start is to be handled (docs/design.md, "Failure classes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Temporal is down, slow or overloaded: back off and try again, never skip.
    Transient,
    /// Temporal refuses this record for good (an input over the payload limit, a search
    /// attribute over its size limit): dead-letter it.
    Permanent,
    /// The settings are wrong (auth refused, unknown namespace): pause everything.
    Misconfigured,
}

impl TemporalError {
    pub fn class(&self) -> FailureClass {
        use temporalio_client::tonic::Code;
        match self {
            TemporalError::Connect { .. } => FailureClass::Transient,
            TemporalError::Key(_) => FailureClass::Permanent,
            TemporalError::Start { source, .. } => match source {
                WorkflowStartError::PayloadConversion(_) => FailureClass::Permanent,
                WorkflowStartError::AlreadyStarted { .. } => FailureClass::Transient,
                WorkflowStartError::Rpc(status) => match status.code() {
                    Code::InvalidArgument | Code::OutOfRange => FailureClass::Permanent,
                    Code::Unauthenticated | Code::PermissionDenied | Code::NotFound | Code::Unimplemented => FailureClass::Misconfigured,
                    _ => FailureClass::Transient,
                },
                _ => FailureClass::Transient,
            },
        }
    }
}

/// TLS, mTLS and the API key from `TF_TEMPORAL_*` (`tf_config::temporal`), read once. Binaries
/// call this at startup so a bad setting stops them with its name.
pub fn access() -> Result<tf_config::temporal::TemporalAccess, tf_config::temporal::TemporalAccessError> {
    static ACCESS: std::sync::OnceLock<Result<tf_config::temporal::TemporalAccess, tf_config::temporal::TemporalAccessError>> =
        std::sync::OnceLock::new();
    ACCESS.get_or_init(tf_config::temporal::from_env).clone()
}

/// Connects to Temporal at `url`, with the TLS, mTLS and API key of [`access`].
pub async fn connect(url: &str, namespace: &str, identity: &str) -> Result<Client, TemporalError> {
    let err = |reason: String| TemporalError::Connect { url: url.to_string(), reason };
    let parsed = url::Url::parse(url).map_err(|e| err(format!("not a URL: {e}")))?;
    let access = access().map_err(|e| err(e.to_string()))?;
    let tls = access.tls.map(|t| {
        let client = t.client_cert_and_key.map(|(cert, key)| ClientTlsOptions::builder().client_cert(cert).client_private_key(key).build());
        TlsOptions::builder().maybe_server_root_ca_cert(t.server_ca).maybe_domain(t.domain).maybe_client_tls_options(client).build()
    });
    let options = ConnectionOptions::new(parsed)
        .identity(identity.to_string())
        .maybe_tls_options(tls)
        .maybe_api_key(access.api_key)
        // A handshake that never completes (a TLS port spoken to in plaintext, a proxy that
        // swallows the connection) is an error to report, not a hang.
        .connect_timeout(Duration::from_secs(15))
        .build();
    let conn = Connection::connect(options).await.map_err(|e| err(e.to_string()))?;
    Client::new(conn, ClientOptions::new(namespace).build()).map_err(|e| err(e.to_string()))
}

/// Whether a start created a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    Started {
        run_id: String,
    },
    /// A run with this workflow id is open, or closed but still retained: layer-1 dedupe.
    Duplicate {
        existing_run_id: Option<String>,
    },
}

/// Starts RunActivity with id = f(definition, dedupe key, generation), conflict policy Fail and
/// reuse policy AllowDuplicateFailedOnly: a retry or redelivery of the same generation is refused
/// by Temporal itself while its run is open or completed, and re-runs it when it failed.
pub async fn start_run(client: &Client, task_queue: &str, input: RunInput) -> Result<StartOutcome, TemporalError> {
    start(client, task_queue, input, None).await
}

/// Starts a run exactly as [`start_run`] does (same id, policies and search attributes), but it
/// closes by itself after `expire_after`: for a task queue nobody polls, where it measures what
/// a start costs Temporal alone (`tf-loadtest bare`, the router's baseline).
pub async fn start_run_expiring(
    client: &Client,
    task_queue: &str,
    input: RunInput,
    expire_after: Duration,
) -> Result<StartOutcome, TemporalError> {
    start(client, task_queue, input, Some(expire_after)).await
}

async fn start(
    client: &Client,
    task_queue: &str,
    input: RunInput,
    execution_timeout: Option<Duration>,
) -> Result<StartOutcome, TemporalError> {
    let key = DedupeKey::parse(input.dedupe_key.clone())?;
    let workflow_id = key.run_id(&input.definition_id, input.generation.max(1)).to_string();
    let attrs = SearchAttributes::new([
        ACTIVITY_ID.value_set(input.definition_id.clone()),
        DEDUPE_KEY.value_set(input.dedupe_key.clone()),
        TRIGGER_KIND.value_set(input.trigger.kind.as_str().to_string()),
    ]);
    let opts = WorkflowStartOptions::new(task_queue, workflow_id.clone())
        .id_conflict_policy(WorkflowIdConflictPolicy::Fail)
        .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicateFailedOnly)
        .search_attributes(attrs)
        .task_timeout(Duration::from_secs(10))
        .maybe_execution_timeout(execution_timeout)
        .build();
    match client.start_workflow(RunActivity, input, opts).await {
        Ok(handle) => Ok(StartOutcome::Started { run_id: handle.run_id().unwrap_or_default().to_string() }),
        Err(WorkflowStartError::AlreadyStarted { run_id, .. }) => Ok(StartOutcome::Duplicate { existing_run_id: run_id }),
        Err(source) => Err(TemporalError::Start { workflow_id, source }),
    }
}

/// Input of the RunTask child workflow: one planned task, fully evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInput {
    /// `<run id>/<template>/<index>`; also the child workflow id.
    pub task_id: TaskId,
    pub run_id: RunId,
    pub definition_id: String,
    pub definition_version: i32,
    pub template: String,
    pub index: u32,
    pub task_type: TaskType,
    pub params: Json,
    pub max_attempts: u32,
    pub initial_interval_ms: u64,
    pub max_interval_ms: u64,
    pub backoff: f64,
    pub timeout_ms: u64,
    pub trigger: RunSource,
    /// The run's W3C trace context, passed on to what the task calls (Kafka and HTTP headers).
    #[serde(default)]
    pub traceparent: Option<String>,
    /// Human tasks: how long to wait for a person; `None` waits until decided.
    #[serde(default)]
    pub human_timeout_ms: Option<u64>,
    /// Human tasks: after the timeout, complete with `timeout_output` (else fail).
    #[serde(default)]
    pub complete_on_timeout: bool,
    #[serde(default)]
    pub timeout_output: Option<Json>,
    /// A child workflow (its own RunTask) or an activity of the run. Inputs from before the
    /// field existed were children.
    #[serde(default = "child")]
    pub execution: tf_definitions::Execution,
    /// A shared concurrency budget (`TF_BUDGETS`) the task holds while it executes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
}

fn child() -> tf_definitions::Execution {
    tf_definitions::Execution::Child
}

/// Output of RunTask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskConclusion {
    /// Final: succeeded, failed or cancelled.
    pub status: tf_definitions::TaskStatus,
    pub attempts: u32,
    /// What the task gave, for the templates that run after it (docs/steps.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Json>,
}

/// Typed handle on RunTask for clients (signals to human tasks).
pub struct RunTask;

impl WorkflowDefinition for RunTask {
    type Input = TaskInput;
    type Output = TaskConclusion;
    fn name(&self) -> &str {
        RUN_TASK
    }
}

impl HasWorkflowDefinition for RunTask {
    type Run = Self;
}

/// What a person decided on a human task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "decision")]
pub enum HumanDecision {
    /// Done; `output` becomes the task's output.
    Complete { output: Json, by: String },
    /// Refused; the task fails with the reason.
    Reject { reason: String, by: String },
}

/// The update that decides a human task. Temporal answers it only once the workflow accepted
/// the decision, and the workflow's validator refuses a second one (its error then contains
/// [`ALREADY_DECIDED`]) or one for a task that is not waiting for a person ([`NOT_AWAITING`]).
pub struct DecideTask;

pub const DECIDE_TASK_UPDATE: &str = "decide";
pub const ALREADY_DECIDED: &str = "the task was already decided";
pub const NOT_AWAITING: &str = "the task is not waiting for a person";

impl temporalio_common::UpdateDefinition for DecideTask {
    type Workflow = RunTask;
    type Input = HumanDecision;
    type Output = String;
    fn name(&self) -> &str {
        DECIDE_TASK_UPDATE
    }
}

/// The signal that completes a human task; its input is the task's output. Kept for tasks that
/// started before the `decide` update existed; new callers use [`DecideTask`].
pub struct CompleteTask;

pub const COMPLETE_TASK_SIGNAL: &str = "complete";

impl temporalio_common::SignalDefinition for CompleteTask {
    type Workflow = RunTask;
    type Input = Json;
    fn name(&self) -> &str {
        COMPLETE_TASK_SIGNAL
    }
}

/// The signal that tells a run (or a task's workflow) waiting for a flow-control slot to look
/// again; whoever frees a slot sends it (docs/flow-control.md).
pub struct WakeFlow;

pub const FLOW_WAKE_SIGNAL: &str = "flow-wake";

impl temporalio_common::SignalDefinition for WakeFlow {
    type Workflow = RunActivity;
    type Input = ();
    fn name(&self) -> &str {
        FLOW_WAKE_SIGNAL
    }
}

/// The signal that tells a run an event was delivered to one of its `wait_for_event` steps
/// (docs/steps.md). Its input names the wait, `{"wait_id": ...}`; the run takes the event from
/// PostgreSQL (so an event of any size never rides on a signal), and a repeated signal changes
/// nothing.
pub struct DeliverEvent;

pub const DELIVER_EVENT_SIGNAL: &str = "deliver-event";

impl temporalio_common::SignalDefinition for DeliverEvent {
    type Workflow = RunActivity;
    type Input = Json;
    fn name(&self) -> &str {
        DELIVER_EVENT_SIGNAL
    }
}

/// Signals a delivery to the run `run_id`: `Ok(false)` when the run has ended (it no longer
/// waits, and its wait was closed with it).
pub async fn deliver_event(
    client: &Client,
    run_id: &str,
    delivery: Json,
) -> Result<bool, temporalio_client::errors::WorkflowInteractionError> {
    let handle = client.get_workflow_handle::<RunActivity>(run_id.to_string());
    match handle.signal(DeliverEvent, delivery, temporalio_client::WorkflowSignalOptions::default()).await {
        Ok(()) => Ok(true),
        Err(temporalio_client::errors::WorkflowInteractionError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Wakes flow-control waiters, RunActivity and RunTask workflows alike (a signal is addressed by
/// workflow id and name only). Best effort: a waiter that closed meanwhile is skipped, and one
/// whose signal is lost looks again when its safety timer fires. Returns how many were woken.
pub async fn wake(client: &Client, workflow_ids: &[String]) -> usize {
    let mut woken = 0;
    for id in workflow_ids {
        let handle = client.get_workflow_handle::<RunActivity>(id.clone());
        match handle.signal(WakeFlow, (), temporalio_client::WorkflowSignalOptions::default()).await {
            Ok(()) => woken += 1,
            Err(e) => tracing::debug!(workflow = %id, error = %e, "flow-control wake not delivered; the waiter's timer will look again"),
        }
    }
    woken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_input_event_is_plain_json_on_the_wire() {
        let event = serde_json::json!({"id": "e1", "data": {"n": 1}});
        let input = RunInput {
            definition_id: "d".into(),
            definition_version: 1,
            dedupe_key: "k".into(),
            dedupe_window_secs: 60,
            generation: 2,
            event_time_ms: Some(5),
            trigger: RunSource::event("events.a", 0, 9, Some("e1".into())),
            event: Some(Arc::new(event.clone())),
            traceparent: None,
            operator_retry: false,
        };
        let wire = serde_json::to_value(&input).expect("serializes");
        assert_eq!(wire["event"], event);
        assert_eq!(serde_json::from_value::<RunInput>(wire.clone()).expect("reads back"), input);
        // Inputs written without an event (schedules) read as none.
        let mut without = wire;
        without.as_object_mut().expect("an object").remove("event");
        assert_eq!(serde_json::from_value::<RunInput>(without).expect("reads").event, None);
    }

    /// During a rolling upgrade a newer router starts runs that an older worker begins: fields
    /// the older build does not know are ignored, and what a newer build adds has a default when
    /// an older router left it out (docs/upgrades.md).
    #[test]
    fn run_input_reads_across_one_build_in_either_direction() {
        let mut newer = serde_json::json!({
            "definition_id": "d", "definition_version": 1, "dedupe_key": "k", "dedupe_window_secs": 60,
            "trigger": {"kind": "event", "topic": "events.demo", "partition": 0, "offset": 1},
            "a_field_from_a_newer_build": {"any": "thing"},
        });
        let input: RunInput = serde_json::from_value(newer.clone()).expect("unknown fields are ignored");
        assert_eq!((input.generation, input.event, input.operator_retry), (0, None, false));
        newer.as_object_mut().expect("an object").remove("a_field_from_a_newer_build");
        serde_json::from_value::<RunInput>(newer).expect("the fields every build writes are enough");
    }
}
