package dev.spate.compat;

import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.StringJoiner;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;

/**
 * The Kafka Streams side of streams/examples/bench.rs's wordcount: the same
 * input (LINES lines of 8 words from a vocabulary of 1,000, the same
 * formula), produced first, untimed, to a one-partition topic; then
 * StreamsTwins.wordcount (the topology of examples/wordcount.rs) on one
 * stream thread, timed from start until the group has committed the
 * input's end. Prints one JSON line as the Rust bench does.
 *
 * <p>Usage: run.sh streams-bench-wordcount --bootstrap HOST:PORT --lines N --state-dir DIR
 */
final class StreamsBench {
    private StreamsBench() {}

    private static final int WORDS_PER_LINE = 8;
    private static final int VOCABULARY = 1_000;

    static void run(String[] argv) throws Exception {
        String bootstrap = null;
        long lines = 200_000;
        String stateDir = null;
        for (int i = 1; i + 1 < argv.length; i += 2) {
            switch (argv[i]) {
                case "--bootstrap" -> bootstrap = argv[i + 1];
                case "--lines" -> lines = Long.parseLong(argv[i + 1]);
                case "--state-dir" -> stateDir = argv[i + 1];
                default -> throw new Scenario.Failure("unknown flag " + argv[i]);
            }
        }
        Scenario.check(bootstrap != null && stateDir != null,
                "usage: streams-bench-wordcount --bootstrap HOST:PORT --lines N --state-dir DIR");
        String prefix = "benchjava-" + ProcessHandle.current().pid() + "-";
        String input = prefix + "text-input";
        String applicationId = prefix + "streams-wordcount";
        try (Admin admin = Scenario.admin(bootstrap)) {
            Scenario.createTopics(admin, List.of(new NewTopic(input, 1, (short) 1),
                    new NewTopic(prefix + "word-counts", 1, (short) 1)));
            produce(bootstrap, input, lines);

            Properties props = new Properties();
            props.put(StreamsConfig.APPLICATION_ID_CONFIG, applicationId);
            props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
            props.put(StreamsConfig.STATE_DIR_CONFIG, Files.createDirectories(Path.of(stateDir)).toString());
            props.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
            props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
            // As the Rust bench: commit every second.
            props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 1_000);
            KafkaStreams streams = new KafkaStreams(StreamsTwins.wordcount(prefix), props);
            long started = System.nanoTime();
            streams.start();
            TopicPartition partition = new TopicPartition(input, 0);
            while (true) {
                Map<TopicPartition, OffsetAndMetadata> committed = Scenario.get(
                        admin.listConsumerGroupOffsets(applicationId).partitionsToOffsetAndMetadata());
                OffsetAndMetadata offset = committed.get(partition);
                if (offset != null && offset.offset() >= lines) {
                    break;
                }
                Thread.sleep(100);
            }
            double elapsedS = (System.nanoTime() - started) / 1e9;
            streams.close(Duration.ofSeconds(10));
            long words = lines * WORDS_PER_LINE;
            System.out.printf("{\"wordcount_java\":{\"elapsed_s\":%.3f,\"lines\":%d,\"words\":%d,"
                    + "\"lines_per_s\":%.0f,\"words_per_s\":%.0f}}%n", elapsedS, lines, words, lines / elapsedS,
                    words / elapsedS);
        }
    }

    /** The line the Rust bench makes for `index`. */
    static String line(long index) {
        StringJoiner words = new StringJoiner(" ");
        for (long word = 0; word < WORDS_PER_LINE; word++) {
            words.add("word" + ((index * 7 + word * 13) % VOCABULARY));
        }
        return words.toString();
    }

    private static void produce(String bootstrap, String topic, long lines) throws Exception {
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.LINGER_MS_CONFIG, 5);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
            for (long index = 0; index < lines; index++) {
                producer.send(new ProducerRecord<>(topic, 0, null, line(index)));
            }
            producer.flush();
        }
    }
}
