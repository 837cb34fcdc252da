#!/usr/bin/env bash
# PostgresSink's rows/s by batch.size, on this machine, against its limits.
#
# Starts a broker (target/release/spate) and a PostgreSQL of its own
# (Debian's package; durable defaults: fsync and synchronous_commit on),
# fills a topic with ROWS JSON records once, then for each batch size runs
# a standalone worker whose sink reads the topic from the start into a new
# table, and times the rows from the first to the last (the worker's start
# and the table's creation left out). Offsets are flushed at Kafka's
# default 60 s, so batch.size alone cuts the batches. Limits measured in the same run: the
# CLI consumer reading the same topic (the sink cannot read faster), and
# PostgreSQL inserting the same rows by itself in one statement (it cannot
# write faster).
#
#   cargo build --release --bin spate
#   bash connect/bench/postgres-sink.sh            # ROWS=120000 BATCHES="100 1000 3000 10000"
#
# Prints a Markdown table. Everything lives under target/tmp/bench-postgres-sink
# and is stopped at exit.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
spate=${SPATE:-$repo/target/release/spate}
# A multiple of every batch size, so that no run ends waiting for a flush.
rows=${ROWS:-120000}
batches=${BATCHES:-"100 1000 3000 10000"}
# batch.size=1 writes a transaction per row: measured on fewer rows.
rows_single=${ROWS_SINGLE:-2000}
work=$repo/target/tmp/bench-postgres-sink
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -x $spate ]] || { echo "no $spate: cargo build --release --bin spate" >&2; exit 1; }
[[ -n $pg_bin && -x $pg_bin/initdb ]] || { echo "PostgreSQL is not installed: apt-get install postgresql" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

rm -rf "$work"
mkdir -p "$work/pg"
run_as=()
if [[ $(id -u) == 0 ]]; then
    user=postgres
    getent passwd postgres >/dev/null || user=nobody
    chown -R "$user" "$work/pg"
    run_as=(runuser -u "$user" --)
fi
pg_port=$(free_port)
"${run_as[@]}" "$pg_bin/initdb" -D "$work/pg/data" -U spate --auth=trust -E UTF8 --locale=C >/dev/null
"${run_as[@]}" "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" start >/dev/null
psql() { "$pg_bin/psql" -X -At -h 127.0.0.1 -p "$pg_port" -U spate -d postgres "$@"; }

broker_port=$(free_port)
"$spate" serve --data-dir "$work/broker" --port "$broker_port" --listeners "" --log-level warn >"$work/broker.log" 2>&1 &
broker_pid=$!
worker_pid=
cleanup() {
    [[ -n $worker_pid ]] && kill "$worker_pid" 2>/dev/null || true
    kill "$broker_pid" 2>/dev/null || true
    "${run_as[@]}" "$pg_bin/pg_ctl" -D "$work/pg/data" -m fast stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
brokers=127.0.0.1:$broker_port
for _ in $(seq 1 50); do "$spate" --brokers "$brokers" topic list >/dev/null 2>&1 && break; sleep 0.2; done

# The records: schemaless JSON documents of about 90 bytes.
make_records() {
    python3 -c "
import sys
for i in range(int(sys.argv[1])):
    print('{\"id\":%d,\"name\":\"customer %d\",\"score\":%d.25,\"active\":%s,\"city\":\"Lyon\"}' % (i, i, i % 1000, 'true' if i % 2 else 'false'))
" "$1"
}
make_records "$rows" >"$work/records.json"
make_records "$rows_single" >"$work/records-single.json"
"$spate" --brokers "$brokers" topic create bench >/dev/null
"$spate" --brokers "$brokers" topic create bench-single >/dev/null
"$spate" --brokers "$brokers" produce bench <"$work/records.json" >/dev/null 2>&1
"$spate" --brokers "$brokers" produce bench-single <"$work/records-single.json" >/dev/null 2>&1

# Limit 1: the CLI consumer reading the whole topic.
start=$(now_ms)
"$spate" --brokers "$brokers" consume bench --from-beginning --exit >/dev/null
consume_ms=$(($(now_ms) - start))
# Limit 2: PostgreSQL inserting the same rows alone (one statement, rows
# made by the server), into a table like the sink's.
psql -q -c "CREATE TABLE ceiling (id BIGINT PRIMARY KEY, name TEXT, score DOUBLE PRECISION, active BOOLEAN, city TEXT)"
start=$(now_ms)
psql -q -c "INSERT INTO ceiling SELECT g, 'customer ' || g, (g % 1000) + 0.25, g % 2 = 1, 'Lyon' FROM generate_series(0, $rows - 1) g"
ceiling_ms=$(($(now_ms) - start))

rest_port=$(free_port)
cat >"$work/worker.properties" <<EOF
bootstrap.servers=$brokers
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
offset.storage.file.filename=$work/connect.offsets
offset.flush.interval.ms=60000
listeners=http://127.0.0.1:$rest_port
EOF

# One sink run: prints "rows_per_s total_s".
run_sink() {
    local mode=$1 batch=$2 topic=$3 expected=$4
    local table="${topic//-/_}_${mode}_$batch"
    local pk="pk.mode=none"
    [[ $mode == upsert ]] && pk=$'pk.mode=record_value\npk.fields=id'
    cat >"$work/sink.properties" <<EOF
name=bench-$table
connector.class=PostgresSink
topics=$topic
connection.url=postgresql://spate@127.0.0.1:$pg_port/postgres
table.name.format=$table
insert.mode=$mode
$pk
auto.create=true
batch.size=$batch
value.converter=org.apache.kafka.connect.json.JsonConverter
value.converter.schemas.enable=false
EOF
    local started
    started=$(now_ms)
    "$spate" connect standalone "$work/worker.properties" "$work/sink.properties" >/dev/null 2>"$work/worker-$table.log" &
    worker_pid=$!
    local count=0 first_ms= first_count=0
    while ((count < expected)); do
        count=$(psql -c "SELECT count(*) FROM $table" 2>/dev/null || echo 0)
        if [[ -z $first_ms ]] && ((count > 0)); then first_ms=$(now_ms); first_count=$count; fi
        # Not too often: each count reads the table, on the same two cores.
        ((count < expected)) && sleep 0.2
    done
    local end_ms
    end_ms=$(now_ms)
    kill "$worker_pid"; wait "$worker_pid" 2>/dev/null || true
    worker_pid=
    local span_ms=$((end_ms - first_ms))
    ((span_ms > 0)) || span_ms=1
    echo "$(((expected - first_count) * 1000 / span_ms)) $(((end_ms - started) / 1000))"
}

echo "| insert.mode | batch.size | rows | rows/s | of the consumer's | of PostgreSQL's own | wall s |"
echo "|---|---|---|---|---|---|---|"
consume_rate=$((rows * 1000 / consume_ms))
ceiling_rate=$((rows * 1000 / ceiling_ms))
report() {
    local mode=$1 batch=$2 count=$3 result=$4
    local rate=${result% *} wall=${result#* }
    awk -v m="$mode" -v b="$batch" -v n="$count" -v r="$rate" -v c="$consume_rate" -v p="$ceiling_rate" -v w="$wall" \
        'BEGIN { printf "| %s | %s | %s | %s | %.2fx | %.2fx | %s |\n", m, b, n, r, r / c, r / p, w }'
}
report upsert 1 "$rows_single" "$(run_sink upsert 1 bench-single "$rows_single")"
for batch in $batches; do
    report upsert "$batch" "$rows" "$(run_sink upsert "$batch" bench "$rows")"
done
report insert 3000 "$rows" "$(run_sink insert 3000 bench "$rows")"
echo
echo "Limits in the same run: the CLI consumer read the $rows records at $consume_rate records/s;"
echo "PostgreSQL inserted them by itself (one INSERT ... SELECT) at $ceiling_rate rows/s."
echo "Machine: $(nproc) cores, $(uptime | sed 's/.*load average/load average/'), PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}')."
