#!/usr/bin/env python3
"""Compares two run-all.sh result directories scenario by scenario: the
differential test's core. A is a run against Apache Kafka (the reference)
and B a run against the broker under test (Spate).

    compat/compare.py DIR_A DIR_B [--known FILE]

For each NAME.json present in either directory it prints `same`, the
fields whose values differ (as dotted paths), or that one side has no
result (the scenario failed or was skipped there). A top-level
"measured" object (numbers such as throughput, which vary from run to run
on one broker) is printed by its scenario but never compared.

With --known FILE (compat/known-differences.json), a difference listed
there is printed as known, with its reason, and does not count; a listed
difference that did not occur is reported as not seen (the list may be
stale, or the scenario did not run). Each entry is {"scenario", "field",
"why"}: "field" is a dotted path (it also covers the fields beneath it) or
"(no result)" for a scenario that has a result against A and none against
B. A scenario with no result against A (the reference) is never known.

Exits 1 when a difference is not known, 0 otherwise, 2 for a usage error.
Uses only the standard library.
"""

import argparse
import json
import os
import sys

# Fields a scenario prints but no run compares: what this machine managed
# this time (throughput, latency), not what the clients observed.
UNCOMPARED = "measured"
NO_RESULT = "(no result)"


def flatten(value, path=""):
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay whole (their order matters)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{path}.{key}" if path else str(key)))
        return out
    return {path: value}


def load(directory, name):
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as file:
        text = file.read().strip()
    return json.loads(text) if text else None


def load_known(path):
    """The known differences: {(scenario, field): why}."""
    with open(path, encoding="utf-8") as file:
        entries = json.load(file)
    known = {}
    for entry in entries:
        if set(entry) != {"scenario", "field", "why"} or not all(isinstance(v, str) and v for v in entry.values()):
            print(f"{path}: each entry needs exactly scenario, field and why (non-empty strings): {entry}",
                  file=sys.stderr)
            sys.exit(2)
        known[(entry["scenario"], entry["field"])] = entry["why"]
    return known


def known_why(known, scenario, field):
    """Why `field` of `scenario` is known to differ, or None."""
    for (k_scenario, k_field), why in known.items():
        if k_scenario == scenario and (field == k_field or field.startswith(k_field + ".")):
            return why, (k_scenario, k_field)
    return None, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("dir_a")
    parser.add_argument("dir_b")
    parser.add_argument("--known", help="compat/known-differences.json")
    args = parser.parse_args()
    if not all(os.path.isdir(d) for d in (args.dir_a, args.dir_b)):
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    known = load_known(args.known) if args.known else {}
    seen = set()
    a_dir, b_dir = args.dir_a, args.dir_b
    names = sorted({n for d in (a_dir, b_dir) for n in os.listdir(d) if n.endswith(".json")})
    same = differing = known_only = 0
    for name in names:
        scenario = name[: -len(".json")]
        a, b = load(a_dir, name), load(b_dir, name)
        if a is None or b is None:
            why, entry = known_why(known, scenario, NO_RESULT) if b is None and a is not None else (None, None)
            if why:
                seen.add(entry)
                known_only += 1
                print(f"{scenario}: no result in {b_dir} (known: {why})")
            else:
                differing += 1
                print(f"{scenario}: no result in {a_dir if a is None else b_dir}")
            continue
        for side, observed in (("A", a), ("B", b)):
            if isinstance(observed, dict) and UNCOMPARED in observed:
                print(f"{scenario}: {side} measured (not compared) {json.dumps(observed.pop(UNCOMPARED))}")
        fa, fb = flatten(a), flatten(b)
        diffs = [(k, fa.get(k, "<absent>"), fb.get(k, "<absent>")) for k in sorted(set(fa) | set(fb))
                 if fa.get(k, "<absent>") != fb.get(k, "<absent>")]
        unknown = []
        for key, va, vb in diffs:
            why, entry = known_why(known, scenario, key)
            if why:
                seen.add(entry)
                print(f"{scenario}: known difference {key}: {json.dumps(va)} != {json.dumps(vb)} ({why})")
            else:
                unknown.append((key, va, vb))
        if not diffs:
            same += 1
            print(f"{scenario}: same")
        elif not unknown:
            known_only += 1
        else:
            differing += 1
            print(f"{scenario}: {len(unknown)} field(s) differ")
            for key, va, vb in unknown:
                print(f"    {key}: {json.dumps(va)} != {json.dumps(vb)}")
    for scenario, field in sorted(set(known) - seen):
        print(f"listed in {args.known} but not seen: {scenario} {field}")
    print(f"compare: {same} same, {known_only} with known differences only, {differing} differ")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
