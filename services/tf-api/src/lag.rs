//! Consumer lag of the router's group, sampled by tf-api for the console: the group's committed
//! offsets against the partitions' ends (what `tf consumer lag` prints), every
//! `TF_API_LAG_SAMPLE_MS`, kept for an hour. Reading the group from Kafka rather than scraping
//! one router covers every router of the group.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tf_kafka::groups::{self, PartitionLag};

const WINDOW: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct Sample {
    pub at: SystemTime,
    pub partitions: Vec<PartitionLag>,
}

impl Sample {
    pub fn total(&self) -> i64 {
        self.partitions.iter().map(PartitionLag::lag).sum()
    }

    /// Offsets committed so far, summed: its growth between samples is the routed rate.
    pub fn committed(&self) -> i64 {
        self.partitions.iter().map(|p| p.committed.unwrap_or(p.low)).sum()
    }
}

#[derive(Debug, Default)]
pub struct LagHistory {
    samples: Mutex<VecDeque<Sample>>,
    /// Why the last sample failed, if it did.
    last_error: Mutex<Option<String>>,
}

impl LagHistory {
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("lag samples").iter().cloned().collect()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("lag error").clone()
    }

    fn push(&self, s: Sample) {
        let mut q = self.samples.lock().expect("lag samples");
        q.push_back(s);
        while q.front().is_some_and(|f| f.at.elapsed().unwrap_or_default() > WINDOW) {
            q.pop_front();
        }
    }
}

/// Samples forever (a task of tf-api's runtime).
pub async fn sample(history: Arc<LagHistory>, brokers: String, group: String, topic_patterns: Vec<String>, every: Duration) {
    loop {
        let (b, g, t) = (brokers.clone(), group.clone(), topic_patterns.clone());
        let got = tokio::task::spawn_blocking(move || {
            let topics = groups::resolve_topics(&b, &t)?;
            groups::lag(&b, &g, &topics)
        })
        .await;
        match got {
            Ok(Ok(partitions)) => {
                history.push(Sample { at: SystemTime::now(), partitions });
                *history.last_error.lock().expect("lag error") = None;
            }
            Ok(Err(e)) => *history.last_error.lock().expect("lag error") = Some(e.to_string()),
            Err(e) => *history.last_error.lock().expect("lag error") = Some(e.to_string()),
        }
        tokio::time::sleep(every).await;
    }
}
