//! Runs whose workflow ended outside the worker's hands: terminated from the Temporal UI or
//! CLI, timed out by an execution timeout, or gone with its history. Such a run stays `running`
//! in PostgreSQL, where it holds its dedupe window for good (`runs retry` refuses a running run,
//! `runs cancel` fails on a closed workflow). Every interval the oldest running runs are checked
//! against Temporal and settled as the worker would have recorded them.

use std::time::Duration;

use tf_temporal::run_control::{Execution, execution};

/// Runs checked per round, oldest first.
const BATCH: i64 = 200;

pub async fn run(pool: tf_store::PgPool, client: temporalio_client::Client, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        // A run younger than one interval is not stuck yet, and may not have begun in
        // Temporal's view.
        if let Err(e) = round(&pool, &client, every).await {
            tracing::warn!(error = %e, "reconciling running runs failed; next try in {} s", every.as_secs());
        }
    }
}

async fn round(pool: &tf_store::PgPool, client: &temporalio_client::Client, min_age: Duration) -> anyhow::Result<()> {
    for (run_id, recorded_execution) in tf_store::runs::running_since(pool, min_age, BATCH).await? {
        let (execution_id, status, how) = match execution(client, run_id.as_str()).await? {
            Execution::Open => continue,
            Execution::Closed { execution_id, status, how } => (execution_id, status, how),
            Execution::Gone => (recorded_execution.clone(), tf_definitions::RunStatus::Failed, "gone from Temporal"),
        };
        // Only the execution PostgreSQL recorded: a later one (a retry) records its own end.
        if execution_id != recorded_execution {
            continue;
        }
        if let Some(released) = tf_store::runs::settle(pool, &run_id, &execution_id, status).await? {
            tracing::warn!(run = %run_id, how, status = %status, "run's workflow ended outside the worker; recorded");
            tf_temporal::wake(client, &released.wake).await;
        }
    }
    Ok(())
}
