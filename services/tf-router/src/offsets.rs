//! Which offset of a partition is safe to commit while many records are in flight: the lowest
//! unfinished one, or one past the highest finished when nothing is in flight. The committed
//! offset therefore never passes a record whose start (or DLQ write) is not acknowledged.
//!
//! Each assignment of a partition is a new generation: records still in flight from an earlier
//! assignment (revoked, then given back) cannot move the new assignment's offset.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
pub struct Tracker {
    partitions: HashMap<(String, i32), Partition>,
    next_generation: u64,
}

#[derive(Debug)]
struct Partition {
    generation: u64,
    in_flight: BTreeSet<i64>,
    highest_done: Option<i64>,
}

/// Identifies one record of one assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    generation: u64,
}

impl Tracker {
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) -> Ticket {
        let next_generation = &mut self.next_generation;
        let p = self.partitions.entry((topic.to_string(), partition)).or_insert_with(|| {
            *next_generation += 1;
            Partition { generation: *next_generation, in_flight: BTreeSet::new(), highest_done: None }
        });
        p.in_flight.insert(offset);
        Ticket { topic: topic.to_string(), partition, offset, generation: p.generation }
    }

    /// Marks the record finished and returns the offset now safe to store, if any.
    pub fn finish(&mut self, t: &Ticket) -> Option<i64> {
        let p = self.partitions.get_mut(&(t.topic.clone(), t.partition))?;
        if p.generation != t.generation {
            return None;
        }
        p.in_flight.remove(&t.offset);
        p.highest_done = Some(p.highest_done.map_or(t.offset, |h| h.max(t.offset)));
        Some(match p.in_flight.first() {
            Some(&lowest) => lowest,
            None => p.highest_done? + 1,
        })
    }

    /// Records in flight in the current generations.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }

    /// Partitions with records in flight: (topic, partition, lowest offset, count), sorted.
    pub fn pending(&self) -> Vec<(String, i32, i64, usize)> {
        let mut out: Vec<_> = self
            .partitions
            .iter()
            .filter_map(|((t, p), part)| part.in_flight.first().map(|lowest| (t.clone(), *p, *lowest, part.in_flight.len())))
            .collect();
        out.sort();
        out
    }

    /// Forgets a partition this consumer no longer owns.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_string(), partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_passes_an_unfinished_offset() {
        let mut t = Tracker::default();
        let tickets: Vec<Ticket> = (10..14).map(|o| t.begin("e", 0, o)).collect();
        assert_eq!(t.finish(&tickets[2]), Some(10), "10 is still in flight");
        assert_eq!(t.finish(&tickets[1]), Some(10));
        assert_eq!(t.finish(&tickets[0]), Some(13), "13 is the lowest unfinished");
        assert_eq!(t.finish(&tickets[3]), Some(14), "all done: commit past the last");
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = Tracker::default();
        let a = t.begin("e", 0, 5);
        let b = t.begin("e", 1, 100);
        assert_eq!(t.finish(&b), Some(101));
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.pending(), [("e".to_string(), 0, 5, 1)]);
        t.revoke("e", 0);
        assert_eq!(t.finish(&a), None);
    }

    #[test]
    fn a_record_from_a_revoked_assignment_cannot_move_the_new_one() {
        let mut t = Tracker::default();
        let old = t.begin("e", 0, 110);
        t.revoke("e", 0);
        // Reassigned; redelivery starts from the committed offset 95.
        let redelivered = t.begin("e", 0, 95);
        assert_eq!(t.finish(&old), None, "stale generation is ignored");
        assert_eq!(t.finish(&redelivered), Some(96), "not 111");
    }
}
