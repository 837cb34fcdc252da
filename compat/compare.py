#!/usr/bin/env python3
"""Compares two run-all.sh result directories scenario by scenario: the
differential test's core. Typically A is a run against Apache Kafka and B a
run against Spate.

    compat/compare.py DIR_A DIR_B

For each NAME.json present in either directory it prints `same`, the
fields whose values differ (as dotted paths), or that one side has no
result (the scenario failed or was skipped there). Exits 1 when anything
differs, 0 when every scenario observed the same, 2 for a usage error.
Uses only the standard library.
"""

import json
import os
import sys


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


def main():
    if len(sys.argv) != 3 or not all(os.path.isdir(d) for d in sys.argv[1:]):
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    a_dir, b_dir = sys.argv[1:]
    names = sorted({n for d in (a_dir, b_dir) for n in os.listdir(d) if n.endswith(".json")})
    differing = 0
    for name in names:
        scenario = name[: -len(".json")]
        a, b = load(a_dir, name), load(b_dir, name)
        if a is None or b is None:
            differing += 1
            print(f"{scenario}: no result in {a_dir if a is None else b_dir}")
            continue
        fa, fb = flatten(a), flatten(b)
        diffs = [(k, fa.get(k, "<absent>"), fb.get(k, "<absent>")) for k in sorted(set(fa) | set(fb))
                 if fa.get(k, "<absent>") != fb.get(k, "<absent>")]
        if not diffs:
            print(f"{scenario}: same")
            continue
        differing += 1
        print(f"{scenario}: {len(diffs)} field(s) differ")
        for key, va, vb in diffs:
            print(f"    {key}: {json.dumps(va)} != {json.dumps(vb)}")
    print(f"compare: {len(names) - differing} same, {differing} differ")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
