"""dlq_replay.py end to end: fix a rule and replay, resume after SIGKILL, loop guard, dry run, Spring-style."""

from __future__ import annotations

import io
import json
import struct
import time
from collections import Counter
from decimal import Decimal

import fastavro
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic
from conftest import ORDER_SCHEMA, PRODUCTS, Pipeline, a_valid_order, classify, wait_for

pytestmark = pytest.mark.integration

REPLAY_HEADER = "dlq.replay.count"
WITH_UNOBTAINIUM = ",".join(sorted(PRODUCTS)) + ",Unobtainium"


def decode_order(value: bytes) -> dict:
    return fastavro.schemaless_reader(io.BytesIO(value), ORDER_SCHEMA)


def encode_order(order: dict) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, ORDER_SCHEMA, order)
    return buffer.getvalue()


def headers_of(message) -> dict:
    return dict(message.headers() or [])


def replayed_messages(pipeline: Pipeline, topic: str | None = None) -> list:
    return [m for m in pipeline.read(topic or pipeline.topic) if REPLAY_HEADER in headers_of(m)]


def test_fixed_rule_then_replay_adds_exactly_the_rejected_orders_once(pipeline: Pipeline):
    pipeline.scripts.json("producer.py", "--count", 300, "--bad-ratio", 0.3, "--seed", 21)
    first = pipeline.consume("--max-messages", 300)
    truth = pipeline.truth()
    assert (first["overall"]["count"], first["overall"]["total"]) == (truth["count"], truth["total"])
    letters = pipeline.dead_letters()
    unknown = [letter for letter in letters if letter["error_reason"].startswith("unknown product")]
    others = [letter for letter in letters if not letter["error_reason"].startswith("unknown product")]
    assert len(unknown) >= 5 and others
    orders_before = len(pipeline.read(pipeline.topic))

    result = pipeline.scripts.json("dlq_replay.py", "--reason", "unknown product")

    assert result["selected"] == result["replayed"] == len(unknown)
    assert result["skipped"] == len(others)
    assert result["held"] == result["unreplayable"] == result["unreadable"] == 0
    assert result["targets"] == {pipeline.topic: len(unknown)} and result["reached_end"]
    # Only the selected originals went back, byte for byte, where they came from, marked as replay 1.
    replayed = replayed_messages(pipeline)
    assert len(pipeline.read(pipeline.topic)) == orders_before + len(unknown)
    assert Counter((m.key(), m.value()) for m in replayed) == Counter(
        (letter["original_key"], letter["original_value"]) for letter in unknown)
    originals = {letter["original_value"]: letter for letter in unknown}
    for message in replayed:
        letter = originals[message.value()]
        assert headers_of(message)[REPLAY_HEADER] == b"1"
        assert message.timestamp()[1] == letter["original_timestamp"]
        assert message.partition() == letter["original_partition"]

    # The fix: the consumer now sells Unobtainium. Its totals gain exactly the replayed orders.
    second = pipeline.consume("--products", WITH_UNOBTAINIUM, "--max-messages", len(unknown))

    extra = [decode_order(letter["original_value"]) for letter in unknown]
    assert {order["product"] for order in extra} == {"Unobtainium"}
    extra_total = sum((order["price"] for order in extra), Decimal("0.00"))
    assert second["overall"]["count"] == truth["count"] + len(extra)
    assert second["overall"]["total"] == str(Decimal(truth["total"]) + extra_total)
    assert second["products"]["Unobtainium"]["count"] == len(extra)
    assert second["products"]["Unobtainium"]["total"] == str(extra_total)
    for name, expected in truth["products"].items():
        got = second["products"][name]
        assert (got["count"], got["total"]) == (expected["count"], expected["total"]), name
    assert len(pipeline.dead_letters()) == len(letters)  # accepted this time: no new dead letters

    # The cursor moved past the whole DLQ: replaying again sends nothing.
    again = pipeline.scripts.json("dlq_replay.py", "--reason", "unknown product")
    assert again["selected"] == again["replayed"] == 0 and again["reached_end"]
    assert len(replayed_messages(pipeline)) == len(unknown)


