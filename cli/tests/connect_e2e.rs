//! Spate Connect as a Kafka Connect user runs it (issue 19): real `spate
//! serve` and `spate connect standalone` processes, Kafka's quickstart
//! configs from `connect/config/`, a worker killed with kill -9 in the
//! middle of a stream and started again, and the REST API on port 8083's
//! paths.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Broker, SPATE, data_dir, free_port_below_ephemeral};

fn sample_config(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../connect/config").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Kafka's sample worker config, pointed at `broker` with the offsets file
/// in `dir` (not /tmp: tests run side by side), REST on `rest_port`, and
/// `extra` lines.
fn worker_properties(dir: &Path, broker: &Broker, rest_port: u16, extra: &str) -> PathBuf {
    let text = sample_config("connect-standalone.properties")
        .replace("bootstrap.servers=localhost:9400", &format!("bootstrap.servers={}", broker.addr()))
        .replace("/tmp/connect.offsets", &dir.join("connect.offsets").display().to_string());
    let path = dir.join("worker.properties");
    std::fs::write(&path, format!("{text}\nlisteners=http://127.0.0.1:{rest_port}\n{extra}\n")).expect("write");
    path
}

/// Kafka's two connector samples, unchanged, copied into `dir` (their
/// `file` paths, test.txt and test.sink.txt, are relative to it).
fn connector_properties(dir: &Path) -> (PathBuf, PathBuf) {
    let source = dir.join("connect-file-source.properties");
    let sink = dir.join("connect-file-sink.properties");
    std::fs::write(&source, sample_config("connect-file-source.properties")).expect("write");
    std::fs::write(&sink, sample_config("connect-file-sink.properties")).expect("write");
    (source, sink)
}

/// A `spate connect standalone` process running in `dir`.
struct ConnectWorker {
    child: Child,
    rest_port: u16,
}

impl ConnectWorker {
    fn start(dir: &Path, configs: &[&Path], run: usize) -> ConnectWorker {
        let stderr = std::fs::File::create(dir.join(format!("worker-{run}.log"))).expect("log file");
        let mut child = Command::new(SPATE)
            .args(["connect", "standalone"])
            .args(configs)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn spate connect standalone");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the start line");
        // "spate connect standalone: REST API on http://127.0.0.1:PORT, N connectors".
        let rest_port = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|addr| addr.rsplit(':').next())
            .and_then(|port| port.parse().ok());
        let Some(rest_port) = rest_port else {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.join(format!("worker-{run}.log"))).unwrap_or_default();
            panic!("the worker did not start: {line:?}\n{log}");
        };
        ConnectWorker { child, rest_port }
    }

    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// SIGTERM; the worker must flush, commit and exit 0.
    fn stop(mut self) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().expect("kill");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "worker exited with {exit}");
    }
}

impl Drop for ConnectWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The complete lines of a file (a torn last line is not yet a line).
fn complete_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete.lines().map(str::to_string).collect()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn numbered_lines(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("line-{i:06} with text that is not just a number")).collect()
}

fn append(path: &Path, lines: &[String]) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    file.write_all(text.as_bytes()).expect("append");
}

