//! Routing one record to the end: decode, match, resolve the claim generation, start the run
//! (or dead-letter the record). Dependency failures are retried here with backoff and jitter,
//! for as long as it takes; the record's partition waits, nothing is skipped.

use std::time::Duration;

use rdkafka::message::{Headers, Message, OwnedMessage};
use tf_envelope::Decoded;
use tf_kafka::dlq::Stage;
use tf_telemetry::trace::{continue_trace, traceparent};
use tf_temporal::{FailureClass, StartOutcome, start_run};
use tracing::Instrument;

use crate::Shared;
use crate::claims::ClaimFailure;
use crate::dlq::{DeadLetter, dead_letter};
use crate::retry::{Paused, retry};
use crate::route::{Position, RouteError, route};

/// Routes one record to the end: starts acknowledged or a DLQ write acknowledged. Dependency
/// failures are retried here, with backoff, for as long as it takes.
///
/// Traces: a `decode` span and a `route` span (with `match` and one `start` per run inside)
/// continue the producer's `traceparent`, and each run carries its `start` span's context on to
/// the worker. A `traceparent` only in the envelope is known after decoding, so then only the
/// `route` span joins the producer's trace.
pub async fn process(shared: &Shared, msg: &OwnedMessage) {
    let at = Position { topic: msg.topic(), partition: msg.partition(), offset: msg.offset() };
    let header_tp = msg
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "traceparent").and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned()));
    let decode_span = if header_tp.is_some() {
        let span = tracing::info_span!("decode", topic = at.topic, partition = at.partition, offset = at.offset);
        continue_trace(&span, header_tp.as_deref());
        span
    } else {
        // Without the producer's context this would be a trace of its own, one per record.
        tracing::Span::none()
    };
    // Reserve what the decode may build at most, then keep only what it built.
    let limit = tf_envelope::DecodeLimits::default().max_values;
    let mut budget = shared.value_budget.clone().acquire_many_owned(limit as u32).await.expect("the value budget is never closed");
    let Some((event, event_time_ms)) = decode(shared, msg, &at).instrument(decode_span).await else { return };
    drop(budget.split(limit - tf_envelope::json::count_values(&event).min(limit)));
    let traceparent_in = header_tp.or_else(|| event["traceparent"].as_str().map(String::from));
    let route_span = tracing::info_span!("route", topic = at.topic, partition = at.partition, offset = at.offset);
    continue_trace(&route_span, traceparent_in.as_deref());
    dispatch(shared, msg, &at, event, event_time_ms, traceparent_in).instrument(route_span).await;
}

