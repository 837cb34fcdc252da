//! The DSL and Processor API run through `TopologyTestDriver`, checked
//! against Kafka Streams' documented results.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use bytes::Bytes;
use spate_streams::*;

fn config(application_id: &str) -> StreamsConfig {
    let mut config = StreamsConfig::new(application_id, "unused:9400");
    // Persistent stores (the DSL's default) keep test data under target/.
    config.state_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("streams-driver-state");
    config
}

/// The redb files under a state directory, found by walking it.
fn store_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(store_files(&path));
        } else if path.file_name().is_some_and(|name| name == "store.redb") {
            found.push(path);
        }
    }
    found
}

fn counts_topology(store_type: StoreType) -> Topology {
    let builder = StreamsBuilder::new();
    builder
        .stream("words", Consumed::with(Serdes::nullable(Serdes::string()), Serdes::string()))
        .group_by(|_, word| word.clone(), Grouped::with(Serdes::string(), Serdes::string()))
        .count(Materialized::as_("counts").with_store_type(store_type))
        .to_stream()
        .to("counts-out", Produced::with(Serdes::string(), Serdes::nullable(Serdes::i64())));
    builder.build().unwrap()
}

#[test]
fn dsl_counts_are_on_disk_by_default_and_in_memory_on_request_with_the_same_results() {
    let mut results = Vec::new();
    for (application_id, store_type) in
        [("persistent-counts", StoreType::Persistent), ("memory-counts", StoreType::InMemory)]
    {
        let config = config(application_id);
        let app_dirs = |config: &StreamsConfig| {
            store_files(&config.state_dir)
                .into_iter()
                .filter(|path| path.to_string_lossy().contains(&format!("/{application_id}/")))
                .collect::<Vec<_>>()
        };
        let driver = TopologyTestDriver::new(counts_topology(store_type), config.clone()).unwrap();
        let input = driver.create_input_topic("words", Serdes::nullable(Serdes::string()), Serdes::string());
        for (time_ms, word) in ["a", "b", "a", "a"].iter().enumerate() {
            input.pipe_input(&None, &word.to_string(), time_ms as i64).unwrap();
        }
        let files = app_dirs(&config);
        match store_type {
            // `<state.dir>/<driver's dir>/<application.id>/<task id>/<store>/store.redb`:
            // the count runs in sub-topology 1, after the repartition topic.
            StoreType::Persistent => {
                assert_eq!(files.len(), 1, "{files:?}");
                assert!(files[0].ends_with(format!("{application_id}/1_0/counts/store.redb")), "{files:?}");
            }
            StoreType::InMemory => assert!(files.is_empty(), "{files:?}"),
        }
        assert_eq!(driver.key_value_store_get::<String, i64>("counts", &"a".into()).unwrap(), Some(3));
        let output = driver.create_output_topic("counts-out", Serdes::string(), Serdes::i64());
        results.push(output.read_key_values_to_list().unwrap());
        // The topics hold the driver too: its state goes with the last.
        drop((driver, input, output));
        assert!(app_dirs(&config).is_empty(), "a dropped driver removes its state");
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0].last(), Some(&("a".to_string(), 3)));
}

