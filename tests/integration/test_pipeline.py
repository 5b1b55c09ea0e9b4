"""The guide's scenarios, end to end, against the real broker."""

from __future__ import annotations

import json
import struct

import pytest
from confluent_kafka import Consumer, TopicPartition
from conftest import Pipeline, a_valid_order, assert_summary_matches_truth, classify, encode_order

pytestmark = pytest.mark.integration


def test_normal_operation_totals_are_exact_and_dlq_stays_empty(pipeline: Pipeline):
    sent = pipeline.scripts.json("producer.py", "--count", 500, "--seed", 7)
    assert sent["sent"] == 500 and sent["dead_lettered"] == 0 and sent["spooled"] == 0

    summary = pipeline.consume("--latency")

    truth = pipeline.truth()
    assert truth["count"] == 500
    assert_summary_matches_truth(summary, truth)
    assert summary["processed"] == 500 and summary["dead_lettered"] == 0
    assert pipeline.dead_letters() == []
    # --latency: every order's creation -> aggregation time, and how long the commits held the loop.
    latency, commits = summary["latency_ms"], summary["commit_ms"]
    assert latency["count"] == 500 and 0 < latency["p50"] <= latency["p99"] <= latency["p99.9"] <= latency["max"]
    assert commits["count"] >= 1 and 0 < commits["p50"] <= commits["max"]


def test_bad_data_format_each_message_dead_lettered_once_with_original_bytes(pipeline: Pipeline):
    valid = encode_order(a_valid_order("10.00"))
    garbage = [b"\x00\xffnot avro at all", valid[:7], b"", valid + b"\x01", json.dumps({"price": 1}).encode()]
    pipeline.produce_raw([valid])
    pipeline.produce_raw(garbage, key=b"bad-key", headers=[("trace", b"\x01\x02")])
    pipeline.produce_raw([encode_order(a_valid_order("5.55"))])

    summary = pipeline.consume()

    # The consumer kept going: both valid orders around the poison were aggregated.
    assert summary["overall"] == {"count": 2, "total": "15.55", "average": "7.78", "min": "5.55", "max": "10.00"}
    letters = pipeline.dead_letters()
    assert sorted(letter["original_value"] for letter in letters) == sorted(garbage)
    for letter in letters:
        assert letter["error_stage"] == "deserialize"
        assert letter["error_type"] == "DecodeError"
        assert letter["original_key"] == b"bad-key" and letter["_key"] == b"bad-key"
        assert letter["original_topic"] == pipeline.topic
        assert letter["original_headers"] == [{"key": "trace", "value": b"\x01\x02"}]
        assert letter["order_id"] is None and letter["price"] is None
        assert letter["failed_by"] == pipeline.group
        # The same context as Kafka headers, in Spring Kafka's encodings.
        headers = letter["_headers"]
        assert headers["kafka_dlt-original-topic"] == pipeline.topic.encode()
        assert struct.unpack(">i", headers["kafka_dlt-original-partition"])[0] == letter["original_partition"]
        assert struct.unpack(">q", headers["kafka_dlt-original-offset"])[0] == letter["original_offset"]
        assert headers["dlq.error.stage"] == b"deserialize"
        assert headers["trace"] == b"\x01\x02"
    # Each at its own original position: once each, no duplicates.
    positions = {(letter["original_partition"], letter["original_offset"]) for letter in letters}
    assert len(positions) == len(garbage) == len(letters)


def test_invalid_orders_go_to_dlq_at_validate_stage_and_are_excluded(pipeline: Pipeline):
    pipeline.scripts.json("producer.py", "--count", 400, "--bad-ratio", 0.25, "--seed", 11)

    summary = pipeline.consume()

    truth = pipeline.truth()
    assert truth["failures"]["validate"] > 50
    assert_summary_matches_truth(summary, truth)
    letters = pipeline.dead_letters()
    assert len(letters) == truth["failures"]["validate"] == summary["dead_lettered"]
    for letter in letters:
        assert letter["error_stage"] == "validate"
        assert letter["error_type"] == "InvalidOrder"
        assert classify(letter["original_value"])[1] == "validate"
        assert letter["error_reason"].split(": ")[0] in {
            "order_id is not a UUID", "unknown product", "price must be positive",
            "price exceeds the maximum of 10000.00"}
        assert letter["retry_count"] == 0


