//! Every limit of the Connect runtime, with its reason.

/// The largest REST request body: a connector config is a few kilobytes;
/// a megabyte leaves room for generous ones and keeps a hostile client from
/// making the worker buffer gigabytes.
pub const REST_BODY_BYTES_MAX: usize = 1024 * 1024;

/// The largest properties file the worker reads (worker or connector
/// config): far above any real one, and a bound on what a mistaken path
/// (a log file, a device) can make the worker read.
pub const PROPERTIES_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// How deep a YAML pipeline file may nest: a config is a few levels
/// (`transforms`, a transform, its keys); the bound keeps a file of
/// `[[[[...` from recursing the loader off its stack.
pub const PIPELINE_YAML_DEPTH_MAX: usize = 16;

/// The largest standalone offsets file read at start: each source partition
/// takes a line of JSON; this is room for hundreds of thousands.
pub const OFFSETS_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// How many bytes the file source reads from its file per read call.
pub const FILE_SOURCE_READ_BYTES: usize = 64 * 1024;

/// The longest line the file source buffers before it emits what it has as
/// a record: a file without newlines must not grow the buffer without end.
pub const FILE_SOURCE_LINE_BYTES_MAX: usize = 1024 * 1024;

/// How long a source or sink task waits before polling again when it has
/// nothing (or is paused); short enough that pause, resume and stop are
/// seen at once by a person.
pub const TASK_IDLE_WAIT_MS: u64 = 100;

/// How long the file source waits for more data at the end of its file,
/// as Kafka's FileStreamSourceTask waits (1 s there; less here, so a
/// quickstart feels immediate).
pub const FILE_SOURCE_EOF_WAIT_MS: u64 = 250;

/// How many of a source task's polls may be sent and not yet acknowledged
/// at once. Their acknowledgements are awaited oldest first, so offsets
/// still move in poll order over acknowledged records only; more than one
/// keeps the producer's pipeline full while the broker syncs (with one,
/// the file pipeline ran at a quarter of the CLI producer's rate, waiting
/// on each batch's fdatasync). The memory held is this many polls'
/// records (the file source's `batch.size`, 2000 lines by default).
pub const SOURCE_POLLS_IN_FLIGHT_MAX: usize = 16;

/// The sink's consumer poll timeout: a stop or pause waits at most this.
pub const SINK_POLL_MS: u64 = 200;

/// Tasks of one connector: each is a thread (and for sinks a group
/// member); a `tasks.max` typo of 100000 must be a config error, not a
/// worker that runs out of threads.
pub const TASKS_PER_CONNECTOR_MAX: usize = 1024;

/// Connectors on one worker, so that a REST client cannot make the worker
/// start threads without end.
pub const CONNECTORS_PER_WORKER_MAX: usize = 1024;

/// Creating a topic a task needs is tried this many times on retriable
/// errors (a broker restarting), `TOPIC_CREATE_BACKOFF_MS` apart, before
/// the task fails: half a minute, the client's request timeout.
pub const TOPIC_CREATE_ATTEMPTS_MAX: u32 = 30;
pub const TOPIC_CREATE_BACKOFF_MS: u64 = 1000;

/// The most records HttpSink puts in one request (`batch.max.size`).
pub const HTTP_SINK_BATCH_RECORDS_MAX: usize = 100_000;

/// The largest request body HttpSink may be configured to send
/// (`request.body.bytes.max`): a batch is built in memory before it is
/// sent, so this bounds a task's buffer.
pub const HTTP_SINK_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The longest HttpSink waits between two tries of a request, whatever
/// `retry.backoff.ms` doubled or a server's `Retry-After` ask for: a task
/// never looks hung for more than a few minutes.
pub const HTTP_SINK_BACKOFF_MS_MAX: u64 = 5 * 60 * 1000;

/// How much of an HTTP answer's body is kept (to show why a request was
/// rejected); the rest is not read.
pub const HTTP_ERROR_BODY_BYTES_MAX: usize = 4096;

