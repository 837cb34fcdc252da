#!/usr/bin/env python3
"""Kafka's perf tools, unmodified: kafka-producer-perf-test
(ProducerPerformance) and kafka-consumer-perf-test (ConsumerPerformance)
from kafka-tools 4.4.0, and kafka-get-offsets (GetOffsetShell) to check.

1. kafka-topics --create makes a 3-partition topic.
2. kafka-producer-perf-test sends 50,000 records of 100 bytes with
   acks=all as fast as it can; its summary line must say every record was
   sent (it counts only acknowledged records; a failed send prints a stack
   trace instead).
3. kafka-get-offsets --time -1: the partitions' log-end offsets add up to
   50,000.
4. kafka-consumer-perf-test reads 50,000 records in a consumer group
   (classic protocol, the tool's default) and reports 50,000 consumed.

The summary lines' numbers go in the JSON under "measured", which
compare.py does not compare: they are what this machine managed this
time, not a property of the broker's protocol (speed is not a test here).
"""

import re

import kafkatools
from kafkatools import common

SCENARIO = "tools_perf"
RECORDS = 50_000
RECORD_BYTES = 100
PARTITIONS = 3

# "50000 records sent, 43859.6 records/sec (4.18 MB/sec), 282.91 ms avg
# latency, 493.00 ms max latency, 303 ms 50th, 398 ms 95th, 430 ms 99th,
# 431 ms 99.9th."
PRODUCER_SUMMARY = re.compile(
    r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, "
    r"([\d.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99.9th")


def main():
    args = common.parse_args(__doc__.splitlines()[0])
    bootstrap = args.bootstrap
    topic = f"{args.topic_prefix}-tools-perf"
    group = f"{args.topic_prefix}-tools-perf-group"
    base = ["--bootstrap-server", bootstrap]

    kafkatools.tool("org.apache.kafka.tools.TopicCommand", base + [
        "--create", "--topic", topic, "--partitions", str(PARTITIONS), "--replication-factor", "1"])

    out = kafkatools.tool("org.apache.kafka.tools.ProducerPerformance", base + [
        "--topic", topic, "--num-records", str(RECORDS), "--record-size", str(RECORD_BYTES),
        "--throughput", "-1", "--command-property", "acks=all"])
    summaries = [m for m in map(PRODUCER_SUMMARY.search, out.splitlines()) if m]
    common.check(summaries, f"kafka-producer-perf-test printed no summary line: {out!r}")
    summary = summaries[-1]
    common.check(int(summary[1]) == RECORDS, f"only {summary[1]} of {RECORDS} records acknowledged")

    out = kafkatools.tool("org.apache.kafka.tools.GetOffsetShell", base + ["--topic", topic, "--time", "-1"])
    end_offsets = {}
    for line in out.splitlines():
        name, partition, offset = line.rsplit(":", 2)
        common.check(name == topic, f"kafka-get-offsets named another topic: {line}")
        end_offsets[int(partition)] = int(offset)
    common.check(sorted(end_offsets) == list(range(PARTITIONS)), f"kafka-get-offsets: {end_offsets}")
    common.check(sum(end_offsets.values()) == RECORDS, f"log-end offsets {end_offsets} do not add up to {RECORDS}")

    out = kafkatools.tool("org.apache.kafka.tools.ConsumerPerformance", base + [
        "--topic", topic, "--group", group, "--num-records", str(RECORDS),
        "--timeout", str(int(common.WAIT_S_MAX * 1000))])
    # A header line, then one CSV line: start, end, MB, MB/s, records,
    # records/s, rebalance ms, fetch ms, fetch MB/s, fetch records/s.
    lines = [line for line in out.splitlines() if line.strip()]
    common.check(len(lines) >= 2 and lines[-2].startswith("start.time"), f"kafka-consumer-perf-test: {out!r}")
    consumed = [field.strip() for field in lines[-1].split(",")]
    common.check(len(consumed) == 10 and int(consumed[4]) == RECORDS,
                 f"kafka-consumer-perf-test consumed {consumed[4:5]} records, not {RECORDS}")

    kafkatools.tool("org.apache.kafka.tools.TopicCommand", base + ["--delete", "--topic", topic])
    common.emit(SCENARIO, {
        "records": RECORDS,
        "record_bytes": RECORD_BYTES,
        "acks": "all",
        "producer_acknowledged": int(summary[1]),
        "log_end_offsets_total": sum(end_offsets.values()),
        "consumer_records": int(consumed[4]),
        "measured": {
            "producer_records_per_s": float(summary[2]),
            "producer_mb_per_s": float(summary[3]),
            "producer_latency_ms_avg": float(summary[4]),
            "producer_latency_ms_max": float(summary[5]),
            "producer_latency_ms_p50": int(summary[6]),
            "producer_latency_ms_p99": int(summary[8]),
            "consumer_mb_per_s": float(consumed[3]),
            "consumer_records_per_s": float(consumed[5]),
            "consumer_rebalance_ms": int(consumed[6]),
        },
    })


if __name__ == "__main__":
    main()