fn word_count_topology() -> Topology {
    let builder = StreamsBuilder::new();
    builder
        .stream("text-input", Consumed::with(Serdes::nullable(Serdes::string()), Serdes::string()))
        .flat_map_values(|line: &String| line.to_lowercase().split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .group_by(|_, word| word.clone(), Grouped::with(Serdes::string(), Serdes::string()))
        .count(Materialized::as_("counts-store"))
        .to_stream()
        .to("word-counts", Produced::with(Serdes::string(), Serdes::nullable(Serdes::i64())));
    builder.build().unwrap()
}

#[test]
fn word_count_emits_kafkas_documented_updates() {
    // The input and output of Kafka's WordCountDemo quickstart.
    let driver = TopologyTestDriver::new(word_count_topology(), config("wordcount")).unwrap();
    let input = driver.create_input_topic("text-input", Serdes::nullable(Serdes::string()), Serdes::string());
    let output = driver.create_output_topic("word-counts", Serdes::string(), Serdes::i64());
    for (offset, line) in ["all streams lead to kafka", "hello kafka streams", "join kafka summit"].iter().enumerate() {
        input.pipe_input(&None, &line.to_string(), offset as i64).unwrap();
    }
    let updates = output.read_key_values_to_list().unwrap();
    let expected: Vec<(String, i64)> = [
        ("all", 1),
        ("streams", 1),
        ("lead", 1),
        ("to", 1),
        ("kafka", 1),
        ("hello", 1),
        ("kafka", 2),
        ("streams", 2),
        ("join", 1),
        ("kafka", 3),
        ("summit", 1),
    ]
    .iter()
    .map(|(word, count)| (word.to_string(), *count))
    .collect();
    assert_eq!(updates, expected);
    assert_eq!(driver.key_value_store_get::<String, i64>("counts-store", &"kafka".into()).unwrap(), Some(3));

    // The word became the key: records went through the repartition topic,
    // and every count change went to the store's changelog.
    assert_eq!(driver.written("wordcount-counts-store-repartition").len(), 11);
    let changelog = driver.written("wordcount-counts-store-changelog");
    assert_eq!(changelog.len(), 11);
    let last = changelog.iter().rev().find(|record| record.key.as_deref() == Some(&b"kafka"[..])).unwrap();
    assert_eq!(last.value.as_deref(), Some(&3i64.to_be_bytes()[..]));
}

#[test]
fn describe_prints_sub_topologies_split_at_the_repartition_topic() {
    let description = word_count_topology().describe().to_string();
    let expected = "\
Topologies:
   Sub-topology: 0
    Source: KSTREAM-SOURCE-0000000000 (topics: [text-input])
      --> KSTREAM-FLATMAPVALUES-0000000001
    Processor: KSTREAM-FLATMAPVALUES-0000000001 (stores: [])
      --> KSTREAM-KEY-SELECT-0000000002
      <-- KSTREAM-SOURCE-0000000000
    Processor: KSTREAM-KEY-SELECT-0000000002 (stores: [])
      --> KSTREAM-SINK-0000000003
      <-- KSTREAM-FLATMAPVALUES-0000000001
    Sink: KSTREAM-SINK-0000000003 (topic: counts-store-repartition)
      <-- KSTREAM-KEY-SELECT-0000000002

   Sub-topology: 1
    Source: KSTREAM-SOURCE-0000000004 (topics: [counts-store-repartition])
      --> KSTREAM-AGGREGATE-0000000005
    Processor: KSTREAM-AGGREGATE-0000000005 (stores: [counts-store])
      --> KTABLE-TOSTREAM-0000000006
      <-- KSTREAM-SOURCE-0000000004
    Processor: KTABLE-TOSTREAM-0000000006 (stores: [])
      --> KSTREAM-SINK-0000000007
      <-- KSTREAM-AGGREGATE-0000000005
    Sink: KSTREAM-SINK-0000000007 (topic: word-counts)
      <-- KTABLE-TOSTREAM-0000000006

";
    assert_eq!(description, expected);
}

/// Clicks per user in windows of `windows`, written as "user@start" -> count.
fn windowed_count_driver(
    windows: TimeWindows,
) -> (TopologyTestDriver, TestInputTopic<String, String>, TestOutputTopic<String, i64>) {
    let builder = StreamsBuilder::new();
    builder
        .stream("clicks", Consumed::with(Serdes::string(), Serdes::string()))
        .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
        .windowed_by(windows)
        .count(Materialized::as_("clicks-per-window"))
        .to_stream()
        .map(|windowed: &Windowed<String>, count: &Option<i64>| {
            (format!("{}@{}", windowed.key, windowed.window.start_ms), count.unwrap_or(0))
        })
        .to("click-counts", Produced::with(Serdes::string(), Serdes::i64()));
    let driver = TopologyTestDriver::new(builder.build().unwrap(), config("clicks")).unwrap();
    let input = driver.create_input_topic("clicks", Serdes::string(), Serdes::string());
    let output = driver.create_output_topic("click-counts", Serdes::string(), Serdes::i64());
    (driver, input, output)
}

/// Clicks of three users over 40 minutes of event time, some late,
/// counted in 5-minute windows (1 minute of grace) and in sessions (gap 2
/// minutes, grace 1), in stores of `store_type`: the window updates, the
/// session updates, then both stores' contents and the store files.
type WindowedRun =
    (Vec<(String, i64)>, Vec<(String, Option<i64>)>, Vec<(String, i64, i64)>, Vec<(String, i64, i64, i64)>);

fn windowed_and_session_counts(store_type: StoreType) -> (WindowedRun, Vec<std::path::PathBuf>) {
    const MINUTE_MS: i64 = 60_000;
    let builder = StreamsBuilder::new();
    let grouped = builder
        .stream("clicks", Consumed::with(Serdes::string(), Serdes::string()))
        .group_by_key(Grouped::with(Serdes::string(), Serdes::string()));
    grouped
        .windowed_by(TimeWindows::of_size_and_grace(5 * MINUTE_MS, MINUTE_MS))
        .count(Materialized::as_("per-window").with_store_type(store_type))
        .to_stream()
        .map(|windowed: &Windowed<String>, count: &Option<i64>| {
            (format!("{}@{}", windowed.key, windowed.window.start_ms), count.unwrap_or(0))
        })
        .to("window-counts", Produced::with(Serdes::string(), Serdes::i64()));
    grouped
        .windowed_by_session(SessionWindows::of_inactivity_gap_and_grace(2 * MINUTE_MS, MINUTE_MS))
        .count(Materialized::as_("per-session").with_store_type(store_type))
        .to_stream()
        .map(|windowed: &Windowed<String>, count: &Option<i64>| {
            (format!("{}@{}-{}", windowed.key, windowed.window.start_ms, windowed.window.end_ms), *count)
        })
        .to("session-counts", Produced::with(Serdes::string(), Serdes::nullable(Serdes::i64())));
    let application_id = format!("windowed-{store_type:?}");
    let config = config(&application_id);
    let driver = TopologyTestDriver::new(builder.build().unwrap(), config.clone()).unwrap();
    let input = driver.create_input_topic("clicks", Serdes::string(), Serdes::string());
    let users = ["ann", "ben", "cy"];
    for step in 20..420_i64 {
        // Every 6 s, a user; every seventh click 90 s late (57 of them).
        let time_ms = step * 6_000 - if step % 7 == 0 { 90_000 } else { 0 };
        input.pipe_input(&users[(step % 3) as usize].to_string(), &"p".to_string(), time_ms).unwrap();
    }
    let windows = driver.create_output_topic("window-counts", Serdes::string(), Serdes::i64());
    let sessions = driver.create_output_topic("session-counts", Serdes::string(), Serdes::nullable(Serdes::i64()));
    let run = (
        windows.read_key_values_to_list().unwrap(),
        sessions.read_key_values_to_list().unwrap(),
        driver.window_store_all::<String, i64>("per-window").unwrap(),
        driver.session_store_all::<String, i64>("per-session").unwrap(),
    );
    let files = store_files(&config.state_dir)
        .into_iter()
        .filter(|path| path.to_string_lossy().contains(&format!("/{application_id}/")))
        .collect();
    (run, files)
}

#[test]
fn windowed_and_session_counts_are_on_disk_by_default_and_in_memory_on_request_with_the_same_results() {
    let (on_disk, files) = windowed_and_session_counts(StoreType::Persistent);
    let mut files: Vec<String> = files.iter().map(|path| path.to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].ends_with("/0_0/per-session/store.redb") && files[1].ends_with("/0_0/per-window/store.redb"));
    let (in_memory, files) = windowed_and_session_counts(StoreType::InMemory);
    assert!(files.is_empty(), "{files:?}");
    assert_eq!(on_disk, in_memory);
    let (window_updates, session_updates, windows, sessions) = on_disk;
    // One update per counted click: every click on time, and the late
    // ones whose window was still within its grace (some, not all).
    assert!((400 - 57 + 1..400).contains(&window_updates.len()), "{} updates", window_updates.len());
    assert!(session_updates.iter().any(|(_, count)| count.is_none()), "some sessions merged");
    // Retention: windows starting within size + grace (6 minutes) of the
    // newest start, sessions ending within gap + grace (3 minutes) of the
    // newest end (419 * 6 s); the older ones are gone.
    let newest_start_ms = windows.iter().map(|(_, start_ms, _)| *start_ms).max().unwrap();
    assert!(windows.iter().all(|(_, start_ms, _)| *start_ms > newest_start_ms - 6 * 60_000), "{windows:?}");
    assert_eq!(windows.iter().map(|(_, start_ms, _)| *start_ms).min(), Some(newest_start_ms - 5 * 60_000));
    assert!(sessions.iter().all(|(_, _, end_ms, _)| *end_ms >= 419 * 6_000 - 3 * 60_000), "{sessions:?}");
    assert!(!sessions.is_empty());
}

#[test]
fn a_window_retention_shorter_than_size_plus_grace_fails_at_build_and_a_longer_one_keeps_more_windows() {
    let builder = StreamsBuilder::new();
    builder
        .stream("clicks", Consumed::with(Serdes::string(), Serdes::string()))
        .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
        .windowed_by(TimeWindows::of_size_and_grace(10, 5))
        .count(Materialized::as_("short").with_retention(14));
    assert!(matches!(builder.build(), Err(StreamsError::Config(message)) if message.contains("short")));

    let builder = StreamsBuilder::new();
    builder
        .stream("clicks", Consumed::with(Serdes::string(), Serdes::string()))
        .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
        .windowed_by(TimeWindows::of_size_and_grace(10, 5))
        .count(Materialized::as_("long").with_retention(100));
    let driver = TopologyTestDriver::new(builder.build().unwrap(), config("long-retention")).unwrap();
    let input = driver.create_input_topic("clicks", Serdes::string(), Serdes::string());
    for timestamp_ms in [1, 25, 55, 95] {
        input.pipe_input(&"dee".to_string(), &"p".to_string(), timestamp_ms).unwrap();
    }
    // Size + grace (15 ms) would keep only [90,100); 100 ms keeps every
    // window starting after 90 - 100.
    let starts: Vec<i64> =
        driver.window_store_all::<String, i64>("long").unwrap().into_iter().map(|(_, start_ms, _)| start_ms).collect();
    assert_eq!(starts, vec![0, 20, 50, 90]);
}

