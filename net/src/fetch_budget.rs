//! How a fetch request's byte limit is shared among its partitions: the
//! same rule for every front-end (native and Kafka), so that one request
//! cannot start a disk read per entry within any budget.

use crate::limits::FETCH_PARTITION_BYTES_MIN;

/// A fetch request's byte budget as it is handed to its partitions.
#[derive(Debug)]
pub(crate) struct FetchBudget {
    left_bytes: usize,
}

impl FetchBudget {
    pub(crate) fn new(request_bytes_max: usize) -> Self {
        FetchBudget { left_bytes: request_bytes_max }
    }

    /// The bytes the next partition may read (0: none, it is left out).
    /// It may read what it asks for, within what is left, but uses up at
    /// least `FETCH_PARTITION_BYTES_MIN` of the budget.
    pub(crate) fn take(&mut self, partition_bytes_max: i32) -> usize {
        let bytes_max = (partition_bytes_max.max(1) as usize).min(self.left_bytes);
        let used = bytes_max.max(FETCH_PARTITION_BYTES_MIN).min(self.left_bytes);
        self.left_bytes -= used;
        bytes_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Issue 14: before the minimum slice, 10,000 entries asking for one byte
    // each all fit a 64 MiB budget, and each started a read returning at
    // least one batch.
    #[test]
    fn tiny_partition_budgets_use_up_a_minimum_slice_of_the_request() {
        let request_bytes_max = 64 << 20;
        let mut budget = FetchBudget::new(request_bytes_max);
        let reads = (0..10_000).filter(|_| budget.take(1) > 0).count();
        assert_eq!(reads, request_bytes_max / FETCH_PARTITION_BYTES_MIN);
        // A partition asking for more than the minimum gets what it asks.
        let mut budget = FetchBudget::new(request_bytes_max);
        assert_eq!(budget.take(1 << 20), 1 << 20);
        assert_eq!(budget.take(1), 1, "within what is left, a small ask is served as asked");
        // The last partition gets what is left, however little.
        let mut budget = FetchBudget::new(FETCH_PARTITION_BYTES_MIN + 10);
        assert_eq!(budget.take(i32::MAX), FETCH_PARTITION_BYTES_MIN + 10);
        assert_eq!(budget.take(1), 0);
    }
}
