#!/usr/bin/env python3
"""Records cross protocols: Kafka protocol in, Spate's native protocol out,
and the reverse.

1. confluent-kafka produces keyed records with headers (text, repeated
   keys, a null value, binary bytes) and explicit timestamps through the
   Kafka listener; `spate consume --format json --from-beginning --exit`
   reads them through the native port and must print the same partitions,
   offsets, keys, values, headers and timestamps the delivery reports gave.
2. `spate produce -k : -v` sends lines through the native port (one with no
   separator, so no key); confluent-kafka reads them through the Kafka
   listener and must see the partitions, offsets and timestamps `spate`
   reported, the keys and values of the lines, and no headers.
3. A confluent-kafka consumer group reads that topic through the Kafka
   listener and commits; `spate group describe` (native port) must show
   the group's commits at each partition's log end, lag 0.

Needs a Spate broker serving both protocols, and the CLI: without
--spate-bin it cannot run (against Apache Kafka it never can) and exits 77,
the conventional "skipped" code.
"""

import base64
import json
import os
import re
import subprocess
import sys

import common

SCENARIO = "cross_protocol"
EXIT_SKIPPED = 77
PARTITIONS = 3
RECORDS = 30
# A fixed past instant, so a timestamp replaced on the way would show.
BASE_TIMESTAMP_MS = 1704164645000
# How long one `spate` command may run: a bound on hangs, not a speed check.
SPATE_TIMEOUT_S = 30
PRODUCED_LINE = re.compile(r"^Produced to partition (\d+) at offset (\d+) with timestamp (-?\d+)\.$")


def headers_of(seq):
    return [("seq", str(seq).encode()), ("dup", b"a"), ("dup", b"b"), ("null", None), ("bin", bytes([0, 0xFF, seq]))]


def spate(args, spate_bin, *command, stdin=None):
    """Runs the Spate CLI against the native port; fails on a non-zero exit."""
    argv = [spate_bin, "--brokers", args.spate_brokers, *command]
    common.log("running " + " ".join(argv))
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, timeout=SPATE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        common.fail(f"{' '.join(argv)} did not finish in {SPATE_TIMEOUT_S}s")
    if done.returncode != 0:
        common.fail(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    return done


def decoded(field, encoding):
    """A field of `spate consume --format json` back to bytes."""
    if field is None:
        return None
    return base64.b64decode(field) if encoding == "base64" else field.encode()


def kafka_to_native(args, admin, topic):
    from confluent_kafka import Producer

    delivered = {}

    def on_delivery(err, message):
        if err is not None:
            common.fail(f"delivery failed: {err.name()}")
        delivered[(message.partition(), message.offset())] = int(message.value().decode().split()[-1])

    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "linger.ms": 5})
    for seq in range(RECORDS):
        producer.produce(topic, key=f"key-{seq % 4}", value=f"from kafka {seq}", headers=headers_of(seq),
                         timestamp=BASE_TIMESTAMP_MS + seq, on_delivery=on_delivery)
    common.check(producer.flush(30) == 0, "records still undelivered after flush")
    common.check(len(delivered) == RECORDS, f"{len(delivered)} distinct acknowledgements for {RECORDS} records")

    done = spate(args, args.spate_bin, "consume", topic, "--from-beginning", "--exit", "--format", "json")
    lines = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
    common.check(len(lines) == RECORDS, f"spate consume printed {len(lines)} records, expected {RECORDS}")
    for line in lines:
        spot = (line["partition"], line["offset"])
        common.check(line["topic"] == topic, f"record from topic {line['topic']}")
        seq = delivered.get(spot)
        common.check(seq is not None, f"spate consume printed {spot}, which no delivery report named")
        common.check(decoded(line["key"], line.get("key_encoding")) == f"key-{seq % 4}".encode(), f"record {spot}: key {line['key']!r}")
        common.check(decoded(line["value"], line.get("value_encoding")) == f"from kafka {seq}".encode(), f"record {spot}: value {line['value']!r}")
        common.check(line["timestamp"] == BASE_TIMESTAMP_MS + seq, f"record {spot}: timestamp {line['timestamp']}, sent {BASE_TIMESTAMP_MS + seq}")
        headers = [(h["key"], decoded(h["value"], h.get("value_encoding"))) for h in line["headers"]]
        common.check(headers == headers_of(seq), f"record {spot}: headers {headers!r}, sent {headers_of(seq)!r}")
    return {"records": len(lines), "records_per_partition": count_per_partition(delivered)}


