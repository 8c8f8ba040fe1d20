//! Delivering events to runs that wait for them (docs/steps.md): `wait_for_event` steps get
//! the event by signal, `cancel_on` cancels the run. Which runs wait is in PostgreSQL
//! (`tf_store::waits`); this module computes, per event of a type some run may wait for, the key
//! of every incoming expression in use, and tells each run the store delivered the event to.
//!
//! The record's offset is committed only after every run it was delivered to was told, so a
//! router that dies in between tells them when the record is routed again; a run that already
//! took its event is not told twice (its wait is no longer `delivered`).

use std::collections::HashMap;

use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use serde_json::Value as Json;
use tf_definitions::{Definition, Expr, RunStatus, Scope};
use tf_store::waits::{self, IncomingEvent, Matcher, Source};
use tf_temporal::run_control::RunControlError;

use crate::Shared;
use crate::retry::{Paused, retry};
use crate::route::Position;

/// The incoming expressions to compute, by event type: from the loaded definitions' wait steps
/// and `cancel_on`, and from the waits that began (a run pinned to an older version).
#[derive(Debug, Default)]
pub struct Listeners {
    by_type: HashMap<String, Vec<(String, Expr)>>,
}

impl Listeners {
    pub fn new(definitions: &[Definition], stored: &[Matcher]) -> Listeners {
        let mut by_type: HashMap<String, Vec<(String, Expr)>> = HashMap::new();
        let mut add = |event_type: &str, matcher: String, incoming: Expr| {
            let list = by_type.entry(event_type.to_string()).or_default();
            if !list.iter().any(|(m, _)| *m == matcher) {
                list.push((matcher, incoming));
            }
        };
        for d in definitions {
            let steps = d.tasks.iter().filter_map(|t| t.wait.as_ref());
            for m in steps.chain(&d.cancel_on) {
                add(&m.event_type, m.matcher(), m.incoming.clone());
            }
        }
        for s in stored {
            match Expr::compile("match.incoming", &s.incoming) {
                Ok(e) => add(&s.event_type, s.matcher.clone(), e),
                Err(e) => tracing::warn!(event_type = %s.event_type, error = %e.message, "a stored wait matcher does not compile; ignored"),
            }
        }
        Listeners { by_type }
    }

    pub fn count(&self) -> usize {
        self.by_type.values().map(Vec::len).sum()
    }

    /// `None` when no run waits for events of this type; else each matcher's key for the event
    /// (an expression the event cannot satisfy gives none).
    pub fn keys(&self, event_type: &str, event: &Json) -> Option<Vec<(String, String)>> {
        let list = self.by_type.get(event_type)?;
        let scope = Scope::for_event(event);
        Some(list.iter().filter_map(|(matcher, e)| Some((matcher.clone(), tf_definitions::steps::incoming_key(e, &scope)?))).collect())
    }
}

/// Retried until PostgreSQL answers; `Err` when it refused the event's value for good (a NUL
/// character in a string, which `jsonb` cannot hold).
async fn stored<T, F, Fut>(shared: &Shared, what: &str, op: F) -> Result<T, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, tf_store::StoreError>>,
{
    retry(shared, what, || async {
        match op().await {
            Ok(v) => Ok(Ok(v)),
            Err(e) if e.is_bad_value() => Ok(Err(format!("{what}: PostgreSQL refused the event: {e}"))),
            Err(e) => Err(Paused::from(e.to_string())),
        }
    })
    .await
}

/// Delivers the event to the runs waiting for it. Retries PostgreSQL and Temporal until they
/// answer, as starting runs does: the partition waits, nothing is skipped. `Err` (the record
/// is dead-lettered) when the store cannot hold the event.
pub async fn deliver(shared: &Shared, msg: &OwnedMessage, at: &Position<'_>, event: &Json) -> Result<(), String> {
    let Some(event_type) = event.get("type").and_then(Json::as_str) else { return Ok(()) };
    let listeners = shared.listeners.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let Some(keys) = listeners.keys(event_type, event) else { return Ok(()) };
    // An event no incoming expression gives a key for matches no wait, now or later: it is
    // neither remembered nor delivered (a flood of such events costs no write).
    if keys.is_empty() {
        return Ok(());
    }
    let source = Source { topic: at.topic.to_string(), partition: at.partition, offset: at.offset };
    let record_ms = msg.timestamp().to_millis().unwrap_or_else(|| tf_envelope::Timestamp::now().0);
    let incoming = IncomingEvent { event_type, event, source: &source, record_ms };
    // Remembered first, committed: a wait that begins from now on finds it (tf_store::waits).
    stored(shared, "remembering a waitable event", || waits::remember(&shared.pool, &incoming)).await?;
    let delivered = stored(shared, "delivering to waiting runs", || waits::deliver(&shared.pool, &incoming, &keys)).await?;
    for d in delivered {
        if d.cancels() {
            let reason = waits::cancel_reason(event, &source);
            retry(shared, "cancel on an event", || async {
                match tf_temporal::run_control::cancel_run(&shared.temporal, &d.run_id, RunStatus::Running, &reason).await {
                    Ok(()) | Err(RunControlError::Ended { .. }) => Ok(()),
                    Err(e) => Err(Paused::from(e.to_string())),
                }
            })
            .await;
            shared.metrics.delivered_cancels.increment(1);
            tracing::info!(run = %d.run_id, wait = %d.wait_id, offset = at.offset, "run cancelled by an event");
        } else {
            // The signal names the wait; the run takes the event from the store.
            let payload = serde_json::json!({"wait_id": d.wait_id});
            retry(shared, "deliver an event", || async {
                tf_temporal::deliver_event(&shared.temporal, &d.run_id, payload.clone()).await.map_err(|e| Paused::from(e.to_string()))
            })
            .await;
            shared.metrics.delivered_to_steps.increment(1);
            tracing::info!(run = %d.run_id, wait = %d.wait_id, offset = at.offset, "event delivered to a waiting run");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_come_from_definitions_and_stored_matchers_once_each() {
        let yaml = r#"
id: w
name: W
trigger: {event: {topics: [t]}}
cancel_on: [{type: order.cancelled, match: {incoming: event.data.order_id, run: event.data.order_id}}]
tasks:
  - {name: pay, type: wait_for_event, timeout: 1h, event: {type: paid, match: {incoming: event.data.order_id, run: event.data.order_id}}}
"#;
        let d = Definition::from_yaml("t", yaml).unwrap();
        let same = Matcher {
            event_type: "paid".into(),
            matcher: d[0].tasks[0].wait.as_ref().unwrap().matcher(),
            incoming: "event.data.order_id".into(),
        };
        let older = Matcher { event_type: "paid".into(), matcher: "m2".into(), incoming: "event.data.ref".into() };
        let l = Listeners::new(&d, &[same, older]);
        assert_eq!(l.count(), 3);
        let event = json!({"type": "paid", "data": {"order_id": 42, "ref": "r-1"}});
        let keys = l.keys("paid", &event).unwrap();
        assert_eq!(keys.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(), ["42", "r-1"]);
        assert_eq!(l.keys("paid", &json!({"type": "paid", "data": {}})), Some(vec![]), "no key, no match; still listened");
        assert_eq!(l.keys("other", &event), None);
    }
}
