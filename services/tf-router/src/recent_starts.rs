//! Starts this router saw Temporal acknowledge, per (definition, dedupe key, generation): the
//! fast path's memory for the gap between a start and its run's BeginRun.
//!
//! A claim learns that its generation has a run only when the worker begins the run. In a burst
//! the worker trails the router by seconds to minutes, so without this every repeat of a key in
//! that gap costs a Temporal start that Temporal refuses as a duplicate (issue 13 measured 1,781
//! of 1,800 repeats doing so). A generation whose start was acknowledged has its workflow in
//! Temporal: a repeat of it is a duplicate without asking again.
//!
//! Consulted only while the claim records no run status: a recorded status (from the worker) is
//! the truth, and a `failed` one must let the window's next event retry. Entries expire after
//! `ttl`, so a run that ended before it began (terminated by an operator, say) is retried by the
//! window's events after that at the latest. Bounded: the oldest entries go first. A fresh router
//! starts empty, which costs only the Temporal round trips this saves.
//!
//! An entry holds a 128-bit keyed digest of (definition, key, generation), not the key: a
//! hostile producer's 1 KiB keys cost the same ~100 bytes an entry as short ones, so the default
//! 100,000 entries stay near 10 MB whatever arrives. The digest is SipHash under this process's
//! random key, twice with a domain byte, so a producer cannot aim two keys at one digest and an
//! accidental match among 100,000 entries has odds near 10^-29. A match would skip a start, so
//! the digest is 128 bits, not 64.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The digest of one (definition, dedupe key, generation).
type Digest = u128;

pub struct RecentStarts {
    capacity: usize,
    ttl: Duration,
    /// Keyed with random keys drawn when the router starts.
    hasher: RandomState,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// When each generation's start was acknowledged (the latest acknowledgement).
    at: HashMap<Digest, Instant>,
    /// Insertion order, oldest first; an entry whose instant no longer matches `at` was
    /// refreshed later and is skipped when evicting.
    order: VecDeque<(Digest, Instant)>,
}

impl RecentStarts {
    /// Remembers up to `capacity` generations for `ttl` each; `capacity` 0 remembers nothing.
    pub fn new(capacity: usize, ttl: Duration) -> RecentStarts {
        RecentStarts { capacity, ttl, hasher: RandomState::new(), inner: Mutex::default() }
    }

    fn digest(&self, definition_id: &str, dedupe_key: &str, generation: u32) -> Digest {
        // `str` hashes its bytes and a terminator, so the fields cannot run into each other.
        let half = |domain: u8| self.hasher.hash_one((domain, definition_id, dedupe_key, generation));
        (u128::from(half(1)) << 64) | u128::from(half(2))
    }

    /// Temporal acknowledged this generation's start (or refused it as an existing run's).
    /// Returns how many generations are remembered now (expired ones included until evicted).
    pub fn acknowledged(&self, definition_id: &str, dedupe_key: &str, generation: u32) -> usize {
        self.acknowledged_at(definition_id, dedupe_key, generation, Instant::now())
    }

    /// Whether this generation's start was acknowledged less than `ttl` ago.
    pub fn contains(&self, definition_id: &str, dedupe_key: &str, generation: u32) -> bool {
        self.contains_at(definition_id, dedupe_key, generation, Instant::now())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().at.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn acknowledged_at(&self, definition_id: &str, dedupe_key: &str, generation: u32, now: Instant) -> usize {
        if self.capacity == 0 {
            return 0;
        }
        let key = self.digest(definition_id, dedupe_key, generation);
        let mut inner = self.lock();
        inner.at.insert(key, now);
        inner.order.push_back((key, now));
        // Evict from the front: what is over capacity, and what expired (the front is oldest).
        while let Some((key, at)) = inner.order.front() {
            let over = inner.at.len() > self.capacity;
            let expired = now.saturating_duration_since(*at) >= self.ttl;
            let stale = inner.at.get(key) != Some(at);
            if !(over || expired || stale) {
                break;
            }
            if let Some((key, at)) = inner.order.pop_front()
                && inner.at.get(&key) == Some(&at)
            {
                inner.at.remove(&key);
            }
        }
        inner.at.len()
    }

    fn contains_at(&self, definition_id: &str, dedupe_key: &str, generation: u32, now: Instant) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let key = self.digest(definition_id, dedupe_key, generation);
        self.lock().at.get(&key).is_some_and(|at| now.saturating_duration_since(*at) < self.ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn remembers_a_generation_not_its_neighbours() {
        let r = RecentStarts::new(10, MIN);
        r.acknowledged("d", "k", 1);
        assert!(r.contains("d", "k", 1));
        assert!(!r.contains("d", "k", 2), "the next window is another generation");
        assert!(!r.contains("d", "k2", 1));
        assert!(!r.contains("d2", "k", 1));
        // The digest keeps the fields apart: "d"+"k" is not "dk"+"" nor ""+"dk".
        assert!(!r.contains("dk", "", 1));
        assert!(!r.contains("", "dk", 1));
        // A key at the dedupe key's 1 KiB limit is remembered like any other.
        let long = "x".repeat(1024);
        r.acknowledged("d", &long, 1);
        assert!(r.contains("d", &long, 1));
        assert!(!r.contains("d", &long[1..], 1));
    }

    #[test]
    fn forgets_after_the_ttl() {
        let r = RecentStarts::new(10, MIN);
        let t0 = Instant::now();
        r.acknowledged_at("d", "k", 1, t0);
        assert!(r.contains_at("d", "k", 1, t0 + MIN - Duration::from_millis(1)));
        assert!(!r.contains_at("d", "k", 1, t0 + MIN), "expired: ask Temporal again");
        // An insert later evicts what expired.
        r.acknowledged_at("d", "other", 1, t0 + MIN);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn holds_at_most_its_capacity_oldest_out_first() {
        let r = RecentStarts::new(3, MIN);
        let t0 = Instant::now();
        let remembered: Vec<usize> = ["a", "b", "c", "d"]
            .iter()
            .enumerate()
            .map(|(i, key)| r.acknowledged_at("d", key, 1, t0 + Duration::from_millis(i as u64)))
            .collect();
        assert_eq!(remembered, [1, 2, 3, 3], "each acknowledgement says how many are remembered");
        assert_eq!(r.len(), 3);
        assert!(!r.contains_at("d", "a", 1, t0), "the oldest went first");
        assert!(["b", "c", "d"].iter().all(|k| r.contains_at("d", k, 1, t0)));
    }

    #[test]
    fn a_refreshed_entry_survives_the_eviction_of_its_older_copy() {
        let r = RecentStarts::new(2, MIN);
        let t0 = Instant::now();
        r.acknowledged_at("d", "a", 1, t0);
        r.acknowledged_at("d", "b", 1, t0 + Duration::from_millis(1));
        r.acknowledged_at("d", "a", 1, t0 + Duration::from_millis(2)); // refreshed
        r.acknowledged_at("d", "c", 1, t0 + Duration::from_millis(3)); // over capacity: b goes
        assert!(r.contains_at("d", "a", 1, t0 + Duration::from_millis(3)));
        assert!(!r.contains_at("d", "b", 1, t0 + Duration::from_millis(3)));
        assert!(r.contains_at("d", "c", 1, t0 + Duration::from_millis(3)));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn capacity_zero_remembers_nothing() {
        let r = RecentStarts::new(0, MIN);
        r.acknowledged("d", "k", 1);
        assert!(!r.contains("d", "k", 1));
        assert_eq!(r.len(), 0);
    }
}