#[test]
fn kafkas_quickstart_moves_every_line_file_to_topic_to_file_in_order() {
    let dir = data_dir("connect-quickstart");
    let broker = Broker::start(&dir.join("broker"), 1);
    let worker_config = worker_properties(&dir, &broker, free_port_below_ephemeral(), "");
    let (source, sink) = connector_properties(&dir);
    let source_file = dir.join("test.txt");
    let sink_file = dir.join("test.sink.txt");
    let first = numbered_lines(0..2000);
    append(&source_file, &first);

    let worker = ConnectWorker::start(&dir, &[&worker_config, &source, &sink], 1);
    wait_for("the first lines in the sink file", Duration::from_secs(20), || {
        complete_lines(&sink_file).len() >= first.len()
    });
    assert_eq!(complete_lines(&sink_file), first, "every line, once, in order");

    // Lines appended while it runs follow, as Kafka's quickstart shows.
    let more = numbered_lines(2000..2100);
    append(&source_file, &more);
    let all: Vec<String> = first.iter().chain(&more).cloned().collect();
    wait_for("the appended lines", Duration::from_secs(20), || complete_lines(&sink_file).len() >= all.len());
    assert_eq!(complete_lines(&sink_file), all);

    // The topic holds JsonConverter's envelope, as Kafka's worker writes it.
    let (ok, out, err) = common::cli(
        &["--brokers", &broker.addr(), "consume", "connect-test", "--from-beginning", "--count", "1"],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!(r#"{{"schema":{{"type":"string","optional":false}},"payload":"{}"}}"#, first[0]));

    // A clean stop writes the source's position: the whole file.
    worker.stop();
    let offsets = std::fs::read_to_string(dir.join("connect.offsets")).expect("offsets file");
    let size = std::fs::metadata(&source_file).expect("size").len();
    assert!(offsets.contains(&format!("\"position\":{size}")), "{offsets} should hold position {size}");
}

#[test]
fn a_worker_killed_mid_stream_and_restarted_delivers_every_line_at_least_once() {
    let dir = data_dir("connect-kill9");
    let broker = Broker::start(&dir.join("broker"), 1);
    // Offsets flushed and sink offsets committed every 500 ms, so the kill
    // lands between two commits; a short session, so the restarted worker's
    // sink gets the partition soon after the killed one's session ends.
    let worker_config = worker_properties(
        &dir,
        &broker,
        free_port_below_ephemeral(),
        "offset.flush.interval.ms=500\nconsumer.session.timeout.ms=3000",
    );
    let (source, sink) = connector_properties(&dir);
    let source_file = dir.join("test.txt");
    let sink_file = dir.join("test.sink.txt");
    let expected = numbered_lines(0..6000);
    append(&source_file, &expected[..1000]);

    let worker = ConnectWorker::start(&dir, &[&worker_config, &source, &sink], 1);
    // Keep writing while the worker runs and dies.
    let writer = {
        let (path, rest) = (source_file.clone(), expected[1000..].to_vec());
        std::thread::spawn(move || {
            for chunk in rest.chunks(250) {
                append(&path, chunk);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // Mid-stream: offsets stored at least once, lines still coming.
    wait_for("some lines in the sink and a first offset flush", Duration::from_secs(20), || {
        complete_lines(&sink_file).len() >= 1500 && dir.join("connect.offsets").exists()
    });
    worker.kill9();
    let before_kill = complete_lines(&sink_file);
    assert!(before_kill.len() < expected.len(), "the kill should land mid-stream");
    // Where the restarted source must resume: the stored byte position,
    // in whole lines (every line has the same length).
    let offsets = std::fs::read_to_string(dir.join("connect.offsets")).expect("offsets file");
    let position: usize = offsets
        .split("\"position\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no position in {offsets}"));
    let line_bytes = expected[0].len() + 1;
    assert_eq!(position % line_bytes, 0, "a stored position is at a line's end");
    let resume_line = position / line_bytes;
    assert!(resume_line > 0, "an offset was stored before the kill");

    let worker = ConnectWorker::start(&dir, &[&worker_config, &source, &sink], 2);
    writer.join().expect("writer");
    let wanted: std::collections::BTreeSet<&String> = expected.iter().collect();
    wait_for("every line after the restart", Duration::from_secs(30), || {
        let got = complete_lines(&sink_file);
        wanted.iter().all(|line| got.contains(line))
    });
    worker.stop();
    let got = complete_lines(&sink_file);
    assert_duplicates_are_replays(&expected, &before_kill, &got, resume_line);
    eprintln!("{} lines, {} written twice after kill -9 (at-least-once)", expected.len(), got.len() - expected.len());
}

/// What at-least-once allows after one kill: before it, the sink wrote a
/// prefix of the lines, in order. After it, the sink re-reads the topic from
/// its last commit (at or below what it had written); the topic holds the
/// first run's lines, then the restarted source's, which resume from the
/// last stored offset (at or below where the first run stopped). So the
/// rest of the file is at most two ascending runs of consecutive lines, the
/// second starting no later than the first ends, the last ending at the
/// last line; the second run starts at the source's stored position
/// (`resume_line`). Anything else (a gap, a line out of order, a torn or invented
/// line) is a bug.
fn assert_duplicates_are_replays(expected: &[String], before_kill: &[String], got: &[String], resume_line: usize) {
    assert_eq!(before_kill, &expected[..before_kill.len()], "before the kill: a prefix, in order, once");
    assert_eq!(&got[..before_kill.len()], before_kill, "what was written before the kill stays");
    let index_of: std::collections::BTreeMap<&String, usize> =
        expected.iter().enumerate().map(|(i, l)| (l, i)).collect();
    let after: Vec<usize> = got[before_kill.len()..]
        .iter()
        .map(|line| *index_of.get(line).unwrap_or_else(|| panic!("a line the source never had: {line:?}")))
        .collect();
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for index in after {
        match runs.last_mut() {
            Some((_, end)) if index == *end + 1 => *end = index,
            _ => runs.push((index, index)),
        }
    }
    assert!(!runs.is_empty() && runs.len() <= 2, "after the restart: {runs:?} runs of lines, not one or two");
    assert!(runs[0].0 <= before_kill.len(), "the sink resumed at line {}, past what it had written", runs[0].0);
    if let [(_, first_end), (second_start, _)] = runs[..] {
        assert!(second_start <= first_end + 1, "a gap: the source resumed at {second_start} after {first_end}");
        assert_eq!(second_start, resume_line, "the source resumes at its stored position");
    }
    assert_eq!(runs.last().map(|r| r.1), Some(expected.len() - 1), "the last line arrived last");
}

/// Every value of `topic` (one partition) a consumer at `isolation_level`
/// reads from the beginning to the end offset it is given.
fn read_topic(broker: &Broker, topic: &str, isolation_level: spate_client::IsolationLevel) -> Vec<String> {
    use spate_client::{Client, ClientConfig, Consumer, ConsumerConfig, SeekTo, TopicPartition};
    common::runtime().block_on(async {
        let client = Client::connect(ClientConfig { bootstrap: vec![broker.addr()], ..Default::default() })
            .await
            .expect("connect");
        let mut consumer =
            Consumer::new(client, ConsumerConfig { isolation_level, ..Default::default() }).expect("consumer");
        let tp = TopicPartition::new(topic, 0);
        consumer.assign(vec![tp.clone()]);
        consumer.seek(&tp, SeekTo::Earliest).await.expect("seek");
        let end = consumer.end_offsets(std::slice::from_ref(&tp)).await.expect("end offsets")[0].1;
        let mut values = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while consumer.position(&tp).is_none_or(|position| position < end) {
            assert!(Instant::now() < deadline, "reading {topic} to offset {end} timed out");
            for record in consumer.poll(Duration::from_millis(200)).await.expect("poll") {
                values.push(String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned());
            }
        }
        values
    })
}

#[test]
fn an_exactly_once_source_killed_mid_stream_delivers_every_line_once_to_read_committed() {
    use spate_client::IsolationLevel::{ReadCommitted, ReadUncommitted};
    let dir = data_dir("connect-eos-kill9");
    let broker = Broker::start(&dir.join("broker"), 1);
    // The offsets file is flushed every 300 ms, so that with exactly-once
    // off the kill lands after a flush and replays lines: with
    // exactly.once.source.support=disabled (and exactly.once.support=
    // requested) this test fails, 450 to 550 lines read twice.
    let worker_config = worker_properties(
        &dir,
        &broker,
        free_port_below_ephemeral(),
        "offset.flush.interval.ms=300\nexactly.once.source.support=enabled",
    );
    // A transaction every 400 ms over small polls: while lines keep
    // coming one is nearly always open with records in the log, so the
    // kill leaves one for the restarted worker's producer to fence and
    // abort (poll, the default boundary, commits through the same code
    // after every poll).
    let source = dir.join("eos-source.properties");
    std::fs::write(
        &source,
        "name=eos-file-source\nconnector.class=FileStreamSource\nfile=test.txt\ntopic=eos-lines\nbatch.size=50\n\
         exactly.once.support=required\ntransaction.boundary=interval\ntransaction.boundary.interval.ms=400\n\
         value.converter=org.apache.kafka.connect.storage.StringConverter\n",
    )
    .expect("write");
    let source_file = dir.join("test.txt");
    let expected = numbered_lines(0..4000);
    append(&source_file, &expected[..500]);

    let worker = ConnectWorker::start(&dir, &[&worker_config, &source], 1);
    let writer = {
        let (path, rest) = (source_file.clone(), expected[500..].to_vec());
        std::thread::spawn(move || {
            for chunk in rest.chunks(100) {
                append(&path, chunk);
                std::thread::sleep(Duration::from_millis(60));
            }
        })
    };
    wait_for("lines in the topic and a first offset flush", Duration::from_secs(20), || {
        dir.join("connect.offsets").exists() && read_topic(&broker, "eos-lines", ReadCommitted).len() >= 1000
    });
    worker.kill9();
    let before_kill = read_topic(&broker, "eos-lines", ReadCommitted).len();
    assert!(before_kill < expected.len(), "the kill should land mid-stream");

    let worker = ConnectWorker::start(&dir, &[&worker_config, &source], 2);
    writer.join().expect("writer");
    wait_for("every line after the restart", Duration::from_secs(30), || {
        read_topic(&broker, "eos-lines", ReadCommitted).len() >= expected.len()
    });
    worker.stop();
    let committed = read_topic(&broker, "eos-lines", ReadCommitted);
    let distinct: std::collections::BTreeSet<&String> = committed.iter().collect();
    assert_eq!(
        distinct.len(),
        committed.len(),
        "a line read twice: {} of {}",
        committed.len() - distinct.len(),
        committed.len()
    );
    assert_eq!(committed, expected, "every line, once, in order, read_committed");
    // The offsets topic holds the position after the last line, Kafka's key.
    let stored = read_topic(&broker, "connect-offsets", ReadCommitted);
    let size = std::fs::metadata(&source_file).expect("size").len();
    assert_eq!(stored.last().map(String::as_str), Some(format!("{{\"position\":{size}}}").as_str()));
    let everything = read_topic(&broker, "eos-lines", ReadUncommitted).len();
    eprintln!(
        "{} lines once; {before_kill} committed at the kill; {everything} in the log with aborted ones",
        committed.len()
    );

    // KIP-875 under exactly-once: offsets set while stopped go to the
    // offsets topic, where the resumed task reads them: it sends the last
    // 1000 lines again (committed: read_committed sees them twice now).
    let worker = ConnectWorker::start(&dir, &[&worker_config, &source], 3);
    let port = worker.rest_port;
    assert_eq!(http(port, "PUT", "/connectors/eos-file-source/stop", "").0, 204);
    let line_bytes = expected[0].len() + 1;
    let patch = serde_json::json!({"offsets": [{"partition": {"filename": "test.txt"}, "offset": {"position": 3000 * line_bytes}}]});
    let (code, body) = http(port, "PATCH", "/connectors/eos-file-source/offsets", &patch.to_string());
    assert_eq!(code, 200, "{body}");
    assert_eq!(http(port, "PUT", "/connectors/eos-file-source/resume", "").0, 202);
    wait_for("the last 1000 lines again", Duration::from_secs(20), || {
        read_topic(&broker, "eos-lines", ReadCommitted).len() >= expected.len() + 1000
    });
    worker.stop();
    let again = read_topic(&broker, "eos-lines", ReadCommitted);
    assert_eq!(&again[..expected.len()], &expected[..]);
    assert_eq!(&again[expected.len()..], &expected[3000..], "resumed at the offset set while stopped");
}

/// One HTTP/1.1 request; answers (status, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the REST port");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write");
    // A refused large body may be answered before it is all sent.
    let _ = stream.write_all(body.as_bytes());
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn connect_cli(port: u16, args: &[&str]) -> (bool, String, String) {
    let url = format!("http://127.0.0.1:{port}");
    let mut all = vec!["connect"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--url", &url]);
    common::cli(&all, None)
}

#[test]
fn rest_api_creates_pauses_resumes_and_deletes_connectors_with_kafkas_shapes() {
    let dir = data_dir("connect-rest");
    let broker = Broker::start(&dir.join("broker"), 1);
    let worker_config = worker_properties(&dir, &broker, free_port_below_ephemeral(), "offset.flush.interval.ms=500");
    let worker = ConnectWorker::start(&dir, &[&worker_config], 1);
    let port = worker.rest_port;

    let (status, body) = http(port, "GET", "/", "");
    assert_eq!(status, 200);
    assert!(json(&body)["version"].is_string());
    let (status, body) = http(port, "GET", "/connector-plugins", "");
    assert_eq!(status, 200);
    let classes: Vec<String> =
        json(&body).as_array().expect("list").iter().map(|p| p["class"].as_str().expect("class").to_string()).collect();
    assert!(classes.contains(&"org.apache.kafka.connect.file.FileStreamSourceConnector".to_string()));

    // A sink created from Kafka's sample file through `spate connect create`.
    let (_, sink) = connector_properties(&dir);
    let (ok, out, err) = connect_cli(port, &["create", sink.to_str().expect("path")]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["type"], "sink");
    // A source created by a plain POST, Kafka's body shape.
    let source_file = dir.join("test.txt");
    let create = serde_json::json!({"name": "src", "config": {
        "connector.class": "FileStreamSource", "tasks.max": "1", "file": source_file, "topic": "connect-test"}});
    let (status, body) = http(port, "POST", "/connectors", &create.to_string());
    assert_eq!(status, 201, "{body}");
    assert_eq!(json(&body)["tasks"][0], serde_json::json!({"connector": "src", "task": 0}));
    let (status, body) = http(port, "POST", "/connectors", &create.to_string());
    assert_eq!((status, json(&body)["error_code"].clone()), (409, serde_json::json!(409)), "{body}");

    let (status, body) = http(port, "GET", "/connectors", "");
    assert_eq!((status, json(&body)), (200, serde_json::json!(["local-file-sink", "src"])));
    let sink_file = dir.join("test.sink.txt");
    append(&source_file, &numbered_lines(0..10));
    wait_for("lines through src and the sink", Duration::from_secs(20), || complete_lines(&sink_file).len() == 10);
    let (ok, out, err) = connect_cli(port, &["status", "src"]);
    assert!(ok, "{err}");
    let status_json = json(&out);
    assert_eq!(status_json["connector"]["state"], "RUNNING");
    assert_eq!(status_json["tasks"][0]["state"], "RUNNING");
    assert_eq!(status_json["type"], "source");

    // Paused: nothing moves, and status says so; resumed: it catches up.
    let (ok, _, err) = connect_cli(port, &["pause", "src"]);
    assert!(ok, "{err}");
    wait_for("the task to show PAUSED", Duration::from_secs(5), || {
        json(&http(port, "GET", "/connectors/src/status", "").1)["tasks"][0]["state"] == "PAUSED"
    });
    assert_eq!(json(&http(port, "GET", "/connectors/src/status", "").1)["connector"]["state"], "PAUSED");
    append(&source_file, &numbered_lines(10..20));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(complete_lines(&sink_file).len(), 10, "a paused source reads nothing");
    let (ok, _, err) = connect_cli(port, &["resume", "src"]);
    assert!(ok, "{err}");
    wait_for("the lines held while paused", Duration::from_secs(20), || complete_lines(&sink_file).len() == 20);
    assert_eq!(complete_lines(&sink_file), numbered_lines(0..20));

    // KIP-875 offsets and KIP-558 active topics.
    let size = std::fs::metadata(&source_file).expect("size").len();
    wait_for("the source's offset at the end of its file", Duration::from_secs(10), || {
        json(&http(port, "GET", "/connectors/src/offsets", "").1)["offsets"][0]["offset"]["position"] == size
    });
    let (ok, out, err) = connect_cli(port, &["offsets", "src"]);
    assert!(ok, "{err}");
    let source_offsets = json(&out);
    assert_eq!(source_offsets["offsets"][0]["partition"]["filename"], source_file.display().to_string());
    wait_for("the sink's committed offset", Duration::from_secs(10), || {
        json(&http(port, "GET", "/connectors/local-file-sink/offsets", "").1)["offsets"]
            == serde_json::json!([{"partition": {"kafka_topic": "connect-test", "kafka_partition": 0}, "offset": {"kafka_offset": 20}}])
    });
    let (status, body) = http(port, "GET", "/connectors/src/topics", "");
    assert_eq!((status, json(&body)), (200, serde_json::json!({"src": {"topics": ["connect-test"]}})));

    // Config and tasks as Kafka shows them; a config update restarts it.
    let (status, body) = http(port, "GET", "/connectors/src/config", "");
    assert_eq!((status, json(&body)["topic"].clone()), (200, serde_json::json!("connect-test")));
    let (status, body) = http(port, "GET", "/connectors/src/tasks", "");
    assert_eq!(status, 200);
    assert_eq!(json(&body)[0]["id"], serde_json::json!({"connector": "src", "task": 0}));
    let mut config = create["config"].clone();
    config["batch.size"] = "100".into();
    let (status, body) = http(port, "PUT", "/connectors/src/config", &config.to_string());
    assert_eq!((status, json(&body)["config"]["batch.size"].clone()), (200, serde_json::json!("100")), "{body}");
    let (status, body) = http(port, "GET", "/connectors?expand=status", "");
    assert_eq!(status, 200);
    assert_eq!(json(&body)["src"]["status"]["connector"]["state"], "RUNNING");

    // Bad input: Kafka's error bodies, and the worker keeps running.
    let (status, body) = http(port, "GET", "/connectors/nope/status", "");
    assert_eq!(status, 404);
    assert_eq!(json(&body)["error_code"], 404);
    assert!(json(&body)["message"].as_str().expect("message").contains("nope"));
    let (status, body) = http(port, "POST", "/connectors", "{not json");
    assert_eq!((status, json(&body)["error_code"].clone()), (400, serde_json::json!(400)));
    let missing_class = serde_json::json!({"name": "bad", "config": {"tasks.max": "1"}});
    let (status, body) = http(port, "POST", "/connectors", &missing_class.to_string());
    assert_eq!(status, 400);
    assert!(json(&body)["message"].as_str().expect("message").contains("connector.class"), "{body}");
    let huge = format!("{{\"name\":\"big\",\"config\":{{\"x\":\"{}\"}}}}", "a".repeat(2 * 1024 * 1024));
    let (status, _) = http(port, "POST", "/connectors", &huge);
    assert_eq!(status, 413, "a body over 1 MiB is refused");
    let validate = serde_json::json!({"connector.class": "FileStreamSource", "tasks.max": "0", "name": "v"});
    let (status, body) =
        http(port, "PUT", "/connector-plugins/FileStreamSourceConnector/config/validate", &validate.to_string());
    assert_eq!(status, 200);
    let infos = json(&body);
    assert_eq!(infos["name"], "FileStreamSourceConnector");
    assert_eq!(infos["error_count"], 2, "tasks.max and the missing topic: {body}");

    // Restart and delete through the CLI.
    let (ok, out, err) = connect_cli(port, &["restart", "src"]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["name"], "src");
    let (ok, _, err) = connect_cli(port, &["delete", "src"]);
    assert!(ok, "{err}");
    let (ok, _, err) = connect_cli(port, &["status", "src"]);
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, out, err) = connect_cli(port, &["list"]);
    assert!(ok, "{err}");
    assert_eq!(json(&out), serde_json::json!(["local-file-sink"]));
    worker.stop();
}

#[test]
fn a_sink_transforms_records_and_sends_those_it_cannot_convert_to_the_dead_letter_topic() {
    let dir = data_dir("connect-dlq");
    let broker = Broker::start(&dir.join("broker"), 1);
    let worker_config = worker_properties(&dir, &broker, free_port_below_ephemeral(), "offset.flush.interval.ms=500");
    let (ok, _, err) = common::cli(&["--brokers", &broker.addr(), "topic", "create", "events"], None);
    assert!(ok, "{err}");
    let sink = dir.join("json-sink.properties");
    std::fs::write(
        &sink,
        "name=json-sink\nconnector.class=FileStreamSink\ntopics=events\nfile=events.txt\n\
         value.converter=org.apache.kafka.connect.json.JsonConverter\nvalue.converter.schemas.enable=false\n\
         transforms=tag,hide\n\
         transforms.tag.type=org.apache.kafka.connect.transforms.InsertField$Value\n\
         transforms.tag.static.field=source\ntransforms.tag.static.value=spate\n\
         transforms.hide.type=org.apache.kafka.connect.transforms.ReplaceField$Value\ntransforms.hide.exclude=secret\n\
         errors.tolerance=all\nerrors.deadletterqueue.topic.name=events-dlq\n\
         errors.deadletterqueue.context.headers.enable=true\n",
    )
    .expect("write");
    let worker = ConnectWorker::start(&dir, &[&worker_config, &sink], 1);
    let input = "{\"id\":1,\"secret\":\"s\"}\nnot json\n{\"id\":2}\n";
    let (ok, _, err) = common::cli(&["--brokers", &broker.addr(), "produce", "events"], Some(input.as_bytes()));
    assert!(ok, "{err}");
    let out = dir.join("events.txt");
    wait_for("the two good records", Duration::from_secs(20), || complete_lines(&out).len() >= 2);
    assert_eq!(complete_lines(&out), ["{id=1, source=spate}", "{id=2, source=spate}"]);
    let status = json(&http(worker.rest_port, "GET", "/connectors/json-sink/status", "").1);
    assert_eq!(
        status["tasks"][0]["state"], "RUNNING",
        "a bad record does not fail the task under errors.tolerance=all"
    );

    let (ok, dead, err) = common::cli(
        &["--brokers", &broker.addr(), "consume", "events-dlq", "--from-beginning", "--count", "1", "--format", "json"],
        None,
    );
    assert!(ok, "{err}");
    let dead = json(dead.trim());
    assert_eq!(dead["value"], "not json", "the record as it was consumed");
    let header = |name: &str| {
        dead["headers"].as_array().expect("headers").iter().find(|h| h["key"] == name).map(|h| h["value"].clone())
    };
    assert_eq!(header("__connect.errors.topic"), Some("events".into()));
    assert_eq!(header("__connect.errors.offset"), Some("1".into()));
    assert_eq!(header("__connect.errors.stage"), Some("VALUE_CONVERTER".into()));
    assert_eq!(header("__connect.errors.connector.name"), Some("json-sink".into()));
    worker.stop();
}

#[test]
fn yaml_pipelines_move_lines_from_a_file_through_a_topic_into_rotated_files_transformed() {
    let dir = data_dir("connect-yaml");
    let broker = Broker::start(&dir.join("broker"), 1);
    let rest_port = free_port_below_ephemeral();
    // The worker's file is YAML too, its keys nested where Kafka's share a prefix.
    let worker_config = dir.join("worker.yaml");
    std::fs::write(
        &worker_config,
        format!(
            "bootstrap.servers: {}\nkey.converter: org.apache.kafka.connect.storage.StringConverter\n\
             value.converter: org.apache.kafka.connect.storage.StringConverter\n\
             offset:\n  storage.file.filename: {}\n  flush.interval.ms: 500\n\
             listeners: http://127.0.0.1:{rest_port}\n",
            broker.addr(),
            dir.join("connect.offsets").display()
        ),
    )
    .expect("write");
    let source = dir.join("orders-source.yaml");
    std::fs::write(&source, "name: orders-from-file\nconnector: FileStreamSource\nfile: orders.jsonl\ntopic: orders\n")
        .expect("write");
    let sink = dir.join("orders-sink.yml");
    std::fs::write(
        &sink,
        "name: orders-to-file\nconnector.class: FileStreamSink\ntasks.max: 1\ntopics:\n  - orders\n\
         file: orders.txt\nfile.rotate.bytes: 40\nvalue.converter: org.apache.kafka.connect.json.JsonConverter\n\
         value.converter.schemas.enable: false\n\
         transforms:\n\
         \x20 - name: addSource\n    type: InsertField$Value\n    static.field: source\n    static.value: spate\n\
         \x20 - name: rename\n    type: org.apache.kafka.connect.transforms.ReplaceField$Value\n    renames: id:order_id\n\
         errors:\n  tolerance: all\n  deadletterqueue.topic.name: orders-dlq\n",
    )
    .expect("write");
    append(&dir.join("orders.jsonl"), &["{\"id\":1}".to_string(), "not json".to_string(), "{\"id\":2}".to_string()]);

    let worker = ConnectWorker::start(&dir, &[&worker_config, &source, &sink], 1);
    // 27 bytes a line, files of at most 40: the second line starts a new file.
    let rotated = dir.join("orders.txt.000001");
    let out = dir.join("orders.txt");
    let written = || [complete_lines(&rotated), complete_lines(&out)].concat();
    wait_for("the two good records", Duration::from_secs(20), || written().len() >= 2);
    assert_eq!(
        written(),
        ["{order_id=1, source=spate}", "{order_id=2, source=spate}"],
        "both transforms, in the order listed; the record JSON cannot read skipped; the file rotated"
    );
    let (ok, dead, err) =
        common::cli(&["--brokers", &broker.addr(), "consume", "orders-dlq", "--from-beginning", "--count", "1"], None);
    assert!(ok, "{err}");
    assert_eq!(dead.trim(), "not json", "errors.deadletterqueue.topic.name from the nested errors mapping");
    let config = json(&http(worker.rest_port, "GET", "/connectors/orders-to-file/config", "").1);
    assert_eq!(config["transforms"], "addSource,rename");
    assert_eq!(config["transforms.addSource.type"], "InsertField$Value");
    // `spate connect create` takes a YAML pipeline too (a source: it
    // joins no group, which would cost the test seconds).
    let again = dir.join("orders-again.yaml");
    std::fs::write(
        &again,
        "name: orders-again\nconnector: FileStreamSource\nfile: orders.jsonl\ntopic: orders-again\n",
    )
    .expect("write");
    let (ok, _, err) = connect_cli(worker.rest_port, &["create", again.to_str().expect("utf-8 path")]);
    assert!(ok, "{err}");
    let config = json(&http(worker.rest_port, "GET", "/connectors/orders-again/config", "").1);
    assert_eq!(config["connector.class"], "FileStreamSource");
    worker.stop();
}

#[test]
fn a_bad_connector_config_stops_the_worker_at_start_with_a_clear_error() {
    let dir = data_dir("connect-bad-config");
    let broker = Broker::start(&dir.join("broker"), 1);
    let worker_config = worker_properties(&dir, &broker, free_port_below_ephemeral(), "");
    let bad = dir.join("bad.properties");
    std::fs::write(&bad, "name=bad\nconnector.class=FileStreamSource\ntasks.max=0\n").expect("write");
    let output = Command::new(SPATE)
        .args(["connect", "standalone"])
        .arg(&worker_config)
        .arg(&bad)
        .current_dir(&dir)
        .output()
        .expect("run the worker");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tasks.max") && stderr.contains("topic"), "names both errors: {stderr}");
    // A YAML pipeline that cannot map names the file, the line and the key.
    let bad_yaml = dir.join("bad.yaml");
    std::fs::write(&bad_yaml, "name: bad\nconnector: FileStreamSink\ntopics: t\nfile:\n  - a.txt\n").expect("write");
    let output =
        Command::new(SPATE).args(["connect", "standalone"]).arg(&worker_config).arg(&bad_yaml).output().expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.yaml: line 5: file: a list where a single value is expected"), "{stderr}");
    let missing =
        Command::new(SPATE).args(["connect", "standalone", "/nonexistent/worker.properties"]).output().expect("run");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/worker.properties"));
}

#[test]
fn a_failed_task_restarts_and_a_stopped_connectors_offsets_can_be_reset_and_altered() {
    let dir = data_dir("connect-restart");
    let broker = Broker::start(&dir.join("broker"), 1);
    let worker_config = worker_properties(&dir, &broker, free_port_below_ephemeral(), "offset.flush.interval.ms=200");
    let worker = ConnectWorker::start(&dir, &[&worker_config], 1);
    let port = worker.rest_port;
    // A directory where the file should be: reading it fails the task.
    let input = dir.join("input");
    std::fs::create_dir_all(&input).expect("dir");
    let create = serde_json::json!({"name": "src", "config": {
        "connector.class": "FileStreamSource", "file": input, "topic": "restarted"}});
    let (status, body) = http(port, "POST", "/connectors", &create.to_string());
    assert_eq!(status, 201, "{body}");
    wait_for("the task to fail", Duration::from_secs(10), || {
        json(&http(port, "GET", "/connectors/src/status", "").1)["tasks"][0]["state"] == "FAILED"
    });
    let status = json(&http(port, "GET", "/connectors/src/status", "").1);
    assert_eq!(status["connector"]["state"], "RUNNING", "the connector itself did not fail");
    assert!(status["tasks"][0]["trace"].as_str().is_some_and(|t| t.contains("reading")), "{status}");
    let (code, body) = http(port, "GET", "/connectors/src/tasks/0/status", "");
    assert_eq!((code, json(&body)["state"].clone()), (200, serde_json::json!("FAILED")));

    // Fixed, then restarted: only the failed task, which now reads the file.
    std::fs::remove_dir(&input).expect("remove dir");
    append(&input, &numbered_lines(0..5));
    let (code, body) = http(port, "POST", "/connectors/src/restart?includeTasks=true&onlyFailed=true", "");
    assert_eq!(code, 202, "{body}");
    assert_eq!(json(&body)["name"], "src");
    let size = std::fs::metadata(&input).expect("size").len();
    wait_for("the restarted task to read the whole file", Duration::from_secs(10), || {
        json(&http(port, "GET", "/connectors/src/offsets", "").1)["offsets"][0]["offset"]["position"] == size
    });
    assert_eq!(json(&http(port, "GET", "/connectors/src/status", "").1)["tasks"][0]["state"], "RUNNING");
    // A plain restart restarts the connector instance alone: 204.
    assert_eq!(http(port, "POST", "/connectors/src/restart", "").0, 204);
    let (code, _) = http(port, "POST", "/connectors/nope/restart", "");
    assert_eq!(code, 404);

    // KIP-875: offsets change only while stopped; then the source resumes
    // where they were set.
    let patch = serde_json::json!({"offsets": [{"partition": {"filename": input}, "offset": {"position": 0}}]});
    let (code, body) = http(port, "PATCH", "/connectors/src/offsets", &patch.to_string());
    assert_eq!(code, 400, "a running connector's offsets stay: {body}");
    assert!(json(&body)["message"].as_str().is_some_and(|m| m.contains("STOPPED")));
    assert_eq!(http(port, "PUT", "/connectors/src/stop", "").0, 204);
    let status = json(&http(port, "GET", "/connectors/src/status", "").1);
    assert_eq!(
        (status["connector"]["state"].clone(), status["tasks"].clone()),
        ("STOPPED".into(), serde_json::json!([]))
    );
    let (code, body) = http(port, "DELETE", "/connectors/src/offsets", "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&http(port, "GET", "/connectors/src/offsets", "").1), serde_json::json!({"offsets": []}));
    let line_bytes = numbered_lines(0..1)[0].len() as u64 + 1;
    let patch =
        serde_json::json!({"offsets": [{"partition": {"filename": input}, "offset": {"position": 3 * line_bytes}}]});
    let (code, body) = http(port, "PATCH", "/connectors/src/offsets", &patch.to_string());
    assert_eq!(code, 200, "{body}");
    // A sink reading what the source wrote, from offset 3 of its topic.
    let sink = serde_json::json!({"name": "snk", "config": {
        "connector.class": "FileStreamSink", "file": dir.join("out.txt"), "topics": "restarted"}});
    assert_eq!(http(port, "POST", "/connectors", &sink.to_string()).0, 201);
    wait_for("the sink to catch up", Duration::from_secs(10), || complete_lines(&dir.join("out.txt")).len() == 5);
    assert_eq!(http(port, "PUT", "/connectors/snk/stop", "").0, 204);
    let patch = serde_json::json!({"offsets": [{"partition": {"kafka_topic": "restarted", "kafka_partition": 0}, "offset": {"kafka_offset": 3}}]});
    let (code, body) = http(port, "PATCH", "/connectors/snk/offsets", &patch.to_string());
    assert_eq!(code, 200, "{body}");
    assert_eq!(http(port, "PUT", "/connectors/snk/resume", "").0, 202);
    // The source resumes at line 3: lines 3 and 4 again; the sink re-reads from offset 3.
    assert_eq!(http(port, "PUT", "/connectors/src/resume", "").0, 202);
    let mut expected_out = numbered_lines(0..5);
    expected_out.extend(numbered_lines(3..5));
    expected_out.extend(numbered_lines(3..5));
    wait_for("the replays", Duration::from_secs(10), || {
        complete_lines(&dir.join("out.txt")).len() == expected_out.len()
    });
    assert_eq!(complete_lines(&dir.join("out.txt")), expected_out);
    worker.stop();
}

/// Kafka's worker security keys log the worker in on the native port
/// (SASL, issue 16): with alice's SCRAM login it moves lines through a
/// topic that ANONYMOUS may not touch; a worker without a login is refused
/// and its task reports why.
#[test]
fn a_worker_logs_in_with_kafkas_sasl_keys_and_one_without_a_login_is_refused() {
    let dir = data_dir("connect-sasl");
    let (plain_port, sasl_port) = (free_port_below_ephemeral(), free_port_below_ephemeral());
    let listeners = format!("PLAINTEXT://127.0.0.1:{plain_port},SASL_PLAINTEXT://127.0.0.1:{sasl_port}");
    let server = dir.join("server.properties");
    std::fs::write(
        &server,
        format!("listeners={listeners}\nallow.everyone.if.no.acl.found=true\nsuper.users=User:alice\n"),
    )
    .expect("write");
    let broker = Broker::start_with(
        &dir.join("data"),
        1,
        0,
        &["--config", server.to_str().expect("path"), "--listeners", &listeners],
    );
    let kafka = format!("127.0.0.1:{plain_port}");
    let (ok, _, err) =
        common::cli(&["user", "create", "alice", "--password", "alice-secret", "--bootstrap-server", &kafka], None);
    assert!(ok, "spate user create: {err}");
    let deny = ["acl", "create", "--deny-principal", "User:ANONYMOUS", "--operation", "All", "--topic", "secured"];
    let (ok, _, err) = common::cli(&[&deny[..], &["--bootstrap-server", &kafka]].concat(), None);
    assert!(ok, "spate acl create: {err}");

    let login = "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n\
                 sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \
                 username=\"alice\" password=\"alice-secret\";";
    let alice_dir = dir.join("alice");
    std::fs::create_dir_all(&alice_dir).expect("dir");
    let alice_config = worker_properties(&alice_dir, &broker, free_port_below_ephemeral(), login);
    let connectors = alice_dir.join("connectors.properties");
    std::fs::write(&connectors, "name=src\nconnector.class=FileStreamSource\nfile=in.txt\ntopic=secured\n")
        .expect("write");
    let sink = alice_dir.join("sink.properties");
    std::fs::write(&sink, "name=snk\nconnector.class=FileStreamSink\nfile=out.txt\ntopics=secured\n").expect("write");
    append(&alice_dir.join("in.txt"), &numbered_lines(0..50));
    let alice = ConnectWorker::start(&alice_dir, &[&alice_config, &connectors, &sink], 1);
    wait_for("alice's lines", Duration::from_secs(20), || complete_lines(&alice_dir.join("out.txt")).len() == 50);
    assert_eq!(complete_lines(&alice_dir.join("out.txt")), numbered_lines(0..50));
    alice.stop();

    let anonymous_dir = dir.join("anonymous");
    std::fs::create_dir_all(&anonymous_dir).expect("dir");
    let anonymous_config = worker_properties(&anonymous_dir, &broker, free_port_below_ephemeral(), "");
    let connectors = anonymous_dir.join("connectors.properties");
    std::fs::write(&connectors, "name=src\nconnector.class=FileStreamSource\nfile=in.txt\ntopic=secured\n")
        .expect("write");
    append(&anonymous_dir.join("in.txt"), &numbered_lines(0..5));
    let anonymous = ConnectWorker::start(&anonymous_dir, &[&anonymous_config, &connectors], 1);
    let port = anonymous.rest_port;
    wait_for("the anonymous task to fail", Duration::from_secs(20), || {
        json(&http(port, "GET", "/connectors/src/status", "").1)["tasks"][0]["state"] == "FAILED"
    });
    let status = json(&http(port, "GET", "/connectors/src/status", "").1);
    let trace = status["tasks"][0]["trace"].as_str().expect("a trace").to_string();
    assert!(trace.contains("Authorization"), "{trace}");
    anonymous.stop();
}

/// A sink behind transactional producers: with the worker's
/// `consumer.isolation.level=read_committed` it writes only committed
/// transactions' records; a connector's `consumer.override.isolation.level
/// =read_uncommitted` (KIP-458) writes the aborted one's too, as Kafka's
/// consumers would read them.
#[test]
fn a_read_committed_sink_skips_an_aborted_transactions_records() {
    use spate_client::{Acks, Admin, Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};
    let dir = data_dir("connect-sink-isolation");
    let broker = Broker::start(&dir.join("broker"), 1);
    common::runtime().block_on(async {
        let client = Client::connect(ClientConfig { bootstrap: vec![broker.addr()], ..Default::default() })
            .await
            .expect("connect");
        Admin::new(client.clone()).create_topic("txn-lines", 1, 1, &[]).await.expect("create");
        let config = ProducerConfig {
            acks: Acks::All,
            transactional_id: Some("lines-writer".into()),
            ..ProducerConfig::default()
        };
        let producer = Producer::new(client, config).expect("producer");
        producer.init_transactions().await.expect("init");
        for (prefix, count, commit) in [("committed", 100, true), ("aborted", 50, false), ("later", 20, true)] {
            producer.begin_transaction().await.expect("begin");
            for i in 0..count {
                producer.send(ProducerRecord::new("txn-lines", format!("{prefix}-{i}"))).await.expect("send");
            }
            producer.flush().await.expect("flush");
            if commit {
                producer.commit_transaction().await.expect("commit");
            } else {
                producer.abort_transaction().await.expect("abort");
            }
        }
        producer.close().await.expect("close");
    });
    let worker_config =
        worker_properties(&dir, &broker, free_port_below_ephemeral(), "consumer.isolation.level=read_committed");
    let sink = |name: &str, extra: &str| {
        let path = dir.join(format!("{name}.properties"));
        let text = format!(
            "name={name}\nconnector.class=FileStreamSink\ntasks.max=1\ntopics=txn-lines\nfile={name}.txt\n\
             value.converter=org.apache.kafka.connect.storage.StringConverter\n{extra}\n"
        );
        std::fs::write(&path, text).expect("write");
        path
    };
    let committed_sink = sink("committed-sink", "");
    let everything_sink = sink("everything-sink", "consumer.override.isolation.level=read_uncommitted");
    let worker = ConnectWorker::start(&dir, &[&worker_config, &committed_sink, &everything_sink], 1);
    let (committed_file, everything_file) = (dir.join("committed-sink.txt"), dir.join("everything-sink.txt"));
    wait_for("both sinks' lines", Duration::from_secs(30), || {
        complete_lines(&committed_file).len() >= 120 && complete_lines(&everything_file).len() >= 170
    });
    // A moment more: nothing else may arrive.
    std::thread::sleep(Duration::from_millis(500));
    let committed = complete_lines(&committed_file);
    let expected: Vec<String> =
        (0..100).map(|i| format!("committed-{i}")).chain((0..20).map(|i| format!("later-{i}"))).collect();
    assert_eq!(committed, expected, "only committed records, once each, in order");
    let everything = complete_lines(&everything_file);
    assert_eq!(everything.len(), 170, "read_uncommitted writes the aborted records too");
    assert_eq!(everything.iter().filter(|line| line.starts_with("aborted-")).count(), 50);
    worker.stop();
}
