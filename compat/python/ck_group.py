#!/usr/bin/env python3
"""confluent-kafka: a consumer group of three members, one joining late and
one killed.

Members are separate processes (a kill must be a real kill). With
--strategy range or cooperative-sticky:
  1. members A and B join and consume the first third of the records;
  2. member C joins late; the group rebalances over three members, and the
     second third is consumed;
  3. B is killed with SIGKILL (no LeaveGroup: the coordinator must notice
     when its session times out), the last third is produced, and A and C
     take over B's partitions and consume everything left;
  4. A and C close. Every partition was held by exactly one member at the
     end; every record was consumed at least once; the admin API's
     list_consumer_group_offsets shows each partition committed at its
     high watermark (lag 0).
"""

import multiprocessing
import queue
import signal
import time

import common

common.ensure_venv()

from confluent_kafka import (  # noqa: E402
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

SCENARIO = "ck_group"  # suffixed with the strategy in the JSON line
PARTITIONS = 6
PER_PARTITION_PER_PHASE = 20
# The broker's default group.min.session.timeout.ms is 6000: the smallest a
# member may ask for, and how long the kill in step 3 takes to be noticed.
SESSION_TIMEOUT_MS = 6000
# A synchronous commit that fails with one of these met a rebalance: the
# member commits again on its next turn. _NO_OFFSET: nothing to commit (the
# partitions it consumed moved away meanwhile).
REBALANCE_COMMIT_ERRORS = {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._NO_OFFSET,
}


def member(name, bootstrap, group, topic, strategy, events):
    """One group member: reports its assignment changes and every record it
    consumes to the parent, and commits synchronously after each batch. A
    commit that meets a rebalance (ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS,
    UNKNOWN_MEMBER_ID: the generation moved on under it, as it may in a
    cooperative rebalance on a busy machine) is tried again on the next
    turn, as an application does; it used to kill the member (seen against
    Apache Kafka in CI)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "partition.assignment.strategy": strategy,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": 500,
    })

    def on_assign(_consumer, partitions):
        events.put((name, "assign", sorted(p.partition for p in partitions)))

    def on_revoke(_consumer, partitions):
        events.put((name, "revoke", sorted(p.partition for p in partitions)))

    def on_lost(_consumer, partitions):
        events.put((name, "revoke", sorted(p.partition for p in partitions)))

    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    commit_owed = False
    while not stop:
        messages = consumer.consume(num_messages=100, timeout=0.2)
        records = []
        for message in messages:
            if message.error():
                events.put((name, "error", message.error().name()))
                continue
            records.append((message.partition(), message.offset()))
        if records:
            events.put((name, "records", records))
        if records or commit_owed:
            try:
                consumer.commit(asynchronous=False)
                commit_owed = False
            except KafkaException as err:
                code = err.args[0].code()
                if code not in REBALANCE_COMMIT_ERRORS:
                    raise
                commit_owed = code != KafkaError._NO_OFFSET
    consumer.close()
    events.put((name, "closed", None))


class Group:
    """The parent's view of the group, built from the members' events."""

    def __init__(self, events):
        self.events = events
        self.assignment = {}
        self.consumed = set()
        self.closed = set()

    def drain(self):
        while True:
            try:
                name, kind, payload = self.events.get(timeout=0.05)
            except queue.Empty:
                return
            held = self.assignment.setdefault(name, set())
            if kind == "assign":
                held.update(payload)
            elif kind == "revoke":
                held.difference_update(payload)
            elif kind == "records":
                self.consumed.update(payload)
            elif kind == "closed":
                self.closed.add(name)
            elif kind == "error":
                common.fail(f"member {name} got a consume error {payload}")

    def settled(self, members, consumed_count):
        """True once `members` hold every partition exactly once, balanced,
        and `consumed_count` distinct records were consumed."""
        self.drain()
        held = [self.assignment.get(m, set()) for m in members]
        every = sorted(p for h in held for p in h)
        sizes = [len(h) for h in held]
        # Balanced, not just covered: cooperative rebalances move partitions
        # in steps, and the states in between are no answer to compare with
        # another broker's.
        return (every == list(range(PARTITIONS)) and min(sizes) > 0 and max(sizes) - min(sizes) <= 1
                and len(self.consumed) >= consumed_count)


def produce_phase(producer, topic, phase):
    for partition in range(PARTITIONS):
        for seq in range(PER_PARTITION_PER_PHASE):
            producer.produce(topic, partition=partition, value=f"phase {phase} seq {seq}")
    common.check(producer.flush(30) == 0, "records still undelivered after flush")


def main():
    args = common.parse_args(__doc__, lambda p: p.add_argument(
        "--strategy", choices=["range", "cooperative-sticky"], required=True))
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    tag = {"range": "range", "cooperative-sticky": "cooperative"}[args.strategy]
    topic = f"{args.topic_prefix}-ck-group-{tag}"
    group_id = f"{args.topic_prefix}-ck-group-{tag}"
    common.ck_create_topics(admin, [NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all"})

    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    group = Group(events)
    processes = {}

    def start(name):
        process = context.Process(target=member, args=(name, args.bootstrap, group_id, topic, args.strategy, events))
        process.start()
        processes[name] = process

    phase_records = PARTITIONS * PER_PARTITION_PER_PHASE
    try:
        start("A")
        start("B")
        produce_phase(producer, topic, 1)
        common.wait_until(lambda: group.settled(["A", "B"], phase_records),
                          "A and B to split the partitions and consume phase 1")
        common.log(f"two members: {sorted(group.assignment['A'])} {sorted(group.assignment['B'])}")

        start("C")
        common.wait_until(lambda: group.settled(["A", "B", "C"], phase_records),
                          "the group to rebalance over A, B and the late C")
        produce_phase(producer, topic, 2)
        common.wait_until(lambda: group.settled(["A", "B", "C"], 2 * phase_records),
                          "three members to consume phase 2")
        three = {m: sorted(group.assignment[m]) for m in "ABC"}
        common.log(f"three members: {three}")

        processes["B"].kill()
        processes["B"].join()
        killed_at = time.monotonic()
        group.assignment["B"] = set()
        produce_phase(producer, topic, 3)
        common.wait_until(lambda: group.settled(["A", "C"], 3 * phase_records),
                          "A and C to take over the killed member's partitions and consume everything")
        common.log(f"B's partitions moved {time.monotonic() - killed_at:.1f}s after the kill")
        final = {m: sorted(group.assignment[m]) for m in "AC"}
        common.log(f"after the kill: {final}")

        for name in "AC":
            processes[name].terminate()
        common.wait_until(lambda: (group.drain(), group.closed >= {"A", "C"})[1], "A and C to close")
    finally:
        for process in processes.values():
            if process.is_alive():
                process.kill()
            process.join()

    all_records = {(p, o) for p in range(PARTITIONS) for o in range(3 * PER_PARTITION_PER_PHASE)}
    common.check(group.consumed == all_records,
                 f"consumed {len(group.consumed)} distinct records, expected {len(all_records)}")

    request = ConsumerGroupTopicPartitions(group_id, [TopicPartition(topic, p) for p in range(PARTITIONS)])
    result = admin.list_consumer_group_offsets([request], request_timeout=15)[group_id].result()
    committed = {tp.partition: tp.offset for tp in result.topic_partitions}
    end = 3 * PER_PARTITION_PER_PHASE
    lag = {p: end - committed.get(p, -1) for p in range(PARTITIONS)}
    common.check(all(v == 0 for v in lag.values()), f"committed offsets {committed}: lag {lag}, expected 0 everywhere")

    # The group is empty now, so its description lists no member.
    description = admin.describe_consumer_groups([group_id], request_timeout=15)[group_id].result()
    common.check(not description.members, f"the closed group still lists members {description.members}")

    common.ck_delete_topics(admin, [topic])
    common.emit(f"{SCENARIO}_{tag}", {
        "strategy": args.strategy,
        "partitions": PARTITIONS,
        "three_member_sizes": sorted(len(v) for v in three.values()),
        "final_member_sizes": sorted(len(v) for v in final.values()),
        "records_consumed": len(group.consumed),
        "committed": {str(p): committed[p] for p in sorted(committed)},
        "group_state_after_close": str(description.state).split(".")[-1],
    })


if __name__ == "__main__":
    main()
