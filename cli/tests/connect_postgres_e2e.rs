//! Spate Connect's PostgreSQL connectors against a real PostgreSQL server
//! (Debian's package, started by the test in its own directory: see
//! `common/postgres.rs`), with real `spate serve` and `spate connect
//! standalone` processes: a file through a topic into a table by upsert
//! with the worker killed with kill -9 and restarted; a table created from
//! JsonConverter schemas; rows read from a table by a source killed and
//! restarted; a sink retrying its batch through a PostgreSQL crash; rows
//! that do not fit their table sent to the dead-letter topic while the
//! sink goes on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::postgres::Postgres;
use common::{Broker, SPATE, data_dir, free_port_below_ephemeral};

/// A worker config for `broker`, offsets in `dir`, REST on a free port,
/// and `extra` lines.
fn worker_properties(dir: &Path, broker: &Broker, extra: &str) -> PathBuf {
    let path = dir.join("worker.properties");
    let text = format!(
        "bootstrap.servers={}\nkey.converter=org.apache.kafka.connect.json.JsonConverter\n\
         value.converter=org.apache.kafka.connect.json.JsonConverter\n\
         offset.storage.file.filename={}\nlisteners=http://127.0.0.1:{}\n{extra}\n",
        broker.addr(),
        dir.join("connect.offsets").display(),
        free_port_below_ephemeral()
    );
    std::fs::write(&path, text).expect("write");
    path
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// A `spate connect standalone` process running in `dir`.
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
        // "spate connect standalone: REST API on http://127.0.0.1:PORT, N connectors".
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

    /// SIGTERM; the worker must flush, commit and exit 0.
    fn stop(mut self) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().expect("kill");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "worker exited with {exit}");
    }

    /// A task's state from the REST API.
    fn task_state(&self, connector: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.rest_port)).expect("connect to the REST API");
        let request = format!("GET /connectors/{connector}/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).expect("request");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let status: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
        format!("{} {}", status["tasks"][0]["state"].as_str().unwrap_or("?"), status["tasks"][0]["trace"])
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
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many rows `table` holds; 0 while it does not exist.
fn row_count(pg: &Postgres, table: &str) -> usize {
    pg.try_psql(&format!("SELECT count(*) FROM {table}")).ok().and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// Every record of `topic` now, from the beginning, in the CLI's JSON form
/// (none while the topic does not exist).
fn topic_records(broker: &Broker, topic: &str) -> Vec<serde_json::Value> {
    let (ok, out, err) = common::cli(
        &["--brokers", &broker.addr(), "consume", topic, "--from-beginning", "--exit", "--format", "json"],
        None,
    );
    if !ok && err.contains("unknown topic") {
        return Vec::new();
    }
    assert!(ok, "{err}");
    out.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect()
}

fn create_topic(broker: &Broker, topic: &str) {
    let (ok, _, err) = common::cli(&["--brokers", &broker.addr(), "topic", "create", topic], None);
    assert!(ok, "{err}");
}

fn append(path: &Path, lines: &[String]) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    file.write_all(text.as_bytes()).expect("append");
}

#[test]
fn file_lines_reach_a_table_by_upsert_and_a_worker_killed_mid_stream_loses_none() {
    let dir = data_dir("connect-pg-upsert-kill9");
    let pg = Postgres::start(&dir.join("postgres"));
    let broker = Broker::start(&dir.join("broker"), 1);
    // Sink offsets committed every 500 ms, so the kill lands between two
    // commits; a short session, so the restarted worker's sink gets the
    // partition soon after the killed one's session ends.
    let worker = worker_properties(&dir, &broker, "offset.flush.interval.ms=500\nconsumer.session.timeout.ms=3000");
    let source = write_config(
        &dir,
        "source.properties",
        "name=lines-source\nconnector.class=FileStreamSource\nfile=lines.txt\ntopic=lines\n\
         value.converter=org.apache.kafka.connect.storage.StringConverter\n",
    );
    // Each line is a JSON document; ValueToKey makes its id the key, and
    // the sink upserts by that key into a table it creates.
    let sink = write_config(
        &dir,
        "sink.properties",
        &format!(
            "name=lines-sink\nconnector.class=PostgresSink\ntopics=lines\nconnection.url={}\n\
             table.name.format=kafka_${{topic}}\ninsert.mode=upsert\npk.mode=record_key\npk.fields=id\n\
             auto.create=true\nbatch.size=200\n\
             key.converter=org.apache.kafka.connect.json.JsonConverter\nkey.converter.schemas.enable=false\nvalue.converter=org.apache.kafka.connect.json.JsonConverter\nvalue.converter.schemas.enable=false\n\
             transforms=key\ntransforms.key.type=org.apache.kafka.connect.transforms.ValueToKey\n\
             transforms.key.fields=id\n",
            pg.url()
        ),
    );
    let expected: Vec<String> =
        (0..5000).map(|i| format!(r#"{{"id":{i},"line":"line {i} with text that is not just a number"}}"#)).collect();
    let lines_file = dir.join("lines.txt");
    append(&lines_file, &expected[..1000]);

    let first = ConnectWorker::start(&dir, &[&worker, &source, &sink], 1);
    let writer = {
        let (path, rest) = (lines_file.clone(), expected[1000..].to_vec());
        std::thread::spawn(move || {
            for chunk in rest.chunks(250) {
                append(&path, chunk);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    wait_for("rows in the table", Duration::from_secs(20), || row_count(&pg, "kafka_lines") >= 1500);
    first.kill9();
    let at_kill = row_count(&pg, "kafka_lines");
    assert!(at_kill < expected.len(), "the kill should land mid-stream ({at_kill} rows)");

    let second = ConnectWorker::start(&dir, &[&worker, &source, &sink], 2);
    writer.join().expect("writer");
    wait_for("every line as a row", Duration::from_secs(30), || row_count(&pg, "kafka_lines") >= expected.len());
    let rows = pg.psql("SELECT id, line FROM kafka_lines ORDER BY id");
    let wanted: Vec<String> =
        (0..expected.len()).map(|i| format!("{i}|line {i} with text that is not just a number")).collect();
    assert_eq!(rows.lines().collect::<Vec<_>>(), wanted, "every line once, none missing, none changed");
    let key = pg.psql(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = 'kafka_lines'::regclass AND i.indisprimary",
    );
    assert_eq!(key.trim(), "id", "auto.create made the record key the primary key");
    second.stop();
}

#[test]
fn a_sink_retries_its_batch_through_a_postgres_crash_and_loses_no_row() {
    let dir = data_dir("connect-pg-crash");
    let pg = Postgres::start(&dir.join("postgres"));
    let broker = Broker::start(&dir.join("broker"), 1);
    let worker = worker_properties(&dir, &broker, "offset.flush.interval.ms=200");
    let source = write_config(
        &dir,
        "source.properties",
        "name=lines-source\nconnector.class=FileStreamSource\nfile=lines.txt\ntopic=lines\nbatch.size=100\n\
         value.converter=org.apache.kafka.connect.storage.StringConverter\n",
    );
    let sink = write_config(
        &dir,
        "sink.properties",
        &format!(
            "name=lines-sink\nconnector.class=PostgresSink\ntopics=lines\nconnection.url={}\n\
             insert.mode=upsert\npk.mode=record_value\npk.fields=id\nauto.create=true\nbatch.size=50\n\
             max.retries=100\nretry.backoff.ms=100\n\
             value.converter=org.apache.kafka.connect.json.JsonConverter\nvalue.converter.schemas.enable=false\n",
            pg.url()
        ),
    );
    let expected: Vec<String> = (0..3000).map(|i| format!(r#"{{"id":{i},"line":"line {i}"}}"#)).collect();
    let lines_file = dir.join("lines.txt");
    append(&lines_file, &expected[..100]);
    let running = ConnectWorker::start(&dir, &[&worker, &source, &sink], 1);
    // Lines keep coming while PostgreSQL is down.
    let writer = {
        let (path, rest) = (lines_file.clone(), expected[100..].to_vec());
        std::thread::spawn(move || {
            for chunk in rest.chunks(100) {
                append(&path, chunk);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    wait_for("the first rows", Duration::from_secs(20), || row_count(&pg, "lines") >= 100);
    pg.crash_and_restart(Duration::from_millis(1500));
    writer.join().expect("writer");
    wait_for("every line as a row", Duration::from_secs(30), || row_count(&pg, "lines") >= expected.len());
    let ids = pg.psql("SELECT count(DISTINCT id), min(id), max(id) FROM lines");
    assert_eq!(ids.trim(), format!("{}|0|{}", expected.len(), expected.len() - 1));
    let state = running.task_state("lines-sink");
    assert!(state.starts_with("RUNNING"), "the task lives through the crash: {state}");
    let log = std::fs::read_to_string(dir.join("worker-1.log")).expect("log");
    assert!(log.contains("PostgreSQL batch failed; trying again"), "the crash was seen and retried:\n{log}");
    running.stop();
}

#[test]
fn insert_mode_creates_the_table_from_json_converter_schemas() {
    let dir = data_dir("connect-pg-auto-create");
    let pg = Postgres::start(&dir.join("postgres"));
    let broker = Broker::start(&dir.join("broker"), 1);
    let worker = worker_properties(&dir, &broker, "offset.flush.interval.ms=500");
    let sink = write_config(
        &dir,
        "sink.properties",
        &format!(
            "name=people-sink\nconnector.class=io.spate.connect.postgres.PostgresSinkConnector\ntopics=people\n\
             connection.url={}\ninsert.mode=insert\nauto.create=true\nbatch.size=7\n",
            pg.url()
        ),
    );
    let schema = r#"{"type":"struct","name":"person","optional":false,"fields":[
        {"field":"id","type":"int32","optional":false},
        {"field":"name","type":"string","optional":true},
        {"field":"score","type":"double","optional":true},
        {"field":"active","type":"boolean","optional":false},
        {"field":"level","type":"int8","optional":true},
        {"field":"tags","type":"array","items":{"type":"string","optional":false},"optional":true}]}"#
        .replace(['\n', ' '], "");
    let records: String = (1..=50)
        .map(|i| {
            let name = if i % 10 == 0 { "null".to_string() } else { format!("\"person {i}\"") };
            format!(
                r#"{{"schema":{schema},"payload":{{"id":{i},"name":{name},"score":{i}.5,"active":{},"level":{},"tags":["a","t{i}"]}}}}"#,
                i % 2 == 0,
                i % 100
            ) + "\n"
        })
        .collect();
    create_topic(&broker, "people");
    let (ok, _, err) = common::cli(&["--brokers", &broker.addr(), "produce", "people"], Some(records.as_bytes()));
    assert!(ok, "{err}");

    let running = ConnectWorker::start(&dir, &[&worker, &sink], 1);
    wait_for("the 50 rows", Duration::from_secs(20), || row_count(&pg, "people") >= 50);
    let columns = pg.psql(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns \
         WHERE table_name = 'people' ORDER BY ordinal_position",
    );
    assert_eq!(
        columns.lines().collect::<Vec<_>>(),
        [
            "id|integer|NO",
            "name|text|YES",
            "score|double precision|YES",
            "active|boolean|NO",
            "level|smallint|YES",
            "tags|jsonb|YES"
        ],
        "column types from the schemas, NOT NULL where the schema is not optional"
    );
    let rows = pg.psql("SELECT id, coalesce(name, '-'), score, active, level, tags::text FROM people ORDER BY id");
    let wanted: Vec<String> = (1..=50)
        .map(|i| {
            let name = if i % 10 == 0 { "-".to_string() } else { format!("person {i}") };
            let active = if i % 2 == 0 { "t" } else { "f" };
            format!(r#"{i}|{name}|{i}.5|{active}|{i}|["a", "t{i}"]"#)
        })
        .collect();
    assert_eq!(rows.lines().collect::<Vec<_>>(), wanted);
    assert_eq!(pg.psql("SELECT count(*) FROM pg_index WHERE indrelid = 'people'::regclass").trim(), "0", "no key");
    running.stop();
}

#[test]
fn a_source_killed_and_restarted_resumes_from_its_stored_offset_and_loses_no_row() {
    let dir = data_dir("connect-pg-source-kill9");
    let pg = Postgres::start(&dir.join("postgres"));
    let broker = Broker::start(&dir.join("broker"), 1);
    pg.psql(
        "CREATE TABLE items (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, \
         updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())",
    );
    let insert = |from: usize, to: usize| {
        pg.psql(&format!("INSERT INTO items (name) SELECT 'item ' || g FROM generate_series({from}, {to}) g"));
    };
    insert(1, 100);
    let worker = worker_properties(&dir, &broker, "offset.flush.interval.ms=300");
    let source = write_config(
        &dir,
        "source.properties",
        &format!(
            "name=items-source\nconnector.class=PostgresSource\nconnection.url={}\ntable.whitelist=items\n\
             mode=timestamp+incrementing\nincrementing.column.name=id\ntimestamp.column.name=updated_at\n\
             topic.prefix=pg-\npoll.interval.ms=100\nbatch.max.rows=10\nvalue.converter=org.apache.kafka.connect.json.JsonConverter\nvalue.converter.schemas.enable=false\n",
            pg.url()
        ),
    );
    let first = ConnectWorker::start(&dir, &[&worker, &source], 1);
    // Rows keep coming while the worker runs, and while it is down.
    let rows_total = 500;
    for start in (101..=250).step_by(10) {
        insert(start, start + 9);
        std::thread::sleep(Duration::from_millis(30));
    }
    wait_for("records and a stored offset", Duration::from_secs(20), || {
        topic_records(&broker, "pg-items").len() >= 150
            && std::fs::read_to_string(dir.join("connect.offsets")).is_ok_and(|o| o.contains("incrementing"))
    });
    first.kill9();
    let offsets = std::fs::read_to_string(dir.join("connect.offsets")).expect("offsets file");
    assert!(offsets.contains(r#""partition":{"table":"items"}"#), "{offsets}");
    let stored: i64 = offsets
        .split("\"incrementing\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no incrementing offset in {offsets}"));
    assert!(stored > 0, "an offset was stored before the kill");
    for start in (251..=rows_total).step_by(50) {
        insert(start, start + 49);
    }

    let second = ConnectWorker::start(&dir, &[&worker, &source], 2);
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    wait_for("every row in the topic", Duration::from_secs(20), || {
        counts.clear();
        for record in topic_records(&broker, "pg-items") {
            let value: serde_json::Value =
                serde_json::from_str(record["value"].as_str().expect("a value")).expect("JSON");
            let id = value["id"].as_i64().expect("an id");
            assert_eq!(value["name"], format!("item {id}"), "{value}");
            assert!(value["updated_at"].as_str().is_some_and(|t| t.contains(':')), "{value}");
            *counts.entry(id).or_default() += 1;
        }
        counts.len() >= rows_total
    });
    second.stop();
    let ids: Vec<i64> = counts.keys().copied().collect();
    assert_eq!(ids, (1..=rows_total as i64).collect::<Vec<_>>(), "every row, none lost");
    let replayed: Vec<i64> = counts.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id).collect();
    assert!(
        replayed.iter().all(|id| *id > stored),
        "only rows after the stored offset ({stored}) may come twice: {replayed:?}"
    );
    assert!(counts.values().all(|n| *n <= 2), "at most one replay after one kill");
    eprintln!("{rows_total} rows, {} sent twice after kill -9 (stored offset {stored})", replayed.len());
}

#[test]
fn a_query_source_writes_each_column_type_with_its_schema() {
    let dir = data_dir("connect-pg-source-query");
    let pg = Postgres::start(&dir.join("postgres"));
    let broker = Broker::start(&dir.join("broker"), 1);
    pg.psql(
        "CREATE TABLE kinds (id SERIAL PRIMARY KEY, b BOOLEAN, i2 SMALLINT, f4 REAL, f8 DOUBLE PRECISION, \
         n NUMERIC(6,2), t TEXT, j JSONB, ts TIMESTAMPTZ, raw BYTEA)",
    );
    pg.psql(
        "INSERT INTO kinds (b, i2, f4, f8, n, t, j, ts, raw) VALUES \
         (true, 7, 1.5, 2.25, 1234.5, 'O''Brien \"q\"', '{\"a\": [1, 2]}', '2026-12-07 10:00:00.123456+01', '\\x00ff'), \
         (NULL, NULL, NULL, NULL, NULL, 'skip', NULL, NULL, NULL), \
         (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    );
    let worker = worker_properties(&dir, &broker, "offset.flush.interval.ms=300");
    let source = write_config(
        &dir,
        "source.properties",
        &format!(
            "name=kinds-source\nconnector.class=PostgresSource\nconnection.url={}\n\
             query=SELECT * FROM kinds WHERE t IS DISTINCT FROM 'skip'\nmode=incrementing\n\
             incrementing.column.name=id\ntopic.prefix=pg-kinds\npoll.interval.ms=100\n",
            pg.url()
        ),
    );
    let running = ConnectWorker::start(&dir, &[&worker, &source], 1);
    let mut records = Vec::new();
    wait_for("the two rows", Duration::from_secs(20), || {
        records = topic_records(&broker, "pg-kinds");
        records.len() >= 2
    });
    running.stop();
    let envelope = |i: usize| -> serde_json::Value {
        serde_json::from_str(records[i]["value"].as_str().expect("a value")).expect("JsonConverter's envelope")
    };
    let first = envelope(0);
    let types: Vec<(String, String)> = first["schema"]["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| (f["field"].as_str().unwrap_or("").to_string(), f["type"].as_str().unwrap_or("").to_string()))
        .collect();
    let expected_types = [
        ("id", "int32"),
        ("b", "boolean"),
        ("i2", "int16"),
        ("f4", "float"),
        ("f8", "double"),
        ("n", "string"),
        ("t", "string"),
        ("j", "string"),
        ("ts", "string"),
        ("raw", "bytes"),
    ];
    assert_eq!(types, expected_types.map(|(f, t)| (f.to_string(), t.to_string())));
    assert_eq!(
        first["payload"],
        serde_json::json!({"id": 1, "b": true, "i2": 7, "f4": 1.5, "f8": 2.25, "n": "1234.50",
            "t": "O'Brien \"q\"", "j": "{\"a\": [1, 2]}", "ts": "2026-12-07 09:00:00.123456+00", "raw": "AP8="})
    );
    let nulls = envelope(1);
    assert_eq!(nulls["payload"]["id"], 3, "the filtered row is not read");
    assert!(nulls["payload"]["b"].is_null() && nulls["payload"]["raw"].is_null(), "{nulls}");
    let offsets = std::fs::read_to_string(dir.join("connect.offsets")).expect("offsets");
    assert!(offsets.contains(r#""partition":{"query":"SELECT * FROM kinds"#), "{offsets}");
    assert!(offsets.contains(r#""offset":{"incrementing":3}"#), "{offsets}");
}

#[test]
fn rows_that_do_not_fit_the_table_go_to_the_dead_letter_topic_and_the_sink_goes_on() {
    let dir = data_dir("connect-pg-dead-letter");
    let pg = Postgres::start(&dir.join("postgres"));
    let broker = Broker::start(&dir.join("broker"), 1);
    pg.psql("CREATE TABLE events (id BIGINT PRIMARY KEY, amount INTEGER NOT NULL, note TEXT)");
    let worker = worker_properties(&dir, &broker, "offset.flush.interval.ms=300");
    let sink = write_config(
        &dir,
        "sink.properties",
        &format!(
            "name=events-sink\nconnector.class=PostgresSink\ntopics=events\nconnection.url={}\n\
             insert.mode=upsert\npk.mode=record_value\npk.fields=id\nvalue.converter=org.apache.kafka.connect.json.JsonConverter\nvalue.converter.schemas.enable=false\n\
             errors.tolerance=all\nerrors.deadletterqueue.topic.name=events-dlq\n\
             errors.deadletterqueue.context.headers.enable=true\n",
            pg.url()
        ),
    );
    create_topic(&broker, "events");
    let running = ConnectWorker::start(&dir, &[&worker, &sink], 1);
    // Good rows around five that cannot be written: a string for a
    // BIGINT, a missing NOT NULL column (refused by the server), a field
    // the table lacks, an INTEGER out of range, and a value that is not
    // JSON at all (refused by the converter, before the sink).
    let input = [
        r#"{"id":1,"amount":10}"#,
        r#"{"id":2,"amount":20,"note":"second"}"#,
        r#"{"id":"x","amount":1}"#,
        r#"{"id":7}"#,
        r#"{"id":8,"amount":1,"colour":"red"}"#,
        r#"{"id":9,"amount":99999999999}"#,
        "not json",
        r#"{"id":3,"amount":30}"#,
        r#"{"id":1,"amount":11}"#,
    ]
    .join("\n");
    let (ok, _, err) = common::cli(&["--brokers", &broker.addr(), "produce", "events"], Some(input.as_bytes()));
    assert!(ok, "{err}");
    wait_for("five dead letters", Duration::from_secs(20), || topic_records(&broker, "events-dlq").len() >= 5);
    wait_for("the good rows", Duration::from_secs(20), || row_count(&pg, "events") >= 3);
    assert_eq!(
        pg.psql("SELECT id, amount, coalesce(note, '-') FROM events ORDER BY id").lines().collect::<Vec<_>>(),
        ["1|11|-", "2|20|second", "3|30|-"],
        "every good row, the upsert of id 1 last"
    );
    assert!(running.task_state("events-sink").starts_with("RUNNING"), "{}", running.task_state("events-sink"));

    let dead = topic_records(&broker, "events-dlq");
    assert_eq!(dead.len(), 5, "{dead:?}");
    let header = |record: &serde_json::Value, name: &str| -> String {
        let headers = record["headers"].as_array().expect("headers");
        let found = headers.iter().find(|h| h["key"] == name).map(|h| h["value"].as_str().unwrap_or("").to_string());
        found.unwrap_or_else(|| panic!("no header {name} in {record}"))
    };
    // The converter's refusal is sent at once, the sink's at its flush:
    // each once, not in one order.
    let mut offsets: Vec<String> = dead.iter().map(|r| header(r, "__connect.errors.offset")).collect();
    offsets.sort();
    assert_eq!(offsets, ["2", "3", "4", "5", "6"], "each bad record once");
    for record in &dead {
        let stage = header(record, "__connect.errors.stage");
        let message = header(record, "__connect.errors.exception.message");
        let expected_stage = if record["value"] == "not json" { "VALUE_CONVERTER" } else { "TASK_PUT" };
        assert_eq!(stage, expected_stage, "{record}");
        assert_eq!(header(record, "__connect.errors.topic"), "events");
        assert!(!message.is_empty());
    }
    let message_of = |offset: &str| {
        let record = dead.iter().find(|r| header(r, "__connect.errors.offset") == offset).expect("dead letter");
        header(record, "__connect.errors.exception.message")
    };
    assert!(message_of("2").contains("does not fit a column of type bigint"), "{}", message_of("2"));
    assert!(message_of("3").contains("23502"), "NOT NULL, from the server: {}", message_of("3"));
    assert!(message_of("4").contains("has no column \"colour\""), "{}", message_of("4"));
    let first_bad = dead.iter().find(|r| header(r, "__connect.errors.offset") == "2").expect("dead letter");
    let bad_value: serde_json::Value =
        serde_json::from_str(first_bad["value"].as_str().expect("value")).expect("the record as JSON");
    assert_eq!(bad_value, serde_json::json!({"id": "x", "amount": 1}));

    // The sink goes on with what comes next.
    let (ok, _, err) =
        common::cli(&["--brokers", &broker.addr(), "produce", "events"], Some(br#"{"id":4,"amount":40}"#.as_slice()));
    assert!(ok, "{err}");
    wait_for("a row after the bad ones", Duration::from_secs(20), || row_count(&pg, "events") >= 4);
    assert!(running.task_state("events-sink").starts_with("RUNNING"));
    running.stop();
}

#[test]
fn without_errors_tolerance_a_row_the_server_refuses_fails_the_task_naming_it_and_writes_nothing() {
    let dir = data_dir("connect-pg-strict");
    let pg = Postgres::start(&dir.join("postgres"));
    let broker = Broker::start(&dir.join("broker"), 1);
    pg.psql("CREATE TABLE events (id BIGINT PRIMARY KEY, amount INTEGER NOT NULL)");
    let worker = worker_properties(&dir, &broker, "offset.flush.interval.ms=300");
    let sink = write_config(
        &dir,
        "sink.properties",
        &format!(
            "name=strict-sink\nconnector.class=PostgresSink\ntopics=events\nconnection.url={}\n\
             insert.mode=upsert\npk.mode=record_value\npk.fields=id\n\
             value.converter=org.apache.kafka.connect.json.JsonConverter\nvalue.converter.schemas.enable=false\n",
            pg.url()
        ),
    );
    create_topic(&broker, "events");
    // One batch: two good rows around one the server refuses (NOT NULL).
    let input = "{\"id\":1,\"amount\":10}\n{\"id\":2}\n{\"id\":3,\"amount\":30}\n";
    let (ok, _, err) = common::cli(&["--brokers", &broker.addr(), "produce", "events"], Some(input.as_bytes()));
    assert!(ok, "{err}");
    let running = ConnectWorker::start(&dir, &[&worker, &sink], 1);
    wait_for("the task to fail", Duration::from_secs(20), || running.task_state("strict-sink").starts_with("FAILED"));
    let state = running.task_state("strict-sink");
    assert!(state.contains("events-0@1") && state.contains("23502"), "the refused record named: {state}");
    assert_eq!(row_count(&pg, "events"), 0, "nothing of the failed batch is committed");
}
