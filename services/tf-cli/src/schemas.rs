//! `tf schemas register`: registers the Avro schemas under each topic's subject in the
//! Confluent-compatible registry.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tf_config::Settings;
use tf_envelope::Registry;

pub async fn register(settings: &Settings, schemas: &Path, topics_dir: &Path) -> anyhow::Result<ExitCode> {
    let registry = Registry::new(&settings.schema_registry_url);
    let specs = tf_kafka::topics::load_dir(topics_dir)?;
    println!("registering value schemas at {}", registry.base_url());
    let mut count = 0;
    for spec in specs.iter().filter(|s| s.value_schema.is_some()) {
        let name = spec.value_schema.as_deref().expect("filtered");
        let path = schemas.join(format!("{name}.avsc"));
        let schema = std::fs::read_to_string(&path)
            .with_context(|| format!("topic {} names value_schema {name}: cannot read {}", spec.name, path.display()))?;
        let subject = format!("{}-value", spec.name);
        let known = registry.lookup(&subject, &schema).await?;
        let id = registry.register(&subject, &schema).await.with_context(|| format!("{}", path.display()))?;
        let state = if known == Some(id) { "unchanged " } else { "registered" };
        println!("  {state} {subject} <- {} (schema id {id})", path.display());
        count += 1;
    }
    if count == 0 {
        println!("  no topic spec in {} names a value_schema", topics_dir.display());
    }
    Ok(ExitCode::SUCCESS)
}
