//! Declarative topic specs (`topics/*.yaml`) applied idempotently: missing topics are created,
//! existing ones are compared and their drift reported, never silently changed — partitions,
//! retention and cleanup policy decide what data a topic keeps, so changing them is an
//! operator's decision.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use serde::Deserialize;

/// Where the worker's relay publishes every task result (`topics/taskfactory.results.yaml`); lineage and
/// the console name it from here.
pub const RESULTS_TOPIC: &str = "taskfactory.results";

/// One topic as the project wants it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Name of the Avro schema in `schemas/avro/` registered as `<topic>-value`.
    #[serde(default)]
    pub value_schema: Option<String>,
    /// Topic configs (`cleanup.policy`, `retention.ms`, ...), compared on apply.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: yaml_serde::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("topic {topic}: {source}")]
    Kafka { topic: String, source: rdkafka::error::KafkaError },
    #[error("Kafka admin request failed: {0}")]
    Admin(#[from] rdkafka::error::KafkaError),
}

impl TopicSpec {
    fn check(&self, path: &Path) -> Result<(), TopicError> {
        let invalid = |reason: String| TopicError::Invalid { path: path.to_owned(), reason };
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if self.name.is_empty() || self.name.len() > 249 || !self.name.chars().all(legal) {
            return Err(invalid(format!("name {:?} is not a legal Kafka topic name", self.name)));
        }
        if self.partitions < 1 {
            return Err(invalid(format!("partitions must be at least 1, got {}", self.partitions)));
        }
        if self.replication_factor < 1 {
            return Err(invalid(format!("replication_factor must be at least 1, got {}", self.replication_factor)));
        }
        Ok(())
    }
}

/// Reads every `*.yaml` / `*.yml` file of `dir`, one topic per file, sorted by name.
pub fn load_dir(dir: &Path) -> Result<Vec<TopicSpec>, TopicError> {
    let read_err = |source| TopicError::Read { path: dir.to_owned(), source };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    paths.sort();
    let mut specs = Vec::with_capacity(paths.len());
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|source| TopicError::Read { path: path.clone(), source })?;
        specs.push(parse(&path, &text)?);
    }
    Ok(specs)
}

/// Parses one spec; `path` only names the source in errors.
pub fn parse(path: &Path, text: &str) -> Result<TopicSpec, TopicError> {
    let spec: TopicSpec = yaml_serde::from_str(text).map_err(|source| TopicError::Parse { path: path.to_owned(), source })?;
    spec.check(path)?;
    Ok(spec)
}

/// How an existing topic differs from its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    Partitions { want: i32, have: i32 },
    ReplicationFactor { want: i32, have: i32 },
    Config { key: String, want: String, have: Option<String> },
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::Partitions { want, have } => write!(f, "partitions: spec {want}, broker {have}"),
            Drift::ReplicationFactor { want, have } => {
                write!(f, "replication_factor: spec {want}, broker {have}")
            }
            Drift::Config { key, want, have } => match have {
                Some(have) => write!(f, "{key}: spec {want}, broker {have}"),
                None => write!(f, "{key}: spec {want}, broker has no value"),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Unchanged,
    Drifted(Vec<Drift>),
}

#[derive(Debug, Clone)]
pub struct Report {
    pub topic: String,
    pub outcome: Outcome,
}

/// Creates missing topics and compares existing ones with their spec.
pub async fn apply(brokers: &str, specs: &[TopicSpec]) -> Result<Vec<Report>, TopicError> {
    let admin: AdminClient<DefaultClientContext> = crate::client_config(brokers).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut reports = Vec::with_capacity(specs.len());
    for spec in specs {
        let kafka_err = |source| TopicError::Kafka { topic: spec.name.clone(), source };
        let outcome = match describe(&admin, &spec.name).await.map_err(kafka_err)? {
            None => {
                let configs: Vec<(&str, &str)> = spec.config.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let mut topic = NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(spec.replication_factor));
                for (k, v) in &configs {
                    topic = topic.set(k, v);
                }
                let result = admin.create_topics([&topic], &opts).await.map_err(kafka_err)?;
                match result.into_iter().next() {
                    Some(Ok(_)) => Outcome::Created,
                    // Another `apply` won the race: compare like any existing topic.
                    Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {
                        let have = describe(&admin, &spec.name).await.map_err(kafka_err)?;
                        compare(spec, &have.expect("topic exists"))
                    }
                    Some(Err((_, code))) => {
                        return Err(kafka_err(rdkafka::error::KafkaError::AdminOp(code)));
                    }
                    None => Outcome::Created,
                }
            }
            Some(have) => compare(spec, &have),
        };
        reports.push(Report { topic: spec.name.clone(), outcome });
    }
    Ok(reports)
}

