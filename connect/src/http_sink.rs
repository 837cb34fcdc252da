//! HttpSink: records of a topic become HTTP requests to one URL, in the
//! shape of Confluent's HTTP Sink connector's keys (`http.api.url`,
//! `request.method`, `http.headers`, `batch.max.size`, `max.retries`,
//! `retry.backoff.ms`, `request.timeout.ms`).
//!
//! Each request's body is a JSON array of the records' values (as
//! JsonConverter without schemas writes them), or the one value alone when
//! `batch.max.size=1`. A request is retried, with exponential backoff, on
//! connection errors, timeouts, 5xx and 429 (whose `Retry-After` is
//! honoured); any other answer outside 2xx is a rejection that fails the
//! task, or is logged and skipped under `errors.tolerance=all`. `flush`
//! returns only once every record `put` so far was accepted (2xx), and the
//! worker commits consumer offsets only after `flush`: at-least-once.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use spate_client::TopicPartition;

use crate::connector::{
    ConfigKey, ConfigReport, ConfigType, Connector, Importance, SinkConnector, SinkTask, validate_parsed,
};
use crate::converter::{Converter, JsonConverter};
use crate::error::{ConnectError, Result};
use crate::limits::{
    HTTP_ERROR_BODY_BYTES_MAX, HTTP_SINK_BACKOFF_MS_MAX, HTTP_SINK_BATCH_RECORDS_MAX, HTTP_SINK_BODY_BYTES_MAX,
};
use crate::props::Props;
use crate::record::SinkRecord;

const URL_CONFIG: &str = "http.api.url";
const METHOD_CONFIG: &str = "request.method";
const HEADERS_CONFIG: &str = "http.headers";
const HEADERS_SEPARATOR_CONFIG: &str = "http.headers.separator";
const BATCH_MAX_SIZE_CONFIG: &str = "batch.max.size";
const BODY_BYTES_MAX_CONFIG: &str = "request.body.bytes.max";
const MAX_RETRIES_CONFIG: &str = "max.retries";
const RETRY_BACKOFF_MS_CONFIG: &str = "retry.backoff.ms";
const REQUEST_TIMEOUT_MS_CONFIG: &str = "request.timeout.ms";
const GROUP: &str = "HttpSink";

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
        key(
            URL_CONFIG,
            ConfigType::String,
            None,
            Importance::High,
            "The URL requests are sent to (http://host:port/path)",
        ),
        key(METHOD_CONFIG, ConfigType::String, Some("POST"), Importance::High, "POST, PUT or PATCH"),
        key(
            HEADERS_CONFIG,
            ConfigType::String,
            Some(""),
            Importance::Medium,
            "Headers sent with every request, as Name:value pairs separated by http.headers.separator",
        ),
        key(HEADERS_SEPARATOR_CONFIG, ConfigType::String, Some("|"), Importance::Low, "Separator of http.headers"),
        key(
            BATCH_MAX_SIZE_CONFIG,
            ConfigType::Int,
            Some("500"),
            Importance::Medium,
            "Records per request (a JSON array of their values); 1 sends each value alone",
        ),
        key(BODY_BYTES_MAX_CONFIG, ConfigType::Int, Some("1048576"), Importance::Medium, "The largest request body"),
        key(
            MAX_RETRIES_CONFIG,
            ConfigType::Int,
            Some("10"),
            Importance::Medium,
            "Retries of a request before the task fails",
        ),
        key(
            RETRY_BACKOFF_MS_CONFIG,
            ConfigType::Int,
            Some("3000"),
            Importance::Medium,
            "The first retry's wait; each further retry waits twice as long (Retry-After wins when sent)",
        ),
        key(
            REQUEST_TIMEOUT_MS_CONFIG,
            ConfigType::Int,
            Some("30000"),
            Importance::Medium,
            "The limit on one request, connect to answer",
        ),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Post,
    Put,
    Patch,
}

impl Method {
    fn as_http(self) -> hyper::Method {
        match self {
            Method::Post => hyper::Method::POST,
            Method::Put => hyper::Method::PUT,
            Method::Patch => hyper::Method::PATCH,
        }
    }
}

