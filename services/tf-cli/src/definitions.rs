//! `tf definitions validate|test|apply|list|show|delete`: activity definitions from YAML files
//! to the versioned `activity_definitions` table, and a dry run of one event against them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tf_config::Settings;
use tf_definitions::{Bindings, DedupeKey, Definition, Trigger};
use tf_store::definitions::{
    self, Applied, ApplyResult, DefinitionCheck, DefinitionSummary, DefinitionVersion, NewDefinition, Retired, Validation,
};

use crate::output::{Answer, say, table};

/// A definition as read, with the document text it came from.
pub(crate) struct Loaded {
    pub origin: String,
    pub text: String,
    pub definition: Definition,
}

/// Reads every definition in `files` (files, folders of *.yaml, or `-` for standard input); all
/// problems are reported.
pub(crate) fn load(files: &[PathBuf]) -> anyhow::Result<Vec<Loaded>> {
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
        let (origin, text) = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading standard input")?;
            ("stdin".to_string(), text)
        } else {
            (path.display().to_string(), std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?)
        };
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
                    out.push(Loaded { origin: origin.clone(), text: text.clone(), definition: d });
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
        Trigger::Cron(c) => {
            let mut when = Vec::new();
            if let Some(e) = &c.expression {
                when.push(format!("cron {e:?} in {}", c.spec.timezone()));
            }
            if let Some(i) = &c.spec.interval {
                let offset =
                    if i.offset.is_zero() { String::new() } else { format!(" offset {}", tf_definitions::duration::format(i.offset)) };
                when.push(format!("every {}{offset}", tf_definitions::duration::format(i.every)));
            }
            if let Some(m) = c.misfire {
                when.push(format!("misfire {}", format!("{m:?}").to_lowercase()));
            }
            when.join(", ")
        }
    }
}

pub fn validate(files: &[PathBuf]) -> anyhow::Result<Answer> {
    let defs = load(files)?;
    let mut text = String::new();
    for l in &defs {
        let d = &l.definition;
        say!(text, "  valid  {} ({}; {} task template(s)) in {}", d.id, describe_trigger(d), d.tasks.len(), l.origin);
        if let Some(next) = d.next_fire_times(5) {
            say!(text, "         next fire times: {}", next.join(", "));
        }
    }
    say!(text, "{} definition(s) valid", defs.len());
    let validation = Validation { valid: true, definitions: defs.iter().map(|l| DefinitionCheck::of(&l.definition)).collect() };
    Ok(Answer::new(validation)?.text(text))
}

/// What one definition would do with the event of `tf definitions test`.
#[derive(serde::Serialize, Default)]
struct Trial {
    definition: String,
    /// `run`, `no_run` or `dlq`.
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// The router's stage that would dead-letter the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dedupe_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unresolved_context: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tasks: Option<Vec<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    planning_error: Option<String>,
    /// A run that unfolds: the templates planned later, each once what it runs after ended
    /// (their outcomes are not known here).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    later: Vec<serde_json::Value>,
}

/// `tf definitions test`: what the router and the workflow would do with `event_file`.
pub fn test(files: &[PathBuf], event_file: &std::path::Path, topic: Option<&str>) -> anyhow::Result<Answer> {
    let defs = load(files)?;
    let text = std::fs::read_to_string(event_file).with_context(|| format!("reading {}", event_file.display()))?;
    let event: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", event_file.display()))?;
    let event_type = event["type"].as_str().unwrap_or_default();
    let bindings = Bindings { event: event.clone(), ..Bindings::default() };
    let trials: Vec<Trial> = defs.iter().map(|l| trial(&l.definition, &bindings, event_type, topic)).collect();
    let mut out = String::new();
    for t in &trials {
        match (t.outcome, &t.reason) {
            ("no_run", Some(r)) => say!(out, "{}: no run: {r}", t.definition),
            ("dlq", Some(r)) => say!(out, "{}: DLQ (stage {}): {r}", t.definition, t.stage.unwrap_or("?")),
            _ => {
                say!(
                    out,
                    "{}: one run per window: dedupe key {:?}, window {}",
                    t.definition,
                    t.dedupe_key.as_deref().unwrap_or(""),
                    t.window.as_deref().unwrap_or("")
                );
                say!(out, "  workflow id (first window): {}", t.run_id.as_deref().unwrap_or(""));
                if !t.unresolved_context.is_empty() {
                    say!(out, "  context sources not resolved here (expressions see them as missing): {}", t.unresolved_context.join(", "));
                }
                if let Some(tasks) = &t.tasks {
                    say!(out, "  {} task(s):", tasks.len());
                    for task in tasks {
                        say!(
                            out,
                            "    {} ({}): {}",
                            task["task_id"].as_str().unwrap_or(""),
                            task["type"].as_str().unwrap_or(""),
                            task["params"]
                        );
                    }
                }
                for l in &t.later {
                    say!(
                        out,
                        "    then {} ({}) once {} ended",
                        l["template"].as_str().unwrap_or(""),
                        l["type"].as_str().unwrap_or(""),
                        l["after"]
                    );
                }
                if let Some(e) = &t.planning_error {
                    say!(out, "  planning fails (the run would fail): {e}");
                }
            }
        }
    }
    let failed = trials.iter().any(|t| t.outcome == "dlq" || t.planning_error.is_some());
    Ok(Answer::new(&trials)?.text(out).code(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }))
}

