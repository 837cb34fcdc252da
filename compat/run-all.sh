#!/usr/bin/env bash
# Runs every compatibility scenario against one Kafka-protocol bootstrap
# address and prints a pass/fail table with durations. Each scenario's one
# JSON line (what its client observed) goes to OUT/NAME.json and its
# stderr to OUT/NAME.log, so that a run against Apache Kafka and a run
# against Spate can be compared file by file.
#
#   compat/run-all.sh --bootstrap HOST:PORT [--out DIR] [--only NAME[,NAME]]...
#                     [--spate-bin PATH] [--spate-brokers HOST:PORT]
#                     [--sasl-bootstrap HOST:PORT] [--list]
#
# Exit status: 0 when no scenario failed (skipped ones, exit 77, do not
# count as failures), 1 otherwise, 2 for a usage error.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
compat=$repo/compat
# One scenario may take this long before it counts as hung: a bound, not a
# speed assertion (each finishes in well under a minute on a healthy broker).
scenario_timeout_s=120

# NAME and the command that runs it (arguments common to all are appended).
scenarios=(
    "kcat_metadata|$compat/kcat/kcat_metadata.sh"
    "kcat_produce_consume|$compat/kcat/kcat_produce_consume.sh"
    "kcat_group|$compat/kcat/kcat_group.sh"
    "ck_metadata|$compat/python/ck_metadata.py"
    "ck_keyed|$compat/python/ck_keyed.py"
    "ck_compression|$compat/python/ck_compression.py"
    "ck_idempotent|$compat/python/ck_idempotent.py"
    "ck_transactions|$compat/python/ck_transactions.py"
    "ck_headers_timestamps|$compat/python/ck_headers_timestamps.py"
    "ck_admin|$compat/python/ck_admin.py"
    "ck_group_range|$compat/python/ck_group.py --strategy range"
    "ck_group_cooperative|$compat/python/ck_group.py --strategy cooperative-sticky"
    "kp_produce_consume|$compat/python/kp_produce_consume.py"
    "kp_group|$compat/python/kp_group.py"
    "java_produce_consume|$compat/java/run.sh produce-consume"
    "java_group_classic|$compat/java/run.sh group --group-protocol classic"
    "java_group_consumer|$compat/java/run.sh group --group-protocol consumer"
    "java_admin|$compat/java/run.sh admin"
    "java_transactions|$compat/java/run.sh transactions"
    "franzgo|$repo/target/compat/bin/franzgo"
    "cross_protocol|$compat/python/cross_protocol.py"
    "tools_console|$compat/frameworks/tools_console.py"
    "tools_perf|$compat/frameworks/tools_perf.py"
    "tools_quotas|$compat/frameworks/tools_quotas.py"
    "streams_wordcount|$compat/java/run.sh streams-wordcount"
    "streams_wordcount_eos|$compat/java/run.sh streams-wordcount-eos"
    "connect_distributed|$compat/frameworks/connect_distributed.py"
    "sasl_scram|$compat/frameworks/sasl_scram.py"
    "tools_acls|$compat/frameworks/tools_acls.py"
    "tools_transactions|$compat/frameworks/tools_transactions.py"
)

usage() {
    sed -n '9,11p' "$0" | sed 's/^# *//' >&2
    exit 2
}

bootstrap=""
out=""
only=()
spate_bin=""
spate_brokers=""
# A SASL_PLAINTEXT listener of the same broker, for the sasl_* scenarios
# (skipped without it).
sasl_bootstrap=""
list=false
while [[ $# -gt 0 ]]; do
    case $1 in
    --bootstrap) bootstrap=${2:-}; shift 2 || usage ;;
    --out) out=${2:-}; shift 2 || usage ;;
    --only) IFS=, read -ra names <<<"${2:-}"; only+=("${names[@]}"); shift 2 || usage ;;
    --spate-bin) spate_bin=${2:-}; shift 2 || usage ;;
    --spate-brokers) spate_brokers=${2:-}; shift 2 || usage ;;
    --sasl-bootstrap) sasl_bootstrap=${2:-}; shift 2 || usage ;;
    --list) list=true; shift ;;
    *) usage ;;
    esac
done

if $list; then
    for entry in "${scenarios[@]}"; do echo "${entry%%|*}"; done
    exit 0
fi
[[ -n $bootstrap ]] || usage

known=" $(for entry in "${scenarios[@]}"; do printf '%s ' "${entry%%|*}"; done)"
for name in "${only[@]}"; do
    if [[ $known != *" $name "* ]]; then
        echo "error: no scenario named $name (compat/run-all.sh --list names them)" >&2
        exit 2
    fi
done

run_id="run-$(date -u +%Y%m%dT%H%M%S)-$$"
out=${out:-$repo/target/compat/runs/$run_id}
mkdir -p "$out"
# Topic and group names start with this, so that runs never collide.
topic_prefix="compat-$(date +%s)-$$"

passed=0
failed=0
skipped=0
printf '%-24s %-6s %8s\n' SCENARIO RESULT SECONDS
for entry in "${scenarios[@]}"; do
    name=${entry%%|*}
    read -ra command <<<"${entry#*|}"
    if [[ ${#only[@]} -gt 0 && " ${only[*]} " != *" $name "* ]]; then
        continue
    fi
    command+=(--bootstrap "$bootstrap" --topic-prefix "$topic_prefix")
    if [[ $name == cross_protocol ]]; then
        [[ -n $spate_bin ]] && command+=(--spate-bin "$spate_bin")
        [[ -n $spate_brokers ]] && command+=(--spate-brokers "$spate_brokers")
    fi
    if [[ $name == sasl_* && -n $sasl_bootstrap ]]; then
        command+=(--sasl-bootstrap "$sasl_bootstrap")
    fi
    started_ns=$(date +%s%N)
    timeout --kill-after=10 "$scenario_timeout_s" "${command[@]}" >"$out/$name.json" 2>"$out/$name.log" </dev/null
    status=$?
    elapsed_s=$(awk -v ns=$(($(date +%s%N) - started_ns)) 'BEGIN { printf "%.1f", ns / 1e9 }')
    result=pass
    if [[ $status -eq 77 ]]; then
        result=skip
    elif [[ $status -ne 0 ]]; then
        result=FAIL
        [[ $status -eq 124 || $status -eq 137 ]] && echo "timed out after ${scenario_timeout_s}s" >>"$out/$name.log"
    elif [[ $(wc -l <"$out/$name.json") -ne 1 ]] || ! python3 -c 'import json, sys; json.loads(open(sys.argv[1]).read())' "$out/$name.json" 2>/dev/null; then
        result=FAIL
        echo "exited 0 but did not print exactly one JSON line on stdout" >>"$out/$name.log"
    fi
    case $result in
    pass) passed=$((passed + 1)) ;;
    skip) skipped=$((skipped + 1)); rm -f "$out/$name.json" ;;
    FAIL) failed=$((failed + 1)) ;;
    esac
    printf '%-24s %-6s %8s\n' "$name" "$result" "$elapsed_s"
    if [[ $result == FAIL ]]; then
        grep -m 3 -E 'FAIL|rror' "$out/$name.log" | sed 's/^/    /' || tail -n 3 "$out/$name.log" | sed 's/^/    /'
    fi
done
echo "results in $out"
echo "compat: $passed passed, $failed failed, $skipped skipped"
[[ $failed -eq 0 ]]
