package dev.spate.compat;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.Future;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * The Java producer (idempotent, acks=all, the defaults of kafka-clients
 * 4.x made explicit) sends keyed records with headers and explicit
 * timestamps; the Java consumer reads them back from the beginning. Per key,
 * records keep one partition and their order; offsets, keys, values,
 * headers and timestamps come back as the producer's metadata said.
 */
final class ProduceConsume {
    private ProduceConsume() {}

    private static final int PARTITIONS = 3;
    private static final int KEYS = 6;
    private static final int PER_KEY = 50;
    /** A fixed past instant, so a timestamp the broker replaced would show. */
    private static final long BASE_TIMESTAMP_MS = 1_704_164_645_000L;

    static Map<String, Object> run(Scenario.Args args) throws Exception {
        String topic = args.topicPrefix() + "-java-produce-consume";
        try (Admin admin = Scenario.admin(args.bootstrap())) {
            Scenario.createTopics(admin, List.of(new NewTopic(topic, PARTITIONS, (short) 1)));

            Properties producerProps = new Properties();
            producerProps.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, args.bootstrap());
            producerProps.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
            producerProps.put(ProducerConfig.ACKS_CONFIG, "all");
            producerProps.put(ProducerConfig.LINGER_MS_CONFIG, 5);
            producerProps.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
            producerProps.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
            List<Future<RecordMetadata>> futures = new ArrayList<>();
            try (KafkaProducer<String, String> producer = new KafkaProducer<>(producerProps)) {
                for (int seq = 0; seq < PER_KEY; seq++) {
                    for (int key = 0; key < KEYS; key++) {
                        var record = new ProducerRecord<>(topic, null, BASE_TIMESTAMP_MS + seq, "key-" + key,
                                "key-" + key + ":" + seq);
                        record.headers().add("seq", Integer.toString(seq).getBytes(StandardCharsets.UTF_8));
                        futures.add(producer.send(record));
                    }
                }
                producer.flush();
            }
            Map<TopicPartition, Map<Long, Integer>> sent = new HashMap<>();
            Map<String, Integer> partitionOfKey = new TreeMap<>();
            for (int i = 0; i < futures.size(); i++) {
                RecordMetadata metadata = futures.get(i).get();
                String key = "key-" + (i % KEYS);
                Integer previous = partitionOfKey.putIfAbsent(key, metadata.partition());
                Scenario.check(previous == null || previous == metadata.partition(), key + " landed on two partitions");
                Scenario.check(metadata.timestamp() == BASE_TIMESTAMP_MS + i / KEYS,
                        "record " + i + " was acknowledged with timestamp " + metadata.timestamp());
                var previousAt = sent.computeIfAbsent(new TopicPartition(topic, metadata.partition()), tp -> new HashMap<>())
                        .put(metadata.offset(), i);
                Scenario.check(previousAt == null, "two records acknowledged at one offset");
            }

            Properties consumerProps = new Properties();
            consumerProps.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, args.bootstrap());
            consumerProps.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
            consumerProps.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class);
            consumerProps.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class);
            List<ConsumerRecord<String, String>> read = new ArrayList<>();
            Map<String, Object> endOffsets = new TreeMap<>();
            try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(consumerProps)) {
                List<TopicPartition> partitions = new ArrayList<>();
                for (int p = 0; p < PARTITIONS; p++) {
                    partitions.add(new TopicPartition(topic, p));
                }
                consumer.assign(partitions);
                consumer.seekToBeginning(partitions);
                Scenario.waitUntil(() -> {
                    consumer.poll(Duration.ofMillis(200)).forEach(read::add);
                    return read.size() >= futures.size();
                }, futures.size() + " records read back", () -> read.size() + " read");
                consumer.endOffsets(partitions).forEach((tp, o) -> endOffsets.put(Integer.toString(tp.partition()), o));
            }
            Scenario.check(read.size() == futures.size(), "read " + read.size() + " records, sent " + futures.size());

            Map<String, Integer> nextSeq = new HashMap<>();
            for (ConsumerRecord<String, String> record : read) {
                Integer index = sent.getOrDefault(new TopicPartition(topic, record.partition()), Map.of()).get(record.offset());
                Scenario.check(index != null, "read " + record.partition() + "/" + record.offset() + ", which no ack named");
                int seq = index / KEYS;
                String key = "key-" + (index % KEYS);
                Scenario.check(key.equals(record.key()), "record " + index + " has key " + record.key());
                Scenario.check((key + ":" + seq).equals(record.value()), "record " + index + " has value " + record.value());
                Scenario.check(record.timestamp() == BASE_TIMESTAMP_MS + seq, "record " + index + " has timestamp " + record.timestamp());
                Header[] headers = record.headers().toArray();
                Scenario.check(headers.length == 1 && headers[0].key().equals("seq")
                        && new String(headers[0].value(), StandardCharsets.UTF_8).equals(Integer.toString(seq)),
                        "record " + index + " has other headers");
                int expected = nextSeq.getOrDefault(key, 0);
                Scenario.check(seq == expected, key + ": read seq " + seq + ", expected " + expected + " (order broken)");
                nextSeq.put(key, seq + 1);
            }
            Scenario.deleteTopics(admin, List.of(topic));

            Map<String, Object> observed = new LinkedHashMap<>();
            observed.put("scenario", "java_produce_consume");
            observed.put("records", read.size());
            observed.put("partition_of_key", partitionOfKey);
            observed.put("end_offsets", endOffsets);
            return observed;
        }
    }
}
