//! HttpSource: a webhook receiver. It listens on `http.listener`, takes
//! POSTs on `http.path`, and writes each request's body (or each element of
//! a JSON array body, with `http.batch.array=true`) as one record to
//! `topic`.
//!
//! A sender's 200 means durable: the request waits until the worker has the
//! cluster's acknowledgement of every record it made (the worker tells the
//! task through `SourceTask::poll_acknowledged`). Anything else (503 while
//! the task is paused or stopping, a timeout, a task that failed) means
//! "send it again", so delivery is at-least-once for the sender: a request
//! answered 503 after its records were written is written again when
//! retried. Bodies are bounded (`http.body.bytes.max`, 413 beyond), and so
//! are requests in flight (`http.requests.inflight.max`, 503 beyond).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{Semaphore, oneshot};

use crate::connector::{
    ConfigKey, ConfigReport, ConfigType, Connector, Importance, OffsetStorageReader, SourceConnector, SourceTask,
    validate_parsed,
};
use crate::data::SchemaAndValue;
use crate::error::{ConnectError, Result};
use crate::limits::{
    HTTP_SOURCE_ARRAY_ELEMENTS_MAX, HTTP_SOURCE_BODY_BYTES_MAX, HTTP_SOURCE_POLL_RECORDS_MAX,
    HTTP_SOURCE_POLL_STALE_MS, HTTP_SOURCE_REQUESTS_INFLIGHT_MAX, TASK_IDLE_WAIT_MS,
};
use crate::props::Props;
use crate::record::{ConnectRecord, SourceRecord};

const LISTENER_CONFIG: &str = "http.listener";
const PATH_CONFIG: &str = "http.path";
const TOPIC_CONFIG: &str = "topic";
const BATCH_ARRAY_CONFIG: &str = "http.batch.array";
const BODY_BYTES_MAX_CONFIG: &str = "http.body.bytes.max";
const INFLIGHT_MAX_CONFIG: &str = "http.requests.inflight.max";
const ACK_TIMEOUT_MS_CONFIG: &str = "http.ack.timeout.ms";
const GROUP: &str = "HttpSource";

fn keys() -> Vec<ConfigKey> {
    let key = |name, config_type, default, importance, documentation| ConfigKey {
        name,
        config_type,
        default,
        importance,
        documentation,
        group: GROUP,
    };
    vec![
        key(LISTENER_CONFIG, ConfigType::String, None, Importance::High, "host:port to listen on"),
        key(PATH_CONFIG, ConfigType::String, Some("/"), Importance::Medium, "The path POSTs are taken on"),
        key(TOPIC_CONFIG, ConfigType::String, None, Importance::High, "The topic records are written to"),
        key(
            BATCH_ARRAY_CONFIG,
            ConfigType::Boolean,
            Some("false"),
            Importance::Medium,
            "true: a body is a JSON array, one record per element; false: one record per body",
        ),
        key(BODY_BYTES_MAX_CONFIG, ConfigType::Int, Some("1048576"), Importance::Medium, "Larger bodies get 413"),
        key(INFLIGHT_MAX_CONFIG, ConfigType::Int, Some("64"), Importance::Low, "Requests held at once; more get 503"),
        key(
            ACK_TIMEOUT_MS_CONFIG,
            ConfigType::Int,
            Some("30000"),
            Importance::Low,
            "How long a request waits for its records' acknowledgement before 503",
        ),
    ]
}

/// A validated HttpSource configuration.
#[derive(Debug, Clone)]
pub struct HttpSourceConfig {
    listener: SocketAddr,
    path: String,
    topic: String,
    batch_array: bool,
    body_bytes_max: usize,
    requests_inflight_max: usize,
    ack_timeout_ms: u64,
}

fn int_in(props: &Props, key: &'static str, default: u64, min: u64, max: u64) -> Result<u64, (&'static str, String)> {
    let Some(text) = props.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) else {
        return Ok(default);
    };
    match text.parse::<u64>() {
        Ok(value) if (min..=max).contains(&value) => Ok(value),
        _ => Err((key, format!("{key} must be an integer from {min} to {max}, not {text:?}"))),
    }
}

