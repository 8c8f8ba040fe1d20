//! `tf-loadtest clean`: removes what earlier load tests left on a stack. Runs remove their own
//! topics and definition when they succeed; failed runs, `--keep` and older versions of this
//! tool left them, and a router reads every `events.*` topic it finds.

use std::process::ExitCode;

use anyhow::Context;
use tf_config::Settings;
use tf_kafka::groups::GroupError;

use crate::made::Made;

#[derive(clap::Args)]
pub struct CleanArgs {
    /// Only list what would be removed.
    #[arg(long)]
    dry_run: bool,
}

/// The names this tool gives the topics it makes: a prefix, the run's nonce (digits), and for
/// chaos topics `-sink` or `-dlq`.
const LOAD_TEST_TOPICS: &str = r"^(events\.loadtest-|compare\.loadtest-|loadtest-sink-|loadtest-peer-)[0-9]+$|^chaos-[0-9]+(-sink|-dlq)?$";

/// A definition id the burst and `steady` give theirs (`chaos` keeps its own in its database).
fn definition_made_by_a_load_test(id: &str) -> bool {
    id.strip_prefix("loadtest-").is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

pub async fn run(s: &Settings, a: &CleanArgs) -> anyhow::Result<ExitCode> {
    let pool = tf_store::connect(&s.database_url).await?;
    let definitions: Vec<String> = tf_store::definitions::latest(&pool)
        .await?
        .into_iter()
        .filter(|d| !d.retired && definition_made_by_a_load_test(&d.id))
        .map(|d| d.id)
        .collect();
    let brokers = s.kafka_brokers.clone();
    // Blocking: librdkafka's metadata request.
    let topics = tokio::task::spawn_blocking(move || match tf_kafka::groups::resolve_topics(&brokers, &[LOAD_TEST_TOPICS.to_owned()]) {
        Err(GroupError::NoTopics(_)) => Ok(Vec::new()),
        other => other,
    })
    .await?
    .context("listing Kafka topics")?;
    // Kept by failed chaos runs for inspection.
    let databases: Vec<String> =
        sqlx::query_scalar(r"SELECT datname FROM pg_database WHERE datname ~ '^tf_chaos_[0-9]+$' ORDER BY datname")
            .fetch_all(&pool)
            .await?;

    println!("left by load tests: {} topic(s), {} definition(s), {} chaos database(s)", topics.len(), definitions.len(), databases.len());
    if a.dry_run || (topics.is_empty() && definitions.is_empty() && databases.is_empty()) {
        for t in &topics {
            println!("  topic       {t}");
        }
        for d in &definitions {
            println!("  definition  {d}");
        }
        for d in &databases {
            println!("  database    {d}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut made = Made::default();
    for t in &topics {
        made.topic(t);
    }
    for d in &definitions {
        made.definition(d, &pool);
    }
    let mut all = made.remove(s).await;
    for db in &databases {
        // The name matched ^tf_chaos_[0-9]+$ above, so it needs no quoting.
        match sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)")).execute(&pool).await {
            Ok(_) => println!("dropped database {db}"),
            Err(e) => {
                eprintln!("could not drop database {db}: {e}");
                all = false;
            }
        }
    }
    Ok(if all { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_this_tool_makes_are_taken() {
        let made_by_a_load_test = regex::Regex::new(LOAD_TEST_TOPICS).unwrap();
        for ours in [
            "events.loadtest-849884",
            "compare.loadtest-7",
            "loadtest-sink-1",
            "loadtest-peer-874934",
            "chaos-42",
            "chaos-42-sink",
            "chaos-42-dlq",
        ] {
            assert!(made_by_a_load_test.is_match(ours), "{ours}");
        }
        for theirs in [
            "events.loadtest-",
            "events.loadtest-12a",
            "events.orders",
            "chaos-",
            "chaos-monkey",
            "chaos-42-other",
            "chaos-42-sink-2",
            "loadtest-sink-",
            "taskfactory.results",
            "xevents.loadtest-1",
            "eventsxloadtest-1",
        ] {
            assert!(!made_by_a_load_test.is_match(theirs), "{theirs}");
        }
        assert!(definition_made_by_a_load_test("loadtest-849884"));
        for theirs in ["loadtest-", "loadtest-peer-1", "order-fulfilment", "loadtest-1x"] {
            assert!(!definition_made_by_a_load_test(theirs), "{theirs}");
        }
    }
}