def test_replay_killed_half_way_then_rerun_sends_each_message_exactly_once(pipeline: Pipeline, admin):
    pipeline.scripts.json("producer.py", "--count", 300, "--poison-ratio", 1, "--seed", 5)
    pipeline.consume("--max-messages", 300)
    letters = pipeline.dead_letters()
    assert len(letters) == 300
    # Poison stays poison: count the redrive in a topic of its own.
    target = f"{pipeline.topic}.replayed"
    admin.create_topics([NewTopic(target, num_partitions=3, replication_factor=1)])[target].result(timeout=30)

    replay = pipeline.scripts.spawn("dlq_replay.py", "--to", target, "--rate", 60, "--commit-interval-ms", 200)
    try:
        wait_for(lambda: len(pipeline.read(target)) >= 40 or not replay.running(), 30,
                 "the first replayed messages in the target topic", interval=0.2)
        assert replay.running(), replay.stderr()
    finally:
        code = replay.kill()  # SIGKILL: no chance to finish the open batch
    assert code == -9, replay.stderr()
    committed_before_kill = len(pipeline.read(target))
    assert 0 < committed_before_kill < 300

    rerun = pipeline.scripts.json("dlq_replay.py", "--to", target)

    assert rerun["replayed"] == 300 - committed_before_kill and rerun["reached_end"]
    final = pipeline.read(target)
    assert Counter((m.key(), m.value()) for m in final) == Counter(
        (letter["original_key"], letter["original_value"]) for letter in letters)
    assert all(headers_of(m)[REPLAY_HEADER] == b"1" for m in final)
    assert pipeline.scripts.json("dlq_replay.py", "--to", target)["scanned"] == 0


def test_loop_guard_holds_a_message_that_keeps_failing(pipeline: Pipeline):
    poison = [b"\x00still poison " + bytes([i]) for i in range(3)]
    pipeline.produce_raw(poison, key=b"looping")
    pipeline.consume("--max-messages", 3)

    for replays in (1, 2):
        result = pipeline.scripts.json("dlq_replay.py", "--max-replays", 2)
        assert (result["replayed"], result["held"]) == (3, 0)
        # The consumer fails again and reads the replay count back into the new dead letter.
        pipeline.consume("--max-messages", 3)
        counts = Counter(letter["replay_count"] for letter in pipeline.dead_letters())
        assert counts == Counter({n: 3 for n in range(replays + 1)})

    run = pipeline.scripts.run("dlq_replay.py", "--max-replays", 2, "--json")

    result = json.loads(run.stdout)
    assert (result["selected"], result["replayed"], result["held"]) == (3, 0, 3)
    assert len(result["held_at"]) == 3 and all(p.startswith(f"{pipeline.dlq_topic}[") for p in result["held_at"])
    assert "held (replayed 2 time(s) already, --max-replays 2)" in run.stderr
    assert len(pipeline.read(pipeline.topic)) == 9  # 3 originals + 2 replays of each, not a third
    assert Counter(m.value() for m in replayed_messages(pipeline)) == Counter(poison * 2)
    assert len(pipeline.dead_letters()) == 9  # still in the DLQ


def test_dry_run_lists_the_selection_and_sends_and_commits_nothing(pipeline: Pipeline):
    pipeline.scripts.json("producer.py", "--count", 200, "--bad-ratio", 0.3, "--seed", 9)
    pipeline.consume("--max-messages", 200)
    letters = pipeline.dead_letters()
    unknown = [letter for letter in letters if letter["error_reason"].startswith("unknown product")]
    assert unknown
    orders_before = len(pipeline.read(pipeline.topic))

    text = pipeline.scripts.run("dlq_replay.py", "--reason", "UNKNOWN product", "--dry-run").stdout
    preview = pipeline.scripts.json("dlq_replay.py", "--reason", "unknown product", "--stage", "validate",
                                    "--dry-run")
    limited = pipeline.scripts.json("dlq_replay.py", "--product", "Unobtainium", "--dry-run", "--limit", 2)

    listed = [line for line in text.splitlines() if line.startswith(f"{pipeline.dlq_topic}[")]
    assert len(listed) == len(unknown)
    assert all(f"replay -> {pipeline.topic}" in line for line in listed)
    assert {line.split("order ")[1].split()[0] for line in listed} == {letter["order_id"] for letter in unknown}
    assert preview["dry_run"] and preview["replayed"] == 0
    assert preview["selected"] == preview["would_replay"] == len(preview["listing"]) == len(unknown)
    assert preview["skipped"] == len(letters) - len(unknown)
    assert {item["order_id"] for item in preview["listing"]} == {letter["order_id"] for letter in unknown}
    assert len(limited["listing"]) == 2 and not limited["reached_end"]
    assert len(pipeline.read(pipeline.topic)) == orders_before
    # Nothing was committed either: the real replay still finds the whole selection.
    result = pipeline.scripts.json("dlq_replay.py", "--reason", "unknown product")
    assert result["replayed"] == len(unknown)


