//! Checking a document: every problem collected with its field path ([`FieldError`]), so a
//! definition's author sees all of them at once. Shared by the definition and its parts
//! (`flow.rs`).

use std::time::Duration;

use crate::duration;
use crate::expr::Expr;

/// One problem in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

pub(crate) struct Checker {
    pub(crate) errors: Vec<FieldError>,
    /// The definition batches events (`flow_control.batch`): its tasks may read `events`.
    pub(crate) batched: bool,
}

impl Checker {
    pub(crate) fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError { path: path.into(), message: message.into() });
    }

    /// Compiles an expression that may not call `secret()`: its value is stored or published.
    pub(crate) fn expr(&mut self, path: String, source: &str) -> Option<Expr> {
        let e = self.expr_with_secrets(path.clone(), source)?;
        if e.uses_secret() {
            self.fail(
                path,
                "secret() may only be used in `headers` of http sources and tasks (other values are stored in run history and results)",
            );
            return None;
        }
        Some(e)
    }

    pub(crate) fn expr_with_secrets(&mut self, path: String, source: &str) -> Option<Expr> {
        match Expr::compile(path.clone(), source) {
            Ok(e) if e.uses_variable("events") && !(self.batched && path.starts_with("tasks[")) => {
                let why = if path.starts_with("tasks[") {
                    "`events` is set only in a batched definition (flow_control.batch)"
                } else {
                    "`events` is seen by the tasks of a batched definition only"
                };
                self.fail(path, why);
                None
            }
            Ok(e) if e.uses_variable("tasks") && !path.starts_with("tasks[") => {
                self.fail(path, "`tasks` (the outputs of the templates a task runs after) is seen by task templates only");
                None
            }
            Ok(e) => Some(e),
            Err(e) => {
                self.fail(path, format!("line {} column {}: {}", e.line, e.column, e.message));
                None
            }
        }
    }

    pub(crate) fn duration(&mut self, path: &str, text: Option<&str>, default: Duration) -> Duration {
        match text.map(duration::parse) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.fail(path, e);
                default
            }
        }
    }
}
