//! The one CEL evaluation module, used alike by the router (filters, dedupe keys), the worker
//! (context parameters, task templates) and the CLI (validation). Expressions see `event`
//! (envelope attributes plus `data`), `context` (resolved context sources), `item` (the
//! element inside `for_each`) and `run` (the run's id, definition and trigger).

use std::sync::{Arc, OnceLock};

use cel::{Context, Env, Program};
use serde::Serialize;
use serde_json::Value as Json;

/// The variables an expression may reference (`events` only in the tasks of a batched
/// definition, `tasks` only in task templates, which the definition's checker enforces).
pub const VARIABLES: [&str; 6] = ["event", "context", "item", "run", "events", "tasks"];

fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib()))
}

/// Bindings made a CEL context once. Converting an event to CEL values costs more than most
/// expressions do, so everything evaluated against one event shares one scope.
pub struct Scope {
    ctx: Context<'static, 'static>,
}

impl Scope {
    pub fn new(bindings: &Bindings) -> Scope {
        Scope::with([
            ("event", &bindings.event),
            ("context", &bindings.context),
            ("item", &bindings.item),
            ("run", &bindings.run),
            ("events", &bindings.events),
            ("tasks", &bindings.tasks),
        ])
    }

    /// What the router's filters and keys see: `event` only (the others null), made without
    /// copying the event first.
    pub fn for_event(event: &Json) -> Scope {
        let null = Json::Null;
        Scope::with([("event", event), ("context", &null), ("item", &null), ("run", &null), ("events", &null), ("tasks", &null)])
    }

    fn with(variables: [(&str, &Json); 6]) -> Scope {
        let mut ctx = Context::with_env(env().clone());
        ctx.add_function(SECRET_FUNCTION, |name: Arc<String>| -> Result<cel::Value, cel::ExecutionError> {
            if !valid_secret_name(&name) {
                return Err(cel::ExecutionError::function_error(
                    SECRET_FUNCTION,
                    format!("{name:?} is not a secret name (a-z, 0-9, '_', '-', '.')"),
                ));
            }
            Ok(cel::Value::String(Arc::new(format!("{SECRET_REF_OPEN}{}:{name}}}", process_mark()))))
        })
        .expect("secret is not a standard CEL function");
        for (name, value) in variables {
            ctx.add_variable_from_value(name, to_cel(value));
        }
        Scope { ctx }
    }
}

/// A compiled expression, with the field path and source it came from for error messages.
#[derive(Clone)]
pub struct Expr {
    path: String,
    source: String,
    program: Arc<Program>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({}: {})", self.path, self.source)
    }
}

/// Why an expression did not compile: the field, and where in the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// What an expression sees when evaluated.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Bindings {
    pub event: Json,
    pub context: Json,
    pub item: Json,
    pub run: Json,
    /// A batched run's events (`flow_control.batch`), oldest first; null otherwise.
    pub events: Json,
    /// The templates a task runs after: name to `{status, output}` (docs/steps.md).
    pub tasks: Json,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: `{source_text}` {reason}")]
pub struct EvalError {
    pub path: String,
    pub source_text: String,
    pub reason: String,
}

