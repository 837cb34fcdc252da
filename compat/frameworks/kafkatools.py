"""Shared plumbing for the framework scenarios: Apache Kafka's own tools,
Kafka Streams and Kafka Connect, run unmodified as Java programs from the
jars compat/install.sh fetched (target/compat/frameworks-libs) or built
(target/compat/java). The scenario contract is the Python scenarios' (see
compat/python/common.py, reused here): --bootstrap, --topic-prefix, one
JSON line on stdout, diagnostics on stderr, exit 0 only when every
assertion held.
"""

import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import common  # noqa: E402 - the path above makes it importable

REPO = common.REPO
LIBS = os.path.join(REPO, "target", "compat", "frameworks-libs")
# Kafka Connect 4.3.1 (runtime, file connectors and their client), apart
# from the 4.4.0 tools: see compat/frameworks/connect/pom.xml for why.
CONNECT_LIBS = os.path.join(REPO, "target", "compat", "connect-libs")
LOG4J_CONFIG = os.path.join(HERE, "tools-log4j2.properties")
# Scratch files (tool configs, Connect's input and output files) live under
# the repository's target/, not /tmp, as every test's data does.
WORK = os.path.join(REPO, "target", "compat", "work")

# One tool run may take this long before it counts as hung: a bound, not a
# speed assertion (each finishes in a few seconds on a healthy broker; a
# cold JVM on a busy 2-core machine takes most of that).
TOOL_TIMEOUT_S = 60

# A small heap and the C1 compiler only, as for the Java scenarios: short
# runs on a 2-core machine that also runs the broker under test.
JAVA_OPTS = ["-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
             f"-Dlog4j2.configurationFile={LOG4J_CONFIG}"]


def _terminated(signum, frame):
    # run-all.sh stops a scenario past its time bound with SIGTERM. As an
    # exception (SystemExit), it reaches subprocess.run, which kills the
    # tool it is waiting for, and the Connect scenario's handler, which
    # kills its worker: no JVM outlives the scenario.
    common.fail("terminated by SIGTERM (run-all.sh's time bound, or a user)")


signal.signal(signal.SIGTERM, _terminated)


def java_command(main_class, args, heap=None, libs=LIBS):
    """The command line that runs `main_class` with the jars in `libs`."""
    if not os.path.isdir(libs):
        common.fail(f"no {libs}: run compat/install.sh first")
    opts = list(JAVA_OPTS)
    if heap:
        opts[0] = f"-Xmx{heap}"
    return ["java", *opts, "-cp", os.path.join(libs, "*"), main_class, *args]


def tool(main_class, args, stdin=None, timeout_s=TOOL_TIMEOUT_S, ok_codes=(0,)):
    """Runs one of Kafka's tools to completion and returns its stdout; the
    scenario fails with the tool's stderr when it exits otherwise."""
    command = java_command(main_class, args)
    short = main_class.rsplit(".", 1)[-1]
    common.log(f"$ {short} {' '.join(args)}")
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        common.log((exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or "")
        common.fail(f"{short} did not finish within {timeout_s}s")
    if done.stderr.strip():
        common.log(done.stderr.rstrip())
    if done.returncode not in ok_codes:
        common.log(done.stdout.rstrip())
        common.fail(f"{short} {' '.join(args)} exited {done.returncode}")
    return done.stdout


def work_dir(name):
    """A fresh scratch directory under target/compat/work."""
    path = os.path.join(WORK, name)
    os.makedirs(path, exist_ok=True)
    return path
