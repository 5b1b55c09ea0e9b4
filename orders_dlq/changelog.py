"""The aggregation's changelog (the state topic, `orders.aggregates` by default): its records and
how they are read back.

One record per (consumer group, orders topic, partition), keyed `[group, topic, partition]` as
JSON; compaction keeps the latest. The value is a PartitionState as JSON: the aggregate of that
input partition up to (excluding) `next_offset`, written in the same unit of work as the group's
offsets (in one transaction under exactly-once), so a restore starts exactly where counting stopped.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from orders_dlq.errors import ToolFailure
from orders_dlq.kafka import read_to_end, reader_config
from orders_dlq.logs import log
from orders_dlq.settings import KafkaSettings
from orders_dlq.stats import Aggregate


@dataclass
class PartitionState:
    """The aggregate of one input partition up to (excluding) next_offset: the changelog's unit."""

    next_offset: int
    aggregate: Aggregate = field(default_factory=Aggregate)
    # The input topic's id when this state was written: a topic deleted and created again under
    # the same name has another id, and its offsets start over.
    topic_id: str | None = None
    # The committed offset the unit of work that wrote this state started from. At-least-once
    # writes the state before the offsets, so after a crash the group's committed offset is this
    # one; any other offset below next_offset was set by someone else (an offset reset).
    unit_start: int | None = None

    def encode(self) -> bytes:
        extra = {}
        if self.topic_id is not None:
            extra["topic_id"] = self.topic_id
        if self.unit_start is not None:
            extra["unit_start"] = self.unit_start
        return json.dumps({"next_offset": self.next_offset, **extra, **self.aggregate.summary()},
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> PartitionState:
        raw = json.loads(data)
        return cls(raw["next_offset"], Aggregate.from_summary(raw), raw.get("topic_id"), raw.get("unit_start"))

    def copy(self) -> PartitionState:
        return PartitionState.decode(self.encode())


def state_key(group: str, topic: str, partition: int) -> bytes:
    """Changelog key: one record per (group, input topic, partition); compaction keeps the last."""
    return json.dumps([group, topic, partition]).encode()


def parse_state_key(key: bytes | None) -> tuple[str, str, int] | None:
    """(group, topic, partition) of a changelog key we wrote; None for anything else."""
    try:
        group, topic, partition = json.loads(key)
    except Exception:  # noqa: BLE001 - anyone can write to the topic: not a key of ours
        return None
    if isinstance(group, str) and isinstance(topic, str) and isinstance(partition, int):
        return group, topic, partition
    return None


def read_states(settings: KafkaSettings, state_topic: str, group: str, topic: str,
                partitions: set[int] | None = None, timeout: float = 60.0) -> dict[int, PartitionState]:
    """The latest committed state of each partition of `topic` for `group`, from the changelog."""
    reader = Consumer(reader_config(settings, f"{group}-restore-{uuid.uuid4()}"))
    try:
        metadata = reader.list_topics(state_topic, timeout=10).topics.get(state_topic)
        if metadata is None or metadata.error is not None:
            raise ToolFailure(f"state topic {state_topic} does not exist: run `python setup_dlq.py` first")
        start = [TopicPartition(state_topic, p, 0) for p in metadata.partitions]
        states = {}
        unreadable = 0
        for message in read_to_end(reader, start, timeout):
            # Anyone can write to the changelog topic: a record that is not ours (a foreign key, a
            # tombstone, corrupt bytes) is counted and passed over. A corrupt record under one of
            # *our* keys leaves the previous state in place, which the restore then finds older than
            # the committed offset: it refuses to count twice rather than guess.
            key = parse_state_key(message.key())
            if key is None:
                unreadable += 1
                continue
            if key[0] != group or key[1] != topic or (partitions is not None and key[2] not in partitions):
                continue
            if message.value() is None:
                states.pop(key[2], None)  # a tombstone: that partition's state was deleted on purpose
                continue
            try:
                states[key[2]] = PartitionState.decode(message.value())
            except Exception:  # noqa: BLE001 - see above
                unreadable += 1
        if unreadable:
            log.warning("%s: %d record(s) that are not aggregation states were passed over", state_topic, unreadable)
        return states
    finally:
        reader.close()
