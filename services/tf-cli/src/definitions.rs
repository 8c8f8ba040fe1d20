//! `tf definitions validate|test|apply|list|show|delete`: activity definitions from YAML files
//! to the versioned `activity_definitions` table, and a dry run of one event against them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tf_config::Settings;
use tf_definitions::{Bindings, DedupeKey, Definition, Trigger};
use tf_store::definitions::{self, ApplyOutcome, NewDefinition};

/// Reads every definition in `files` (files or folders of *.yaml); all problems are reported.
pub(crate) fn load(files: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, Definition)>> {
    let mut paths = Vec::new();
    for f in files {
        if f.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(f)
                .with_context(|| format!("reading {}", f.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect();
            inner.sort();
            paths.extend(inner);
        } else {
            paths.push(f.clone());
        }
    }
    // Datasource names are checked when this process sees the operator's configuration;
    // otherwise the worker refuses runs that name one it does not have.
    let datasources = if tf_config::Datasources::configured_in_env() { Some(tf_config::Datasources::from_env()?) } else { None };
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let origin = path.display().to_string();
        match Definition::from_yaml(&origin, &text) {
            Ok(defs) => {
                for d in defs {
                    if let Some(ds) = &datasources {
                        let unknown = d.check_datasources(|n| ds.get(n).map(tf_config::Datasource::kind), &ds.describe());
                        if !unknown.is_empty() {
                            errors.push(tf_definitions::InvalidDefinition { origin: origin.clone(), errors: unknown }.to_string());
                            continue;
                        }
                    }
                    out.push((path.clone(), d));
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("\n"));
    }
    Ok(out)
}

fn describe_trigger(d: &Definition) -> String {
    match &d.trigger {
        Trigger::Event(e) => format!("event on {}", e.topics.join(", ")),
        Trigger::Cron(c) => format!("cron {:?} in {}", c.expression, c.schedule.timezone()),
    }
}

pub fn validate(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let defs = load(files)?;
    for (path, d) in &defs {
        println!("  valid  {} ({}; {} task template(s)) in {}", d.id, describe_trigger(d), d.tasks.len(), path.display());
        if let Trigger::Cron(c) = &d.trigger {
            let next: Vec<String> = c.schedule.next_fire_times(chrono::Utc::now(), 5).iter().map(chrono::DateTime::to_rfc3339).collect();
            println!("         next fire times: {}", next.join(", "));
        }
    }
    println!("{} definition(s) valid", defs.len());
    Ok(ExitCode::SUCCESS)
}

/// `tf definitions test`: what the router and the workflow would do with `event_file`.
pub fn test(files: &[PathBuf], event_file: &std::path::Path, topic: Option<&str>) -> anyhow::Result<ExitCode> {
    let defs = load(files)?;
    let text = std::fs::read_to_string(event_file).with_context(|| format!("reading {}", event_file.display()))?;
    let event: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", event_file.display()))?;
    let event_type = event["type"].as_str().unwrap_or_default();
    let bindings = Bindings { event: event.clone(), ..Bindings::default() };
    let mut failed = false;
    for (_, d) in &defs {
        let Trigger::Event(trigger) = &d.trigger else {
            println!("{}: a cron definition; nothing to test against an event", d.id);
            continue;
        };
        let on = topic.unwrap_or_else(|| trigger.topics.first().map_or("", String::as_str));
        if !trigger.topics.iter().any(|t| t == on) {
            println!("{}: no run: topic {on} is not one of {}", d.id, trigger.topics.join(", "));
            continue;
        }
        if !trigger.type_pattern.matches(event_type) {
            println!("{}: no run: type {event_type:?} does not match the trigger's type pattern", d.id);
            continue;
        }
        if let Some(filter) = &trigger.filter {
            match filter.eval_bool(&bindings) {
                Ok(true) => {}
                Ok(false) => {
                    println!("{}: no run: the filter `{}` is false", d.id, filter.source());
                    continue;
                }
                Err(e) => {
                    println!("{}: DLQ (stage filter): {e}", d.id);
                    failed = true;
                    continue;
                }
            }
        }
        let key = match d.dedupe.key.eval_string(&bindings).map(DedupeKey::parse) {
            Ok(Ok(k)) => k,
            Ok(Err(e)) => {
                println!("{}: DLQ (stage dedupe-key): {e}", d.id);
                failed = true;
                continue;
            }
            Err(e) => {
                println!("{}: DLQ (stage dedupe-key): {e}", d.id);
                failed = true;
                continue;
            }
        };
        println!("{}: one run per window: dedupe key {:?}, window {:?}", d.id, key.as_str(), d.dedupe.window);
        println!("  workflow id (first window): {}", key.run_id(&d.id, 1));
        // Static sources are known here; sql and http ones need the services.
        let mut context = serde_json::Map::new();
        let mut unresolved = Vec::new();
        for (name, source) in &d.context {
            match source {
                tf_definitions::ContextSource::Static(v) => {
                    context.insert(name.clone(), v.clone());
                }
                _ => unresolved.push(name.as_str()),
            }
        }
        if !unresolved.is_empty() {
            println!("  context sources not resolved here (expressions see them as missing): {}", unresolved.join(", "));
        }
        let run_id = key.run_id(&d.id, 1);
        let run = serde_json::json!({"id": run_id, "definition_id": d.id, "dedupe_key": key.as_str(), "generation": 1, "attempt": 1});
        match d.plan_tasks(&run_id, &Bindings { run, context: serde_json::Value::Object(context), ..bindings.clone() }) {
            Ok(tasks) => {
                println!("  {} task(s):", tasks.len());
                for t in tasks {
                    println!("    {} ({}): {}", t.task_id, t.task_type.as_str(), t.params);
                }
            }
            Err(e) => {
                println!("  planning fails (the run would fail): {e}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

pub async fn apply(settings: &Settings, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let defs = load(files)?;
    let pool = tf_store::connect(&settings.database_url).await?;
    for (_, d) in &defs {
        let spec = d.spec_json();
        let sha = d.spec_sha256();
        let outcome = definitions::apply(
            &pool,
            &NewDefinition { id: &d.id, name: &d.name, enabled: d.enabled, trigger_kind: d.trigger.kind(), spec: &spec, spec_sha256: &sha },
        )
        .await?;
        match outcome {
            ApplyOutcome::Created { version } => println!("  created    {} v{version}", d.id),
            ApplyOutcome::NewVersion { version, previous } => {
                println!("  new version {} v{version} (was v{previous}; runs pinned to v{previous} keep it)", d.id);
            }
            ApplyOutcome::Unchanged { version } => println!("  unchanged  {} v{version}", d.id),
            ApplyOutcome::Restored { version } => println!("  restored   {} v{version}", d.id),
            ApplyOutcome::EnabledChanged { version, enabled } => {
                println!("  {}    {} v{version}", if enabled { "enabled " } else { "disabled" }, d.id);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn list(settings: &Settings, format: crate::Format) -> anyhow::Result<ExitCode> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let rows = definitions::latest(&pool).await?;
    if format == crate::Format::Json {
        crate::print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<32} {:>7} {:<8} {:<6} NAME", "ID", "VERSION", "STATE", "KIND");
    for r in &rows {
        println!("{:<32} {:>7} {:<8} {:<6} {}", r.id, r.version, state(r.retired, r.enabled), r.trigger_kind, r.name);
    }
    if rows.is_empty() {
        println!("(no definitions; apply some with `tf definitions apply -f examples/definitions`)");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn state(retired: bool, enabled: bool) -> &'static str {
    if retired {
        "retired"
    } else if enabled {
        "enabled"
    } else {
        "disabled"
    }
}

pub async fn show(settings: &Settings, id: &str, version: Option<i32>) -> anyhow::Result<ExitCode> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let Some(row) = definitions::get(&pool, id, version).await? else {
        anyhow::bail!("no definition {id}{}", version.map(|v| format!(" version {v}")).unwrap_or_default());
    };
    println!(
        "# {} v{} ({}; created {}; sha256 {})",
        row.id,
        row.version,
        if row.enabled { "enabled" } else { "disabled" },
        row.created_at,
        row.spec_sha256
    );
    print!("{}", yaml_serde::to_string(&row.spec)?);
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(settings: &Settings, id: &str) -> anyhow::Result<ExitCode> {
    let pool = tf_store::connect(&settings.database_url).await?;
    match definitions::retire(&pool, id).await? {
        0 => anyhow::bail!("no definition {id}"),
        n => println!("retired {id} ({n} version(s) kept for the runs pinned to them); its schedule, if any, is removed by the scheduler"),
    }
    Ok(ExitCode::SUCCESS)
}
