#!/usr/bin/env python3
"""confluent-kafka: all four compression codecs produced and consumed.

For each of gzip, snappy, lz4 and zstd, a producer compresses its batches
into a topic of its own (so the broker stores them as sent), and a consumer
reads every record back with the values intact, in order, at offsets
0..N-1. The values are compressible text, so the batches really shrink.
"""

import common

common.ensure_venv()

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

SCENARIO = "ck_compression"
CODECS = ["gzip", "snappy", "lz4", "zstd"]
RECORDS = 100


def value(codec, seq):
    return f"{codec} record {seq:05d} " + "compressible " * 20


def main():
    args = common.parse_args(__doc__)
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    topics = {codec: f"{args.topic_prefix}-ck-compression-{codec}" for codec in CODECS}
    common.ck_create_topics(admin, [NewTopic(t, num_partitions=1, replication_factor=1) for t in topics.values()])

    observed = {}
    for codec, topic in topics.items():
        offsets = []

        def on_delivery(err, message, offsets=offsets):
            if err is not None:
                common.fail(f"{codec}: delivery failed: {err.name()}: {err.str()}")
            offsets.append(message.offset())

        producer = Producer({"bootstrap.servers": args.bootstrap, "compression.type": codec,
                             "linger.ms": 20, "acks": "all"})
        for seq in range(RECORDS):
            producer.produce(topic, key=f"k{seq % 7}", value=value(codec, seq), on_delivery=on_delivery)
        common.check(producer.flush(30) == 0, f"{codec}: records still undelivered after flush")
        common.check(sorted(offsets) == list(range(RECORDS)), f"{codec}: delivered offsets are not 0..{RECORDS - 1}")

        consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": f"{args.topic_prefix}-ck-compression",
                             "enable.auto.commit": False})
        consumer.assign([TopicPartition(topic, 0, -2)])
        messages = common.ck_consume_all(consumer, RECORDS, f"{codec}: reading back")
        consumer.close()
        for seq, message in enumerate(messages):
            common.check(message.offset() == seq, f"{codec}: record {seq} read at offset {message.offset()}")
            common.check(message.value().decode() == value(codec, seq), f"{codec}: record {seq} has a different value")
        observed[codec] = {"records": len(messages), "last_offset": messages[-1].offset()}
        common.log(f"{codec}: {len(messages)} records round-tripped")

    common.ck_delete_topics(admin, list(topics.values()))
    common.emit(SCENARIO, {"codecs": observed})


if __name__ == "__main__":
    main()
