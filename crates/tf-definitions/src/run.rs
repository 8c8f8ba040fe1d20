//! What a run and its tasks are, as every layer sees them: their ids ([`RunId`], [`TaskId`]),
//! where a run came from
//! ([`RunSource`], one type from the router's start through Temporal, the run row and the
//! result record), its [`TriggerKind`], and the lifecycle of runs and tasks ([`RunStatus`],
//! [`TaskStatus`]) and what a task does ([`TaskType`]). The text forms are the contract: the
//! lowercase word is what PostgreSQL, definitions, the API and Temporal's `TriggerKind` search
//! attribute hold; the uppercase symbol is the Avro enum on `taskfactory.results`. The two
//! enums that have a symbol there (trigger kind, task status) also parse it, because results
//! queued before this type existed hold it; the others parse only their word.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be one of {allowed}, not {value:?}")]
pub struct UnknownVariant {
    what: &'static str,
    allowed: String,
    value: String,
}

/// An enum whose values travel as words: `as_str` (lowercase, PostgreSQL and JSON), `symbol`
/// (uppercase, Avro), serde as the word; parsing takes the word, and the symbol too when
/// `symbols: true`.
macro_rules! word_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, symbols: $symbols:literal { $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(into = "&'static str", try_from = "String")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }

            /// The Avro enum symbol.
            pub fn symbol(self) -> String {
                self.as_str().to_ascii_uppercase()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;

            fn from_str(s: &str) -> Result<$name, UnknownVariant> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s || ($symbols && v.symbol() == s)).ok_or_else(|| UnknownVariant {
                    what: $what,
                    allowed: $name::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                    value: s.chars().take(64).collect(),
                })
            }
        }

        impl From<$name> for &'static str {
            fn from(v: $name) -> &'static str {
                v.as_str()
            }
        }

        /// In the OpenAPI document: a string, one of the words.
        #[cfg(feature = "utoipa")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($word),+]))
                    .into()
            }
        }

        #[cfg(feature = "utoipa")]
        impl utoipa::ToSchema for $name {}

        #[cfg(feature = "sqlx")]
        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        #[cfg(feature = "sqlx")]
        impl<'q> sqlx::Encode<'q, sqlx::Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut sqlx::postgres::PgArgumentBuffer) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }

        #[cfg(feature = "sqlx")]
        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<$name, sqlx::error::BoxDynError> {
                Ok(<&str as sqlx::Decode<'r, sqlx::Postgres>>::decode(value)?.parse()?)
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownVariant;

            fn try_from(s: String) -> Result<$name, UnknownVariant> {
                s.parse()
            }
        }
    };
}

word_enum!(
    /// What started a run.
    TriggerKind, "a trigger kind", symbols: true {
        /// A Kafka event the router matched.
        Event = "event",
        /// A Temporal Schedule of a cron definition.
        Cron = "cron",
        /// Someone started it by hand (a test, an operator).
        Manual = "manual",
    }
);

word_enum!(
    /// A run's state in `activity_runs`.
    RunStatus, "a run status", symbols: false {
        Running = "running",
        /// Admitted, waiting for a flow-control limit (concurrency, throttle) before it executes.
        Waiting = "waiting",
        Completed = "completed",
        Failed = "failed",
        /// Another run holds the generation: this execution did nothing.
        Deduplicated = "deduplicated",
        Cancelled = "cancelled",
        /// A flow-control rate limit turned it away; `status_reason` says which.
        Skipped = "skipped",
    }
);

word_enum!(
    /// A task's state in `tasks`; the last three are final and published as results.
    TaskStatus, "a task status", symbols: true {
        Pending = "pending",
        Running = "running",
        AwaitingHuman = "awaiting_human",
        /// A sleep or a wait for an event in progress.
        Waiting = "waiting",
        /// Not executed: a template it runs after failed (docs/steps.md). Not final: it has no
        /// result record.
        Skipped = "skipped",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
);

word_enum!(
    /// What a task does; a template's `type`.
    TaskType, "a task type", symbols: false {
        Http = "http",
        Kafka = "kafka",
        Human = "human",
        Workflow = "workflow",
        /// A durable pause of the run (docs/steps.md).
        Sleep = "sleep",
        /// The run waits for another event that matches it (docs/steps.md).
        WaitForEvent = "wait_for_event",
    }
);

impl RunStatus {
    /// An operator may start a run in this state again as the next attempt (`runs retry`).
    pub fn retryable(self) -> bool {
        matches!(self, RunStatus::Failed | RunStatus::Cancelled)
    }

    /// A later event of the run's window (or a redelivery) starts it again. Not a cancelled
    /// one: what an operator cancelled stays cancelled until an operator retries it.
    pub fn restarts_on_event(self) -> bool {
        self == RunStatus::Failed
    }
}

impl TaskStatus {
    /// Final: the task has a result.
    pub fn is_final(self) -> bool {
        matches!(self, TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Cancelled)
    }
}

/// A run's id, which is also its RunActivity workflow id: `run/<definition>/<key>/<generation>`
/// for event runs ([`crate::DedupeKey::run_id`]), the schedule's workflow id for cron runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(String);

/// A task's id, which is also its RunTask workflow id: `<run id>/<template>/<index>` (a retried
/// run's tasks: `<run id>/attempt-<n>/<template>/<index>`, so each attempt has its own results).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(String);

impl RunId {
    /// The id Temporal gave the running workflow (a schedule names its runs itself).
    pub fn from_workflow_id(id: impl Into<String>) -> RunId {
        RunId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of this run's task from `template`, item `index` of its `for_each`.
    pub fn task(&self, template: &str, index: u32) -> TaskId {
        TaskId(format!("{}/{template}/{index}", self.0))
    }
}

impl TaskId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// PostgreSQL holds ids as text.
macro_rules! text_id {
    ($($name:ident),*) => {$(
        #[cfg(feature = "sqlx")]
        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <String as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        #[cfg(feature = "sqlx")]
        impl<'q> sqlx::Encode<'q, sqlx::Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut sqlx::postgres::PgArgumentBuffer) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, sqlx::Postgres>>::encode_by_ref(&self.0.as_str(), buf)
            }
        }

        #[cfg(feature = "sqlx")]
        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<$name, sqlx::error::BoxDynError> {
                Ok($name(<String as sqlx::Decode<'r, sqlx::Postgres>>::decode(value)?))
            }
        }
    )*};
}
text_id!(RunId, TaskId);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a run came from: the event's coordinates, or the schedule and its nominal time. The
/// router and the schedule write it into the run's input; the run row and every result record
/// carry it unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSource {
    pub kind: TriggerKind,
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

