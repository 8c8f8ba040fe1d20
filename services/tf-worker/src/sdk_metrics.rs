//! The Temporal SDK's own worker metrics (`temporal_*`: poll and schedule-to-start latencies,
//! task slots, sticky cache, failures), served on the worker's `/metrics` beside ours. The SDK
//! reports through a `CoreMeter`; this one keeps the values in memory for `render`, so the
//! worker needs neither the SDK's Prometheus server on a second port nor an OTLP collector.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use temporalio_common::telemetry::metrics::{
    CoreMeter, Counter, CounterBase, Gauge, GaugeBase, GaugeF64, GaugeF64Base, Histogram, HistogramBase, HistogramDuration,
    HistogramDurationBase, HistogramF64, HistogramF64Base, MetricAttributable, MetricAttributes, MetricParameters, NewAttributes,
    OrderedPromLabelSet, UpDownCounter, UpDownCounterBase,
};

/// Bucket bounds in seconds (durations) or plain units: the SDK's latencies span milliseconds
/// (schedule-to-start) to a long poll's minute.
const BOUNDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

enum Value {
    Scalar(f64),
    Histogram { counts: Vec<u64>, sum: f64 },
}

struct Family {
    kind: Kind,
    help: String,
    /// By rendered label set (`a="b",c="d"`).
    series: BTreeMap<String, Value>,
}

type Families = Arc<Mutex<BTreeMap<String, Family>>>;

/// The meter handed to the SDK runtime; clone it to render.
#[derive(Clone, Default)]
pub struct SdkMetrics {
    families: Families,
}

impl std::fmt::Debug for SdkMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SdkMetrics")
    }
}

impl SdkMetrics {
    /// Appends every SDK metric in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, family) in families.iter().filter(|(_, f)| !f.series.is_empty()) {
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let help = if family.help.is_empty() { "Temporal SDK worker metric." } else { family.help.as_str() };
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", help.replace('\n', " "));
            for (labels, value) in &family.series {
                match value {
                    Value::Scalar(v) => {
                        let braced = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
                        let _ = writeln!(out, "{name}{braced} {v}");
                    }
                    Value::Histogram { counts, sum } => {
                        let sep = if labels.is_empty() { "" } else { "," };
                        let mut total = 0;
                        for (i, c) in counts.iter().enumerate() {
                            total += c;
                            let le = BOUNDS.get(i).map_or("+Inf".to_string(), f64::to_string);
                            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {total}");
                        }
                        let braced = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
                        let _ = writeln!(out, "{name}_sum{braced} {sum}\n{name}_count{braced} {total}");
                    }
                }
            }
        }
    }

    fn instrument(&self, params: &MetricParameters, kind: Kind, seconds: bool) -> Arc<Instrument> {
        // Prometheus names: durations in seconds carry the unit, counters end in `_total`.
        let mut name = params.name.replace(['-', '.'], "_");
        if seconds && !name.ends_with("_seconds") {
            name.push_str("_seconds");
        }
        if kind == Kind::Counter && !name.ends_with("_total") {
            name.push_str("_total");
        }
        let mut families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        families.entry(name.clone()).or_insert_with(|| Family { kind, help: params.description.to_string(), series: BTreeMap::new() });
        Arc::new(Instrument { families: self.families.clone(), name, seconds })
    }
}

/// One metric of the SDK, before its labels are bound.
struct Instrument {
    families: Families,
    name: String,
    /// Durations are recorded in seconds.
    seconds: bool,
}

impl Instrument {
    fn bind(&self, attributes: &MetricAttributes) -> Bound {
        let labels = match attributes {
            MetricAttributes::Prometheus { labels } => labels
                .as_prom_labels()
                .into_iter()
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
                .collect::<Vec<_>>()
                .join(","),
            _ => String::new(),
        };
        Bound { families: self.families.clone(), name: self.name.clone(), labels, seconds: self.seconds }
    }
}

/// An instrument bound to one label set: what the SDK records into.
struct Bound {
    families: Families,
    name: String,
    labels: String,
    seconds: bool,
}

impl Bound {
    fn update(&self, f: impl FnOnce(&mut Value)) {
        let mut families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(family) = families.get_mut(&self.name) else { return };
        // The SDK records on every poll and task: copy the label set only for a new series.
        if let Some(value) = family.series.get_mut(&self.labels) {
            return f(value);
        }
        let mut value = match family.kind {
            Kind::Histogram => Value::Histogram { counts: vec![0; BOUNDS.len() + 1], sum: 0.0 },
            Kind::Counter | Kind::Gauge => Value::Scalar(0.0),
        };
        f(&mut value);
        family.series.insert(self.labels.clone(), value);
    }

    fn add(&self, delta: f64) {
        self.update(|v| {
            if let Value::Scalar(x) = v {
                *x += delta;
            }
        });
    }

    fn set(&self, value: f64) {
        self.update(|v| *v = Value::Scalar(value));
    }

    fn observe(&self, value: f64) {
        self.update(|v| {
            if let Value::Histogram { counts, sum } = v {
                let i = BOUNDS.iter().position(|b| value <= *b).unwrap_or(BOUNDS.len());
                counts[i] += 1;
                *sum += value;
            }
        });
    }
}

