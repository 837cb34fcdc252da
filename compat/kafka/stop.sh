#!/usr/bin/env bash
# Stops the Kafka that compat/kafka/start.sh started from DIR: SIGTERM for a
# clean shutdown, SIGKILL if it has not exited after 30 s. With --clean it
# then removes DIR (the broker's data and logs).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || ( $# -eq 2 && $2 != --clean ) ]]; then
    echo "usage: $0 DIR [--clean]" >&2
    exit 2
fi
dir=$1
stop_timeout_s=30

if [[ -f $dir/kafka.pid ]]; then
    pid=$(cat "$dir/kafka.pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        deadline=$((SECONDS + stop_timeout_s))
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                echo "Kafka (pid $pid) ignored SIGTERM for ${stop_timeout_s}s; killing it" >&2
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.2
        done
        echo "stopped Kafka (pid $pid)"
    else
        echo "Kafka (pid $pid) was not running"
    fi
    rm -f "$dir/kafka.pid"
else
    echo "no kafka.pid in $dir: nothing to stop"
fi

if [[ ${2:-} == --clean ]]; then
    rm -rf "$dir"
    echo "removed $dir"
fi