fn pairs(list: &[(&str, i64)]) -> Vec<(String, i64)> {
    list.iter().map(|(key, value)| (key.to_string(), *value)).collect()
}

#[test]
fn tumbling_window_counts_late_records_within_grace_and_drops_those_after() {
    // Windows of 10 ms with 5 ms grace: window [0,10) closes when stream
    // time reaches 15.
    let (driver, input, output) = windowed_count_driver(TimeWindows::of_size_and_grace(10, 5));
    let click = |timestamp_ms| input.pipe_input(&"alice".to_string(), &"page".to_string(), timestamp_ms).unwrap();
    click(1);
    click(5);
    click(12); // stream time 12: [0,10) is past its end, but within grace
    click(8); // late, within grace: counted
    click(20); // stream time 20: [0,10) is closed (10 + 5 <= 20)
    click(3); // late, past grace: dropped
    click(14); // [10,20) is still open (20 + 5 > 20)
    assert_eq!(
        output.read_key_values_to_list().unwrap(),
        pairs(&[("alice@0", 1), ("alice@0", 2), ("alice@10", 1), ("alice@0", 3), ("alice@20", 1), ("alice@10", 2)])
    );
    // The store keeps size + grace (15 ms) of windows behind the latest
    // start, as Kafka's default retention: [0,10) is gone once [20,30) opens.
    let store = driver.window_store_all::<String, i64>("clicks-per-window").unwrap();
    assert_eq!(store, vec![("alice".into(), 10, 2), ("alice".into(), 20, 1)]);
}

#[test]
fn tumbling_window_without_grace_drops_a_record_once_its_window_has_ended() {
    let (_driver, input, output) = windowed_count_driver(TimeWindows::of_size_with_no_grace(10));
    input.pipe_input(&"bob".to_string(), &"p".to_string(), 12).unwrap();
    input.pipe_input(&"bob".to_string(), &"p".to_string(), 9).unwrap(); // [0,10) ended at stream time 12
    input.pipe_input(&"bob".to_string(), &"p".to_string(), 10).unwrap();
    assert_eq!(output.read_key_values_to_list().unwrap(), pairs(&[("bob@10", 1), ("bob@10", 2)]));
}

#[test]
fn hopping_windows_count_a_record_in_every_window_that_contains_it() {
    // Size 10, advance 5: 7 is in [0,10) and [5,15); 12 in [5,15) and [10,20).
    let (_driver, input, output) = windowed_count_driver(TimeWindows::of_size_and_grace(10, 0).advance_by(5));
    input.pipe_input(&"carol".to_string(), &"p".to_string(), 7).unwrap();
    input.pipe_input(&"carol".to_string(), &"p".to_string(), 12).unwrap();
    assert_eq!(
        output.read_key_values_to_list().unwrap(),
        pairs(&[("carol@0", 1), ("carol@5", 1), ("carol@5", 2), ("carol@10", 1)])
    );
}

struct Enrich {
    driver: TopologyTestDriver,
    customers: TestInputTopic<String, String>,
    orders: TestInputTopic<String, String>,
    output: TestOutputTopic<String, String>,
}

fn orders_and_customers(left: bool) -> Enrich {
    let builder = StreamsBuilder::new();
    let customers = builder.table(
        "customers",
        Consumed::with(Serdes::string(), Serdes::string()),
        Materialized::as_("customers-store"),
    );
    let orders = builder.stream("orders", Consumed::with(Serdes::string(), Serdes::string()));
    let enriched = if left {
        orders.left_join(&customers, |order: &String, customer: Option<&String>| {
            format!("{order} for {}", customer.map_or("unknown", String::as_str))
        })
    } else {
        orders.join(&customers, |order: &String, customer: &String| format!("{order} for {customer}"))
    };
    enriched.to("orders-enriched", Produced::with(Serdes::string(), Serdes::string()));
    let driver = TopologyTestDriver::new(builder.build().unwrap(), config("enrich")).unwrap();
    let customers = driver.create_input_topic("customers", Serdes::string(), Serdes::string());
    let orders = driver.create_input_topic("orders", Serdes::string(), Serdes::string());
    let output = driver.create_output_topic("orders-enriched", Serdes::string(), Serdes::string());
    Enrich { driver, customers, orders, output }
}

#[test]
fn stream_table_join_stops_matching_after_a_tombstone() {
    let Enrich { driver, customers, orders, output } = orders_and_customers(false);
    let c1 = "c1".to_string();
    orders.pipe_input(&c1, &"book".into(), 1).unwrap(); // no customer yet: no output
    customers.pipe_input(&c1, &"Ada".into(), 2).unwrap();
    orders.pipe_input(&c1, &"pen".into(), 3).unwrap();
    customers.pipe_input(&c1, &"Ada L.".into(), 4).unwrap();
    orders.pipe_input(&c1, &"ink".into(), 5).unwrap();
    customers.pipe_tombstone(&c1, 6).unwrap(); // deletes c1
    orders.pipe_input(&c1, &"cup".into(), 7).unwrap();
    assert_eq!(
        output.read_key_values_to_list().unwrap(),
        vec![("c1".to_string(), "pen for Ada".to_string()), ("c1".to_string(), "ink for Ada L.".to_string())]
    );
    assert_eq!(driver.key_value_store_get::<String, String>("customers-store", &c1).unwrap(), None);
    // The delete was logged as a tombstone.
    let changelog = driver.written("enrich-customers-store-changelog");
    assert_eq!(changelog.last().map(|record| record.value.clone()), Some(None));
}

#[test]
fn stream_table_left_join_emits_with_none_when_the_key_is_absent_or_deleted() {
    let Enrich { customers, orders, output, .. } = orders_and_customers(true);
    let c1 = "c1".to_string();
    orders.pipe_input(&c1, &"book".into(), 1).unwrap();
    customers.pipe_input(&c1, &"Ada".into(), 2).unwrap();
    orders.pipe_input(&c1, &"pen".into(), 3).unwrap();
    customers.pipe_tombstone(&c1, 4).unwrap();
    orders.pipe_input(&c1, &"cup".into(), 5).unwrap();
    let values: Vec<String> = output.read_key_values_to_list().unwrap().into_iter().map(|(_, value)| value).collect();
    assert_eq!(values, vec!["book for unknown", "pen for Ada", "cup for unknown"]);
}

