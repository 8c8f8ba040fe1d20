//! What each command does: the commands tf-api serves go through it with `--api-url`
//! ([`served_remotely`]); every other command, and those too without `--api-url`, runs against
//! the services directly ([`direct`]). Both give an [`Answer`], printed by `main` in the chosen
//! format, so the two modes print the same objects.

use crate::output::Answer;
use crate::{
    Cli, Command, ConsumerCommand, DbCommand, DeadLettersCommand, DefinitionsCommand, DemoCommand, ResultsCommand, RunsCommand,
    SchedulesCommand, SchemasCommand, TasksCommand, TopicsCommand, consumer, db, dead_letters, definitions, demo, remote, results, runs,
    schedules, schemas, topics,
};

/// The commands tf-api serves, through it; `None` for the others.
pub async fn served_remotely(api: &remote::Remote, command: &Command) -> Option<anyhow::Result<Answer>> {
    Some(match command {
        Command::Definitions(DefinitionsCommand::Apply { files }) => api.apply(files).await,
        Command::Definitions(DefinitionsCommand::List) => api.list_definitions().await,
        Command::Definitions(DefinitionsCommand::Show { id, at_version }) => api.show(id, *at_version).await,
        Command::Definitions(DefinitionsCommand::Delete { id }) => api.delete(id).await,
        Command::Runs(RunsCommand::List { limit, definition, status, key }) => {
            api.list_runs(&runs::RunsQuery { limit: *limit, definition: definition.clone(), status: status.clone(), key: key.clone() })
                .await
        }
        Command::Runs(RunsCommand::Show { run_id }) => api.show_run(run_id).await,
        Command::Runs(RunsCommand::Limits) => api.limits().await,
        Command::Runs(RunsCommand::Retry { run_id }) => api.control_run(run_id, "retry", "").await,
        Command::Runs(RunsCommand::Cancel { run_id, reason }) => api.control_run(run_id, "cancel", reason).await,
        Command::Tasks(TasksCommand::List { status, limit }) => api.list_tasks(status, *limit).await,
        Command::Tasks(TasksCommand::Claim { task_id, .. }) => api.decide(task_id, "claim", serde_json::json!({})).await,
        Command::Tasks(TasksCommand::Complete { task_id, result }) => match serde_json::from_str::<serde_json::Value>(result) {
            Ok(output) => api.decide(task_id, "complete", serde_json::json!({ "output": output })).await,
            Err(e) => Err(anyhow::anyhow!("--result is not JSON: {e}")),
        },
        Command::Tasks(TasksCommand::Reject { task_id, reason }) => {
            api.decide(task_id, "reject", serde_json::json!({ "reason": reason })).await
        }
        Command::DeadLetters(DeadLettersCommand::List { topic, stage, limit, cursor }) => {
            api.list_dead_letters(topic.as_deref(), stage.as_deref(), *limit, cursor.as_deref()).await
        }
        Command::DeadLetters(DeadLettersCommand::Redrive { records, topic, stage, limit }) => {
            api.redrive(records, topic.as_deref(), stage.as_deref(), *limit).await
        }
        _ => return None,
    })
}