fn trial(d: &Definition, bindings: &Bindings, event_type: &str, topic: Option<&str>) -> Trial {
    let base = || Trial { definition: d.id.clone(), ..Trial::default() };
    let no_run = |reason: String| Trial { outcome: "no_run", reason: Some(reason), ..base() };
    let dlq = |stage: &'static str, reason: String| Trial { outcome: "dlq", stage: Some(stage), reason: Some(reason), ..base() };
    let Trigger::Event(trigger) = &d.trigger else {
        return no_run("a cron definition; nothing to test against an event".into());
    };
    let on = topic.unwrap_or_else(|| trigger.topics.first().map_or("", String::as_str));
    if !trigger.topics.iter().any(|t| t == on) {
        return no_run(format!("topic {on} is not one of {}", trigger.topics.join(", ")));
    }
    if !trigger.type_pattern.matches(event_type) {
        return no_run(format!("type {event_type:?} does not match the trigger's type pattern"));
    }
    if let Some(filter) = &trigger.filter {
        match filter.eval_bool(bindings) {
            Ok(true) => {}
            Ok(false) => return no_run(format!("the filter `{}` is false", filter.source())),
            Err(e) => return dlq("filter", e.to_string()),
        }
    }
    let key = match d.dedupe.key.eval_string(bindings).map(DedupeKey::parse) {
        Ok(Ok(k)) => k,
        Ok(Err(e)) => return dlq("dedupe-key", e.to_string()),
        Err(e) => return dlq("dedupe-key", e.to_string()),
    };
    // Static sources are known here; sql and http ones need the services.
    let mut context = serde_json::Map::new();
    let mut unresolved = Vec::new();
    for (name, source) in &d.context {
        match source {
            tf_definitions::ContextSource::Static(v) => {
                context.insert(name.clone(), v.clone());
            }
            _ => unresolved.push(name.clone()),
        }
    }
    let run_id = key.run_id(&d.id, 1);
    let run = serde_json::json!({"id": run_id, "definition_id": d.id, "dedupe_key": key.as_str(), "generation": 1, "attempt": 1});
    let scope = Bindings { run, context: serde_json::Value::Object(context), ..bindings.clone() };
    // A run that unfolds plans a template when what it runs after ended; here, only the first.
    let (first, later): (Vec<&tf_definitions::TaskTemplate>, Vec<&tf_definitions::TaskTemplate>) =
        d.tasks.iter().partition(|t| t.after.is_empty());
    let planned = if d.unfolds() {
        first.iter().try_fold(Vec::new(), |mut all, t| {
            let now_ms = tf_envelope::Timestamp::now().0;
            all.extend(d.plan_template(&t.name, &run_id, &scope, all.len(), now_ms)?);
            Ok(all)
        })
    } else {
        d.plan_tasks(&run_id, &scope)
    };
    let later = later.iter().map(|t| serde_json::json!({"template": t.name, "type": t.task_type.as_str(), "after": t.after})).collect();
    let (tasks, planning_error) = match planned {
        Ok(tasks) => (
            Some(
                tasks.iter().map(|t| serde_json::json!({"task_id": t.task_id, "type": t.task_type.as_str(), "params": t.params})).collect(),
            ),
            None,
        ),
        Err(e) => (None, Some(e.to_string())),
    };
    Trial {
        outcome: "run",
        dedupe_key: Some(key.as_str().to_string()),
        window: Some(format!("{:?}", d.dedupe.window)),
        run_id: Some(run_id.as_str().to_string()),
        unresolved_context: unresolved,
        tasks,
        planning_error,
        later,
        ..base()
    }
}

