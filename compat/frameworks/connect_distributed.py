#!/usr/bin/env python3
"""A Kafka Connect distributed worker, unmodified (connect-runtime 4.3.1,
org.apache.kafka.connect.cli.ConnectDistributed), with the file connectors
(4.3.1: the newest on Maven Central; compat/frameworks/connect/pom.xml says
why not 4.4.0).

1. The worker starts with its config, offset and status topics on the
   broker (it creates them itself: CreateTopics with cleanup.policy=compact,
   checked back with DescribeConfigs), joins its group (the classic
   protocol with Connect's own "connect" subprotocol) and serves REST on a
   free port.
2. Through the REST API: a FileStreamSource connector reads a file into a
   topic and a FileStreamSink connector writes that topic to another file.
3. The sink file comes to equal the source file, line for line; both
   connectors and their tasks report RUNNING.
4. The connectors are deleted and the worker stops on SIGTERM.
"""

import fcntl
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import kafkatools
from kafkatools import common

SCENARIO = "connect_distributed"
WORKER = "org.apache.kafka.connect.cli.ConnectDistributed"
LINES = 200
# The worker's heap: Connect's own runtime (Jetty, Jersey, the converters)
# with two tasks fits easily; a small heap leaves the 2-core machine's
# memory to the broker under test.
WORKER_HEAP = "384m"
# How long one REST call may take before the scenario gives up on it: a
# bound on hangs (the worker answers in milliseconds once it has joined its
# group).
REST_TIMEOUT_S = 10
# How long the worker may take to stop after SIGTERM before it is killed
# (and the scenario fails): a bound on hangs.
STOP_WAIT_S = 30


# Ports reserved by the workspace's tests (net/tests/common/ports.rs): one
# lock file per port, held for the life of the process that reserved it.
PORT_LOCKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "target", "tmp", "ports")
_held_port_locks = []


def free_port():
    """A port for the worker's REST listener, below the kernel's ephemeral
    range and reserved to this process as the Rust tests reserve theirs:
    the JVM binds it seconds later, and a free ephemeral port could be some
    client connection's local port by then."""
    os.makedirs(PORT_LOCKS, exist_ok=True)
    rng = random.Random(os.getpid() ^ time.time_ns())
    while True:
        port = 20_000 + rng.randrange(12_000)
        lock = open(os.path.join(PORT_LOCKS, str(port)), "a", encoding="utf-8")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))
        except OSError:
            lock.close()
            continue
        _held_port_locks.append(lock)
        return port


def rest(url, method="GET", body=None):
    """One REST call; returns (status, parsed JSON or None)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REST_TIMEOUT_S) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text
    except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
        return None, None


def write_worker_config(path, bootstrap, prefix, port):
    settings = {
        "bootstrap.servers": bootstrap,
        "group.id": f"{prefix}-connect",
        "config.storage.topic": f"{prefix}-connect-configs",
        "offset.storage.topic": f"{prefix}-connect-offsets",
        "status.storage.topic": f"{prefix}-connect-status",
        # One broker: every internal topic with one replica, and few
        # partitions (the defaults are 25 and 5, for production clusters).
        "config.storage.replication.factor": "1",
        "offset.storage.replication.factor": "1",
        "status.storage.replication.factor": "1",
        "offset.storage.partitions": "2",
        "status.storage.partitions": "1",
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "org.apache.kafka.connect.storage.StringConverter",
        "listeners": f"http://127.0.0.1:{port}",
        "rest.advertised.host.name": "127.0.0.1",
        "rest.advertised.port": str(port),
        # Source offsets flushed often, so the worker's offsets topic is
        # written during the scenario, not only at shutdown.
        "offset.flush.interval.ms": "1000",
        # The connectors are on the classpath (target/compat/connect-libs),
        # found through their service files (no scanning of every class).
        "plugin.discovery": "service_load",
    }
    with open(path, "w", encoding="utf-8") as file:
        file.writelines(f"{key}={value}\n" for key, value in settings.items())


def main():
    args = common.parse_args(__doc__.splitlines()[0])
    bootstrap = args.bootstrap
    prefix = args.topic_prefix
    topic = f"{prefix}-connect-lines"
    work = os.path.join(kafkatools.WORK, f"{prefix}-connect")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    source_file = os.path.join(work, "source.txt")
    sink_file = os.path.join(work, "sink.txt")
    lines = [f"line {i}: the quick brown fox, {i * 7919 % 1000}" for i in range(LINES)]
    with open(source_file, "w", encoding="utf-8") as file:
        file.writelines(line + "\n" for line in lines)

    # One partition, so the sink sees the lines in the order they were read.
    kafkatools.tool("org.apache.kafka.tools.TopicCommand", ["--bootstrap-server", bootstrap, "--create",
                                                             "--topic", topic, "--partitions", "1",
                                                             "--replication-factor", "1"])

    port = free_port()
    config = os.path.join(work, "worker.properties")
    write_worker_config(config, bootstrap, prefix, port)
    worker_log = os.path.join(work, "worker.log")
    with open(worker_log, "w", encoding="utf-8") as log_file:
        worker = subprocess.Popen(kafkatools.java_command(WORKER, [config], heap=WORKER_HEAP,
                                                             libs=kafkatools.CONNECT_LIBS),
                                  stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        observed = run_connectors(base, prefix, topic, source_file, sink_file, lines, worker, worker_log)
    except BaseException:
        # A failed assertion, an unexpected error or run-all.sh's SIGTERM
        # (kafkatools turns it into SystemExit): the worker must not
        # outlive the scenario.
        worker.kill()
        worker.wait()
        common.log(f"--- the worker's log, last lines ({worker_log}) ---")
        with open(worker_log, encoding="utf-8", errors="replace") as file:
            common.log("".join(file.readlines()[-40:]).rstrip())
        raise

    worker.send_signal(signal.SIGTERM)
    try:
        status = worker.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
        common.fail(f"the worker did not stop within {STOP_WAIT_S}s of SIGTERM")
    # A JVM stopped by SIGTERM runs its shutdown hooks and exits 143.
    common.check(status in (0, 143), f"the worker exited {status} after SIGTERM")

    kafkatools.tool("org.apache.kafka.tools.TopicCommand", ["--bootstrap-server", bootstrap, "--delete",
                                                             "--topic", f"{prefix}-connect-.*"])
    shutil.rmtree(work, ignore_errors=True)
    common.emit(SCENARIO, observed)


# What DistributedHerder logs when its thread dies (it cannot join its
# group, say): the JVM and its REST server stay up, but every request that
# needs the herder then goes unanswered, so waiting on REST would only
# time out.
HERDER_DIED = "Uncaught exception in herder work thread"


def check_alive(worker, worker_log):
    """Fails at once when the worker's process exited or its herder died."""
    common.check(worker.poll() is None, f"the worker exited {worker.returncode}")
    with open(worker_log, encoding="utf-8", errors="replace") as file:
        common.check(HERDER_DIED not in file.read(), "the worker's herder thread died (see its log below)")


