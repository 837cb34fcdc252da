#!/usr/bin/env bash
# kcat: keyed records with headers produced (-P -K -H) and consumed back
# from the beginning (-C -e -o beginning) with a -f format that shows key,
# value, headers, partition and offset. The topic is auto-created; records
# go to partition 0 (-p 0) so the expected output holds whatever the
# broker's num.partitions (kcat_metadata observes that).
set -euo pipefail
source "$(dirname "$0")/common.sh"
topic="$topic_prefix-kcat-produce-consume"

printf 'alpha:one\nbeta:two\nalpha:three\ngamma:four\n' |
    k -P -t "$topic" -p 0 -K : -H trace=t1 -H source=kcat || fail "kcat -P failed"
consumed=$(k -C -t "$topic" -e -o beginning -f 'key=%k value=%s headers=%h partition=%p offset=%o\n') ||
    fail "kcat -C failed"
expected='key=alpha value=one headers=trace=t1,source=kcat partition=0 offset=0
key=beta value=two headers=trace=t1,source=kcat partition=0 offset=1
key=alpha value=three headers=trace=t1,source=kcat partition=0 offset=2
key=gamma value=four headers=trace=t1,source=kcat partition=0 offset=3'
if [[ $consumed != "$expected" ]]; then
    fail "consumed records differ; got:
$consumed
expected:
$expected"
fi
python3 -c 'import json; print(json.dumps({"scenario": "kcat_produce_consume", "records": 4, "partition": 0, "offsets": [0, 1, 2, 3], "headers": "trace=t1,source=kcat"}, sort_keys=True))'
