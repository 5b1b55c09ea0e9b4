#!/usr/bin/env python3
"""Show the topics the pipeline needs, create the missing ones; change existing ones only with --apply.

Manages the orders topic, its dead letter queue (7-day retention), the aggregate changelog
(compacted, co-partitioned with the orders topic) and the marks of the dead letters `<dlq>.status`
(replayed, resolved, discarded; compacted, 1 partition). It prints what exists, what it creates
and what differs. Existing settings change only with --apply, and never to something weaker (fewer
in-sync replicas, shorter retention, smaller messages, another cleanup policy) without --force as well.
"""

from __future__ import annotations

import orders_dlq.python_version  # noqa: F401  first: below Python 3.11, one sentence and exit 2

# isort: split

import json
import sys
import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, NewTopic, ResourceType

from orders_dlq import cli
from orders_dlq.errors import EXIT_OK, ToolFailure, UsageError
from orders_dlq.kafka import DEAD_LETTER_MAX_BYTES, require_cluster
from orders_dlq.marks import marks_topic
from orders_dlq.registry import (
    Registry,
    add_compatibility_argument,
    add_registry_argument,
    compatibility_setting,
    describe_compatibility,
    registry_settings,
    set_up_compatibility,
    value_subject,
)
from orders_dlq.settings import kafka_settings, positive, setting, state_topic_setting

DAY_MS = 24 * 3600 * 1000
TIMEOUT = 30.0
CREATE_ATTEMPTS = 5  # plans made again when another setup creates the same topics at once

# How a change of each managed setting affects the data: lowering one of these weakens durability
# (fewer replicas must acknowledge a write), shortens how long dead letters are kept, or makes
# Kafka refuse a dead letter it took before. Such changes need --force on top of --apply.
STRONGER_WHEN_HIGHER = {"min.insync.replicas", "retention.ms", "max.message.bytes"}
# Switching between delete and compact drops records either way (old dead letters, or old state).
ALWAYS_RISKY = {"cleanup.policy"}


@dataclass
class Wanted:
    topic: str
    partitions: int
    configs: dict


@dataclass
class Difference:
    setting: str
    current: str | int | None
    wanted: str | int
    weakens: bool = False
    fixable: bool = True  # replication and shrinking partitions are not changed by this tool
    status: str = "pending"  # pending (needs --apply), held (needs --force), applied, manual

    def as_dict(self) -> dict:
        return {"setting": self.setting, "current": self.current, "wanted": self.wanted,
                "weakens": self.weakens, "status": self.status}


def wanted_topics(settings, state_topic: str, partitions: int, dlq_partitions: int, replication: int,
                  retention_days: float) -> list[Wanted]:
    """What the pipeline needs; the state topic's partitions are settled later (co-partitioned)."""
    # With 3 replicas, acks=all waits for 2 of them: one broker may die without losing a write.
    durability = {"min.insync.replicas": "2" if replication >= 3 else "1"}
    return [
        Wanted(settings.topic, partitions, dict(durability)),
        Wanted(settings.dlq_topic, dlq_partitions,
               {**durability, "retention.ms": str(int(retention_days * DAY_MS)), "cleanup.policy": "delete",
                # Room for a dead letter that carries a maximum-size order plus its error context.
                "max.message.bytes": str(DEAD_LETTER_MAX_BYTES)}),
        # As many partitions as the orders topic, so that the changelog can grow with the work.
        # Compaction keeps the latest state per (group, topic, partition) key.
        Wanted(state_topic, partitions, {**durability, "cleanup.policy": "compact", "segment.ms": str(3600 * 1000),
                                         "min.cleanable.dirty.ratio": "0.1"}),
        # The marks of the dead letters (replayed, resolved, discarded): one record per dead letter
        # ever marked, so no selection, group or --from-beginning replays it twice, and every tool
        # counts the same ones as open. Compacted: the latest mark per dead letter, kept for good.
        # One partition: the marks are small, and every reader reads them all anyway.
        Wanted(marks_topic(settings.dlq_topic), 1, {**durability, "cleanup.policy": "compact"}),
    ]


def weakens(key: str, current: str | None, wanted: str) -> bool:
    if key in ALWAYS_RISKY:
        return True
    if key not in STRONGER_WHEN_HIGHER or current is None:
        return False

    def size(value: str) -> float:
        number = float(value)
        return float("inf") if key == "retention.ms" and number < 0 else number  # -1: kept forever

    return size(wanted) < size(current)


def current_configs(admin, topic: str, keys) -> dict:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=TIMEOUT)
    return {key: entries[key].value for key in keys if key in entries}