impl Expr {
    /// Compiles `source`; `path` names the field (e.g. `tasks[0].params.url`) in every error.
    pub fn compile(path: impl Into<String>, source: &str) -> Result<Expr, CompileError> {
        // CEL here has no evaluation budget, so what an expression may cost is bounded before it
        // runs: by its length, and by forbidding a comprehension inside another (its cost would
        // be the square of a list's length, and an event may carry a list of 100 000 items).
        if source.len() > MAX_SOURCE_BYTES {
            return Err(CompileError {
                line: 1,
                column: 1,
                message: format!("is {} bytes long; expressions are limited to {MAX_SOURCE_BYTES}", source.len()),
            });
        }
        if let Some(column) = nested_comprehension(source) {
            return Err(CompileError {
                line: 1,
                column,
                message: "a comprehension (all, exists, exists_one, map, filter) inside another one is not allowed: its cost \
                          grows with the product of both lists' lengths; use for_each for the outer list"
                    .into(),
            });
        }
        let program = env().compile(source).map_err(|errs| {
            let first = errs.errors.first();
            CompileError {
                line: first.map_or(1, |e| e.pos.0.max(1) as usize),
                column: first.map_or(1, |e| e.pos.1.max(0) as usize + 1),
                message: first.map_or_else(|| errs.to_string(), |e| e.msg.clone()),
            }
        })?;
        let unknown: Vec<String> = program
            .references()
            .variables()
            .into_iter()
            .filter(|v| !VARIABLES.contains(v) && !is_comprehension_variable(source, v))
            .map(String::from)
            .collect();
        if let Some(first) = unknown.first() {
            let column = source.find(first.as_str()).map_or(1, |i| i + 1);
            return Err(CompileError {
                line: 1,
                column,
                message: format!("unknown variable `{first}`; expressions see {}", VARIABLES.join(", ")),
            });
        }
        Ok(Expr { path: path.into(), source: source.to_string(), program: Arc::new(program) })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the expression calls `secret(...)`; a definition allows that only where the value
    /// is sent and never stored (headers).
    pub fn uses_secret(&self) -> bool {
        self.program.references().has_function(SECRET_FUNCTION)
    }

    /// Whether the expression reads the variable `name`.
    pub fn uses_variable(&self, name: &str) -> bool {
        self.program.references().variables().contains(&name)
    }

    /// Evaluates to JSON. `secret('name')` gives a reference only this process can have made;
    /// [`seal_secret_refs`] turns it into the stored `${secret:name}` form.
    pub fn eval(&self, bindings: &Bindings) -> Result<Json, EvalError> {
        self.eval_in(&Scope::new(bindings))
    }

    /// Evaluates against bindings already made a [`Scope`]: the router evaluates every
    /// definition's filter and key against one scope per event.
    pub fn eval_in(&self, scope: &Scope) -> Result<Json, EvalError> {
        let value = self.program.execute(&scope.ctx).map_err(|e| self.error(format!("failed: {e}")))?;
        value.json().map_err(|e| self.error(format!("gave a value JSON cannot hold: {e}")))
    }

    pub fn eval_bool(&self, bindings: &Bindings) -> Result<bool, EvalError> {
        self.eval_bool_in(&Scope::new(bindings))
    }

    pub fn eval_bool_in(&self, scope: &Scope) -> Result<bool, EvalError> {
        match self.eval_in(scope)? {
            Json::Bool(b) => Ok(b),
            other => Err(self.error(format!("gave {} where a bool is needed", kind(&other)))),
        }
    }

    /// Strings as they are; numbers and bools in their JSON text (`42`, `true`), so a numeric
    /// id works as a dedupe key. Anything else is an error.
    pub fn eval_string(&self, bindings: &Bindings) -> Result<String, EvalError> {
        self.eval_string_in(&Scope::new(bindings))
    }

    pub fn eval_string_in(&self, scope: &Scope) -> Result<String, EvalError> {
        match self.eval_in(scope)? {
            Json::String(s) => Ok(s),
            v @ (Json::Number(_) | Json::Bool(_)) => Ok(v.to_string()),
            other => Err(self.error(format!("gave {} where a string is needed", kind(&other)))),
        }
    }

    pub fn eval_list(&self, bindings: &Bindings) -> Result<Vec<Json>, EvalError> {
        match self.eval(bindings)? {
            Json::Array(items) => Ok(items),
            other => Err(self.error(format!("gave {} where a list is needed", kind(&other)))),
        }
    }

    /// What `for_each` iterates: a list in its order, or a map's entries as
    /// `{"key": k, "value": v}` in key order (never hash order: task planning must give the same
    /// task indices on every worker and every retry).
    pub fn eval_items(&self, bindings: &Bindings) -> Result<Vec<Json>, EvalError> {
        match self.eval(bindings)? {
            Json::Array(items) => Ok(items),
            Json::Object(map) => {
                let mut entries: Vec<(String, Json)> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(entries.into_iter().map(|(k, v)| serde_json::json!({"key": k, "value": v})).collect())
            }
            other => Err(self.error(format!("gave {} where a list or a map is needed", kind(&other)))),
        }
    }

    fn error(&self, reason: String) -> EvalError {
        EvalError { path: self.path.clone(), source_text: self.source.clone(), reason }
    }
}

/// The CEL function that refers to a secret by name.
pub const SECRET_FUNCTION: &str = "secret";
/// How a reference to a secret is stored: `${secret:crm_token}`. The worker replaces it with the
/// value at the moment it sends a request.
pub const SECRET_REF_OPEN: &str = "${secret:";

/// Secret names: what a file name in a secrets directory and an environment variable suffix can
/// both hold safely.
pub fn valid_secret_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A random mark, fixed for the life of this process and never stored: event data cannot
/// forge a secret reference, because it cannot know the mark that `secret()` puts in its own.
fn process_mark() -> &'static str {
    static MARK: OnceLock<String> = OnceLock::new();
    MARK.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let half = || std::collections::hash_map::RandomState::new().build_hasher().finish();
        format!("{:016x}{:016x}", half(), half())
    })
}

