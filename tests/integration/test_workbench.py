"""The DLQ workbench end to end against the real broker: marks, find and seek, resolve, fix and replay."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer
from conftest import Pipeline

from orders_dlq.marks import OPEN, REPLAYED, RESOLVED, Mark, marks_topic, read_marks, status_of, write_marks
from orders_dlq.settings import KafkaSettings

pytestmark = pytest.mark.integration


def settings_of(pipeline: Pipeline) -> KafkaSettings:
    return KafkaSettings(pipeline.bootstrap, pipeline.topic, pipeline.dlq_topic)


def test_marks_are_read_back_latest_first_and_a_tombstone_reopens(pipeline: Pipeline):
    pipeline.setup()
    settings = settings_of(pipeline)
    assert read_marks(settings, pipeline.dlq_topic) == {}
    first = Mark(RESOLVED, "2026-11-29T03:00:00+00:00", "alice", "fixed upstream")
    write_marks(settings, pipeline.dlq_topic, [(b"a", first), (b"b", first)])
    later = Mark(REPLAYED, "2026-11-29T04:00:00+00:00", "g.replayer", target=pipeline.topic)
    write_marks(settings, pipeline.dlq_topic, [(b"b", later)])
    # A tombstone and a record that is not a mark, as anyone could write them.
    producer = Producer({"bootstrap.servers": pipeline.bootstrap})
    producer.produce(marks_topic(pipeline.dlq_topic), key=b"a", value=None)
    producer.produce(marks_topic(pipeline.dlq_topic), key=b"c", value=b"\xff not json")
    assert producer.flush(30) == 0

    marks = read_marks(settings, pipeline.dlq_topic)

    assert marks == {b"b": later}
    assert (status_of(marks, b"a"), status_of(marks, b"b"), status_of(marks, b"c")) == (OPEN, REPLAYED, OPEN)
