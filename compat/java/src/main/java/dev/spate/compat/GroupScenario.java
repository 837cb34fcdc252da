package dev.spate.compat;

import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeMap;
import java.util.stream.Collectors;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.ConsumerGroupDescription;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * A consumer group of three Java members with {@code group.protocol}
 * classic (JoinGroup/SyncGroup, client-side range assignor) or consumer
 * (KIP-848: ConsumerGroupHeartbeat, the broker assigns). A and B split the
 * partitions, C joins late and the group spreads over three, then B leaves
 * (close: LeaveGroup, or a heartbeat with epoch -1) and A and C take its
 * partitions. At the end every partition is held by exactly one member,
 * every record was consumed, and listConsumerGroupOffsets shows each
 * partition committed at its end.
 */
final class GroupScenario {
    private GroupScenario() {}

    private static final int PARTITIONS = 6;
    private static final int PER_PARTITION_PER_PHASE = 20;

    /** One member: a consumer polled and committed on its own thread. */
    static final class Member extends Thread {
        private final KafkaConsumer<String, String> consumer;
        private volatile boolean stop;
        private volatile Set<Integer> assignment = Set.of();
        private final Set<Long> consumed = java.util.concurrent.ConcurrentHashMap.newKeySet();
        private volatile Exception error;

        Member(String name, Properties props, String topic) {
            super(name);
            consumer = new KafkaConsumer<>(props);
            consumer.subscribe(List.of(topic));
        }

        @Override
        public void run() {
            try {
                // A commit that meets a rebalance is tried again on the next
                // turn, as an application does; it used to end the member.
                boolean commitOwed = false;
                while (!stop) {
                    var records = consumer.poll(Duration.ofMillis(100));
                    for (ConsumerRecord<String, String> record : records) {
                        consumed.add(((long) record.partition() << 32) | record.offset());
                    }
                    if (!records.isEmpty() || commitOwed) {
                        try {
                            consumer.commitSync();
                            commitOwed = false;
                        } catch (org.apache.kafka.clients.consumer.CommitFailedException
                                | org.apache.kafka.common.errors.RebalanceInProgressException e) {
                            commitOwed = true;
                        }
                    }
                    assignment = consumer.assignment().stream().map(TopicPartition::partition)
                            .collect(Collectors.toUnmodifiableSet());
                }
                consumer.close();
            } catch (Exception e) {
                error = e;
            }
        }

        Set<Integer> assignment() {
            if (error != null) {
                throw new Scenario.Failure("member " + getName() + " failed: " + error);
            }
            return assignment;
        }

        void leave() throws InterruptedException {
            stop = true;
            join(Scenario.WAIT_MAX.toMillis());
            Scenario.check(!isAlive(), "member " + getName() + " did not close");
            assignment = Set.of();
        }
    }

