//! `tf consumer lag` and `tf consumer reset-offsets`: a consumer group's lag per partition, and
//! replay by moving its committed offsets (dry run unless `--execute`).

use std::process::ExitCode;

use tf_config::Settings;
use tf_kafka::groups::{self, ResetTo};

fn topics(settings: &Settings, patterns: &[String]) -> anyhow::Result<Vec<String>> {
    Ok(groups::resolve_topics(&settings.kafka_brokers, patterns)?)
}

pub fn lag(settings: &Settings, group: &str, patterns: &[String], format: crate::Format) -> anyhow::Result<ExitCode> {
    let topics = topics(settings, patterns)?;
    let rows = groups::lag(&settings.kafka_brokers, group, &topics)?;
    if format == crate::Format::Json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| serde_json::json!({"topic": r.topic, "partition": r.partition, "committed": r.committed, "end": r.high, "lag": r.lag()}))
            .collect();
        crate::print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<40} {:>9} {:>12} {:>12} {:>10}", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG");
    let mut total = 0;
    for r in &rows {
        total += r.lag();
        let committed = r.committed.map_or("-".to_string(), |c| c.to_string());
        println!("{:<40} {:>9} {:>12} {:>12} {:>10}", r.topic, r.partition, committed, r.high, r.lag());
    }
    println!("group {group}: total lag {total}");
    Ok(ExitCode::SUCCESS)
}

pub fn reset(settings: &Settings, group: &str, patterns: &[String], to: ResetTo, execute: bool) -> anyhow::Result<ExitCode> {
    let topics = topics(settings, patterns)?;
    let plan = groups::plan_reset(&settings.kafka_brokers, group, &topics, to)?;
    println!("{:<40} {:>9} {:>12} {:>12}", "TOPIC", "PARTITION", "CURRENT", "NEW");
    for p in &plan {
        println!("{:<40} {:>9} {:>12} {:>12}", p.topic, p.partition, p.current.map_or("-".to_string(), |c| c.to_string()), p.new);
    }
    if execute {
        groups::execute_reset(&settings.kafka_brokers, group, &plan)?;
        println!("committed the new offsets for group {group}; the router replays from there (dedupe keeps runs single)");
    } else {
        println!("dry run: nothing changed; add --execute to commit these offsets (stop the router first)");
    }
    Ok(ExitCode::SUCCESS)
}
