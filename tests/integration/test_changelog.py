"""The changelog is co-partitioned with the orders topic: partition p's totals live in partition p of
`<topic>.aggregates`, a restore reads only the assigned partitions' tails, and a changelog that is
not co-partitioned is refused in one sentence (setup_dlq.py --apply fixes it)."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic
from conftest import Pipeline, assert_summary_matches_truth

pytestmark = pytest.mark.integration


def our_records(pipeline: Pipeline, state_topic: str) -> list:
    return [m for m in pipeline.read(state_topic)
            if m.key() is not None and json.loads(m.key())[:2] == [pipeline.group, pipeline.topic]]


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_each_partitions_totals_are_written_to_the_same_changelog_partition(pipeline: Pipeline, guarantee):
    pipeline.scripts.json("producer.py", "--count", 600, "--seed", 3)
    summary = pipeline.consume(guarantee=guarantee)

    records = our_records(pipeline, pipeline.state_topic)
    assert {json.loads(m.key())[2] for m in records} == set(range(pipeline.partitions))
    assert all(m.partition() == json.loads(m.key())[2] for m in records), "a state left its own partition"
    assert_summary_matches_truth(summary, pipeline.truth())
    assert_summary_matches_truth(pipeline.report(), pipeline.truth())


def test_a_changelog_with_another_partition_count_is_refused_in_one_sentence(pipeline: Pipeline, admin):
    state_topic = f"{pipeline.topic}.one-partition"
    admin.create_topics([NewTopic(state_topic, 1, 1, config={"cleanup.policy": "compact"})])[state_topic].result(30)
    pipeline.scripts.json("producer.py", "--count", 10)

    result = pipeline.scripts.run("consumer_aggregation.py", "-g", pipeline.group, "--state-topic", state_topic,
                                  "--idle-timeout", 2, expect=1)

    lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert state_topic in lines[0] and "setup_dlq.py --apply" in lines[0]
    assert pipeline.committed() in ({}, {p: -1001 for p in range(pipeline.partitions)})  # nothing was consumed


def test_totals_written_before_co_partitioning_are_still_found_and_nothing_is_counted_twice(pipeline: Pipeline,
                                                                                          admin):
    pipeline.scripts.json("producer.py", "--count", 400, "--seed", 5)
    pipeline.consume()
    # The layout of an older changelog: every partition's totals in partition 0 of the topic.
    legacy = f"{pipeline.topic}.legacy"
    admin.create_topics([NewTopic(legacy, pipeline.partitions, 1,
                                  config={"cleanup.policy": "compact"})])[legacy].result(30)
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True})
    for record in our_records(pipeline, pipeline.state_topic):
        producer.produce(legacy, key=record.key(), value=record.value(), partition=0)
    assert producer.flush(30) == 0

    pipeline.scripts.json("producer.py", "--count", 300, "--seed", 6)
    summary = pipeline.consume("--state-topic", legacy)

    assert_summary_matches_truth(summary, pipeline.truth())
