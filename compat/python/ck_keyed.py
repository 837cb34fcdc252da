#!/usr/bin/env python3
"""confluent-kafka: keyed produce and consume with per-key order.

Produces interleaved records for several keys to a 4-partition topic, checks
that every key's records land on one partition in the order sent (from the
delivery reports), then reads the topic from the beginning and checks the
same per-key order and the reported offsets.
"""

import collections

import common

common.ensure_venv()

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

SCENARIO = "ck_keyed"
PARTITIONS = 4
KEYS = 8
PER_KEY = 25


def main():
    args = common.parse_args(__doc__)
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    topic = f"{args.topic_prefix}-ck-keyed"
    common.ck_create_topics(admin, [NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])

    delivered = []

    def on_delivery(err, message):
        if err is not None:
            common.fail(f"delivery failed: {err.name()}: {err.str()}")
        delivered.append((message.key().decode(), message.value().decode(), message.partition(), message.offset()))

    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5, "acks": "all"})
    for seq in range(PER_KEY):
        for key in range(KEYS):
            producer.produce(topic, key=f"key-{key}", value=f"key-{key}:{seq}", on_delivery=on_delivery)
        producer.poll(0)
    common.check(producer.flush(30) == 0, "records still undelivered after flush")
    common.check(len(delivered) == KEYS * PER_KEY, f"{len(delivered)} delivery reports for {KEYS * PER_KEY} records")

    partition_of_key = {}
    for key, _value, partition, _offset in delivered:
        common.check(partition_of_key.setdefault(key, partition) == partition, f"{key} landed on two partitions")
    by_position = {(p, o): (k, v) for k, v, p, o in delivered}
    common.check(len(by_position) == len(delivered), "two records were given the same partition and offset")

    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": f"{args.topic_prefix}-ck-keyed-reader",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, -2) for p in range(PARTITIONS)])  # -2: OFFSET_BEGINNING
    messages = common.ck_consume_all(consumer, KEYS * PER_KEY, "reading the keyed records back")
    high_watermarks = {}
    for p in range(PARTITIONS):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        sent = sum(1 for _k, _v, part, _o in delivered if part == p)
        common.check((low, high) == (0, sent), f"partition {p}: watermarks ({low}, {high}), expected (0, {sent})")
        high_watermarks[str(p)] = high
    consumer.close()

    next_seq = collections.defaultdict(int)
    for message in messages:
        key = message.key().decode()
        value = message.value().decode()
        common.check(by_position.get((message.partition(), message.offset())) == (key, value),
                     f"offset {message.partition()}/{message.offset()} holds {key}={value}, not what the delivery report said")
        seq = int(value.split(":")[1])
        common.check(seq == next_seq[key], f"{key}: read seq {seq}, expected {next_seq[key]} (per-key order broken)")
        next_seq[key] += 1

    common.ck_delete_topics(admin, [topic])
    common.emit(SCENARIO, {
        "records": len(messages),
        "partition_of_key": dict(sorted(partition_of_key.items())),
        "high_watermarks": high_watermarks,
    })


if __name__ == "__main__":
    main()
