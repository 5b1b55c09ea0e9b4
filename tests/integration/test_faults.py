"""Break things for real and check that every order still ends in exactly one place."""

from __future__ import annotations

import json
import random
import signal

import pytest
from confluent_kafka.admin import AdminClient
from conftest import (
    Pipeline,
    Scripts,
    a_valid_order,
    assert_dead_lettered_exactly_once,
    assert_pipeline_exact,
    assert_summary_matches_truth,
    encode_order,
    wait_for,
)

pytestmark = pytest.mark.integration

CONSUMER_ARGS = ("--commit-interval-ms", 50, "--print-interval", 0)
SIGTERM_ORDERS = 100000
# A restarted consumer does 85,000 orders in under a second, between two looks at its progress
# (each look joins no group but still takes a few hundred ms): CI saw a kill land after the end.
KILL_ORDERS = 300000


def consumed(pipeline: Pipeline) -> int:
    return sum(max(offset, 0) for offset in pipeline.committed().values())


def test_consumer_killed_at_random_points_restarts_with_exact_totals(pipeline: Pipeline):
    # Enough orders that a restarted consumer is still at work when it is killed (see KILL_ORDERS).
    pipeline.scripts.json("producer.py", "--count", KILL_ORDERS, "--bad-ratio", 0.01, "--poison-ratio", 0.005,
                          "--seed", 21)
    truth = pipeline.truth()
    rng = random.Random(8)
    killed_at = []
    for round_number in range(3):
        consumer = pipeline.scripts.spawn("consumer_aggregation.py", "-g", pipeline.group, "--instance-id", "one",
                                          "--idle-timeout", 60, *CONSUMER_ARGS, name=f"consumer-{round_number}")
        target = consumed(pipeline) + rng.randint(1500, 6000)

        def reached(target=target, consumer=consumer):
            return consumed(pipeline) >= target or not consumer.running()
        wait_for(reached, 120, f"the consumer to commit past {target}")
        if consumer.running():
            assert consumer.kill() == -signal.SIGKILL
            killed_at.append(consumed(pipeline))
    assert len([n for n in killed_at if n < KILL_ORDERS]) >= 2, f"killed too late to matter: {killed_at}"

    summary = pipeline.consume("--instance-id", "one", *CONSUMER_ARGS)

    assert_summary_matches_truth(summary, truth)
    assert summary["dead_lettered"] == sum(truth["failures"].values())
    assert_dead_lettered_exactly_once(pipeline.dead_letters(), truth)


