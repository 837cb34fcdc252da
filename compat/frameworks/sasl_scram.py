#!/usr/bin/env python3
"""SASL/SCRAM and SASL/PLAIN with clients we did not write: users made by
Kafka's kafka-configs, then confluent-kafka (librdkafka), kcat and Kafka's
Java client authenticating on a SASL_PLAINTEXT listener.

Needs two listeners of one broker: --bootstrap (PLAINTEXT, where the
users are made, as an operator bootstraps the first users) and
--sasl-bootstrap (SASL_PLAINTEXT). Without --sasl-bootstrap the scenario
is skipped (exit 77).

1. kafka-configs --alter --add-config 'SCRAM-SHA-256=[iterations=8192,
   password=...],SCRAM-SHA-512=[password=...]' --entity-type users makes
   alice; confluent-kafka's describe_user_scram_credentials shows both
   mechanisms and their iterations (kafka-configs --describe also asks for
   client quotas, which are not served yet).
2. confluent-kafka produces over SASL with SCRAM-SHA-256, SCRAM-SHA-512
   and PLAIN (each with alice's password), and a consumer over SASL reads
   every record back.
3. kcat lists the topic over SASL/SCRAM-SHA-512; the Java client
   (kafka-topics with --command-config, ScramLoginModule) lists it over
   SASL/SCRAM-SHA-256; kafka-python sends a record over
   SASL/SCRAM-SHA-512.
4. A wrong password is refused: confluent-kafka reports an authentication
   error carrying Kafka's text; kcat fails the same way.
5. A Metadata request before authentication closes the connection.
"""

import os
import socket
import struct
import subprocess
import sys
import time

import kafkatools
from kafkatools import common

common.ensure_venv()

from confluent_kafka import Consumer, KafkaError, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

SCENARIO = "sasl_scram"
CONFIGS = "org.apache.kafka.tools.ConfigCommand"
TOPICS = "org.apache.kafka.tools.TopicCommand"
USER = "alice"
PASSWORD = "alice-secret"
MECHANISMS = ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]
RECORDS_PER_MECHANISM = 10
REFUSED = "Authentication failed during authentication due to invalid credentials with SASL mechanism"


def sasl(bootstrap, mechanism, password=PASSWORD):
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": USER,
        "sasl.password": password,
    }


def make_user(bootstrap):
    out = kafkatools.tool(CONFIGS, [
        "--bootstrap-server", bootstrap, "--alter", "--entity-type", "users", "--entity-name", USER,
        "--add-config", f"SCRAM-SHA-256=[iterations=8192,password={PASSWORD}],SCRAM-SHA-512=[password={PASSWORD}]",
    ])
    common.check(f"Completed updating config for user {USER}." in out, f"kafka-configs printed {out!r}")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    described = admin.describe_user_scram_credentials([USER])[USER].result(timeout=30)
    infos = {str(info.mechanism).rsplit(".", 1)[-1]: info.iterations for info in described.scram_credential_infos}
    common.log(f"described: {infos}")
    common.check(infos == {"SCRAM_SHA_256": 8192, "SCRAM_SHA_512": 4096}, f"described {infos}")
    return admin, infos


def produce(bootstrap, topic, mechanism):
    errors = []
    producer = Producer({**sasl(bootstrap, mechanism), "acks": "all", "error_cb": errors.append})
    delivered = []
    for i in range(RECORDS_PER_MECHANISM):
        producer.produce(topic, key=mechanism.encode(), value=f"{mechanism}-{i}".encode(),
                         on_delivery=lambda err, msg: delivered.append(err))
    left = producer.flush(common.WAIT_S_MAX)
    common.check(left == 0 and len(delivered) == RECORDS_PER_MECHANISM and not any(delivered),
                 f"{mechanism}: delivered {delivered}, {left} left, errors {errors}")