/// A validated HttpSink configuration.
#[derive(Debug, Clone)]
pub struct HttpSinkConfig {
    uri: hyper::Uri,
    /// host:port, for the connection and the Host header.
    authority: String,
    method: Method,
    headers: Vec<(HeaderName, HeaderValue)>,
    batch_records_max: usize,
    body_bytes_max: usize,
    retries_max: u32,
    retry_backoff_ms: u64,
    request_timeout_ms: u64,
    tolerate_errors: bool,
}

/// A bad key: its name and what is wrong, for `config/validate`.
type KeyError = (&'static str, String);

fn int_in(props: &Props, key: &'static str, default: u64, min: u64, max: u64) -> Result<u64, KeyError> {
    let Some(text) = props.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) else {
        return Ok(default);
    };
    match text.parse::<u64>() {
        Ok(value) if (min..=max).contains(&value) => Ok(value),
        _ => Err((key, format!("{key} must be an integer from {min} to {max}, not {text:?}"))),
    }
}

fn parse_url(props: &Props) -> Result<(hyper::Uri, String), KeyError> {
    let text = props.get(URL_CONFIG).map(|v| v.trim()).unwrap_or_default();
    let uri: hyper::Uri = text.parse().map_err(|e| (URL_CONFIG, format!("{URL_CONFIG} {text:?} is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err((URL_CONFIG, format!("{URL_CONFIG} {text:?}: https is not supported yet"))),
        _ => return Err((URL_CONFIG, format!("{URL_CONFIG} {text:?} must start with http://"))),
    }
    let Some(host) = uri.host() else {
        return Err((URL_CONFIG, format!("{URL_CONFIG} {text:?} has no host")));
    };
    let authority = format!("{host}:{}", uri.port_u16().unwrap_or(80));
    Ok((uri, authority))
}

fn parse_headers(props: &Props) -> Result<Vec<(HeaderName, HeaderValue)>, KeyError> {
    let separator = props.get(HEADERS_SEPARATOR_CONFIG).map(String::as_str).filter(|s| !s.is_empty()).unwrap_or("|");
    let text = props.get(HEADERS_CONFIG).map(String::as_str).unwrap_or_default();
    let mut headers = Vec::new();
    for pair in text.split(separator).map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || (HEADERS_CONFIG, format!("{HEADERS_CONFIG}: {pair:?} is not a Name:value header"));
        let (name, value) = pair.split_once(':').ok_or_else(bad)?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
        let mut value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
        // Configured headers often carry credentials: Debug shows none.
        value.set_sensitive(true);
        headers.push((name, value));
    }
    Ok(headers)
}

impl HttpSinkConfig {
    pub fn parse(props: &Props) -> Result<HttpSinkConfig, (&'static str, String)> {
        let (uri, authority) = parse_url(props)?;
        let method = match props.get(METHOD_CONFIG).map(|m| m.trim().to_ascii_uppercase()).as_deref() {
            None | Some("") | Some("POST") => Method::Post,
            Some("PUT") => Method::Put,
            Some("PATCH") => Method::Patch,
            Some(other) => {
                return Err((METHOD_CONFIG, format!("{METHOD_CONFIG} must be POST, PUT or PATCH, not {other:?}")));
            }
        };
        let tolerate_errors = props.get("errors.tolerance").is_some_and(|v| v.trim().eq_ignore_ascii_case("all"));
        Ok(HttpSinkConfig {
            uri,
            authority,
            method,
            headers: parse_headers(props)?,
            batch_records_max: int_in(props, BATCH_MAX_SIZE_CONFIG, 500, 1, HTTP_SINK_BATCH_RECORDS_MAX as u64)?
                as usize,
            body_bytes_max: int_in(props, BODY_BYTES_MAX_CONFIG, 1024 * 1024, 16, HTTP_SINK_BODY_BYTES_MAX as u64)?
                as usize,
            retries_max: int_in(props, MAX_RETRIES_CONFIG, 10, 0, 1000)? as u32,
            retry_backoff_ms: int_in(props, RETRY_BACKOFF_MS_CONFIG, 3000, 0, HTTP_SINK_BACKOFF_MS_MAX)?,
            request_timeout_ms: int_in(props, REQUEST_TIMEOUT_MS_CONFIG, 30_000, 1, 600_000)?,
            tolerate_errors,
        })
    }

    fn as_array(&self) -> bool {
        self.batch_records_max > 1
    }
}

/// Collects values into request bodies: at most `records_max` values and
/// `bytes_max` bytes per body (brackets and commas counted).
#[derive(Debug)]
struct Batcher {
    records_max: usize,
    bytes_max: usize,
    as_array: bool,
    values: Vec<Bytes>,
    /// The body's size if sent now.
    body_bytes: usize,
}

/// A value too large for any request body.
#[derive(Debug, PartialEq, Eq)]
struct Oversized {
    value_bytes: usize,
}

impl Batcher {
    fn new(records_max: usize, bytes_max: usize, as_array: bool) -> Batcher {
        assert!(records_max >= 1);
        Batcher { records_max, bytes_max, as_array, values: Vec::new(), body_bytes: 0 }
    }

    fn body_bytes_with(&self, value: &Bytes) -> usize {
        match (self.as_array, self.values.is_empty()) {
            (false, _) => value.len(),
            (true, true) => value.len() + 2,
            (true, false) => self.body_bytes + 1 + value.len(),
        }
    }

    /// Adds a value; returns a full batch to send first when the value
    /// does not fit beside what is collected.
    fn push(&mut self, value: Bytes) -> Result<Option<Vec<Bytes>>, Oversized> {
        let alone = if self.as_array { value.len() + 2 } else { value.len() };
        if alone > self.bytes_max {
            return Err(Oversized { value_bytes: value.len() });
        }
        let full = if !self.values.is_empty()
            && (self.values.len() >= self.records_max || self.body_bytes_with(&value) > self.bytes_max)
        {
            self.take()
        } else {
            None
        };
        self.body_bytes = self.body_bytes_with(&value);
        self.values.push(value);
        debug_assert!(self.body_bytes <= self.bytes_max);
        Ok(full)
    }

    /// A batch that is full (sent now rather than at the next flush).
    fn take_full(&mut self) -> Option<Vec<Bytes>> {
        if self.values.len() >= self.records_max { self.take() } else { None }
    }

    fn take(&mut self) -> Option<Vec<Bytes>> {
        if self.values.is_empty() {
            return None;
        }
        self.body_bytes = 0;
        Some(std::mem::take(&mut self.values))
    }

    fn body(&self, values: &[Bytes]) -> Bytes {
        if !self.as_array {
            assert_eq!(values.len(), 1);
            return values[0].clone();
        }
        let mut body = Vec::with_capacity(values.iter().map(|v| v.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (index, value) in values.iter().enumerate() {
            if index > 0 {
                body.push(b',');
            }
            body.extend_from_slice(value);
        }
        body.push(b']');
        Bytes::from(body)
    }
}

/// How one request ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Accepted,
    /// Worth trying again (connection error, timeout, 5xx, 429).
    Retry {
        reason: String,
        retry_after_ms: Option<u64>,
    },
    /// The server refused the batch itself (4xx other than 429).
    Rejected {
        status: u16,
        body: String,
    },
}

fn classify(status: u16, retry_after: Option<&str>, body: String) -> Outcome {
    match status {
        200..=299 => Outcome::Accepted,
        429 | 500..=599 => Outcome::Retry {
            reason: format!("HTTP {status}"),
            // Only delta-seconds; an HTTP-date falls back to our backoff.
            retry_after_ms: retry_after.and_then(|v| v.trim().parse::<u64>().ok()).map(|s| s.saturating_mul(1000)),
        },
        _ => Outcome::Rejected { status, body },
    }
}

/// The wait before retry number `retry` (0 for the first): the server's
/// Retry-After when it sent one, else `base_ms` doubled per retry; both
/// capped, so a hostile `Retry-After: 99999999` cannot park the task.
fn backoff_ms(base_ms: u64, retry: u32, retry_after_ms: Option<u64>) -> u64 {
    let exponential = base_ms.saturating_mul(1u64.checked_shl(retry.min(32)).unwrap_or(u64::MAX));
    retry_after_ms.unwrap_or(exponential).min(HTTP_SINK_BACKOFF_MS_MAX)
}

#[derive(Debug, Default)]
pub struct HttpSinkConnector {
    props: Props,
}

impl Connector for HttpSinkConnector {
    fn config_def(&self) -> Vec<ConfigKey> {
        keys()
    }

    fn validate(&self, props: &Props) -> Vec<ConfigReport> {
        validate_parsed(&keys(), props, HttpSinkConfig::parse)
    }

    fn start(&mut self, props: &Props) -> Result<()> {
        HttpSinkConfig::parse(props).map_err(|(_, message)| ConnectError::Config(message))?;
        self.props = props.clone();
        Ok(())
    }

    fn task_configs(&self, tasks_max: usize) -> Vec<Props> {
        // Each task is a consumer in the connector's group: they share the
        // partitions, and each posts what it reads.
        vec![self.props.clone(); tasks_max.max(1)]
    }
}

impl SinkConnector for HttpSinkConnector {
    fn create_task(&self) -> Box<dyn SinkTask> {
        Box::new(HttpSinkTask::default())
    }
}

#[derive(Default)]
pub struct HttpSinkTask {
    started: Option<Started>,
}

impl std::fmt::Debug for HttpSinkTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let config = self.started.as_ref().map(|s| &s.config);
        f.debug_struct("HttpSinkTask").field("config", &config).finish()
    }
}

