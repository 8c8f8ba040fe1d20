//! `tf topics apply`: creates or updates topics from their YAML specs and reports drift.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tf_config::Settings;
use tf_kafka::topics::{self, Outcome};

pub async fn apply(settings: &Settings, dir: &Path, fail_on_drift: bool) -> anyhow::Result<ExitCode> {
    let specs = topics::load_dir(dir)?;
    anyhow::ensure!(!specs.is_empty(), "no topic specs (*.yaml) in {}", dir.display());
    println!("applying {} topic spec(s) from {} to {}", specs.len(), dir.display(), settings.kafka_brokers);
    let reports =
        topics::apply(&settings.kafka_brokers, &specs).await.with_context(|| format!("applying topics to {}", settings.kafka_brokers))?;
    let mut drifted = 0;
    for r in &reports {
        match &r.outcome {
            Outcome::Created => println!("  created    {}", r.topic),
            Outcome::Unchanged => println!("  unchanged  {}", r.topic),
            Outcome::Drifted(drift) => {
                drifted += 1;
                println!("  DRIFT      {} (left as is; change it deliberately or fix the spec)", r.topic);
                for d in drift {
                    println!("               {d}");
                }
            }
        }
    }
    Ok(if drifted > 0 && fail_on_drift { ExitCode::from(3) } else { ExitCode::SUCCESS })
}
