//! Time windows, as Kafka Streams' `TimeWindows`: tumbling (advance ==
//! size) or hopping (advance < size), with a grace period after a
//! window's end during which late records still count.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::serde::{Serde, SerdeError, SerdeRef};

/// A window: [start_ms, end_ms) for time windows; for a session, the
/// times of its first and last records, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// A key in a window, the key of a windowed aggregation's table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Windowed<K> {
    pub key: K,
    pub window: Window,
}

/// Made only through its constructors, which keep `1 <= advance_ms <=
/// size_ms` and `grace_ms >= 0` (a zero advance would divide by zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindows {
    pub(crate) size_ms: i64,
    pub(crate) advance_ms: i64,
    pub(crate) grace_ms: i64,
}

impl TimeWindows {
    /// Tumbling windows of `size_ms`; a record after its window's end is dropped.
    pub fn of_size_with_no_grace(size_ms: i64) -> Self {
        TimeWindows::of_size_and_grace(size_ms, 0)
    }

    /// Tumbling windows of `size_ms` that accept records up to `grace_ms`
    /// of stream time after their end.
    pub fn of_size_and_grace(size_ms: i64, grace_ms: i64) -> Self {
        let size_ms = size_ms.max(1);
        TimeWindows { size_ms, advance_ms: size_ms, grace_ms: grace_ms.max(0) }
    }

    /// Hopping windows: a new one every `advance_ms` (at most the size).
    #[must_use]
    pub fn advance_by(mut self, advance_ms: i64) -> Self {
        self.advance_ms = advance_ms.clamp(1, self.size_ms);
        self
    }

    pub fn size_ms(&self) -> i64 {
        self.size_ms
    }
    pub fn advance_ms(&self) -> i64 {
        self.advance_ms
    }
    pub fn grace_ms(&self) -> i64 {
        self.grace_ms
    }

    /// The windows containing `timestamp_ms`, earliest first (as Kafka's
    /// `TimeWindows.windowsFor`).
    pub fn windows_for(&self, timestamp_ms: i64) -> Vec<Window> {
        let first_start_ms = (timestamp_ms.saturating_sub(self.size_ms).saturating_add(self.advance_ms)).max(0)
            / self.advance_ms
            * self.advance_ms;
        let mut windows = Vec::new();
        let mut start_ms = first_start_ms;
        while start_ms <= timestamp_ms {
            windows.push(Window { start_ms, end_ms: start_ms.saturating_add(self.size_ms) });
            start_ms = start_ms.saturating_add(self.advance_ms);
        }
        windows
    }
}

/// Sliding windows, as Kafka's `SlidingWindows`: windows of a fixed
/// length (`time_difference_ms`, both ends included) placed by the
/// records themselves. Each record at t has its left window [t - d, t],
/// and a right window [t + 1, t + 1 + d] once a later record falls in it:
/// a window exists for each set of records that can be that close, and is
/// made when a record enters or leaves it. A window is closed once stream
/// time passes its end by more than the grace period. Records before
/// `time_difference_ms` (an epoch's first window) share [0, d], as
/// Kafka's have no negative starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindows {
    pub(crate) time_difference_ms: i64,
    pub(crate) grace_ms: i64,
}

impl SlidingWindows {
    pub fn of_time_difference_with_no_grace(time_difference_ms: i64) -> Self {
        SlidingWindows::of_time_difference_and_grace(time_difference_ms, 0)
    }
    pub fn of_time_difference_and_grace(time_difference_ms: i64, grace_ms: i64) -> Self {
        SlidingWindows { time_difference_ms: time_difference_ms.max(1), grace_ms: grace_ms.max(0) }
    }
    pub fn time_difference_ms(&self) -> i64 {
        self.time_difference_ms
    }
    pub fn grace_ms(&self) -> i64 {
        self.grace_ms
    }
}

/// Session windows, as Kafka's `SessionWindows`: a key's records closer
/// than the inactivity gap form one session [first, last]; a record that
/// bridges two sessions merges them. A session is closed (late records
/// for it dropped) once its end is before stream time minus the grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionWindows {
    pub(crate) gap_ms: i64,
    pub(crate) grace_ms: i64,
}

impl SessionWindows {
    pub fn of_inactivity_gap_with_no_grace(gap_ms: i64) -> Self {
        SessionWindows::of_inactivity_gap_and_grace(gap_ms, 0)
    }
    pub fn of_inactivity_gap_and_grace(gap_ms: i64, grace_ms: i64) -> Self {
        SessionWindows { gap_ms: gap_ms.max(1), grace_ms: grace_ms.max(0) }
    }
    pub fn gap_ms(&self) -> i64 {
        self.gap_ms
    }
    pub fn grace_ms(&self) -> i64 {
        self.grace_ms
    }
}

