#!/usr/bin/env bash
# Starts a single-node Apache Kafka (KRaft, broker and controller in one
# process) from the jars compat/install.sh fetched, listening on
# 127.0.0.1:PORT with its data under DIR. It runs in the background; this
# script prints its pid and returns once the broker answers on PORT and has
# logged that it started. The controller listens on PORT+1 unless
# KAFKA_CONTROLLER_PORT says otherwise.
#
#   compat/kafka/start.sh PORT DIR
#   compat/kafka/stop.sh DIR [--clean]
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 PORT DIR" >&2
    exit 2
fi
port=$1
dir=$2
controller_port=${KAFKA_CONTROLLER_PORT:-$((port + 1))}
# A cold JVM on a 2-core machine shared with builds needs tens of seconds.
start_timeout_s=${KAFKA_START_TIMEOUT_S:-120}

repo=$(cd "$(dirname "$0")/../.." && pwd)
libs=${KAFKA_LIBS:-$repo/target/compat/kafka-libs}
if ! compgen -G "$libs/kafka_2.13-*.jar" >/dev/null; then
    echo "error: no kafka_2.13 jar in $libs; run compat/install.sh first" >&2
    exit 1
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [[ -f $dir/kafka.pid ]] && kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null; then
    echo "error: a Kafka from $dir is already running (pid $(cat "$dir/kafka.pid"))" >&2
    exit 1
fi
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "error: something already listens on 127.0.0.1:$port" >&2
    exit 1
fi

# Settings chosen for fast tests on one node: every internal topic with one
# replica, no initial rebalance delay (a group's first join would otherwise
# wait 3 s), and auto-creation on as in Kafka's default. The KRaft
# authorizer with allow.everyone.if.no.acl.found=true is what Spate does
# with no configuration: everything is open until an ACL names it (without
# an authorizer Kafka refuses the ACL APIs, so tools_acls would not run).
cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.consumer.min.session.timeout.ms=6000
group.consumer.session.timeout.ms=10000
group.consumer.heartbeat.interval.ms=1000
group.consumer.min.heartbeat.interval.ms=500
delete.topic.enable=true
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=true
PROPS

cat >"$dir/log4j2.properties" <<PROPS
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $dir/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
logger.apache.name = org.apache.kafka
logger.apache.level = info
PROPS

java_opts=(-Xmx512m -Xms128m -XX:+UseSerialGC -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$dir/log4j2.properties"
    "-Dkafka.logs.dir=$dir")
cp="$libs/*"

if [[ ! -f $dir/data/meta.properties ]]; then
    cluster_id=$(java "${java_opts[@]}" -cp "$cp" kafka.tools.StorageTool random-uuid)
    java "${java_opts[@]}" -cp "$cp" kafka.tools.StorageTool format \
        -t "$cluster_id" -c "$dir/server.properties" >"$dir/format.log" 2>&1 || {
        echo "error: kafka-storage format failed:" >&2
        cat "$dir/format.log" >&2
        exit 1
    }
fi

: >"$dir/server.log"
nohup java "${java_opts[@]}" -cp "$cp" kafka.Kafka "$dir/server.properties" \
    >"$dir/stdout.log" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$dir/kafka.pid"

deadline=$((SECONDS + start_timeout_s))
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null &&
    grep -q "Kafka Server started" "$dir/server.log"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "error: Kafka (pid $pid) exited during start; last lines of its logs:" >&2
        tail -n 30 "$dir/stdout.log" "$dir/server.log" >&2
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        echo "error: Kafka (pid $pid) not ready on 127.0.0.1:$port after ${start_timeout_s}s" >&2
        tail -n 30 "$dir/server.log" >&2
        exit 1
    fi
    sleep 0.5
done
echo "$pid"
