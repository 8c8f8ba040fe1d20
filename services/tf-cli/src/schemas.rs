//! `tf schemas register`: registers the Avro schemas under each topic's subject in the
//! Confluent-compatible registry.

use std::path::Path;

use anyhow::Context;
use serde_json::json;
use tf_config::Settings;
use tf_envelope::Registry;

use crate::output::{Answer, say};

pub async fn register(settings: &Settings, schemas: &Path, topics_dir: &Path) -> anyhow::Result<Answer> {
    let registry = Registry::new(&settings.schema_registry_url);
    let specs = tf_kafka::topics::load_dir(topics_dir)?;
    let mut text = String::new();
    say!(text, "registering value schemas at {}", registry.base_url());
    let mut rows = Vec::new();
    for spec in specs.iter().filter(|s| s.value_schema.is_some()) {
        let name = spec.value_schema.as_deref().expect("filtered");
        let path = schemas.join(format!("{name}.avsc"));
        let schema = std::fs::read_to_string(&path)
            .with_context(|| format!("topic {} names value_schema {name}: cannot read {}", spec.name, path.display()))?;
        let subject = format!("{}-value", spec.name);
        let known = registry.lookup(&subject, &schema).await?;
        let id = registry.register(&subject, &schema).await.with_context(|| format!("{}", path.display()))?;
        let state = if known == Some(id) { "unchanged " } else { "registered" };
        say!(text, "  {state} {subject} <- {} (schema id {id})", path.display());
        rows.push(json!({"subject": subject, "file": path.display().to_string(), "id": id, "outcome": state.trim()}));
    }
    if rows.is_empty() {
        say!(text, "  no topic spec in {} names a value_schema", topics_dir.display());
    }
    Ok(Answer::new(json!({ "subjects": rows }))?.text(text))
}