#[test]
fn table_filter_and_to_stream_forward_deletes_as_none() {
    let builder = StreamsBuilder::new();
    builder
        .table("prices", Consumed::with(Serdes::string(), Serdes::i64()), Materialized::default())
        .filter(|_, price| *price >= 10)
        .map_values(|price| price * 2)
        .to_stream()
        .to("doubled-expensive", Produced::with(Serdes::string(), Serdes::nullable(Serdes::i64())));
    let driver = TopologyTestDriver::new(builder.build().unwrap(), config("prices")).unwrap();
    let input = driver.create_input_topic("prices", Serdes::string(), Serdes::i64());
    let output = driver.create_output_topic("doubled-expensive", Serdes::string(), Serdes::nullable(Serdes::i64()));
    let (a, b) = ("a".to_string(), "b".to_string());
    input.pipe_input(&a, &20, 1).unwrap();
    input.pipe_input(&b, &5, 2).unwrap(); // filtered out, nothing was there: nothing sent
    input.pipe_input(&a, &7, 3).unwrap(); // no longer passes: a delete downstream
    input.pipe_input(&b, &30, 4).unwrap();
    input.pipe_tombstone(&b, 5).unwrap();
    assert_eq!(
        output.read_key_values_to_list().unwrap(),
        vec![(a.clone(), Some(40)), (a, None), (b.clone(), Some(60)), (b, None)]
    );
}

#[test]
fn reduce_and_aggregate_emit_every_update_per_key() {
    let builder = StreamsBuilder::new();
    let grouped = builder
        .stream("amounts", Consumed::with(Serdes::string(), Serdes::i64()))
        .group_by_key(Grouped::with(Serdes::string(), Serdes::i64()));
    grouped
        .reduce(|total, amount| total + amount, Materialized::as_("sums"))
        .to_stream()
        .to("sums", Produced::with(Serdes::string(), Serdes::nullable(Serdes::i64())));
    grouped
        .aggregate(
            String::new,
            |_, amount, list: String| if list.is_empty() { amount.to_string() } else { format!("{list},{amount}") },
            Materialized::as_("lists").with_value_serde(Serdes::string()),
        )
        .to_stream()
        .to("lists", Produced::with(Serdes::string(), Serdes::nullable(Serdes::string())));
    let driver = TopologyTestDriver::new(builder.build().unwrap(), config("agg")).unwrap();
    let input = driver.create_input_topic("amounts", Serdes::string(), Serdes::i64());
    for (key, amount) in [("x", 3), ("y", 1), ("x", 4), ("x", -2)] {
        input.pipe_input(&key.to_string(), &amount, 0).unwrap();
    }
    let sums = driver.create_output_topic("sums", Serdes::string(), Serdes::i64());
    assert_eq!(sums.read_key_values_to_list().unwrap(), pairs(&[("x", 3), ("y", 1), ("x", 7), ("x", 5)]));
    let lists = driver.create_output_topic("lists", Serdes::string(), Serdes::string());
    let lists: BTreeMap<String, String> = lists.read_key_values_to_map().unwrap();
    assert_eq!(lists.get("x").map(String::as_str), Some("3,4,-2"));
    assert_eq!(driver.key_value_store_all::<String, i64>("sums").unwrap(), pairs(&[("x", 5), ("y", 1)]));
    // No key changed: no repartition topic.
    assert!(driver.written("agg-sums-repartition").is_empty());
}

fn amounts_driver(handler: DeserializationExceptionHandler) -> TopologyTestDriver {
    amounts_driver_with(handler, None)
}

fn amounts_driver_with(
    handler: DeserializationExceptionHandler,
    dead_letter_topic: Option<&str>,
) -> TopologyTestDriver {
    let builder = StreamsBuilder::new();
    builder
        .stream("amounts", Consumed::with(Serdes::string(), Serdes::i64()))
        .map_values(|amount| amount * 10)
        .to("scaled", Produced::with(Serdes::string(), Serdes::i64()));
    let mut config = config("bad-input");
    config.deserialization_exception_handler = handler;
    config.dead_letter_queue_topic = dead_letter_topic.map(str::to_string);
    TopologyTestDriver::new(builder.build().unwrap(), config).unwrap()
}

#[test]
fn a_bad_record_fails_by_default_and_is_skipped_with_log_and_continue() {
    let bad_value = Some(Bytes::from_static(b"abc")); // 3 bytes: not an i64
    let key = Some(Bytes::from_static(b"k"));
    let good_value = Some(Bytes::copy_from_slice(&2i64.to_be_bytes()));

    let failing = amounts_driver(DeserializationExceptionHandler::LogAndFail);
    let error = failing.pipe_raw("amounts", key.clone(), bad_value.clone(), 0).unwrap_err();
    assert!(
        matches!(error, StreamsError::Deserialization { ref topic, offset: 0, .. } if topic == "amounts"),
        "{error}"
    );

    let skipping = amounts_driver(DeserializationExceptionHandler::LogAndContinue);
    skipping.pipe_raw("amounts", key.clone(), bad_value, 0).unwrap();
    skipping.pipe_raw("amounts", key, good_value, 1).unwrap();
    let output = skipping.create_output_topic("scaled", Serdes::string(), Serdes::i64());
    assert_eq!(output.read_key_values_to_list().unwrap(), pairs(&[("k", 20)]));
}

#[test]
fn split_merge_and_stateless_operations_route_records_like_kafka() {
    let builder = StreamsBuilder::new();
    let numbers = builder.stream("numbers", Consumed::with(Serdes::string(), Serdes::i64()));
    let branches =
        numbers.split().branch("negative", |_, n| *n < 0).branch("small", |_, n| *n < 10).default_branch("large");
    assert_eq!(branches.len(), 3);
    let by_suffix =
        |suffix: &str| branches.iter().find(|(name, _)| name.ends_with(suffix)).map(|(_, s)| s.clone()).unwrap();
    by_suffix("negative").to("negative", Produced::with(Serdes::string(), Serdes::i64()));
    by_suffix("small")
        .merge(&by_suffix("large").filter_not(|_, n| *n > 100))
        .select_key(|_, n| format!("n{n}"))
        .flat_map(|key, n| vec![(key.clone(), *n), (format!("{key}-again"), *n)])
        .filter(|key, _| !key.starts_with("n5-"))
        .to("positive", Produced::with(Serdes::string(), Serdes::i64()));
    let driver = TopologyTestDriver::new(builder.build().unwrap(), config("split")).unwrap();
    let input = driver.create_input_topic("numbers", Serdes::string(), Serdes::i64());
    for n in [-1, 5, 50, 500] {
        input.pipe_input(&"k".to_string(), &n, 0).unwrap();
    }
    let negative = driver.create_output_topic("negative", Serdes::string(), Serdes::i64());
    assert_eq!(negative.read_key_values_to_list().unwrap(), pairs(&[("k", -1)]));
    let positive = driver.create_output_topic("positive", Serdes::string(), Serdes::i64());
    assert_eq!(positive.read_key_values_to_list().unwrap(), pairs(&[("n5", 5), ("n50", 50), ("n50-again", 50)]));
}

