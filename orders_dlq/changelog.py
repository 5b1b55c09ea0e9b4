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

# A co-partitioned restore reads this many records at the end of each changelog partition first
# (one commit writes one record per partition it covers), then 8 times as many, and so on.
TAIL_WINDOW = 512


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


class _StateScan:
    """Folds changelog records into the latest state per partition of one (group, topic).

    Anyone can write to the changelog topic: a record that is not ours (a foreign key, corrupt
    bytes) is counted and passed over. A corrupt record under one of *our* keys leaves the previous
    state in place, which the restore then finds older than the committed offset: it refuses to
    count twice rather than guess."""

    def __init__(self, group: str, topic: str, partitions: set[int] | None, co_partitioned: bool):
        self.group, self.topic, self.partitions, self.co_partitioned = group, topic, partitions, co_partitioned
        self.states: dict[int, PartitionState] = {}
        self.seen: set[int] = set()  # partitions whose latest record (state or tombstone) was read
        self.unreadable = 0

    def add(self, message) -> None:
        key = parse_state_key(message.key())
        if key is None:
            self.unreadable += 1
            return
        group, topic, partition = key
        if group != self.group or topic != self.topic or (self.partitions is not None
                                                         and partition not in self.partitions):
            return
        if self.co_partitioned and partition != message.partition():
            return  # written before the changelog was co-partitioned: the full scan's to find
        self.seen.add(partition)
        if message.value() is None:
            self.states.pop(partition, None)  # a tombstone: that partition's state was deleted on purpose
            return
        try:
            self.states[partition] = PartitionState.decode(message.value())
        except Exception:  # noqa: BLE001 - see the class
            self.unreadable += 1


def read_states(settings: KafkaSettings, state_topic: str, group: str, topic: str,
                partitions: set[int] | None = None, timeout: float = 60.0, co_partitioned: bool = False,
                scan_for: set[int] | None = None) -> dict[int, PartitionState]:
    """The latest committed state of each partition of `topic` for `group`, from the changelog.

    Co-partitioned (partition p of the changelog holds partition p's state), each partition is read
    from its tail backwards in growing windows until its latest record is found: the cost follows
    the distance to the group's last commit, not the hours of history compaction has not removed
    yet. Partitions of `scan_for` not found that way (a changelog written before co-partitioning)
    are looked for in a full scan. Otherwise the whole changelog is read from the beginning."""
    reader = Consumer(reader_config(settings, f"{group}-restore-{uuid.uuid4()}"))
    try:
        metadata = reader.list_topics(state_topic, timeout=10).topics.get(state_topic)
        if metadata is None or metadata.error is not None:
            raise ToolFailure(f"state topic {state_topic} does not exist: run `python setup_dlq.py` first")
        scan = _StateScan(group, topic, partitions, co_partitioned)
        if co_partitioned:
            wanted = set(metadata.partitions) if partitions is None else partitions & set(metadata.partitions)
            _read_tails(reader, state_topic, wanted, scan, timeout)
            missing = (scan_for or set()) - scan.seen
            if missing:
                legacy = _StateScan(group, topic, missing, co_partitioned=False)
                for message in read_to_end(reader, [TopicPartition(state_topic, p, 0) for p in metadata.partitions],
                                           timeout):
                    legacy.add(message)
                scan.states.update(legacy.states)
                scan.unreadable += legacy.unreadable
        else:
            for message in read_to_end(reader, [TopicPartition(state_topic, p, 0) for p in metadata.partitions],
                                       timeout):
                scan.add(message)
        if scan.unreadable:
            log.warning("%s: %d record(s) that are not aggregation states were passed over", state_topic,
                        scan.unreadable)
        return scan.states
    finally:
        reader.close()


def _read_tails(reader: Consumer, state_topic: str, partitions: set[int], scan: _StateScan, timeout: float) -> None:
    """Read each partition's last TAIL_WINDOW records, then 8 times as many, ... until its latest
    record of ours is found or the partition was read from its beginning."""
    bounds = {p: reader.get_watermark_offsets(TopicPartition(state_topic, p), timeout=10) for p in partitions}
    searching = {p for p in partitions if bounds[p][1] > bounds[p][0]}  # an empty partition holds nothing
    window = TAIL_WINDOW
    while searching:
        starts = {p: max(bounds[p][0], bounds[p][1] - window) for p in searching}
        for message in read_to_end(reader, [TopicPartition(state_topic, p, o) for p, o in starts.items()], timeout):
            scan.add(message)  # in offset order: the last record of ours in a partition is its latest
        searching = {p for p in searching if p not in scan.seen and starts[p] > bounds[p][0]}
        window *= 8