/// A `${secret:` in a value that no `secret()` call of this process made (it came from event
/// data or a context source).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("contains the text `${{secret:` without a secret() call making it; refusing to send it")]
pub struct ForgedSecretRef;

/// Rewrites the references `secret()` made in `value` into their stored form
/// (`${secret:name}`) and refuses any other `${secret:` text. Returns the names referred to.
pub fn seal_secret_refs(value: &mut Json) -> Result<Vec<String>, ForgedSecretRef> {
    let mut names = Vec::new();
    seal(value, &mut names)?;
    Ok(names)
}

fn seal(value: &mut Json, names: &mut Vec<String>) -> Result<(), ForgedSecretRef> {
    match value {
        Json::String(s) => {
            if s.contains(SECRET_REF_OPEN) {
                let marked = format!("{SECRET_REF_OPEN}{}:", process_mark());
                let mut out = String::with_capacity(s.len());
                let mut rest = s.as_str();
                while let Some(i) = rest.find(SECRET_REF_OPEN) {
                    out.push_str(&rest[..i]);
                    let tail = rest[i..].strip_prefix(marked.as_str()).ok_or(ForgedSecretRef)?;
                    let end = tail.find('}').ok_or(ForgedSecretRef)?;
                    names.push(tail[..end].to_string());
                    out.push_str(SECRET_REF_OPEN);
                    out.push_str(&tail[..=end]);
                    rest = &tail[end + 1..];
                }
                out.push_str(rest);
                *s = out;
            }
            Ok(())
        }
        Json::Array(items) => items.iter_mut().try_for_each(|v| seal(v, names)),
        Json::Object(map) => {
            if map.keys().any(|k| k.contains(SECRET_REF_OPEN)) {
                return Err(ForgedSecretRef);
            }
            map.values_mut().try_for_each(|v| seal(v, names))
        }
        _ => Ok(()),
    }
}

/// JSON as CEL sees it. Integers that fit i64 are `int` (serde's own mapping makes non-negative
/// ones `uint`, and `uint % int` is a CEL type error), larger ones `double`, like JSON numbers in
/// CEL's protobuf JSON mapping.
fn to_cel(v: &Json) -> cel::Value {
    use cel::Value as V;
    match v {
        Json::Null => V::Null,
        Json::Bool(b) => V::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => V::Int(i),
            None => V::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => V::String(Arc::new(s.clone())),
        Json::Array(items) => V::List(Arc::new(items.iter().map(to_cel).collect())),
        Json::Object(map) => {
            let entries: std::collections::HashMap<String, cel::Value> = map.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            V::from(entries)
        }
    }
}