#[test]
fn event_time_can_come_from_the_value_through_a_timestamp_extractor() {
    // The value is "<event time>:<page>"; windows follow that time, not the
    // record's timestamp.
    let builder = StreamsBuilder::new();
    let extractor: TimestampExtractor = std::sync::Arc::new(|record: &SourceRecord<'_>| {
        record
            .value
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|value| value.split(':').next())
            .and_then(|time| time.parse().ok())
            .unwrap_or(-1)
    });
    builder
        .stream("views", Consumed::with(Serdes::string(), Serdes::string()).with_timestamp_extractor(extractor))
        .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
        .windowed_by(TimeWindows::of_size_with_no_grace(100))
        .count(Materialized::as_("views"))
        .to_stream()
        .map(|windowed, count| (windowed.window.start_ms, count.unwrap_or(0)))
        .to("view-counts", Produced::with(Serdes::i64(), Serdes::i64()));
    let driver = TopologyTestDriver::new(builder.build().unwrap(), config("views")).unwrap();
    let input = driver.create_input_topic("views", Serdes::string(), Serdes::string());
    input.pipe_input(&"u".into(), &"150:home".into(), 0).unwrap();
    input.pipe_input(&"u".into(), &"no time".into(), 0).unwrap(); // -1: skipped
    input.pipe_input(&"u".into(), &"250:home".into(), 0).unwrap();
    let output = driver.create_output_topic("view-counts", Serdes::i64(), Serdes::i64());
    assert_eq!(output.read_key_values_to_list().unwrap(), vec![(100, 1), (200, 1)]);
}

/// Counts per key in a store and emits every count on a wall-clock
/// punctuation, and the number of records seen on a stream-time one.
struct CountAndReport {
    wall_clock: Option<PunctuationId>,
    seen: i64,
}

impl Processor<String, String, String, i64> for CountAndReport {
    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, i64>) -> Result<(), StreamsError> {
        self.wall_clock = Some(ctx.schedule(1_000, PunctuationType::WallClockTime)?);
        ctx.schedule(100, PunctuationType::StreamTime)?;
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, i64>,
        record: Record<String, String>,
    ) -> Result<(), StreamsError> {
        self.seen += 1;
        let store = ctx.get_state_store::<KeyValueStore<String, i64>>("report-counts")?;
        let count = store.get(&record.key)?.unwrap_or(0) + 1;
        store.put(&record.key, &count)
    }

    fn punctuate(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, i64>,
        id: PunctuationId,
        timestamp_ms: i64,
    ) -> Result<(), StreamsError> {
        if Some(id) == self.wall_clock {
            let counts = ctx.get_state_store::<KeyValueStore<String, i64>>("report-counts")?.all()?;
            for (key, count) in counts {
                ctx.forward_to("counts-sink", Record::new(key, count, timestamp_ms))?;
            }
        } else {
            ctx.forward_to("seen-sink", Record::new("seen".to_string(), self.seen, timestamp_ms))?;
        }
        Ok(())
    }
}

#[test]
fn processor_api_stores_and_punctuations_by_wall_clock_and_stream_time() {
    let mut topology = Topology::new();
    topology
        .add_source("events", &["events"], Serdes::string(), Serdes::string())
        .unwrap()
        .add_processor("report", || CountAndReport { wall_clock: None, seen: 0 }, &["events"])
        .unwrap()
        .add_state_store(Stores::key_value_store_builder("report-counts", Serdes::string(), Serdes::i64()), &["report"])
        .unwrap()
        .add_sink("counts-sink", "counts", Serdes::string(), Serdes::i64(), &["report"])
        .unwrap()
        .add_sink("seen-sink", "seen", Serdes::string(), Serdes::i64(), &["report"])
        .unwrap();
    assert!(topology.add_sink("bad", "x", Serdes::string(), Serdes::i64(), &["nope"]).is_err());

    let driver = TopologyTestDriver::new(topology, config("report")).unwrap();
    let input = driver.create_input_topic("events", Serdes::string(), Serdes::string());
    let counts = driver.create_output_topic("counts", Serdes::string(), Serdes::i64());
    let seen = driver.create_output_topic("seen", Serdes::string(), Serdes::i64());
    input.pipe_input(&"a".into(), &"x".into(), 0).unwrap(); // first stream-time punctuation at 0
    input.pipe_input(&"a".into(), &"x".into(), 50).unwrap();
    input.pipe_input(&"b".into(), &"x".into(), 120).unwrap(); // stream time passes 100
    assert_eq!(seen.read_key_values_to_list().unwrap(), pairs(&[("seen", 1), ("seen", 3)]));

    driver.advance_wall_clock_time(999).unwrap();
    assert!(counts.is_empty(), "the wall-clock punctuation is not due before 1000 ms");
    driver.advance_wall_clock_time(1).unwrap();
    assert_eq!(counts.read_key_values_to_list().unwrap(), pairs(&[("a", 2), ("b", 1)]));
}

#[test]
fn topology_mistakes_are_errors_at_build() {
    // Joining after a key change without a repartition is refused, as the
    // stream would not be co-partitioned with the table.
    let builder = StreamsBuilder::new();
    let table = builder.table("t", Consumed::with(Serdes::string(), Serdes::string()), Materialized::default());
    builder
        .stream("s", Consumed::with(Serdes::string(), Serdes::string()))
        .select_key(|_, v| v.clone())
        .join(&table, |a, b| format!("{a}{b}"))
        .to("out", Produced::with(Serdes::string(), Serdes::string()));
    assert!(matches!(builder.build(), Err(StreamsError::Topology(_))));

    // With the repartition it builds, and the join reads the repartitioned stream.
    let builder = StreamsBuilder::new();
    let table = builder.table("t", Consumed::with(Serdes::string(), Serdes::string()), Materialized::default());
    builder
        .stream("s", Consumed::with(Serdes::string(), Serdes::string()))
        .select_key(|_, v| v.clone())
        .repartition(Repartitioned::with(Serdes::string(), Serdes::string()).with_name("by-value"))
        .join(&table, |a, b| format!("{a}+{b}"))
        .to("out", Produced::with(Serdes::string(), Serdes::string()));
    let driver = TopologyTestDriver::new(builder.build().unwrap(), config("rekey")).unwrap();
    driver.create_input_topic("t", Serdes::string(), Serdes::string()).pipe_input(&"v".into(), &"T".into(), 0).unwrap();
    driver.create_input_topic("s", Serdes::string(), Serdes::string()).pipe_input(&"k".into(), &"v".into(), 1).unwrap();
    let output = driver.create_output_topic("out", Serdes::string(), Serdes::string());
    assert_eq!(output.read_key_values_to_list().unwrap(), vec![("v".to_string(), "v+T".to_string())]);
    assert_eq!(driver.written("rekey-by-value-repartition").len(), 1);
}

