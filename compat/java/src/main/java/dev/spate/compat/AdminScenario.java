package dev.spate.compat;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.CreateTopicsOptions;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.ListOffsetsResult;
import org.apache.kafka.clients.admin.NewPartitions;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * The Java AdminClient: describeCluster; createTopics with configs (and
 * validateOnly); describeTopics; describeConfigs; incrementalAlterConfigs;
 * createPartitions; listOffsets for earliest, latest, max timestamp and a
 * timestamp; deleteTopics; and the exceptions Kafka answers for a topic
 * that exists, a shrinking partition count and a topic that is gone.
 */
final class AdminScenario {
    private AdminScenario() {}

    /** A fixed past instant; record i is stamped BASE + i s, but record 6 latest of all. */
    private static final long BASE_TIMESTAMP_MS = 1_704_164_645_000L;
    private static final int RECORDS = 10;
    private static final int MAX_TIMESTAMP_INDEX = 6;

    private static long timestampOf(int i) {
        return i == MAX_TIMESTAMP_INDEX ? BASE_TIMESTAMP_MS + 100_000 : BASE_TIMESTAMP_MS + i * 1_000L;
    }

    static Map<String, Object> run(Scenario.Args args) throws Exception {
        String topic = args.topicPrefix() + "-java-admin";
        Map<String, Object> observed = new LinkedHashMap<>();
        observed.put("scenario", "java_admin");
        try (Admin admin = Scenario.admin(args.bootstrap())) {
            DescribeClusterResult cluster = admin.describeCluster();
            List<Node> nodes = new ArrayList<>(Scenario.get(cluster.nodes()));
            Node controller = Scenario.get(cluster.controller());
            Scenario.check(!nodes.isEmpty(), "describeCluster lists no node");
            Scenario.check(Scenario.get(cluster.clusterId()) != null, "describeCluster carries no cluster id");
            Scenario.check(controller != null, "describeCluster names no controller");
            observed.put("cluster_nodes", nodes.size());

            Scenario.get(admin.createTopics(List.of(new NewTopic(topic, 2, (short) 1)),
                    new CreateTopicsOptions().validateOnly(true)).all());
            Scenario.check(!Scenario.get(admin.listTopics().names()).contains(topic), "validateOnly created the topic");

            Scenario.createTopics(admin, List.of(new NewTopic(topic, 2, (short) 1)
                    .configs(Map.of("retention.ms", "3600000", "cleanup.policy", "delete"))));
            TopicDescription description = Scenario.get(admin.describeTopics(List.of(topic)).allTopicNames()).get(topic);
            Scenario.check(description.partitions().size() == 2, "describeTopics shows " + description.partitions().size() + " partitions");
            Scenario.check(!description.isInternal(), "a user topic is described as internal");
            Scenario.check(description.topicId() != null && !description.topicId().toString().isEmpty(), "no topic id");
            observed.put("described_partitions", description.partitions().size());
            observed.put("create_existing", Scenario.expectError(
                    admin.createTopics(List.of(new NewTopic(topic, 2, (short) 1))).all(), "creating an existing topic"));

            ConfigResource resource = new ConfigResource(ConfigResource.Type.TOPIC, topic);
            Config config = Scenario.get(admin.describeConfigs(List.of(resource)).all()).get(resource);
            Scenario.check("3600000".equals(config.get("retention.ms").value()), "retention.ms after create is " + config.get("retention.ms").value());
            Scenario.check(config.get("retention.ms").source() == ConfigEntry.ConfigSource.DYNAMIC_TOPIC_CONFIG,
                    "retention.ms set at create has source " + config.get("retention.ms").source());

            Scenario.get(admin.incrementalAlterConfigs(Map.of(resource, List.of(
                    new AlterConfigOp(new ConfigEntry("retention.ms", "7200000"), AlterConfigOp.OpType.SET),
                    new AlterConfigOp(new ConfigEntry("segment.bytes", "1048576"), AlterConfigOp.OpType.SET)))).all());
            config = Scenario.get(admin.describeConfigs(List.of(resource)).all()).get(resource);
            Scenario.check("7200000".equals(config.get("retention.ms").value()), "retention.ms after alter is " + config.get("retention.ms").value());
            Scenario.check("1048576".equals(config.get("segment.bytes").value()), "segment.bytes after alter is " + config.get("segment.bytes").value());
            Scenario.check("delete".equals(config.get("cleanup.policy").value()), "cleanup.policy changed by an incremental alter");
            observed.put("after_alter", Map.of("retention.ms", config.get("retention.ms").value(),
                    "segment.bytes", config.get("segment.bytes").value()));

            Scenario.get(admin.createPartitions(Map.of(topic, NewPartitions.increaseTo(3))).all());
            Scenario.waitUntil(() -> {
                try {
                    return Scenario.get(admin.describeTopics(List.of(topic)).allTopicNames()).get(topic).partitions().size() == 3;
                } catch (Exception e) {
                    return false;
                }
            }, "3 partitions after createPartitions", () -> "");
            observed.put("shrink_partitions", Scenario.expectError(
                    admin.createPartitions(Map.of(topic, NewPartitions.increaseTo(1))).all(), "shrinking partitions"));

            observed.put("list_offsets", listOffsets(admin, args.bootstrap(), topic));

            Scenario.get(admin.deleteTopics(List.of(topic)).all());
            Scenario.waitUntil(() -> {
                try {
                    return !Scenario.get(admin.listTopics().names()).contains(topic);
                } catch (Exception e) {
                    return false;
                }
            }, "the deleted topic to leave listTopics", () -> "");
            observed.put("delete_missing", Scenario.expectError(admin.deleteTopics(List.of(topic)).all(), "deleting a missing topic"));
            observed.put("describe_missing", Scenario.expectError(
                    admin.describeTopics(List.of(topic)).allTopicNames(), "describing a missing topic"));
        }
        return observed;
    }