def native_to_kafka(args, topic):
    from confluent_kafka import Consumer, TopicPartition

    lines = [f"key-{seq % 4}:from spate {seq}" for seq in range(RECORDS - 1)] + ["no separator here"]
    done = spate(args, args.spate_bin, "produce", topic, "-k", ":", "-v", stdin=("\n".join(lines) + "\n").encode())
    reported = []
    for line in done.stderr.decode().splitlines():
        match = PRODUCED_LINE.match(line.strip())
        if match:
            reported.append(tuple(int(g) for g in match.groups()))
    common.check(len(reported) == RECORDS, f"spate produce -v reported {len(reported)} records, expected {RECORDS}")
    spots = {(p, o): ts for p, o, ts in reported}
    common.check(len(spots) == RECORDS, "spate produce reported two records at one offset")

    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": f"{args.topic_prefix}-cross",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, -2) for p in range(PARTITIONS)])
    messages = common.ck_consume_all(consumer, RECORDS, "reading spate's records through the Kafka listener")
    consumer.close()
    # Lines are sent in order, so per partition the offsets follow line order.
    expected = {}
    for line in lines:
        key, sep, value = line.partition(":")
        expected.setdefault("keyed" if sep else "unkeyed", []).append((key.encode() if sep else None, (value if sep else line).encode()))
    seen = {"keyed": [], "unkeyed": []}
    for message in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        spot = (message.partition(), message.offset())
        common.check(spot in spots, f"Kafka consumer read {spot}, which spate produce did not report")
        _ts_type, ts = message.timestamp()
        common.check(ts == spots[spot], f"record {spot}: timestamp {ts}, spate produce reported {spots[spot]}")
        common.check(not message.headers(), f"record {spot}: headers {message.headers()!r}, sent none")
        seen["keyed" if message.key() is not None else "unkeyed"].append((message.key(), message.value()))
    common.check(sorted(seen["keyed"]) == sorted(expected["keyed"]), "keyed records read back differ from the lines sent")
    common.check(seen["unkeyed"] == expected["unkeyed"], f"the line without a key came back as {seen['unkeyed']!r}")
    return {"records": len(messages), "unkeyed": len(seen["unkeyed"])}


def group_seen_natively(args, topic):
    from confluent_kafka import Consumer

    group = f"{args.topic_prefix}-cross-group"
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    messages = common.ck_consume_all(consumer, RECORDS, "reading as a consumer group through the Kafka listener")
    consumer.commit(asynchronous=False)
    consumer.close()
    done = spate(args, args.spate_bin, "group", "describe", group)
    rows = {}
    for line in done.stdout.decode().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0] == topic and fields[1].isdigit():
            rows[int(fields[1])] = (int(fields[2]), int(fields[3]), int(fields[4]))
    ends = {}
    for message in messages:
        ends[message.partition()] = max(ends.get(message.partition(), 0), message.offset() + 1)
    common.check(set(rows) == set(ends), f"spate group describe shows partitions {sorted(rows)}, the group read {sorted(ends)}")
    for partition, (committed, log_end, lag) in rows.items():
        common.check(committed == ends[partition] and log_end == ends[partition] and lag == 0,
                     f"partition {partition}: committed {committed}, log end {log_end}, lag {lag}; the group read to {ends[partition]}")
    return {"partitions": len(rows), "lag": sum(r[2] for r in rows.values())}


def count_per_partition(spots):
    counts = {}
    for partition, _offset in spots:
        counts[str(partition)] = counts.get(str(partition), 0) + 1
    return dict(sorted(counts.items()))


def main():
    args = common.parse_args(__doc__, lambda p: (
        p.add_argument("--spate-bin", help="path of the spate CLI; without it the scenario is skipped (exit 77)"),
        p.add_argument("--spate-brokers", default=os.environ.get("SPATE_BROKERS", "localhost:9400"),
                       help="the broker's native address for the CLI (default $SPATE_BROKERS or localhost:9400)"),
    ))
    if not args.spate_bin:
        print("SKIP: cross_protocol needs --spate-bin PATH (Spate's CLI and a broker serving both protocols)",
              file=sys.stderr)
        sys.exit(EXIT_SKIPPED)
    common.check(os.access(args.spate_bin, os.X_OK), f"--spate-bin {args.spate_bin} is not an executable")
    common.ensure_venv()
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    to_native = f"{args.topic_prefix}-cross-to-native"
    to_kafka = f"{args.topic_prefix}-cross-to-kafka"
    common.ck_create_topics(admin, [NewTopic(t, num_partitions=PARTITIONS, replication_factor=1) for t in (to_native, to_kafka)])
    observed = {"kafka_to_native": kafka_to_native(args, admin, to_native), "native_to_kafka": native_to_kafka(args, to_kafka)}
    observed["kafka_group_seen_natively"] = group_seen_natively(args, to_kafka)
    common.ck_delete_topics(admin, [to_native, to_kafka])
    common.emit(SCENARIO, observed)


if __name__ == "__main__":
    main()
