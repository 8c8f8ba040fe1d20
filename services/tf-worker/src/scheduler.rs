//! The schedule reconciler, run beside the worker: keeps one Temporal Schedule per cron
//! definition in step with `activity_definitions`, at start, whenever the table changes, and
//! once a minute regardless (a deleted schedule comes back; a wrong pinned version or a
//! reconciler pause that no longer applies is corrected).

use std::time::{Duration, Instant};

use temporalio_client::Client;
use tf_store::PgPool;
use tf_temporal::schedules::{self, Change};

pub async fn run(
    pool: PgPool,
    client: Client,
    task_queue: String,
    every: Duration,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut known = String::new();
    let mut last_full = Instant::now() - Duration::from_secs(3600);
    loop {
        if *stop.borrow() {
            return;
        }
        match tf_store::definitions::fingerprint(&pool).await {
            Ok(fp) if fp != known || last_full.elapsed() > Duration::from_secs(60) => match reconcile(&pool, &client, &task_queue).await {
                Ok(changes) => {
                    metrics.schedule_changes.increment(changes);
                    known = fp;
                    last_full = Instant::now();
                }
                Err(e) => {
                    metrics.reconcile_failures.increment(1);
                    tracing::warn!(error = %e, "schedule reconcile failed; retrying");
                }
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read definitions; schedules left as they are"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Returns how many changes it made.
pub async fn reconcile(pool: &PgPool, client: &Client, task_queue: &str) -> anyhow::Result<u64> {
    let rows = tf_store::definitions::latest(pool).await?;
    let (wanted, broken) = schedules::desired_from_specs(rows.into_iter().filter(|r| !r.retired).map(|r| (r.spec, r.version, r.enabled)));
    for b in &broken {
        tracing::error!(error = %b, "stored definition does not parse; its schedule is left alone");
    }
    let mut made = 0;
    for (id, changes) in schedules::reconcile(client, task_queue, &wanted, &broken).await? {
        if changes != [Change::Unchanged] {
            made += changes.len() as u64;
            tracing::info!(schedule = %id, ?changes, "schedule reconciled");
        }
    }
    Ok(made)
}