impl RunSource {
    /// An event at `topic[partition]@offset`.
    pub fn event(topic: &str, partition: i32, offset: i64, event_id: Option<String>) -> RunSource {
        RunSource {
            topic: Some(topic.to_string()),
            partition: Some(partition),
            offset: Some(offset),
            event_id,
            ..RunSource::of(TriggerKind::Event)
        }
    }

    /// A firing of the schedule `schedule_id`.
    pub fn cron(schedule_id: String) -> RunSource {
        RunSource { schedule_id: Some(schedule_id), ..RunSource::of(TriggerKind::Cron) }
    }

    /// A run of `kind` with no coordinates yet.
    pub fn of(kind: TriggerKind) -> RunSource {
        RunSource { kind, topic: None, partition: None, offset: None, event_id: None, schedule_id: None, scheduled_for_ms: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_parse_symbols_only_where_avro_has_them_and_serialize_as_words() {
        assert_eq!("EVENT".parse::<TriggerKind>(), Ok(TriggerKind::Event));
        assert!("Event".parse::<TriggerKind>().is_err(), "the word or the symbol, nothing in between");
        assert_eq!("workflow".parse::<TaskType>(), Ok(TaskType::Workflow));
        assert!("HTTP".parse::<TaskType>().is_err() && "COMPLETED".parse::<RunStatus>().is_err(), "no symbol form: the word only");
        assert_eq!("awaiting_human".parse::<TaskStatus>(), Ok(TaskStatus::AwaitingHuman));
        assert_eq!(TaskStatus::Succeeded.symbol(), "SUCCEEDED");
        assert_eq!(serde_json::to_value(RunStatus::Deduplicated).unwrap(), "deduplicated");
        assert_eq!(serde_json::from_value::<TaskStatus>("FAILED".into()).unwrap(), TaskStatus::Failed);
        let e = "exploded".parse::<RunStatus>().unwrap_err().to_string();
        assert_eq!(
            e,
            "a run status must be one of running, waiting, completed, failed, deduplicated, cancelled, skipped, not \"exploded\""
        );
        assert!(TaskStatus::Cancelled.is_final() && !TaskStatus::AwaitingHuman.is_final());
        assert!(RunStatus::Failed.retryable() && !RunStatus::Completed.retryable());
        assert!(RunStatus::Cancelled.retryable() && !RunStatus::Cancelled.restarts_on_event() && RunStatus::Failed.restarts_on_event());
    }

    #[test]
    fn task_ids_extend_their_run_id() {
        let run = RunId::from_workflow_id("run/orders/k-1/2");
        let task = run.task("ship", 3);
        assert_eq!(task.as_str(), "run/orders/k-1/2/ship/3");
        assert_eq!(serde_json::to_value(&task).unwrap(), "run/orders/k-1/2/ship/3", "plain strings on the wire");
    }

    #[test]
    fn a_run_source_reads_what_earlier_versions_wrote() {
        // A workflow input from before the type existed: lowercase kind, absent fields.
        let old: RunSource = serde_json::from_str(r#"{"kind":"cron","schedule_id":"tf/nightly"}"#).unwrap();
        assert_eq!(old, RunSource::cron("tf/nightly".into()));
        // A result record's trigger: uppercase kind.
        let result: RunSource =
            serde_json::from_str(r#"{"kind":"EVENT","topic":"events.a","partition":1,"offset":7,"event_id":"e"}"#).unwrap();
        assert_eq!(result, RunSource::event("events.a", 1, 7, Some("e".into())));
        assert_eq!(serde_json::to_value(&result).unwrap()["kind"], "event");
    }
}
