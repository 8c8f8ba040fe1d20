//! A checked, compiled activity definition. [`Definition::parse`] reports every problem of a
//! document at once, each with its field path (and, for CEL, the position in the expression).
//!
//! Longer than most modules on purpose: the model and every rule that checks it sit together,
//! so a new field is added, validated and documented in one place (its tests follow).

use std::time::Duration;

use serde_json::Value as Json;

use crate::checker::Checker;
pub use crate::checker::FieldError;
use crate::cron::{CronSchedule, Interval, TimeSpec};
use crate::document::{ContextSourceDoc, Document, Execution, HttpSourceDoc, Misfire, OnTimeout, Overlap, TaskDoc, TaskType, TriggerDoc};
use crate::expr::Expr;
use crate::flow::FlowControl;

#[derive(Debug, Clone)]
pub struct Definition {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    pub trigger: Trigger,
    pub dedupe: Dedupe,
    /// In name order, the order the worker resolves them.
    pub context: Vec<(String, ContextSource)>,
    pub tasks: Vec<TaskTemplate>,
    /// Limits on how many runs start, wait and execute (docs/flow-control.md).
    pub flow_control: FlowControl,
    /// Events that cancel a run while it runs (docs/steps.md).
    pub cancel_on: Vec<crate::steps::EventMatch>,
    /// The document this was parsed from: what is stored, versioned and shown.
    pub document: Document,
}

// One Trigger per loaded definition, a few hundred at most: boxing the cron variant would only
// add an indirection to every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Trigger {
    Event(EventTrigger),
    Cron(CronTrigger),
}

impl Trigger {
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Event(_) => "event",
            Trigger::Cron(_) => "cron",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EventTrigger {
    pub topics: Vec<String>,
    pub type_pattern: TypePattern,
    pub filter: Option<Expr>,
}

#[derive(Debug, Clone)]
pub struct CronTrigger {
    pub expression: Option<String>,
    /// When it fires: the parsed expression and the interval, in the time zone.
    pub spec: TimeSpec,
    pub jitter: Duration,
    /// Runs missed for longer than this (scheduler down) are skipped; set by `misfire` or as
    /// written.
    pub catchup_window: Option<Duration>,
    /// Set by `misfire` (`once`: skip, `all`: buffer_all) or as written.
    pub overlap: Overlap,
    pub misfire: Option<Misfire>,
    pub start: Option<chrono::DateTime<chrono::Utc>>,
    pub end: Option<chrono::DateTime<chrono::Utc>>,
}

/// An event type pattern where `*` matches any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypePattern(String);

impl TypePattern {
    pub fn new(pattern: &str) -> Self {
        TypePattern(pattern.to_string())
    }

    /// Called for every definition on every event: allocates nothing.
    pub fn matches(&self, event_type: &str) -> bool {
        let Some((first, tail)) = self.0.split_once('*') else { return self.0 == event_type };
        let Some(mut rest) = event_type.strip_prefix(first) else { return false };
        let (middle, last) = tail.rsplit_once('*').unwrap_or(("", tail));
        for part in middle.split('*') {
            match rest.find(part) {
                Some(i) => rest = &rest[i + part.len()..],
                None => return false,
            }
        }
        rest.ends_with(last)
    }
}

#[derive(Debug, Clone)]
pub struct Dedupe {
    pub key: Expr,
    pub window: Duration,
}

// A handful per definition: boxing the HTTP variant would only add an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ContextSource {
    Sql(SqlSource),
    Http(HttpSource),
    Static(Json),
}

impl ContextSource {
    /// Whether resolving it reaches outside the task factory (and may be slow or fail).
    pub fn calls_out(&self) -> bool {
        !matches!(self, ContextSource::Static(_))
    }
}

/// A read-only query on a named `postgres` or `mysql` datasource.
#[derive(Debug, Clone)]
pub struct SqlSource {
    pub datasource: String,
    pub query: String,
    pub params: Vec<Expr>,
    pub cache: Option<Duration>,
}

/// An HTTP call, direct or through a named `http` datasource.
#[derive(Debug, Clone)]
pub struct HttpSource {
    pub datasource: Option<String>,
    pub method: String,
    pub url: Expr,
    pub body: Option<Expr>,
    pub text: Option<Expr>,
    /// The only expressions that may call `secret()`.
    pub headers: Vec<(String, Expr)>,
    pub timeout: Option<Duration>,
    /// Empty: any 2xx.
    pub expect: Vec<u16>,
    pub cache: Option<Duration>,
}

use crate::task_params::required_params;
pub use crate::task_params::{HTTP_TASK_PARAMS, KAFKA_TASK_PARAMS};

/// An HTTP header name: RFC 9110 token characters.
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[derive(Debug, Clone)]
pub struct TaskTemplate {
    pub name: String,
    pub task_type: TaskType,
    pub when: Option<Expr>,
    pub for_each: Option<Expr>,
    pub params: Vec<(String, Expr)>,
    pub retry: RetryPolicy,
    pub timeout: Duration,
    /// Human tasks and event waits: how long to wait, when the template says so.
    pub human_timeout: Option<Duration>,
    pub on_timeout: OnTimeout,
    /// Human tasks with `on_timeout: complete`: the output.
    pub timeout_output: Option<Expr>,
    pub execution: Execution,
    /// A shared concurrency budget (`TF_BUDGETS`) each task of this template holds while it
    /// executes.
    pub budget: Option<String>,
    /// Templates planned and ended before this one (docs/steps.md).
    pub after: Vec<String>,
    /// Runs even when one of `after` failed.
    pub always: bool,
    /// `wait_for_event` steps: the event waited for.
    pub wait: Option<crate::steps::EventMatch>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_interval: Duration,
    pub max_interval: Duration,
    pub backoff: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 5, initial_interval: Duration::from_secs(1), max_interval: Duration::from_secs(60), backoff: 2.0 }
    }
}

/// Every problem of one document, named by where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidDefinition {
    pub origin: String,
    pub errors: Vec<FieldError>,
}