#[test]
fn suppress_until_window_closes_emits_each_windows_final_count_once() {
    let builder = StreamsBuilder::new();
    builder
        .stream("clicks", Consumed::with(Serdes::string(), Serdes::string()))
        .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
        .windowed_by(TimeWindows::of_size_and_grace(10, 5))
        .count(Materialized::as_("clicks-per-window"))
        .suppress(Suppressed::until_window_closes(Serdes::string(), Serdes::i64()).with_name("final"))
        .to_stream()
        .map(|windowed: &Windowed<String>, count: &Option<i64>| {
            (format!("{}@{}", windowed.key, windowed.window.start_ms), count.unwrap_or(0))
        })
        .to("final-counts", Produced::with(Serdes::string(), Serdes::i64()));
    let driver = TopologyTestDriver::new(builder.build().unwrap(), config("suppress")).unwrap();
    let input = driver.create_input_topic("clicks", Serdes::string(), Serdes::string());
    let output = driver.create_output_topic("final-counts", Serdes::string(), Serdes::i64());
    let click =
        |user: &str, timestamp_ms| input.pipe_input(&user.to_string(), &"page".to_string(), timestamp_ms).unwrap();
    click("alice", 1);
    click("alice", 5);
    click("bob", 12);
    click("alice", 8); // late, within grace: still counts in [0,10)
    assert!(output.is_empty(), "nothing before [0,10) closes at stream time 15");
    click("alice", 20); // [0,10) closes: its final counts, once
    assert_eq!(output.read_key_values_to_list().unwrap(), pairs(&[("alice@0", 3)]));
    click("alice", 3); // past grace: dropped, and nothing emitted again
    click("alice", 14);
    click("bob", 26); // [10,20) closes (20 + 5 <= 26)
    assert_eq!(output.read_key_values_to_list().unwrap(), pairs(&[("alice@10", 1), ("bob@10", 1)]));
    // The buffer is a logged store: what it held and emitted is in its changelog.
    assert!(!driver.written("suppress-final-store-changelog").is_empty());
}

#[test]
fn table_table_join_follows_updates_and_deletes_on_both_sides() {
    let builder = StreamsBuilder::new();
    let names = builder.table("names", Consumed::with(Serdes::string(), Serdes::string()), Materialized::as_("names"));
    let cities =
        builder.table("cities", Consumed::with(Serdes::string(), Serdes::string()), Materialized::as_("cities"));
    let joined = names.join(&cities, |name: &String, city: &String| format!("{name} in {city}"));
    joined.to_stream().to("people", Produced::with(Serdes::string(), Serdes::nullable(Serdes::string())));
    // A stream joined with the joined table reads both stores.
    builder
        .stream("visits", Consumed::with(Serdes::string(), Serdes::string()))
        .left_join(&joined, |visit: &String, person: Option<&String>| {
            format!("{visit}: {}", person.map_or("?", String::as_str))
        })
        .to("visits-enriched", Produced::with(Serdes::string(), Serdes::string()));
    let driver = TopologyTestDriver::new(builder.build().unwrap(), config("tables")).unwrap();
    let names = driver.create_input_topic("names", Serdes::string(), Serdes::string());
    let cities = driver.create_input_topic("cities", Serdes::string(), Serdes::string());
    let visits = driver.create_input_topic("visits", Serdes::string(), Serdes::string());
    let people = driver.create_output_topic("people", Serdes::string(), Serdes::nullable(Serdes::string()));
    let u1 = "u1".to_string();
    names.pipe_input(&u1, &"Ada".into(), 1).unwrap(); // no city yet: nothing
    cities.pipe_input(&u1, &"London".into(), 2).unwrap();
    names.pipe_input(&u1, &"Ada L.".into(), 3).unwrap();
    visits.pipe_input(&u1, &"museum".into(), 4).unwrap();
    cities.pipe_tombstone(&u1, 5).unwrap(); // the join's entry goes
    visits.pipe_input(&u1, &"park".into(), 6).unwrap();
    assert_eq!(
        people.read_key_values_to_list().unwrap(),
        vec![
            (u1.clone(), Some("Ada in London".to_string())),
            (u1.clone(), Some("Ada L. in London".to_string())),
            (u1, None)
        ]
    );
    let enriched = driver.create_output_topic("visits-enriched", Serdes::string(), Serdes::string());
    let values: Vec<String> = enriched.read_key_values_to_list().unwrap().into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, vec!["museum: Ada L. in London", "park: ?"]);
}

#[test]
fn global_table_join_looks_up_a_key_picked_from_the_record() {
    // Orders keyed by order id; the customer id is in the value. A global
    // table needs no co-partitioning: the key is picked per record.
    let builder = StreamsBuilder::new();
    let customers = builder.global_table(
        "customers",
        Consumed::with(Serdes::string(), Serdes::string()),
        Materialized::as_("customers-global"),
    );
    let orders = builder.stream("orders", Consumed::with(Serdes::string(), Serdes::string()));
    let customer_of = |_: &String, order: &String| order.split(':').next().unwrap_or_default().to_string();
    orders
        .join_global(&customers, customer_of, |order: &String, name: &String| format!("{order} by {name}"))
        .to("joined", Produced::with(Serdes::string(), Serdes::string()));
    orders
        .left_join_global(&customers, customer_of, |order: &String, name: Option<&String>| {
            format!("{order} by {}", name.map_or("nobody", String::as_str))
        })
        .to("left-joined", Produced::with(Serdes::string(), Serdes::string()));
    let topology = builder.build().unwrap();
    let description = topology.describe().to_string();
    assert!(
        description.contains("Sub-topology: 1 for global store (will not generate tasks)\n    Source: KSTREAM-SOURCE-0000000000 (topics: [customers])"),
        "{description}"
    );
    let driver = TopologyTestDriver::new(topology, config("global")).unwrap();
    let customers = driver.create_input_topic("customers", Serdes::string(), Serdes::string());
    let orders = driver.create_input_topic("orders", Serdes::string(), Serdes::string());
    customers.pipe_input(&"c1".into(), &"Ada".into(), 0).unwrap();
    orders.pipe_input(&"o1".into(), &"c1:book".into(), 1).unwrap();
    orders.pipe_input(&"o2".into(), &"c2:pen".into(), 2).unwrap();
    customers.pipe_tombstone(&"c1".into(), 3).unwrap();
    orders.pipe_input(&"o3".into(), &"c1:ink".into(), 4).unwrap();
    let joined = driver.create_output_topic("joined", Serdes::string(), Serdes::string());
    assert_eq!(joined.read_key_values_to_list().unwrap(), vec![("o1".to_string(), "c1:book by Ada".to_string())]);
    let left = driver.create_output_topic("left-joined", Serdes::string(), Serdes::string());
    let values: Vec<String> = left.read_key_values_to_list().unwrap().into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, vec!["c1:book by Ada", "c2:pen by nobody", "c1:ink by nobody"]);
    assert_eq!(driver.key_value_store_all::<String, String>("customers-global").unwrap(), vec![]);
}

#[test]
fn a_bad_record_goes_to_the_dead_letter_topic_unchanged_with_the_error_in_its_headers() {
    let bad_value = Some(Bytes::from_static(b"abc"));
    let key = Some(Bytes::from_static(b"k"));
    for handler in [DeserializationExceptionHandler::LogAndContinue, DeserializationExceptionHandler::LogAndFail] {
        let driver = amounts_driver_with(handler, Some("amounts-dlq"));
        driver.pipe_raw("amounts", key.clone(), Some(Bytes::copy_from_slice(&1i64.to_be_bytes())), 0).unwrap();
        let result = driver.pipe_raw("amounts", key.clone(), bad_value.clone(), 7);
        assert_eq!(result.is_err(), handler == DeserializationExceptionHandler::LogAndFail);
        let dead = driver.written("amounts-dlq");
        assert_eq!(dead.len(), 1, "{handler:?}");
        assert_eq!(
            (dead[0].key.clone(), dead[0].value.clone(), dead[0].timestamp_ms),
            (key.clone(), bad_value.clone(), 7)
        );
        let header = |name: &str| {
            dead[0]
                .headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
        };
        assert_eq!(header("__streams.errors.topic").as_deref(), Some("amounts"));
        assert_eq!(header("__streams.errors.offset").as_deref(), Some("1"));
        assert!(header("__streams.errors.message").is_some_and(|message| message.contains("i64")));
    }
}

