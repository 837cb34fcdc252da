#!/usr/bin/env python3
"""confluent-kafka: transactions and exactly-once consume-transform-produce.

A transactional producer (librdkafka: InitProducerId with a
transactional.id, AddPartitionsToTxn, EndTxn) commits, aborts and commits
again. A read_committed consumer must see exactly the committed records, a
read_uncommitted one every record. Then a consume-transform-produce loop
commits the consumer group's offsets inside the transaction
(AddOffsetsToTxn, TxnOffsetCommit): a committed transaction moves the
group's offset, an aborted one does not. Last, a second producer with the
same transactional.id fences the first (its next transaction fails
fatally), as a zombie must be fenced.
"""

import common

common.ensure_venv()

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

SCENARIO = "ck_transactions"
TIMEOUT_S = 30


def producer(args, transactional_id):
    return Producer({"bootstrap.servers": args.bootstrap, "transactional.id": transactional_id,
                     "transaction.timeout.ms": 60000, "linger.ms": 2})


def consumer(args, group, isolation):
    return Consumer({"bootstrap.servers": args.bootstrap, "group.id": group, "enable.auto.commit": False,
                     "isolation.level": isolation, "auto.offset.reset": "earliest"})


def read_values(args, topic, partitions, isolation, count):
    """Reads `count` records from the start of every partition, then checks
    that nothing more arrives, and returns the values sorted."""
    reader = consumer(args, f"{args.topic_prefix}-ck-txn-reader-{isolation}", isolation)
    reader.assign([TopicPartition(topic, p, -2) for p in range(partitions)])
    messages = common.ck_consume_all(reader, count, f"reading {topic} {isolation}")
    extra = [m for m in reader.consume(num_messages=100, timeout=2) if not m.error()]
    reader.close()
    common.check(not extra, f"{isolation}: {len(extra)} records more than expected: "
                 f"{sorted(m.value().decode() for m in extra)[:5]}")
    return sorted(m.value().decode() for m in messages)


def committed_offset(args, group, topic):
    reader = consumer(args, group, "read_committed")
    [tp] = reader.committed([TopicPartition(topic, 0)], timeout=TIMEOUT_S)
    reader.close()
    return tp.offset


def main():
    args = common.parse_args(__doc__)
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    output = f"{args.topic_prefix}-ck-txn-out"
    source = f"{args.topic_prefix}-ck-txn-in"
    common.ck_create_topics(admin, [NewTopic(output, num_partitions=2, replication_factor=1),
                                    NewTopic(source, num_partitions=1, replication_factor=1)])

    # Commit, abort, commit.
    txn = producer(args, f"{args.topic_prefix}-ck-txn")
    txn.init_transactions(TIMEOUT_S)
    for name, count, end in [("first", 10, "commit"), ("aborted", 7, "abort"), ("second", 5, "commit")]:
        txn.begin_transaction()
        for seq in range(count):
            txn.produce(output, key=str(seq), value=f"{name} {seq}")
        if end == "commit":
            txn.commit_transaction(TIMEOUT_S)
        else:
            # An abort purges what librdkafka has not sent yet: flush first,
            # so that the aborted records are in the log.
            common.check(txn.flush(TIMEOUT_S) == 0, "aborted records undelivered")
            txn.abort_transaction(TIMEOUT_S)
    committed = read_values(args, output, 2, "read_committed", 15)
    expected = sorted([f"first {s}" for s in range(10)] + [f"second {s}" for s in range(5)])
    common.check(committed == expected, f"read_committed saw {committed}")
    everything = read_values(args, output, 2, "read_uncommitted", 22)
    common.check(len([v for v in everything if v.startswith("aborted")]) == 7,
                 "read_uncommitted must see the aborted records too")

    # Consume-transform-produce, with the group's offsets in the transaction.
    plain = Producer({"bootstrap.servers": args.bootstrap})
    for seq in range(20):
        plain.produce(source, value=f"in {seq}")
    common.check(plain.flush(TIMEOUT_S) == 0, "input records undelivered")
    group = f"{args.topic_prefix}-ck-txn-group"
    loop = consumer(args, group, "read_committed")
    loop.assign([TopicPartition(source, 0, -2)])
    inputs = common.ck_consume_all(loop, 20, "reading the input")
    for end, batch in [("commit", inputs[:12]), ("abort", inputs[12:])]:
        txn.begin_transaction()
        for message in batch:
            txn.produce(output, value=f"xform {message.value().decode()}")
        positions = [TopicPartition(source, 0, batch[-1].offset() + 1)]
        txn.send_offsets_to_transaction(positions, loop.consumer_group_metadata(), TIMEOUT_S)
        if end == "commit":
            txn.commit_transaction(TIMEOUT_S)
        else:
            common.check(txn.flush(TIMEOUT_S) == 0, "aborted records undelivered")
            txn.abort_transaction(TIMEOUT_S)
    loop.close()
    group_offset = committed_offset(args, group, source)
    common.check(group_offset == 12, f"the group's committed offset is {group_offset}, expected 12 (the aborted "
                 "transaction's offsets must not count)")
    transformed = [v for v in read_values(args, output, 2, "read_committed", 27) if v.startswith("xform")]
    common.check(transformed == sorted(f"xform in {s}" for s in range(12)), f"transformed: {transformed}")

    # A second producer with the same id fences the first.
    zombie = txn
    successor = producer(args, f"{args.topic_prefix}-ck-txn")
    successor.init_transactions(TIMEOUT_S)
    fenced = None
    try:
        zombie.begin_transaction()
        zombie.produce(output, value="zombie")
        zombie.commit_transaction(TIMEOUT_S)
    except KafkaException as err:
        fenced = err.args[0]
    common.check(fenced is not None, "the zombie producer committed after its successor's init")
    common.check(fenced.fatal(), f"fencing must be fatal to the zombie, got {fenced.name()}")
    common.log(f"the zombie was fenced with {fenced.name()}: {fenced.str()}")
    successor.begin_transaction()
    successor.produce(output, value="successor")
    successor.commit_transaction(TIMEOUT_S)
    final = read_values(args, output, 2, "read_committed", 28)
    common.check("zombie" not in final and "successor" in final, "the successor's record, never the zombie's")

    common.ck_delete_topics(admin, [output, source])
    common.emit(SCENARIO, {"read_committed": len(committed), "read_uncommitted": len(everything),
                           "group_offset": group_offset, "transformed": len(transformed),
                           "zombie_fenced": fenced.fatal()})


if __name__ == "__main__":
    main()
