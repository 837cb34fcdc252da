#!/usr/bin/env python3
"""ACLs made with Kafka's own kafka-acls (kafka-tools 4.4.0), enforced on
confluent-kafka and kcat clients, all of them User:ANONYMOUS (a plaintext
listener; the broker allows what no ACL names).

1. kafka-acls --add: a Deny of All on one topic and of Read on one group
   for User:ANONYMOUS, and a prefixed Allow for User:alice.
2. kafka-acls --list shows the three; --list --topic with the `match`
   pattern type shows the prefixed one applying to a topic under it.
3. A confluent-kafka producer to the denied topic gets
   TOPIC_AUTHORIZATION_FAILED, to another topic succeeds; a consumer in
   the denied group gets GROUP_AUTHORIZATION_FAILED, one subscribing to
   the denied topic TOPIC_AUTHORIZATION_FAILED.
4. Metadata hides the denied topic: the admin client's and kcat's full
   listings leave it out; asked for by name it is
   TOPIC_AUTHORIZATION_FAILED. kcat's produce to it fails.
5. kafka-acls --remove: the producer gets through, the topic is listed.
"""

import json
import re
import subprocess

import kafkatools
from kafkatools import common

SCENARIO = "tools_acls"
ACLS = "org.apache.kafka.tools.AclCommand"

# `Current ACLs for resource `ResourcePattern(resourceType=TOPIC, name=x,
# patternType=LITERAL)`:` then one `(principal=..., host=..., operation=...,
# permissionType=...)` line per ACL.
RESOURCE = re.compile(r"ResourcePattern\(resourceType=(\w+), name=([^,]+), patternType=(\w+)\)")
ENTRY = re.compile(r"\(principal=([^,]+), host=([^,]+), operation=(\w+), permissionType=(\w+)\)")


def list_acls(bootstrap, prefix, extra=()):
    """kafka-acls --list, parsed: the ACLs on resources named with `prefix`,
    with the prefix written `P` (so runs compare), sorted."""
    out = kafkatools.tool(ACLS, ["--bootstrap-server", bootstrap, "--list", *extra])
    acls = []
    resource = None
    for line in out.splitlines():
        found = RESOURCE.search(line)
        if found:
            resource = found.groups()
            continue
        entry = ENTRY.search(line)
        if entry and resource and resource[1].startswith(prefix):
            kind, name, pattern = resource
            acls.append([kind, "P" + name[len(prefix):], pattern, *entry.groups()])
    return sorted(acls)


def produce_error(bootstrap, topic):
    """The delivery error name of one record produced to `topic` (None:
    delivered)."""
    from confluent_kafka import Producer

    results = []
    producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 15000, "acks": "all"})
    producer.produce(topic, value=b"v", on_delivery=lambda err, msg: results.append(err))
    producer.flush(30)
    common.check(results, f"no delivery report for {topic}")
    return results[0].name() if results[0] is not None else None


def consumer_error(bootstrap, topic, group):
    """The first error a consumer in `group` subscribed to `topic` reports."""
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10000,
    })
    consumer.subscribe([topic])
    try:
        def errored():
            message = consumer.poll(0.5)
            if message is not None and message.error():
                return message.error().name()
            return None
        return common.wait_until(errored, f"an error for a consumer of {topic} in {group}")
    finally:
        consumer.close()


def kcat(args, input_text=None):
    done = subprocess.run(["kcat", *args], input=input_text, capture_output=True, text=True,
                          timeout=kafkatools.TOOL_TIMEOUT_S)
    return done.returncode, done.stdout, done.stderr