impl std::fmt::Display for InvalidDefinition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is not a valid activity definition:", self.origin)?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

pub const DEFAULT_DEDUPE_KEY: &str = "event.id";
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(86_400);
pub const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(300);
/// `misfire: skip`: a fire missed by more than this is not run (Temporal's smallest catch-up
/// window).
pub const MISFIRE_SKIP_WINDOW: Duration = Duration::from_secs(10);
/// `misfire: once | all`: fires missed by up to this long are caught up.
pub const MISFIRE_CATCH_UP_WINDOW: Duration = Duration::from_secs(365 * 86_400);

/// The most task templates a definition may have (a run may still fan out to 1000 tasks).
pub const MAX_TEMPLATES: usize = 200;

/// The deepest `[ ]` / `{ }` nesting a definition may have; real ones use a handful.
const MAX_FLOW_NESTING: usize = 64;

/// The byte offset where flow collections nest deeper than `max`, outside quoted scalars and
/// comments; `None` when they never do. A cheap, conservative scan (a bracket inside a block
/// scalar counts too), run before the YAML parser.
fn flow_nesting_past(text: &str, max: usize) -> Option<usize> {
    let (mut depth, mut quote, mut comment, mut escaped) = (0usize, None::<u8>, false, false);
    for (i, &b) in text.as_bytes().iter().enumerate() {
        if comment {
            comment = b != b'\n';
            continue;
        }
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if q == b'"' && b == b'\\' {
                    escaped = true;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'"' | b'\'' => quote = Some(b),
                b'#' => comment = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max {
                        return Some(i);
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    None
}

impl Definition {
    /// Parses every document of a YAML stream (documents separated by `---`).
    pub fn from_yaml(origin: &str, text: &str) -> Result<Vec<Definition>, InvalidDefinition> {
        // The YAML parser spends ~20 µs per level of flow nesting (`[[[[...`; 40,000 levels took
        // 0.87 s in a debug build), so a 4 MB body of brackets would hold a core for tens of
        // seconds: refuse deep nesting before parsing.
        if let Some(at) = flow_nesting_past(text, MAX_FLOW_NESTING) {
            return Err(InvalidDefinition {
                origin: origin.to_string(),
                errors: vec![FieldError {
                    path: "(document)".into(),
                    message: format!("nested deeper than {MAX_FLOW_NESTING} levels of [ ] or {{ }} (at byte {at})"),
                }],
            });
        }
        let mut out = Vec::new();
        for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
            let origin = if i == 0 { origin.to_string() } else { format!("{origin} (document {})", i + 1) };
            let document: Document = serde::Deserialize::deserialize(doc).map_err(|e| InvalidDefinition {
                origin: origin.clone(),
                errors: vec![FieldError { path: "(document)".into(), message: e.to_string() }],
            })?;
            out.push(Definition::parse(document).map_err(|errors| InvalidDefinition { origin, errors })?);
        }
        Ok(out)
    }

    /// Checks and compiles a document; all problems are returned together.
    pub fn parse(document: Document) -> Result<Definition, Vec<FieldError>> {
        let mut c = Checker { errors: Vec::new(), batched: document.flow_control.batch.is_some() };
        let d = &document;
        let id_ok = !d.id.is_empty()
            && d.id.len() <= 128
            && d.id.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && d.id.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-'));
        if !id_ok {
            c.fail("id", format!("{:?} must be 1-128 of a-z, 0-9, '.', '_', '-', starting with a letter or digit", d.id));
        }
        if d.name.trim().is_empty() {
            c.fail("name", "must not be empty");
        }

        let trigger = match &d.trigger {
            TriggerDoc { event: Some(_), cron: Some(_) } | TriggerDoc { event: None, cron: None } => {
                c.fail("trigger", "needs exactly one of `event` or `cron`");
                None
            }
            TriggerDoc { event: Some(e), cron: None } => {
                if e.topics.is_empty() {
                    c.fail("trigger.event.topics", "must name at least one topic");
                }
                let filter = e.filter.as_deref().and_then(|f| c.expr("trigger.event.filter".into(), f));
                Some(Trigger::Event(EventTrigger {
                    topics: e.topics.clone(),
                    type_pattern: TypePattern::new(e.type_pattern.as_deref().unwrap_or("*")),
                    filter,
                }))
            }
            TriggerDoc { event: None, cron: Some(cron) } => {
                let timezone = cron.timezone.as_deref().unwrap_or("UTC");
                let mut ok = true;
                let expression = match cron.expression.as_deref().map(|e| CronSchedule::parse(e, timezone)) {
                    Some(Err((field, message))) => {
                        c.fail(format!("trigger.cron.{field}"), message);
                        ok = false;
                        None
                    }
                    other => other.and_then(Result::ok),
                };
                let interval = check_interval(&mut c, cron.every.as_deref(), cron.offset.as_deref());
                ok &= cron.every.is_none() || interval.is_some();
                let spec = if ok {
                    TimeSpec::new(expression, interval, timezone)
                        .map_err(|(field, message)| c.fail(format!("trigger.cron.{field}"), message))
                        .ok()
                } else {
                    None
                };
                let mut time = |field: &str, text: &Option<String>| {
                    text.as_deref().and_then(|t| crate::cron::parse_time(t).map_err(|e| c.fail(format!("trigger.cron.{field}"), e)).ok())
                };
                let (start, end) = (time("start", &cron.start), time("end", &cron.end));
                if let (Some(s), Some(e)) = (start, end)
                    && e <= s
                {
                    c.fail("trigger.cron.end", "must be after start");
                }
                let jitter = c.duration("trigger.cron.jitter", cron.jitter.as_deref(), Duration::ZERO);
                let mut catchup_window =
                    cron.catchup_window.as_deref().map(|w| c.duration("trigger.cron.catchup_window", Some(w), Duration::ZERO));
                let mut overlap = cron.overlap.unwrap_or(Overlap::Skip);
                if let Some(misfire) = cron.misfire {
                    if cron.catchup_window.is_some() {
                        c.fail("trigger.cron.catchup_window", "give `misfire` or `catchup_window`, not both (misfire sets the window)");
                    }
                    let (window, needs) = match misfire {
                        Misfire::Skip => (MISFIRE_SKIP_WINDOW, None),
                        Misfire::Once => (MISFIRE_CATCH_UP_WINDOW, Some(Overlap::Skip)),
                        Misfire::All => (MISFIRE_CATCH_UP_WINDOW, Some(Overlap::BufferAll)),
                    };
                    catchup_window = Some(window);
                    if let Some(needs) = needs {
                        if cron.overlap.is_some_and(|o| o != needs) {
                            c.fail(
                                "trigger.cron.overlap",
                                format!("misfire: {misfire:?} runs missed fires with overlap {needs:?}; leave overlap out").to_lowercase(),
                            );
                        }
                        overlap = needs;
                    }
                }
                spec.map(|spec| {
                    Trigger::Cron(CronTrigger {
                        expression: cron.expression.clone(),
                        spec,
                        jitter,
                        catchup_window,
                        overlap,
                        misfire: cron.misfire,
                        start,
                        end,
                    })
                })
            }
        };

        if d.trigger.cron.is_some() && d.dedupe.key.is_some() {
            c.fail("dedupe.key", "cron runs are deduplicated by definition and scheduled time; remove dedupe.key");
        }
        let key_source = d.dedupe.key.as_deref().unwrap_or(DEFAULT_DEDUPE_KEY);
        let key = c.expr("dedupe.key".into(), key_source);
        let window = c.duration("dedupe.window", d.dedupe.window.as_deref(), DEFAULT_DEDUPE_WINDOW);
        if window < crate::dedupe::MIN_WINDOW {
            c.fail("dedupe.window", "must be at least 1s");
        } else if window > crate::dedupe::CLAIM_RETENTION {
            c.fail("dedupe.window", "must not be longer than the claim retention (30d)");
        }

        let mut context = Vec::new();
        for (name, source) in &d.context {
            let path = format!("context.{name}");
            let resolved = match source {
                ContextSourceDoc { sql: Some(sql), http: None, constant: None } => {
                    let lead = sql.query.trim_start().to_ascii_lowercase();
                    if !(lead.starts_with("select") || lead.starts_with("with")) {
                        c.fail(format!("{path}.sql.query"), "must be a read-only SELECT (or WITH ... SELECT)");
                    }
                    if sql.query.contains('\0') {
                        c.fail(format!("{path}.sql.query"), "must not contain NUL characters");
                    }
                    let datasource = match &sql.datasource {
                        Some(d) if !d.trim().is_empty() => d.clone(),
                        _ => {
                            c.fail(
                                format!("{path}.sql.datasource"),
                                "required: the name of a postgres or mysql datasource the operator configured",
                            );
                            String::new()
                        }
                    };
                    let params = sql.params.iter().enumerate().filter_map(|(i, p)| c.expr(format!("{path}.sql.params[{i}]"), p)).collect();
                    let cache = sql.cache.as_deref().map(|t| c.duration(&format!("{path}.sql.cache"), Some(t), Duration::ZERO));
                    ContextSource::Sql(SqlSource { datasource, query: sql.query.clone(), params, cache })
                }
                ContextSourceDoc { sql: None, http: Some(http), constant: None } => match check_http_source(&mut c, &path, http) {
                    Some(source) => ContextSource::Http(source),
                    None => continue,
                },
                ContextSourceDoc { sql: None, http: None, constant: Some(v) } => ContextSource::Static(v.clone()),
                _ => {
                    c.fail(path, "needs exactly one of `sql`, `http` or `static`");
                    continue;
                }
            };
            context.push((name.clone(), resolved));
        }

        let mut tasks = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, t) in d.tasks.iter().enumerate() {
            if let Some(task) = check_task(&mut c, i, t) {
                if !names.insert(task.name.clone()) {
                    c.fail(format!("tasks[{i}].name"), format!("{:?} is used by an earlier task", task.name));
                }
                tasks.push(task);
            }
        }
        if d.tasks.is_empty() {
            c.fail("tasks", "must define at least one task");
        } else if d.tasks.len() > MAX_TEMPLATES {
            // Checking `after` walks each template's ancestors: bounded templates keep a hostile
            // definition's check (and each run's step graph) cheap.
            c.fail("tasks", format!("has {} templates; a definition has at most {MAX_TEMPLATES}", d.tasks.len()));
        }
        let graph: Vec<(String, Vec<String>, Vec<&Expr>)> =
            tasks.iter().map(|t: &TaskTemplate| (t.name.clone(), t.after.clone(), t.expressions())).collect();
        crate::steps::check_graph(&mut c, &graph);
        let mut cancel_on = Vec::new();
        for (i, m) in d.cancel_on.iter().enumerate() {
            let path = format!("cancel_on[{i}]");
            if let Some(m) = crate::steps::check_match(&mut c, &path, m) {
                if m.run.uses_variable("context") {
                    c.fail(format!("{path}.match.run"), "is computed when the run begins, before its context: use `event` and `run`");
                }
                cancel_on.push(m);
            }
        }

        let flow_control = crate::flow::check(&mut c, &d.flow_control);

        match (c.errors.is_empty(), key, trigger) {
            (true, Some(key), Some(trigger)) => Ok(Definition {
                id: d.id.clone(),
                name: d.name.clone(),
                enabled: d.enabled,
                trigger,
                dedupe: Dedupe { key, window },
                context,
                tasks,
                flow_control,
                cancel_on,
                document,
            }),
            _ => Err(c.errors),
        }
    }

    /// Whether runs unfold in steps (docs/steps.md): some template runs after another, sleeps
    /// or waits for an event. Such runs plan each template when it is due; the others plan all
    /// tasks at once, as runs always did, so their histories are unchanged.
    pub fn unfolds(&self) -> bool {
        self.tasks.iter().any(|t| !t.after.is_empty() || matches!(t.task_type, TaskType::Sleep | TaskType::WaitForEvent))
    }

    /// The datasources this definition names, with the field naming each and the kind it needs
    /// (`sql`: postgres or mysql; `http`). Task datasources count when they are constants.
    pub fn datasource_refs(&self) -> Vec<(String, String, &'static str)> {
        let mut refs = Vec::new();
        for (name, source) in &self.context {
            match source {
                ContextSource::Sql(s) => refs.push((format!("context.{name}.sql.datasource"), s.datasource.clone(), "sql")),
                ContextSource::Http(HttpSource { datasource: Some(d), .. }) => {
                    refs.push((format!("context.{name}.http.datasource"), d.clone(), "http"));
                }
                _ => {}
            }
        }
        for (i, t) in self.tasks.iter().enumerate() {
            if let Some((_, e)) = t.params.iter().find(|(k, _)| k == "datasource")
                && let Ok(d) = e.eval_string(&crate::Bindings::default())
            {
                refs.push((format!("tasks[{i}].params.datasource"), d, "http"));
            }
        }
        refs
    }

    /// Errors for every datasource named here that `kind_of` (the operator's configuration)
    /// does not know or knows as another kind.
    pub fn check_datasources(&self, kind_of: impl Fn(&str) -> Option<&'static str>, configured: &str) -> Vec<FieldError> {
        self.datasource_refs()
            .into_iter()
            .filter_map(|(path, name, needs)| match kind_of(&name) {
                Some(kind) if kind == needs || (needs == "sql" && matches!(kind, "postgres" | "mysql")) => None,
                Some(kind) => {
                    let wanted = if needs == "sql" { "postgres or mysql" } else { needs };
                    Some(FieldError { path, message: format!("datasource {name:?} is a {kind} datasource; this needs a {wanted} one") })
                }
                None => Some(FieldError { path, message: format!("no datasource named {name:?} is configured; configured: {configured}") }),
            })
            .collect()
    }

    /// Identifies the content of a version. `enabled` is left out: switching a definition on or
    /// off is not a new version.
    /// A cron definition's next `n` fire times from now (RFC 3339); `None` for an event one.
    pub fn next_fire_times(&self, n: usize) -> Option<Vec<String>> {
        match &self.trigger {
            Trigger::Cron(c) => Some(c.spec.next_fire_times(chrono::Utc::now(), n).iter().map(chrono::DateTime::to_rfc3339).collect()),
            Trigger::Event(_) => None,
        }
    }

    pub fn spec_sha256(&self) -> String {
        let mut doc = self.document.clone();
        doc.enabled = true;
        let canonical = serde_json::to_vec(&doc).expect("documents serialise");
        crate::sha256_hex(&canonical)
    }

    /// The stored form of the document.
    pub fn spec_json(&self) -> Json {
        serde_json::to_value(&self.document).expect("documents serialise")
    }

    /// Rebuilds a definition from its stored form.
    pub fn from_spec_json(spec: Json) -> Result<Definition, InvalidDefinition> {
        let document: Document = serde_json::from_value(spec).map_err(|e| InvalidDefinition {
            origin: "stored definition".into(),
            errors: vec![FieldError { path: "(document)".into(), message: e.to_string() }],
        })?;
        let origin = format!("stored definition {}", document.id);
        Definition::parse(document).map_err(|errors| InvalidDefinition { origin, errors })
    }
}

/// `every` (1 s .. 366 d) and its `offset` (shorter than `every`).
fn check_interval(c: &mut Checker, every: Option<&str>, offset: Option<&str>) -> Option<Interval> {
    let Some(every_text) = every else {
        if offset.is_some() {
            c.fail("trigger.cron.offset", "only means something with `every`");
        }
        return None;
    };
    let every = c.duration("trigger.cron.every", Some(every_text), Duration::ZERO);
    let offset = c.duration("trigger.cron.offset", offset, Duration::ZERO);
    if every < Duration::from_secs(1) || every > Duration::from_secs(366 * 86_400) {
        c.fail("trigger.cron.every", "must be between 1s and 366d");
        return None;
    }
    if offset >= every {
        c.fail("trigger.cron.offset", "must be shorter than `every`");
        return None;
    }
    Some(Interval { every, offset })
}

fn check_http_source(c: &mut Checker, path: &str, h: &HttpSourceDoc) -> Option<HttpSource> {
    let path = format!("{path}.http");
    let method = h.method.to_ascii_uppercase();
    if !matches!(method.as_str(), "GET" | "POST" | "PUT") {
        c.fail(format!("{path}.method"), format!("{method:?} is not GET, POST or PUT"));
    }
    let url = c.expr(format!("{path}.url"), &h.url);
    if h.body.is_some() && h.text.is_some() {
        c.fail(format!("{path}.text"), "give either `body` (JSON) or `text`, not both");
    }
    let body = h.body.as_deref().and_then(|b| c.expr(format!("{path}.body"), b));
    let text = h.text.as_deref().and_then(|b| c.expr(format!("{path}.text"), b));
    let mut headers = Vec::new();
    for (name, source) in &h.headers {
        if !valid_header_name(name) {
            c.fail(format!("{path}.headers"), format!("{name:?} is not an HTTP header name"));
        }
        if let Some(e) = c.expr_with_secrets(format!("{path}.headers.{name}"), source) {
            headers.push((name.clone(), e));
        }
    }
    let timeout = h.timeout.as_deref().map(|t| c.duration(&format!("{path}.timeout"), Some(t), Duration::ZERO));
    let expect = h.expect.clone().unwrap_or_default();
    if let Some(bad) = expect.iter().find(|s| !(100..=599).contains(*s)) {
        c.fail(format!("{path}.expect"), format!("{bad} is not an HTTP status code"));
    }
    let cache = h.cache.as_deref().map(|t| c.duration(&format!("{path}.cache"), Some(t), Duration::ZERO));
    let datasource = h.datasource.clone().filter(|d| !d.trim().is_empty());
    Some(HttpSource { datasource, method, url: url?, body, text, headers, timeout, expect, cache })
}

fn check_task(c: &mut Checker, i: usize, t: &TaskDoc) -> Option<TaskTemplate> {
    let path = format!("tasks[{i}]");
    let legal = |ch: char| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-');
    if t.name.is_empty() || !t.name.chars().all(legal) {
        c.fail(format!("{path}.name"), format!("{:?} must be letters, digits, '_' or '-' (it is part of task ids)", t.name));
    }
    for required in required_params(t.task_type) {
        if !t.params.contains_key(*required) {
            c.fail(format!("{path}.params.{required}"), format!("required for a {} task", t.task_type.as_str()));
        }
    }
    let when = t.when.as_deref().and_then(|w| c.expr(format!("{path}.when"), w));
    let for_each = t.for_each.as_deref().and_then(|f| c.expr(format!("{path}.for_each"), f));
    let known: &[&str] = match t.task_type {
        TaskType::Http => &HTTP_TASK_PARAMS,
        TaskType::Kafka => &KAFKA_TASK_PARAMS,
        TaskType::Sleep => &crate::task_params::SLEEP_PARAMS,
        TaskType::Human | TaskType::Workflow | TaskType::WaitForEvent => &[],
    };
    let step = matches!(t.task_type, TaskType::Sleep | TaskType::WaitForEvent);
    if t.always && t.after.is_empty() {
        c.fail(format!("{path}.always"), "only means something with `after`: run even when one of them failed");
    }
    if t.task_type == TaskType::Sleep && crate::task_params::SLEEP_PARAMS.iter().filter(|p| t.params.contains_key(**p)).count() != 1 {
        c.fail(format!("{path}.params"), "a sleep takes exactly one of `for` (a duration) and `until` (an instant)");
    }
    if t.task_type == TaskType::WaitForEvent && !t.params.is_empty() {
        c.fail(format!("{path}.params"), "a wait_for_event step takes no params: say what it waits for in `event`");
    }
    if step && t.for_each.is_some() {
        c.fail(format!("{path}.for_each"), format!("a {} step is one per run; put for_each on the tasks after it", t.task_type));
    }
    if step && t.retry.is_some() {
        c.fail(format!("{path}.retry"), format!("a {} step does not fail, so it has nothing to retry", t.task_type));
    }
    if step && t.execution == Some(Execution::Child) {
        c.fail(format!("{path}.execution"), "sleeps and waits are steps of the run itself (a timer in its history)");
    }
    let wait = match (&t.event, t.task_type) {
        (Some(m), TaskType::WaitForEvent) => crate::steps::check_match(c, &format!("{path}.event"), m),
        (None, TaskType::WaitForEvent) => {
            c.fail(format!("{path}.event"), "required: the event the step waits for (type and match)");
            None
        }
        (Some(_), _) => {
            c.fail(format!("{path}.event"), "only wait_for_event steps wait for an event");
            None
        }
        (None, _) => None,
    };
    if t.task_type == TaskType::WaitForEvent && t.timeout.is_none() {
        c.fail(format!("{path}.timeout"), "required: how long the step waits for its event");
    }
    if !known.is_empty()
        && let Some(unknown) = t.params.keys().find(|k| !known.contains(&k.as_str()))
    {
        c.fail(
            format!("{path}.params.{unknown}"),
            format!("not a param of {} tasks (they take {})", t.task_type.as_str(), known.join(", ")),
        );
    }
    let params = t
        .params
        .iter()
        .filter_map(|(k, v)| {
            let field = format!("{path}.params.{k}");
            // An http task's headers are evaluated when planned but their secrets only resolved
            // when sent, so they are the one param that may refer to secrets.
            let e = if t.task_type == TaskType::Http && k == "headers" { c.expr_with_secrets(field, v) } else { c.expr(field, v) };
            e.map(|e| (k.clone(), e))
        })
        .collect();
    let mut retry = RetryPolicy::default();
    if let Some(r) = &t.retry {
        if let Some(n) = r.max_attempts {
            if n == 0 {
                c.fail(format!("{path}.retry.max_attempts"), "must be at least 1");
            }
            retry.max_attempts = n;
        }
        retry.initial_interval =
            c.duration(&format!("{path}.retry.initial_interval"), r.initial_interval.as_deref(), retry.initial_interval);
        retry.max_interval = c.duration(&format!("{path}.retry.max_interval"), r.max_interval.as_deref(), retry.max_interval);
        if let Some(b) = r.backoff {
            if b < 1.0 {
                c.fail(format!("{path}.retry.backoff"), "must be at least 1.0");
            }
            retry.backoff = b;
        }
    }
    let timeout = c.duration(&format!("{path}.timeout"), t.timeout.as_deref(), DEFAULT_TASK_TIMEOUT);
    let waits = matches!(t.task_type, TaskType::Human | TaskType::WaitForEvent);
    let human_timeout = (waits && t.timeout.is_some()).then_some(timeout);
    if t.task_type == TaskType::Sleep && t.timeout.is_some() {
        c.fail(format!("{path}.timeout"), "a sleep lasts what its `for` or `until` says");
    }
    if human_timeout.is_some_and(|d| d > crate::steps::MAX_SLEEP) {
        c.fail(format!("{path}.timeout"), "must not be longer than 366 days");
    }
    // An event wait that timed out completes by default (its output null), so the tasks after
    // it can branch on `tasks.<name>.output == null`.
    let default_on_timeout = if t.task_type == TaskType::WaitForEvent { OnTimeout::Complete } else { OnTimeout::Fail };
    let on_timeout = t.on_timeout.unwrap_or(default_on_timeout);
    if !waits && (t.on_timeout.is_some() || t.timeout_output.is_some()) {
        c.fail(
            format!("{path}.on_timeout"),
            "only human tasks and wait_for_event steps have on_timeout and timeout_output (other tasks retry, then fail)",
        );
    } else if t.on_timeout.is_some() && t.timeout.is_none() {
        c.fail(format!("{path}.on_timeout"), "needs a timeout: how long the task waits");
    } else if t.task_type == TaskType::WaitForEvent {
        if on_timeout == OnTimeout::Fail && t.timeout_output.is_some() {
            c.fail(format!("{path}.timeout_output"), "only used with on_timeout: complete");
        }
    } else if on_timeout == OnTimeout::Complete && t.timeout_output.is_none() {
        c.fail(format!("{path}.timeout_output"), "required with on_timeout: complete (CEL giving the output)");
    } else if on_timeout == OnTimeout::Fail && t.timeout_output.is_some() {
        c.fail(format!("{path}.timeout_output"), "only used with on_timeout: complete");
    }
    let timeout_output = t.timeout_output.as_deref().and_then(|o| c.expr(format!("{path}.timeout_output"), o));
    let execution = t.execution.unwrap_or(Execution::default_for(t.task_type));
    if execution == Execution::Activity && !matches!(t.task_type, TaskType::Http | TaskType::Kafka) && !step {
        c.fail(format!("{path}.execution"), "only http and kafka tasks run as activities; human and workflow tasks are child workflows");
    }
    if let Some(budget) = &t.budget {
        if !crate::flow::valid_budget_name(budget) {
            c.fail(format!("{path}.budget"), format!("{budget:?} must be 1-64 of a-z, 0-9, '-', '_', '.' (a name in TF_BUDGETS)"));
        }
        if !matches!(t.task_type, TaskType::Http | TaskType::Kafka) {
            c.fail(format!("{path}.budget"), "only http and kafka tasks hold a budget (they are what calls out)");
        }
    }
    Some(TaskTemplate {
        name: t.name.clone(),
        task_type: t.task_type,
        when,
        for_each,
        params,
        retry,
        timeout,
        human_timeout,
        on_timeout,
        timeout_output,
        execution,
        budget: t.budget.clone(),
        after: t.after.clone(),
        always: t.always,
        wait,
    })
}

impl TaskTemplate {
    /// Every CEL expression of the template, for checks that read them all.
    pub fn expressions(&self) -> Vec<&Expr> {
        let mut out: Vec<&Expr> = self.when.iter().chain(&self.for_each).chain(&self.timeout_output).collect();
        out.extend(self.params.iter().map(|(_, e)| e));
        if let Some(w) = &self.wait {
            out.push(&w.run);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: &str = r#"
id: orders-fulfil
name: Fulfil large orders
trigger:
  event:
    topics: [events.demo]
    type: com.example.order.*
    filter: event.data.amount > 100
dedupe:
  key: event.data.order_id
  window: 1h
context:
  settings:
    static: {region: eu}
tasks:
  - name: ship
    type: kafka
    for_each: event.data.items
    params:
      topic: "'shipments'"
      value: "{'sku': item.sku, 'region': context.settings.region}"
"#;

    #[test]
    fn parses_a_complete_definition() {
        let d = Definition::from_yaml("orders.yaml", ORDERS).unwrap().remove(0);
        assert_eq!(d.id, "orders-fulfil");
        assert!(d.enabled);
        assert_eq!(d.dedupe.window, Duration::from_secs(3600));
        assert_eq!(d.tasks[0].params.len(), 2);
        match &d.trigger {
            Trigger::Event(e) => {
                assert!(e.type_pattern.matches("com.example.order.created"));
                assert!(!e.type_pattern.matches("com.example.invoice.created"));
            }
            Trigger::Cron(_) => panic!("event trigger expected"),
        }
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let bad = ORDERS
            .replace("event.data.amount > 100", "event.data.amount >")
            .replace("key: event.data.order_id", "key: evnt.order_id")
            .replace("window: 1h", "window: 1 hour")
            .replace("topic: \"'shipments'\"", "topics: \"'x'\"");
        let err = Definition::from_yaml("bad.yaml", &bad).unwrap_err();
        let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["trigger.event.filter", "dedupe.key", "dedupe.window", "tasks[0].params.topic", "tasks[0].params.topics"],
            "{err}"
        );
        let text = err.to_string();
        assert!(text.starts_with("bad.yaml is not a valid activity definition:"), "{text}");
        assert!(text.contains("dedupe.key: line 1 column 1: unknown variable `evnt`"), "{text}");
    }

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = Definition::from_yaml("body", &deep).unwrap_err();
        // The scan's message, not the parser's: the parser never ran.
        assert!(err.errors[0].message.contains("nested deeper than 64 levels"), "{err}");
        assert_eq!(flow_nesting_past("a: '[[[['\nb: \"{{{\\\"[\"\n# [[[[[\nc: [1, [2]]", 2), None);
        assert_eq!(flow_nesting_past("[[[", 2), Some(2));
    }

    #[test]
    fn dedupe_windows_between_a_second_and_the_claim_retention() {
        for (window, ok) in [("1s", true), ("30d", true), ("999ms", false), ("31d", false)] {
            let r = Definition::from_yaml("w", &ORDERS.replace("window: 1h", &format!("window: {window}")));
            match r {
                Ok(_) => assert!(ok, "{window} accepted"),
                Err(e) => {
                    assert!(!ok, "{window} refused: {e}");
                    assert_eq!(e.errors[0].path, "dedupe.window");
                }
            }
        }
    }

    #[test]
    fn unknown_fields_are_refused_with_a_location() {
        let err = Definition::from_yaml("x.yaml", &ORDERS.replace("dedupe:", "dedup:")).unwrap_err().to_string();
        assert!(err.contains("unknown field `dedup`") && err.contains("line"), "{err}");
    }

    #[test]
    fn the_hash_ignores_enabled_and_follows_content() {
        let a = Definition::from_yaml("a", ORDERS).unwrap().remove(0);
        let b = Definition::from_yaml("b", &format!("{ORDERS}\nenabled: false\n")).unwrap().remove(0);
        assert!(!b.enabled);
        assert_eq!(a.spec_sha256(), b.spec_sha256());
        let c = Definition::from_yaml("c", &ORDERS.replace("1h", "2h")).unwrap().remove(0);
        assert_ne!(a.spec_sha256(), c.spec_sha256());
        let back = Definition::from_spec_json(a.spec_json()).unwrap();
        assert_eq!(back.spec_sha256(), a.spec_sha256());
    }

    #[test]
    fn cron_triggers_are_checked_field_by_field() {
        let good = "id: nightly\nname: N\ntrigger: {cron: {expression: '30 2 * * *', timezone: Europe/Berlin, jitter: 30s, catchup_window: 10m, overlap: buffer_one}}\ntasks: [{name: t, type: human}]\n";
        let d = Definition::from_yaml("c", good).unwrap().remove(0);
        match &d.trigger {
            Trigger::Cron(c) => {
                assert_eq!(c.spec.timezone(), "Europe/Berlin");
                assert_eq!(c.catchup_window, Some(Duration::from_secs(600)));
                assert_eq!(c.overlap, Overlap::BufferOne);
            }
            Trigger::Event(_) => panic!("cron expected"),
        }
        // Intervals, alone or with an expression, and misfire policies set window and overlap.
        let cron_of = |yaml: &str| match Definition::from_yaml("c", yaml).map(|mut d| d.remove(0).trigger) {
            Ok(Trigger::Cron(c)) => Ok(c),
            Ok(Trigger::Event(_)) => panic!("cron expected"),
            Err(e) => Err(e.errors.iter().map(ToString::to_string).collect::<Vec<_>>()),
        };
        let with = |fields: &str| format!("id: t\nname: T\ntrigger: {{cron: {{{fields}}}}}\ntasks: [{{name: t, type: human}}]\n");
        let every = cron_of(&with("every: 15m, offset: 2m, misfire: all")).unwrap();
        assert_eq!(every.spec.interval.map(|i| (i.every, i.offset)), Some((Duration::from_secs(900), Duration::from_secs(120))));
        assert!(every.spec.cron.is_none() && every.expression.is_none());
        assert_eq!((every.catchup_window, every.overlap), (Some(MISFIRE_CATCH_UP_WINDOW), Overlap::BufferAll));
        let once = cron_of(&with("expression: '0 * * * *', every: 1h, offset: 30m, misfire: once")).unwrap();
        assert_eq!(
            (once.catchup_window, once.overlap, once.spec.cron_strings()),
            (Some(MISFIRE_CATCH_UP_WINDOW), Overlap::Skip, vec!["0 * * * *".to_string()])
        );
        let skip = cron_of(&with("every: 1m, misfire: skip, overlap: allow_all")).unwrap();
        assert_eq!((skip.catchup_window, skip.overlap), (Some(MISFIRE_SKIP_WINDOW), Overlap::AllowAll));
        for (fields, error) in [
            ("timezone: UTC", "trigger.cron.expression: a time trigger needs `expression` (cron), `every` (an interval) or both"),
            ("every: 15m, offset: 15m", "trigger.cron.offset: must be shorter than `every`"),
            ("expression: '* * * * *', offset: 1m", "trigger.cron.offset: only means something with `every`"),
            ("every: 500ms", "trigger.cron.every: must be between 1s and 366d"),
            (
                "every: 1m, misfire: all, catchup_window: 1h",
                "trigger.cron.catchup_window: give `misfire` or `catchup_window`, not both (misfire sets the window)",
            ),
            (
                "every: 1m, misfire: once, overlap: buffer_all",
                "trigger.cron.overlap: misfire: once runs missed fires with overlap skip; leave overlap out",
            ),
        ] {
            assert_eq!(cron_of(&with(fields)).unwrap_err(), [error], "{fields}");
        }
        let bad = good
            .replace("'30 2 * * *'", "'30 25 * * *'")
            .replace("Europe/Berlin", "Europe/Atlantis")
            .replace("overlap: buffer_one", "overlap: buffer_one, start: yesterday");
        let err = Definition::from_yaml("c", &bad).unwrap_err();
        let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["trigger.cron.expression", "trigger.cron.start"], "{err}");
        let tz = Definition::from_yaml("c", &good.replace("Europe/Berlin", "Europe/Atlantis")).unwrap_err();
        assert_eq!(tz.errors[0].path, "trigger.cron.timezone");
        assert!(tz.to_string().contains("\"Europe/Atlantis\" is not an IANA time zone name"), "{tz}");
        let keyed = Definition::from_yaml("c", &good.replace("tasks:", "dedupe: {key: event.id}\ntasks:")).unwrap_err();
        assert_eq!(keyed.errors[0].path, "dedupe.key");
    }

    const SOURCES: &str = r#"
id: joins
name: Joins the user's systems
trigger: {event: {topics: [events.demo]}}
context:
  orders:
    sql: {datasource: orders, query: "SELECT * FROM orders WHERE customer_id = $1", params: [event.data.customer], cache: 30s}
  customer:
    http:
      datasource: crm
      url: "'/customers/' + event.data.customer"
      headers: {Authorization: "'Bearer ' + secret('crm_token')"}
      timeout: 2s
      expect: [200, 404]
tasks:
  - name: notify
    type: http
    params:
      datasource: "'crm'"
      url: "'/notes'"
      headers: "{'Authorization': 'Bearer ' + secret('crm_token')}"
      body: "{'customer': event.data.customer}"
"#;

    #[test]
    fn sources_name_datasources_and_only_headers_see_secrets() {
        let d = Definition::from_yaml("s", SOURCES).unwrap().remove(0);
        let ContextSource::Http(h) = &d.context[0].1 else { panic!("{:?}", d.context) };
        assert_eq!(
            (h.datasource.as_deref(), h.expect.as_slice(), h.timeout),
            (Some("crm"), &[200u16, 404][..], Some(Duration::from_secs(2)))
        );
        assert!(h.headers[0].1.uses_secret());
        let ContextSource::Sql(q) = &d.context[1].1 else { panic!() };
        assert_eq!((q.datasource.as_str(), q.cache), ("orders", Some(Duration::from_secs(30))));
        let refs: Vec<(String, String)> = d.datasource_refs().into_iter().map(|(p, n, _)| (p, n)).collect();
        assert_eq!(
            refs,
            [
                ("context.customer.http.datasource".to_string(), "crm".to_string()),
                ("context.orders.sql.datasource".into(), "orders".into()),
                ("tasks[0].params.datasource".into(), "crm".into())
            ]
        );
        let known = |n: &str| match n {
            "orders" => Some("http"),
            _ => None,
        };
        let errors: Vec<String> = d.check_datasources(known, "orders (http)").iter().map(std::string::ToString::to_string).collect();
        assert_eq!(
            errors[1],
            "context.orders.sql.datasource: datasource \"orders\" is a http datasource; this needs a postgres or mysql one"
        );
        assert!(errors[0].starts_with("context.customer.http.datasource: no datasource named \"crm\" is configured"), "{errors:?}");

        let leaky = SOURCES.replace("body: \"{'customer': event.data.customer}\"", "body: \"{'token': secret('crm_token')}\"");
        let err = Definition::from_yaml("s", &leaky).unwrap_err();
        assert_eq!(err.errors[0].path, "tasks[0].params.body");
        assert!(err.errors[0].message.starts_with("secret() may only be used in `headers`"), "{err}");
        let no_ds = SOURCES
            .replace("datasource: orders, ", "")
            .replace("timeout: 2s", "timeout: 2 s")
            .replace("url: \"'/notes'\"", "uri: \"'/notes'\"");
        let err = Definition::from_yaml("s", &no_ds).unwrap_err();
        let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["context.customer.http.timeout", "context.orders.sql.datasource", "tasks[0].params.url", "tasks[0].params.uri"],
            "{err}"
        );
    }

    #[test]
    fn human_tasks_may_time_out_and_complete_or_fail() {
        let base = "id: h\nname: h\ntrigger: {event: {topics: [t]}}\ntasks:\n  - {name: a, type: human, TIMEOUT}\n";
        let parse = |extra: &str| Definition::from_yaml("h", &base.replace("TIMEOUT", extra));
        let d = parse("timeout: 2s, on_timeout: complete, timeout_output: \"{'ok': false}\"").unwrap().remove(0);
        assert_eq!((d.tasks[0].human_timeout, d.tasks[0].on_timeout), (Some(Duration::from_secs(2)), OnTimeout::Complete));
        let plain = parse("when: 'true'").unwrap().remove(0);
        assert_eq!(plain.tasks[0].human_timeout, None, "a human task without timeout waits until decided");
        let path = |extra: &str| parse(extra).unwrap_err().errors[0].path.clone();
        assert_eq!(path("on_timeout: complete, timeout: 2s"), "tasks[0].timeout_output");
        assert_eq!(path("on_timeout: fail"), "tasks[0].on_timeout");
        assert_eq!(path("timeout: 2s, timeout_output: '1'"), "tasks[0].timeout_output");
        let kafka = "id: k\nname: k\ntrigger: {event: {topics: [t]}}\ntasks:\n  - {name: a, type: kafka, timeout: 2s, on_timeout: fail, params: {topic: \"'t'\", value: '1'}}\n";
        assert_eq!(Definition::from_yaml("k", kafka).unwrap_err().errors[0].path, "tasks[0].on_timeout");
    }

    #[test]
    fn only_http_and_kafka_tasks_run_as_activities() {
        let doc = |task: &str| format!("id: x\nname: x\ntrigger: {{event: {{topics: [t]}}}}\ntasks:\n  - {task}\n");
        let kafka = doc("{name: a, type: kafka, execution: activity, params: {topic: \"'t'\", value: '1'}}");
        assert_eq!(Definition::from_yaml("k", &kafka).unwrap().remove(0).tasks[0].execution, Execution::Activity);
        let plain = doc("{name: a, type: kafka, params: {topic: \"'t'\", value: '1'}}");
        assert_eq!(Definition::from_yaml("k", &plain).unwrap().remove(0).tasks[0].execution, Execution::Activity, "the default");
        let child = doc("{name: a, type: kafka, execution: child, params: {topic: \"'t'\", value: '1'}}");
        assert_eq!(Definition::from_yaml("k", &child).unwrap().remove(0).tasks[0].execution, Execution::Child);
        let human = doc("{name: a, type: human}");
        assert_eq!(Definition::from_yaml("h", &human).unwrap().remove(0).tasks[0].execution, Execution::Child, "always");
        let human = Definition::from_yaml("h", &doc("{name: a, type: human, execution: activity}")).unwrap_err();
        assert_eq!(human.errors[0].path, "tasks[0].execution");
        assert!(human.errors[0].message.contains("child workflows"), "{human}");
        assert!(Definition::from_yaml("u", &doc("{name: a, type: http, execution: inline, params: {url: \"'u'\"}}")).is_err());
    }

    #[test]
    fn type_patterns() {
        assert!(TypePattern::new("*").matches("anything"));
        assert!(TypePattern::new("a.*.c").matches("a.b.c"));
        assert!(!TypePattern::new("a.*.c").matches("a.b.d"));
        assert!(TypePattern::new("exact").matches("exact"));
        assert!(!TypePattern::new("exact").matches("exactly"));
        assert!(TypePattern::new("*.created").matches("order.created"));
        assert!(TypePattern::new("a*b*c").matches("axxbyyc"));
        assert!(!TypePattern::new("a*b*c").matches("axxc"));
        assert!(!TypePattern::new("a*a").matches("a"), "the prefix and suffix may not overlap");
        assert!(TypePattern::new("**").matches(""));
        assert!(TypePattern::new("a**").matches("abc"));
        assert!(!TypePattern::new("*.created").matches("order.created.v2"));
    }
}
