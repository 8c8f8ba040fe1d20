//! The command tree: every subcommand and argument with its help (a test walks it, and the
//! integration tests walk the binary's `--help` pages to run every command with `-o json`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tf_config::Settings;

use crate::output::Format;
use crate::schedules;

/// Operate the task factory: definitions, runs, tasks, schedules and results; the consumer
/// group and its replays; topics, schemas and the database; and the demo.
///
/// Every setting is also an environment variable with the TF_ prefix; the defaults point at
/// the local stack started by `scripts/stack up`.
#[derive(Parser)]
#[command(name = "tf", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) settings: Settings,
    /// Go through tf-api for the commands it serves (definitions apply/list/show/delete, runs
    /// list/show/retry/cancel, tasks list/claim/complete/reject, dead-letters) instead of
    /// reaching PostgreSQL and Temporal; every other command still connects directly.
    #[arg(long, env = "TF_API_URL", global = true, help_heading = "Connections (every command; TF_* variables)")]
    pub(crate) api_url: Option<String>,
    /// How every command prints: text and tables for people, or the answer's object as JSON or
    /// YAML for scripts (the API's own objects, in both modes).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table, global = true)]
    pub(crate) output: Format,
    /// The bearer token for --api-url.
    #[arg(long, env = "TF_API_TOKEN", hide_env_values = true, global = true, help_heading = "Connections (every command; TF_* variables)")]
    pub(crate) api_token: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Kafka topics from the declarative specs in topics/.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Avro schemas in schemas/avro/ and the schema registry.
    #[command(subcommand)]
    Schemas(SchemasCommand),
    /// The PostgreSQL application database.
    #[command(subcommand)]
    Db(DbCommand),
    /// The router's consumer group: lag, and offset resets for replay.
    #[command(subcommand)]
    Consumer(ConsumerCommand),
    /// Activity definitions: validate, apply (versioned), list, show.
    #[command(subcommand)]
    Definitions(DefinitionsCommand),
    /// Runs: what started, from which event or schedule, and how far it got.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Temporal Schedules of cron definitions: inspect, pause, resume, trigger, backfill.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// Tasks: list them by status; claim, complete or reject human tasks.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Task results the relay quarantined (could never be published), and queuing them again.
    #[command(subcommand)]
    Results(ResultsCommand),
    /// The dead-letter queue, through tf-api (--api-url): browse and redrive.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLettersCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Demonstrations against the running stack.
    #[command(subcommand)]
    Demo(DemoCommand),
}

