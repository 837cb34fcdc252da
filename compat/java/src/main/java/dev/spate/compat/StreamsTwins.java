package dev.spate.compat;

import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.CloseOptions;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.SlidingWindows;
import org.apache.kafka.streams.kstream.Suppressed;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.WindowStore;

/**
 * The Java twins of Spate Streams' three examples (streams/examples:
 * wordcount, windowed_clicks, enrich_orders) and of the test's sliding-window
 * count, written with Kafka Streams,
 * for the differential test cli/tests/streams_differential.rs. Each twin
 * builds the same topology as its example, with the same serdes and the
 * same output encoding, and the same names: topics and application ids are
 * the example's with {@code --prefix} in front (the Rust examples take the
 * same prefix from NAME_PREFIX). They run in one JVM, each as its own
 * application, until stdin closes (or the process is killed); the first
 * failure of any of them is printed to stderr and exits 1. It checks
 * nothing itself: the test reads the output topics and compares.
 *
 * <p>Usage: run.sh streams-twins --bootstrap HOST:PORT --prefix P --state-dir DIR
 */
final class StreamsTwins {
    private StreamsTwins() {}

    /** windowed_clicks: 1-minute tumbling windows with 10 s of grace. */
    private static final Duration WINDOW = Duration.ofMillis(60_000);
    private static final Duration GRACE = Duration.ofMillis(10_000);

    static void run(String[] argv) throws Exception {
        String bootstrap = null;
        String prefix = null;
        String stateDir = null;
        for (int i = 1; i + 1 < argv.length; i += 2) {
            switch (argv[i]) {
                case "--bootstrap" -> bootstrap = argv[i + 1];
                case "--prefix" -> prefix = argv[i + 1];
                case "--state-dir" -> stateDir = argv[i + 1];
                default -> throw new Scenario.Failure("unknown flag " + argv[i]);
            }
        }
        Scenario.check(bootstrap != null && prefix != null && stateDir != null,
                "usage: streams-twins --bootstrap HOST:PORT --prefix P --state-dir DIR");

        AtomicReference<Throwable> failed = new AtomicReference<>();
        List<KafkaStreams> apps = new ArrayList<>();
        Map<String, Topology> topologies = new LinkedHashMap<>();
        topologies.put("streams-wordcount", wordcount(prefix));
        topologies.put("streams-windowed-clicks", windowedClicks(prefix));
        topologies.put("streams-enrich-orders", enrichOrders(prefix));
        topologies.put("streams-sliding-clicks", slidingClicks(prefix));
        for (Map.Entry<String, Topology> entry : topologies.entrySet()) {
            String applicationId = prefix + entry.getKey();
            KafkaStreams app = new KafkaStreams(entry.getValue(),
                    properties(bootstrap, applicationId, Path.of(stateDir, applicationId)));
            app.setUncaughtExceptionHandler(e -> {
                failed.compareAndSet(null, e);
                return StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
            });
            apps.add(app);
        }
        apps.forEach(KafkaStreams::start);
        System.out.println("started " + topologies.keySet());
        System.out.flush();

        // Runs until stdin closes, watching for a failure meanwhile.
        Thread stdin = new Thread(() -> {
            try {
                while (System.in.read() >= 0) {
                    // Anything written is ignored; only the end counts.
                }
            } catch (java.io.IOException ignored) {
                // A broken stdin ends the run too.
            }
        });
        stdin.setDaemon(true);
        stdin.start();
        while (stdin.isAlive() && failed.get() == null) {
            stdin.join(200);
        }
        // Leave the groups (Streams stays in them by default, to spare a
        // rebalance on restart): a twin started again after a failure
        // then gets its partitions at once, not after the session timeout.
        for (KafkaStreams app : apps) {
            app.close(CloseOptions.timeout(Duration.ofSeconds(10))
                    .withGroupMembershipOperation(CloseOptions.GroupMembershipOperation.LEAVE_GROUP));
        }
        Scenario.check(failed.get() == null, "a twin failed: " + failed.get());
    }

