//! Decode + match throughput on one core: the router's per-record CPU work without any I/O.
//! 2,000 envelopes are recorded once in the Confluent wire format, as a producer writes them;
//! the loop then unframes, Avro-decodes and converts each to the JSON expressions see, and
//! matches it against 100 enabled definitions (topic, type pattern, a CEL filter, a CEL
//! dedupe key), exactly as `dispatch` does. Prints records/s; never fails on a figure.
//!
//! `cargo bench -p tf-router --bench route` (release profile, one thread).

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

// The router is a binary: the bench compiles its matching module in (with its unit tests'
// imports, unused here).
#[path = "../src/route.rs"]
#[allow(dead_code, unused_imports)]
mod route;

use std::time::{Duration, Instant};

use apache_avro::{Schema, to_avro_datum};
use serde_json::json;
use tf_envelope::{Decoded, Event, decode_body, wire};

const TOPIC: &str = "events.orders";
const SCHEMA_ID: u32 = 7;

/// 100 definitions on the topic; types and filters decide which match: a quarter per type,
/// about half of those through the filter. `distinct`: every filter and key differs (no
/// expression is shared, each evaluates on its own); otherwise 10 filters and one key are shared,
/// as definitions keyed by the same business id are.
fn definitions(distinct: bool) -> route::Routes {
    route::Routes::new(
        (0..100)
            .map(|i| {
                let (threshold, suffix) = if distinct { (i, format!(" + '/{i}'")) } else { ((i % 10) * 10, String::new()) };
                let yaml = format!(
                    "id: bench-{i}\nname: Bench {i}\ntrigger:\n  event:\n    topics: [{TOPIC}]\n    type: com.example.order.{}\n    filter: event.data.amount >= {threshold}\ndedupe: {{key: event.data.order_id + '/' + event.data.customer{suffix}}}\ntasks: [{{name: t, type: human}}]\n",
                    ["created", "paid", "shipped", "*"][i % 4],
                );
                let definition = tf_definitions::Definition::from_yaml("bench", &yaml).expect("a valid definition").remove(0);
                route::Active { definition, version: 1 }
            })
            .collect(),
    )
}

fn recorded() -> Vec<Vec<u8>> {
    let schema = Schema::parse_str(tf_envelope::ENVELOPE_SCHEMA).expect("envelope schema");
    (0..2000)
        .map(|i| {
            let kind = ["created", "paid", "shipped", "cancelled"][i % 4];
            let data = json!({"order_id": format!("o-{i}"), "customer": format!("c-{}", i % 97), "amount": (i * 7) % 100,
                              "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]});
            let mut e = Event::new(format!("e-{i}"), "/shop", format!("com.example.order.{kind}"), data).expect("event");
            e.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
            let body = to_avro_datum(&schema, e.to_avro()).expect("encodes");
            wire::frame(SCHEMA_ID, &body)
        })
        .collect()
}

/// Decodes and matches every record, building the start requests as dispatch does; returns
/// (records, runs) done in about `secs` seconds.
fn measure(routes: &route::Routes, schema: &Schema, records: &[Vec<u8>], secs: u64) -> (u64, usize, f64) {
    let (mut n, mut runs) = (0u64, 0usize);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        for (offset, record) in records.iter().enumerate() {
            let (id, body) = wire::unframe(record).expect("framed");
            let Ok(Decoded::Envelope { event, .. }) = decode_body(id, schema, body) else { panic!("not an envelope") };
            let time = event.time.0;
            let event = serde_json::to_value(&event).expect("json");
            let at = route::Position { topic: TOPIC, partition: 0, offset: offset as i64 };
            let (matches, errors) = route::route(routes, TOPIC, &event);
            assert!(errors.is_empty(), "no definition may fail on these events: {errors:?}");
            // Each start request carries the event (shared, not copied).
            let event = std::sync::Arc::new(event);
            let r: Vec<_> = matches.iter().map(|m| m.run_input(&at, &event, time)).collect();
            runs += std::hint::black_box(r).len();
            n += 1;
        }
    }
    (n, runs, started.elapsed().as_secs_f64())
}

fn main() {
    let records = recorded();
    let schema = Schema::parse_str(tf_envelope::ENVELOPE_SCHEMA).expect("envelope schema");
    let bytes: usize = records.iter().map(Vec::len).sum();
    println!("{} recorded envelopes (avg {} bytes), 100 definitions", records.len(), bytes / records.len());

    for (distinct, label) in [(false, "shared expressions (10 filters, 1 key)"), (true, "distinct expressions (100 filters, 100 keys)")] {
        let routes = definitions(distinct);
        measure(&routes, &schema, &records, 1); // warm-up
        let (n, runs, secs) = measure(&routes, &schema, &records, 5);
        println!(
            "decode + match, {label}: {:.0} records/s on one thread ({:.1} µs a record; {:.1} runs matched per record)",
            n as f64 / secs,
            secs * 1e6 / n as f64,
            runs as f64 / n as f64
        );
    }

    // Decoding alone, to see where the time goes.
    let started = Instant::now();
    let mut decoded = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        for record in &records {
            let (id, body) = wire::unframe(record).expect("framed");
            let Ok(Decoded::Envelope { event, .. }) = decode_body(id, &schema, body) else { panic!("not an envelope") };
            std::hint::black_box(serde_json::to_value(&event).expect("json"));
            decoded += 1;
        }
    }
    println!("decode only: {:.0} records/s", decoded as f64 / started.elapsed().as_secs_f64());
}
