//! `tf consumer lag` and `tf consumer reset-offsets`: a consumer group's lag per partition, and
//! replay by moving its committed offsets (dry run unless `--execute`).

use serde_json::json;
use tf_config::Settings;
use tf_kafka::groups::{self, ResetTo};

use crate::output::{Answer, say, table};

fn topics(settings: &Settings, patterns: &[String]) -> anyhow::Result<Vec<String>> {
    Ok(groups::resolve_topics(&settings.kafka_brokers, patterns)?)
}

pub fn lag(settings: &Settings, group: &str, patterns: &[String]) -> anyhow::Result<Answer> {
    let topics = topics(settings, patterns)?;
    let rows = groups::lag(&settings.kafka_brokers, group, &topics)?;
    let objects: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| json!({"topic": r.topic, "partition": r.partition, "committed": r.committed, "end": r.high, "lag": r.lag()}))
        .collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.topic.clone(),
                r.partition.to_string(),
                r.committed.map_or("-".to_string(), |c| c.to_string()),
                r.high.to_string(),
                r.lag().to_string(),
            ]
        })
        .collect();
    let total: i64 = rows.iter().map(tf_kafka::groups::PartitionLag::lag).sum();
    let mut text = table(&["TOPIC", "PARTITION", "COMMITTED", "END", "LAG"], &cells, "(the group reads no partition)");
    say!(text, "group {group}: total lag {total}");
    Ok(Answer::new(json!({"group": group, "total_lag": total, "partitions": objects}))?.text(text))
}

pub fn reset(settings: &Settings, group: &str, patterns: &[String], to: ResetTo, execute: bool) -> anyhow::Result<Answer> {
    let topics = topics(settings, patterns)?;
    let plan = groups::plan_reset(&settings.kafka_brokers, group, &topics, to)?;
    let cells: Vec<Vec<String>> = plan
        .iter()
        .map(|p| vec![p.topic.clone(), p.partition.to_string(), p.current.map_or("-".to_string(), |c| c.to_string()), p.new.to_string()])
        .collect();
    let mut text = table(&["TOPIC", "PARTITION", "CURRENT", "NEW"], &cells, "(no partitions)");
    if execute {
        groups::execute_reset(&settings.kafka_brokers, group, &plan)?;
        say!(text, "committed the new offsets for group {group}; the router replays from there (dedupe keeps runs single)");
    } else {
        say!(text, "dry run: nothing changed; add --execute to commit these offsets (stop the router first)");
    }
    let partitions: Vec<serde_json::Value> =
        plan.iter().map(|p| json!({"topic": p.topic, "partition": p.partition, "current": p.current, "new": p.new})).collect();
    Ok(Answer::new(json!({"group": group, "executed": execute, "partitions": partitions}))?.text(text))
}
