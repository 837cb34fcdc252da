#!/usr/bin/env bash
# kcat: a balanced consumer (-G) reads what is there, and commits on exit;
# a second run of the same group after two more records reads only those
# two, so the commits were kept and honoured. Records go to partition 0
# (-p 0), so the offsets expected hold whatever the broker's num.partitions.
set -euo pipefail
source "$(dirname "$0")/common.sh"
topic="$topic_prefix-kcat-group"
group="$topic_prefix-kcat-group"

seq 1 5 | sed 's/^/first-/' | k -P -t "$topic" -p 0 || fail "kcat -P failed"
first=$(k -G "$group" -X auto.offset.reset=earliest -c 5 -f '%o:%s\n' "$topic") ||
    fail "the first group consume failed"
[[ $(echo "$first" | sort -n) == "$(printf '0:first-1\n1:first-2\n2:first-3\n3:first-4\n4:first-5')" ]] ||
    fail "the first group consume read:
$first"

printf 'second-1\nsecond-2\n' | k -P -t "$topic" -p 0 || fail "kcat -P failed"
second=$(k -G "$group" -X auto.offset.reset=earliest -c 2 -f '%o:%s\n' "$topic") ||
    fail "the second group consume failed"
[[ $second == "$(printf '5:second-1\n6:second-2')" ]] ||
    fail "the second group consume did not resume after the commits; it read:
$second"
python3 -c 'import json; print(json.dumps({"scenario": "kcat_group", "first_run_offsets": [0, 4], "second_run_offsets": [5, 6]}, sort_keys=True))'
