//! Memory a client can make the broker hold (issue 14): requests in flight
//! and unwritten responses stay within the connection's byte budget, the
//! broker stops reading past it, and a client that never reads is
//! disconnected; everyone else is served throughout.

mod common;

use std::io::Read;

use common::*;
use spate_flatbuf::proto::*;

// Under 1 MiB a batch: a produce frame whose envelope is just over 1 MiB
// fails verification ("Apparent size too large"; see the report).
const BATCH_VALUE_BYTES: usize = 200 * 1024;

/// A broker with metrics on and a topic "t" holding `batches` batches of
/// four 200 KiB records (800 KiB each).
fn broker_with_data(
    name: &str,
    batches: usize,
    tune: impl FnOnce(&mut spate_net::BrokerConfig),
) -> (spate_net::BrokerHandle, u16, u16) {
    let dir = data_dir(name);
    let mut config = config(&dir, 1);
    config.metrics_listen = "127.0.0.1:0".into();
    tune(&mut config);
    let broker = spate_net::start(config).expect("broker starts");
    let port = broker.addr().port();
    let metrics_port = broker.metrics_port().expect("metrics on");
    let mut conn = Conn::connect(port);
    assert_eq!(conn.create_topic("t", 1, &[]), ErrorCode::None);
    for _ in 0..batches {
        let records = big_batch(4, BATCH_VALUE_BYTES);
        let frame = conn.call(Body::ProduceRequest, |b| {
            let name = b.create_string("t");
            let records = b.create_vector(&records);
            let part = ProducePartition::create(b, &ProducePartitionArgs { partition: 0, records: Some(records) });
            let parts = b.create_vector(&[part]);
            let topic = ProduceTopic::create(b, &ProduceTopicArgs { name: Some(name), partitions: Some(parts) });
            let topics = b.create_vector(&[topic]);
            ProduceRequest::create(
                b,
                &ProduceRequestArgs { acks: -1, timeout_ms: 10_000, topics: Some(topics), ..Default::default() },
            )
            .as_union_value()
        });
        let (code, message) = error_response(&frame).map_or((ErrorCode::None, String::new()), |e| e);
        assert_eq!(code, ErrorCode::None, "{message}");
    }
    (broker, port, metrics_port)
}

// On the code before, a connection could hold 64 requests' answers (here
// 40 x 1.6 MiB) however little its client read, and no peak was kept.
#[test]
fn a_client_that_stops_reading_holds_no_more_than_its_connection_budget() {
    const BUDGET_BYTES: usize = 4 << 20;
    const REQUESTS: usize = 40;
    let (broker, port, metrics_port) =
        broker_with_data("budget_connection", 2, |c| c.connection_bytes_in_flight_max = BUDGET_BYTES);
    let mut hog = Conn::connect(port);
    let requests: Vec<_> = (0..REQUESTS).map(|_| fetch_request(&mut hog, "t", 0, 0, 4 << 20)).collect();
    let mut writer = hog.stream.try_clone().expect("clone");
    // The broker stops reading once the budget is full, so these writes
    // block until the responses below are read.
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        for request in requests {
            writer.write_all(&request).expect("write");
        }
    });
    await_condition("the budget to fill", || {
        metric(metrics_port, "spate_bytes_in_flight") as usize >= BUDGET_BYTES / 2
    });
    // Meanwhile another client is served.
    let mut other = Conn::connect(port);
    assert_eq!(other.list_offset("t", 0, -1), (ErrorCode::None, 8));
    // Every request is answered in full once the client reads.
    for _ in 0..REQUESTS {
        let frame = hog.recv().expect("a fetch response");
        let envelope = frame.read().expect("verified");
        let response = envelope.body_as_fetch_response().expect("a fetch response");
        let part = response.topics().expect("topics").get(0).partitions().expect("partitions").get(0);
        assert_eq!(part.error(), ErrorCode::None);
        assert!(part.records_bytes() > 0);
    }
    sender.join().expect("sender");
    // A fetch is sized to the room left (at least one batch is sent), so
    // the budget can be passed by at most one batch.
    let peak = metric(metrics_port, "spate_bytes_in_flight_peak") as usize;
    let batch_bytes = big_batch(4, BATCH_VALUE_BYTES).len();
    assert!(peak <= BUDGET_BYTES + batch_bytes + 64 * 1024, "peak {peak} bytes in flight");
    await_condition("the budget to drain", || metric(metrics_port, "spate_bytes_in_flight") == 0);
    stop(broker);
}