pub async fn direct(cli: Cli) -> anyhow::Result<Answer> {
    match cli.command {
        Command::Topics(TopicsCommand::Apply { dir, fail_on_drift }) => topics::apply(&cli.settings, &dir, fail_on_drift).await,
        Command::Schemas(SchemasCommand::Register { schemas, topics }) => schemas::register(&cli.settings, &schemas, &topics).await,
        Command::Db(DbCommand::Migrate) => db::migrate(&cli.settings).await,
        Command::Consumer(ConsumerCommand::Lag { router }) => consumer::lag(&cli.settings, &router.group, &router.topics),
        Command::Consumer(ConsumerCommand::ResetOffsets { router, to_earliest, to_latest, to_datetime, shift_by, execute }) => {
            let to = if to_earliest {
                Ok(tf_kafka::groups::ResetTo::Earliest)
            } else if to_latest {
                Ok(tf_kafka::groups::ResetTo::Latest)
            } else if let Some(t) = to_datetime {
                tf_definitions::cron::parse_time(&t)
                    .map(|t| tf_kafka::groups::ResetTo::Datetime(t.timestamp_millis()))
                    .map_err(anyhow::Error::msg)
            } else if let Some(n) = shift_by {
                Ok(tf_kafka::groups::ResetTo::ShiftBy(n))
            } else {
                Err(anyhow::anyhow!("say where to: --to-earliest, --to-latest, --to-datetime T or --shift-by N"))
            };
            match to {
                Ok(to) => consumer::reset(&cli.settings, &router.group, &router.topics, to, execute),
                Err(e) => Err(e),
            }
        }
        Command::Definitions(cmd) => match cmd {
            DefinitionsCommand::Validate { files } => definitions::validate(&files),
            DefinitionsCommand::Test { files, event, topic } => definitions::test(&files, &event, topic.as_deref()),
            DefinitionsCommand::Apply { files } => definitions::apply(&cli.settings, &files).await,
            DefinitionsCommand::List => definitions::list(&cli.settings).await,
            DefinitionsCommand::Delete { id } => definitions::delete(&cli.settings, &id).await,
            DefinitionsCommand::Show { id, at_version } => definitions::show(&cli.settings, &id, at_version).await,
        },
        Command::Runs(RunsCommand::List { limit, definition, status, key }) => {
            runs::list(&cli.settings, &runs::RunsQuery { limit, definition, status, key }).await
        }
        Command::Runs(RunsCommand::Show { run_id }) => runs::show(&cli.settings, &run_id).await,
        Command::Runs(RunsCommand::Limits) => runs::limits(&cli.settings).await,
        Command::Runs(RunsCommand::Retry { run_id }) => runs::retry(&cli.settings, &run_id).await,
        Command::Runs(RunsCommand::Cancel { run_id, reason }) => runs::cancel(&cli.settings, &run_id, &reason).await,
        Command::Schedules(cmd) => match cmd {
            SchedulesCommand::List => schedules::list(&cli.settings).await,
            SchedulesCommand::Describe { id } => schedules::describe(&cli.settings, &id).await,
            SchedulesCommand::Pause { id, note } => schedules::pause(&cli.settings, &id, &note).await,
            SchedulesCommand::Resume { id } => schedules::resume(&cli.settings, &id).await,
            SchedulesCommand::Trigger { id } => schedules::trigger(&cli.settings, &id).await,
            SchedulesCommand::Backfill { id, from, to, overlap } => schedules::backfill(&cli.settings, &id, &from, &to, overlap).await,
            SchedulesCommand::Reconcile => schedules::reconcile(&cli.settings).await,
        },
        Command::Tasks(TasksCommand::List { status, limit }) => runs::list_tasks(&cli.settings, &status, limit).await,
        Command::Tasks(TasksCommand::Claim { task_id, actor }) => runs::claim(&cli.settings, &task_id, &actor).await,
        Command::Tasks(TasksCommand::Complete { task_id, result }) => runs::complete(&cli.settings, &task_id, &result).await,
        Command::Tasks(TasksCommand::Reject { task_id, reason }) => runs::reject(&cli.settings, &task_id, &reason).await,
        Command::Results(ResultsCommand::Quarantined { limit }) => results::quarantined(&cli.settings, limit).await,
        Command::Results(ResultsCommand::Requeue { task_ids, all }) => results::requeue(&cli.settings, &task_ids, all).await,
        Command::DeadLetters(_) => dead_letters::needs_api(),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "tf", &mut script);
            let script = String::from_utf8(script)?;
            Ok(Answer::new(serde_json::json!({ "shell": shell.to_string(), "script": script }))?.text(script))
        }
        Command::Demo(DemoCommand::Roundtrip { topic }) => demo::roundtrip(&cli.settings, &topic).await,
        Command::Demo(DemoCommand::Events { topic, orders }) => demo::events(&cli.settings, &topic, orders).await,
    }
}