impl HttpSourceConfig {
    pub fn parse(props: &Props) -> Result<HttpSourceConfig, (&'static str, String)> {
        let listener_text = props.get(LISTENER_CONFIG).map(|v| v.trim()).unwrap_or_default();
        let listener = std::net::ToSocketAddrs::to_socket_addrs(listener_text)
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| (LISTENER_CONFIG, format!("{LISTENER_CONFIG} {listener_text:?} is not a host:port")))?;
        let path = props.get(PATH_CONFIG).map(|v| v.trim()).filter(|v| !v.is_empty()).unwrap_or("/");
        if !path.starts_with('/') {
            return Err((PATH_CONFIG, format!("{PATH_CONFIG} {path:?} must start with /")));
        }
        let topic = props.get(TOPIC_CONFIG).map(|v| v.trim()).unwrap_or_default();
        if topic.is_empty() || topic.contains(',') {
            return Err((TOPIC_CONFIG, format!("{TOPIC_CONFIG} must name one topic, not {topic:?}")));
        }
        let batch_array = match props.get(BATCH_ARRAY_CONFIG).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err((BATCH_ARRAY_CONFIG, format!("{BATCH_ARRAY_CONFIG} must be true or false, not {other:?}")));
            }
        };
        Ok(HttpSourceConfig {
            listener,
            path: path.to_string(),
            topic: topic.to_string(),
            batch_array,
            body_bytes_max: int_in(props, BODY_BYTES_MAX_CONFIG, 1024 * 1024, 1, HTTP_SOURCE_BODY_BYTES_MAX as u64)?
                as usize,
            requests_inflight_max: int_in(props, INFLIGHT_MAX_CONFIG, 64, 1, HTTP_SOURCE_REQUESTS_INFLIGHT_MAX as u64)?
                as usize,
            ack_timeout_ms: int_in(props, ACK_TIMEOUT_MS_CONFIG, 30_000, 1, 600_000)?,
        })
    }
}

#[derive(Debug, Default)]
pub struct HttpSourceConnector {
    props: Props,
}

impl Connector for HttpSourceConnector {
    fn config_def(&self) -> Vec<ConfigKey> {
        keys()
    }

    fn validate(&self, props: &Props) -> Vec<ConfigReport> {
        validate_parsed(&keys(), props, HttpSourceConfig::parse)
    }

    fn start(&mut self, props: &Props) -> Result<()> {
        HttpSourceConfig::parse(props).map_err(|(_, message)| ConnectError::Config(message))?;
        self.props = props.clone();
        Ok(())
    }

    fn task_configs(&self, _tasks_max: usize) -> Vec<Props> {
        // One listener, so one task.
        vec![self.props.clone()]
    }
}

impl SourceConnector for HttpSourceConnector {
    fn create_task(&self) -> Box<dyn SourceTask> {
        Box::new(HttpSourceTask::default())
    }
}

/// One request's records and the way to answer it once they are durable.
struct Submission {
    values: Vec<String>,
    acknowledged: oneshot::Sender<()>,
}

/// What the HTTP handlers and the task share.
struct Shared {
    config: HttpSourceConfig,
    submissions: SyncSender<Submission>,
    inflight: Semaphore,
    stopping: AtomicBool,
    /// When the worker last polled, in ms since `started`.
    last_poll_ms: AtomicU64,
    started: Instant,
}

impl Shared {
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The worker is not polling: paused, stopping, or stuck on the cluster.
    fn not_polling(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
            || self.elapsed_ms().saturating_sub(self.last_poll_ms.load(Ordering::Acquire)) > HTTP_SOURCE_POLL_STALE_MS
    }
}

#[derive(Default)]
pub struct HttpSourceTask {
    running: Option<Running>,
}

struct Running {
    shared: Arc<Shared>,
    submissions: Receiver<Submission>,
    /// Per non-empty poll not yet acknowledged, the requests it answers.
    unacknowledged: VecDeque<Vec<oneshot::Sender<()>>>,
    /// A request's records not yet handed out (a poll takes whole requests
    /// up to HTTP_SOURCE_POLL_RECORDS_MAX records; the rest waits here).
    held: Option<Submission>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<std::thread::JoinHandle<()>>,
}