    static Map<String, Object> run(Scenario.Args args) throws Exception {
        String protocol = args.groupProtocol();
        Scenario.check(protocol.equals("classic") || protocol.equals("consumer"),
                "--group-protocol must be classic or consumer, not " + protocol);
        String topic = args.topicPrefix() + "-java-group-" + protocol;
        String group = topic;
        try (Admin admin = Scenario.admin(args.bootstrap())) {
            Scenario.createTopics(admin, List.of(new NewTopic(topic, PARTITIONS, (short) 1)));

            Properties props = new Properties();
            props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, args.bootstrap());
            props.put(ConsumerConfig.GROUP_ID_CONFIG, group);
            props.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, protocol);
            props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
            props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
            props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class);
            props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class);
            if (protocol.equals("classic")) {
                // Session and heartbeat belong to the client only in the
                // classic protocol (KIP-848 moves them to the broker, and the
                // client refuses them there).
                props.put(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG, 10_000);
                props.put(ConsumerConfig.HEARTBEAT_INTERVAL_MS_CONFIG, 500);
                props.put(ConsumerConfig.PARTITION_ASSIGNMENT_STRATEGY_CONFIG,
                        org.apache.kafka.clients.consumer.RangeAssignor.class.getName());
            }

            Map<String, Member> members = new TreeMap<>();
            List<Member> all = new ArrayList<>();
            try (KafkaProducer<String, String> producer = producer(args.bootstrap())) {
                for (String name : List.of("A", "B")) {
                    Member m = new Member(name, props, topic);
                    members.put(name, m);
                    all.add(m);
                    m.start();
                }
                produce(producer, topic, 1);
                settle(members, all, 1, "A and B to split the partitions and consume phase 1");

                Member c = new Member("C", props, topic);
                members.put("C", c);
                all.add(c);
                c.start();
                settle(members, all, 1, "the group to spread over A, B and the late C");
                produce(producer, topic, 2);
                settle(members, all, 2, "three members to consume phase 2");
                List<Integer> threeSizes = sizes(members);
                Scenario.log("three members: " + assignments(members));

                members.remove("B").leave();
                produce(producer, topic, 3);
                settle(members, all, 3, "A and C to take over B's partitions and consume phase 3");
                List<Integer> finalSizes = sizes(members);
                Scenario.log("after B left: " + assignments(members));
                for (Member m : members.values()) {
                    m.leave();
                }

                Map<TopicPartition, OffsetAndMetadata> committed =
                        Scenario.get(admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata());
                Map<String, Object> committedOut = new TreeMap<>();
                for (int p = 0; p < PARTITIONS; p++) {
                    OffsetAndMetadata offset = committed.get(new TopicPartition(topic, p));
                    Scenario.check(offset != null && offset.offset() == 3L * PER_PARTITION_PER_PHASE,
                            "partition " + p + " committed at " + offset + ", expected " + 3 * PER_PARTITION_PER_PHASE);
                    committedOut.put(Integer.toString(p), offset.offset());
                }
                ConsumerGroupDescription description =
                        Scenario.get(admin.describeConsumerGroups(List.of(group)).all()).get(group);
                Scenario.check(description.members().isEmpty(), "the closed group still lists members");
                Scenario.deleteTopics(admin, List.of(topic));

                Map<String, Object> observed = new LinkedHashMap<>();
                observed.put("scenario", "java_group_" + protocol);
                observed.put("group_protocol", protocol);
                observed.put("group_type", description.type().toString());
                observed.put("group_state_after_close", description.groupState().toString());
                observed.put("three_member_sizes", threeSizes);
                observed.put("final_member_sizes", finalSizes);
                observed.put("committed", committedOut);
                return observed;
            } finally {
                for (Member m : all) {
                    if (m.isAlive()) {
                        m.stop = true;
                        m.join(Scenario.WAIT_MAX.toMillis());
                    }
                }
            }
        }
    }

    private static KafkaProducer<String, String> producer(String bootstrap) {
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        return new KafkaProducer<>(props);
    }

    private static void produce(KafkaProducer<String, String> producer, String topic, int phase) throws Exception {
        List<java.util.concurrent.Future<?>> futures = new ArrayList<>();
        for (int p = 0; p < PARTITIONS; p++) {
            for (int seq = 0; seq < PER_PARTITION_PER_PHASE; seq++) {
                futures.add(producer.send(new ProducerRecord<>(topic, p, null, "phase " + phase + " seq " + seq)));
            }
        }
        for (var f : futures) {
            f.get();
        }
    }

    /** Waits until the live members hold every partition once, balanced
     *  (sizes differ by one at most, none empty), and every record of the first {@code phases} phases was
     *  consumed by someone (the members that left included). */
    private static void settle(Map<String, Member> members, List<Member> all, int phases, String what) {
        long expected = (long) PARTITIONS * PER_PARTITION_PER_PHASE * phases;
        Scenario.waitUntil(() -> {
            List<Integer> held = new ArrayList<>();
            int sizeMin = Integer.MAX_VALUE;
            int sizeMax = 0;
            for (Member m : members.values()) {
                Set<Integer> a = m.assignment();
                sizeMin = Math.min(sizeMin, a.size());
                sizeMax = Math.max(sizeMax, a.size());
                held.addAll(a);
            }
            // Balanced, not just covered: KIP-848 moves partitions one
            // heartbeat at a time, and the states in between are no answer
            // to compare with another broker's.
            if (sizeMin == 0 || sizeMax - sizeMin > 1) {
                return false;
            }
            held.sort(null);
            Set<Long> consumed = new HashSet<>();
            all.forEach(m -> consumed.addAll(m.consumed));
            return held.equals(java.util.stream.IntStream.range(0, PARTITIONS).boxed().toList())
                    && consumed.size() >= expected;
        }, what, () -> "assignments " + assignments(members));
    }

    private static Map<String, Set<Integer>> assignments(Map<String, Member> members) {
        Map<String, Set<Integer>> out = new TreeMap<>();
        members.forEach((name, m) -> out.put(name, new java.util.TreeSet<>(m.assignment)));
        return out;
    }

    private static List<Integer> sizes(Map<String, Member> members) {
        return members.values().stream().map(m -> m.assignment.size()).sorted().toList();
    }
}
