#!/usr/bin/env python3
"""confluent-kafka (librdkafka): cluster and topic metadata.

Checks the broker list (ids, host and port a client can reach), the cluster
id and controller, DescribeCluster through the admin API, and a created
topic's partitions (each with a leader among the brokers, the leader in its
replicas and in-sync replicas).
"""

import common

common.ensure_venv()

from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

SCENARIO = "ck_metadata"
PARTITIONS = 3


def main():
    args = common.parse_args(__doc__)
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    topic_name = f"{args.topic_prefix}-ck-metadata"

    metadata = admin.list_topics(timeout=15)
    common.check(len(metadata.brokers) >= 1, "metadata lists no broker")
    for broker in metadata.brokers.values():
        common.check(broker.id >= 0, f"broker with a negative id {broker.id}")
        common.check(broker.host and broker.port > 0, f"broker {broker.id} has no reachable address")
    common.check(bool(metadata.cluster_id), "metadata carries no cluster id")
    common.check(metadata.controller_id in metadata.brokers, f"controller {metadata.controller_id} is not a listed broker")

    cluster = admin.describe_cluster(request_timeout=15).result()
    cluster_ids = sorted(node.id for node in cluster.nodes)
    common.check(cluster_ids == sorted(metadata.brokers), f"DescribeCluster nodes {cluster_ids} differ from Metadata's {sorted(metadata.brokers)}")
    common.check(cluster.cluster_id == metadata.cluster_id, "DescribeCluster and Metadata disagree on the cluster id")

    common.ck_create_topics(admin, [NewTopic(topic_name, num_partitions=PARTITIONS, replication_factor=1)])
    topic = admin.list_topics(topic=topic_name, timeout=15).topics[topic_name]
    common.check(sorted(topic.partitions) == list(range(PARTITIONS)), f"partitions {sorted(topic.partitions)}")
    for partition in topic.partitions.values():
        common.check(partition.leader in metadata.brokers, f"partition {partition.id} leader {partition.leader} is not a broker")
        common.check(partition.leader in partition.replicas, f"partition {partition.id} leader not among its replicas")
        common.check(partition.leader in partition.isrs, f"partition {partition.id} leader not in its ISR")

    all_topics = admin.list_topics(timeout=15).topics
    common.check(topic_name in all_topics, "the created topic is missing from a Metadata request for all topics")

    common.ck_delete_topics(admin, [topic_name])
    common.emit(SCENARIO, {
        "broker_count": len(metadata.brokers),
        "controller_is_broker": True,
        "describe_cluster_nodes": len(cluster_ids),
        "topic_partitions": len(topic.partitions),
        "replication_factor": len(topic.partitions[0].replicas),
    })


if __name__ == "__main__":
    main()