impl SourceTask for HttpSourceTask {
    fn start(&mut self, props: &Props, _offsets: &dyn OffsetStorageReader) -> Result<()> {
        let config = HttpSourceConfig::parse(props).map_err(|(_, message)| ConnectError::Config(message))?;
        // Bound here, on the task's thread, so that a port in use fails the
        // task with the reason rather than a thread's log line.
        let listener = std::net::TcpListener::bind(config.listener)
            .map_err(|e| ConnectError::io(format!("HttpSource listening on {}", config.listener), e))?;
        listener.set_nonblocking(true).map_err(|e| ConnectError::io("HttpSource listener", e))?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(config.requests_inflight_max);
        let shared = Arc::new(Shared {
            inflight: Semaphore::new(config.requests_inflight_max),
            config,
            submissions: sender,
            stopping: AtomicBool::new(false),
            last_poll_ms: AtomicU64::new(0),
            started: Instant::now(),
        });
        let (shutdown, shutdown_signal) = oneshot::channel::<()>();
        let server_shared = shared.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConnectError::io("starting HttpSource's runtime", e))?;
        let server = std::thread::Builder::new()
            .name("http-source".into())
            .spawn(move || serve(runtime, listener, server_shared, shutdown_signal))
            .map_err(|e| ConnectError::io("starting HttpSource's thread", e))?;
        self.running = Some(Running {
            shared,
            submissions: receiver,
            unacknowledged: VecDeque::new(),
            held: None,
            shutdown: Some(shutdown),
            server: Some(server),
        });
        Ok(())
    }

    fn poll(&mut self) -> Result<Vec<SourceRecord>> {
        let Some(running) = self.running.as_mut() else {
            return Err(ConnectError::Task("HttpSourceTask was not started".into()));
        };
        if running.server.as_ref().is_some_and(|server| server.is_finished()) {
            // The listener failed (its error is logged): fail the task so
            // that its status says so, rather than run deaf.
            return Err(ConnectError::Task(format!(
                "HttpSource's listener on {} stopped",
                running.shared.config.listener
            )));
        }
        let shared = running.shared.clone();
        shared.last_poll_ms.store(shared.elapsed_ms(), Ordering::Release);
        let mut records = Vec::new();
        let mut answers = Vec::new();
        let mut next = match running.held.take() {
            Some(held) => Some(held),
            // A timeout and a closed channel both mean nothing now.
            None => running.submissions.recv_timeout(Duration::from_millis(TASK_IDLE_WAIT_MS)).ok(),
        };
        while let Some(submission) = next.take() {
            if !records.is_empty() && records.len() + submission.values.len() > HTTP_SOURCE_POLL_RECORDS_MAX {
                running.held = Some(submission);
                break;
            }
            for value in submission.values {
                records.push(SourceRecord {
                    // Nothing to resume from: a sender that got no 200 sends again.
                    source_partition: None,
                    source_offset: None,
                    record: ConnectRecord::new(
                        shared.config.topic.clone(),
                        SchemaAndValue::NULL,
                        SchemaAndValue::string(value),
                    ),
                });
            }
            answers.push(submission.acknowledged);
            next = running.submissions.try_recv().ok();
        }
        if !records.is_empty() {
            running.unacknowledged.push_back(answers);
        } else {
            // Empty arrays: nothing to wait for.
            for answer in answers {
                let _ = answer.send(());
            }
        }
        Ok(records)
    }

    fn poll_acknowledged(&mut self) {
        let Some(running) = self.running.as_mut() else { return };
        if let Some(answers) = running.unacknowledged.pop_front() {
            for answer in answers {
                // The sender may have gone (timed out): nothing to tell it.
                let _ = answer.send(());
            }
        }
    }

    fn stop(&mut self) {
        let Some(running) = self.running.take() else { return };
        let Running { shared, submissions, unacknowledged, held, shutdown, server } = running;
        shared.stopping.store(true, Ordering::Release);
        // Dropping what waits (acknowledgements not seen, requests not
        // polled, and the receiver, so that a request arriving now is
        // refused rather than queued) answers those senders 503 at once,
        // and the server's graceful shutdown does not wait for them.
        drop(unacknowledged);
        drop(held);
        drop(submissions);
        if let Some(shutdown) = shutdown {
            let _ = shutdown.send(());
        }
        // Joined, so that the port is free when the task is restarted.
        if let Some(server) = server
            && server.join().is_err()
        {
            tracing::error!("HttpSource's server thread panicked");
        }
    }
}

