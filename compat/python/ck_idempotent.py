#!/usr/bin/env python3
"""confluent-kafka: idempotent produce with acks=all.

With enable.idempotence=True librdkafka first asks for a producer id
(InitProducerId), then stamps every batch with it and a sequence. Every
delivery report must succeed, the offsets must be exactly 0..N-1 (no gap,
no duplicate), and a reader must see each record once, in order.
"""

import common

common.ensure_venv()

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

SCENARIO = "ck_idempotent"
RECORDS = 1000


def main():
    args = common.parse_args(__doc__)
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    topic = f"{args.topic_prefix}-ck-idempotent"
    common.ck_create_topics(admin, [NewTopic(topic, num_partitions=1, replication_factor=1)])

    offsets = []
    errors = []

    def on_delivery(err, message):
        if err is not None:
            errors.append(err.name())
        else:
            offsets.append(message.offset())

    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 2, "batch.num.messages": 50, "max.in.flight.requests.per.connection": 5})
    for seq in range(RECORDS):
        producer.produce(topic, value=f"idempotent {seq}", on_delivery=on_delivery)
        producer.poll(0)
    common.check(producer.flush(30) == 0, "records still undelivered after flush")
    common.check(not errors, f"delivery errors: {sorted(set(errors))}")
    common.check(offsets == list(range(RECORDS)), "delivered offsets are not exactly 0..N-1 in send order")

    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": f"{args.topic_prefix}-ck-idempotent",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, -2)])
    messages = common.ck_consume_all(consumer, RECORDS, "reading the idempotent records back")
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    consumer.close()
    values = [m.value().decode() for m in messages]
    common.check(values == [f"idempotent {seq}" for seq in range(RECORDS)], "records read back differ from those sent")
    common.check((low, high) == (0, RECORDS), f"watermarks ({low}, {high}), expected (0, {RECORDS}): a duplicate or loss")

    common.ck_delete_topics(admin, [topic])
    common.emit(SCENARIO, {"records": RECORDS, "delivery_errors": [], "watermarks": [low, high]})


if __name__ == "__main__":
    main()
