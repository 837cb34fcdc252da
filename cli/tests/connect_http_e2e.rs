//! Spate Connect's HTTP connectors as a user runs them (issue 19): a real
//! `spate serve` and `spate connect standalone` with the ready configs from
//! `connect/config/`. HttpSink posts a topic to an HTTP server in this
//! process that fails requests (503s, a dropped connection) and loses a
//! worker to kill -9; HttpSource takes POSTs and answers 200 only for
//! records in the topic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Broker, SPATE, data_dir, free_port_below_ephemeral};

fn sample_config(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../connect/config").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Kafka's sample worker config pointed at `broker`, offsets in `dir`.
fn worker_properties(dir: &Path, broker: &Broker, extra: &str) -> PathBuf {
    let text = sample_config("connect-standalone.properties")
        .replace("bootstrap.servers=localhost:9400", &format!("bootstrap.servers={}", broker.addr()))
        .replace("/tmp/connect.offsets", &dir.join("connect.offsets").display().to_string());
    let path = dir.join("worker.properties");
    let rest_port = free_port_below_ephemeral();
    std::fs::write(&path, format!("{text}\nlisteners=http://127.0.0.1:{rest_port}\n{extra}\n")).expect("write");
    path
}

/// A sample connector config with some lines replaced.
fn connector_properties(dir: &Path, sample: &str, replace: &[(&str, &str)]) -> PathBuf {
    let mut text = sample_config(sample);
    for (from, to) in replace {
        assert!(text.contains(from), "{sample} has no {from:?}");
        text = text.replace(from, to);
    }
    let path = dir.join(sample);
    std::fs::write(&path, text).expect("write");
    path
}

struct ConnectWorker {
    child: Child,
    rest_port: u16,
}

impl ConnectWorker {
    fn start(dir: &Path, configs: &[&Path], run: usize) -> ConnectWorker {
        let log = dir.join(format!("worker-{run}.log"));
        let mut child = Command::new(SPATE)
            .args(["connect", "standalone"])
            .args(configs)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn spate connect standalone");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the start line");
        let rest_port = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|addr| addr.rsplit(':').next())
            .and_then(|port| port.parse().ok());
        let Some(rest_port) = rest_port else {
            let _ = child.kill();
            panic!("the worker did not start: {line:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        };
        ConnectWorker { child, rest_port }
    }

    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for ConnectWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn produce(broker: &Broker, topic: &str, lines: &[String]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let (ok, _, err) = common::cli(&["--brokers", &broker.addr(), "produce", topic], Some(text.as_bytes()));
    assert!(ok, "produce: {err}");
}

/// How the test server answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Accepted,
    Unavailable,
    /// Read the request, closed the connection without a word.
    Dropped,
}

#[derive(Debug, Clone)]
struct Received {
    answer: Answer,
    body: Vec<u8>,
    at: Instant,
}

/// An HTTP server that answers request `i` with `script(i)`; every request
/// (body and answer) is kept.
fn test_server(script: fn(usize) -> (Answer, Option<u64>)) -> (u16, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Some(body) = read_request(&mut stream) else { continue };
            let mut log = log.lock().unwrap();
            let (answer, retry_after_s) = script(log.len());
            log.push(Received { answer, body, at: Instant::now() });
            drop(log);
            let reply = match (answer, retry_after_s) {
                (Answer::Accepted, _) => {
                    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                }
                (Answer::Unavailable, Some(s)) => format!(
                    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {s}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                ),
                (Answer::Unavailable, None) => {
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                }
                (Answer::Dropped, _) => String::new(),
            };
            if answer == Answer::Accepted {
                // A slow server, so that the stream is still going when
                // the worker is killed.
                std::thread::sleep(Duration::from_millis(60));
            }
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    (port, received)
}

/// A request's body (by Content-Length), None when the client went away.
fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut data = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
        data.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok())?;
    while data.len() < head_end + length {
        let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
        data.extend_from_slice(&chunk[..n]);
    }
    Some(data[head_end..head_end + length].to_vec())
}

/// The `n` of each `{"n":...}` in a batch body.
fn numbers(body: &[u8]) -> Vec<u64> {
    let values: Vec<serde_json::Value> = serde_json::from_slice(body).expect("a JSON array body");
    values.iter().map(|v| v["n"].as_u64().expect("n")).collect()
}

