//! The Temporal SDK's own worker metrics (`temporal_*`: poll and schedule-to-start latencies,
//! task slots, sticky cache, failures), served on the worker's `/metrics` beside ours. The SDK
//! reports through a `CoreMeter`; this one forwards to the `metrics` facade, so the worker
//! needs neither the SDK's Prometheus server on a second port nor an OTLP collector.

use std::sync::Arc;
use std::time::Duration;

use temporalio_common::telemetry::metrics::{
    CoreMeter, Counter, CounterBase, Gauge, GaugeBase, GaugeF64, GaugeF64Base, Histogram, HistogramBase, HistogramDuration,
    HistogramDurationBase, HistogramF64, HistogramF64Base, MetricAttributable, MetricAttributes, MetricParameters, NewAttributes,
    OrderedPromLabelSet, UpDownCounter, UpDownCounterBase,
};

/// Bucket bounds in seconds (durations) or plain units: the SDK's latencies span milliseconds
/// (schedule-to-start) to a long poll's minute.
pub const BOUNDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The meter handed to the SDK runtime: it forwards to the `metrics` facade.
#[derive(Clone, Copy, Debug, Default)]
pub struct SdkMetrics;

impl SdkMetrics {
    fn instrument(params: &MetricParameters, kind: Kind, seconds: bool) -> Arc<Instrument> {
        // Prometheus names: durations in seconds carry the unit, counters end in `_total`.
        let mut name = params.name.replace(['-', '.'], "_");
        if seconds && !name.ends_with("_seconds") {
            name.push_str("_seconds");
        }
        if kind == Kind::Counter && !name.ends_with("_total") {
            name.push_str("_total");
        }
        let help =
            if params.description.is_empty() { "Temporal SDK worker metric.".to_string() } else { params.description.replace('\n', " ") };
        match kind {
            Kind::Counter => metrics::describe_counter!(name.clone(), help),
            Kind::Gauge => metrics::describe_gauge!(name.clone(), help),
            Kind::Histogram => metrics::describe_histogram!(name.clone(), help),
        }
        Arc::new(Instrument { name, kind, seconds })
    }
}

/// One metric of the SDK, before its labels are bound.
struct Instrument {
    name: String,
    kind: Kind,
    /// Durations are recorded in seconds.
    seconds: bool,
}

impl Instrument {
    fn bind(&self, attributes: &MetricAttributes) -> Bound {
        let labels: Vec<metrics::Label> = match attributes {
            MetricAttributes::Prometheus { labels } => {
                // Sorted, so one label set is one series whatever order the SDK added them in.
                let sorted: std::collections::BTreeMap<_, _> = labels.as_prom_labels().into_iter().collect();
                sorted.into_iter().map(|(k, v)| metrics::Label::new(k.to_string(), v.to_string())).collect()
            }
            _ => Vec::new(),
        };
        let name = self.name.clone();
        match self.kind {
            Kind::Counter => Bound::Counter(metrics::counter!(name, labels)),
            Kind::Gauge => Bound::Gauge(metrics::gauge!(name, labels)),
            Kind::Histogram => Bound::Histogram(metrics::histogram!(name, labels), self.seconds),
        }
    }
}

/// An instrument bound to one label set: what the SDK records into.
enum Bound {
    Counter(metrics::Counter),
    Gauge(metrics::Gauge),
    /// With whether durations are recorded in seconds (else milliseconds).
    Histogram(metrics::Histogram, bool),
}

impl Bound {
    fn add(&self, delta: f64) {
        match self {
            Bound::Counter(c) => c.increment(delta.max(0.0) as u64),
            Bound::Gauge(g) => g.increment(delta),
            Bound::Histogram(..) => {}
        }
    }

    fn set(&self, value: f64) {
        if let Bound::Gauge(g) = self {
            g.set(value);
        }
    }

    fn observe(&self, value: f64) {
        if let Bound::Histogram(h, _) = self {
            h.record(value);
        }
    }

    fn seconds(&self) -> bool {
        matches!(self, Bound::Histogram(_, true))
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
        self.observe(if self.seconds() { value.as_secs_f64() } else { value.as_millis() as f64 });
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
        Counter::new(SdkMetrics::instrument(&params, Kind::Counter, false))
    }

    fn histogram(&self, params: MetricParameters) -> Histogram {
        Histogram::new(SdkMetrics::instrument(&params, Kind::Histogram, false))
    }

    fn histogram_f64(&self, params: MetricParameters) -> HistogramF64 {
        HistogramF64::new(SdkMetrics::instrument(&params, Kind::Histogram, false))
    }

    fn histogram_duration(&self, params: MetricParameters) -> HistogramDuration {
        HistogramDuration::new(SdkMetrics::instrument(&params, Kind::Histogram, true))
    }

    fn gauge(&self, params: MetricParameters) -> Gauge {
        Gauge::new(SdkMetrics::instrument(&params, Kind::Gauge, false))
    }

    fn gauge_f64(&self, params: MetricParameters) -> GaugeF64 {
        GaugeF64::new(SdkMetrics::instrument(&params, Kind::Gauge, false))
    }

    fn up_down_counter(&self, params: MetricParameters) -> UpDownCounter {
        UpDownCounter::new(SdkMetrics::instrument(&params, Kind::Gauge, false))
    }
}

#[cfg(test)]
mod tests {
    use temporalio_common::telemetry::metrics::MetricKeyValue;

    use super::*;

    #[test]
    fn forwards_what_the_sdk_records_to_the_recorder() {
        let recorder = tf_runtime::test_recorder(crate::metrics::BUCKETS);
        let meter = SdkMetrics;
        metrics::with_local_recorder(&recorder, || {
            let attrs = meter.new_attributes(NewAttributes::from([MetricKeyValue::new("task-queue", "q\"1")]));
            let attrs = meter.extend_attributes(attrs, NewAttributes::from([MetricKeyValue::new("poller_type", "activity")]));
            meter.counter("temporal_activity_task_failed".into()).add(2, &attrs);
            meter.gauge("temporal_worker_task_slots_available".into()).record(7, &attrs);
            let latency = meter.histogram_duration(
                MetricParameters::builder().name("temporal_activity_schedule_to_start_latency").description("Latency.").build(),
            );
            latency.record(Duration::from_millis(40), &attrs);
            latency.record(Duration::from_secs(3), &attrs);
        });
        let out = recorder.handle().render();
        let labels = "poller_type=\"activity\",task_queue=\"q\\\"1\"";
        assert!(out.contains("# TYPE temporal_activity_task_failed_total counter\n"), "{out}");
        assert!(out.contains(&format!("temporal_activity_task_failed_total{{{labels}}} 2\n")), "{out}");
        assert!(out.contains(&format!("temporal_worker_task_slots_available{{{labels}}} 7\n")), "{out}");
        assert!(out.contains("# HELP temporal_activity_schedule_to_start_latency_seconds Latency."), "{out}");
        assert!(out.contains(&format!("temporal_activity_schedule_to_start_latency_seconds_bucket{{{labels},le=\"0.05\"}} 1\n")), "{out}");
        assert!(out.contains(&format!("temporal_activity_schedule_to_start_latency_seconds_count{{{labels}}} 2\n")), "{out}");
        assert!(out.contains(&format!("temporal_activity_schedule_to_start_latency_seconds_sum{{{labels}}} 3.04\n")), "{out}");
    }
}
