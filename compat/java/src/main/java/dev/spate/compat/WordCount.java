package dev.spate.compat;

import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.serialization.LongDeserializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.streams.CloseOptions;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;

/**
 * Kafka Streams' WordCount, as in Kafka's own examples: lines from an input
 * topic split into words, grouped by word (a repartition topic), counted in
 * a state store (a compacted changelog topic), counts written to an output
 * topic. Kafka Streams creates its internal topics itself (CreateTopics),
 * joins a consumer group under its application id with the group protocol
 * Streams 4.4 uses by default, commits offsets and produces with acks=all.
 * The scenario produces the lines, runs the application until the output
 * topic holds the expected final count of every word (read back with a
 * plain consumer), then closes it. {@code processing.guarantee} is
 * at_least_once: exactly_once_v2 needs transactions.
 */
final class WordCount {
    private WordCount() {}

    private static final int PARTITIONS = 2;
    private static final List<String> LINES = List.of(
            "all streams lead to kafka",
            "hello kafka streams",
            "join kafka summit",
            "the quick brown fox jumps over the lazy dog",
            "streams of records flow into topics",
            "kafka streams counts words in streams");
    /** Each line is sent this many times, so that counts grow past one update. */
    private static final int ROUNDS = 5;

    static Map<String, Object> run(Scenario.Args args, boolean exactlyOnce) throws Exception {
        String guarantee = exactlyOnce ? StreamsConfig.EXACTLY_ONCE_V2 : StreamsConfig.AT_LEAST_ONCE;
        String input = args.topicPrefix() + "-wc-input";
        String output = args.topicPrefix() + "-wc-counts";
        String applicationId = args.topicPrefix() + "-wordcount";
        Map<String, Long> expected = new TreeMap<>();
        for (int round = 0; round < ROUNDS; round++) {
            for (String line : LINES) {
                for (String word : words(line)) {
                    expected.merge(word, 1L, Long::sum);
                }
            }
        }
        try (Admin admin = Scenario.admin(args.bootstrap())) {
            Scenario.createTopics(admin, List.of(new NewTopic(input, PARTITIONS, (short) 1),
                    new NewTopic(output, PARTITIONS, (short) 1)));
            produceLines(args.bootstrap(), input);

            Path stateDir = Files.createDirectories(Path.of(System.getProperty("compat.work", "target/compat/work"),
                    applicationId + "-state"));
            Properties props = new Properties();
            props.put(StreamsConfig.APPLICATION_ID_CONFIG, applicationId);
            props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args.bootstrap());
            props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
            props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
            props.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
            // Commit (and so forward counts) often, so the scenario waits
            // on the output rather than on a 30 s default interval.
            props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
            props.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
            props.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
            props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
            String groupProtocol = new StreamsConfig(props).getString(StreamsConfig.GROUP_PROTOCOL_CONFIG);

            StreamsBuilder builder = new StreamsBuilder();
            builder.stream(input, Consumed.with(Serdes.String(), Serdes.String()))
                    .flatMapValues(WordCount::words)
                    .groupBy((key, word) -> word, Grouped.with(Serdes.String(), Serdes.String()))
                    .count(Materialized.as("counts-store"))
                    .toStream()
                    .to(output, Produced.with(Serdes.String(), Serdes.Long()));

            AtomicReference<Throwable> uncaught = new AtomicReference<>();
            Map<String, Long> counts = new TreeMap<>();
            KafkaStreams streams = new KafkaStreams(builder.build(), props);
            streams.setUncaughtExceptionHandler(e -> {
                uncaught.compareAndSet(null, e);
                return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse
                        .SHUTDOWN_CLIENT;
            });
            try {
                streams.start();
                readCounts(args.bootstrap(), output, expected, counts, uncaught, streams, exactlyOnce);
            } finally {
                // Leave the group on close (Streams stays in it by default,
                // to spare a rebalance on restart), so the group can be
                // deleted with the scenario's topics.
                streams.close(CloseOptions.timeout(Duration.ofSeconds(30))
                        .withGroupMembershipOperation(CloseOptions.GroupMembershipOperation.LEAVE_GROUP));
            }
            Scenario.check(uncaught.get() == null, "the Streams application failed: " + uncaught.get());
            Scenario.check(streams.state() == KafkaStreams.State.NOT_RUNNING,
                    "the Streams application closed in state " + streams.state());
            streams.cleanUp();

            List<String> internal = new ArrayList<>();
            for (String name : admin.listTopics().names().get()) {
                if (name.startsWith(applicationId + "-")) {
                    internal.add(name.substring(applicationId.length() + 1));
                }
            }
            internal.sort(null);
            String changelog = applicationId + "-counts-store-changelog";
            Scenario.check(internal.contains("counts-store-changelog"), "no changelog topic among " + internal);
            Config changelogConfig = Scenario.get(admin.describeConfigs(
                    List.of(new ConfigResource(ConfigResource.Type.TOPIC, changelog))).all())
                    .values().iterator().next();
            String cleanupPolicy = changelogConfig.get("cleanup.policy").value();
            Scenario.check(cleanupPolicy.contains("compact"), "the changelog's cleanup.policy is " + cleanupPolicy);

            List<String> mine = new ArrayList<>(List.of(input, output));
            internal.forEach(name -> mine.add(applicationId + "-" + name));
            Scenario.deleteTopics(admin, mine);
            try {
                Scenario.get(admin.deleteConsumerGroups(List.of(applicationId)).all());
            } catch (Exception e) {
                Scenario.log("cleanup: deleting group " + applicationId + ": " + e);
            }

            Map<String, Object> observed = new LinkedHashMap<>();
            observed.put("scenario", exactlyOnce ? "streams_wordcount_eos" : "streams_wordcount");
            observed.put("group_protocol", groupProtocol);
            observed.put("processing_guarantee", guarantee);
            observed.put("counts", counts);
            observed.put("internal_topics", internal);
            observed.put("changelog_cleanup_policy", cleanupPolicy);
            return observed;
        }
    }

    static List<String> words(String line) {
        return Arrays.stream(line.toLowerCase(Locale.ROOT).split("\\W+")).filter(w -> !w.isEmpty()).toList();
    }

    private static void produceLines(String bootstrap, String topic) throws Exception {
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
            int n = 0;
            for (int round = 0; round < ROUNDS; round++) {
                for (String line : LINES) {
                    producer.send(new ProducerRecord<>(topic, "line-" + n++, line)).get();
                }
            }
        }
    }

    /** Reads the output topic until every word's latest count is the expected final one. */
    private static void readCounts(String bootstrap, String topic, Map<String, Long> expected, Map<String, Long> counts,
            AtomicReference<Throwable> uncaught, KafkaStreams streams, boolean readCommitted) {
        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        if (readCommitted) {
            props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        }
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class);
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, LongDeserializer.class);
        try (KafkaConsumer<String, Long> consumer = new KafkaConsumer<>(props)) {
            List<TopicPartition> partitions = new ArrayList<>();
            for (int p = 0; p < PARTITIONS; p++) {
                partitions.add(new TopicPartition(topic, p));
            }
            consumer.assign(partitions);
            consumer.seekToBeginning(partitions);
            // Kafka Streams needs a rebalance and its internal topics
            // before the first count: allow twice the usual bound.
            long deadline = System.nanoTime() + 2 * Scenario.WAIT_MAX.toNanos();
            while (!counts.equals(expected)) {
                Scenario.check(uncaught.get() == null, "the Streams application failed: " + uncaught.get());
                Scenario.check(System.nanoTime() < deadline, "timed out waiting for the final counts (state "
                        + streams.state() + ", counts so far " + counts + ")");
                consumer.poll(Duration.ofMillis(200)).forEach(r -> counts.put(r.key(), r.value()));
                for (var entry : counts.entrySet()) {
                    Scenario.check(entry.getValue() <= expected.getOrDefault(entry.getKey(), 0L),
                            "counted " + entry + ", more than was sent: at_least_once reprocesses input only"
                                    + " after a failure or a rebalance, and this run should have neither");
                }
            }
        }
        Scenario.check(Set.copyOf(counts.keySet()).equals(expected.keySet()), "words " + counts.keySet());
    }
}
