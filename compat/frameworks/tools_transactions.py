#!/usr/bin/env python3
"""Kafka's kafka-transactions tool (kafka-tools 4.4.0) on a transaction a
confluent-kafka producer holds open, then commits.

1. `list` shows the transactional id, Ongoing.
2. `describe --transactional-id` shows its epoch, state, timeout and the
   partition it wrote.
3. `describe-producers --topic --partition` shows the producer with its
   open transaction's first offset.
4. `find-hanging --broker-id` finds no hanging transaction (the open one
   is known to its coordinator).
5. After the commit, `describe` shows CompleteCommit and no partitions.
6. A second transaction left open is ended on its partition by
   `kafka-transactions abort --start-offset` (WriteTxnMarkers, what an
   operator does to a hanging transaction): the partition has no open
   transaction left and its last stable offset moves past the marker.
"""

import kafkatools
from kafkatools import common

SCENARIO = "tools_transactions"
TXN = "org.apache.kafka.tools.TransactionsCommand"


def table(out):
    """The tool's tab-separated table: one dict per row, by header."""
    lines = [line for line in out.splitlines() if line.strip()]
    if not lines:
        return []
    header = [h.strip() for h in lines[0].split("\t")]
    return [dict(zip(header, (cell.strip() for cell in line.split("\t")))) for line in lines[1:]]


def main():
    common.ensure_venv()
    args = common.parse_args(__doc__.splitlines()[0])
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = args.bootstrap
    topic = f"{args.topic_prefix}-txn-tool"
    txn_id = f"{args.topic_prefix}-txn-tool-app"
    base = ["--bootstrap-server", bootstrap]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    common.ck_create_topics(admin, [NewTopic(topic, 1, 1)])

    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"open")
    common.check(producer.flush(30) == 0, "the transaction's record undelivered")

    listed = [row for row in table(kafkatools.tool(TXN, base + ["list"])) if row.get("TransactionalId") == txn_id]
    common.check([row["TransactionState"] for row in listed] == ["Ongoing"], f"list: {listed}")
    [described] = table(kafkatools.tool(TXN, base + ["describe", "--transactional-id", txn_id]))
    common.check(described["TransactionState"] == "Ongoing", f"describe: {described}")
    common.check(described["TopicPartitions"] == f"{topic}-0", f"describe's partitions: {described}")
    common.check(described["TransactionTimeoutMs"] == "60000", f"describe's timeout: {described}")
    producers = table(kafkatools.tool(TXN, base + ["describe-producers", "--topic", topic, "--partition", "0"]))
    common.check(len(producers) == 1, f"describe-producers: {producers}")
    common.check(producers[0]["ProducerId"] == described["ProducerId"], "the producer is the transaction's")
    common.check(producers[0]["CurrentTransactionStartOffset"] == "0", f"describe-producers: {producers}")
    hanging = table(kafkatools.tool(TXN, base + ["find-hanging", "--broker-id", "1"]))
    common.check(hanging == [], f"find-hanging: {hanging}")

    producer.commit_transaction(30)
    [done] = table(kafkatools.tool(TXN, base + ["describe", "--transactional-id", txn_id]))
    common.check(done["TransactionState"] == "CompleteCommit" and done["TopicPartitions"] == "", f"after: {done}")

    # An open transaction, aborted on its partition by the operator's tool.
    producer.begin_transaction()
    producer.produce(topic, value=b"to be aborted")
    common.check(producer.flush(30) == 0, "the second transaction's record undelivered")
    [open_producer] = table(kafkatools.tool(TXN, base + ["describe-producers", "--topic", topic, "--partition", "0"]))
    start = open_producer["CurrentTransactionStartOffset"]
    common.check(start not in ("-1", "None"), f"the second transaction is open: {open_producer}")
    kafkatools.tool(TXN, base + ["abort", "--topic", topic, "--partition", "0", "--start-offset", start])
    [after_abort] = table(kafkatools.tool(TXN, base + ["describe-producers", "--topic", topic, "--partition", "0"]))
    # The tool prints None for a producer with no open transaction.
    common.check(after_abort["CurrentTransactionStartOffset"] == "None", f"after abort: {after_abort}")
    from confluent_kafka import Consumer, TopicPartition
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-reader",
                       "isolation.level": "read_committed"})
    _, stable = reader.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
    reader.close()
    common.check(stable > int(start), f"the last stable offset {stable} is still at the aborted transaction ({start})")
    # The producer's own end of it: the coordinator's abort marker lands
    # on a partition with nothing open, harmlessly.
    producer.abort_transaction(30)

    common.ck_delete_topics(admin, [topic])
    common.emit(SCENARIO, {"aborted_by_tool": after_abort["CurrentTransactionStartOffset"],
        "list": [row["TransactionState"] for row in listed],
        "describe": {k: described[k] for k in ("ProducerEpoch", "TransactionState", "TransactionTimeoutMs")},
        "open_transaction_start_offset": producers[0]["CurrentTransactionStartOffset"],
        "hanging": len(hanging),
        "after_commit": done["TransactionState"],
    })


if __name__ == "__main__":
    main()
