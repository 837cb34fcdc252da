#!/usr/bin/env bash
# Runs one Java scenario: compat/java/run.sh NAME --bootstrap HOST:PORT [...]
# (NAME is produce-consume, group, admin, transactions, streams-wordcount,
# streams-twins (the differential test's Kafka Streams applications) or
# streams-bench-wordcount (the Java side of streams/examples/bench.rs); see
# Main.java). Scratch files (Kafka Streams' state directory) go under
# target/compat/work.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=$repo/target/compat/java
if [[ ! -f $out/build/compat-java.jar ]]; then
    echo "FAIL: $out/build/compat-java.jar is missing: run compat/install.sh" >&2
    exit 1
fi
# A small heap and the C1 compiler only: these are short client runs on a
# 2-core machine that also runs the broker under test.
exec java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -Dorg.slf4j.simpleLogger.logFile=System.err \
    "-Dcompat.work=$repo/target/compat/work" \
    -cp "$out/build/compat-java.jar:$out/libs/*" dev.spate.compat.Main "$@"
