//! Dead letters: the original key, value and headers plus Kafka Connect's `__connect.errors.*`
//! headers, degraded (value truncated, then original headers dropped) when the DLQ cannot take
//! the full record, so a dead letter never holds its partition.

use std::time::Duration;

use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use tf_kafka::dlq::{self, Stage};

use crate::Shared;
use crate::retry::retry;

/// Why a record goes to the DLQ.
pub struct DeadLetter {
    pub stage: Stage,
    pub class: &'static str,
    pub message: String,
}

/// The original key, value and headers plus Kafka Connect's `__connect.errors.*` headers.
pub async fn dead_letter(shared: &Shared, msg: &OwnedMessage, why: DeadLetter) {
    tracing::warn!(topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), stage = %why.stage, reason = %why.message, "dead-lettered");
    shared.metrics.dead_letter(why.stage);
    let payload = msg.payload().unwrap_or_default();
    // A dead letter the DLQ cannot take (over the producer's or topic's message size) would be
    // retried forever and hold its partition: degrade it instead, first to the head of the
    // value, then without the original headers. Headers say what was cut.
    let mut shape = DeadLetterShape { keep: payload.len(), original_headers: true };
    loop {
        let headers = dead_letter_headers(msg, &why, &shape, payload.len());
        let sent = retry(shared, "dlq", || {
            let mut record = FutureRecord::to(&shared.cli.kafka.dlq_topic).payload(&payload[..shape.keep]).headers(headers.clone());
            // The original's timestamp, which a redrive hands back: a plain record's event time.
            if let Some(ts) = msg.timestamp().to_millis() {
                record = record.timestamp(ts);
            }
            if let Some(k) = msg.key() {
                record = record.key(k);
            }
            async move {
                match shared.dlq.send(record, Duration::from_secs(30)).await {
                    Ok(_) => Ok(Ok(())),
                    Err((e, _)) if tf_kafka::too_large(&e) && shape.can_shrink() => Ok(Err(e.to_string())),
                    Err((e, _)) => Err(e.to_string().into()),
                }
            }
        })
        .await;
        match sent {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, kept = shape.keep, "dead letter too large for the DLQ; sending it truncated");
                shape = shape.shrink();
            }
        }
    }
}

/// How much of a record its dead letter carries.
#[derive(Clone, Copy)]
struct DeadLetterShape {
    keep: usize,
    original_headers: bool,
}

/// What a truncated dead letter keeps of the value: enough to recognise it.
const DLQ_TRUNCATED_BYTES: usize = 16 * 1024;

impl DeadLetterShape {
    fn can_shrink(&self) -> bool {
        self.keep > 0 || self.original_headers
    }

    fn shrink(self) -> Self {
        if self.keep > DLQ_TRUNCATED_BYTES {
            DeadLetterShape { keep: DLQ_TRUNCATED_BYTES, ..self }
        } else if self.original_headers {
            DeadLetterShape { original_headers: false, ..self }
        } else {
            DeadLetterShape { keep: 0, ..self }
        }
    }
}

fn dead_letter_headers(msg: &OwnedMessage, why: &DeadLetter, shape: &DeadLetterShape, original_len: usize) -> OwnedHeaders {
    let (partition, offset) = (msg.partition().to_string(), msg.offset().to_string());
    let mut headers = OwnedHeaders::new();
    if shape.original_headers
        && let Some(original) = msg.headers()
    {
        // The router owns these namespaces: a producer's `__connect.errors.topic` would otherwise
        // choose where a redrive writes.
        for h in original.iter().filter(|h| !dlq::is_reserved(h.key)) {
            headers = headers.insert(Header { key: h.key, value: h.value });
        }
    }
    // Reasons can quote the event; keep the header small.
    let message: String = why.message.chars().take(4000).collect();
    for (key, value) in [
        (dlq::TOPIC, msg.topic()),
        (dlq::PARTITION, partition.as_str()),
        (dlq::OFFSET, offset.as_str()),
        (dlq::CONNECTOR, dlq::CONNECTOR_NAME),
        (dlq::STAGE, why.stage.as_str()),
        (dlq::CLASS, why.class),
        (dlq::MESSAGE, message.as_str()),
    ] {
        headers = headers.insert(Header { key, value: Some(value) });
    }
    if shape.keep < original_len || !shape.original_headers {
        let note = format!(
            "value truncated to {} of {} bytes{}",
            shape.keep,
            original_len,
            if shape.original_headers { "" } else { "; original headers dropped" }
        );
        headers = headers.insert(Header { key: dlq::TRUNCATED, value: Some(note.as_str()) });
    }
    headers
}