def consume_all(bootstrap, topic, group):
    consumer = Consumer({**sasl(bootstrap, "SCRAM-SHA-512"), "group.id": group, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    values = []
    want = RECORDS_PER_MECHANISM * len(MECHANISMS)

    def read():
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            values.append(msg.value().decode())
        return len(values) >= want

    common.wait_until(read, f"{want} records over SASL", on_timeout=lambda: f"{len(values)} read")
    consumer.close()
    return sorted(values)


def refused_by_librdkafka(bootstrap):
    """The authentication error librdkafka reports for a wrong password."""
    errors = []
    producer = Producer({**sasl(bootstrap, "SCRAM-SHA-256", password="wrong"), "error_cb": errors.append})
    auth = lambda: [e for e in errors if e.code() == KafkaError._AUTHENTICATION]  # noqa: E731
    producer.poll(0)
    common.wait_until(lambda: (producer.poll(0.2), auth())[1], "an authentication error",
                      on_timeout=lambda: f"errors {errors}")
    text = auth()[0].str()
    common.log(f"refused: {text}")
    common.check(f"{REFUSED} SCRAM-SHA-256" in text, f"librdkafka reported {text!r}")
    return "_AUTHENTICATION"


def kcat(bootstrap, mechanism, password, args):
    command = ["kcat", "-b", bootstrap, "-X", "security.protocol=SASL_PLAINTEXT", "-X", f"sasl.mechanism={mechanism}",
               "-X", f"sasl.username={USER}", "-X", f"sasl.password={password}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    common.log(f"$ kcat {' '.join(args)} ({mechanism}, exit {done.returncode})")
    return done


def java_lists_topics(bootstrap, topic):
    os.makedirs(kafkatools.WORK, exist_ok=True)
    config = os.path.join(kafkatools.WORK, f"sasl-client-{os.getpid()}.properties")
    with open(config, "w") as f:
        f.write("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-256\n"
                "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{USER}" password="{PASSWORD}";\n')
    listed = kafkatools.tool(TOPICS, ["--bootstrap-server", bootstrap, "--command-config", config, "--list"]).split()
    common.check(topic in listed, f"kafka-topics over SASL listed {listed}")


def kafka_python_sends(bootstrap, topic):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT",
                             sasl_mechanism="SCRAM-SHA-512", sasl_plain_username=USER,
                             sasl_plain_password=PASSWORD, acks="all")
    metadata = producer.send(topic, key=b"kafka-python", value=b"kafka-python").get(timeout=common.WAIT_S_MAX)
    producer.close()
    common.check(metadata.offset == RECORDS_PER_MECHANISM * len(MECHANISMS),
                 f"kafka-python's record at offset {metadata.offset}")


def closed_before_authentication(bootstrap):
    """A Metadata v1 request as the first thing on a SASL listener."""
    host, port = bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        client_id = b"sasl-scram"
        body = struct.pack(">hhih", 3, 1, 1, len(client_id)) + client_id + struct.pack(">i", -1)
        sock.sendall(struct.pack(">i", len(body)) + body)
        try:
            answer = sock.recv(4)
        except ConnectionResetError:
            answer = b""
    common.check(answer == b"", f"the broker answered {answer!r} before authentication")
    return True


def main():
    args = common.parse_args(__doc__.splitlines()[0], extra=lambda p: p.add_argument(
        "--sasl-bootstrap", help="HOST:PORT of a SASL_PLAINTEXT listener of the same broker"))
    if not args.sasl_bootstrap:
        common.log("no --sasl-bootstrap: skipped")
        sys.exit(77)
    topic = f"{args.topic_prefix}-sasl"
    admin, described = make_user(args.bootstrap)
    common.ck_create_topics(admin, [NewTopic(topic, num_partitions=1, replication_factor=1)])
    for mechanism in MECHANISMS:
        produce(args.sasl_bootstrap, topic, mechanism)
    values = consume_all(args.sasl_bootstrap, topic, f"{args.topic_prefix}-sasl-group")
    want = sorted(f"{m}-{i}" for m in MECHANISMS for i in range(RECORDS_PER_MECHANISM))
    common.check(values == want, f"read {values}")

    listed = kcat(args.sasl_bootstrap, "SCRAM-SHA-512", PASSWORD, ["-L", "-t", topic])
    common.check(listed.returncode == 0 and f'topic "{topic}"' in listed.stdout,
                 f"kcat -L over SASL: {listed.stdout}{listed.stderr}")
    java_lists_topics(args.sasl_bootstrap, topic)
    kafka_python_sends(args.sasl_bootstrap, topic)

    refused = refused_by_librdkafka(args.sasl_bootstrap)
    kcat_refused = kcat(args.sasl_bootstrap, "SCRAM-SHA-512", "wrong", ["-L", "-m", "10"])
    common.check(kcat_refused.returncode != 0 and REFUSED in kcat_refused.stderr,
                 f"kcat with a wrong password: exit {kcat_refused.returncode}: {kcat_refused.stderr}")
    closed = closed_before_authentication(args.sasl_bootstrap)
    common.ck_delete_topics(admin, [topic])
    common.emit(SCENARIO, {
        "described": described,
        "records_read": len(values),
        "mechanisms": MECHANISMS,
        "wrong_password": refused,
        "closed_before_authentication": closed,
    })


if __name__ == "__main__":
    main()
