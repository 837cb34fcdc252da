#!/usr/bin/env python3
"""Tests of compare.py, the differential test's judge: what counts as a
difference, what a known-differences entry covers, and the exit status
the differential script relies on. Standard library only:

    python3 compat/compare_test.py
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

COMPARE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compare.py")
# Scratch results go under the repository's target/ when it exists, as all
# test data does.
TARGET = os.path.join(os.path.dirname(COMPARE), "..", "target")


class CompareTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(dir=TARGET if os.path.isdir(TARGET) else None)
        self.a = os.path.join(self.tmp.name, "a")
        self.b = os.path.join(self.tmp.name, "b")
        os.makedirs(self.a)
        os.makedirs(self.b)

    def tearDown(self):
        self.tmp.cleanup()

    def result(self, side, scenario, observed):
        with open(os.path.join(side, f"{scenario}.json"), "w", encoding="utf-8") as file:
            file.write(json.dumps(observed) + "\n")

    def compare(self, known=None):
        command = [sys.executable, COMPARE, self.a, self.b]
        if known is not None:
            path = os.path.join(self.tmp.name, "known.json")
            with open(path, "w", encoding="utf-8") as file:
                json.dump(known, file)
            command += ["--known", path]
        done = subprocess.run(command, capture_output=True, text=True)
        return done.returncode, done.stdout

    def test_identical_results_pass(self):
        self.result(self.a, "s", {"offsets": [0, 1], "group": {"members": 3}})
        self.result(self.b, "s", {"offsets": [0, 1], "group": {"members": 3}})
        status, out = self.compare()
        self.assertEqual(status, 0, out)
        self.assertIn("s: same", out)

    def test_a_nested_difference_fails_and_names_its_path(self):
        self.result(self.a, "s", {"group": {"members": 3}})
        self.result(self.b, "s", {"group": {"members": 2}})
        status, out = self.compare()
        self.assertEqual(status, 1)
        self.assertIn("group.members: 3 != 2", out)

    def test_measured_numbers_are_never_compared(self):
        # Throughput differs between two runs on one broker; were it
        # compared, tools_perf would fail every differential run.
        self.result(self.a, "s", {"records": 5, "measured": {"records_per_s": 10.5}})
        self.result(self.b, "s", {"records": 5, "measured": {"records_per_s": 99.0}})
        status, out = self.compare(known=[])
        self.assertEqual(status, 0, out)

    def test_a_known_field_covers_the_fields_beneath_it_and_nothing_else(self):
        self.result(self.a, "s", {"topic": {"elr": [""], "partitions": 3}})
        self.result(self.b, "s", {"topic": {"elr": ["N/A"], "partitions": 2}})
        known = [{"scenario": "s", "field": "topic.elr", "why": "no DescribeTopicPartitions"}]
        status, out = self.compare(known)
        self.assertEqual(status, 1, out)
        self.assertIn("known difference topic.elr", out)
        self.assertIn("topic.partitions: 3 != 2", out)

    def test_a_known_field_of_another_scenario_does_not_excuse_this_one(self):
        self.result(self.a, "s", {"x": 1})
        self.result(self.b, "s", {"x": 2})
        status, _ = self.compare([{"scenario": "t", "field": "x", "why": "t only"}])
        self.assertEqual(status, 1)

    def test_only_known_differences_pass(self):
        self.result(self.a, "s", {"x": 1, "y": 1})
        self.result(self.b, "s", {"x": 2, "y": 1})
        status, out = self.compare([{"scenario": "s", "field": "x", "why": "because"}])
        self.assertEqual(status, 0, out)
        self.assertIn("1 with known differences only", out)

    def test_a_field_prefix_that_is_not_a_path_boundary_does_not_match(self):
        # "topic.e" must not cover "topic.elr".
        self.result(self.a, "s", {"topic": {"elr": 1}})
        self.result(self.b, "s", {"topic": {"elr": 2}})
        status, _ = self.compare([{"scenario": "s", "field": "topic.e", "why": "wrong"}])
        self.assertEqual(status, 1)

    def test_no_result_against_the_broker_under_test_fails_unless_known(self):
        self.result(self.a, "s", {"x": 1})
        status, out = self.compare([])
        self.assertEqual(status, 1)
        self.assertIn("s: no result in", out)
        status, out = self.compare([{"scenario": "s", "field": "(no result)", "why": "not served yet"}])
        self.assertEqual(status, 0, out)

    def test_no_result_against_the_reference_is_never_known(self):
        # A scenario that fails against Apache Kafka is broken; no list
        # entry may hide that.
        self.result(self.b, "s", {"x": 1})
        status, _ = self.compare([{"scenario": "s", "field": "(no result)", "why": "hides a broken scenario"}])
        self.assertEqual(status, 1)

    def test_a_listed_difference_not_seen_is_named_without_failing(self):
        self.result(self.a, "s", {"x": 1})
        self.result(self.b, "s", {"x": 1})
        status, out = self.compare([{"scenario": "s", "field": "x", "why": "fixed since"}])
        self.assertEqual(status, 0, out)
        self.assertIn("not seen: s x", out)

    def test_a_malformed_known_file_is_a_usage_error(self):
        self.result(self.a, "s", {"x": 1})
        self.result(self.b, "s", {"x": 1})
        status, _ = self.compare([{"scenario": "s", "field": "x"}])
        self.assertEqual(status, 2)


if __name__ == "__main__":
    unittest.main()