struct Started {
    config: HttpSinkConfig,
    batcher: Batcher,
    converter: JsonConverter,
    /// The task thread drives its requests on a runtime of its own: sink
    /// tasks are plain threads, and one request at a time needs no more.
    runtime: tokio::runtime::Runtime,
}

impl SinkTask for HttpSinkTask {
    fn start(&mut self, props: &Props) -> Result<()> {
        let config = HttpSinkConfig::parse(props).map_err(|(_, message)| ConnectError::Config(message))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConnectError::io("starting HttpSink's runtime", e))?;
        let batcher = Batcher::new(config.batch_records_max, config.body_bytes_max, config.as_array());
        self.started = Some(Started { config, batcher, converter: JsonConverter { schemas_enable: false }, runtime });
        Ok(())
    }

    fn put(&mut self, records: Vec<SinkRecord>) -> Result<()> {
        let Some(started) = self.started.as_mut() else {
            return Err(ConnectError::Task("HttpSinkTask was not started".into()));
        };
        for record in records {
            let converted = started.converter.from_connect_data(&record.record.topic, &record.record.value);
            let value = match converted {
                Ok(value) => value.unwrap_or_else(|| Bytes::from_static(b"null")),
                // A value JSON cannot hold (a NaN): as an oversized one.
                Err(error) if started.config.tolerate_errors => {
                    tracing::warn!(%error, offset = record.kafka_offset, "HttpSink skipped a record");
                    continue;
                }
                Err(error) => return Err(error),
            };
            match started.batcher.push(value) {
                Ok(Some(full)) => started.send(full)?,
                Ok(None) => {}
                Err(Oversized { value_bytes }) => {
                    let message = format!(
                        "the record at {}/{}@{} is {value_bytes} bytes as JSON, over {BODY_BYTES_MAX_CONFIG}={}",
                        record.record.topic,
                        record.record.kafka_partition.unwrap_or(-1),
                        record.kafka_offset,
                        started.config.body_bytes_max
                    );
                    if !started.config.tolerate_errors {
                        return Err(ConnectError::Data(message));
                    }
                    tracing::warn!("HttpSink skipped a record: {message}");
                }
            }
            if let Some(full) = started.batcher.take_full() {
                started.send(full)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, _offsets: &BTreeMap<TopicPartition, i64>) -> Result<()> {
        let Some(started) = self.started.as_mut() else { return Ok(()) };
        match started.batcher.take() {
            Some(rest) => started.send(rest),
            None => Ok(()),
        }
    }
}

impl Started {
    /// Sends one batch until it is accepted, retrying what is worth it.
    fn send(&mut self, values: Vec<Bytes>) -> Result<()> {
        let body = self.batcher.body(&values);
        assert!(body.len() <= self.config.body_bytes_max);
        let mut retry = 0u32;
        loop {
            let outcome = self.runtime.block_on(request(&self.config, body.clone()));
            match outcome {
                Outcome::Accepted => return Ok(()),
                Outcome::Rejected { status, body } => {
                    let error = ConnectError::HttpRejected {
                        url: self.config.uri.to_string(),
                        status,
                        records: values.len(),
                        body,
                    };
                    if !self.config.tolerate_errors {
                        return Err(error);
                    }
                    tracing::warn!(%error, "HttpSink skipped a rejected batch (errors.tolerance=all)");
                    return Ok(());
                }
                Outcome::Retry { reason, retry_after_ms } => {
                    if retry >= self.config.retries_max {
                        return Err(ConnectError::HttpUnavailable {
                            url: self.config.uri.to_string(),
                            attempts: retry + 1,
                            last: reason,
                        });
                    }
                    let wait_ms = backoff_ms(self.config.retry_backoff_ms, retry, retry_after_ms);
                    tracing::warn!(url = %self.config.uri, %reason, wait_ms, "HttpSink retrying a batch");
                    std::thread::sleep(Duration::from_millis(wait_ms));
                    retry += 1;
                }
            }
        }
    }
}

/// One request on a fresh connection, bounded by `request.timeout.ms` from
/// connect to the last byte of the answer.
async fn request(config: &HttpSinkConfig, body: Bytes) -> Outcome {
    let timeout = Duration::from_millis(config.request_timeout_ms);
    match tokio::time::timeout(timeout, request_unbounded(config, body)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(reason)) => Outcome::Retry { reason, retry_after_ms: None },
        Err(_) => {
            Outcome::Retry { reason: format!("no answer within {}ms", config.request_timeout_ms), retry_after_ms: None }
        }
    }
}

