"""The status of dead letters, kept in Kafka so that every tool on every machine sees the same one.

Beside each DLQ is a compacted topic `<dlq>.status` (created by setup_dlq.py). Its key says which
dead letter (see `mark_key`), its value what became of it, as JSON:

    {"status": "replayed" | "resolved" | "discarded", "at": ISO-8601, "by": who, "note": text,
     "target": topic a replay sent it to (replayed only)}

Compaction keeps the latest record per key for good, so the topic is as large as the number of
dead letters ever marked, not the number of marks written. A dead letter without a record is
`open`; a tombstone (null value) for its key reopens it. The replayer writes `replayed` inside the
transaction that sends the original (both or neither); `resolved` and `discarded` are written by
an operator (dlq_replay.py --resolve / --discard, or the console).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Consumer, Producer

from orders_dlq import reading, transactions
from orders_dlq.dead_letter import DeadLetter
from orders_dlq.errors import ToolFailure
from orders_dlq.kafka import reader_config, reliable_producer_config, settle
from orders_dlq.logs import log
from orders_dlq.settings import KafkaSettings

OPEN, REPLAYED, RESOLVED, DISCARDED = "open", "replayed", "resolved", "discarded"
MARKED = (REPLAYED, RESOLVED, DISCARDED)
STATUSES = (OPEN, *MARKED)



def marks_topic(dlq_topic: str) -> str:
    """The compacted topic beside a DLQ holding the latest mark of each dead letter."""
    return f"{dlq_topic}.status"


def mark_key(dead_letter: DeadLetter, dlq_topic: str, partition: int, offset: int) -> bytes:
    """Who a dead letter is: its original message when known (so that copies of one dead letter
    share a key and a mark), else its own place in the DLQ (a produce failure never had an offset)."""
    if dead_letter.original_partition is not None and dead_letter.original_offset is not None:
        return json.dumps(["original", dead_letter.original_topic, dead_letter.original_partition,
                           dead_letter.original_offset]).encode()
    return json.dumps(["dlq", dlq_topic, partition, offset]).encode()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(slots=True)
class Mark:
    """What became of one dead letter, who said so and when."""

    status: str
    at: str
    by: str
    note: str = ""
    target: str | None = None  # where a replay sent it

    def to_bytes(self, position: str | None = None) -> bytes:
        value = {"status": self.status, "at": self.at, "by": self.by, "note": self.note}
        if self.target is not None:
            value["target"] = self.target
        if position is not None:
            value["dlq"] = position  # where the dead letter was when marked, for people reading the topic
        return json.dumps(value).encode()

    @classmethod
    def from_bytes(cls, value: bytes, shared: dict[str, str] | None = None) -> Mark | None:
        """The mark a record holds; None for anything that is not a mark of ours.

        `shared` makes equal texts one object: the marks of one resolve share who, when and why,
        so a million marks do not hold a million copies of them."""
        try:
            data = json.loads(value)
            status = data["status"]
        except (ValueError, TypeError, KeyError):
            return None
        if status not in MARKED:
            return None
        target = data.get("target")
        texts = [str(data.get(name) or "") for name in ("at", "by", "note")]
        texts.append(target if isinstance(target, str) else None)
        if shared is not None:
            texts = [text if text is None else shared.setdefault(text, text) for text in texts]
        return cls(status, *texts)


def status_of(marks: dict[bytes, Mark], key: bytes) -> str:
    mark = marks.get(key)
    return OPEN if mark is None else mark.status


def read_marks(settings: KafkaSettings, dlq_topic: str, timeout: float = reading.STALL_TIMEOUT) -> dict[bytes, Mark]:
    """The latest mark of every marked dead letter, read from the marks topic to its current end.

    Memory is bounded by the compacted topic (one entry per dead letter ever marked). `timeout`
    bounds only a stall (nothing received while the end is not reached), never the whole read.
    Records that are not ours are passed over; a tombstone reopens its key.
    """
    topic = marks_topic(dlq_topic)
    reader = Consumer(reader_config(settings, f"dlq-marks-{uuid.uuid4()}"))
    try:
        partitions = reading.partitions_of(reader, topic)
        bounds = reading.watermarks(reader, topic, partitions)
        marks: dict[bytes, Mark] = {}
        shared: dict[str, str] = {}
        starts = {p: low for p, (low, _) in bounds.items()}
        ends = {p: high for p, (_, high) in bounds.items()}
        for message in reading.read_range(reader, topic, starts, ends, stall_timeout=timeout):
            key = message.key()
            if key is None:
                continue
            value = message.value()
            mark = None if value is None else Mark.from_bytes(value, shared)
            if mark is None:
                if value is not None:
                    log.debug("%s[%d]@%d is not a mark: passed over", topic, message.partition(), message.offset())
                    continue
                marks.pop(key, None)  # tombstone: open again
            else:
                marks[key] = mark
        return marks
    finally:
        reader.close()


def write_marks(settings: KafkaSettings, dlq_topic: str, marks: Iterable[tuple[bytes, Mark]],
                delivery_timeout: float = 30.0) -> int:
    """Write marks (key, Mark) and wait until the broker confirmed each one; returns how many.

    Idempotent producer with acks=all: a retry never writes a mark twice or out of order, and a
    mark counts only once every in-sync replica has it. Writing the same mark again is harmless
    (compaction keeps the latest), so a failed run is simply run again.
    """
    topic = marks_topic(dlq_topic)
    errors = transactions.DeliveryErrors()
    producer = Producer(reliable_producer_config(settings, delivery_timeout))
    written = 0
    try:
        for key, mark in marks:
            transactions.produce(producer, topic, key=key, value=mark.to_bytes(), on_delivery=errors)
            written += 1
    finally:
        settle(producer)
    if errors:
        raise ToolFailure(f"{len(errors.errors)} of {written} mark(s) were not written ({errors.first}); "
                          "run the same command again to write them")
    return written