/// Decodes the record into an event and its event time, or dead-letters it (`None`).
async fn decode(shared: &Shared, msg: &OwnedMessage, at: &Position<'_>) -> Option<(serde_json::Value, i64)> {
    let payload = msg.payload().unwrap_or_default();
    if payload.len() > shared.cli.max_event_bytes {
        let message = format!("record is {} bytes, over the {}-byte limit", payload.len(), shared.cli.max_event_bytes);
        dead_letter(shared, msg, DeadLetter { stage: Stage::Size, class: Stage::Size.class(), message }).await;
        return None;
    }
    let subject = shared.cli.subject_policy.subject_for(msg.topic());
    let decoded = retry(shared, "decode", || async {
        match shared.codec.decode_checked(payload, subject.as_deref()).await {
            Err(e) if !e.is_bad_input() => Err(Paused { misconfigured: e.is_misconfiguration(), message: e.to_string() }),
            other => Ok(other),
        }
    })
    .await;
    // Event time places the event in its dedupe window: the envelope's `time`, or the Kafka
    // timestamp for plain records (and, failing that, now).
    let kafka_time = msg.timestamp().to_millis().filter(|t| tf_definitions::dedupe::valid_event_time(*t));
    let now_ms = || tf_envelope::Timestamp::now().0;
    if let Some(t) = kafka_time {
        shared.metrics.event_age.record((now_ms() - t) as f64 / 1000.0);
    }
    let decoded = match decoded {
        Ok(decoded) => decoded,
        Err(e) => {
            dead_letter(shared, msg, DeadLetter { stage: Stage::Decode, class: e.class(), message: e.to_string() }).await;
            return None;
        }
    };
    let event_time_ms = match &decoded {
        Decoded::Envelope { event, .. } => {
            let t = event.time.0;
            if !tf_definitions::dedupe::valid_event_time(t) {
                let message = format!("event time {t} ms is outside 1970-01-01..9999-12-31");
                dead_letter(shared, msg, DeadLetter { stage: Stage::EventTime, class: Stage::EventTime.class(), message }).await;
                return None;
            }
            t
        }
        Decoded::Record { .. } => kafka_time.unwrap_or_else(now_ms),
    };
    if !tf_definitions::dedupe::within_replay_horizon(event_time_ms, now_ms()) {
        let horizon_days = tf_definitions::dedupe::REPLAY_HORIZON.as_secs() / 86_400;
        let message = format!(
            "event time {event_time_ms} ms is more than {horizon_days} days ago, past the replay horizon: its dedupe window may have expired, so a run could repeat one that already happened"
        );
        dead_letter(shared, msg, DeadLetter { stage: Stage::EventTime, class: "BeyondReplayHorizon", message }).await;
        return None;
    }
    // A plain record's identity is its coordinates; a redriven copy takes the original's, so the
    // definitions that already ran for it deduplicate it.
    let (id_partition, id_offset) = match &decoded {
        Decoded::Record { .. } => redriven_from(shared, msg, at).await.unwrap_or((at.partition, at.offset)),
        Decoded::Envelope { .. } => (at.partition, at.offset),
    };
    match decoded.into_event_json(at.topic, id_partition, id_offset, msg.timestamp().to_millis()) {
        Ok(event) => Some((event, event_time_ms)),
        Err(e) => {
            let message = format!("envelope does not convert to JSON: {e}");
            dead_letter(shared, msg, DeadLetter { stage: Stage::Decode, class: Stage::Decode.class(), message }).await;
            None
        }
    }
}

/// The original coordinates of a record tf-api redrove from this router's DLQ. The marker header
/// alone proves nothing (a producer can write it): only a redrive recorded in PostgreSQL that put
/// a record here counts.
async fn redriven_from(shared: &Shared, msg: &OwnedMessage, at: &Position<'_>) -> Option<(i32, i64)> {
    let marker = msg.headers().and_then(|h| tf_kafka::dlq::last(h.iter().map(|h| (h.key, h.value)), tf_kafka::dlq::REDRIVE))?;
    let (dlq_topic, partition, offset) = tf_kafka::dlq::parse_redrive(&marker)?;
    if dlq_topic != shared.cli.kafka.dlq_topic {
        return None;
    }
    retry(shared, "redrive lookup", || async {
        tf_store::redrives::origin(&shared.pool, (dlq_topic, partition, offset), at.topic, (at.partition, at.offset))
            .await
            .map_err(|e| Paused::from(e.to_string()))
    })
    .await
}

/// Matches the event against the definitions and starts each run (or dead-letters the record).
async fn dispatch(
    shared: &Shared,
    msg: &OwnedMessage,
    at: &Position<'_>,
    event: serde_json::Value,
    event_time_ms: i64,
    traceparent_in: Option<String>,
) {
    let routes = shared.definitions.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let event = std::sync::Arc::new(event);
    let (runs, mut errors) = tracing::info_span!("match").in_scope(|| {
        let (matches, errors) = route(&routes, at.topic, &event);
        (matches.iter().map(|m| m.run_input(at, &event, event_time_ms)).collect::<Vec<_>>(), errors)
    });
    if !runs.is_empty() {
        shared.metrics.records_matched.increment(1);
    }

    for mut run in runs {
        let span = tracing::info_span!("start", definition = %run.definition_id);
        run.traceparent = traceparent(&span, traceparent_in.as_deref());
        start(shared, &mut errors, run, event_time_ms, at).instrument(span).await;
    }
    if let Err(message) = crate::waits::deliver(shared, msg, at, &event).await {
        errors.push(RouteError { definition_id: "(waits)".into(), stage: Stage::Deliver, message });
    }
    if !errors.is_empty() {
        let stage = errors[0].stage;
        let message = errors
            .iter()
            .map(|RouteError { definition_id, stage, message }| format!("{definition_id} ({stage}): {message}"))
            .collect::<Vec<_>>()
            .join("; ");
        dead_letter(shared, msg, DeadLetter { stage, class: stage.class(), message }).await;
    }
}

