#!/usr/bin/env python3
"""kafka-python: produce and consume.

kafka-python is a pure-Python client that speaks older request versions
than librdkafka or the Java client (it is the point of running it): its
admin client creates the topic, its producer sends keyed records with
headers and acks=all, and its consumer reads them back from the beginning
with the same offsets, keys, headers and order.
"""

import common

common.ensure_venv()

from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import KafkaAdminClient, NewTopic  # noqa: E402
from kafka.errors import TopicAlreadyExistsError  # noqa: E402

SCENARIO = "kp_produce_consume"
PARTITIONS = 2
RECORDS = 100


def main():
    args = common.parse_args(__doc__)
    topic = f"{args.topic_prefix}-kp-produce-consume"
    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap, client_id="compat-kp")
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)], timeout_ms=30000)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)], timeout_ms=30000)
        common.fail("creating an existing topic succeeded")
    except TopicAlreadyExistsError as exc:
        create_existing = type(exc).__name__

    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=5)
    futures = []
    for seq in range(RECORDS):
        futures.append(producer.send(topic, key=f"key-{seq % 5}".encode(), value=f"value {seq}".encode(),
                                     headers=[("seq", str(seq).encode())]))
    producer.flush(timeout=30)
    delivered = {}
    partition_of_key = {}
    for seq, future in enumerate(futures):
        metadata = future.get(timeout=30)
        delivered[(metadata.partition, metadata.offset)] = seq
        key = f"key-{seq % 5}"
        common.check(partition_of_key.setdefault(key, metadata.partition) == metadata.partition,
                     f"{key} landed on two partitions")
    producer.close()
    common.check(len(delivered) == RECORDS, "two records were given the same partition and offset")

    consumer = KafkaConsumer(bootstrap_servers=args.bootstrap, enable_auto_commit=False, consumer_timeout_ms=1000)
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    read = []
    common.wait_until(lambda: (read.extend(r for batch in consumer.poll(timeout_ms=500).values() for r in batch),
                               len(read) >= RECORDS)[1], f"{RECORDS} records read back")
    end_offsets = consumer.end_offsets(partitions)
    beginning_offsets = consumer.beginning_offsets(partitions)
    consumer.close()

    last_seq = {}
    for record in read:
        seq = delivered.get((record.partition, record.offset))
        common.check(seq is not None, f"read {record.partition}/{record.offset}, which no delivery report named")
        common.check(record.key == f"key-{seq % 5}".encode(), f"record {seq} has key {record.key!r}")
        common.check(record.value == f"value {seq}".encode(), f"record {seq} has value {record.value!r}")
        common.check(list(record.headers) == [("seq", str(seq).encode())], f"record {seq} has headers {record.headers!r}")
        key = record.key.decode()
        common.check(last_seq.get(key, -1) < seq, f"{key}: read {seq} after {last_seq.get(key)} (order broken)")
        last_seq[key] = seq
    common.check(len(read) == RECORDS, f"read {len(read)} records, expected {RECORDS}")

    admin.delete_topics([topic], timeout_ms=30000)
    admin.close()
    common.emit(SCENARIO, {
        "records": len(read),
        "partition_of_key": dict(sorted(partition_of_key.items())),
        "end_offsets": {str(tp.partition): o for tp, o in sorted(end_offsets.items())},
        "beginning_offsets": {str(tp.partition): o for tp, o in sorted(beginning_offsets.items())},
        "create_existing": create_existing,
    })


if __name__ == "__main__":
    main()