impl CounterBase for Bound {
    fn adds(&self, value: u64) {
        self.add(value as f64);
    }
}
impl UpDownCounterBase for Bound {
    fn adds(&self, value: i64) {
        self.add(value as f64);
    }
}
impl GaugeBase for Bound {
    fn records(&self, value: u64) {
        self.set(value as f64);
    }
}
impl GaugeF64Base for Bound {
    fn records(&self, value: f64) {
        self.set(value);
    }
}
impl HistogramBase for Bound {
    fn records(&self, value: u64) {
        self.observe(value as f64);
    }
}
impl HistogramF64Base for Bound {
    fn records(&self, value: f64) {
        self.observe(value);
    }
}
impl HistogramDurationBase for Bound {
    fn records(&self, value: Duration) {
        self.observe(if self.seconds { value.as_secs_f64() } else { value.as_millis() as f64 });
    }
}

macro_rules! attributable {
    ($($base:ident),*) => {$(
        impl MetricAttributable<Box<dyn $base>> for Instrument {
            fn with_attributes(&self, attributes: &MetricAttributes) -> Result<Box<dyn $base>, Box<dyn std::error::Error>> {
                Ok(Box::new(self.bind(attributes)))
            }
        }
    )*};
}
attributable!(CounterBase, UpDownCounterBase, GaugeBase, GaugeF64Base, HistogramBase, HistogramF64Base, HistogramDurationBase);

impl CoreMeter for SdkMetrics {
    fn new_attributes(&self, attribs: NewAttributes) -> MetricAttributes {
        MetricAttributes::Prometheus { labels: Arc::new(OrderedPromLabelSet::from(attribs)) }
    }

    fn extend_attributes(&self, existing: MetricAttributes, attribs: NewAttributes) -> MetricAttributes {
        let mut labels = match existing {
            MetricAttributes::Prometheus { labels } => (*labels).clone(),
            _ => OrderedPromLabelSet::new(),
        };
        for kv in attribs.attributes {
            labels.add_kv(kv);
        }
        MetricAttributes::Prometheus { labels: Arc::new(labels) }
    }

    fn counter(&self, params: MetricParameters) -> Counter {
        Counter::new(self.instrument(&params, Kind::Counter, false))
    }

    fn histogram(&self, params: MetricParameters) -> Histogram {
        Histogram::new(self.instrument(&params, Kind::Histogram, false))
    }

    fn histogram_f64(&self, params: MetricParameters) -> HistogramF64 {
        HistogramF64::new(self.instrument(&params, Kind::Histogram, false))
    }

    fn histogram_duration(&self, params: MetricParameters) -> HistogramDuration {
        HistogramDuration::new(self.instrument(&params, Kind::Histogram, true))
    }

    fn gauge(&self, params: MetricParameters) -> Gauge {
        Gauge::new(self.instrument(&params, Kind::Gauge, false))
    }

    fn gauge_f64(&self, params: MetricParameters) -> GaugeF64 {
        GaugeF64::new(self.instrument(&params, Kind::Gauge, false))
    }

    fn up_down_counter(&self, params: MetricParameters) -> UpDownCounter {
        UpDownCounter::new(self.instrument(&params, Kind::Gauge, false))
    }
}

#[cfg(test)]
mod tests {
    use temporalio_common::telemetry::metrics::MetricKeyValue;

    use super::*;

    #[test]
    fn renders_what_the_sdk_records_in_prometheus_text() {
        let meter = SdkMetrics::default();
        let attrs = meter.new_attributes(NewAttributes::from([MetricKeyValue::new("task-queue", "q\"1")]));
        let attrs = meter.extend_attributes(attrs, NewAttributes::from([MetricKeyValue::new("poller_type", "activity")]));
        meter.counter("temporal_activity_task_failed".into()).add(2, &attrs);
        meter.gauge("temporal_worker_task_slots_available".into()).record(7, &attrs);
        let latency = meter.histogram_duration(
            MetricParameters::builder().name("temporal_activity_schedule_to_start_latency").description("Latency.").build(),
        );
        latency.record(Duration::from_millis(40), &attrs);
        latency.record(Duration::from_secs(3), &attrs);
        let mut out = String::new();
        meter.render(&mut out);
        let labels = "poller_type=\"activity\",task_queue=\"q\\\"1\"";
        assert!(
            out.contains(&format!(
                "# TYPE temporal_activity_task_failed_total counter\ntemporal_activity_task_failed_total{{{labels}}} 2\n"
            )),
            "{out}"
        );
        assert!(out.contains(&format!("temporal_worker_task_slots_available{{{labels}}} 7\n")), "{out}");
        assert!(out.contains("# HELP temporal_activity_schedule_to_start_latency_seconds Latency."), "{out}");
        assert!(out.contains(&format!("temporal_activity_schedule_to_start_latency_seconds_bucket{{{labels},le=\"0.05\"}} 1\n")), "{out}");
        assert!(out.contains(&format!("temporal_activity_schedule_to_start_latency_seconds_count{{{labels}}} 2\n")), "{out}");
        assert!(out.contains(&format!("temporal_activity_schedule_to_start_latency_seconds_sum{{{labels}}} 3.04\n")), "{out}");
    }
}