impl std::fmt::Debug for HttpSourceTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSourceTask").field("running", &self.running.is_some()).finish()
    }
}

impl Drop for HttpSourceTask {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    runtime: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: oneshot::Receiver<()>,
) {
    let address = shared.config.listener;
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%address, %error, "HttpSource cannot listen");
                return;
            }
        };
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let served = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = shutdown.await;
        });
        if let Err(error) = served.await {
            tracing::error!(%address, %error, "HttpSource's listener failed");
        }
    });
}

fn answer(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error_code": status.as_u16(), "message": message }).to_string();
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    if request.uri().path() != shared.config.path {
        return answer(StatusCode::NOT_FOUND, "no such path");
    }
    if request.method() != Method::POST {
        return answer(StatusCode::METHOD_NOT_ALLOWED, "only POST is accepted");
    }
    if shared.not_polling() {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "the task is paused or stopping");
    }
    let Ok(_permit) = shared.inflight.try_acquire() else {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "too many requests in flight");
    };
    let limit = shared.config.body_bytes_max;
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return answer(StatusCode::PAYLOAD_TOO_LARGE, &format!("the body is over {limit} bytes"));
    }
    let body = match axum::body::to_bytes(request.into_body(), limit).await {
        Ok(body) => body,
        Err(error) => {
            let too_long =
                std::error::Error::source(&error).is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            return if too_long {
                answer(StatusCode::PAYLOAD_TOO_LARGE, &format!("the body is over {limit} bytes"))
            } else {
                answer(StatusCode::BAD_REQUEST, &format!("reading the body: {error}"))
            };
        }
    };
    let values = match values_of(&body, shared.config.batch_array) {
        Ok(values) => values,
        Err(message) => return answer(StatusCode::BAD_REQUEST, &message),
    };
    let count = values.len();
    let (acknowledged, wait) = oneshot::channel();
    match shared.submissions.try_send(Submission { values, acknowledged }) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            return answer(StatusCode::SERVICE_UNAVAILABLE, "the task is not taking records");
        }
    }
    match tokio::time::timeout(Duration::from_millis(shared.config.ack_timeout_ms), wait).await {
        Ok(Ok(())) => {
            let body = serde_json::json!({ "records": count }).to_string();
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Ok(Err(_)) => answer(StatusCode::SERVICE_UNAVAILABLE, "the task stopped before the records were acknowledged"),
        Err(_) => answer(StatusCode::SERVICE_UNAVAILABLE, "the records were not acknowledged in time"),
    }
}