def main():
    common.ensure_venv()
    args = common.parse_args(__doc__.splitlines()[0])
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = args.bootstrap
    prefix = f"{args.topic_prefix}-acl-"
    secret = f"{prefix}secret"
    public = f"{prefix}open"
    denied_group = f"{prefix}denied-group"
    alice = f"{prefix}alice-"
    base = ["--bootstrap-server", bootstrap]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    common.ck_create_topics(admin, [NewTopic(secret, 1, 1), NewTopic(public, 1, 1)])
    common.check(produce_error(bootstrap, secret) is None, "a produce before any ACL")

    kafkatools.tool(ACLS, base + ["--add", "--deny-principal", "User:ANONYMOUS", "--operation", "All",
                                  "--topic", secret])
    kafkatools.tool(ACLS, base + ["--add", "--deny-principal", "User:ANONYMOUS", "--operation", "Read",
                                  "--group", denied_group])
    kafkatools.tool(ACLS, base + ["--add", "--allow-principal", "User:alice", "--operation", "Read",
                                  "--resource-pattern-type", "prefixed", "--topic", alice])
    listed = list_acls(bootstrap, prefix)
    common.check(len(listed) == 3, f"--list shows {listed}")
    matching = list_acls(bootstrap, prefix, ["--topic", f"{alice}orders", "--resource-pattern-type", "match"])
    common.check(len(matching) == 1 and matching[0][2] == "PREFIXED", f"--list --topic (match): {matching}")

    denied_produce = produce_error(bootstrap, secret)
    common.check(denied_produce == "TOPIC_AUTHORIZATION_FAILED", f"produce to the denied topic: {denied_produce}")
    common.check(produce_error(bootstrap, public) is None, "a produce to another topic")
    denied_join = consumer_error(bootstrap, public, denied_group)
    common.check(denied_join == "GROUP_AUTHORIZATION_FAILED", f"a consumer in the denied group: {denied_join}")
    denied_consume = consumer_error(bootstrap, secret, f"{prefix}other-group")
    common.check(denied_consume == "TOPIC_AUTHORIZATION_FAILED", f"a consumer of the denied topic: {denied_consume}")

    all_topics = admin.list_topics(timeout=10).topics
    common.check(secret not in all_topics and public in all_topics, "the full listing hides the denied topic")
    asked = admin.list_topics(topic=secret, timeout=10).topics[secret].error
    common.check(asked is not None and asked.name() == "TOPIC_AUTHORIZATION_FAILED", f"asked for by name: {asked}")
    code, out, err = kcat(["-b", bootstrap, "-L", "-J"])
    common.check(code == 0, f"kcat -L failed: {err}")
    kcat_topics = [t["topic"] for t in json.loads(out)["topics"]]
    common.check(secret not in kcat_topics and public in kcat_topics, "kcat -L hides the denied topic")
    code, out, err = kcat(["-b", bootstrap, "-P", "-t", secret, "-X", "message.timeout.ms=10000"], "line\n")
    kcat_denied = "authorization failed" in err.lower()
    common.check(kcat_denied, f"kcat -P to the denied topic (exit {code}): {err!r}")

    kafkatools.tool(ACLS, base + ["--remove", "--force", "--deny-principal", "User:ANONYMOUS",
                                  "--operation", "All", "--topic", secret])
    after = list_acls(bootstrap, prefix)
    common.check(len(after) == 2, f"--list after --remove shows {after}")
    # The broker applies the removal through its metadata log: a client
    # may ask once before it has.
    common.wait_until(lambda: produce_error(bootstrap, secret) is None, "a produce after the ACL's removal")
    common.check(secret in admin.list_topics(timeout=10).topics, "the topic is listed again")

    # Clean up this run's ACLs and topics.
    kafkatools.tool(ACLS, base + ["--remove", "--force", "--deny-principal", "User:ANONYMOUS",
                                  "--operation", "Read", "--group", denied_group])
    kafkatools.tool(ACLS, base + ["--remove", "--force", "--allow-principal", "User:alice", "--operation", "Read",
                                  "--resource-pattern-type", "prefixed", "--topic", alice])
    common.ck_delete_topics(admin, [secret, public])
    common.emit(SCENARIO, {
        "acls_listed": listed,
        "acls_matching_prefixed": matching,
        "acls_after_remove": after,
        "produce_denied": denied_produce,
        "join_denied": denied_join,
        "consume_denied": denied_consume,
        "metadata_by_name": asked.name(),
        "kcat_produce_denied": kcat_denied,
    })


if __name__ == "__main__":
    main()
