//! Every limit of the runtime in one place, with its reason (as
//! `engine/src/limits.rs`).

/// Deliveries waiting between commits, at most: past it the runtime
/// commits early (flush, await, commit). Each pending delivery holds a
/// channel; with a long `commit.interval.ms` and a fast input the list
/// would otherwise grow with the input, not with the configuration.
pub const DELIVERIES_PENDING_MAX: usize = 100_000;

/// How long a restore waits for one fetch of a changelog partition. A
/// changelog's records up to the end offset read at the start all exist,
/// so a fetch comes back at once unless the broker is unwell.
pub const RESTORE_POLL_MS: u64 = 500;

/// Restores that see this many empty polls in a row (of
/// `RESTORE_POLL_MS` each) while short of the end offset give up with an
/// error rather than hang the application.
pub const RESTORE_EMPTY_POLLS_MAX: u32 = 120;

const _: () = assert!(DELIVERIES_PENDING_MAX >= 1);
const _: () =
    assert!(RESTORE_POLL_MS as u128 * RESTORE_EMPTY_POLLS_MAX as u128 >= 10_000, "give a restore at least 10 s");

/// The shortest segment of a persistent window or session store, as
/// Kafka's (`Math.max(retentionPeriod / 2, 60_000L)`): a short retention
/// would otherwise make a table per few records.
pub const SEGMENT_INTERVAL_MS_MIN: i64 = 60_000;

const _: () = assert!(SEGMENT_INTERVAL_MS_MIN > 0);

/// How much longer than its store a window or session store's changelog
/// keeps records (`retention.ms` is the store's retention plus this, with
/// `cleanup.policy=compact,delete`): Kafka's default of
/// `windowstore.changelog.additional.retention.ms`, one day, room for a
/// restore to find what the store still keeps even when clocks drift.
pub const WINDOW_CHANGELOG_ADDITIONAL_RETENTION_MS: i64 = 86_400_000;

/// Changelog bytes a restore applies to a persistent store between two
/// flushes (one durable redb transaction each): the store's in-memory
/// overlay stays below about this much whatever the changelog's size,
/// and a large restore pays an fsync per 64 MiB, not per fetch.
pub const RESTORE_FLUSH_BYTES: usize = 64 << 20;

const _: () = assert!(RESTORE_FLUSH_BYTES >= 1 << 20, "a flush per fetch or so would cost a sync each");
