#!/usr/bin/env python3
"""Kafka's own command-line tools, unmodified: the classes behind
kafka-topics.sh, kafka-console-producer.sh, kafka-console-consumer.sh and
kafka-consumer-groups.sh (kafka-tools 4.4.0), run as Java programs.

1. kafka-topics --create (3 partitions, one replica, a topic config), then
   --list names the topic and --describe shows its partitions, each with a
   leader, and the config.
2. kafka-console-producer sends keyed lines (parse.key, acks=all).
3. kafka-console-consumer in a consumer group (the classic protocol, the
   tool's default) reads them all from the beginning: every line once, per
   key one partition and the order sent, offsets 0..n-1 per partition.
4. kafka-consumer-groups --list names the group; --describe shows its
   committed offsets at the log end (lag 0) for every partition.
5. kafka-topics --delete, after which --list no longer names the topic.
"""

import re
import time

import kafkatools
from kafkatools import common

SCENARIO = "tools_console"
TOPICS = "org.apache.kafka.tools.TopicCommand"
PRODUCER = "org.apache.kafka.tools.ConsoleProducer"
CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"
GROUPS = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"

PARTITIONS = 3
KEYS = 6
LINES = 60


def describe_topic(bootstrap, topic):
    """kafka-topics --describe, parsed: the summary line's fields and one
    dict per partition line (tab-separated `Name: value` pairs)."""
    out = kafkatools.tool(TOPICS, ["--bootstrap-server", bootstrap, "--describe", "--topic", topic])
    lines = [line for line in out.splitlines() if line.strip()]
    common.check(lines and lines[0].startswith(f"Topic: {topic}"), f"--describe printed {out!r}")

    def fields(line):
        return dict(part.split(": ", 1) if ": " in part else (part.rstrip(":"), "")
                    for part in line.strip().split("\t"))

    summary = fields(lines[0])
    partitions = [fields(line) for line in lines[1:]]
    return summary, partitions


def describe_group(bootstrap, group):
    """kafka-consumer-groups --describe, parsed: one dict per table row."""
    out = kafkatools.tool(GROUPS, ["--bootstrap-server", bootstrap, "--describe", "--group", group])
    rows = []
    header = None
    for line in out.splitlines():
        words = line.split()
        if words[:2] == ["GROUP", "TOPIC"]:
            header = words
        elif header and len(words) == len(header):
            rows.append(dict(zip(header, words)))
    common.check(rows, f"--describe --group printed no rows: {out!r}")
    return rows