def plan(admin, wanted: list[Wanted], replication: int, apply: bool) -> list[dict]:
    """Each topic as it is and how it differs from what is wanted (nothing changed yet)."""
    metadata = admin.list_topics(timeout=TIMEOUT)
    if replication > len(metadata.brokers):
        raise UsageError(f"--replication-factor {replication} needs at least {replication} brokers; "
                         f"the cluster has {len(metadata.brokers)}")
    orders, state = wanted[0], wanted[2]
    if orders.topic in metadata.topics:  # co-partitioned with what the orders topic has (or will have)
        existing = len(metadata.topics[orders.topic].partitions)
        state.partitions = max(orders.partitions, existing) if apply else existing
    entries = []
    for want in wanted:
        topic = metadata.topics.get(want.topic)
        entry = {"topic": want.topic, "exists": topic is not None, "partitions": want.partitions,
                 "replication_factor": replication, "configs": want.configs, "differences": []}
        if topic is not None:
            current_rf = len(topic.partitions[0].replicas) if topic.partitions else 0
            entry["partitions"], entry["replication_factor"] = len(topic.partitions), current_rf
            # An existing topic keeps the durability its own replication allows.
            configs = dict(want.configs)
            configs["min.insync.replicas"] = "2" if current_rf >= 3 else "1"
            actual = current_configs(admin, want.topic, configs)
            entry["configs"] = actual
            differences = []
            if len(topic.partitions) < want.partitions:
                differences.append(Difference("partitions", len(topic.partitions), want.partitions))
            elif len(topic.partitions) > want.partitions:
                # Kafka cannot remove partitions; co-partitioning needs the state topic to match.
                differences.append(Difference("partitions", len(topic.partitions), want.partitions, fixable=False,
                                              status="manual"))
            if current_rf != replication:
                differences.append(Difference("replication_factor", current_rf, replication, fixable=False,
                                              status="manual", weakens=replication < current_rf))
            for key, value in configs.items():
                if actual.get(key) != value:
                    differences.append(Difference(key, actual.get(key), value,
                                                  weakens=weakens(key, actual.get(key), value)))
            entry["differences"] = differences
        entries.append(entry)
    return entries


def carry_out(admin, entries: list[dict], replication: int, apply: bool, force: bool) -> bool:
    """Create what is missing; with --apply change what differs (weakening only with --force).
    False, with nothing else done, when another client created one of the missing topics first."""
    to_create = [NewTopic(e["topic"], num_partitions=e["partitions"], replication_factor=replication,
                          config=e["configs"]) for e in entries if not e["exists"]]
    futures = admin.create_topics(to_create, operation_timeout=TIMEOUT) if to_create else {}
    created_meanwhile = False
    for entry in entries:
        if entry["topic"] in futures:
            try:
                futures[entry["topic"]].result(timeout=TIMEOUT)
                entry["action"] = "created"
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise ToolFailure(f"could not create topic {entry['topic']}: {exc.args[0].str()}") from None
                created_meanwhile = True
    if created_meanwhile:
        return False
    for entry in entries:
        if entry["topic"] in futures:
            continue
        if not entry["exists"]:
            continue
        configs, grow = {}, None
        for difference in entry["differences"]:
            if not difference.fixable:
                continue
            if not apply:
                difference.status = "pending"
            elif difference.weakens and not force:
                difference.status = "held"
            elif difference.setting == "partitions":
                grow = difference
            else:
                configs[difference.setting] = difference
        if configs:
            resource = ConfigResource(ResourceType.TOPIC, entry["topic"], incremental_configs=[
                ConfigEntry(key, d.wanted, incremental_operation=AlterConfigOpType.SET) for key, d in configs.items()])
            try:
                admin.incremental_alter_configs([resource])[resource].result(timeout=TIMEOUT)
            except KafkaException as exc:
                raise ToolFailure(f"could not change {entry['topic']}: {exc.args[0].str()}") from None
            for difference in configs.values():
                difference.status = "applied"
        if grow is not None:
            try:
                admin.create_partitions([NewPartitions(entry["topic"], grow.wanted)],
                                        operation_timeout=TIMEOUT)[entry["topic"]].result(timeout=TIMEOUT)
            except KafkaException as exc:
                raise ToolFailure(f"could not add partitions to {entry['topic']}: {exc.args[0].str()}") from None
            grow.status = "applied"
            entry["partitions"] = grow.wanted
        statuses = {d.status for d in entry["differences"]}
        entry["action"] = ("changed" if "applied" in statuses else "differs" if statuses else "exists")
    return True


def set_up_topics(admin, wanted: list[Wanted], replication: int, apply: bool, force: bool) -> list[dict]:
    """plan() then carry_out(). Several setups may start at once (deploy jobs, init containers):
    when another one created a topic between our plan and our create, the plan is made again
    with that topic as an existing one, after a moment for its metadata to reach every broker."""
    ours = set()  # created by this run in an earlier attempt: still reported as created
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        entries = plan(admin, wanted, replication, apply)
        done = carry_out(admin, entries, replication, apply, force)
        ours.update(entry["topic"] for entry in entries if entry.get("action") == "created")
        if done:
            for entry in entries:
                if entry["topic"] in ours and entry["action"] == "exists":
                    entry["action"] = "created"
            return entries
        time.sleep(0.2 * attempt)
    raise ToolFailure(f"the topics were being created by another client at the same time for {CREATE_ATTEMPTS} "
                      "attempts; run setup_dlq.py again")


