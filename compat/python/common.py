"""Shared plumbing for the Python compatibility scenarios.

Every scenario takes `--bootstrap HOST:PORT` and `--topic-prefix P`, prints
exactly one JSON line on stdout (what the clients observed, for a
differential comparison between Apache Kafka and Spate), writes its
diagnostics to stderr, and exits 0 only when every assertion held.
"""

import argparse
import json
import os
import sys
import time

REPO = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
VENV_PYTHON = os.path.join(REPO, "target", "compat", "venv", "bin", "python")

# How long a scenario waits for any one condition (a group to settle, records
# to arrive) before it fails. A bound on hangs, not a speed assertion: a
# healthy broker meets each condition in a few seconds.
WAIT_S_MAX = 40.0


def ensure_venv():
    """Re-executes the scenario under target/compat/venv's Python, where
    compat/install.sh put the pinned clients, unless already there."""
    if os.path.realpath(sys.prefix) == os.path.realpath(os.path.join(REPO, "target", "compat", "venv")):
        return
    if not os.path.exists(VENV_PYTHON):
        fail(f"no virtualenv at {VENV_PYTHON}: run compat/install.sh first")
    os.execv(VENV_PYTHON, [VENV_PYTHON] + sys.argv)


def parse_args(description, extra=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True, help="HOST:PORT of a Kafka-protocol listener")
    parser.add_argument(
        "--topic-prefix",
        default=f"compat-{int(time.time())}-{os.getpid()}",
        help="prefix of every topic and group name, so that runs do not collide",
    )
    if extra:
        extra(parser)
    return parser.parse_args()


def log(message):
    print(message, file=sys.stderr, flush=True)


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def emit(scenario, observed):
    """Prints the scenario's one JSON line (keys sorted, so that two runs
    compare as text)."""
    observed = dict(observed)
    observed["scenario"] = scenario
    print(json.dumps(observed, sort_keys=True), flush=True)


def wait_until(condition, what, wait_s=WAIT_S_MAX, step_s=0.1, on_timeout=None):
    """Polls `condition` until it returns something truthy, which is
    returned; fails naming `what` (and what `on_timeout()` says of the
    state) when the bound passes."""
    deadline = time.monotonic() + wait_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            state = f" ({on_timeout()})" if on_timeout else ""
            fail(f"timed out after {wait_s:.0f}s waiting for {what}{state}")
        time.sleep(step_s)


def error_name(exception):
    """The Kafka error name a confluent-kafka exception carries (such as
    TOPIC_ALREADY_EXISTS), or its text when it carries none."""
    err = exception.args[0] if exception.args else None
    if hasattr(err, "name"):
        return err.name()
    return str(exception)


# confluent-kafka helpers (imported lazily so kafka-python scenarios do not
# need it).


def ck_create_topics(admin, specs):
    """Creates topics through the admin API and waits until metadata shows a
    leader for every partition. `specs` are confluent_kafka NewTopic objects."""
    futures = admin.create_topics(specs, operation_timeout=30)
    for name, future in futures.items():
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - reported with the topic's name
            fail(f"create_topics({name}) failed: {error_name(exc)}")
    for spec in specs:
        def ready(spec=spec):
            topic = admin.list_topics(topic=spec.topic, timeout=10).topics.get(spec.topic)
            if topic is None or topic.error is not None:
                return False
            if len(topic.partitions) != spec.num_partitions:
                return False
            return all(p.leader >= 0 for p in topic.partitions.values())
        wait_until(ready, f"leaders for every partition of {spec.topic}")


def ck_delete_topics(admin, names):
    """Deletes topics a scenario made; errors are logged, not fatal (the
    scenario's assertions already ran)."""
    if not names:
        return
    for name, future in admin.delete_topics(list(names), operation_timeout=30).items():
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001
            log(f"cleanup: delete_topics({name}): {error_name(exc)}")


def ck_consume_all(consumer, count, what):
    """Reads `count` messages from an already assigned or subscribed
    consumer; fails on a message error or when they do not arrive."""
    messages = []
    deadline = time.monotonic() + WAIT_S_MAX
    while len(messages) < count:
        if time.monotonic() > deadline:
            fail(f"{what}: got {len(messages)} of {count} records after {WAIT_S_MAX:.0f}s")
        for message in consumer.consume(num_messages=count - len(messages), timeout=0.5):
            if message.error():
                fail(f"{what}: consume error {message.error().name()}: {message.error().str()}")
            messages.append(message)
    return messages
