#!/usr/bin/env bash
# The differential test (issue 15): every scenario runs against Apache
# Kafka (the reference) and against a Spate broker's Kafka listener, and
# compare.py compares what the clients observed, field by field. A
# difference fails the run unless compat/known-differences.json lists it
# (scenario, field, why; each also a line in docs/kafka-compat.md's
# "Differences" section).
#
#   compat/differential.sh --spate HOST:PORT [--kafka HOST:PORT] [--out DIR]
#                          [--kafka-ports PORT,CONTROLLER_PORT] [--only NAME[,NAME]]...
#
# Without --kafka it starts Apache Kafka 4.4 (compat/kafka/start.sh) under
# OUT/kafka-broker, on --kafka-ports or else on ports the kernel says are
# free now, and stops it at the end. (The tests pass ports they reserved:
# during the JVM's start a free port of the ephemeral range can become some
# client connection's local port.) The scenarios run
# against one broker, then the other, never both at once (the machine has 2
# cores). cross_protocol is skipped on both sides: it needs Spate's own CLI,
# so Apache Kafka has nothing to compare it with.
#
# Exit status: 0 when every difference is known, 1 when a scenario failed
# against Apache Kafka (a broken scenario, not a broker difference) or a
# difference is not known, 2 for a usage error.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
compat=$repo/compat

usage() {
    sed -n '9,10p' "$0" | sed 's/^# *//' >&2
    exit 2
}

spate=""
kafka=""
out=""
only=()
kafka_ports=""
while [[ $# -gt 0 ]]; do
    case $1 in
    --spate) spate=${2:-}; shift 2 || usage ;;
    --kafka) kafka=${2:-}; shift 2 || usage ;;
    --out) out=${2:-}; shift 2 || usage ;;
    --kafka-ports) kafka_ports=${2:-}; shift 2 || usage ;;
    --only) only+=(--only "${2:-}"); shift 2 || usage ;;
    *) usage ;;
    esac
done
[[ -n $spate ]] || usage
out=${out:-$repo/target/compat/differential/run-$(date -u +%Y%m%dT%H%M%S)-$$}
mkdir -p "$out"

# The judge first: a compare.py that no longer tells a difference from a
# known one would make every verdict below meaningless (about a second).
python3 "$compat/compare_test.py" >"$out/compare_test.log" 2>&1 || {
    echo "differential: error: compat/compare_test.py failed:" >&2
    tail -n 20 "$out/compare_test.log" >&2
    exit 1
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if [[ -z $kafka ]]; then
    broker_dir=$out/kafka-broker
    if [[ -n $kafka_ports ]]; then
        [[ $kafka_ports =~ ^[0-9]+,[0-9]+$ ]] || usage
        port=${kafka_ports%,*}
        controller_port=${kafka_ports#*,}
    else
        port=$(free_port)
        controller_port=$(free_port)
    fi
    echo "differential: starting Apache Kafka on 127.0.0.1:$port (logs in $broker_dir)"
    KAFKA_CONTROLLER_PORT=$controller_port "$compat/kafka/start.sh" "$port" "$broker_dir" >/dev/null || {
        echo "differential: error: Apache Kafka did not start" >&2
        exit 1
    }
    trap '"$compat/kafka/stop.sh" "$broker_dir" >/dev/null' EXIT
    kafka=127.0.0.1:$port
fi

echo "differential: Apache Kafka at $kafka"
"$compat/run-all.sh" --bootstrap "$kafka" --out "$out/kafka" "${only[@]}"
kafka_status=$?
echo "differential: Spate at $spate"
"$compat/run-all.sh" --bootstrap "$spate" --out "$out/spate" "${only[@]}"
echo "differential: comparing (A: Apache Kafka, B: Spate)"
"$compat/compare.py" "$out/kafka" "$out/spate" --known "$compat/known-differences.json"
compare_status=$?

if [[ $kafka_status -ne 0 ]]; then
    echo "differential: FAIL: a scenario failed against Apache Kafka, the reference (see $out/kafka)"
    exit 1
fi
if [[ $compare_status -ne 0 ]]; then
    echo "differential: FAIL: Spate differs where compat/known-differences.json does not say so (results in $out)"
    exit 1
fi
echo "differential: every difference is known (results in $out)"