    /** Produces RECORDS records with known timestamps to partition 0 and
     *  asks listOffsets for earliest, latest, max timestamp and a time. */
    private static Map<String, Object> listOffsets(Admin admin, String bootstrap, String topic) throws Exception {
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        // One record per request, so each is its own batch and the max
        // timestamp names one record's offset.
        props.put(ProducerConfig.LINGER_MS_CONFIG, 0);
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
            for (int i = 0; i < RECORDS; i++) {
                producer.send(new ProducerRecord<>(topic, 0, timestampOf(i), null, "record " + i)).get();
            }
        }
        TopicPartition tp = new TopicPartition(topic, 0);
        Map<String, Object> out = new TreeMap<>();
        Map<String, OffsetSpec> specs = new LinkedHashMap<>();
        specs.put("earliest", OffsetSpec.earliest());
        specs.put("latest", OffsetSpec.latest());
        specs.put("max_timestamp", OffsetSpec.maxTimestamp());
        specs.put("for_timestamp", OffsetSpec.forTimestamp(BASE_TIMESTAMP_MS + 3_500));
        for (var spec : specs.entrySet()) {
            ListOffsetsResult.ListOffsetsResultInfo info = Scenario.get(admin.listOffsets(Map.of(tp, spec.getValue())).partitionResult(tp));
            out.put(spec.getKey(), List.of(info.offset(), info.timestamp()));
        }
        Scenario.check(out.get("earliest").equals(List.of(0L, -1L)), "earliest is " + out.get("earliest"));
        Scenario.check(out.get("latest").equals(List.of((long) RECORDS, -1L)), "latest is " + out.get("latest"));
        Scenario.check(out.get("max_timestamp").equals(List.of((long) MAX_TIMESTAMP_INDEX, timestampOf(MAX_TIMESTAMP_INDEX))),
                "max timestamp is " + out.get("max_timestamp"));
        Scenario.check(out.get("for_timestamp").equals(List.of(4L, timestampOf(4))), "the offset for a timestamp is " + out.get("for_timestamp"));
        return out;
    }
}