pub async fn apply(settings: &Settings, files: &[PathBuf]) -> anyhow::Result<Answer> {
    let defs = load(files)?;
    let pool = tf_store::connect(&settings.database_url).await?;
    let mut applied = Vec::new();
    for l in &defs {
        let d = &l.definition;
        let spec = d.spec_json();
        let sha = d.spec_sha256();
        let outcome = definitions::apply(
            &pool,
            &NewDefinition { id: &d.id, name: &d.name, enabled: d.enabled, trigger_kind: d.trigger.kind(), spec: &spec, spec_sha256: &sha },
        )
        .await?;
        applied.push(Applied::of(&d.id, &outcome, d.enabled));
    }
    self::applied(&ApplyResult { applied })
}

/// An apply's answer (both modes).
pub fn applied(result: &ApplyResult) -> anyhow::Result<Answer> {
    let mut text = String::new();
    for a in &result.applied {
        match a.previous_version {
            Some(previous) if a.outcome == "new_version" => {
                say!(text, "  new version {} v{} (was v{previous}; runs pinned to v{previous} keep it)", a.id, a.version);
            }
            _ => say!(text, "  {:<10} {} v{}", a.outcome, a.id, a.version),
        }
    }
    Ok(Answer::new(result)?.text(text))
}

pub async fn list(settings: &Settings) -> anyhow::Result<Answer> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let rows: Vec<DefinitionSummary> = definitions::latest(&pool).await?.iter().map(DefinitionSummary::from).collect();
    listed(&rows)
}

/// The latest version of each definition (both modes).
pub fn listed(rows: &[DefinitionSummary]) -> anyhow::Result<Answer> {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| vec![r.id.clone(), r.version.to_string(), state(r.retired, r.enabled).into(), r.trigger.clone(), r.name.clone()])
        .collect();
    let text = table(
        &["ID", "VERSION", "STATE", "KIND", "NAME"],
        &cells,
        "(no definitions; apply some with `tf definitions apply -f examples/definitions`)",
    );
    Ok(Answer::new(rows)?.text(text))
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

pub async fn show(settings: &Settings, id: &str, version: Option<i32>) -> anyhow::Result<Answer> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let Some(row) = definitions::get(&pool, id, version).await? else {
        anyhow::bail!("no definition {id}{}", version.map(|v| format!(" version {v}")).unwrap_or_default());
    };
    let etag = version.is_none().then(|| definitions::etag(row.version, row.enabled, row.retired));
    let next_fire_times = Definition::from_spec_json(row.spec.clone()).ok().as_ref().and_then(definitions::next_fire_times);
    shown(&DefinitionVersion {
        summary: DefinitionSummary::from(&row),
        spec: row.spec,
        spec_sha256: row.spec_sha256,
        etag,
        next_fire_times,
    })
}

/// One definition version (both modes): a header line and the document as YAML.
pub fn shown(d: &DefinitionVersion) -> anyhow::Result<Answer> {
    let s = &d.summary;
    let mut text = String::new();
    say!(
        text,
        "# {} v{} ({}; created {}; sha256 {})",
        s.id,
        s.version,
        if s.enabled { "enabled" } else { "disabled" },
        s.created_at,
        d.spec_sha256
    );
    text.push_str(&yaml_serde::to_string(&d.spec)?);
    Ok(Answer::new(d)?.text(text))
}

pub async fn delete(settings: &Settings, id: &str) -> anyhow::Result<Answer> {
    let pool = tf_store::connect(&settings.database_url).await?;
    match definitions::retire(&pool, id).await? {
        0 => anyhow::bail!("no definition {id}"),
        n => retired(&Retired { retired: id.to_string(), versions: n }),
    }
}

/// A retire's answer (both modes).
pub fn retired(r: &Retired) -> anyhow::Result<Answer> {
    let text = format!(
        "retired {} ({} version(s) kept for the runs pinned to them); its schedule, if any, is removed by the scheduler\n",
        r.retired, r.versions
    );
    Ok(Answer::new(r)?.text(text))
}
