"""Reading a topic from chosen positions to its end, for the DLQ tools and the marks.

Where to start in each partition is the tool's choice: the beginning, an offset, the first record
written at or after a time (the broker's time index, `offsets_for_times`), or the last N. The end
is each partition's end when the read starts, so a read ends by itself even while the topic grows.

No read has a total deadline: a DLQ of millions of records takes as long as it takes. It fails
only when the broker sends nothing at all for `stall_timeout` seconds while partitions are unread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from orders_dlq.errors import ToolFailure
from orders_dlq.kafka import LEADERSHIP_IN_TRANSIT
from orders_dlq.logs import log

STALL_TIMEOUT = 60.0
CALL_TIMEOUT = 10.0


def _failure(what: str, exc: KafkaException) -> ToolFailure:
    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    return ToolFailure(f"{what}: {error.str() if error is not None else exc}")


# A topic just created, or whose leader just moved, answers these for a moment: ask again.
PASSING_ERRORS = LEADERSHIP_IN_TRANSIT | {KafkaError.UNKNOWN_TOPIC_OR_PART}


def _asked(call, what: str, patience: float = 3 * CALL_TIMEOUT):
    """call(), asked again while the broker answers with a passing error, for up to `patience` seconds."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            passing = error is not None and (error.retriable() or error.code() in PASSING_ERRORS)
            if not passing or time.monotonic() > deadline:
                raise _failure(what, exc) from None
            log.debug("%s: %s; asking again", what, error.str())
            time.sleep(0.2)


def partitions_of(consumer: Consumer, topic: str) -> list[int]:
    try:
        metadata = consumer.list_topics(topic, timeout=CALL_TIMEOUT).topics.get(topic)
    except KafkaException as exc:
        raise _failure(f"cannot read the metadata of {topic}", exc) from None
    if metadata is None or metadata.error is not None:
        raise ToolFailure(f"topic {topic} does not exist: run `python setup_dlq.py` first")
    return sorted(metadata.partitions)


def watermarks(consumer: Consumer, topic: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
    """(low, high) of each partition: the first offset still there and the offset the next record gets."""
    bounds = {}
    for partition in partitions:
        bounds[partition] = _asked(
            lambda p=partition: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=CALL_TIMEOUT),
            f"cannot read the offsets of {topic}[{partition}]")
    return bounds


def offsets_at(consumer: Consumer, topic: str, partitions: list[int], moment: datetime) -> dict[int, int | None]:
    """Per partition, the first offset whose record timestamp is at or after `moment` (None: none is).

    The broker answers from its time index; with CreateTime that is the producers' clocks, which
    is why a record written later with an earlier timestamp can still follow the offset found.
    """
    millis = int(moment.timestamp() * 1000)
    found = _asked(lambda: consumer.offsets_for_times([TopicPartition(topic, p, millis) for p in partitions],
                                                      timeout=CALL_TIMEOUT),
                   f"cannot look up offsets by time in {topic}")
    return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in found}


def read_range(consumer: Consumer, topic: str, starts: dict[int, int], ends: dict[int, int],
               stall_timeout: float = STALL_TIMEOUT, stop: Callable[[], bool] | None = None,
               batch_size: int = 500) -> Iterator:
    """Every committed message from starts[p] (inclusive) up to ends[p] (exclusive) of each partition.

    The consumer must have enable.partition.eof set. With read_committed, records of an aborted
    transaction and commit markers take offsets but are never delivered: the end of a partition
    is reached by an offset at or past its end, or by partition EOF, whichever comes first.
    """
    pending = {p for p in starts if starts[p] < ends.get(p, 0)}
    if not pending:
        return
    consumer.assign([TopicPartition(topic, p, starts[p]) for p in sorted(pending)])
    last_progress = time.monotonic()
    try:
        while pending:
            if stop is not None and stop():
                return
            messages = consumer.consume(batch_size, timeout=0.5)
            if messages:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > stall_timeout:
                raise ToolFailure(f"nothing received from {topic} for {stall_timeout:g}s although partition(s) "
                                  f"{sorted(pending)} are not read to their end")
            for message in messages:
                error = message.error()
                partition = message.partition()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(partition)
                    elif error.fatal():
                        raise ToolFailure(f"reading {topic}: {error.str()}")
                    else:
                        log.warning("reading %s: %s", topic, error.str())
                    continue
                if partition not in pending:
                    continue
                if message.offset() >= ends[partition]:
                    pending.discard(partition)  # written after the read started
                    continue
                yield message
                if message.offset() + 1 >= ends[partition]:
                    pending.discard(partition)
    finally:
        try:
            consumer.unassign()
        except KafkaException:
            pass  # the consumer is closed by its owner anyway
