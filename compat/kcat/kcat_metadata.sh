#!/usr/bin/env bash
# kcat (Debian's, on librdkafka 2.0): `kcat -L` metadata, as JSON (-J).
# The broker list must name a reachable host and port; a topic made by a
# producer's auto-creation (Kafka's auto.create.topics.enable, default on)
# must then be listed with its num.partitions partitions, each with a leader.
set -euo pipefail
source "$(dirname "$0")/common.sh"
topic="$topic_prefix-kcat-metadata"

echo "made by auto-creation" | k -P -t "$topic" || fail "producing to $topic (auto-creation) failed"
metadata=$(k -L -J -t "$topic") || fail "kcat -L failed"
python3 - "$topic" "$metadata" <<'PY' || exit 1
import json, sys
topic, metadata = sys.argv[1], json.loads(sys.argv[2])
def fail(message):
    print(f"FAIL: {message}", file=sys.stderr); sys.exit(1)
brokers = metadata["brokers"]
if not brokers: fail("no broker listed")
for broker in brokers:
    host, _, port = broker["name"].rpartition(":")
    if not host or not port.isdigit(): fail(f"broker {broker} has no host:port")
[entry] = [t for t in metadata["topics"] if t["topic"] == topic] or [None]
if entry is None: fail(f"{topic} is not listed")
if "error" in entry: fail(f"{topic} listed with error {entry['error']}")
ids = {b["id"] for b in brokers}
for partition in entry["partitions"]:
    if partition["leader"] not in ids: fail(f"partition {partition['partition']} leader {partition['leader']} is not a broker")
print(json.dumps({"scenario": "kcat_metadata", "broker_count": len(brokers),
                  "auto_created_partitions": len(entry["partitions"])}, sort_keys=True))
PY
