//! Which partition a record goes to when it does not name one.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use crate::murmur2::partition_for_key;

/// How the producer picks a partition for a record without one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Partitioner {
    /// Kafka's default: a keyed record goes to
    /// `toPositive(murmur2(key)) % partitions`, so a key always lands on
    /// the same partition, and on the one a Kafka client would choose.
    /// Records without a key stick to one partition until its batch is
    /// sent or full, then move to another chosen at random (KIP-480), which
    /// makes fewer, fuller batches than spreading each record.
    #[default]
    Default,
    /// Every record, keyed or not, to the next partition in turn.
    RoundRobin,
}

/// The partitioner's memory: the sticky partition and the round-robin
/// position of each topic.
#[derive(Debug)]
pub(crate) struct PartitionerState {
    sticky: HashMap<String, i32>,
    round_robin: HashMap<String, i32>,
    random: u64,
}

impl PartitionerState {
    pub(crate) fn new() -> Self {
        // Any seed will do; a per-process one keeps producers from picking
        // the same partitions in the same order.
        Self::with_seed(RandomState::new().hash_one(0u8))
    }

    pub(crate) fn with_seed(seed: u64) -> Self {
        PartitionerState { sticky: HashMap::new(), round_robin: HashMap::new(), random: seed | 1 }
    }

    /// The partition for a record of `topic`. `has_room(p)` tells whether
    /// partition p has an open batch that can take the record.
    pub(crate) fn partition(
        &mut self,
        kind: Partitioner,
        topic: &str,
        key: Option<&[u8]>,
        partition_count: i32,
        has_room: impl Fn(i32) -> bool,
    ) -> i32 {
        debug_assert!(partition_count > 0);
        let partition_count = partition_count.max(1);
        match (kind, key) {
            (Partitioner::Default, Some(key)) => partition_for_key(key, partition_count),
            (Partitioner::Default, None) => self.sticky(topic, partition_count, has_room),
            (Partitioner::RoundRobin, _) => {
                let start = self.random_below(partition_count);
                let next = self.round_robin.entry(topic.to_string()).or_insert(start);
                let partition = *next % partition_count;
                *next = (partition + 1) % partition_count;
                partition
            }
        }
    }

    fn sticky(&mut self, topic: &str, partition_count: i32, has_room: impl Fn(i32) -> bool) -> i32 {
        let current = self.sticky.get(topic).copied().filter(|&partition| partition < partition_count);
        if let Some(partition) = current
            && has_room(partition)
        {
            return partition;
        }
        let partition = match current {
            // Another partition than the one just left, when there is one.
            Some(previous) if partition_count > 1 => {
                (previous + 1 + self.random_below(partition_count - 1)) % partition_count
            }
            _ => self.random_below(partition_count),
        };
        self.sticky.insert(topic.to_string(), partition);
        partition
    }

    /// xorshift64*: plenty for spreading load, and no dependency.
    fn random_below(&mut self, bound: i32) -> i32 {
        debug_assert!(bound > 0);
        let mut x = self.random;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.random = x;
        let sample = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as i64;
        (sample % i64::from(bound.max(1))) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_goes_to_kafkas_partition() {
        let mut state = PartitionerState::with_seed(7);
        for _ in 0..10 {
            assert_eq!(state.partition(Partitioner::Default, "t", Some(b"foobar"), 50, |_| false), 16);
        }
        let first = state.partition(Partitioner::Default, "t", Some(b"user-42"), 12, |_| true);
        assert_eq!(first, partition_for_key(b"user-42", 12));
    }

    #[test]
    fn keyless_records_stick_while_the_batch_has_room_then_move_elsewhere() {
        let mut state = PartitionerState::with_seed(11);
        let first = state.partition(Partitioner::Default, "t", None, 8, |_| false);
        for _ in 0..100 {
            assert_eq!(state.partition(Partitioner::Default, "t", None, 8, |_| true), first);
        }
        // The batch was sent (or filled): the next record moves on, and
        // sticks to its new partition.
        let second = state.partition(Partitioner::Default, "t", None, 8, |p| p != first);
        assert_ne!(second, first);
        assert_eq!(state.partition(Partitioner::Default, "t", None, 8, |_| true), second);
        // Each topic has its own sticky partition.
        let other = state.partition(Partitioner::Default, "u", None, 1, |_| true);
        assert_eq!(other, 0);
    }

    #[test]
    fn moving_on_spreads_over_every_partition() {
        let mut state = PartitionerState::with_seed(3);
        let mut seen = [false; 4];
        for _ in 0..200 {
            let partition = state.partition(Partitioner::Default, "t", None, 4, |_| false);
            seen[usize::try_from(partition).expect("in range")] = true;
        }
        assert_eq!(seen, [true; 4]);
    }

    #[test]
    fn a_shrunk_partition_count_never_yields_an_out_of_range_partition() {
        let mut state = PartitionerState::with_seed(5);
        for _ in 0..50 {
            state.partition(Partitioner::Default, "t", None, 16, |_| false);
        }
        for _ in 0..50 {
            let partition = state.partition(Partitioner::Default, "t", None, 2, |_| true);
            assert!((0..2).contains(&partition));
        }
    }

    #[test]
    fn round_robin_cycles_through_partitions_ignoring_keys() {
        let mut state = PartitionerState::with_seed(9);
        let partitions: Vec<i32> =
            (0..6).map(|_| state.partition(Partitioner::RoundRobin, "t", Some(b"k"), 3, |_| true)).collect();
        assert_eq!(partitions[3..], partitions[..3]);
        let mut first_three = partitions[..3].to_vec();
        first_three.sort_unstable();
        assert_eq!(first_three, vec![0, 1, 2]);
    }
}
