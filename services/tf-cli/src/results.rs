//! `tf results quarantined|requeue`: results the relay set aside because they could never be
//! published (unreadable, too large even truncated, refused by the topic), and queuing them
//! again once the cause is fixed.

use tf_config::Settings;

use crate::output::{Answer, failure_if, say, table};

pub async fn quarantined(settings: &Settings, limit: i64) -> anyhow::Result<Answer> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let rows = tf_store::outbox::quarantined(&pool, limit).await?;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                tf_envelope::Timestamp(r.quarantined_at_ms).to_string(),
                r.task_id.clone(),
                r.reason.clone().unwrap_or_else(|| "(no reason recorded)".into()),
            ]
        })
        .collect();
    let text = table(&["QUARANTINED", "TASK", "REASON"], &cells, "(no quarantined results)");
    Ok(Answer::new(&rows)?.text(text))
}

pub async fn requeue(settings: &Settings, task_ids: &[String], all: bool) -> anyhow::Result<Answer> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let ids: Vec<String> = if all {
        tf_store::outbox::quarantined(&pool, i64::MAX).await?.into_iter().map(|r| r.task_id).collect()
    } else {
        task_ids.to_vec()
    };
    if ids.is_empty() {
        anyhow::bail!("name the results to queue again (their task ids), or --all");
    }
    let requeued = tf_store::outbox::requeue(&pool, &ids).await?;
    let missing: Vec<&String> = ids.iter().filter(|id| !requeued.contains(id)).collect();
    let mut text = String::new();
    for id in &requeued {
        say!(text, "queued again: {id}");
    }
    for id in &missing {
        say!(text, "not quarantined (unknown, published, or queued already): {id}");
    }
    Ok(Answer::new(serde_json::json!({"requeued": requeued, "not_quarantined": missing}))?.text(text).code(failure_if(!missing.is_empty())))
}
