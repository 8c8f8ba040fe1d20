//! `tf topics apply`: creates or updates topics from their YAML specs and reports drift.

use std::path::Path;

use anyhow::Context;
use serde_json::json;
use tf_config::Settings;
use tf_kafka::topics::{self, Outcome};

use crate::output::{Answer, say};

pub async fn apply(settings: &Settings, dir: &Path, fail_on_drift: bool) -> anyhow::Result<Answer> {
    let specs = topics::load_dir(dir)?;
    anyhow::ensure!(!specs.is_empty(), "no topic specs (*.yaml) in {}", dir.display());
    let mut text = String::new();
    say!(text, "applying {} topic spec(s) from {} to {}", specs.len(), dir.display(), settings.kafka_brokers);
    let reports =
        topics::apply(&settings.kafka_brokers, &specs).await.with_context(|| format!("applying topics to {}", settings.kafka_brokers))?;
    let mut drifted = 0;
    let mut rows = Vec::new();
    for r in &reports {
        match &r.outcome {
            Outcome::Created => {
                say!(text, "  created    {}", r.topic);
                rows.push(json!({"topic": r.topic, "outcome": "created"}));
            }
            Outcome::Unchanged => {
                say!(text, "  unchanged  {}", r.topic);
                rows.push(json!({"topic": r.topic, "outcome": "unchanged"}));
            }
            Outcome::Drifted(drift) => {
                drifted += 1;
                say!(text, "  DRIFT      {} (left as is; change it deliberately or fix the spec)", r.topic);
                for d in drift {
                    say!(text, "               {d}");
                }
                let drift: Vec<String> = drift.iter().map(ToString::to_string).collect();
                rows.push(json!({"topic": r.topic, "outcome": "drifted", "drift": drift}));
            }
        }
    }
    Ok(Answer::new(json!({ "topics": rows }))?.text(text).code(if drifted > 0 && fail_on_drift {
        std::process::ExitCode::from(3)
    } else {
        std::process::ExitCode::SUCCESS
    }))
}
