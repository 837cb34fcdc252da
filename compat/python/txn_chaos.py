#!/usr/bin/env python3
"""Exactly-once consume-transform-produce under faults (issue 17's
Jepsen-style check), driven by cli/tests/txn_e2e.rs, which kills and
pauses brokers (and this process) meanwhile. Not a compat scenario: it
runs against a three-broker Spate cluster only.

  txn_chaos.py --bootstrap H:P[,H:P...] --topic-prefix P seed --records N
      writes N input records "in-0".."in-(N-1)" (idempotent, acks=all).
  txn_chaos.py ... app --records N
      the application: a read_committed consumer in group P-app and a
      transactional producer (transactional.id P-app), one transaction per
      poll (outputs "out in-K" and the group's offsets together), until the
      group's committed offsets reach the end of the input. Any error
      aborts the transaction and rewinds to the committed offsets; a fatal
      one (fenced) starts a new producer. Killed and started again, it
      fences its previous instance.
  txn_chaos.py ... check --records N
      reads the output read_committed and checks that every input record's
      output is there exactly once; prints one JSON line of what it saw.
"""

import json
import sys
import time

import common

common.ensure_venv()

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

INPUT_PARTITIONS = 2
OUTPUT_PARTITIONS = 3
# Bounds on hangs, not speed assertions: the test's faults last seconds.
APP_DEADLINE_S = 240
CHECK_DEADLINE_S = 120


def names(prefix):
    return f"{prefix}-in", f"{prefix}-out", f"{prefix}-app"


def parse():
    def extra(parser):
        parser.add_argument("mode", choices=["seed", "app", "check"])
        parser.add_argument("--records", type=int, required=True)
    return common.parse_args(__doc__, extra)


def seed(args):
    source, output, _ = names(args.topic_prefix)
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    common.ck_create_topics(admin, [NewTopic(source, num_partitions=INPUT_PARTITIONS, replication_factor=3),
                                    NewTopic(output, num_partitions=OUTPUT_PARTITIONS, replication_factor=3)])
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True, "acks": "all"})
    errors = []
    for seq in range(args.records):
        producer.produce(source, key=str(seq), value=f"in-{seq}",
                         on_delivery=lambda err, _m: err is not None and errors.append(err.name()))
        producer.poll(0)
    common.check(producer.flush(60) == 0 and not errors, f"seeding failed: {errors[:5]}")


def committed_total(consumer, source):
    """The group's committed offsets summed over the input partitions, and
    per partition (a partition without a commit counts from 0)."""
    parts = consumer.committed([TopicPartition(source, p) for p in range(INPUT_PARTITIONS)], timeout=10)
    offsets = {tp.partition: max(tp.offset, 0) for tp in parts}
    return sum(offsets.values()), offsets


def app(args):
    source, output, app_id = names(args.topic_prefix)
    deadline = time.monotonic() + APP_DEADLINE_S
    producer = None
    consumer = None
    transactions = 0
    failures = []
    while time.monotonic() < deadline:
        try:
            if producer is None:
                producer = Producer({"bootstrap.servers": args.bootstrap, "transactional.id": app_id,
                                     "transaction.timeout.ms": 10000, "linger.ms": 5,
                                     "message.timeout.ms": 10000})
                producer.init_transactions(30)
            if consumer is None:
                consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": app_id,
                                     "isolation.level": "read_committed", "enable.auto.commit": False,
                                     "auto.offset.reset": "earliest", "session.timeout.ms": 10000})
                consumer.subscribe([source])
            total, _ = committed_total(consumer, source)
            if total >= args.records:
                break
            messages = [m for m in consumer.consume(num_messages=50, timeout=1) if not m.error()]
            if not messages:
                continue
            producer.begin_transaction()
            for message in messages:
                producer.produce(output, key=message.key(), value=b"out " + message.value())
            positions = consumer.position(consumer.assignment())
            producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(30)
            transactions += 1
        except KafkaException as exception:
            error = exception.args[0]
            failures.append(error.name())
            common.log(f"transaction failed ({error.name()}: {error.str()}); "
                       f"fatal={error.fatal()} abortable={error.txn_requires_abort()}")
            if error.fatal() or producer is None:
                producer = None
            else:
                try:
                    producer.abort_transaction(30)
                except KafkaException as abort_error:
                    common.log(f"abort failed: {abort_error.args[0].str()}; starting a new producer")
                    producer = None
            # Rewind to what the group committed: the aborted transaction's
            # inputs are processed again. A new consumer is the simplest
            # rewind that also survives a coordinator move.
            if consumer is not None:
                consumer.close()
                consumer = None
            time.sleep(0.5)
    common.check(time.monotonic() < deadline, f"the application did not finish in {APP_DEADLINE_S}s "
                 f"({transactions} transactions, failures {failures[-5:]})")
    if consumer is not None:
        consumer.close()
    print(json.dumps({"transactions": transactions, "failures": len(failures)}), flush=True)


def read_output(args, isolation):
    """Every record of the output visible at `isolation`, up to the end the
    partitions had when the read began."""
    _, output, _ = names(args.topic_prefix)
    reader = Consumer({"bootstrap.servers": args.bootstrap, "group.id": f"{args.topic_prefix}-check-{isolation}",
                       "isolation.level": isolation, "enable.auto.commit": False})
    parts = [TopicPartition(output, p) for p in range(OUTPUT_PARTITIONS)]
    ends = {}
    for tp in parts:
        _, high = reader.get_watermark_offsets(tp, timeout=30)
        ends[tp.partition] = high
    reader.assign([TopicPartition(output, p, -2) for p in range(OUTPUT_PARTITIONS)])
    seen = []
    done = set(p for p, end in ends.items() if end == 0)
    deadline = time.monotonic() + CHECK_DEADLINE_S
    while len(done) < OUTPUT_PARTITIONS:
        common.check(time.monotonic() < deadline, f"reading the output: {len(seen)} records, partitions done {done}")
        for message in reader.consume(num_messages=500, timeout=1):
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    continue
                common.fail(f"reading the output: {message.error().str()}")
            seen.append(message.value().decode())
        for tp in reader.position(parts):
            if tp.offset >= ends[tp.partition]:
                done.add(tp.partition)
    reader.close()
    return seen


def check(args):
    seen = read_output(args, "read_committed")
    counts = {}
    for value in seen:
        counts[value] = counts.get(value, 0) + 1
    expected = {f"out in-{seq}" for seq in range(args.records)}
    duplicates = sorted(v for v, c in counts.items() if c > 1)
    missing = sorted(expected - counts.keys())
    unexpected = sorted(counts.keys() - expected)
    # What aborted transactions left in the log (visible to read_uncommitted
    # readers only): the faults' footprint, reported, not asserted.
    aborted = len(read_output(args, "read_uncommitted")) - len(seen)
    print(json.dumps({"outputs": len(seen), "aborted_outputs": aborted, "duplicates": duplicates[:10],
                      "missing": missing[:10], "unexpected": unexpected[:10]}), flush=True)
    common.check(not duplicates, f"{len(duplicates)} outputs appear more than once: {duplicates[:10]}")
    common.check(not missing, f"{len(missing)} inputs have no output: {missing[:10]}")
    common.check(not unexpected, f"outputs of no input: {unexpected[:10]}")


def main():
    args = parse()
    {"seed": seed, "app": app, "check": check}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