/// Resolves the run's claim generation and starts it; a refusal joins `errors`.
async fn start(shared: &Shared, errors: &mut Vec<RouteError>, mut run: tf_temporal::RunInput, event_time_ms: i64, at: &Position<'_>) {
    let (def, key) = (run.definition_id.clone(), run.dedupe_key.clone());
    let window = Duration::from_secs(run.dedupe_window_secs.max(1));
    // Which window (generation) the event belongs to, opening the next one if none covers
    // its time. A generation whose run exists needs no Temporal round trip.
    let resolved = retry(shared, "claim", || async {
        match shared.claims.resolve(&def, &key, event_time_ms, window).await {
            Err(ClaimFailure::Transient(e)) => Err(e.into()),
            other => Ok(other),
        }
    })
    .await;
    let generation = match resolved {
        Ok(g) => g,
        Err(failure) => {
            let message = match failure {
                ClaimFailure::Permanent(m) | ClaimFailure::Transient(m) => m,
            };
            errors.push(RouteError { definition_id: def.clone(), stage: Stage::Claim, message });
            return;
        }
    };
    if generation.created {
        shared.metrics.generations_opened.increment(1);
    }
    if generation.has_live_run() {
        shared.metrics.runs_deduplicated_fast.increment(1);
        tracing::debug!(definition = %def, key = %key, generation = generation.generation, "deduplicated by claim");
        return;
    }
    // No run has begun, but this router saw the start acknowledged: the run exists in Temporal.
    // A recorded status, `failed` above all, always wins over this memory.
    if generation.run_status.is_none() && shared.recent_starts.contains(&def, &key, generation.generation) {
        shared.metrics.runs_deduplicated_recent.increment(1);
        tracing::debug!(definition = %def, key = %key, generation = generation.generation, "deduplicated by a recent start");
        return;
    }
    run.generation = generation.generation;
    let asked = std::time::Instant::now();
    let outcome = retry(shared, "start", || async {
        match start_run(&shared.temporal, &shared.cli.settings.task_queue, run.clone()).await {
            Ok(outcome) => Ok(Ok(outcome)),
            Err(e) => match e.class() {
                FailureClass::Permanent => Ok(Err(e.to_string())),
                FailureClass::Transient => Err(e.to_string().into()),
                FailureClass::Misconfigured => Err(Paused {
                    misconfigured: true,
                    message: format!("{e} (check TF_TEMPORAL_URL, TF_TEMPORAL_NAMESPACE and the Temporal credentials)"),
                }),
            },
        }
    })
    .await;
    if outcome.is_ok() {
        // Started, or refused because the run exists: either way the run is in Temporal.
        let remembered = shared.recent_starts.acknowledged(&def, &key, generation.generation);
        shared.metrics.recent_starts.set(remembered as f64);
    }
    match outcome {
        Ok(StartOutcome::Started { .. }) => {
            shared.metrics.runs_started.increment(1);
            shared.metrics.start_latency.record(asked.elapsed().as_secs_f64());
            tracing::debug!(definition = %def, key = %key, generation = generation.generation, offset = at.offset, "run started");
        }
        Ok(StartOutcome::Duplicate { .. }) => {
            shared.metrics.runs_deduplicated.increment(1);
            tracing::debug!(definition = %def, key = %key, "deduplicated");
        }
        Err(message) => errors.push(RouteError {
            definition_id: def.clone(),
            stage: Stage::Start,
            message: format!("Temporal refused the start: {message}"),
        }),
    }
}