// The shard's budget holds across connections: two clients that stop
// reading together hold no more than it, and both are answered in full
// once they read. On the code before there was no shard budget.
#[test]
fn clients_that_stop_reading_hold_no_more_than_the_shards_budget_together() {
    const BUDGET_BYTES: usize = 4 << 20;
    const REQUESTS: usize = 20;
    let (broker, port, metrics_port) =
        broker_with_data("budget_shard", 2, |c| c.shard_bytes_in_flight_max = BUDGET_BYTES);
    let mut hogs: Vec<Conn> = (0..2).map(|_| Conn::connect(port)).collect();
    let senders: Vec<_> = hogs
        .iter_mut()
        .map(|hog| {
            let requests: Vec<_> = (0..REQUESTS).map(|_| fetch_request(hog, "t", 0, 0, 4 << 20)).collect();
            let mut writer = hog.stream.try_clone().expect("clone");
            std::thread::spawn(move || {
                use std::io::Write;
                for request in requests {
                    writer.write_all(&request).expect("write");
                }
            })
        })
        .collect();
    await_condition("the budget to fill", || {
        metric(metrics_port, "spate_bytes_in_flight") as usize >= BUDGET_BYTES / 2
    });
    // Both read at once: a client that went on not reading would hold the
    // shard's budget (and stall the other) until its write timeout.
    let readers: Vec<_> = hogs
        .into_iter()
        .map(|mut hog| {
            std::thread::spawn(move || {
                for _ in 0..REQUESTS {
                    let frame = hog.recv().expect("a fetch response");
                    let envelope = frame.read().expect("verified");
                    let response = envelope.body_as_fetch_response().expect("a fetch response");
                    let part = response.topics().expect("topics").get(0).partitions().expect("partitions").get(0);
                    assert_eq!(part.error(), ErrorCode::None);
                    assert!(part.records_bytes() > 0);
                }
            })
        })
        .collect();
    for thread in senders.into_iter().chain(readers) {
        thread.join().expect("sender or reader");
    }
    // Each connection may pass what is left by one batch at most.
    let peak = metric(metrics_port, "spate_bytes_in_flight_peak") as usize;
    let batch_bytes = big_batch(4, BATCH_VALUE_BYTES).len();
    assert!(peak <= BUDGET_BYTES + 2 * (batch_bytes + 64 * 1024), "peak {peak} bytes in flight");
    await_condition("the budget to drain", || metric(metrics_port, "spate_bytes_in_flight") == 0);
    stop(broker);
}

// On the code before, the connection stayed open (and its answers held)
// for as long as the client lived.
#[test]
fn a_client_that_never_reads_is_disconnected_after_the_write_timeout() {
    let (broker, port, metrics_port) = broker_with_data("write_timeout", 2, |c| c.connection_write_timeout_ms = 300);
    let mut hog = Conn::connect(port);
    // 20 answers of 1.6 MiB: more than loopback's socket buffers hold.
    let mut requests = Vec::new();
    for _ in 0..20 {
        requests.extend_from_slice(&fetch_request(&mut hog, "t", 0, 0, 4 << 20));
    }
    hog.send_raw(&requests);
    await_condition("the write timeout", || metric(metrics_port, "spate_connection_write_timeouts_total") == 1);
    // The hog finds its connection closed after what was buffered.
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        match hog.stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(err) => panic!("the connection is closed, not {err}"),
        }
    }
    let mut other = Conn::connect(port);
    assert_eq!(other.list_offset("t", 0, -1), (ErrorCode::None, 8));
    await_condition("the budget to drain", || metric(metrics_port, "spate_bytes_in_flight") == 0);
    stop(broker);
}
