"""Single crafted messages that used to stop the consumer for good: each is now dead-lettered once,
in both guarantees, and the valid orders around it count exactly."""

from __future__ import annotations

import hashlib
import os
import random
import time
from decimal import Decimal

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource
from conftest import a_valid_order, encode_order, produce, wait_for

from orders_dlq.codec import avro_long

pytestmark = pytest.mark.integration
GUARANTEES = ["exactly-once", "at-least-once"]


def huge_price_order() -> bytes:
    """A schema-valid order whose decimal price is 420 KB long (fastavro raised decimal.Overflow)."""
    good = a_valid_order()
    price = b"\x7f" * 420_000
    return b"".join((avro_long(len(good["order_id"])), good["order_id"].encode(), avro_long(6), b"Toffee",
                     avro_long(len(price)), price, avro_long(int(time.time() * 1_000_000))))


def by_offset(letters: list[dict]) -> dict[int, dict]:
    positions = [letter["original_offset"] for letter in letters]
    assert len(positions) == len(set(positions)), f"dead-lettered twice: {positions}"
    return {letter["original_offset"]: letter for letter in letters}


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_crafted_messages_are_dead_lettered_once_and_never_stop_the_consumer(pipeline, guarantee):
    good = [a_valid_order(f"{n}.25") for n in range(1, 5)]
    invalid = a_valid_order(product="Gravel")
    messages = [
        (b"g0", encode_order(good[0]), None),
        (b"huge-price", huge_price_order(), None),
        (b"g1", encode_order(good[1]), None),
        # 20 digits pass isdigit() but not an Avro int: the dead letter's encoding used to crash.
        (b"replays", encode_order(invalid), [("dlq.replay.count", b"9" * 20)]),
        (b"g2", encode_order(good[2]), [("dlq.replay.count", b"x"), ("kafka_dlt-original-partition", b"\x01")]),
        (None, None, [("__connect.errors.offset", b"-" * 10)]),
        (b"g3", encode_order(good[3]), None),
    ]
    offsets = produce(pipeline.bootstrap, pipeline.topic, messages)

    summary = pipeline.consume(guarantee=guarantee, timeout=120)

    assert summary["processed"] == 4 and summary["dead_lettered"] == 3
    assert summary["overall"]["total"] == str(sum(o["price"] for o in good))
    letters = by_offset(pipeline.dead_letters())
    assert set(letters) == {offsets[1], offsets[3], offsets[5]}
    huge = letters[offsets[1]]
    assert (huge["error_stage"], huge["price"]) == ("validate", None)
    assert huge["error_reason"].startswith("price exceeds the maximum of 10000.00: 1E+")
    assert huge["original_value"] == messages[1][1]
    replays = letters[offsets[3]]
    assert (replays["error_stage"], replays["replay_count"]) == ("validate", 0)
    assert replays["original_headers"] == [{"key": "dlq.replay.count", "value": b"9" * 20}]
    assert letters[offsets[5]]["error_stage"] == "deserialize"


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_dead_letter_too_large_for_the_dlq_is_written_reduced(pipeline, guarantee):
    """A 5 MB order passes the 1 MB orders topic compressed; its dead letter cannot pass anywhere."""
    big = b"\x00" * (5 * 1024 * 1024)  # trailing bytes after an empty record: a deserialize failure
    messages = [(b"g", encode_order(a_valid_order("3.00")), None), (b"big", big, [("trace", b"t-1")])]
    offsets = produce(pipeline.bootstrap, pipeline.topic, messages, **{"compression.type": "gzip"})

    summary = pipeline.consume(guarantee=guarantee, timeout=120)

    assert (summary["processed"], summary["dead_lettered"]) == (1, 1)
    letter = by_offset(pipeline.dead_letters())[offsets[1]]
    assert letter["error_stage"] == "deserialize" and letter["original_value"] is None
    assert "[dead letter reduced: original value of 5242880 bytes left out" in letter["error_reason"]
    assert letter["original_key"] == b"big" and letter["original_headers"] == [{"key": "trace", "value": b"t-1"}]
    headers = letter["_headers"]
    assert headers["dlq.reduced"] == b"value"
    assert headers["dlq.original.size"] == str(len(big)).encode()
    assert headers["dlq.original.sha256"] == hashlib.sha256(big).hexdigest().encode()


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_dlq_that_refuses_a_dead_letter_as_too_large_gets_it_reduced_instead_of_an_endless_retry(
        pipeline, scripts, admin, guarantee):
    """The orders topic takes 1 MB, the DLQ is lowered to 100 KB while the consumer runs (after it
    learnt the old limit): the broker refuses the dead letter, and the redone unit writes it reduced."""
    first = produce(pipeline.bootstrap, pipeline.topic, [(b"p", b"\x00POISON", None)])
    consumer = scripts.spawn("consumer_aggregation.py", "-g", pipeline.group, "--guarantee", guarantee,
                             "--idle-timeout", 8, "--json")
    try:
        wait_for(lambda: pipeline.read(pipeline.dlq_topic), 60, "the first dead letter")
        resource = ConfigResource(ConfigResource.Type.TOPIC, pipeline.dlq_topic, incremental_configs=[
            ConfigEntry("max.message.bytes", "100000", incremental_operation=AlterConfigOpType.SET)])
        admin.incremental_alter_configs([resource])[resource].result(30)
        incompressible = b"\x01" + random.Random(7).randbytes(300_000)
        later = produce(pipeline.bootstrap, pipeline.topic, [(b"big", incompressible, None),
                                                            (b"g", encode_order(a_valid_order("4.00")), None)])
        assert consumer.wait(120) == 0, consumer.stderr()[-3000:]
    finally:
        if consumer.running():
            consumer.kill()
    letters = by_offset(pipeline.dead_letters())
    assert set(letters) == {first[0], later[0]}
    reduced = letters[later[0]]
    assert reduced["original_value"] is None and reduced["_headers"]["dlq.reduced"] == b"value"
    assert reduced["_headers"]["dlq.original.sha256"] == hashlib.sha256(incompressible).hexdigest().encode()
    assert "refused a dead letter" in consumer.stderr()
    report = pipeline.report()
    assert report["overall"]["count"] == 1 and Decimal(report["overall"]["total"]) == Decimal("4.00")


