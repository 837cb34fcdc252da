#!/usr/bin/env python3
"""confluent-kafka: headers and timestamps round-trip.

Headers with repeated keys, a null value and binary bytes come back in
order; an explicit CreateTime timestamp comes back unchanged; on a topic
with message.timestamp.type=LogAppendTime the broker's clock replaces it
and the consumer is told so.
"""

import time

import common

common.ensure_venv()

from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME, Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

SCENARIO = "ck_headers_timestamps"
HEADERS = [("trace", b"abc"), ("dup", b"1"), ("dup", b"2"), ("null", None), ("bin", bytes([0, 255, 1, 254]))]
# A fixed past instant (2024-01-02T03:04:05.678Z), far from the broker's clock.
CREATE_TIME_MS = 1704164645678


def read_one(bootstrap, topic, group):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, -2)])
    [message] = common.ck_consume_all(consumer, 1, f"reading {topic}")
    consumer.close()
    return message


def main():
    args = common.parse_args(__doc__)
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    create_topic = f"{args.topic_prefix}-ck-headers-create"
    append_topic = f"{args.topic_prefix}-ck-headers-append"
    common.ck_create_topics(admin, [
        NewTopic(create_topic, num_partitions=1, replication_factor=1),
        NewTopic(append_topic, num_partitions=1, replication_factor=1,
                 config={"message.timestamp.type": "LogAppendTime"}),
    ])

    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all"})
    before_ms = int(time.time() * 1000)
    for topic in (create_topic, append_topic):
        producer.produce(topic, key=b"k", value=b"v", headers=HEADERS, timestamp=CREATE_TIME_MS)
    common.check(producer.flush(30) == 0, "records still undelivered after flush")
    after_ms = int(time.time() * 1000)

    message = read_one(args.bootstrap, create_topic, f"{args.topic_prefix}-ck-headers")
    common.check(message.headers() == HEADERS, f"headers came back as {message.headers()!r}, sent {HEADERS!r}")
    ts_type, ts = message.timestamp()
    common.check(ts_type == TIMESTAMP_CREATE_TIME, f"timestamp type {ts_type}, expected CreateTime")
    common.check(ts == CREATE_TIME_MS, f"CreateTime came back as {ts}, sent {CREATE_TIME_MS}")

    message = read_one(args.bootstrap, append_topic, f"{args.topic_prefix}-ck-headers")
    common.check(message.headers() == HEADERS, "headers on the LogAppendTime topic differ")
    ts_type, ts = message.timestamp()
    common.check(ts_type == TIMESTAMP_LOG_APPEND_TIME, f"timestamp type {ts_type}, expected LogAppendTime")
    # The broker stamps the batch between our send and our flush returning
    # (its clock is this machine's clock).
    common.check(before_ms - 1000 <= ts <= after_ms + 1000,
                 f"LogAppendTime {ts} is not the broker's clock at append ({before_ms}..{after_ms})")

    common.ck_delete_topics(admin, [create_topic, append_topic])
    common.emit(SCENARIO, {
        "headers": [[k, None if v is None else v.hex()] for k, v in HEADERS],
        "create_time_ms": CREATE_TIME_MS,
        "log_append_time_type": "LogAppendTime",
    })


if __name__ == "__main__":
    main()