def test_spring_style_dead_letter_is_replayed_to_its_original_topic(pipeline: Pipeline):
    order = a_valid_order("7.25", "Fudge")
    original_time = int(time.time() * 1000) - 3_600_000
    headers = [
        ("trace", b"abc"),
        ("kafka_dlt-original-topic", pipeline.topic.encode()),
        ("kafka_dlt-original-partition", struct.pack(">i", 1)),
        ("kafka_dlt-original-offset", struct.pack(">q", 42)),
        ("kafka_dlt-original-timestamp", struct.pack(">q", original_time)),
        ("kafka_dlt-original-timestamp-type", b"CreateTime"),
        ("kafka_dlt-original-consumer-group", b"spring-orders"),
        ("kafka_dlt-exception-fqcn", b"org.springframework.kafka.listener.ListenerExecutionFailedException"),
        ("kafka_dlt-exception-message", b"Listener failed; downstream service down"),
    ]
    producer = Producer({"bootstrap.servers": pipeline.bootstrap})
    producer.produce(pipeline.dlq_topic, key=b"spring-key", value=encode_order(order), headers=headers)
    assert producer.flush(30) == 0
    pipeline.scripts.run("dlq_producer.py", "--send-example")  # our example dead letter: it has no original value

    result = pipeline.scripts.json("dlq_replay.py", "--original-topic", pipeline.topic)

    assert (result["selected"], result["replayed"], result["unreplayable"]) == (2, 1, 1)
    [message] = pipeline.read(pipeline.topic)
    assert (message.key(), message.partition(), message.timestamp()[1]) == (b"spring-key", 1, original_time)
    assert message.headers() == [("trace", b"abc"), (REPLAY_HEADER, b"1")]
    assert classify(message.value())[0]["order_id"] == order["order_id"]
    summary = pipeline.consume("--max-messages", 1)
    assert summary["overall"]["count"] == 1 and summary["overall"]["total"] == "7.25"


def test_a_dead_letter_is_replayed_once_whatever_the_group_the_selection_or_the_start(pipeline: Pipeline):
    pipeline.scripts.json("producer.py", "--count", 200, "--bad-ratio", 0.3, "--seed", 29)
    pipeline.consume("--max-messages", 200)
    dlq = pipeline.read(pipeline.dlq_topic)
    unknown = [letter for letter in pipeline.dead_letters() if letter["error_reason"].startswith("unknown product")]
    assert len(unknown) >= 5
    # A second copy of one dead letter (at-least-once can write one): same original, another DLQ offset.
    copy = next(m for m in dlq if b"unknown product" in m.value())
    producer = Producer({"bootstrap.servers": pipeline.bootstrap})
    producer.produce(pipeline.dlq_topic, value=copy.value(), key=copy.key(), headers=copy.headers())
    assert producer.flush(30) == 0
    select = ["--reason", "unknown product", "--json"]

    first = pipeline.scripts.json("dlq_replay.py", *select[:-1])
    other_group = pipeline.scripts.json("dlq_replay.py", "-g", f"{pipeline.group}-other", *select[:-1])
    from_start = pipeline.scripts.json("dlq_replay.py", "--from-beginning", *select[:-1])
    preview = pipeline.scripts.json("dlq_replay.py", "-g", f"{pipeline.group}-preview", "--dry-run", *select[:-1])

    assert (first["replayed"], first["already_replayed"]) == (len(unknown), 1)
    assert (other_group["replayed"], other_group["already_replayed"]) == (0, len(unknown) + 1)
    assert (from_start["replayed"], from_start["already_replayed"]) == (0, len(unknown) + 1)
    assert (preview["would_replay"], preview["already_replayed"]) == (0, len(unknown) + 1)
    assert {entry["action"] for entry in preview["listing"]} == {"already_replayed"}
    replayed = replayed_messages(pipeline)
    assert len(replayed) == len(unknown)
    assert Counter(m.key() for m in replayed) == Counter(letter["original_key"] for letter in unknown)

    forced = pipeline.scripts.json("dlq_replay.py", "-g", f"{pipeline.group}-forced", "--force", *select[:-1])

    assert (forced["replayed"], forced["already_replayed"]) == (len(unknown) + 1, 0)
    assert len(replayed_messages(pipeline)) == 2 * len(unknown) + 1
    ledger = pipeline.read(f"{pipeline.dlq_topic}.status")
    assert len({m.key() for m in ledger}) == len(unknown)
    assert {json.loads(m.value())["status"] for m in ledger} == {"replayed"}