/// Deletes `topics`; one that does not exist (any more) is not an error, so a cleanup may
/// run twice.
pub async fn delete(brokers: &str, topics: &[&str]) -> Result<(), TopicError> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = crate::client_config(brokers).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.delete_topics(topics, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => return Err(TopicError::Kafka { topic, source: rdkafka::error::KafkaError::AdminOp(code) }),
        }
    }
    Ok(())
}

/// A topic as the broker has it.
#[derive(Debug, Clone)]
pub struct Described {
    pub partitions: i32,
    pub replication_factor: i32,
    pub config: BTreeMap<String, String>,
}

/// The broker's view of one topic, or `None` when it does not exist.
pub async fn describe(admin: &AdminClient<DefaultClientContext>, topic: &str) -> Result<Option<Described>, rdkafka::error::KafkaError> {
    let metadata = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let Some(md) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match md.error().map(RDKafkaErrorCode::from) {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(None),
        Some(code) => return Err(rdkafka::error::KafkaError::MetadataFetch(code)),
        None => {}
    }
    let replication_factor = md.partitions().first().map_or(0, |p| p.replicas().len() as i32);
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let mut config = BTreeMap::new();
    for resource in admin.describe_configs([&ResourceSpecifier::Topic(topic)], &opts).await? {
        let resource = resource.map_err(rdkafka::error::KafkaError::AdminOp)?;
        for entry in resource.entries {
            if let Some(value) = entry.value {
                config.insert(entry.name, value);
            }
        }
    }
    Ok(Some(Described { partitions: md.partitions().len() as i32, replication_factor, config }))
}

/// Pure comparison of a spec with what the broker has.
pub fn compare(spec: &TopicSpec, have: &Described) -> Outcome {
    let mut drift = Vec::new();
    if spec.partitions != have.partitions {
        drift.push(Drift::Partitions { want: spec.partitions, have: have.partitions });
    }
    if spec.replication_factor != have.replication_factor {
        drift.push(Drift::ReplicationFactor { want: spec.replication_factor, have: have.replication_factor });
    }
    for (key, want) in &spec.config {
        let actual = have.config.get(key);
        if actual != Some(want) {
            drift.push(Drift::Config { key: key.clone(), want: want.clone(), have: actual.cloned() });
        }
    }
    if drift.is_empty() { Outcome::Unchanged } else { Outcome::Drifted(drift) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<TopicSpec, TopicError> {
        parse(Path::new("topics/t.yaml"), text)
    }

    #[test]
    fn parses_a_full_spec() {
        let s =
            spec("name: a.b\npartitions: 3\nreplication_factor: 1\nvalue_schema: envelope\nconfig:\n  retention.ms: \"1000\"\n").unwrap();
        assert_eq!(s.name, "a.b");
        assert_eq!(s.value_schema.as_deref(), Some("envelope"));
        assert_eq!(s.config["retention.ms"], "1000");
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let e = spec("name: a\npartitions: 0\nreplication_factor: 1\n").unwrap_err().to_string();
        assert!(e.contains("topics/t.yaml") && e.contains("partitions must be at least 1"), "{e}");
        let e = spec("name: a\npartitions: 1\nreplication_factor: 1\nretention: 5\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `retention`"), "{e}");
        let e = spec("name: 'a b'\npartitions: 1\nreplication_factor: 1\n").unwrap_err().to_string();
        assert!(e.contains("not a legal Kafka topic name"), "{e}");
    }

    #[test]
    fn compare_reports_each_difference() {
        let s =
            spec("name: a\npartitions: 3\nreplication_factor: 1\nconfig:\n  retention.ms: \"1000\"\n  cleanup.policy: delete\n").unwrap();
        let mut config = BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]);
        let have = Described { partitions: 3, replication_factor: 1, config: config.clone() };
        assert_eq!(
            compare(&s, &have),
            Outcome::Drifted(vec![Drift::Config { key: "cleanup.policy".into(), want: "delete".into(), have: None }])
        );
        config.insert("cleanup.policy".into(), "delete".into());
        let have = Described { partitions: 3, replication_factor: 1, config };
        assert_eq!(compare(&s, &have), Outcome::Unchanged);
        let have = Described { partitions: 2, ..have };
        assert_eq!(compare(&s, &have), Outcome::Drifted(vec![Drift::Partitions { want: 3, have: 2 }]));
    }

    #[test]
    fn the_committed_specs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topics");
        let specs = load_dir(&dir).unwrap();
        let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"taskfactory.results") && names.contains(&"taskfactory.dlq"), "{names:?}");
    }
}