def show_value(setting: str, value) -> str:
    if setting == "retention.ms" and value is not None and str(value).lstrip("-").isdigit():
        days = int(value) / DAY_MS
        return f"{value} ({'forever' if days < 0 else f'{days:g} days'})"
    return str(value)


WHAT_HAPPENS = {
    "pending": "not changed (run with --apply)",
    "held": "not changed: it would weaken the topic (add --force)",
    "applied": "changed",
    "manual": "left as is (this tool cannot change it; see kafka-reassign-partitions.sh / recreate the topic)",
}


def describe(entry: dict) -> list[str]:
    count = entry["partitions"]
    head = (f"{entry['topic']}: {entry['action']} ({count} partition{'' if count == 1 else 's'}, "
            f"replication factor {entry['replication_factor']}")
    if "retention.ms" in entry["configs"]:
        head += f", retention {show_value('retention.ms', entry['configs']['retention.ms'])}"
    lines = [head + ")"]
    for d in entry["differences"]:
        lines.append(f"  {d.setting}: is {show_value(d.setting, d.current)}, wanted "
                     f"{show_value(d.setting, d.wanted)}{' (weaker)' if d.weakens else ''}: {WHAT_HAPPENS[d.status]}")
    return lines


def main(argv=None) -> int:
    parser = cli.build_parser(__doc__, "python setup_dlq.py            # the plan; creates missing topics\n"
                              "  python setup_dlq.py --apply    # also change what differs (never weaker)")
    parser.add_argument("--partitions", type=positive(int),
                        help="partitions of the orders topic and its changelog (env ORDERS_PARTITIONS, default 3)")
    parser.add_argument("--dlq-partitions", type=positive(int),
                        help="partitions of the DLQ (default: same as --partitions)")
    parser.add_argument("--replication-factor", type=positive(int),
                        help="replicas per partition of new topics (env REPLICATION_FACTOR, default: 3, "
                             "or the number of brokers if fewer)")
    parser.add_argument("--retention-days", type=positive(float),
                        help="how long dead letters are kept (env DLQ_RETENTION_DAYS, default 7)")
    parser.add_argument("--state-topic", help="aggregate changelog (env STATE_TOPIC, default <topic>.aggregates)")
    parser.add_argument("--apply", action="store_true",
                        help="change existing topics that differ (settings, more partitions)")
    parser.add_argument("--force", action="store_true",
                        help="with --apply: also make changes that weaken durability or shorten retention")
    add_registry_argument(parser)
    add_compatibility_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the plan and its outcome as JSON")
    args = cli.parse_args(parser, argv)
    if args.force and not args.apply:
        raise UsageError("--force only makes sense with --apply")
    settings = kafka_settings(args)
    partitions = setting(args, "partitions", "ORDERS_PARTITIONS", 3, positive(int))
    dlq_partitions = args.dlq_partitions or partitions
    replication = setting(args, "replication_factor", "REPLICATION_FACTOR", None, positive(int))
    retention = setting(args, "retention_days", "DLQ_RETENTION_DAYS", 7.0, positive(float))
    state_topic = state_topic_setting(args, settings)
    registry = registry_settings(args)
    compatibility = compatibility_setting(args)
    if args.compatibility and registry is None:
        raise UsageError("--compatibility only makes sense with --schema-registry (SCHEMA_REGISTRY_URL)")

    admin = require_cluster(settings)
    if replication is None:
        replication = min(3, len(admin.list_topics(timeout=TIMEOUT).brokers))
    wanted = wanted_topics(settings, state_topic, partitions, dlq_partitions, replication, retention)
    entries = set_up_topics(admin, wanted, replication, args.apply, args.force)
    subjects = [] if registry is None else set_up_compatibility(
        Registry(registry), [value_subject(settings.topic), value_subject(settings.dlq_topic)], compatibility,
        args.apply)

    if args.json:
        print(json.dumps({"apply": args.apply, "force": args.force, "topics": [
            {**entry, "differences": [d.as_dict() for d in entry["differences"]]} for entry in entries],
            **({"subjects": subjects} if registry else {})}, indent=2))
    else:
        for entry in entries:
            print("\n".join(describe(entry)))
        for subject in subjects:
            print(describe_compatibility(subject))
    statuses = [d.status for entry in entries for d in entry["differences"]]
    if statuses.count("pending"):
        print(f"{statuses.count('pending')} setting(s) differ from the plan and were left as they are: "
              "re-run with --apply to change them.", file=sys.stderr)
    if any(subject["status"] == "pending" for subject in subjects):
        print("a subject's compatibility differs from --compatibility and was left as it is: re-run with --apply "
              "to change it.", file=sys.stderr)
    if statuses.count("held"):
        print(f"{statuses.count('held')} setting(s) were not changed because that would lower durability or "
              "shorten retention: add --force to --apply if you really mean it.", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    cli.run(main)