/// The largest request body HttpSource may be configured to accept
/// (`http.body.bytes.max`); each request in flight holds its body.
pub const HTTP_SOURCE_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The most requests HttpSource may be configured to hold at once
/// (`http.requests.inflight.max`); more get 503 at once.
pub const HTTP_SOURCE_REQUESTS_INFLIGHT_MAX: usize = 4096;

/// The most records HttpSource hands the worker in one poll.
pub const HTTP_SOURCE_POLL_RECORDS_MAX: usize = 10_000;

/// The most elements of one JSON array body HttpSource takes (400
/// beyond): with the in-flight limit, this bounds the records held waiting
/// for acknowledgement, whatever the bodies are made of.
pub const HTTP_SOURCE_ARRAY_ELEMENTS_MAX: usize = 10_000;

/// HttpSource answers 503 when the worker has not polled it for this long:
/// the task is paused (or the cluster is stalled), and a sender is better
/// told to come back than kept waiting.
pub const HTTP_SOURCE_POLL_STALE_MS: u64 = 2000;

/// PostgreSQL keeps identifiers of at most NAMEDATALEN - 1 bytes and cuts
/// longer ones silently; the connectors refuse them instead.
pub const POSTGRES_IDENTIFIER_BYTES_MAX: usize = 63;

/// How long opening a PostgreSQL connection may take before it counts as
/// a transient failure (retried), unless the URL sets connect_timeout.
pub const POSTGRES_CONNECT_TIMEOUT_MS: u64 = 10_000;

/// The most rows the PostgreSQL sink writes in one transaction
/// (`batch.size`): a batch's rows and their parameters are held in memory
/// and its statements pipelined on one connection.
pub const POSTGRES_SINK_BATCH_ROWS_MAX: usize = 100_000;

/// The most parameters one PostgreSQL statement takes (the protocol's
/// count is a 16-bit integer); the sink's multi-row INSERTs stay under it.
pub const POSTGRES_STATEMENT_PARAMS_MAX: usize = 65_535;

/// The most rows the PostgreSQL sink puts in one INSERT: past a few
/// hundred a longer statement saves nothing more, and each distinct row
/// count is a statement prepared on the connection.
pub const POSTGRES_STATEMENT_ROWS_MAX: usize = 500;

/// The longest wait between two tries of a PostgreSQL batch
/// (`retry.backoff.ms`): a task never looks hung for more than minutes.
pub const POSTGRES_RETRY_BACKOFF_MS_MAX: u64 = 5 * 60 * 1000;

/// The most rows one incremental query of the PostgreSQL source returns
/// (`batch.max.rows`): one poll's records are held in memory.
pub const POSTGRES_SOURCE_BATCH_ROWS_MAX: usize = 100_000;

/// The PostgreSQL source sleeps in steps of at most this while it waits
/// for `poll.interval.ms`, so that pause and stop are seen.
pub const POSTGRES_SOURCE_WAIT_STEP_MS: u64 = 200;

const _: () = assert!(POSTGRES_SOURCE_WAIT_STEP_MS < 1000);
const _: () = assert!(POSTGRES_STATEMENT_ROWS_MAX <= POSTGRES_STATEMENT_PARAMS_MAX);
const _: () = assert!(HTTP_SOURCE_POLL_STALE_MS > 10 * TASK_IDLE_WAIT_MS);
const _: () = assert!(HTTP_ERROR_BODY_BYTES_MAX < HTTP_SINK_BODY_BYTES_MAX);
// A request's records always fit in one poll, so a request is answered
// after one acknowledgement.
const _: () = assert!(HTTP_SOURCE_ARRAY_ELEMENTS_MAX <= HTTP_SOURCE_POLL_RECORDS_MAX);
const _: () = assert!(FILE_SOURCE_READ_BYTES <= FILE_SOURCE_LINE_BYTES_MAX);
const _: () = assert!(SINK_POLL_MS < 1000 && TASK_IDLE_WAIT_MS < 1000);
