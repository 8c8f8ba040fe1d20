//! Flow control: the `flow_control` block of a definition and a task template's `budget`, as
//! written ([`FlowControlDoc`]), checked ([`FlowControl`]) and evaluated against one run
//! ([`FlowControl::admission`]). What the limits guarantee and where each acts is in
//! docs/flow-control.md; the store (`tf_store::flow`) enforces them.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::checker::Checker;
use crate::duration;
use crate::expr::{Bindings, Expr};

/// The most a limit may be: far above what one key needs, low enough that a typo (`limit:
/// 1000000`) is caught rather than silently meaning "no limit".
pub const MAX_LIMIT: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowControlDoc {
    /// At most `limit` runs of a key executing at once; the rest wait, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencyDoc>,
    /// At most `limit` run starts per `period` per key (`burst` more at once); the rest wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<ThrottleDoc>,
    /// At most `limit` runs per `period` of event time per key; the rest are skipped, recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitDoc>,
    /// CEL integer: among runs waiting for `concurrency`, higher goes first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// One active run per key: a new run is skipped, or cancels the active one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub singleton: Option<SingletonDoc>,
    /// A burst of runs of a key executes once, with its last event, after `period` without a
    /// new one (or `max_wait` after the burst began); the others end skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce: Option<DebounceDoc>,
    /// Up to `max_size` events of a key, or those of `max_wait`, become one run whose tasks see
    /// them as `events`; the runs of the other events end skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchDoc {
    pub max_size: u32,
    pub max_wait: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebounceDoc {
    pub period: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SingletonDoc {
    pub mode: SingletonMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// What a new run of a key does while another is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SingletonMode {
    /// The new run is skipped (`singleton: <active run> is active`).
    Skip,
    /// The active run (and any older one waiting) is cancelled; the new run executes once it
    /// ended.
    Cancel,
}

impl FlowControlDoc {
    pub fn is_empty(&self) -> bool {
        self == &FlowControlDoc::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyDoc {
    pub limit: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleDoc {
    pub limit: u32,
    pub period: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitDoc {
    pub limit: u32,
    pub period: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The checked block: every expression compiled, every number in range.
#[derive(Debug, Clone, Default)]
pub struct FlowControl {
    pub concurrency: Option<Concurrency>,
    pub throttle: Option<Throttle>,
    pub rate_limit: Option<RateLimit>,
    pub priority: Option<Expr>,
    pub singleton: Option<Singleton>,
    pub debounce: Option<Debounce>,
    pub batch: Option<Batch>,
}

#[derive(Debug, Clone)]
pub struct Batch {
    pub max_size: u32,
    pub max_wait: Duration,
    pub key: Option<Expr>,
}

#[derive(Debug, Clone)]
pub struct Debounce {
    pub period: Duration,
    pub max_wait: Option<Duration>,
    pub key: Option<Expr>,
}

#[derive(Debug, Clone)]
pub struct Singleton {
    pub mode: SingletonMode,
    pub key: Option<Expr>,
}

#[derive(Debug, Clone)]
pub struct Concurrency {
    pub limit: u32,
    pub key: Option<Expr>,
}

#[derive(Debug, Clone)]
pub struct Throttle {
    pub limit: u32,
    pub period: Duration,
    pub burst: u32,
    pub key: Option<Expr>,
}

#[derive(Debug, Clone)]
pub struct RateLimit {
    pub limit: u32,
    pub period: Duration,
    pub key: Option<Expr>,
}

/// What the limits say about one run, with its keys evaluated: the input of the store's
/// decisions. A definition without a block has none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Admission {
    pub rate_limit: Option<RateLimitAt>,
    pub concurrency: Option<SlotRequest>,
    pub throttle: Option<Spacing>,
    pub priority: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub singleton: Option<SingletonAt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce: Option<DebounceAt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchAt>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchAt {
    pub key: String,
    pub max_size: u32,
    pub max_wait_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DebounceAt {
    pub key: String,
    pub period_ms: u64,
    /// `None`: a burst may go on as long as events keep coming.
    pub max_wait_ms: Option<u64>,
    /// The run's event time: of a burst's runs, the one with the latest event executes (runs
    /// begin in no particular order).
    pub event_time_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SingletonAt {
    pub key: String,
    pub mode: SingletonMode,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateLimitAt {
    pub key: String,
    pub limit: u32,
    pub period_ms: u64,
    /// The start of the event-time window the run falls in, ms since the epoch.
    pub window_start_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotRequest {
    pub key: String,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spacing {
    pub key: String,
    pub limit: u32,
    pub period_ms: u64,
    pub burst: u32,
}

impl Spacing {
    /// The time one start uses up: the period shared evenly by the limit.
    pub fn interval_ms(&self) -> f64 {
        self.period_ms as f64 / f64::from(self.limit.max(1))
    }
}

/// The most events one batch holds: its run sees them all at once (`events`), and each task
/// evaluated per item sees the whole list.
pub const MAX_BATCH: u32 = 1000;

/// The key a control without `key` uses: one budget for the whole definition.
pub const WHOLE_DEFINITION: &str = "";

/// Why a control could not be evaluated for a run (a key that is not a string, a priority that
/// is not an integer): the run fails with it, as a task param that cannot be evaluated does.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("flow_control: {0}")]
pub struct AdmissionError(String);

/// The longest key kept as written; longer ones (and any with control characters, which
/// PostgreSQL text may refuse) are kept as their SHA-256, so a hostile event's key still
/// names one key and fits an index entry.
pub const MAX_KEY_BYTES: usize = 200;

fn key_of(expr: &Option<Expr>, bindings: &Bindings) -> Result<String, AdmissionError> {
    let key = match expr {
        None => return Ok(WHOLE_DEFINITION.to_string()),
        Some(e) => e.eval_string(bindings).map_err(|e| AdmissionError(e.to_string()))?,
    };
    Ok(stored_key(key))
}

/// A key as it is kept: as written, or its SHA-256 when it is longer than [`MAX_KEY_BYTES`] or
/// holds control characters. Flow-control keys and event-match keys alike.
pub fn stored_key(key: String) -> String {
    if key.len() <= MAX_KEY_BYTES && !key.chars().any(char::is_control) {
        return key;
    }
    format!("sha256:{}", crate::sha256_hex(key.as_bytes()))
}

impl FlowControl {
    pub fn is_empty(&self) -> bool {
        self.concurrency.is_none()
            && self.throttle.is_none()
            && self.rate_limit.is_none()
            && self.singleton.is_none()
            && self.debounce.is_none()
            && self.batch.is_none()
    }

    /// Evaluates the keys and priority for one run. `event_time_ms` places it in a rate-limit
    /// window: event time, so a replay of old offsets is judged as it was the first time.
    pub fn admission(&self, bindings: &Bindings, event_time_ms: i64) -> Result<Admission, AdmissionError> {
        let rate_limit = match &self.rate_limit {
            None => None,
            Some(r) => {
                let period_ms = r.period.as_millis().max(1) as i64;
                Some(RateLimitAt {
                    key: key_of(&r.key, bindings)?,
                    limit: r.limit,
                    period_ms: period_ms as u64,
                    window_start_ms: event_time_ms.div_euclid(period_ms) * period_ms,
                })
            }
        };
        let concurrency = match &self.concurrency {
            None => None,
            Some(c) => Some(SlotRequest { key: key_of(&c.key, bindings)?, limit: c.limit }),
        };
        let throttle = match &self.throttle {
            None => None,
            Some(t) => Some(Spacing {
                key: key_of(&t.key, bindings)?,
                limit: t.limit,
                period_ms: t.period.as_millis().max(1) as u64,
                burst: t.burst,
            }),
        };
        let priority = match &self.priority {
            None => 0,
            Some(p) => match p.eval(bindings).map_err(|e| AdmissionError(e.to_string()))? {
                Json::Number(n) if n.is_i64() => n.as_i64().unwrap_or_default(),
                other => return Err(AdmissionError(format!("{}: `{}` gave {other} where an integer is needed", p.path(), p.source()))),
            },
        };
        let singleton = match &self.singleton {
            None => None,
            Some(s) => Some(SingletonAt { key: key_of(&s.key, bindings)?, mode: s.mode }),
        };
        let debounce = match &self.debounce {
            None => None,
            Some(d) => Some(DebounceAt {
                key: key_of(&d.key, bindings)?,
                period_ms: d.period.as_millis() as u64,
                max_wait_ms: d.max_wait.map(|w| w.as_millis() as u64),
                event_time_ms,
            }),
        };
        let batch = match &self.batch {
            None => None,
            Some(b) => Some(BatchAt { key: key_of(&b.key, bindings)?, max_size: b.max_size, max_wait_ms: b.max_wait.as_millis() as u64 }),
        };
        Ok(Admission { rate_limit, concurrency, throttle, priority, singleton, debounce, batch })
    }
}

/// A budget's name: what `TF_BUDGETS` declares and a task template's `budget` names.
pub fn valid_budget_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// Checks a `flow_control` block, reporting each problem with its field path.
pub(crate) fn check(c: &mut Checker, doc: &FlowControlDoc) -> FlowControl {
    let limit = |c: &mut Checker, path: &str, n: u32| {
        if n == 0 || n > MAX_LIMIT {
            c.fail(format!("flow_control.{path}.limit"), format!("must be 1 to {MAX_LIMIT}"));
        }
        n
    };
    let period = |c: &mut Checker, path: &str, text: &str, min: Duration| {
        let field = format!("flow_control.{path}");
        match duration::parse(text) {
            Ok(d) if d < min => {
                c.fail(field, format!("must be at least {} ms", min.as_millis()));
                d
            }
            Ok(d) if d > Duration::from_secs(30 * 86_400) => {
                c.fail(field, "must be at most 30d");
                d
            }
            Ok(d) => d,
            Err(e) => {
                c.fail(field, e);
                Duration::from_secs(1)
            }
        }
    };
    let concurrency = doc.concurrency.as_ref().map(|d| Concurrency {
        limit: limit(c, "concurrency", d.limit),
        key: d.key.as_deref().and_then(|k| c.expr("flow_control.concurrency.key".into(), k)),
    });
    let throttle = doc.throttle.as_ref().map(|t| {
        let burst = t.burst.unwrap_or(0);
        if burst > MAX_LIMIT {
            c.fail("flow_control.throttle.burst", format!("must be at most {MAX_LIMIT}"));
        }
        Throttle {
            limit: limit(c, "throttle", t.limit),
            period: period(c, "throttle.period", &t.period, Duration::from_millis(1)),
            burst,
            key: t.key.as_deref().and_then(|k| c.expr("flow_control.throttle.key".into(), k)),
        }
    });
    let rate_limit = doc.rate_limit.as_ref().map(|r| RateLimit {
        limit: limit(c, "rate_limit", r.limit),
        // Windows are counted in event time from the epoch; below a second they would only
        // measure the producers' clock resolution.
        period: period(c, "rate_limit.period", &r.period, Duration::from_secs(1)),
        key: r.key.as_deref().and_then(|k| c.expr("flow_control.rate_limit.key".into(), k)),
    });
    if doc.priority.is_some() && doc.concurrency.is_none() {
        c.fail("flow_control.priority", "orders the runs waiting for `concurrency`; add a concurrency limit or remove it");
    }
    let priority = doc.priority.as_deref().and_then(|p| c.expr("flow_control.priority".into(), p));
    let singleton = doc
        .singleton
        .as_ref()
        .map(|s| Singleton { mode: s.mode, key: s.key.as_deref().and_then(|k| c.expr("flow_control.singleton.key".into(), k)) });
    let debounce = doc.debounce.as_ref().map(|d| {
        let period = period(c, "debounce.period", &d.period, Duration::from_millis(1));
        let max_wait = d.max_wait.as_deref().map(|w| {
            let field = "flow_control.debounce.max_wait";
            match duration::parse(w) {
                Ok(m) if m < period => {
                    c.fail(field, "must be at least the period (a burst waits one quiet period at least)");
                    m
                }
                Ok(m) if m > Duration::from_secs(30 * 86_400) => {
                    c.fail(field, "must be at most 30d");
                    m
                }
                Ok(m) => m,
                Err(e) => {
                    c.fail(field, e);
                    period
                }
            }
        });
        Debounce { period, max_wait, key: d.key.as_deref().and_then(|k| c.expr("flow_control.debounce.key".into(), k)) }
    });
    let batch = doc.batch.as_ref().map(|b| {
        if b.max_size == 0 || b.max_size > MAX_BATCH {
            c.fail("flow_control.batch.max_size", format!("must be 1 to {MAX_BATCH}"));
        }
        Batch {
            max_size: b.max_size,
            max_wait: period(c, "batch.max_wait", &b.max_wait, Duration::from_millis(1)),
            key: b.key.as_deref().and_then(|k| c.expr("flow_control.batch.key".into(), k)),
        }
    });
    if doc.batch.is_some() && doc.debounce.is_some() {
        c.fail("flow_control.batch", "a batch and a debounce both decide which events make a run; use one");
    }
    FlowControl { concurrency, throttle, rate_limit, priority, singleton, debounce, batch }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Definition;

    fn definition(block: &str) -> Result<Definition, crate::InvalidDefinition> {
        let yaml = format!(
            "id: d\nname: D\ntrigger: {{event: {{topics: [events.demo]}}}}\n{block}\ntasks: [{{name: t, type: kafka, params: {{topic: \"'x'\", value: '1'}}}}]\n"
        );
        Definition::from_yaml("t", &yaml).map(|mut v| v.remove(0))
    }

    fn errors(block: &str) -> Vec<String> {
        definition(block).unwrap_err().errors.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn a_block_is_checked_field_by_field() {
        let e = errors(
            "flow_control: {concurrency: {limit: 0, key: 'event.'}, throttle: {limit: 5, period: 10q, burst: 20000}, rate_limit: {limit: 20000, period: 10ms}}",
        );
        for expected in [
            "flow_control.concurrency.limit: must be 1 to 10000",
            "flow_control.concurrency.key: line",
            "flow_control.throttle.period: \"10q\": unknown unit",
            "flow_control.throttle.burst: must be at most 10000",
            "flow_control.rate_limit.limit: must be 1 to 10000",
            "flow_control.rate_limit.period: must be at least 1000 ms",
        ] {
            assert!(e.iter().any(|m| m.starts_with(expected)), "{expected} missing from {e:#?}");
        }
        assert!(errors("flow_control: {priority: '1'}")[0].starts_with("flow_control.priority: orders the runs waiting"));
        assert!(errors("flow_control: {concurrency: {limit: 1}, burst: 2}")[0].contains("unknown field `burst`"));
        let e = errors("flow_control: {batch: {max_size: 0, max_wait: 1s}, debounce: {period: 1s}}");
        assert!(e.iter().any(|m| m.starts_with("flow_control.batch.max_size: must be 1 to 1000")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("flow_control.batch: a batch and a debounce")), "{e:?}");
        let e = errors("flow_control: {concurrency: {limit: 1, key: 'string(size(events))'}}");
        assert!(e[0].starts_with("flow_control.concurrency.key: `events` is seen by the tasks of a batched definition only"), "{e:?}");
        let e = errors("dedupe: {key: 'string(size(events))'}");
        assert!(e[0].starts_with("dedupe.key: `events` is seen by"), "{e:?}");
        let yaml = "id: d\nname: D\ntrigger: {event: {topics: [t]}}\ntasks: [{name: t, type: kafka, params: {topic: \"'x'\", value: 'size(events)'}}]\n";
        let e = Definition::from_yaml("t", yaml).unwrap_err().errors;
        assert!(e[0].to_string().starts_with("tasks[0].params.value: `events` is set only in a batched definition"), "{e:?}");
        let batched = yaml.replace("tasks:", "flow_control: {batch: {max_size: 10, max_wait: 1s}}\ntasks:");
        Definition::from_yaml("t", &batched).unwrap();
        let e = errors("flow_control: {debounce: {period: 2s, max_wait: 1s}}");
        assert!(e[0].starts_with("flow_control.debounce.max_wait: must be at least the period"), "{e:?}");
        assert!(
            errors("flow_control: {singleton: {mode: replace}}")[0].contains("unknown variant `replace`"),
            "{:?}",
            errors("flow_control: {singleton: {mode: replace}}")
        );
    }

    #[test]
    fn keys_priority_and_windows_are_evaluated_per_run() {
        let d = definition(
            "flow_control: {concurrency: {limit: 2, key: event.data.customer}, throttle: {limit: 10, period: 1s}, rate_limit: {limit: 5, period: 1m, key: event.data.customer}, priority: \"event.data.tier == 'gold' ? 10 : 0\"}",
        )
        .unwrap();
        let bindings = Bindings { event: serde_json::json!({"data": {"customer": "c-1", "tier": "gold"}}), ..Default::default() };
        let a = d.flow_control.admission(&bindings, 90_500).unwrap();
        assert_eq!(a.concurrency, Some(SlotRequest { key: "c-1".into(), limit: 2 }));
        assert_eq!(a.throttle, Some(Spacing { key: WHOLE_DEFINITION.into(), limit: 10, period_ms: 1000, burst: 0 }));
        assert_eq!(a.rate_limit.as_ref().map(|r| (r.window_start_ms, r.key.as_str())), Some((60_000, "c-1")));
        assert_eq!(a.priority, 10);
        // Before the epoch, windows still start on a period boundary.
        assert_eq!(d.flow_control.admission(&bindings, -1).unwrap().rate_limit.unwrap().window_start_ms, -60_000);
        let missing = Bindings { event: serde_json::json!({"data": {}}), ..Default::default() };
        let err = d.flow_control.admission(&missing, 0).unwrap_err().to_string();
        assert!(err.starts_with("flow_control: flow_control.rate_limit.key"), "{err}");
        let bad_priority = Bindings { event: serde_json::json!({"data": {"customer": "c", "tier": 1}}), ..Default::default() };
        assert_eq!(d.flow_control.admission(&bad_priority, 0).unwrap().priority, 0);
    }

    #[test]
    fn a_definition_without_a_block_has_no_limits_and_an_unchanged_spec() {
        let d = definition("").unwrap();
        assert!(d.flow_control.is_empty());
        assert!(d.spec_json().get("flow_control").is_none(), "the stored spec of older definitions is unchanged");
    }

    #[test]
    fn long_or_control_character_keys_are_kept_as_their_hash() {
        let d = definition("flow_control: {concurrency: {limit: 1, key: event.data.k}}").unwrap();
        let key = |k: &str| {
            let b = Bindings { event: serde_json::json!({"data": {"k": k}}), ..Default::default() };
            d.flow_control.admission(&b, 0).unwrap().concurrency.unwrap().key
        };
        assert_eq!(key("c-1"), "c-1");
        let long = "x".repeat(5_000);
        assert!(key(&long).starts_with("sha256:") && key(&long).len() == 71, "{}", key(&long));
        assert_eq!(key(&long), key(&long), "one key for one value");
        assert_ne!(key(&long), key(&"y".repeat(5_000)));
        assert!(key("a\u{0}b").starts_with("sha256:"));
    }

    #[test]
    fn spacing_shares_the_period_evenly() {
        assert_eq!(Spacing { key: String::new(), limit: 10, period_ms: 1000, burst: 0 }.interval_ms(), 100.0);
    }

    #[test]
    fn budget_names_are_plain() {
        assert!(valid_budget_name("crm-api"));
        assert!(!valid_budget_name("CRM api") && !valid_budget_name("") && !valid_budget_name(&"x".repeat(65)));
    }
}
