#!/usr/bin/env python3
"""Client quotas set with Kafka's own kafka-configs tool (ConfigCommand,
kafka-tools 4.4.0) and honoured against confluent-kafka producers.

1. kafka-configs --alter --add-config producer_byte_rate=... on a client id
   (greedy), and on the <default> client id a generous one; --describe
   shows both.
2. Two producers write the same number of bytes at once, as fast as they
   can: greedy (client.id with the small quota) and polite (under the
   default). Greedy takes at least as long as its quota allows (after the
   burst the quota window admits) and is told it was throttled
   (throttle_time_ms in its answers, as librdkafka's statistics report);
   polite is never throttled.
3. kafka-configs --delete-config removes greedy's quota: --describe no
   longer shows it.
4. An ip quota (KIP-612): kafka-configs --alter --add-config
   connection_creation_rate=... --entity-type ips on an address (one of
   TEST-NET-2's, so no connection of this scenario is held to it);
   --describe --entity-type ips shows it; --delete-config removes it.
"""

import json
import sys
import threading
import time

import kafkatools
from kafkatools import common

SCENARIO = "tools_quotas"
CONFIGS = "org.apache.kafka.tools.ConfigCommand"

# Greedy's quota and what it writes: the quota window (11 s) admits about
# QUOTA x 11 bytes at once, the rest at the quota, so greedy needs at least
# (BYTES - QUOTA x 11) / QUOTA seconds; 0.7 of that is asserted (a lower
# bound: a slow machine only makes it longer).
QUOTA_BYTES_PER_S = 64 * 1024
BYTES = 1536 * 1024
DEFAULT_QUOTA_BYTES_PER_S = 1024 * 1024 * 1024
RECORD_BYTES = 1024


# Step 4's address and rate.
QUOTA_IP = "198.51.100.7"
IP_CONNECTIONS_PER_S = 25


def describe(base, entity_type="clients"):
    out = kafkatools.tool(CONFIGS, base + ["--describe", "--entity-type", entity_type])
    return [line.strip() for line in out.splitlines() if line.strip()]


def produce(bootstrap, topic, client_id, result):
    from confluent_kafka import Producer

    throttles = []

    def on_stats(text):
        for broker in json.loads(text).get("brokers", {}).values():
            throttle = broker.get("throttle", {})
            if throttle.get("max", 0) > 0:
                throttles.append(throttle["max"])

    producer = Producer({"bootstrap.servers": bootstrap, "client.id": client_id, "acks": "all",
                         "linger.ms": 5, "batch.size": 64 * 1024, "statistics.interval.ms": 500,
                         "stats_cb": on_stats})
    started = time.monotonic()
    payload = b"x" * RECORD_BYTES
    for _ in range(BYTES // RECORD_BYTES):
        while True:
            try:
                producer.produce(topic, payload)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(120)
    elapsed = time.monotonic() - started
    # One more statistics round, so a throttle seen last is reported.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        producer.poll(0.1)
    result[client_id] = {"elapsed_s": elapsed, "unsent": remaining, "throttle_max_ms": max(throttles, default=0)}


def main():
    common.ensure_venv()
    args = common.parse_args(__doc__.splitlines()[0])
    bootstrap = args.bootstrap
    base = ["--bootstrap-server", bootstrap]
    topic = f"{args.topic_prefix}-quotas"
    greedy = f"{args.topic_prefix}-greedy"
    polite = f"{args.topic_prefix}-polite"

    kafkatools.tool(CONFIGS, base + ["--alter", "--add-config", f"producer_byte_rate={QUOTA_BYTES_PER_S}",
                                     "--entity-type", "clients", "--entity-name", greedy])
    kafkatools.tool(CONFIGS, base + ["--alter", "--add-config", f"producer_byte_rate={DEFAULT_QUOTA_BYTES_PER_S}",
                                     "--entity-type", "clients", "--entity-default"])
    listed = describe(base)
    common.check(any(greedy in line and f"producer_byte_rate={QUOTA_BYTES_PER_S}" in line for line in listed),
                 f"--describe does not show greedy's quota: {listed}")
    common.check(any("<default>" in line or "default" in line for line in listed),
                 f"--describe does not show the default client quota: {listed}")

    from confluent_kafka.admin import AdminClient, NewTopic
    common.ck_create_topics(AdminClient({"bootstrap.servers": bootstrap}), [NewTopic(topic, 1, 1)])

    result = {}
    threads = [threading.Thread(target=produce, args=(bootstrap, topic, name, result)) for name in (greedy, polite)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    common.log(f"producers: {result}")
    for name in (greedy, polite):
        common.check(name in result and result[name]["unsent"] == 0, f"{name} did not send everything: {result}")
    at_least_s = (BYTES - QUOTA_BYTES_PER_S * 11) / QUOTA_BYTES_PER_S * 0.7
    common.check(result[greedy]["elapsed_s"] >= at_least_s,
                 f"greedy wrote {BYTES} bytes in {result[greedy]['elapsed_s']:.1f}s, over its quota of "
                 f"{QUOTA_BYTES_PER_S} B/s (at least {at_least_s:.1f}s expected)")
    common.check(result[greedy]["throttle_max_ms"] > 0, f"greedy was never told it was throttled: {result}")
    common.check(result[polite]["throttle_max_ms"] == 0, f"polite was throttled: {result}")

    kafkatools.tool(CONFIGS, base + ["--alter", "--delete-config", "producer_byte_rate",
                                     "--entity-type", "clients", "--entity-name", greedy])
    kafkatools.tool(CONFIGS, base + ["--alter", "--delete-config", "producer_byte_rate",
                                     "--entity-type", "clients", "--entity-default"])
    listed = describe(base)
    common.check(not any(greedy in line for line in listed), f"greedy's quota is still listed: {listed}")

    kafkatools.tool(CONFIGS, base + ["--alter", "--add-config", f"connection_creation_rate={IP_CONNECTIONS_PER_S}",
                                     "--entity-type", "ips", "--entity-name", QUOTA_IP])
    listed = describe(base, "ips")
    common.check(any(QUOTA_IP in line and f"connection_creation_rate={IP_CONNECTIONS_PER_S}" in line
                     for line in listed), f"--describe does not show the ip quota: {listed}")
    kafkatools.tool(CONFIGS, base + ["--alter", "--delete-config", "connection_creation_rate",
                                     "--entity-type", "ips", "--entity-name", QUOTA_IP])
    listed = describe(base, "ips")
    common.check(not any(QUOTA_IP in line for line in listed), f"the ip quota is still listed: {listed}")

    common.emit(SCENARIO, {
        "described": True,
        "greedy_throttled": True,
        "polite_throttled": False,
        "removed": True,
        "ip_quota_described": True,
        "ip_quota_removed": True,
    })


if __name__ == "__main__":
    sys.exit(main())