def run_connectors(base, prefix, topic, source_file, sink_file, lines, worker, worker_log):
    def up():
        check_alive(worker, worker_log)
        status, _ = rest(f"{base}/connectors")
        return status == 200
    common.wait_until(up, "the worker's REST API", step_s=0.5)
    _, info = rest(f"{base}/")
    _, plugins = rest(f"{base}/connector-plugins")
    plugin_classes = sorted(p["class"].rsplit(".", 1)[-1] for p in plugins or [] if "File" in p["class"])
    common.check(plugin_classes == ["FileStreamSinkConnector", "FileStreamSourceConnector"],
                 f"connector plugins: {plugins}")

    connectors = {
        f"{prefix}-file-source": {"connector.class": "org.apache.kafka.connect.file.FileStreamSourceConnector",
                                  "tasks.max": "1", "file": source_file, "topic": topic},
        f"{prefix}-file-sink": {"connector.class": "org.apache.kafka.connect.file.FileStreamSinkConnector",
                                "tasks.max": "1", "file": sink_file, "topics": topic},
    }
    for name, config in connectors.items():
        def created(name=name, config=config):
            check_alive(worker, worker_log)
            status, body = rest(f"{base}/connectors", "POST", {"name": name, "config": config})
            # 409: the worker has not joined its group yet, or is
            # rebalancing; Connect's own answer is to try again.
            if status == 409:
                common.log(f"POST /connectors {name}: 409 {body}")
                return False
            common.check(status is not None, f"POST /connectors {name}: no answer within {REST_TIMEOUT_S}s (a worker "
                         "answers once it has joined its group and read its config topic; see its log below)")
            common.check(status == 201, f"POST /connectors {name}: {status} {body}")
            return True
        common.wait_until(created, f"the worker to accept connector {name}", step_s=0.5)

    def copied():
        check_alive(worker, worker_log)
        if not os.path.exists(sink_file):
            return False
        with open(sink_file, encoding="utf-8") as file:
            got = file.read().splitlines()
        common.check(got == lines[: len(got)], f"the sink file differs from the source: {got[:5]}...")
        return len(got) == len(lines)
    common.wait_until(copied, f"{len(lines)} lines in the sink file",
                      on_timeout=lambda: f"{os.path.getsize(sink_file) if os.path.exists(sink_file) else 0} bytes")

    states = {}
    for name in connectors:
        def running(name=name):
            status, body = rest(f"{base}/connectors/{name}/status")
            if status != 200:
                return False
            tasks = body.get("tasks", [])
            states[name.removeprefix(prefix + "-")] = {
                "connector": body["connector"]["state"], "tasks": [t["state"] for t in tasks], "type": body.get("type")}
            return body["connector"]["state"] == "RUNNING" and tasks and all(t["state"] == "RUNNING" for t in tasks)
        common.wait_until(running, f"{name} and its task RUNNING", step_s=0.5, on_timeout=lambda: str(states))

    for name in connectors:
        status, body = rest(f"{base}/connectors/{name}", "DELETE")
        common.check(status in (200, 204), f"DELETE /connectors/{name}: {status} {body}")
    common.wait_until(lambda: rest(f"{base}/connectors")[1] == [], "the connectors to be deleted", step_s=0.5)

    return {
        "lines_copied": len(lines),
        "sink_equals_source": True,
        "connector_plugins": plugin_classes,
        "connectors": states,
        "worker_version": (info or {}).get("version"),
    }


if __name__ == "__main__":
    main()
