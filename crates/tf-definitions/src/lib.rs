//! Activity definitions: versioned rules of trigger, dedupe policy, context sources and task
//! templates. A YAML [`Document`] is parsed into a [`Definition`] whose every CEL expression is
//! already compiled, so holding a `Definition` means it is valid.

mod checker;
pub mod cron;
pub mod dedupe;
pub mod definition;
pub mod document;
pub mod duration;
pub mod expr;
pub mod flow;
pub mod plan;
pub mod run;
pub mod steps;
pub mod task_params;

pub use dedupe::{DedupeKey, DedupeKeyError};
pub use definition::RetryPolicy;
pub use definition::{ContextSource, Dedupe, Definition, EventTrigger, FieldError, InvalidDefinition, TaskTemplate, Trigger, TypePattern};
pub use document::{Document, Execution, Misfire, OnTimeout, Overlap};
pub use expr::{Bindings, EvalError, Expr, Scope};
pub use flow::{Admission, FlowControl};
pub use plan::PlannedTask;
pub use run::{RunId, RunSource, RunStatus, TaskId, TaskStatus, TaskType, TriggerKind};

/// The SHA-256 of `bytes` in lowercase hex: a spec's hash, and what stands for a key too long
/// or too odd to keep as written (dedupe keys in run ids, flow-control keys).
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
