"""What an operator does to the orders topic or the group is honoured, said in one line, and done exactly:
an offset reset re-counts from the reset point, a topic deleted and created again starts afresh."""

from __future__ import annotations

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from conftest import Pipeline, assert_summary_matches_truth, expected_totals, wait_for

pytestmark = pytest.mark.integration


def consume(pipeline: Pipeline, guarantee: str):
    return pipeline.scripts.run("consumer_aggregation.py", "-g", pipeline.group, "--guarantee", guarantee,
                                "--idle-timeout", 3, "--json")


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_an_offset_reset_recounts_that_partition_from_the_reset_point(pipeline: Pipeline, admin, guarantee):
    pipeline.scripts.json("producer.py", "--count", 300, "--bad-ratio", 0.05, "--seed", 41)
    first = consume(pipeline, guarantee)
    assert "reset" not in first.stderr
    messages = pipeline.read(pipeline.topic)
    end = max(m.offset() for m in messages if m.partition() == 0) + 1
    assert end > 20
    request = ConsumerGroupTopicPartitions(pipeline.group, [TopicPartition(pipeline.topic, 0, 10)])
    admin.alter_consumer_group_offsets([request])[pipeline.group].result(30)

    second = consume(pipeline, guarantee)

    lines = [line for line in second.stderr.splitlines() if "was reset" in line]
    assert len(lines) == 1 and f"{pipeline.topic}[0]: the group's offset was reset from {end} to 10" in lines[0]
    kept = [m for m in messages if m.partition() != 0 or m.offset() >= 10]
    assert_summary_matches_truth(pipeline.report(), expected_totals(kept))


def test_a_topic_deleted_and_created_again_starts_its_totals_afresh(pipeline: Pipeline, admin):
    pipeline.scripts.json("producer.py", "--count", 120, "--seed", 43)
    consume(pipeline, "exactly-once")
    admin.delete_topics([pipeline.topic])[pipeline.topic].result(30)
    wait_for(lambda: pipeline.topic not in admin.list_topics(timeout=10).topics, 60, "the topic to be gone")
    wait_for(lambda: pipeline.setup().returncode == 0, 60, "the topic to be created again")
    pipeline.scripts.json("producer.py", "--count", 40, "--seed", 44)

    again = consume(pipeline, "exactly-once")

    lines = [line for line in again.stderr.splitlines() if "deleted and created again" in line]
    assert 1 <= len(lines) <= pipeline.partitions, again.stderr
    assert_summary_matches_truth(pipeline.report(), pipeline.truth())