#[test]
fn stream_stream_join_pairs_records_within_the_window_once_and_drops_late_ones() {
    let builder = StreamsBuilder::new();
    let left = builder.stream("left", Consumed::with(Serdes::string(), Serdes::string()));
    let right = builder.stream("right", Consumed::with(Serdes::string(), Serdes::string()));
    left.join_stream(
        &right,
        |l: &String, r: &String| format!("{l}+{r}"),
        JoinWindows::of_time_difference_without_grace(10),
        StreamJoined::with(Serdes::string(), Serdes::string(), Serdes::string()).with_store_name("pairs"),
    )
    .to("joined", Produced::with(Serdes::string(), Serdes::string()));
    let driver = TopologyTestDriver::new(builder.build().unwrap(), config("ssjoin")).unwrap();
    let left = driver.create_input_topic("left", Serdes::string(), Serdes::string());
    let right = driver.create_input_topic("right", Serdes::string(), Serdes::string());
    let output = driver.create_output_topic("joined", Serdes::string(), Serdes::string());
    let k = "k".to_string();
    left.pipe_input(&k, &"A".into(), 0).unwrap(); // nothing on the right yet
    right.pipe_input(&k, &"a".into(), 5).unwrap(); // A+a
    right.pipe_input(&"other".to_string(), &"x".into(), 6).unwrap(); // another key: never joins
    right.pipe_input(&k, &"b".into(), 20).unwrap(); // 20 ms after A: outside the 10 ms window
    left.pipe_input(&k, &"B".into(), 15).unwrap(); // B+a (10 apart), B+b (5 apart)
    left.pipe_input(&k, &"C".into(), 3).unwrap(); // late: 3 + 10 < stream time 20
    left.pipe_input(&k, &"D".into(), 12).unwrap(); // D+a, D+b
    let mut joined = Vec::new();
    while let Some(record) = output.read_record() {
        let record = record.unwrap();
        joined.push((record.value, record.timestamp_ms));
    }
    let expected: Vec<(String, i64)> = [("A+a", 5), ("B+a", 15), ("B+b", 20), ("D+a", 12), ("D+b", 20)]
        .iter()
        .map(|(v, t)| (v.to_string(), *t))
        .collect();
    assert_eq!(joined, expected);
    // Both sides are logged, several values per (key, time) as a list.
    assert_eq!(driver.written("ssjoin-pairs-this-join-store-changelog").len(), 3, "A, B and D (C was late)");
    assert_eq!(driver.written("ssjoin-pairs-other-join-store-changelog").len(), 3);
}

#[test]
fn stream_stream_join_keeps_every_record_of_the_same_key_and_time() {
    let builder = StreamsBuilder::new();
    let left = builder.stream("left", Consumed::with(Serdes::string(), Serdes::string()));
    let right = builder.stream("right", Consumed::with(Serdes::string(), Serdes::string()));
    left.join_stream(
        &right,
        |l: &String, r: &String| format!("{l}+{r}"),
        JoinWindows::of_time_difference_and_grace(0, 5),
        StreamJoined::with(Serdes::string(), Serdes::string(), Serdes::string()),
    )
    .to("joined", Produced::with(Serdes::string(), Serdes::string()));
    let driver = TopologyTestDriver::new(builder.build().unwrap(), config("dups")).unwrap();
    let left = driver.create_input_topic("left", Serdes::string(), Serdes::string());
    let right = driver.create_input_topic("right", Serdes::string(), Serdes::string());
    let k = "k".to_string();
    right.pipe_input(&k, &"a".into(), 7).unwrap();
    right.pipe_input(&k, &"b".into(), 7).unwrap();
    right.pipe_input(&k, &"c".into(), 8).unwrap(); // 1 ms apart: outside a 0 ms difference
    left.pipe_input(&k, &"L".into(), 7).unwrap();
    let output = driver.create_output_topic("joined", Serdes::string(), Serdes::string());
    let values: Vec<String> = output.read_key_values_to_list().unwrap().into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, vec!["L+a", "L+b"]);
}

/// Counts per session of user "a", written as "a@start-end" -> count
/// (None: the session was merged away).
fn session_counts(windows: SessionWindows, clicks_ms: &[i64]) -> (TopologyTestDriver, Vec<(String, Option<i64>)>) {
    let builder = StreamsBuilder::new();
    builder
        .stream("clicks", Consumed::with(Serdes::string(), Serdes::string()))
        .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
        .windowed_by_session(windows)
        .count(Materialized::as_("sessions"))
        .to_stream()
        .map(|windowed: &Windowed<String>, count: &Option<i64>| {
            let session = format!("{}@{}-{}", windowed.key, windowed.window.start_ms, windowed.window.end_ms);
            (session, *count)
        })
        .to("session-counts", Produced::with(Serdes::string(), Serdes::nullable(Serdes::i64())));
    let driver = TopologyTestDriver::new(builder.build().unwrap(), config("sessions")).unwrap();
    let input = driver.create_input_topic("clicks", Serdes::string(), Serdes::string());
    for timestamp_ms in clicks_ms {
        input.pipe_input(&"a".to_string(), &"p".to_string(), *timestamp_ms).unwrap();
    }
    let output = driver.create_output_topic("session-counts", Serdes::string(), Serdes::nullable(Serdes::i64()));
    let updates = output.read_key_values_to_list().unwrap();
    (driver, updates)
}

fn session_updates(list: &[(&str, Option<i64>)]) -> Vec<(String, Option<i64>)> {
    list.iter().map(|(session, count)| (session.to_string(), *count)).collect()
}

#[test]
fn session_windows_merge_on_a_bridging_record_within_grace() {
    // Gap 5, grace 10. 8 is within 5 of 3 and of 12: it bridges [0,3] and
    // [12,12] into [0,12]; both are deleted downstream first.
    let (_driver, updates) = session_counts(SessionWindows::of_inactivity_gap_and_grace(5, 10), &[0, 3, 12, 8]);
    let expected = session_updates(&[
        ("a@0-0", Some(1)),
        ("a@0-0", None),
        ("a@0-3", Some(2)),
        ("a@12-12", Some(1)),
        ("a@0-3", None),
        ("a@12-12", None),
        ("a@0-12", Some(4)),
    ]);
    assert_eq!(updates, expected);
}