/// A body's record values: the body, or each element of its JSON array
/// exactly as sent.
fn values_of(body: &[u8], batch_array: bool) -> std::result::Result<Vec<String>, String> {
    if !batch_array {
        let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8 text".to_string())?;
        return Ok(vec![text.to_string()]);
    }
    let elements: Vec<Box<serde_json::value::RawValue>> =
        serde_json::from_slice(body).map_err(|e| format!("the body is not a JSON array: {e}"))?;
    // A 1 MiB body of `0,` is half a million records: each would be held
    // (a String each) until acknowledged, for every request in flight.
    if elements.len() > HTTP_SOURCE_ARRAY_ELEMENTS_MAX {
        return Err(format!("the array has {} elements, over {HTTP_SOURCE_ARRAY_ELEMENTS_MAX}", elements.len()));
    }
    Ok(elements.into_iter().map(|raw| raw.get().to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::props::parse;

    #[test]
    fn config_names_the_bad_key() {
        let good = HttpSourceConfig::parse(&parse("http.listener=127.0.0.1:0\ntopic=t\n").expect("props")).expect("ok");
        assert_eq!(good.path, "/");
        assert!(!good.batch_array);
        assert_eq!(good.body_bytes_max, 1024 * 1024);
        for (text, key) in [
            ("topic=t", LISTENER_CONFIG),
            ("http.listener=nohost\ntopic=t", LISTENER_CONFIG),
            ("http.listener=127.0.0.1:0", TOPIC_CONFIG),
            ("http.listener=127.0.0.1:0\ntopic=a,b", TOPIC_CONFIG),
            ("http.listener=127.0.0.1:0\ntopic=t\nhttp.path=events", PATH_CONFIG),
            ("http.listener=127.0.0.1:0\ntopic=t\nhttp.batch.array=yes", BATCH_ARRAY_CONFIG),
            ("http.listener=127.0.0.1:0\ntopic=t\nhttp.body.bytes.max=0", BODY_BYTES_MAX_CONFIG),
            ("http.listener=127.0.0.1:0\ntopic=t\nhttp.requests.inflight.max=100000", INFLIGHT_MAX_CONFIG),
        ] {
            let (bad, message) = HttpSourceConfig::parse(&parse(text).expect("props")).expect_err(text);
            assert_eq!(bad, key, "{text}: {message}");
        }
    }

    struct NoOffsets;

    impl OffsetStorageReader for NoOffsets {
        fn offset(&self, _partition: &crate::record::SourcePartition) -> Option<crate::record::SourceOffset> {
            None
        }
    }

    /// POSTs `body` from another thread; its status arrives on the channel.
    fn post(port: u16, body: &'static str) -> std::sync::mpsc::Receiver<u16> {
        use std::io::{Read, Write};
        let (status_tx, status_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let head =
                format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            stream.write_all(head.as_bytes()).expect("write");
            stream.write_all(body.as_bytes()).expect("write");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let _ = status_tx.send(status);
        });
        status_rx
    }

    fn started_task() -> (HttpSourceTask, u16) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let mut task = HttpSourceTask::default();
        let props = parse(&format!("http.listener=127.0.0.1:{port}\ntopic=hooks\n")).expect("props");
        task.start(&props, &NoOffsets).expect("start");
        (task, port)
    }

    fn poll_until_records(task: &mut HttpSourceTask) -> Vec<SourceRecord> {
        for _ in 0..100 {
            let records = task.poll().expect("poll");
            if !records.is_empty() {
                return records;
            }
        }
        panic!("no records polled");
    }

    #[test]
    fn a_request_is_answered_200_only_after_its_poll_was_acknowledged() {
        let (mut task, port) = started_task();
        let status = post(port, "hello");
        let records = poll_until_records(&mut task);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].record.topic, "hooks");
        assert_eq!(records[0].record.value, SchemaAndValue::string("hello"));
        // Polled but not yet acknowledged by the cluster: no answer yet.
        assert!(status.recv_timeout(Duration::from_millis(300)).is_err(), "answered before the acknowledgement");
        task.poll_acknowledged();
        assert_eq!(status.recv_timeout(Duration::from_secs(5)).expect("an answer"), 200);
        task.stop();
    }

    #[test]
    fn a_task_stopped_before_the_acknowledgement_answers_503_and_frees_its_port() {
        let (mut task, port) = started_task();
        let status = post(port, "lost?");
        poll_until_records(&mut task);
        task.stop();
        assert_eq!(status.recv_timeout(Duration::from_secs(5)).expect("an answer"), 503);
        // The port is free again: a restarted task listens on it.
        let mut again = HttpSourceTask::default();
        let props = parse(&format!("http.listener=127.0.0.1:{port}\ntopic=hooks\n")).expect("props");
        again.start(&props, &NoOffsets).expect("the same port after a stop");
        again.stop();
    }

    #[test]
    fn a_json_array_body_gives_each_element_as_sent_and_anything_else_is_refused() {
        assert_eq!(
            values_of(br#"[{"a": 1.10}, "x", 12345678901234567890123]"#, true).expect("array"),
            [r#"{"a": 1.10}"#, r#""x""#, "12345678901234567890123"]
        );
        assert_eq!(values_of(b"[]", true).expect("empty"), Vec::<String>::new());
        for bad in [&b"{\"a\":1}"[..], b"[1,", b"", b"\xff"] {
            assert!(values_of(bad, true).is_err(), "{bad:?}");
        }
        let too_many = format!("[{}0]", "0,".repeat(HTTP_SOURCE_ARRAY_ELEMENTS_MAX));
        assert!(values_of(too_many.as_bytes(), true).is_err(), "over the element limit");
        assert_eq!(values_of(b"not json", false).expect("text"), ["not json"]);
        assert!(values_of(b"\xff\xfe", false).is_err());
    }
}