/// The longest expression a definition may hold.
pub const MAX_SOURCE_BYTES: usize = 4096;

const COMPREHENSIONS: [&str; 5] = ["all(", "exists(", "exists_one(", "map(", "filter("];

/// The column of a comprehension macro that sits inside another one's parentheses, if any.
/// Text inside string literals is skipped.
fn nested_comprehension(source: &str) -> Option<usize> {
    let bytes = source.as_bytes();
    // Paren depths at which an enclosing comprehension's arguments are open.
    let mut open: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = quote {
            if b == b'\\' {
                i += 2;
                continue;
            }
            if b == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match b {
            b'\'' | b'"' => quote = Some(b),
            b'(' => depth += 1,
            b')' => {
                if open.last() == Some(&depth) {
                    open.pop();
                }
                depth = depth.saturating_sub(1);
            }
            b'.' => {
                let rest = &source[i + 1..];
                if let Some(m) = COMPREHENSIONS.iter().find(|m| rest.starts_with(**m)) {
                    if !open.is_empty() {
                        return Some(i + 2);
                    }
                    depth += 1;
                    open.push(depth);
                    i += 1 + m.len();
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// `list.all(x, ...)`, `map(x, ...)` and friends bind their own variable; CEL's parser reports
/// it as a reference, so the name right after the macro's opening parenthesis is allowed.
fn is_comprehension_variable(source: &str, name: &str) -> bool {
    let bound_by_macro = ["all(", "exists(", "exists_one(", "map(", "filter("].iter().any(|m| {
        source.match_indices(m).any(|(i, _)| {
            let rest = source[i + m.len()..].trim_start();
            rest.strip_prefix(name).is_some_and(|r| r.trim_start().starts_with(','))
        })
    });
    bound_by_macro || name.starts_with('@') || name.starts_with("__")
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a bool",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "a map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bindings() -> Bindings {
        Bindings {
            event: json!({"id": "e1", "type": "order.created", "data": {"amount": 150, "items": [{"sku": "a"}, {"sku": "b"}], "customer": "c-9"}}),
            context: json!({"customer": {"tier": "gold"}}),
            item: json!({"sku": "a"}),
            run: json!({"id": "r1"}),
            events: Json::Null,
            tasks: Json::Null,
        }
    }

    #[test]
    fn evaluates_over_every_variable() {
        let b = bindings();
        assert!(Expr::compile("f", "event.data.amount > 100 && context.customer.tier == 'gold'").unwrap().eval_bool(&b).unwrap());
        assert_eq!(Expr::compile("k", "event.data.customer + '/' + item.sku").unwrap().eval_string(&b).unwrap(), "c-9/a");
        assert_eq!(Expr::compile("k", "event.data.amount").unwrap().eval_string(&b).unwrap(), "150");
        assert_eq!(Expr::compile("l", "event.data.items").unwrap().eval_list(&b).unwrap().len(), 2);
        assert_eq!(Expr::compile("m", "{'sku': item.sku, 'run': run.id}").unwrap().eval(&b).unwrap(), json!({"sku": "a", "run": "r1"}));
        assert!(Expr::compile("c", "event.data.items.all(i, size(i.sku) == 1)").unwrap().eval_bool(&b).unwrap());
        assert_eq!(Expr::compile("c", "event.data.items.map(x, x.sku)").unwrap().eval(&b).unwrap(), json!(["a", "b"]));
    }

    #[test]
    fn json_integers_are_cel_ints() {
        let b =
            Bindings { event: json!({"data": {"total": 28, "neg": -3, "big": 18446744073709551615u64, "f": 1.5}}), ..Bindings::default() };
        let t = |src: &str| Expr::compile("f", src).unwrap().eval(&b).unwrap();
        assert_eq!(t("event.data.total % 2 == 0"), json!(true));
        assert_eq!(t("event.data.total * 2 + event.data.neg"), json!(53));
        assert_eq!(t("event.data.total > 10 && event.data.total < 100"), json!(true));
        assert_eq!(t("event.data.total / 3"), json!(9));
        assert_eq!(t("event.data.big > 1.0"), json!(true), "too big for int: a double");
        assert_eq!(t("event.data.f * 2.0"), json!(3.0));
        assert_eq!(t("string(event.data.total)"), json!("28"));
        assert_eq!(t("event.data.total == 28"), json!(true));
    }

    #[test]
    fn compile_errors_have_a_position() {
        let e = Expr::compile("trigger.event.filter", "event.data.amount >").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.column > 1, "{e:?}");
        let e = Expr::compile("f", "evnt.id == 'x'").unwrap_err();
        assert!(e.message.contains("unknown variable `evnt`"), "{e:?}");
        assert_eq!(e.column, 1);
    }

    #[test]
    fn what_an_expression_may_cost_is_bounded_before_it_runs() {
        let nested = Expr::compile("f", "event.data.items.all(i, event.data.items.exists(j, j == i))").unwrap_err();
        assert!(nested.message.starts_with("a comprehension (all, exists, exists_one, map, filter) inside another"), "{nested:?}");
        assert_eq!(nested.column, 42, "the inner macro's name");
        // Side by side is fine, and so is the text in a string.
        assert!(Expr::compile("f", "event.data.items.all(i, i.qty > 0) && event.data.items.exists(i, i.sku == 'a')").is_ok());
        assert!(Expr::compile("f", "event.data.items.map(i, i.sku + '.map(x, x)')").is_ok());
        assert!(Expr::compile("f", "event.data.items.filter(i, size(i.tags) > 0).map(i, i.sku)").is_ok());
        let long = format!("'{}'", "x".repeat(MAX_SOURCE_BYTES));
        assert!(Expr::compile("f", &long).unwrap_err().message.contains("expressions are limited to 4096"));
    }

    #[test]
    fn secret_references_are_sealed_and_forged_ones_refused() {
        let b = Bindings { event: json!({"data": {"evil": "${secret:crm_token}"}}), ..Bindings::default() };
        let e = Expr::compile("h", "{'Authorization': 'Bearer ' + secret('crm_token')}").unwrap();
        assert!(e.uses_secret());
        let mut v = e.eval(&b).unwrap();
        assert!(!v.to_string().contains("Bearer ${secret:crm_token}"), "unsealed, a reference carries the process mark: {v}");
        assert_eq!(seal_secret_refs(&mut v).unwrap(), ["crm_token"]);
        assert_eq!(v, json!({"Authorization": "Bearer ${secret:crm_token}"}));
        let mut forged = Expr::compile("h", "{'X-Name': event.data.evil}").unwrap().eval(&b).unwrap();
        assert_eq!(seal_secret_refs(&mut forged), Err(ForgedSecretRef));
        assert!(!Expr::compile("h", "event.data.evil").unwrap().uses_secret());
        let bad = Expr::compile("h", "secret('../x')").unwrap().eval(&b).unwrap_err();
        assert!(bad.to_string().contains("is not a secret name"), "{bad}");
    }

    #[test]
    fn runtime_errors_name_the_field_and_expression() {
        let b = bindings();
        let e = Expr::compile("dedupe.key", "event.data.missing").unwrap().eval_string(&b).unwrap_err();
        assert_eq!(e.path, "dedupe.key");
        assert!(e.to_string().starts_with("dedupe.key: `event.data.missing` failed: "), "{e}");
        let e = Expr::compile("trigger.event.filter", "event.data.amount").unwrap().eval_bool(&b).unwrap_err();
        assert!(e.to_string().ends_with("gave a number where a bool is needed"), "{e}");
    }
}
