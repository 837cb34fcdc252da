#!/usr/bin/env bash
# File -> topic -> file: records/s and MB/s of Spate Connect's standalone
# worker, against the CLI producer and consumer and against Kafka Connect's
# own (Java) standalone worker, on one Spate broker, in one run.
#
# Starts a broker (target/release/spate; durability `always`, its
# default, or DURABILITY) with its native port and a Kafka listener, writes
# an input file of LINES lines of LINE_BYTES bytes (newline included),
# then, each into a fresh one-partition topic:
#   spate-connect  `spate connect standalone` with Kafka's quickstart
#                  files (worker: bootstrap.servers, StringConverter for
#                  keys and values, offset.storage.file.filename;
#                  FileStreamSource file=input topic=T; FileStreamSink
#                  topics=T file=output), on the native port;
#   cli            `spate produce T -f input` and
#                  `spate consume T --from-beginning -c LINES > output`,
#                  started together (a pipeline: the consumer writes while
#                  the producer reads), on the native port;
#   kafka-connect  org.apache.kafka.connect.cli.ConnectStandalone
#                  (connect-runtime and connect-file 4.3.1 from
#                  target/compat/connect-libs, compat/install.sh) with the
#                  same three files, on the broker's Kafka listener.
# Each is timed from its start (worker or processes launched) until the
# output file holds the whole input (its size polled every POLL_S; its
# line count and bytes checked afterwards), so a worker's start-up is
# included; the time to the first output line is shown apart as "first
# line s", which is about the start-up. MB/s = bytes of the input / s
# (MB = 10^6 bytes). Shown beside: CPU seconds of the worker (or of the
# producer and consumer) and of the broker during the pipeline, and the
# partition appends the broker acknowledged into the topic (its /metrics:
# spate_produce_requests_total), so records per produced batch; and the
# machine's limits in the same run: reading the input (page-cached) and
# writing a copy of it with one fsync (dd).
#
# Both workers run with Kafka's defaults: offset.flush.interval.ms 60000 (so
# the sink's fsync, on each flush, comes once a minute at most),
# FileStreamSource batch.size 2000. EXTRA_FLUSH_MS (default 1000; empty:
# none) adds a Spate Connect row with that offset.flush.interval.ms.
#
# The JVM: Kafka's own launcher flags (kafka-run-class.sh: G1, 20 ms pause
# target), heap -Xms256m -Xmx1g (JAVA_HEAP_OPTS), the C2 compiler (the
# compat scenarios' -XX:TieredStopAtLevel=1 suits their short runs, not a
# throughput measurement); log4j at warn (compat/frameworks'
# tools-log4j2.properties).
#
#   cargo build --release --bin spate
#   bash compat/install.sh          # once, if target/compat/connect-libs is missing
#   bash connect/bench/file-pipeline.sh     # LINES=2000000 LINE_BYTES=100 DURABILITY=always
#
# Prints a Markdown table. Everything lives under
# target/tmp/bench-file-pipeline and is stopped at exit.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
spate=${SPATE:-$repo/target/release/spate}
lines=${LINES:-2000000}
line_bytes=${LINE_BYTES:-100}
extra_flush_ms=${EXTRA_FLUSH_MS-1000}
# The broker's default durability: always (an fsync before each append is
# acknowledged), never or interval:<ms>.
durability=${DURABILITY:-always}
poll_s=${POLL_S:-0.1}
# A pipeline that has not finished after this long is reported as such.
timeout_s=${TIMEOUT_S:-900}
java_heap=${JAVA_HEAP_OPTS:-"-Xms256m -Xmx1g"}
java_opts=${JAVA_OPTS:-"-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true"}
connect_libs=$repo/target/compat/connect-libs
work=$repo/target/tmp/bench-file-pipeline
[[ -x $spate ]] || { echo "no $spate: cargo build --release --bin spate" >&2; exit 1; }
command -v java >/dev/null || { echo "no java: compat/install.sh needs a JDK 17+" >&2; exit 1; }
if ! ls "$connect_libs"/connect-runtime-*.jar >/dev/null 2>&1; then
    echo "no Kafka Connect jars in $connect_libs: running compat/install.sh" >&2
    bash "$repo/compat/install.sh" >&2