def test_hostile_records_in_the_dlq_and_the_changelog_are_passed_over(pipeline, scripts):
    """Tombstones, random bytes and foreign keys in the DLQ and the state topic: counted, skipped."""
    produce(pipeline.bootstrap, pipeline.topic, [(b"g", encode_order(a_valid_order("2.50")), None)])
    hostile = [(None, None, None), (b"\xff\xfe", os.urandom(64), [("kafka_dlt-original-offset", b"\x01\x02")]),
               (b"k", b"x", [("dlq.format", b"orders_dlq.DeadLetter/avro")]),
               (b"k", b"not json", [("__connect.errors.topic", b"\xff")])]
    for topic in (pipeline.dlq_topic, pipeline.state_topic):
        producer = Producer({"bootstrap.servers": pipeline.bootstrap})
        for key, value, headers in hostile:
            producer.produce(topic, value=value, key=key, headers=headers, partition=0)
        assert producer.flush(30) == 0
    summary = pipeline.consume(timeout=120)
    assert summary["overall"]["total"] == "2.50"
    assert pipeline.report()["overall"]["total"] == "2.50"
    for args in ([], ["--json"], ["--jsonl"]):
        result = scripts.run("dlq_consumer.py", *args)
        assert "Traceback" not in result.stderr
    replay = scripts.run("dlq_replay.py", "--dry-run", "--json")
    assert "Traceback" not in replay.stderr


def test_a_compacted_dlq_stops_every_writer_at_start_with_one_sentence(pipeline, admin):
    """A DLQ made cleanup.policy=compact (by hand, or someone else's topic) refuses every dead letter
    without a key and keeps one per key: the consumer (both guarantees), the producer and
    dlq_producer.py stop at start with one sentence and consume or send nothing. The consumer used
    to take the broker's refusal for a size limit, shrink the dead letter until nothing was left,
    and end in a traceback."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, pipeline.dlq_topic, incremental_configs=[
        ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(30)
    pipeline.produce_raw([b"\x00not an order"], key=None)
    runs = [pipeline.scripts.run("consumer_aggregation.py", "-g", pipeline.group, "--guarantee", guarantee,
                                 "--idle-timeout", 3, expect=1) for guarantee in ("at-least-once", "exactly-once")]
    runs.append(pipeline.scripts.run("producer.py", "--count", 3, expect=1))
    runs += [pipeline.scripts.run("dlq_producer.py", action, expect=1)
             for action in ("--send-example", "--flush-spool")]
    for run in runs:
        lines = run.stderr.strip().splitlines()
        assert "Traceback" not in run.stderr and lines[-1].startswith("error:"), run.stderr
        assert "cleanup.policy=compact" in lines[-1] and pipeline.dlq_topic in lines[-1], lines[-1]
    assert all(offset < 0 for offset in pipeline.committed().values()), pipeline.committed()
    assert pipeline.read(pipeline.dlq_topic) == []