def test_dlq_consumer_shows_every_failure_and_its_statistics_match(pipeline: Pipeline):
    pipeline.scripts.json("producer.py", "--count", 200, "--bad-ratio", 0.2, "--poison-ratio", 0.05,
                          "--seed", 3)
    pipeline.consume()
    letters = pipeline.dead_letters()

    stats = pipeline.scripts.json("dlq_consumer.py")
    text = pipeline.scripts.run("dlq_consumer.py").stdout

    assert stats["total"] == len(letters) > 0
    stages = {}
    for letter in letters:
        stages[letter["error_stage"]] = stages.get(letter["error_stage"], 0) + 1
        assert letter["error_reason"] in text
    assert stats["by_stage"] == stages
    assert sum(stats["by_reason"].values()) == len(letters)
    assert stats["by_original_topic"] == {pipeline.topic: len(letters)}
    assert stats["retry_counts"] == {"0": len(letters)}
    assert stats["first_error"] == min(letter["error_timestamp"] for letter in letters)
    assert stats["last_error"] == max(letter["error_timestamp"] for letter in letters)
    lines = pipeline.scripts.run("dlq_consumer.py", "--jsonl", "--stage", "deserialize").stdout.splitlines()
    assert len(lines) == stages.get("deserialize", 0) > 0
    assert all(json.loads(line)["error_stage"] == "deserialize" for line in lines)


def test_reading_the_dlq_leaves_other_groups_positions_alone(pipeline: Pipeline, kafka_bootstrap, admin):
    pipeline.scripts.run("dlq_producer.py", "--send-example")
    pipeline.scripts.run("dlq_producer.py", "--send-example")
    monitor = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"monitor-{pipeline.group}",
                        "enable.auto.commit": False})
    partitions = [TopicPartition(pipeline.dlq_topic, p, 1 if p == 0 else 0) for p in range(3)]
    try:
        monitor.commit(offsets=partitions, asynchronous=False)
        before = [(tp.partition, tp.offset) for tp in monitor.committed(partitions, timeout=30)]

        pipeline.scripts.run("dlq_consumer.py")

        after = [(tp.partition, tp.offset) for tp in monitor.committed(partitions, timeout=30)]
    finally:
        monitor.close()
    assert after == before
    groups = admin.list_consumer_groups().result(timeout=30).valid
    assert not [g.group_id for g in groups if g.group_id.startswith("dlq-monitor-")]


def test_producer_with_broker_down_spools_and_flush_delivers_once(private_kafka, private_pipeline):
    pipeline = private_pipeline
    scripts = pipeline.scripts
    private_kafka.stop()

    result = scripts.run("producer.py", "--count", 25, "--seed", 5, "--delivery-timeout", 1,
                         "--json", expect=1, timeout=90)

    summary = json.loads(result.stdout)
    assert summary["sent"] == 0 and summary["spooled"] == 25 and summary["dead_lettered"] == 0
    assert "Kafka at" in result.stderr and "does not answer" in result.stderr
    private_kafka.start(timeout=120)

    flushed = scripts.json("dlq_producer.py", "--flush-spool")

    assert flushed == {"sent": 25, "already_in_kafka": 0, "remaining": 0}
    letters = pipeline.dead_letters()
    assert len(letters) == 25
    assert len({letter["order_id"] for letter in letters}) == 25
    for letter in letters:
        assert letter["error_stage"] == "produce" and letter["retry_count"] == 1
        assert letter["error_reason"].startswith("Kafka broker unavailable: not confirmed within the 1s")
        assert classify(letter["original_value"])[0]["order_id"] == letter["order_id"]
    again = scripts.json("dlq_producer.py", "--flush-spool")
    assert again == {"sent": 0, "already_in_kafka": 0, "remaining": 0}
    assert len(pipeline.dead_letters()) == 25
