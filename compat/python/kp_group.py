#!/usr/bin/env python3
"""kafka-python: a consumer group with commits.

A first member takes the whole 4-partition topic, a second joins and the
two (threads; kafka-python is pure Python) split it, consume and commit
synchronously; one closes (LeaveGroup) and the other takes over its
partitions and consumes the rest. The admin client's
list_group_offsets then shows every partition committed at its end,
and a new member of the same group resumes from those commits: it sees only
records produced after them.
"""

import logging
import threading

import common

common.ensure_venv()

from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import KafkaAdminClient, NewTopic  # noqa: E402
from kafka.errors import (  # noqa: E402
    CommitFailedError,
    IllegalGenerationError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

# A commit that meets a rebalance is tried again on the member's next turn,
# as an application does (it would otherwise end the member).
REBALANCE_COMMIT_ERRORS = (CommitFailedError, IllegalGenerationError, RebalanceInProgressError,
                           UnknownMemberIdError)

SCENARIO = "kp_group"
PARTITIONS = 4
PER_PARTITION = 25


class Member(threading.Thread):
    def __init__(self, name, bootstrap, group, topic):
        super().__init__(name=name, daemon=True)
        self.consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                      enable_auto_commit=False, auto_offset_reset="earliest",
                                      session_timeout_ms=10000, heartbeat_interval_ms=500,
                                      # The group leader assigns from its own metadata; a
                                      # topic created a moment ago may be missing from it,
                                      # and only a refresh (every 5 minutes by default)
                                      # would trigger the rebalance that fixes it.
                                      metadata_max_age_ms=1000)
        self.lock = threading.Lock()
        self.records = set()
        self.assignment = set()
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            commit_owed = False
            while not self.stop.is_set():
                batches = self.consumer.poll(timeout_ms=200)
                got = [(r.partition, r.offset) for batch in batches.values() for r in batch]
                if got or commit_owed:
                    try:
                        self.consumer.commit()
                        commit_owed = False
                    except REBALANCE_COMMIT_ERRORS:
                        commit_owed = True
                with self.lock:
                    self.records.update(got)
                    self.assignment = {tp.partition for tp in self.consumer.assignment()}
            self.consumer.close()
        except Exception as exc:  # noqa: BLE001 - surfaced by the main thread
            self.error = exc

    def snapshot(self):
        if self.error:
            common.fail(f"member {self.name}: {self.error!r}")
        with self.lock:
            return set(self.assignment), set(self.records)


def produce(bootstrap, topic, first_seq):
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for partition in range(PARTITIONS):
        for seq in range(first_seq, first_seq + PER_PARTITION):
            producer.send(topic, partition=partition, value=f"seq {seq}".encode())
    producer.flush(timeout=30)
    producer.close()


def main():
    args = common.parse_args(__doc__)
    # kafka-python's own warnings (a failed join, missing metadata) say why
    # a group does not settle.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(name)s %(message)s")
    topic = f"{args.topic_prefix}-kp-group"
    group = f"{args.topic_prefix}-kp-group"
    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap, client_id="compat-kp")
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)], timeout_ms=30000)
    produce(args.bootstrap, topic, 0)

    # A starts alone and takes every partition; B then joins, which is the
    # rebalance under test (a join while the group is stable).
    a = Member("A", args.bootstrap, group, topic)
    a.start()
    common.wait_until(lambda: a.snapshot()[0] == set(range(PARTITIONS)), "A alone to hold every partition",
                      on_timeout=lambda: f"A {a.snapshot()[0]}")
    b = Member("B", args.bootstrap, group, topic)
    b.start()
    everything = {(p, o) for p in range(PARTITIONS) for o in range(PER_PARTITION)}

    def split_and_done():
        (held_a, got_a), (held_b, got_b) = a.snapshot(), b.snapshot()
        return (held_a and held_b and not held_a & held_b and held_a | held_b == set(range(PARTITIONS))
                and got_a | got_b == everything)
    common.wait_until(split_and_done, "A and B to split the partitions and consume every record",
                      on_timeout=lambda: f"A {a.snapshot()[0]} {len(a.snapshot()[1])}, B {b.snapshot()[0]} {len(b.snapshot()[1])}")
    two_sizes = sorted([len(a.snapshot()[0]), len(b.snapshot()[0])])

    b.stop.set()
    b.join(timeout=30)
    produce(args.bootstrap, topic, PER_PARTITION)
    everything = {(p, o) for p in range(PARTITIONS) for o in range(2 * PER_PARTITION)}
    common.wait_until(lambda: a.snapshot()[0] == set(range(PARTITIONS))
                      and a.snapshot()[1] | b.snapshot()[1] == everything,
                      "A to take over B's partitions and consume the second half")
    a.stop.set()
    a.join(timeout=30)

    offsets = admin.list_group_offsets({group: None})[group]
    committed = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
    common.check(committed == {p: 2 * PER_PARTITION for p in range(PARTITIONS)},
                 f"committed offsets {committed}, expected {2 * PER_PARTITION} on every partition")

    # A new member resumes from the commits: it reads only the third batch.
    produce(args.bootstrap, topic, 2 * PER_PARTITION)
    c = Member("C", args.bootstrap, group, topic)
    c.start()
    third = {(p, o) for p in range(PARTITIONS) for o in range(2 * PER_PARTITION, 3 * PER_PARTITION)}
    common.wait_until(lambda: c.snapshot()[1] >= third, "a new member to read the records after the commits")
    c.stop.set()
    c.join(timeout=30)
    _, got_c = c.snapshot()
    common.check(got_c == third, f"the new member read {len(got_c - third)} records from before the commits")

    admin.delete_topics([topic], timeout_ms=30000)
    admin.close()
    common.emit(SCENARIO, {
        "two_member_sizes": two_sizes,
        "committed": {str(p): o for p, o in sorted(committed.items())},
        "resumed_records": len(got_c),
    })


if __name__ == "__main__":
    main()