    private static Properties properties(String bootstrap, String applicationId, Path stateDir) {
        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, applicationId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
        props.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        // Commit (and so flush the record caches downstream) often: the
        // test waits on the outputs, not on a 30 s default interval.
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 200);
        // A member that died without leaving (a twin killed) gives its
        // partitions back after 6 s, not Streams' default 45 s.
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG), 6_000);
        return props;
    }

    /** examples/wordcount.rs: lower-cased words split on whitespace, counted. */
    static Topology wordcount(String prefix) {
        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(prefix + "text-input", Consumed.with(Serdes.String(), Serdes.String()))
                .flatMapValues(line -> List.of(line.toLowerCase(Locale.ROOT).trim().split("\\s+")).stream()
                        .filter(word -> !word.isEmpty()).toList())
                .groupBy((key, word) -> word, Grouped.with(Serdes.String(), Serdes.String()))
                .count(Materialized.<String, Long, KeyValueStore<Bytes, byte[]>>as("counts-store"))
                .toStream()
                .to(prefix + "word-counts", Produced.with(Serdes.String(), Serdes.Long()));
        return builder.build();
    }

    /** examples/windowed_clicks.rs: clicks per user per window, once, when it closes. */
    static Topology windowedClicks(String prefix) {
        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(prefix + "clicks", Consumed.with(Serdes.String(), Serdes.ByteArray()))
                .groupByKey(Grouped.with(Serdes.String(), Serdes.ByteArray()))
                .windowedBy(TimeWindows.ofSizeAndGrace(WINDOW, GRACE))
                .count(Materialized.<String, Long, WindowStore<Bytes, byte[]>>as("clicks-per-window"))
                .suppress(Suppressed.untilWindowCloses(Suppressed.BufferConfig.unbounded()))
                .toStream()
                .map((windowed, clicks) -> {
                    Map<String, Object> count = new LinkedHashMap<>();
                    count.put("user", windowed.key());
                    count.put("window_start_ms", windowed.window().start());
                    count.put("window_end_ms", windowed.window().end());
                    count.put("clicks", clicks == null ? 0L : clicks);
                    return KeyValue.pair(windowed.key(), Json.write(count));
                })
                .to(prefix + "clicks-per-minute", Produced.with(Serdes.String(), Serdes.String()));
        return builder.build();
    }

    /**
     * The sliding-window count of cli/tests/streams_differential.rs (no
     * example of its own): clicks per user in sliding windows of 30 s with
     * 10 s of grace, every update written as "user@start-end" -> count.
     */
    static Topology slidingClicks(String prefix) {
        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(prefix + "clicks", Consumed.with(Serdes.String(), Serdes.ByteArray()))
                .groupByKey(Grouped.with(Serdes.String(), Serdes.ByteArray()))
                .windowedBy(SlidingWindows.ofTimeDifferenceAndGrace(Duration.ofSeconds(30), Duration.ofSeconds(10)))
                .count(Materialized.<String, Long, WindowStore<Bytes, byte[]>>as("sliding-counts"))
                .toStream()
                .map((windowed, clicks) -> KeyValue.pair(
                        windowed.key() + "@" + windowed.window().start() + "-" + windowed.window().end(), clicks))
                .to(prefix + "clicks-sliding", Produced.with(Serdes.String(), Serdes.Long()));
        return builder.build();
    }

    /** examples/enrich_orders.rs: orders joined with the customers table (inner). */
    static Topology enrichOrders(String prefix) {
        StreamsBuilder builder = new StreamsBuilder();
        KTable<String, String> customers = builder.table(prefix + "customers",
                Consumed.with(Serdes.String(), Serdes.String()),
                Materialized.<String, String, KeyValueStore<Bytes, byte[]>>as("customers-store"));
        builder.stream(prefix + "orders", Consumed.with(Serdes.String(), Serdes.String()))
                .join(customers, (order, customer) -> {
                    Map<String, Object> enriched = new LinkedHashMap<>();
                    enriched.put("order", order);
                    enriched.put("customer", customer);
                    return Json.write(enriched);
                })
                .to(prefix + "orders-enriched", Produced.with(Serdes.String(), Serdes.String()));
        return builder.build();
    }
}