fi
((line_bytes >= 20)) || { echo "LINE_BYTES must be at least 20" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
# The partition appends (produce requests' batches) the broker acknowledged
# into a topic, from its /metrics.
appends_of() {
    curl -s "http://127.0.0.1:$metrics_port/metrics" |
        awk -v t="topic=\"$1\"" 'index($0, "spate_produce_requests_total{") == 1 && index($0, t) { s += $NF } END { print s + 0 }'
}
# CPU seconds (user + system, every thread) a live process has used.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
ticks=$(getconf CLK_TCK)

rm -rf "$work"
mkdir -p "$work"

native_port=$(free_port)
kafka_port=$(free_port)
metrics_port=$(free_port)
"$spate" serve --data-dir "$work/broker" --port "$native_port" --listeners "PLAINTEXT://127.0.0.1:$kafka_port" \
    --metrics-listen "127.0.0.1:$metrics_port" --durability "$durability" --log-level warn >"$work/broker.log" 2>&1 &
broker_pid=$!
worker_pid=
cleanup() {
    [[ -n $worker_pid ]] && kill "$worker_pid" 2>/dev/null || true
    [[ -n ${cli_pids:-} ]] && kill $cli_pids 2>/dev/null || true
    kill "$broker_pid" 2>/dev/null || true
}
trap cleanup EXIT
brokers=127.0.0.1:$native_port
for _ in $(seq 1 50); do "$spate" --brokers "$brokers" topic list >/dev/null 2>&1 && break; sleep 0.2; done

# The input: LINES lines of exactly LINE_BYTES bytes, each different.
input=$work/input.txt
python3 - "$lines" "$line_bytes" "$input" <<'EOF'
import sys
n, size, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
filler = ("the quick brown fox jumps over the lazy dog " * (size // 40 + 2))
with open(path, "w", buffering=1 << 20) as out:
    for i in range(n):
        head = "line %010d " % i
        out.write(head + filler[i % 40 : i % 40 + size - 1 - len(head)] + "\n")
EOF
input_bytes=$(stat -c %s "$input")

# The machine's limits, in the same run: the input read (it is in the page
# cache, as it is for the pipelines) and a copy written with one fsync.
start=$(now_ms)
dd if="$input" of=/dev/null bs=1M status=none
read_ms=$(($(now_ms) - start))
start=$(now_ms)
dd if="$input" of="$work/copy.txt" bs=1M conv=fsync status=none
write_ms=$(($(now_ms) - start))
rm -f "$work/copy.txt"

# Waits for $1 to hold the whole input; prints "first_ms end_ms" (absolute),
# or "first_ms timeout". $2: a pid whose exit without the whole output is a
# failure.
wait_output() {
    local out=$1 pid=$2 size=0 first_ms= deadline=$(($(now_ms) + timeout_s * 1000))
    while ((size < input_bytes)); do
        size=$(stat -c %s "$out" 2>/dev/null || echo 0)
        if [[ -z $first_ms ]] && ((size > 0)); then first_ms=$(now_ms); fi
        ((size >= input_bytes)) && break
        if ! kill -0 "$pid" 2>/dev/null; then echo "${first_ms:-0} exited"; return; fi
        if (($(now_ms) > deadline)); then echo "${first_ms:-0} timeout"; return; fi
        sleep "$poll_s"
    done
    echo "$first_ms $(now_ms)"
}

# Checks an output file against the input: the same lines, in order.
check_output() {
    local out=$1 got
    got=$(wc -l <"$out")
    if ((got != lines)); then echo "$out: $got lines, not $lines" >&2; return 1; fi
    cmp -s "$input" "$out" || { echo "$out differs from the input" >&2; return 1; }
}

results=()
# One row: name, started_ms, first_ms, end_ms, cpu of the client side, cpu
# of the broker, the topic's appends.
record() {
    results+=("$1 $2 $3 $4 $5 $6 $7")
}

write_connectors() {
    local dir=$1 prefix=$2 topic=$3
    cat >"$dir/connect-file-source.properties" <<EOF
name=$prefix-file-source
connector.class=FileStreamSource
tasks.max=1
file=$input
topic=$topic
EOF
    cat >"$dir/connect-file-sink.properties" <<EOF
name=$prefix-file-sink
connector.class=FileStreamSink
tasks.max=1
file=$dir/output.txt
topics=$topic
EOF
}

# A standalone worker run: name, topic, the worker command's words (the
# worker and connector files are added by the caller's words).
run_worker() {
    local name=$1 dir=$2 topic=$3
    shift 3
    local broker_cpu0 started
    broker_cpu0=$(cpu_ticks "$broker_pid")
    started=$(now_ms)
    "$@" >"$dir/worker.log" 2>&1 &
    worker_pid=$!
    local result worker_cpu
    result=$(wait_output "$dir/output.txt" "$worker_pid")
    worker_cpu=$(cpu_ticks "$worker_pid")
    local broker_cpu=$(($(cpu_ticks "$broker_pid") - broker_cpu0))
    kill "$worker_pid" 2>/dev/null || true
    wait "$worker_pid" 2>/dev/null || true
    worker_pid=
    case ${result#* } in
        exited | timeout) echo "$name: ${result#* } (see $dir/worker.log)" >&2 ;;
        *) check_output "$dir/output.txt" || result="${result% *} wrong" ;;
    esac
    record "$name" "$started" ${result% *} ${result#* } "$worker_cpu" "$broker_cpu" "$(appends_of "$topic")"
}

# a. Spate Connect.
spate_connect() {
    local name=$1 topic=$2 flush_ms=${3:-}
    local dir=$work/$name
    mkdir -p "$dir"
    "$spate" --brokers "$brokers" topic create "$topic" >/dev/null
    {
        echo "bootstrap.servers=$brokers"
        echo "key.converter=org.apache.kafka.connect.storage.StringConverter"
        echo "value.converter=org.apache.kafka.connect.storage.StringConverter"
        echo "offset.storage.file.filename=$dir/connect.offsets"
        echo "listeners=http://127.0.0.1:$(free_port)"
        [[ -n $flush_ms ]] && echo "offset.flush.interval.ms=$flush_ms"
    } >"$dir/worker.properties"
    write_connectors "$dir" "$name" "$topic"
    run_worker "$name" "$dir" "$topic" "$spate" connect standalone --log-level warn "$dir/worker.properties" \
        "$dir/connect-file-source.properties" "$dir/connect-file-sink.properties"
}

# c. Kafka Connect's own worker.
kafka_connect() {
    local name=$1 topic=$2
    local dir=$work/$name
    mkdir -p "$dir"
    "$spate" --brokers "$brokers" topic create "$topic" >/dev/null
    cat >"$dir/worker.properties" <<EOF
bootstrap.servers=127.0.0.1:$kafka_port
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.storage.StringConverter
offset.storage.file.filename=$dir/connect.offsets
listeners=http://127.0.0.1:$(free_port)
plugin.discovery=service_load
EOF
    write_connectors "$dir" "$name" "$topic"
    # shellcheck disable=SC2086 # the options are words
    run_worker "$name" "$dir" "$topic" java $java_heap $java_opts \
        "-Dlog4j2.configurationFile=$repo/compat/frameworks/tools-log4j2.properties" \
        -cp "$connect_libs/*" org.apache.kafka.connect.cli.ConnectStandalone "$dir/worker.properties" \
        "$dir/connect-file-source.properties" "$dir/connect-file-sink.properties"
}

# b. The CLI: consumer and producer started together.
cli() {
    local name=$1 topic=$2
    local dir=$work/$name
    mkdir -p "$dir"
    "$spate" --brokers "$brokers" topic create "$topic" >/dev/null
    local broker_cpu0 started
    broker_cpu0=$(cpu_ticks "$broker_pid")
    started=$(now_ms)
    /usr/bin/time -f "%U %S" -o "$dir/consume.time" \
        "$spate" --brokers "$brokers" consume "$topic" --from-beginning -c "$lines" >"$dir/output.txt" 2>"$dir/consume.log" &
    local consumer=$!
    /usr/bin/time -f "%U %S" -o "$dir/produce.time" \
        "$spate" --brokers "$brokers" produce "$topic" -f "$input" >/dev/null 2>"$dir/produce.log" &
    local producer=$!
    cli_pids="$consumer $producer"
    local result
    result=$(wait_output "$dir/output.txt" "$consumer")
    wait "$producer" || echo "$name: the producer failed (see $dir/produce.log)" >&2
    produce_ms=$(($(now_ms) - started))
    wait "$consumer" || echo "$name: the consumer failed (see $dir/consume.log)" >&2
    cli_pids=
    local broker_cpu=$(($(cpu_ticks "$broker_pid") - broker_cpu0))
    local cpu
    cpu=$(cat "$dir/consume.time" "$dir/produce.time" | awk -v t="$ticks" '{ s += $1 + $2 } END { printf "%d", s * t }')
    case ${result#* } in
        exited | timeout) echo "$name: ${result#* }" >&2 ;;
        *) check_output "$dir/output.txt" || result="${result% *} wrong" ;;
    esac
    record "$name" "$started" ${result% *} ${result#* } "$cpu" "$broker_cpu" "$(appends_of "$topic")"
}

load_before=$(uptime | sed 's/.*load average: //')
spate_connect spate-connect t1-spate-connect
cli cli t2-cli
kafka_connect kafka-connect t3-kafka-connect
[[ -n $extra_flush_ms ]] && spate_connect "spate-connect-flush-$extra_flush_ms" t4-spate-connect "$extra_flush_ms"
load_after=$(uptime | sed 's/.*load average: //')

# The table.
# A pipeline's milliseconds, 0 when it did not finish.
millis_of() {
    local row
    for row in "${results[@]}"; do
        # shellcheck disable=SC2086 # the row's fields are words
        set -- $row
        if [[ $1 == "$target" && $4 =~ ^[0-9]+$ ]]; then echo $(($4 - $2)); return; fi
    done
    echo 0
}
target=cli; cli_ms=$(millis_of)
target=kafka-connect; kafka_ms=$(millis_of)
mb=$(awk -v b="$input_bytes" 'BEGIN { printf "%.1f", b / 1e6 }')
echo "Input: $lines lines of $line_bytes bytes ($mb MB); one partition per topic; broker durability $durability."
echo
echo "| pipeline | s | records/s | MB/s | of the CLI | of Kafka Connect | first line s | worker or CLI CPU s | broker CPU s | appends | records/append |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for row in "${results[@]}"; do
    set -- $row
    name=$1 started=$2 first=$3 end=$4 cpu=$5 bcpu=$6 appends=$7
    if ! [[ $end =~ ^[0-9]+$ ]]; then
        echo "| $name | $end | | | | | | | | $appends | |"
        continue
    fi
    awk -v n="$name" -v s="$started" -v f="$first" -v e="$end" -v l="$lines" -v b="$input_bytes" \
        -v c="$cli_ms" -v k="$kafka_ms" -v cpu="$cpu" -v bcpu="$bcpu" -v t="$ticks" -v a="$appends" 'BEGIN {
        ms = e - s; rate = l * 1000 / ms; mbs = b / 1000 / ms
        vs_cli = c > 0 ? sprintf("%.2fx", c / ms) : "-"
        vs_kafka = (k > 0 && n != "kafka-connect") ? sprintf("%.2fx", k / ms) : "-"
        per = a > 0 ? sprintf("%.0f", l / a) : "-"
        printf "| %s | %.1f | %d | %.1f | %s | %s | %.1f | %.1f | %.1f | %d | %s |\n", n, ms / 1000, rate, mbs, vs_cli, vs_kafka, (f - s) / 1000, cpu / t, bcpu / t, a, per
    }'
done
echo
awk -v b="$input_bytes" -v r="$read_ms" -v w="$write_ms" -v p="$produce_ms" 'BEGIN {
    printf "Limits in the same run: dd read the input (page-cached) at %.0f MB/s and wrote a copy with one fsync at %.0f MB/s.\n", b / 1000 / (r > 0 ? r : 1), b / 1000 / w
    printf "The CLI producer alone was done %.1f s after the pipeline started.\n", p / 1000
}'
echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')), $(free -g | awk '/Mem:/ { print $2 }') GiB;" \
    "load average before $load_before, after $load_after; $(java -version 2>&1 | head -1)."
