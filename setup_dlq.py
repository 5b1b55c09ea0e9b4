#!/usr/bin/env python3
"""Create the orders topic, its dead letter queue (7-day retention) and the aggregate changelog; safe to re-run."""

from __future__ import annotations

import orders_dlq.python_version  # noqa: F401  first: below Python 3.11, one sentence and exit 2

# isort: split

import json

from confluent_kafka import KafkaException
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic, ResourceType

from orders_dlq import cli
from orders_dlq.kafka import DEAD_LETTER_MAX_BYTES, require_cluster

DAY_MS = 24 * 3600 * 1000
TIMEOUT = 30.0


def topic_plans(settings, state_topic: str, partitions: int, dlq_partitions: int,
                replication: int, retention_days: float) -> list[tuple[str, int, dict]]:
    """(name, partitions, configs that must hold) for every topic the pipeline needs."""
    # With 3 replicas, acks=all waits for 2 of them: one broker may die without losing a write.
    durability = {"min.insync.replicas": "2" if replication >= 3 else "1"}
    return [
        (settings.topic, partitions, durability),
        (settings.dlq_topic, dlq_partitions,
         {**durability, "retention.ms": str(int(retention_days * DAY_MS)), "cleanup.policy": "delete",
          # Room for a dead letter that carries a maximum-size order plus its error context.
          "max.message.bytes": str(DEAD_LETTER_MAX_BYTES)}),
        # Compaction keeps the latest state per (group, topic, partition): restores stay small.
        (state_topic, 1, {**durability, "cleanup.policy": "compact", "segment.ms": str(3600 * 1000),
                          "min.cleanable.dirty.ratio": "0.1"}),
    ]


def current_configs(admin, topic: str, keys) -> dict:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=TIMEOUT)
    return {key: entries[key].value for key in keys if key in entries}


def fix_configs(admin, topic: str, wrong: dict) -> None:
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET) for key, value in wrong.items()])
    admin.incremental_alter_configs([resource])[resource].result(timeout=TIMEOUT)


def ensure_topics(admin, plans, replication: int) -> list[dict]:
    """Create what is missing, fix what is misconfigured, report each topic once."""
    existing = admin.list_topics(timeout=TIMEOUT).topics
    brokers = len(admin.list_topics(timeout=TIMEOUT).brokers)
    if replication > brokers:
        raise cli.UsageError(f"--replication-factor {replication} needs at least {replication} brokers; "
                             f"the cluster has {brokers}")
    to_create = [NewTopic(name, num_partitions=parts, replication_factor=replication, config=configs)
                 for name, parts, configs in plans if name not in existing]
    futures = admin.create_topics(to_create, operation_timeout=TIMEOUT) if to_create else {}
    results = []
    for name, parts, configs in plans:
        if name in futures:
            try:
                futures[name].result(timeout=TIMEOUT)
                results.append({"topic": name, "action": "created", "partitions": parts,
                                "replication_factor": replication, **configs})
                continue
            except KafkaException as exc:
                if exc.args[0].code() != exc.args[0].TOPIC_ALREADY_EXISTS:
                    raise cli.ToolFailure(f"could not create topic {name}: {exc.args[0].str()}") from None
        actual = current_configs(admin, name, configs)
        wrong = {key: value for key, value in configs.items() if actual.get(key) != value}
        if wrong:
            fix_configs(admin, name, wrong)
        metadata = admin.list_topics(name, timeout=TIMEOUT).topics[name]
        results.append({"topic": name, "action": "fixed" if wrong else "exists",
                        "partitions": len(metadata.partitions),
                        "fixed": {key: [actual.get(key), value] for key, value in wrong.items()}})
    return results


def describe(result: dict) -> str:
    line = f"{result['topic']}: {result['action']} ({result['partitions']} partitions"
    if "replication_factor" in result:
        line += f", replication factor {result['replication_factor']}"
    if "retention.ms" in result:
        line += f", retention {int(result['retention.ms']) / DAY_MS:g} days"
    line += ")"
    for key, (old, new) in result.get("fixed", {}).items():
        line += f"; {key} was {old}, set to {new}"
    return line


def main(argv=None) -> int:
    parser = cli.build_parser(__doc__, "python setup_dlq.py --partitions 6 --retention-days 7")
    parser.add_argument("--partitions", type=cli.positive(int),
                        help="partitions of the orders topic (env ORDERS_PARTITIONS, default 3)")
    parser.add_argument("--dlq-partitions", type=cli.positive(int),
                        help="partitions of the DLQ (default: same as --partitions)")
    parser.add_argument("--replication-factor", type=cli.positive(int),
                        help="replicas per partition (env REPLICATION_FACTOR, default 1)")
    parser.add_argument("--retention-days", type=cli.positive(float),
                        help="how long dead letters are kept (env DLQ_RETENTION_DAYS, default 7)")
    parser.add_argument("--state-topic", help="aggregate changelog (env STATE_TOPIC, default <topic>.aggregates)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = cli.parse_args(parser, argv)
    settings = cli.kafka_settings(args)
    partitions = cli.setting(args, "partitions", "ORDERS_PARTITIONS", 3, cli.positive(int))
    dlq_partitions = args.dlq_partitions or partitions
    replication = cli.setting(args, "replication_factor", "REPLICATION_FACTOR", 1, cli.positive(int))
    retention = cli.setting(args, "retention_days", "DLQ_RETENTION_DAYS", 7.0, cli.positive(float))
    state_topic = cli.state_topic_setting(args, settings)

    admin = require_cluster(settings)
    plans = topic_plans(settings, state_topic, partitions, dlq_partitions, replication, retention)
    results = ensure_topics(admin, plans, replication)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(describe(result))
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
