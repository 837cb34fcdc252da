package dev.spate.compat;

import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TransactionDescription;
import org.apache.kafka.clients.admin.TransactionState;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerGroupMetadata;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * The Java transactional producer (kafka-clients 4.x), which uses
 * transactions v2 (KIP-890 part 2) where the broker finalizes
 * transaction.version 2: it adds no partition itself (its produces do),
 * sends a group's offsets without AddOffsetsToTxn, and every transaction
 * ends under the next producer epoch. A transaction commits with a group's
 * offsets, one aborts, one commits; a second producer with the same
 * transactional id fences the first. read_committed consumers see the
 * committed records only, read_uncommitted ones all of them.
 */
final class Transactions {
    private Transactions() {}

    private static final int PARTITIONS = 2;

    static Map<String, Object> run(Scenario.Args args) throws Exception {
        String topic = args.topicPrefix() + "-java-txn";
        String group = args.topicPrefix() + "-java-txn-group";
        String txnId = args.topicPrefix() + "-java-txn-id";
        Map<String, Object> observed = new LinkedHashMap<>();
        try (Admin admin = Scenario.admin(args.bootstrap())) {
            Scenario.createTopics(admin, List.of(new NewTopic(topic, PARTITIONS, (short) 1)));
            List<Integer> epochSteps = new ArrayList<>();
            try (KafkaProducer<String, String> producer = new KafkaProducer<>(producerProps(args, txnId))) {
                producer.initTransactions();
                int epoch = describe(admin, txnId).producerEpoch();

                producer.beginTransaction();
                for (int i = 0; i < 10; i++) {
                    producer.send(new ProducerRecord<>(topic, "k" + i, "committed-" + i));
                }
                TopicPartition consumed = new TopicPartition(topic, 0);
                producer.sendOffsetsToTransaction(Map.of(consumed, new OffsetAndMetadata(10)),
                        new ConsumerGroupMetadata(group));
                producer.commitTransaction();
                epoch = step(admin, txnId, TransactionState.COMPLETE_COMMIT, epoch, epochSteps);

                producer.beginTransaction();
                for (int i = 0; i < 5; i++) {
                    producer.send(new ProducerRecord<>(topic, "k" + i, "aborted-" + i));
                }
                producer.flush();
                producer.abortTransaction();
                epoch = step(admin, txnId, TransactionState.COMPLETE_ABORT, epoch, epochSteps);

                producer.beginTransaction();
                for (int i = 0; i < 3; i++) {
                    producer.send(new ProducerRecord<>(topic, "k" + i, "committed-again-" + i));
                }
                producer.commitTransaction();
                step(admin, txnId, TransactionState.COMPLETE_COMMIT, epoch, epochSteps);

                // A second instance with the same transactional id fences
                // this one: its next transaction fails, nothing of it seen.
                try (KafkaProducer<String, String> successor = new KafkaProducer<>(producerProps(args, txnId))) {
                    successor.initTransactions();
                    boolean fenced;
                    try {
                        producer.beginTransaction();
                        producer.send(new ProducerRecord<>(topic, "zombie", "zombie")).get();
                        producer.commitTransaction();
                        fenced = false;
                    } catch (Exception e) {
                        fenced = e instanceof KafkaException || e.getCause() instanceof KafkaException;
                    }
                    observed.put("zombie_fenced", fenced);
                }
            }
            // One epoch more per transaction: transactions v2 in use.
            observed.put("epoch_steps", epochSteps);
            observed.put("read_committed", values(args, topic, "read_committed", 13));
            observed.put("read_uncommitted_count", values(args, topic, "read_uncommitted", 18).size());
            Map<TopicPartition, OffsetAndMetadata> offsets =
                    Scenario.get(admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata());
            OffsetAndMetadata committed = offsets.get(new TopicPartition(topic, 0));
            observed.put("group_offset", committed == null ? -1 : committed.offset());
            Scenario.deleteTopics(admin, List.of(topic));
        }
        return observed;
    }

    private static Properties producerProps(Scenario.Args args, String txnId) {
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, args.bootstrap());
        props.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, txnId);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        props.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, 30_000);
        return props;
    }

    private static TransactionDescription describe(Admin admin, String txnId) throws Exception {
        return Scenario.get(admin.describeTransactions(List.of(txnId)).description(txnId));
    }

    /** Waits for the transaction to reach {@code state}; notes how far its epoch moved. */
    private static int step(Admin admin, String txnId, TransactionState state, int before, List<Integer> steps)
            throws Exception {
        Scenario.waitUntil(() -> {
            try {
                return describe(admin, txnId).state() == state;
            } catch (Exception e) {
                return false;
            }
        }, txnId + " in " + state, () -> "");
        int after = describe(admin, txnId).producerEpoch();
        steps.add(after - before);
        return after;
    }

    /** The values a consumer at {@code isolation} reads, once it has {@code expected} of them, sorted. */
    private static List<String> values(Scenario.Args args, String topic, String isolation, int expected) {
        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, args.bootstrap());
        props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, isolation);
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class);
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class);
        List<String> values = new ArrayList<>();
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(props)) {
            List<TopicPartition> partitions = new ArrayList<>();
            for (int p = 0; p < PARTITIONS; p++) {
                partitions.add(new TopicPartition(topic, p));
            }
            consumer.assign(partitions);
            consumer.seekToBeginning(partitions);
            Scenario.waitUntil(() -> {
                for (ConsumerRecord<String, String> record : consumer.poll(Duration.ofMillis(200))) {
                    values.add(record.value());
                }
                return values.size() >= expected;
            }, expected + " records at " + isolation, () -> values.size() + " read");
            // Anything past what was expected would show as a difference.
            for (ConsumerRecord<String, String> record : consumer.poll(Duration.ofMillis(500))) {
                values.add(record.value());
            }
        }
        values.sort(null);
        return values;
    }
}