/// How far apart in time two records of a stream-stream join may be, as
/// Kafka's `JoinWindows`: a record at t joins the other stream's records
/// of the same key from t - before_ms to t + after_ms; a record older
/// than stream time minus (after + grace) is dropped as late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinWindows {
    pub(crate) before_ms: i64,
    pub(crate) after_ms: i64,
    pub(crate) grace_ms: i64,
}

impl JoinWindows {
    pub fn of_time_difference_without_grace(difference_ms: i64) -> Self {
        JoinWindows::of_time_difference_and_grace(difference_ms, 0)
    }

    pub fn of_time_difference_and_grace(difference_ms: i64, grace_ms: i64) -> Self {
        let difference_ms = difference_ms.max(0);
        JoinWindows { before_ms: difference_ms, after_ms: difference_ms, grace_ms: grace_ms.max(0) }
    }

    /// How long a record's window reaches back in time (default: the difference).
    #[must_use]
    pub fn before(mut self, before_ms: i64) -> Self {
        self.before_ms = before_ms.max(0);
        self
    }

    /// How long a record's window reaches ahead in time (default: the difference).
    #[must_use]
    pub fn after(mut self, after_ms: i64) -> Self {
        self.after_ms = after_ms.max(0);
        self
    }

    /// The same windows seen from the other stream.
    pub(crate) fn reversed(self) -> Self {
        JoinWindows { before_ms: self.after_ms, after_ms: self.before_ms, grace_ms: self.grace_ms }
    }
}

/// Kafka's `TimeWindowedSerde`: the key's bytes, then the window start
/// (8 bytes, big-endian). The end is the start plus the window size.
pub struct TimeWindowedSerde<K> {
    inner: SerdeRef<K>,
    window_size_ms: i64,
}

impl<K> std::fmt::Debug for TimeWindowedSerde<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeWindowedSerde").field("window_size_ms", &self.window_size_ms).finish()
    }
}

impl<K: 'static> TimeWindowedSerde<K> {
    /// The serde of windowed keys of windows `window_size_ms` long.
    pub fn of(inner: SerdeRef<K>, window_size_ms: i64) -> SerdeRef<Windowed<K>> {
        Arc::new(TimeWindowedSerde { inner, window_size_ms })
    }
}

impl<K> Serde<Windowed<K>> for TimeWindowedSerde<K> {
    fn serialize(&self, topic: &str, data: &Windowed<K>) -> Result<Option<Bytes>, SerdeError> {
        let key = self.inner.serialize(topic, &data.key)?.unwrap_or_default();
        let mut bytes = BytesMut::with_capacity(key.len() + 8);
        bytes.put_slice(&key);
        bytes.put_i64(data.window.start_ms);
        Ok(Some(bytes.freeze()))
    }

    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<Windowed<K>, SerdeError> {
        let bytes = data.ok_or_else(|| SerdeError::Null { topic: topic.to_string() })?;
        let split = bytes.len().checked_sub(8).ok_or_else(|| SerdeError::Size {
            topic: topic.to_string(),
            type_name: "Windowed",
            expected_bytes: 8,
            actual_bytes: bytes.len(),
        })?;
        let mut start = [0u8; 8];
        start.copy_from_slice(&bytes[split..]);
        let start_ms = i64::from_be_bytes(start);
        let key = self.inner.deserialize(topic, Some(&bytes[..split]))?;
        Ok(Windowed { key, window: Window { start_ms, end_ms: start_ms.saturating_add(self.window_size_ms) } })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::serde::Serdes;

    #[test]
    fn hopping_windows_for_a_timestamp_match_kafka() {
        // Size 10, advance 5: 12 lies in [5,15) and [10,20).
        let windows = TimeWindows::of_size_with_no_grace(10).advance_by(5);
        let starts: Vec<i64> = windows.windows_for(12).iter().map(|w| w.start_ms).collect();
        assert_eq!(starts, vec![5, 10]);
        // Near zero no window starts before 0.
        let starts: Vec<i64> = windows.windows_for(3).iter().map(|w| w.start_ms).collect();
        assert_eq!(starts, vec![0]);
        // Tumbling: exactly one.
        assert_eq!(TimeWindows::of_size_with_no_grace(10).windows_for(19), vec![Window { start_ms: 10, end_ms: 20 }]);
    }

    #[test]
    fn windowed_serde_writes_key_then_big_endian_start() {
        let serde = TimeWindowedSerde::of(Serdes::string(), 60_000);
        let key = Windowed { key: "alice".to_string(), window: Window { start_ms: 60_000, end_ms: 120_000 } };
        let bytes = serde.serialize("t", &key).unwrap().unwrap();
        assert_eq!(&bytes[..5], b"alice");
        assert_eq!(&bytes[5..], &60_000i64.to_be_bytes());
        assert_eq!(serde.deserialize("t", Some(&bytes)).unwrap(), key);
        assert!(serde.deserialize("t", Some(b"abc")).is_err());
    }
}
