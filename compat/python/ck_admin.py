#!/usr/bin/env python3
"""confluent-kafka: the admin API.

Create (with configs, and validate_only), describe_configs, alter_configs
(which replaces every dynamic config of the topic), incremental_alter_configs
(SET and DELETE), create_partitions, delete_topics, and the errors Kafka
answers for a topic that already exists, a partition count that shrinks and
a topic that is gone. The observed JSON carries config values and error
names, for the differential comparison.
"""

import common

common.ensure_venv()

from confluent_kafka.admin import (  # noqa: E402
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

SCENARIO = "ck_admin"


def topic_config(admin, topic):
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([resource], request_timeout=15)[resource].result()
    return {name: entry.value for name, entry in entries.items()}, entries


def expect_error(future, what):
    try:
        future.result()
    except Exception as exc:  # noqa: BLE001 - the error's name is what we observe
        return common.error_name(exc)
    common.fail(f"{what} succeeded; Kafka refuses it")


def main():
    args = common.parse_args(__doc__)
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    topic = f"{args.topic_prefix}-ck-admin"
    observed = {}

    # validate_only checks the request and creates nothing.
    future = admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)],
                                 validate_only=True, operation_timeout=30)[topic]
    future.result()
    listed = admin.list_topics(timeout=15).topics
    common.check(topic not in listed, "validate_only create made the topic")

    common.ck_create_topics(admin, [NewTopic(topic, num_partitions=2, replication_factor=1,
                                             config={"retention.ms": "3600000", "max.message.bytes": "2000000"})])
    config, entries = topic_config(admin, topic)
    common.check(config.get("retention.ms") == "3600000", f"retention.ms is {config.get('retention.ms')} after create")
    common.check(config.get("max.message.bytes") == "2000000", f"max.message.bytes is {config.get('max.message.bytes')}")
    common.check(not entries["retention.ms"].is_default, "retention.ms set at create is reported as a default")
    default_max_message_bytes = None
    observed["after_create"] = {"retention.ms": config["retention.ms"], "max.message.bytes": config["max.message.bytes"]}

    observed["create_existing"] = expect_error(
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)], operation_timeout=30)[topic],
        "creating an existing topic")

    # alter_configs (the legacy AlterConfigs API) replaces the topic's whole
    # dynamic config: what it does not name returns to the default.
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, set_config={"retention.ms": "7200000"})
    admin.alter_configs([resource], request_timeout=15)[resource].result()
    config, entries = topic_config(admin, topic)
    common.check(config.get("retention.ms") == "7200000", f"retention.ms is {config.get('retention.ms')} after alter_configs")
    common.check(entries["max.message.bytes"].is_default,
                 "max.message.bytes kept its value through alter_configs, which replaces all dynamic configs")
    default_max_message_bytes = config["max.message.bytes"]
    observed["after_alter"] = {"retention.ms": config["retention.ms"], "max.message.bytes": default_max_message_bytes}

    # incremental_alter_configs changes only what it names.
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.bytes", "1048576", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
    ])
    admin.incremental_alter_configs([resource], request_timeout=15)[resource].result()
    config, entries = topic_config(admin, topic)
    common.check(config.get("retention.bytes") == "1048576", f"retention.bytes is {config.get('retention.bytes')}")
    common.check(entries["retention.ms"].is_default, "retention.ms is not back to its default after DELETE")
    observed["after_incremental"] = {"retention.bytes": config["retention.bytes"], "retention.ms": config["retention.ms"]}

    admin.create_partitions([NewPartitions(topic, 4)], operation_timeout=30)[topic].result()
    common.wait_until(lambda: len(admin.list_topics(topic=topic, timeout=10).topics[topic].partitions) == 4,
                      "the topic to show 4 partitions after create_partitions")
    observed["partitions_after_grow"] = 4
    observed["shrink_partitions"] = expect_error(
        admin.create_partitions([NewPartitions(topic, 2)], operation_timeout=30)[topic], "shrinking partitions")

    admin.delete_topics([topic], operation_timeout=30)[topic].result()
    common.wait_until(lambda: topic not in admin.list_topics(timeout=10).topics, "the deleted topic to leave metadata")
    observed["delete_missing"] = expect_error(admin.delete_topics([topic], operation_timeout=30)[topic],
                                              "deleting a topic that is gone")
    missing = ConfigResource(ConfigResource.Type.TOPIC, topic)
    observed["describe_missing"] = expect_error(admin.describe_configs([missing], request_timeout=15)[missing],
                                                "describing the configs of a topic that is gone")

    common.emit(SCENARIO, observed)


if __name__ == "__main__":
    main()
