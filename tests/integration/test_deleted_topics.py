"""A topic deleted under a running script: it stops with one sentence instead of waiting for ever
or dropping orders, and every order that was there ends in exactly one place. (A DLQ deleted
under the consumer is held on and named until it is back: test_faults.py.)

- the orders topic under consumer_aggregation.py (librdkafka only logs it: a quiet topic otherwise);
- the orders topic deleted and created again (its offsets start over: new orders look "already counted");
- the orders topic under producer.py (a traceback, and orders dead-lettered as "broker unavailable");
- the DLQ under `dlq_consumer.py --follow` (a view that went on showing the last figures).
"""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic
from conftest import (
    Pipeline,
    a_valid_order,
    assert_summary_matches_truth,
    encode_order,
    wait_for,
)

pytestmark = pytest.mark.integration


def committed_to_the_end(pipeline: Pipeline) -> bool:
    ends: dict[int, int] = {}
    for message in pipeline.read(pipeline.topic):
        ends[message.partition()] = max(ends.get(message.partition(), 0), message.offset() + 1)
    committed = pipeline.committed()
    return bool(ends) and all(committed.get(p, -1) >= end for p, end in ends.items())


def delete(admin, topic: str) -> None:
    admin.delete_topics([topic])[topic].result(30)
    wait_for(lambda: topic not in admin.list_topics(timeout=10).topics, 60, f"{topic} to be gone")


def sentence_after(script, act, timeout: float = 60) -> str:
    """Do `act` (the deletion) under a running script, which must then end by itself with exit 1
    and no traceback: its last line on stderr, the one sentence, is returned."""
    try:
        act()
        code = script.wait(timeout=timeout)
    finally:
        if script.running():
            script.kill()
    stderr = script.stderr()
    assert code == 1, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_an_orders_topic_deleted_under_the_consumer_stops_it_in_one_sentence(pipeline: Pipeline, admin, guarantee):
    pipeline.scripts.json("producer.py", "--count", 200, "--bad-ratio", 0.05, "--seed", 51)
    truth = pipeline.truth()
    # No --idle-timeout: before, this consumer waited for orders for ever.
    consumer = pipeline.scripts.spawn("consumer_aggregation.py", "-g", pipeline.group, "--guarantee", guarantee,
                                      "--json")

    def act():
        wait_for(lambda: committed_to_the_end(pipeline), 60, "the consumer to commit every order")
        delete(admin, pipeline.topic)

    sentence = sentence_after(consumer, act)
    assert sentence.startswith(f"error: {pipeline.topic} was deleted while it was being consumed: stopped"), sentence
    summary = json.loads(consumer.stdout())
    assert_summary_matches_truth(summary, truth)
    assert summary["dead_lettered"] == sum(truth["failures"].values())


# Fewer new orders than were counted lie below the old offsets (the consumer dropped them as
# "already counted"); more run past them, and librdkafka fetched on from the old offsets without a
# word: the first new orders were skipped and the others added to the old topic's totals.
@pytest.mark.parametrize("new_orders", [60, 1200])
def test_an_orders_topic_created_again_under_the_consumer_stops_it_and_the_next_run_counts_it(pipeline: Pipeline,
                                                                                                admin, new_orders):
    pipeline.scripts.json("producer.py", "--count", 300, "--seed", 52)
    consumer = pipeline.scripts.spawn("consumer_aggregation.py", "-g", pipeline.group, "--json")

    def act():
        # Connected before the deletion, so that the new orders follow the topic's creation at once,
        # before the consumer's fetcher has met the empty new log.
        producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True})
        producer.list_topics(timeout=10)
        wait_for(lambda: committed_to_the_end(pipeline), 60, "the consumer to commit every order")
        delete(admin, pipeline.topic)  # and created again at once
        new = NewTopic(pipeline.topic, pipeline.partitions, 1)
        wait_for(lambda: not admin.create_topics([new])[pipeline.topic].exception(30), 60, "the topic again")
        for n in range(new_orders):
            producer.produce(pipeline.topic, encode_order(a_valid_order(f"{n % 90 + 1}.25")), key=b"%d" % n)
        assert producer.flush(30) == 0

    sentence = sentence_after(consumer, act)
    assert sentence.startswith(f"error: {pipeline.topic} was deleted and created again while it was being "
                               "consumed"), sentence
    again = pipeline.consume()  # counts the new topic afresh, from its first offset
    new_truth = pipeline.truth()
    assert new_truth["count"] == new_orders
    assert_summary_matches_truth(again, new_truth)


def test_an_orders_topic_deleted_under_producer_py_halts_it_and_dead_letters_the_rest(pipeline: Pipeline, admin):
    producer = pipeline.scripts.spawn("producer.py", "--count", 30000, "--rate", 500, "--seed", 55, "--json")

    def act():
        wait_for(lambda: pipeline.read(pipeline.topic), 30, "the first orders")
        delete(admin, pipeline.topic)

    sentence = sentence_after(producer, act, timeout=90)
    assert sentence.startswith(f"error: {pipeline.topic} refused orders ("), sentence
    summary = json.loads(producer.stdout())
    assert summary["produced"] < 30000  # halted, not 60 s of orders refused one by one
    assert summary["sent"] + summary["dead_lettered"] + summary["spooled"] == summary["produced"]
    assert summary["dead_lettered"] > 0 and summary["spooled"] == 0
    letters = pipeline.dead_letters()
    assert len(letters) == summary["dead_lettered"]
    assert len({letter["order_id"] for letter in letters}) == len(letters)
    # Said for what it is: not "broker unavailable", the broker was fine. (librdkafka may end an
    # order that was in flight with another local error; none of them may blame the broker.)
    reasons = {letter["error_reason"].split(": ", 1)[0] for letter in letters}
    assert f"topic {pipeline.topic} does not exist (deleted while orders were sent?)" in reasons, reasons
    assert not any(reason.startswith("Kafka broker unavailable") for reason in reasons), reasons


def test_a_dlq_deleted_under_dlq_consumer_follow_stops_it_in_one_sentence(pipeline: Pipeline, admin):
    pipeline.scripts.json("producer.py", "--count", 100, "--bad-ratio", 0.2, "--seed", 56)
    pipeline.consume()
    monitor = pipeline.scripts.spawn("dlq_consumer.py", "--follow", "--refresh", 1)

    def act():
        wait_for(lambda: "dead letters" in monitor.stdout(), 60, "the first view")
        delete(admin, pipeline.dlq_topic)

    sentence = sentence_after(monitor, act)
    assert sentence == f"error: {pipeline.dlq_topic} was deleted while it was being followed: stopped", sentence