#[derive(Subcommand)]
pub(crate) enum TopicsCommand {
    /// Create missing topics and report drift of existing ones.
    ///
    /// Idempotent. Existing topics are never changed: partitions, replication, retention and
    /// cleanup policy decide what data a topic keeps, so a difference is reported as drift for
    /// an operator to resolve.
    Apply {
        /// Folder of topic specs, one YAML file per topic.
        #[arg(long, default_value = "topics")]
        dir: PathBuf,
        /// Exit with status 3 when any topic drifted from its spec.
        #[arg(long)]
        fail_on_drift: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum SchemasCommand {
    /// Register each topic's value schema under the subject <topic>-value.
    ///
    /// Topic specs name their schema in `value_schema`; the file is schemas/avro/<name>.avsc.
    /// Idempotent: a schema the subject already has keeps its id.
    Register {
        /// Folder of Avro schemas.
        #[arg(long, default_value = "schemas/avro")]
        schemas: PathBuf,
        /// Folder of topic specs.
        #[arg(long, default_value = "topics")]
        topics: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum DbCommand {
    /// Apply pending migrations (embedded in this binary); idempotent.
    Migrate,
}

#[derive(Subcommand)]
pub(crate) enum ConsumerCommand {
    /// Records not yet routed, per partition (committed offset vs. end).
    Lag {
        #[command(flatten)]
        router: tf_config::RouterKafka,
    },
    /// Move the group's offsets, like `kafka-consumer-groups --reset-offsets`: a dry run
    /// printing current and new offsets unless --execute; refused while the group is active.
    /// Replayed events do not start second runs: the dedupe layers absorb them.
    ResetOffsets {
        /// The router's group (it must have no active member) and topics.
        #[command(flatten)]
        router: tf_config::RouterKafka,
        /// To the first offset still in each partition (replay everything retained).
        #[arg(long, group = "to")]
        to_earliest: bool,
        /// To the end of each partition (skip everything not yet routed).
        #[arg(long, group = "to")]
        to_latest: bool,
        /// RFC 3339: the first offset at or after this time.
        #[arg(long, group = "to")]
        to_datetime: Option<String>,
        /// Relative to the committed offset; negative replays.
        #[arg(long, group = "to", allow_hyphen_values = true)]
        shift_by: Option<i64>,
        /// Commit the new offsets (without it: dry run).
        #[arg(long)]
        execute: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum DefinitionsCommand {
    /// Check definition files without touching the database: YAML shape, every CEL
    /// expression (errors give the field path and position), durations, required params.
    Validate {
        /// Definition files or folders of *.yaml (a file may hold several documents); `-` reads
        /// standard input.
        #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
    /// Try definitions on a sample event, without any service: does the trigger match, what
    /// dedupe key and window it gets, and which tasks would be spawned (`static` context
    /// sources are used; `sql` and `http` ones are not resolved).
    Test {
        /// Definition files or folders of *.yaml; `-` reads standard input.
        #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// A JSON file with the event as expressions see it: CloudEvents attributes (`id`,
        /// `type`, `source`, `time`, ...) and `data`.
        #[arg(long)]
        event: PathBuf,
        /// The topic the event would arrive on (default: the definition's first topic).
        #[arg(long)]
        topic: Option<String>,
    },
    /// Store definitions: a changed document becomes a new immutable version, an unchanged
    /// one is a no-op, a change of `enabled` alone switches the current version.
    Apply {
        /// Definition files or folders of *.yaml (a file may hold several documents); `-` reads
        /// standard input.
        #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
    /// The newest version of every definition.
    List,
    /// Remove a definition: its versions are kept (runs are pinned to them) but retired, so it
    /// is neither routed nor scheduled; applying it again restores it.
    Delete {
        /// The definition id.
        id: String,
    },
    /// One definition as stored (the newest version unless VERSION is given).
    Show {
        /// The definition id.
        id: String,
        /// A version number; the newest when left out.
        #[arg(value_name = "VERSION")]
        at_version: Option<i32>,
    },
}

#[derive(Subcommand)]
pub(crate) enum RunsCommand {
    /// The most recent runs, newest first, with a Temporal UI link each.
    List {
        /// How many runs to show.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Only runs of this definition.
        #[arg(long)]
        definition: Option<String>,
        /// Only runs in this status.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(tf_definitions::RunStatus::ALL.iter().map(|s| s.as_str())))]
        status: Option<String>,
        /// Only runs of this dedupe key.
        #[arg(long)]
        key: Option<String>,
    },
    /// Flow-control limits holding or queueing work now: each limit and key with how many hold
    /// it, its capacity, how many wait and who is next (`runs list --status waiting` says why
    /// each run waits).
    Limits,
    /// One run's lineage: its source (topic, partition, offset, event id, or schedule slot),
    /// definition version, context snapshot, tasks, and where each result landed.
    Show {
        /// The run id (its workflow id), as `tf runs list` shows it.
        run_id: String,
    },
    /// Start a failed (or cancelled) run again, as the next attempt of the same run id and
    /// dedupe generation; tasks that succeeded before are not run again. Completed, running and
    /// deduplicated runs are refused.
    Retry {
        /// The run id (its workflow id), as `tf runs list` shows it.
        run_id: String,
    },
    /// Cancel a running run: its tasks are cancelled (each publishes a CANCELLED result) and
    /// the run ends `cancelled`; `tf runs retry` can start it again.
    Cancel {
        /// The run id (its workflow id), as `tf runs list` shows it.
        run_id: String,
        /// Why; recorded with the cancellation in Temporal and in the tasks' errors.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum SchedulesCommand {
    /// Every task factory schedule, paused or not, with its next fire times.
    List,
    /// One schedule: calendar, time zone, state and note, recent and next runs. ID is the
    /// schedule id or the definition id.
    Describe {
        /// The schedule id or the definition id.
        id: String,
    },
    /// Pause a schedule; the note says why (the scheduler never resumes an operator's pause).
    Pause {
        /// The schedule id or the definition id.
        id: String,
        /// Why it is paused; shown by `describe` and the Temporal UI.
        #[arg(long)]
        note: String,
    },
    /// Resume a paused schedule.
    Resume {
        /// The schedule id or the definition id.
        id: String,
    },
    /// Start one run now.
    Trigger {
        /// The schedule id or the definition id.
        id: String,
    },
    /// Run every scheduled time in [--from, --to) (RFC 3339), in one-day batches.
    Backfill {
        /// The schedule id or the definition id.
        id: String,
        /// Start of the range, RFC 3339 (included).
        #[arg(long)]
        from: String,
        /// End of the range, RFC 3339 (included, as Temporal includes it).
        #[arg(long)]
        to: String,
        /// What to do with a backfilled run while an earlier one still runs.
        #[arg(
            long,
            default_value = "allow_all",
            value_parser = schedules::overlap_parser()
        )]
        overlap: temporalio_client::schedules::ScheduleOverlapPolicy,
    },
    /// Bring the schedules in line with the definitions now (the worker does this continuously).
    Reconcile,
}

#[derive(Subcommand)]
pub(crate) enum TasksCommand {
    /// Tasks in a status (default: human tasks waiting for completion).
    List {
        /// Only tasks in this status.
        #[arg(long, default_value = "awaiting_human", value_parser = clap::builder::PossibleValuesParser::new(tf_definitions::TaskStatus::ALL.iter().map(|s| s.as_str())))]
        status: String,
        /// How many tasks to show, oldest first.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Claim a human task, so that only its holder decides it.
    Claim {
        /// The task id, `<run id>/<template>/<index>`.
        task_id: String,
        /// Who claims it (direct mode; through the API the token's name claims it).
        #[arg(long = "as", default_value_t = default_actor())]
        actor: String,
    },
    /// Complete a human task with its output; the task's result is then published.
    Complete {
        /// The task id, `<run id>/<template>/<index>`.
        task_id: String,
        /// The task's result, as JSON (the output its result record carries).
        #[arg(long)]
        result: String,
    },
    /// Reject a human task: it fails with the reason, and its run with it.
    Reject {
        /// The task id, `<run id>/<template>/<index>`.
        task_id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

/// Who a direct-mode decision is recorded as.
pub(crate) fn default_actor() -> String {
    std::env::var("USER").map(|u| format!("tf-cli:{u}")).unwrap_or_else(|_| "tf-cli".into())
}

#[derive(Subcommand)]
pub(crate) enum DeadLettersCommand {
    /// Dead letters in (partition, offset) order: stage, reason, source coordinates, the decoded
    /// event, and whether it was redriven.
    List {
        /// Only dead letters of records from this source topic.
        #[arg(long)]
        topic: Option<String>,
        /// Only this stage (decode, filter, dedupe-key, start, ...).
        #[arg(long)]
        stage: Option<String>,
        /// How many to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Continue after this position (the previous page's next_cursor).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Send dead letters back to their source topic, each at most once.
    Redrive {
        /// DLQ records as PARTITION:OFFSET.
        records: Vec<String>,
        /// Or every dead letter from this source topic ...
        #[arg(long)]
        topic: Option<String>,
        /// ... and/or of this stage ...
        #[arg(long)]
        stage: Option<String>,
        /// ... at most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Subcommand)]
pub(crate) enum ResultsCommand {
    /// Results the relay set aside, oldest first, with why.
    Quarantined {
        /// How many to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Queue quarantined results again, once their cause is fixed; the relay publishes them next.
    Requeue {
        /// Task ids of the results.
        task_ids: Vec<String>,
        /// Every quarantined result.
        #[arg(long, conflicts_with = "task_ids")]
        all: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum DemoCommand {
    /// Produce one envelope through the registry, read it back and print both ends.
    Roundtrip {
        /// Topic to use; its value schema must be the envelope.
        #[arg(long, default_value = "events.demo")]
        topic: String,
    },
    /// Produce a burst of example events for the definitions in examples/definitions.
    Events {
        /// Topic to produce to; its value schema must be the envelope.
        #[arg(long, default_value = "events.demo")]
        topic: String,
        /// How many order events (signups and one bad record come on top).
        #[arg(long, default_value_t = 20)]
        orders: usize,
    },
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }

    /// Every subcommand says what it does and every argument has help text.
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id != "help" && id != "version" && a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} <{id}>"));
                }
            }
            for sub in cmd.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_name() != "help" && sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&<super::Cli as clap::CommandFactory>::command(), "tf", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }

    /// Connection flags stand apart from a command's own options, and closed sets of values are
    /// listed.
    #[test]
    fn help_groups_connections_and_lists_values() {
        let help = |path: &[&str]| {
            let mut cmd = <super::Cli as clap::CommandFactory>::command();
            cmd.build();
            let mut sub = &mut cmd;
            for p in path {
                sub = sub.find_subcommand_mut(p).unwrap_or_else(|| panic!("no subcommand {p}"));
            }
            sub.render_long_help().to_string()
        };
        let tasks = help(&["tasks", "list"]);
        let heading = tasks.find("Connections (every command; TF_* variables):").expect(&tasks);
        assert!(tasks.find("--status").unwrap() < heading && tasks.find("--kafka-brokers").unwrap() > heading, "{tasks}");
        let values: String = tasks.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            values.contains("[possible values: pending, running, awaiting_human, waiting, skipped, succeeded, failed, cancelled]"),
            "{tasks}"
        );
        let backfill = help(&["schedules", "backfill"]);
        assert!(backfill.contains("buffer_one") && backfill.contains("terminate_other"), "{backfill}");
    }
}