def test_sigterm_under_load_commits_prints_summary_and_restart_continues_exactly(pipeline: Pipeline):
    # Enough orders that the SIGTERM lands in the middle: the consumer does 30,000 in well under a
    # second, about the time it takes to see its progress (CI once saw all 30,000 done first).
    pipeline.scripts.json("producer.py", "--count", SIGTERM_ORDERS, "--poison-ratio", 0.002, "--seed", 4)
    truth = pipeline.truth()
    consumer = pipeline.scripts.spawn("consumer_aggregation.py", "-g", pipeline.group, "--idle-timeout", 60,
                                      "--json", *CONSUMER_ARGS)
    wait_for(lambda: consumed(pipeline) > 3000 or not consumer.running(), 120, "progress")
    assert consumer.running(), "finished before SIGTERM: give it more orders"
    consumer.process.send_signal(signal.SIGTERM)

    assert consumer.wait(60) == 0
    partial = json.loads(consumer.stdout())
    assert "SIGTERM received" in consumer.stderr()
    # What it printed is exactly what it committed: offsets and state moved together.
    assert partial["processed"] + partial["dead_lettered"] == consumed(pipeline) < SIGTERM_ORDERS

    summary = pipeline.consume(*CONSUMER_ARGS)

    assert_summary_matches_truth(summary, truth)
    assert_dead_lettered_exactly_once(pipeline.dead_letters(), truth)


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_scale_out_three_instances_one_killed_report_is_exact(kafka_bootstrap, tmp_path, guarantee):
    scripts = Scripts(kafka_bootstrap, tmp_path)
    pipeline = Pipeline(kafka_bootstrap, scripts, partitions=6)
    pipeline.setup()
    scripts.json("producer.py", "--count", 24000, "--bad-ratio", 0.01, "--poison-ratio", 0.005, "--seed", 9)
    truth = pipeline.truth()
    instances = [scripts.spawn("consumer_aggregation.py", "-g", pipeline.group, "--instance-id", name,
                               "--guarantee", guarantee, "--idle-timeout", 25, *CONSUMER_ARGS, name=name)
                 for name in ("a", "b", "c")]
    wait_for(lambda: all("assigned" in i.stderr() for i in instances), 60, "all three instances to get partitions")
    wait_for(lambda: consumed(pipeline) > 2000, 60, "progress")
    victim = instances[1]
    assert victim.running(), f"the instance to kill ended before the kill\n{victim.stderr()[-2000:]}"
    victim.kill()

    for survivor in (instances[0], instances[2]):
        assert survivor.wait(180) == 0, survivor.stderr()[-2000:]

    assert_pipeline_exact(pipeline, truth, guarantee)


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_dlq_unavailable_holds_position_then_resumes_with_nothing_skipped(pipeline: Pipeline, admin: AdminClient,
                                                                         guarantee):
    pipeline.scripts.json("producer.py", "--count", 300, "--seed", 2)
    # Short delivery attempts so the failing commits come round quickly.
    consumer = pipeline.scripts.spawn("consumer_aggregation.py", "-g", pipeline.group, "--idle-timeout", 8,
                                      "--guarantee", guarantee,
                                      "--json", "--retry-backoff-max-ms", 1000, "-X", "message.timeout.ms=3000",
                                      *CONSUMER_ARGS)
    wait_for(lambda: consumed(pipeline) == 300, 60, "the first 300 orders to be committed")
    admin.delete_topics([pipeline.dlq_topic])[pipeline.dlq_topic].result(timeout=30)
    wait_for(lambda: pipeline.dlq_topic not in admin.list_topics(timeout=10).topics, 30, "the DLQ to be gone")

    pipeline.produce_raw([b"poison one", b"poison two"], key=b"p")
    pipeline.produce_raw([encode_order(a_valid_order(f"{n}.25")) for n in range(1, 51)])
    wait_for(lambda: "commit failed" in consumer.stderr(), 60, "the consumer to report the failing commit")
    # The poison cannot be dead-lettered, so no offset may move past it, in any partition.
    poison = [m for m in pipeline.read(pipeline.topic) if m.value().startswith(b"poison")]
    held = pipeline.committed()
    for message in poison:
        assert held[message.partition()] <= message.offset()
    assert "nothing skipped" in consumer.stderr()
    # Named for what it is, with the fix (librdkafka says "Unknown topic" or "Message timed out").
    wait_for(lambda: f"commit failed (topic {pipeline.dlq_topic} does not exist: it was deleted; `python "
                     "setup_dlq.py` creates it again" in consumer.stderr(), 60, "the missing DLQ to be named")

    pipeline.setup()  # the DLQ is back

    assert consumer.wait(180) == 0, consumer.stderr()[-2000:]
    summary = json.loads(consumer.stdout())
    truth = pipeline.truth()
    assert_summary_matches_truth(summary, truth)
    assert summary["dead_lettered"] == 2
    letters = pipeline.dead_letters()
    assert sorted(letter["original_value"] for letter in letters) == [b"poison one", b"poison two"]
    assert "commits succeed again" in consumer.stderr()


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_consumer_killed_while_the_dlq_is_missing_loses_no_dead_letter(pipeline: Pipeline, admin: AdminClient,
                                                                       guarantee):
    consumer = pipeline.scripts.spawn("consumer_aggregation.py", "-g", pipeline.group, "--guarantee", guarantee,
                                      "--idle-timeout", 60, "--instance-id", "one", "-X", "message.timeout.ms=3000",
                                      *CONSUMER_ARGS)
    wait_for(lambda: "assigned" in consumer.stderr(), 60, "the consumer to get its partitions")
    admin.delete_topics([pipeline.dlq_topic])[pipeline.dlq_topic].result(timeout=30)
    wait_for(lambda: pipeline.dlq_topic not in admin.list_topics(timeout=10).topics, 30, "the DLQ to be gone")
    valid = [encode_order(a_valid_order(f"{n}.10")) for n in range(1, 41)]
    pipeline.produce_raw(valid[:20] + [b"poison while the DLQ is missing"] + valid[20:], key=b"same-partition")
    wait_for(lambda: "commit failed" in consumer.stderr(), 90, "the consumer to hold on the missing DLQ")

    assert consumer.kill() == -signal.SIGKILL
    pipeline.setup()
    summary = pipeline.consume("--guarantee", guarantee, "--instance-id", "one", *CONSUMER_ARGS)

    assert summary["overall"]["count"] == 40 and summary["dead_lettered"] == 1
    assert_summary_matches_truth(summary, pipeline.truth())
    letters = pipeline.dead_letters()
    assert [letter["original_value"] for letter in letters] == [b"poison while the DLQ is missing"]