def main():
    args = common.parse_args(__doc__.splitlines()[0])
    bootstrap = args.bootstrap
    topic = f"{args.topic_prefix}-tools-console"
    group = f"{args.topic_prefix}-tools-console-group"
    base = ["--bootstrap-server", bootstrap]

    out = kafkatools.tool(TOPICS, base + ["--create", "--topic", topic, "--partitions", str(PARTITIONS),
                                          "--replication-factor", "1", "--config", "retention.ms=3600000"])
    common.check(f"Created topic {topic}." in out, f"--create printed {out!r}")
    listed = kafkatools.tool(TOPICS, base + ["--list"]).split()
    common.check(topic in listed, f"--list does not name {topic}: {listed}")
    summary, partitions = describe_topic(bootstrap, topic)
    common.check(summary.get("PartitionCount") == str(PARTITIONS), f"--describe: {summary}")
    common.check(summary.get("ReplicationFactor") == "1", f"--describe: {summary}")
    configs = dict(kv.split("=", 1) for kv in summary.get("Configs", "").split(",") if "=" in kv)
    common.check(configs.get("retention.ms") == "3600000", f"--describe lost retention.ms: {configs}")
    common.check(sorted(int(p["Partition"]) for p in partitions) == list(range(PARTITIONS)),
                 f"--describe partitions: {partitions}")
    for p in partitions:
        common.check(p.get("Leader", "-1").isdigit() and p.get("Isr") == p.get("Leader"),
                     f"partition without a leader in its ISR: {p}")

    sent = [(f"key-{i % KEYS}", f"value-{i}") for i in range(LINES)]
    kafkatools.tool(PRODUCER, base + ["--topic", topic, "--reader-property", "parse.key=true",
                                      "--reader-property", "key.separator=:", "--command-property", "acks=all"],
                    stdin="".join(f"{k}:{v}\n" for k, v in sent))

    out = kafkatools.tool(CONSUMER, base + [
        "--topic", topic, "--group", group, "--from-beginning", "--max-messages", str(LINES),
        "--timeout-ms", str(int(common.WAIT_S_MAX * 1000)),
        "--formatter-property", "print.key=true", "--formatter-property", "print.partition=true",
        "--formatter-property", "print.offset=true"])
    read = []
    for line in out.splitlines():
        match = re.fullmatch(r"Partition:(\d+)\tOffset:(\d+)\t([^\t]*)\t(.*)", line)
        if match:
            read.append((int(match[1]), int(match[2]), match[3], match[4]))
    common.check(len(read) == LINES, f"the console consumer printed {len(read)} records, not {LINES}: {out!r}")
    common.check(sorted((k, v) for _, _, k, v in read) == sorted(sent), "the records read are not those sent")
    partition_of_key = {}
    offsets = {}
    for partition, offset, key, value in read:
        common.check(partition_of_key.setdefault(key, partition) == partition, f"{key} on two partitions")
        offsets.setdefault(partition, []).append((offset, int(value.split("-")[1])))
    end_offsets = {}
    for partition, seen in offsets.items():
        common.check([o for o, _ in seen] == list(range(len(seen))), f"partition {partition} offsets {seen}")
        common.check([i for _, i in seen] == sorted(i for _, i in seen), f"partition {partition} out of order")
        end_offsets[str(partition)] = len(seen)

    groups = kafkatools.tool(GROUPS, base + ["--list"]).split()
    common.check(group in groups, f"kafka-consumer-groups --list does not name {group}: {groups}")
    rows = describe_group(bootstrap, group)
    committed = {}
    for row in rows:
        common.check(row["TOPIC"] == topic, f"a row for another topic: {row}")
        common.check(row["CURRENT-OFFSET"] == row["LOG-END-OFFSET"] and row["LAG"] == "0", f"lag left: {row}")
        committed[row["PARTITION"]] = int(row["CURRENT-OFFSET"])
    for partition in range(PARTITIONS):
        common.check(committed.get(str(partition), 0) == int(end_offsets.get(str(partition), 0)),
                     f"committed {committed} != end offsets {end_offsets}")

    kafkatools.tool(TOPICS, base + ["--delete", "--topic", topic])
    # Deletion completes asynchronously in Kafka: --list may name the topic
    # for a moment after --delete returns.
    common.wait_until(lambda: topic not in kafkatools.tool(TOPICS, base + ["--list"]).split(),
                      f"{topic} to leave kafka-topics --list", step_s=0.5)

    common.emit(SCENARIO, {
        "topic": {"partition_count": int(summary["PartitionCount"]),
                  "replication_factor": int(summary["ReplicationFactor"]),
                  "retention_ms": configs.get("retention.ms"),
                  "partitions": sorted(int(p["Partition"]) for p in partitions),
                  # kafka-topics 4.x asks DescribeTopicPartitions (KIP-966)
                  # for the eligible leader replicas, and prints N/A when
                  # the broker does not serve it (it falls back to
                  # Metadata); Apache Kafka prints an empty list.
                  "elr": sorted({p.get("Elr", "<absent>") for p in partitions})},
        "records_read": len(read),
        "partition_of_key": partition_of_key,
        "end_offsets": end_offsets,
        "group_committed": committed,
        "deleted": True,
    })


if __name__ == "__main__":
    main()