async fn request_unbounded(config: &HttpSinkConfig, body: Bytes) -> std::result::Result<Outcome, String> {
    let stream = tokio::net::TcpStream::connect(&config.authority)
        .await
        .map_err(|e| format!("connecting to {}: {e}", config.authority))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let path = config.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut builder = Request::builder()
        .method(config.method.as_http())
        .uri(path)
        .header(hyper::header::HOST, config.authority.as_str());
    let has_content_type = config.headers.iter().any(|(name, _)| name == hyper::header::CONTENT_TYPE);
    if !has_content_type {
        builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    for (name, value) in &config.headers {
        builder = builder.header(name, value);
    }
    let request = builder.body(Full::new(body)).map_err(|e| format!("building the request: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("sending the request: {e}"))?;
    let status = response.status().as_u16();
    let retry_after =
        response.headers().get(hyper::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
    // The answer's body, bounded: a rejection's reason is worth showing,
    // a server that streams megabytes is not worth buffering.
    let text = match Limited::new(response.into_body(), HTTP_ERROR_BODY_BYTES_MAX).collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(_) => String::from("(answer body unreadable or too long)"),
    };
    driver.abort();
    Ok(classify(status, retry_after.as_deref(), text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::props::parse;

    fn config(text: &str) -> Result<HttpSinkConfig, (&'static str, String)> {
        HttpSinkConfig::parse(&parse(text).expect("props"))
    }

    #[test]
    fn config_takes_confluents_keys_and_refuses_bad_values_naming_the_key() {
        let good = config(
            "http.api.url=http://localhost:8080/events?x=1\nbatch.max.size=10\n\
             http.headers=Content-Type:application/json|Authorization:Bearer x\nrequest.method=put\n",
        )
        .expect("valid");
        assert_eq!(good.authority, "localhost:8080");
        assert_eq!(good.method, Method::Put);
        assert_eq!(good.headers.len(), 2);
        assert_eq!(good.headers[1].1, "Bearer x");
        assert_eq!(good.batch_records_max, 10);
        assert_eq!(config("http.api.url=http://h/").expect("valid").authority, "h:80");
        for (text, key) in [
            ("", URL_CONFIG),
            ("http.api.url=localhost:8080", URL_CONFIG),
            ("http.api.url=https://h/", URL_CONFIG),
            ("http.api.url=ftp://h/", URL_CONFIG),
            ("http.api.url=http://h/\nbatch.max.size=0", BATCH_MAX_SIZE_CONFIG),
            ("http.api.url=http://h/\nbatch.max.size=ten", BATCH_MAX_SIZE_CONFIG),
            ("http.api.url=http://h/\nrequest.method=DELETE", METHOD_CONFIG),
            ("http.api.url=http://h/\nhttp.headers=NoColon", HEADERS_CONFIG),
            ("http.api.url=http://h/\nhttp.headers=Bad Name:x", HEADERS_CONFIG),
            ("http.api.url=http://h/\nrequest.timeout.ms=0", REQUEST_TIMEOUT_MS_CONFIG),
            ("http.api.url=http://h/\nrequest.body.bytes.max=99999999999", BODY_BYTES_MAX_CONFIG),
        ] {
            let (bad_key, message) = config(text).expect_err(text);
            assert_eq!(bad_key, key, "{text}: {message}");
        }
        let connector = HttpSinkConnector::default();
        let reports = connector.validate(&parse("http.api.url=ftp://h/").expect("props"));
        let url = reports.iter().find(|r| r.key.name == URL_CONFIG).expect("url report");
        assert_eq!(url.errors.len(), 1, "{:?}", url.errors);
    }

    fn values(n: usize, len: usize) -> Vec<Bytes> {
        (0..n).map(|i| Bytes::from(format!("{i:0len$}"))).collect()
    }

    #[test]
    fn batches_hold_at_most_batch_max_size_records_and_never_exceed_the_body_limit() {
        let mut batcher = Batcher::new(3, 1000, true);
        let mut sent = Vec::new();
        for value in values(7, 4) {
            if let Some(full) = batcher.push(value).expect("fits") {
                sent.push(full);
            }
            if let Some(full) = batcher.take_full() {
                sent.push(full);
            }
        }
        sent.extend(batcher.take());
        assert_eq!(sent.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
        assert_eq!(&batcher.body(&sent[0])[..], b"[0000,0001,0002]");

        // 10-byte values in 40-byte bodies: [a,b,c] is 34 bytes, a fourth
        // would make 45, so three per body; every body within the limit.
        let mut batcher = Batcher::new(100, 40, true);
        let mut bodies = Vec::new();
        for value in values(10, 10) {
            if let Some(full) = batcher.push(value).expect("fits") {
                bodies.push(batcher.body(&full));
            }
        }
        bodies.extend(batcher.take().map(|rest| batcher.body(&rest)));
        assert_eq!(bodies.iter().map(|b| b.len()).collect::<Vec<_>>(), [34, 34, 34, 12]);
        assert!(bodies.iter().all(|b| b.len() <= 40));

        // One record per request: the value alone, no array.
        let mut single = Batcher::new(1, 100, false);
        assert_eq!(single.push(Bytes::from_static(b"{\"a\":1}")).expect("fits"), None);
        let one = single.take_full().expect("full at one record");
        assert_eq!(&single.body(&one)[..], b"{\"a\":1}");

        // A value larger than any body is refused, not sent or buffered.
        let mut small = Batcher::new(10, 16, true);
        assert_eq!(small.push(Bytes::from(vec![b'1'; 15])), Err(Oversized { value_bytes: 15 }));
        assert!(small.take().is_none());
    }

    #[test]
    fn backoff_doubles_from_the_base_honours_retry_after_and_is_capped() {
        assert_eq!(backoff_ms(100, 0, None), 100);
        assert_eq!(backoff_ms(100, 1, None), 200);
        assert_eq!(backoff_ms(100, 4, None), 1600);
        assert_eq!(backoff_ms(100, 0, Some(2000)), 2000);
        assert_eq!(backoff_ms(100, 60, None), HTTP_SINK_BACKOFF_MS_MAX);
        assert_eq!(backoff_ms(100, 0, Some(u64::MAX)), HTTP_SINK_BACKOFF_MS_MAX);
    }

    #[test]
    fn only_connection_errors_5xx_and_429_are_retried() {
        assert_eq!(classify(200, None, String::new()), Outcome::Accepted);
        assert_eq!(classify(204, None, String::new()), Outcome::Accepted);
        assert_eq!(
            classify(429, Some("3"), String::new()),
            Outcome::Retry { reason: "HTTP 429".into(), retry_after_ms: Some(3000) }
        );
        assert_eq!(
            classify(503, Some("Wed, 21 Oct 2015 07:28:00 GMT"), String::new()),
            Outcome::Retry { reason: "HTTP 503".into(), retry_after_ms: None }
        );
        assert_eq!(classify(400, None, "bad".into()), Outcome::Rejected { status: 400, body: "bad".into() });
        assert_eq!(classify(301, None, String::new()), Outcome::Rejected { status: 301, body: String::new() });
    }

    /// A server that answers each connection with the next of `answers`
    /// (raw HTTP) and counts requests.
    fn scripted_server(answers: Vec<&'static str>) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for (answer, stream) in answers.into_iter().zip(listener.incoming()) {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                // Enough of the request: its head and the small body.
                while !request.ends_with(b"]") && !request.ends_with(b"\"") {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        (port, count)
    }

    fn string_record(offset: i64) -> SinkRecord {
        SinkRecord {
            record: crate::record::ConnectRecord::new(
                "t",
                crate::data::SchemaAndValue::NULL,
                crate::data::SchemaAndValue::string("x"),
            ),
            kafka_offset: offset,
        }
    }

    const TOO_MANY: &str =
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    const BAD: &str = "HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\nConnection: close\r\n\r\nno such key";
    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

    #[test]
    fn a_429_is_retried_and_a_400_fails_the_flush_unless_errors_are_tolerated() {
        let (port, count) = scripted_server(vec![TOO_MANY, OK, BAD]);
        let props = |extra: &str| {
            parse(&format!("http.api.url=http://127.0.0.1:{port}/\nretry.backoff.ms=1\nbatch.max.size=1\n{extra}"))
                .expect("props")
        };
        let mut task = HttpSinkTask::default();
        task.start(&props("")).expect("start");
        // batch.max.size=1: sent in put; the 429 is retried, then 200.
        task.put(vec![string_record(0)]).expect("accepted after a 429");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
        match task.put(vec![string_record(1)]) {
            Err(ConnectError::HttpRejected { status: 400, records: 1, body, .. }) => assert_eq!(body, "no such key"),
            other => panic!("expected HttpRejected, got {other:?}"),
        }
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3, "a 400 is not retried");

        let (port, count) = scripted_server(vec![BAD, OK]);
        let mut tolerant = HttpSinkTask::default();
        let props = parse(&format!("http.api.url=http://127.0.0.1:{port}/\nbatch.max.size=1\nerrors.tolerance=all\n"))
            .expect("props");
        tolerant.start(&props).expect("start");
        tolerant.put(vec![string_record(0), string_record(1)]).expect("the rejected one skipped");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn a_url_that_does_not_answer_fails_the_flush_after_the_retries_with_a_typed_error() {
        // A port nobody listens on: bind, take the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let mut task = HttpSinkTask::default();
        let props = parse(&format!("http.api.url=http://127.0.0.1:{port}/\nmax.retries=2\nretry.backoff.ms=1\n"))
            .expect("props");
        task.start(&props).expect("start");
        let record = SinkRecord {
            record: crate::record::ConnectRecord::new(
                "t",
                crate::data::SchemaAndValue::NULL,
                crate::data::SchemaAndValue::string("x"),
            ),
            kafka_offset: 0,
        };
        task.put(vec![record]).expect("buffered, not sent");
        match task.flush(&BTreeMap::new()) {
            Err(ConnectError::HttpUnavailable { attempts, .. }) => assert_eq!(attempts, 3),
            other => panic!("expected HttpUnavailable, got {other:?}"),
        }
    }
}