fn records(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|n| format!(r#"{{"n":{n},"text":"record {n}"}}"#)).collect()
}

#[test]
fn http_sink_delivers_every_record_through_503s_a_dropped_connection_and_a_killed_worker() {
    let dir = data_dir("connect-http-sink");
    let broker = Broker::start(&dir.join("broker"), 1);
    // Three 503s (the second asks for a 1 s Retry-After), then a dropped
    // connection, then every request is accepted.
    let (port, received) = test_server(|i| match i {
        0 | 2 => (Answer::Unavailable, None),
        1 => (Answer::Unavailable, Some(1)),
        3 => (Answer::Dropped, None),
        _ => (Answer::Accepted, None),
    });
    let (ok, _, err) = common::cli(&["--brokers", &broker.addr(), "topic", "create", "events"], None);
    assert!(ok, "{err}");
    produce(&broker, "events", &records(0..500));

    let worker_config =
        worker_properties(&dir, &broker, "offset.flush.interval.ms=300\nconsumer.session.timeout.ms=3000");
    let url = format!("http.api.url=http://127.0.0.1:{port}/events");
    let sink = connector_properties(
        &dir,
        "connect-http-sink.properties",
        &[("http.api.url=http://localhost:8080/events", &url), ("retry.backoff.ms=3000", "retry.backoff.ms=50")],
    );
    let accepted = |received: &[Received]| -> Vec<u64> {
        received.iter().filter(|r| r.answer == Answer::Accepted).flat_map(|r| numbers(&r.body)).collect()
    };

    let worker = ConnectWorker::start(&dir, &[&worker_config, &sink], 1);
    // Records keep coming while the worker runs, dies and restarts.
    let producer = {
        let addr = broker.addr();
        std::thread::spawn(move || {
            for chunk in (500..3000).step_by(250) {
                let text: String = records(chunk..chunk + 250).iter().map(|l| format!("{l}\n")).collect();
                let (ok, _, err) = common::cli(&["--brokers", &addr, "produce", "events"], Some(text.as_bytes()));
                assert!(ok, "produce: {err}");
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // Killed mid-stream, once an offset was committed (after a 2xx only).
    let committed = || -> u64 {
        let (_, body) = http(worker.rest_port, "GET", "/connectors/http-sink/offsets", b"");
        let offsets: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        offsets["offsets"][0]["offset"]["kafka_offset"].as_u64().unwrap_or(0)
    };
    let mut committed_before_kill = 0;
    wait_for("a committed offset", Duration::from_secs(15), || {
        committed_before_kill = committed();
        committed_before_kill > 0
    });
    worker.kill9();
    let before_kill = received.lock().unwrap().clone();
    let accepted_before_kill = accepted(&before_kill);
    assert!(accepted_before_kill.len() < 3000, "killed mid-stream, not after it");
    assert!(accepted_before_kill.len() as u64 >= committed_before_kill, "committed only what the server accepted");

    let _worker = ConnectWorker::start(&dir, &[&worker_config, &sink], 2);
    wait_for("every record at the server", Duration::from_secs(15), || {
        accepted(&received.lock().unwrap()).into_iter().collect::<BTreeSet<_>>().len() == 3000
    });

    producer.join().expect("producer");
    let all = received.lock().unwrap().clone();
    // Nothing lost, and nothing invented.
    let got: BTreeSet<u64> = accepted(&all).into_iter().collect();
    assert_eq!(got, (0..3000).collect::<BTreeSet<u64>>());
    // A failed request is retried with the same body, at once after it.
    for (index, request) in all[..4].iter().enumerate() {
        assert_ne!(request.answer, Answer::Accepted);
        assert_eq!(all[index + 1].body, request.body, "request {index} was not retried as it was");
    }
    assert_eq!(numbers(&all[0].body).len(), 100, "batch.max.size=100 records per request");
    // Retry-After: 1 was honoured (the backoff alone is 100 ms there).
    assert!(all[2].at - all[1].at >= Duration::from_millis(950), "Retry-After ignored");
    // Before the kill every record was accepted once, in order: the
    // retries were of refused requests.
    assert_eq!(accepted_before_kill, (0..accepted_before_kill.len() as u64).collect::<Vec<_>>());
    // The restarted worker starts at a committed offset (at or after the
    // one seen before the kill, at or before what was accepted) and sends
    // the rest once: its only duplicates are that replay.
    let after_kill = accepted(&all[before_kill.len()..]);
    let resumed_at = after_kill[0];
    eprintln!(
        "committed {committed_before_kill} before the kill, {} accepted, resumed at {resumed_at}",
        accepted_before_kill.len()
    );
    assert!(resumed_at >= committed_before_kill, "resumed at {resumed_at}, before the commit {committed_before_kill}");
    assert!(resumed_at <= accepted_before_kill.len() as u64, "resumed at {resumed_at}: a gap");
    assert_eq!(after_kill, (resumed_at..3000).collect::<Vec<_>>());
}

/// One HTTP/1.1 request; (status, body).
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write");
    // A refused large body may be answered before it is all sent.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

fn topic_lines(broker: &Broker, topic: &str) -> Vec<String> {
    let (ok, out, err) =
        common::cli(&["--brokers", &broker.addr(), "consume", topic, "--from-beginning", "--exit"], None);
    assert!(ok, "consume: {err}");
    out.lines().map(str::to_string).collect()
}

#[test]
fn http_source_answers_200_only_for_records_in_the_topic_and_refuses_what_it_cannot_take() {
    let dir = data_dir("connect-http-source");
    let broker = Broker::start(&dir.join("broker"), 1);
    let worker_config = worker_properties(&dir, &broker, "");
    let port = free_port_below_ephemeral();
    let listener = format!("http.listener=127.0.0.1:{port}");
    let source = connector_properties(
        &dir,
        "connect-http-source.properties",
        &[
            ("http.listener=localhost:8090", &listener),
            ("http.batch.array=false", "http.batch.array=true"),
            ("http.body.bytes.max=1048576", "http.body.bytes.max=1024"),
        ],
    );
    let worker = ConnectWorker::start(&dir, &[&worker_config, &source], 1);
    wait_for("the webhook listener", Duration::from_secs(10), || http(port, "GET", "/events", b"").0 == 405);

    // Each element as sent (spacing, 1.10), in order; each 200 says how many.
    let mut sent = Vec::new();
    for request in 0..20 {
        let elements: Vec<String> =
            (0..5).map(|i| format!(r#"{{"id": {}, "price": 1.10}}"#, request * 5 + i)).collect();
        let (status, body) = http(port, "POST", "/events", format!("[{}]", elements.join(", ")).as_bytes());
        assert_eq!((status, body.as_str()), (200, r#"{"records":5}"#));
        sent.extend(elements);
    }
    assert_eq!(topic_lines(&broker, "webhooks"), sent, "a 200 means the records are in the topic");

    // What it cannot take is refused, and writes nothing.
    let large = format!("[\"{}\"]", "x".repeat(2000));
    assert_eq!(http(port, "POST", "/events", large.as_bytes()).0, 413);
    assert_eq!(http(port, "POST", "/events", b"[1, 2").0, 400);
    assert_eq!(http(port, "POST", "/events", br#"{"not": "an array"}"#).0, 400);
    assert_eq!(http(port, "POST", "/other", b"[1]").0, 404);

    // Paused: 503, so the sender comes back later; resumed: 200 again.
    assert_eq!(http(worker.rest_port, "PUT", "/connectors/http-source/pause", b"").0, 202);
    std::thread::sleep(Duration::from_millis(2500));
    let (status, body) = http(port, "POST", "/events", b"[\"while paused\"]");
    assert_eq!(status, 503, "{body}");
    assert_eq!(http(worker.rest_port, "PUT", "/connectors/http-source/resume", b"").0, 202);
    wait_for("200 after resume", Duration::from_secs(10), || {
        http(port, "POST", "/events", b"[\"after resume\"]").0 == 200
    });
    let mut expected = sent;
    expected.push("\"after resume\"".to_string());
    assert_eq!(topic_lines(&broker, "webhooks"), expected, "nothing from refused requests");
}