#[test]
fn a_closed_session_is_never_merged_again_and_records_for_closed_sessions_are_dropped() {
    // No grace: at stream time 12, [0,3] is closed, so 8 joins [12,12] only;
    // at stream time 30, a record at 20 would make a session ending before
    // 30: dropped.
    let (driver, updates) = session_counts(SessionWindows::of_inactivity_gap_with_no_grace(5), &[0, 3, 12, 8, 30, 20]);
    let expected = session_updates(&[
        ("a@0-0", Some(1)),
        ("a@0-0", None),
        ("a@0-3", Some(2)),
        ("a@12-12", Some(1)),
        ("a@12-12", None),
        ("a@8-12", Some(2)),
        ("a@30-30", Some(1)),
    ]);
    assert_eq!(updates, expected);
    // The store keeps gap + grace behind the latest end: only [30,30].
    let store = driver.session_store_all::<String, i64>("sessions").unwrap();
    assert_eq!(store, vec![("a".to_string(), 30, 30, 1)]);
}

#[test]
fn session_reduce_and_aggregate_combine_values_across_a_merge() {
    let builder = StreamsBuilder::new();
    let sessions = builder
        .stream("amounts", Consumed::with(Serdes::string(), Serdes::i64()))
        .group_by_key(Grouped::with(Serdes::string(), Serdes::i64()))
        .windowed_by_session(SessionWindows::of_inactivity_gap_and_grace(10, 100));
    sessions.reduce(|a, b| a + b, Materialized::as_("sums"));
    sessions.aggregate(
        Vec::new,
        |_, amount, mut list: Vec<i64>| {
            list.push(*amount);
            list
        },
        |_, mut first, second| {
            first.extend(second);
            first
        },
        Materialized::as_("lists").with_value_serde(Serdes::json::<Vec<i64>>()),
    );
    let driver = TopologyTestDriver::new(builder.build().unwrap(), config("session-agg")).unwrap();
    let input = driver.create_input_topic("amounts", Serdes::string(), Serdes::i64());
    let k = "k".to_string();
    input.pipe_input(&k, &1, 0).unwrap();
    input.pipe_input(&k, &10, 20).unwrap(); // 20 apart: a second session
    input.pipe_input(&k, &100, 10).unwrap(); // 10 from each: bridges them
    assert_eq!(driver.session_store_all::<String, i64>("sums").unwrap(), vec![(k.clone(), 0, 20, 111)]);
    assert_eq!(driver.session_store_all::<String, Vec<i64>>("lists").unwrap(), vec![(k, 0, 20, vec![1, 10, 100])]);
}

/// Values per sliding window of key "A", written "A@start-end" -> the
/// values in it, comma-separated, in the order the updates came out.
fn sliding_contents(windows: SlidingWindows, records: &[(i64, i64)]) -> (TopologyTestDriver, Vec<(String, String)>) {
    let builder = StreamsBuilder::new();
    builder
        .stream("values", Consumed::with(Serdes::string(), Serdes::i64()))
        .group_by_key(Grouped::with(Serdes::string(), Serdes::i64()))
        .windowed_by(windows)
        .aggregate(
            Vec::new,
            |_, value: &i64, mut values: Vec<i64>| {
                values.push(*value);
                values
            },
            Materialized::as_("contents").with_value_serde(Serdes::list(Serdes::i64())),
        )
        .to_stream()
        .map(|windowed: &Windowed<String>, values: &Option<Vec<i64>>| {
            let window = format!("{}@{}-{}", windowed.key, windowed.window.start_ms, windowed.window.end_ms);
            let values: Vec<String> = values.iter().flatten().map(i64::to_string).collect();
            (window, values.join(","))
        })
        .to("contents-out", Produced::with(Serdes::string(), Serdes::string()));
    let driver = TopologyTestDriver::new(builder.build().unwrap(), config("sliding")).unwrap();
    let input = driver.create_input_topic("values", Serdes::string(), Serdes::i64());
    for (timestamp_ms, value) in records {
        input.pipe_input(&"A".to_string(), value, *timestamp_ms).unwrap();
    }
    let output = driver.create_output_topic("contents-out", Serdes::string(), Serdes::string());
    let updates = output.read_key_values_to_list().unwrap();
    (driver, updates)
}

fn window_updates(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(window, values)| (window.to_string(), values.to_string())).collect()
}

#[test]
fn sliding_windows_reproduce_kafkas_documented_example() {
    // SlidingWindows' Javadoc: a time difference of 5000 ms and A=1 at
    // 8000, A=2 at 9200, A=3 at 12400 make five windows: [3000;8000] holds
    // [1], [4200;9200] [1,2], [7400;12400] [1,2,3], [8001;13001] [2,3]
    // (made when 1 drops out), [9201;14201] [3] (made when 2 drops out).
    let windows = SlidingWindows::of_time_difference_with_no_grace(5_000);
    let (driver, updates) = sliding_contents(windows, &[(8_000, 1), (9_200, 2), (12_400, 3)]);
    // In Kafka's order: windows that held the record's time already, the
    // previous record's new right window, the record's left window.
    let expected = window_updates(&[
        ("A@3000-8000", "1"),
        ("A@8001-13001", "2"),
        ("A@4200-9200", "1,2"),
        ("A@8001-13001", "2,3"),
        ("A@9201-14201", "3"),
        ("A@7400-12400", "1,2,3"),
    ]);
    assert_eq!(updates, expected);
    let store: Vec<(i64, Vec<i64>)> = driver
        .window_store_all::<String, Vec<i64>>("contents")
        .unwrap()
        .into_iter()
        .map(|(_, start_ms, values)| (start_ms, values))
        .collect();
    assert_eq!(
        store,
        vec![(3_000, vec![1]), (4_200, vec![1, 2]), (7_400, vec![1, 2, 3]), (8_001, vec![2, 3]), (9_201, vec![3])]
    );
}

#[test]
fn a_late_sliding_record_updates_open_windows_within_grace_and_is_dropped_past_it() {
    // d = 10, grace 5. At stream time 40 windows ending before 35 are
    // closed. 22's right window [23,33] is closed too: dropped. 34's left
    // window [24,34] is closed, but it joins [30,40] (values in arrival
    // order, as Kafka's aggregator adds them) and makes its right window
    // [35,45] (holding 40, not 34).
    let windows = SlidingWindows::of_time_difference_and_grace(10, 5);
    let (_driver, updates) = sliding_contents(windows, &[(20, 20), (40, 40), (22, 22), (34, 34)]);
    let expected = window_updates(&[("A@10-20", "20"), ("A@30-40", "40"), ("A@30-40", "40,34"), ("A@35-45", "40")]);
    assert_eq!(updates, expected);
}

#[test]
fn sliding_records_before_the_time_difference_share_the_window_from_zero() {
    // d = 10: 3 and 7 fall in [0,10] (no window starts before 0); 7 makes
    // 3's right window [4,14]; 15 makes 7's right window [8,18] and its
    // left window [5,15], which holds 7 and 15.
    let windows = SlidingWindows::of_time_difference_with_no_grace(10);
    let (_driver, updates) = sliding_contents(windows, &[(3, 3), (7, 7), (15, 15)]);
    let expected =
        window_updates(&[("A@0-10", "3"), ("A@4-14", "7"), ("A@0-10", "3,7"), ("A@8-18", "15"), ("A@5-15", "7,15")]);
    assert_eq!(updates, expected);
}
