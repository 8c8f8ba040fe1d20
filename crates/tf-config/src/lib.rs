//! The one configuration module. Every binary flattens [`Settings`] into its command line, so
//! each setting is an environment variable with the `TF_` prefix, a `--flag`, a default that
//! points at the local stack (`scripts/stack`, ports pinned in `.env`) and a line in `--help`.

pub mod datasources;
pub mod kafka;
pub mod registry;
pub mod secrets;
pub mod temporal;

pub use datasources::{Datasource, Datasources, HttpDatasource, SqlDatasource};
pub use secrets::Secrets;

use clap::{Args, Parser};

/// `(name, value)` pairs as the `load` functions take their variables, for unit tests.
#[cfg(test)]
pub(crate) fn test_vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A connection setting beyond [`Settings`] that cannot be used, named by its variables.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionSettingsError {
    #[error("extra Kafka properties (TF_KAFKA_PROPERTIES, TF_KAFKA__*): {0}")]
    Kafka(#[from] kafka::KafkaPropertiesError),
    #[error("schema registry credentials (TF_SCHEMA_REGISTRY_*): {0}")]
    Registry(#[from] registry::RegistryAuthError),
    #[error("Temporal TLS and API key (TF_TEMPORAL_TLS*, TF_TEMPORAL_API_KEY): {0}")]
    Temporal(#[from] temporal::TemporalAccessError),
}

/// Reads the Kafka properties, registry credentials and Temporal access settings once, so a
/// binary stops at start with the bad setting's name instead of failing at its first use.
/// The clients read them again through their own caches (`tf_kafka::properties`,
/// `tf_envelope::registry::auth`, `tf_temporal::access`).
pub fn check_connection_settings() -> Result<(), ConnectionSettingsError> {
    kafka::from_env()?;
    registry::from_env()?;
    temporal::from_env()?;
    Ok(())
}

// The router uses these; tf-api (dead letters, redrive, lag) and `tf consumer` read the same
// settings to find what the router does, so each is declared once, here.
/// The router's Kafka topics, consumer group and dead-letter topic.
#[derive(Debug, Clone, Args)]
pub struct RouterKafka {
    /// The router's topics: names, or a regex starting with `^` (comma separated).
    #[arg(long = "topics", alias = "router-topics", env = "TF_ROUTER_TOPICS", default_value = "^events\\..*", value_delimiter = ',')]
    pub topics: Vec<String>,
    /// The router's consumer group.
    #[arg(long = "group", alias = "router-group", env = "TF_ROUTER_GROUP", default_value = "taskfactory-router")]
    pub group: String,
    /// The router's dead-letter topic.
    #[arg(long, env = "TF_DLQ_TOPIC", default_value = "taskfactory.dlq")]
    pub dlq_topic: String,
}

/// Where the task factory finds Kafka, the schema registry, Temporal and PostgreSQL. In every
/// `--help` they stand under their own heading, apart from each command's options.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connections (every command; TF_* variables)")]
pub struct Settings {
    /// Kafka bootstrap servers (comma separated).
    #[arg(long, env = "TF_KAFKA_BROKERS", default_value = "127.0.0.1:19092", global = true)]
    pub kafka_brokers: String,

    /// Base URL of the Confluent-compatible schema registry API.
    #[arg(long, env = "TF_SCHEMA_REGISTRY_URL", default_value = "http://127.0.0.1:18081/apis/ccompat/v7", global = true)]
    pub schema_registry_url: String,

    /// Temporal frontend gRPC endpoint.
    #[arg(long, env = "TF_TEMPORAL_URL", default_value = "http://127.0.0.1:17233", global = true)]
    pub temporal_url: String,

    /// Temporal namespace the workflows run in.
    #[arg(long, env = "TF_TEMPORAL_NAMESPACE", default_value = "default", global = true)]
    pub temporal_namespace: String,

    /// Temporal task queue of the task factory's workflows (router starts, worker polls).
    #[arg(long, env = "TF_TASK_QUEUE", default_value = "taskfactory", global = true)]
    pub task_queue: String,

    /// PostgreSQL connection URL of the application database.
    #[arg(
        long,
        env = "TF_DATABASE_URL",
        default_value = "postgres://taskfactory:taskfactory@127.0.0.1:15432/taskfactory",
        global = true,
        hide_default_value = true
    )]
    pub database_url: String,
}

impl Settings {
    /// The Temporal UI page of a workflow (`TF_TEMPORAL_UI_URL`; the dev server's UI port is
    /// pinned in `.env`).
    pub fn temporal_ui_link(&self, workflow_id: &str) -> String {
        let ui = std::env::var("TF_TEMPORAL_UI_URL").unwrap_or_else(|_| "http://127.0.0.1:18233".into());
        let id: String = workflow_id
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        format!("{}/namespaces/{}/workflows/{id}", ui.trim_end_matches('/'), self.temporal_namespace)
    }

    /// Settings from the environment alone (defaults for what is unset); for tests and tools
    /// that have no command line of their own.
    pub fn from_env() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        Only::parse_from(["taskfactory"]).settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The defaults must point at the ports `.env` pins for `scripts/stack`; this catches one
    /// being changed without the other.
    #[test]
    fn defaults_match_the_local_stack_ports() {
        let dotenv = include_str!("../../../.env");
        let vars: HashMap<&str, &str> =
            dotenv.lines().filter(|l| !l.trim_start().starts_with('#')).filter_map(|l| l.split_once('=')).collect();
        let cmd = <Settings as clap::Args>::augment_args(clap::Command::new("t"));
        let default = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_default_values().first().cloned())
                .map(|v| v.to_string_lossy().into_owned())
                .unwrap()
        };
        assert!(default("kafka_brokers").ends_with(&format!(":{}", vars["TF_KAFKA_PORT"])));
        assert!(default("schema_registry_url").contains(&format!(":{}/", vars["TF_REGISTRY_PORT"])));
        assert!(default("temporal_url").ends_with(&format!(":{}", vars["TF_TEMPORAL_PORT"])));
        assert!(default("database_url").contains(&format!(":{}/", vars["TF_POSTGRES_PORT"])));
    }
}
