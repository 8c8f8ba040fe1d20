//! `tf results quarantined|requeue`: results the relay set aside because they could never be
//! published (unreadable, too large even truncated, refused by the topic), and queuing them
//! again once the cause is fixed.

use std::process::ExitCode;

use tf_config::Settings;

pub async fn quarantined(settings: &Settings, limit: i64, format: crate::Format) -> anyhow::Result<ExitCode> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let rows = tf_store::outbox::quarantined(&pool, limit).await?;
    if format == crate::Format::Json {
        crate::print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("(no quarantined results)");
    }
    for r in &rows {
        let at = tf_envelope::Timestamp(r.quarantined_at_ms);
        println!("{at}  {}\n    {}", r.task_id, r.reason.as_deref().unwrap_or("(no reason recorded)"));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn requeue(settings: &Settings, task_ids: &[String], all: bool, format: crate::Format) -> anyhow::Result<ExitCode> {
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
    if format == crate::Format::Json {
        crate::print_json(&serde_json::json!({"requeued": requeued, "not_quarantined": missing}))?;
    } else {
        for id in &requeued {
            println!("queued again: {id}");
        }
        for id in &missing {
            println!("not quarantined (unknown, published, or queued already): {id}");
        }
    }
    Ok(if missing.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
