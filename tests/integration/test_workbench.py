"""The DLQ workbench end to end against the real broker: marks, find and seek, resolve, fix and replay."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Producer
from conftest import Pipeline, a_valid_order, encode_order

from orders_dlq.codec import dead_letter_codec
from orders_dlq.dead_letter import DeadLetter, DeadLetterCodec
from orders_dlq.marks import OPEN, REPLAYED, RESOLVED, Mark, mark_key, marks_topic, read_marks, status_of, write_marks
from orders_dlq.settings import KafkaSettings

pytestmark = pytest.mark.integration

# Recent: the DLQ's 7-day retention would delete records whose timestamps are older.
START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def settings_of(pipeline: Pipeline) -> KafkaSettings:
    return KafkaSettings(pipeline.bootstrap, pipeline.topic, pipeline.dlq_topic)


def letter(pipeline: Pipeline, number: int, reason="unknown product: 'Unobtainium'", value=None, **fields):
    """A validate dead letter of a real order (original offset `number`), as the consumer writes them."""
    order = a_valid_order(product="Unobtainium")
    return DeadLetter(error_reason=reason, error_type="InvalidOrder", error_stage="validate",
                      original_topic=pipeline.topic, failed_by="test", order_id=order["order_id"],
                      product=order["product"], price=order["price"], original_partition=0, original_offset=number,
                      original_key=f"key-{number}".encode(), original_value=value or encode_order(order),
                      error_timestamp=(START + timedelta(minutes=number)).isoformat(), **fields)


def fill_dlq(pipeline: Pipeline, letters: list[DeadLetter], garbage: bool = True) -> None:
    """Write dead letters to DLQ partition 0 at offsets 0.., one minute apart, then foreign records."""
    codec = DeadLetterCodec(dead_letter_codec())
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True})
    for number, dead_letter in enumerate(letters):
        producer.produce(pipeline.dlq_topic, partition=0, value=codec.encode(dead_letter), key=dead_letter.original_key,
                         headers=dead_letter.headers(),
                         timestamp=int((START + timedelta(minutes=number)).timestamp() * 1000))
    if garbage:  # bad input is shown as unreadable and breaks nothing
        stamp = int((START + timedelta(minutes=len(letters))).timestamp() * 1000)
        producer.produce(pipeline.dlq_topic, partition=0, value=b"\x00random bytes", timestamp=stamp)
        producer.produce(pipeline.dlq_topic, partition=0, value=None, key=b"tombstone", timestamp=stamp)
    assert producer.flush(30) == 0


def listed(pipeline: Pipeline, *args) -> list[dict]:
    lines = pipeline.scripts.run("dlq_consumer.py", "--jsonl", *args).stdout.splitlines()
    return [json.loads(line) for line in lines]


def offsets(found: list[dict]) -> list[int]:
    return [int(entry["dlq_position"].rsplit("@", 1)[1]) for entry in found]


def test_marks_are_read_back_latest_first_and_a_tombstone_reopens(pipeline: Pipeline):
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


def test_find_by_key_order_id_header_text_seek_by_offset_and_time_tail_and_status(pipeline: Pipeline):
    letters = [letter(pipeline, n) for n in range(6)]
    letters[1].original_headers = [("tenant", b"blue"), ("trace", b"x")]
    letters[2] = letter(pipeline, 2, reason="price must be positive: -1.00",
                        value=b'{"note": "a Needle in a JSON payload"}')
    fill_dlq(pipeline, letters)
    write_marks(settings_of(pipeline), pipeline.dlq_topic,
                [(mark_key(letters[5], pipeline.dlq_topic, 0, 5), Mark(RESOLVED, "2026-11-29T03:00:00Z", "alice"))])

    assert offsets(listed(pipeline, "--key", "key-3")) == [3]
    assert [e["order_id"] for e in listed(pipeline, "--order-id", letters[4].order_id)] == [letters[4].order_id]
    assert offsets(listed(pipeline, "--header", "tenant=blue")) == [1]
    assert listed(pipeline, "--header", "tenant=red") == []
    assert offsets(listed(pipeline, "--grep", "needle")) == [2]         # in the original value, any case
    assert offsets(listed(pipeline, "--grep", "MUST BE POSITIVE")) == [2]  # in the reason
    # Seek: an offset, and the broker's time index (records one minute apart from START).
    assert offsets(listed(pipeline, "--offset", 3)) == [3, 4]                 # 5 is resolved: not open
    assert offsets(listed(pipeline, "--from-time", (START + timedelta(minutes=2)).isoformat())) == [2, 3, 4]
    assert offsets(listed(pipeline, "--tail", 2)) == [3, 4]
    assert offsets(listed(pipeline, "--tail", 2, "--status", "all")) == [4, 5]
    assert offsets(listed(pipeline, "--status", "resolved")) == [5]
    assert [e["status"] for e in listed(pipeline, "--status", "all")] == [OPEN] * 5 + [RESOLVED]

    summary = pipeline.scripts.json("dlq_consumer.py")
    assert (summary["total"], summary["status"]) == (5, "open")
    assert summary["by_status"] == {"open": 5, "replayed": 0, "resolved": 1, "discarded": 0}
    text = pipeline.scripts.run("dlq_consumer.py", "--key", "key-5", "--status", "all")
    assert "resolved by alice" in text.stdout
    assert "2 message(s)" in text.stderr and "could not be read as dead letters" in text.stderr


def test_resolve_and_discard_with_dry_run_then_stats_count_open_and_replay_needs_force(pipeline: Pipeline):
    letters = [letter(pipeline, n) for n in range(4)]
    letters[3] = letter(pipeline, 3, reason="price must be positive: -1.00")
    fill_dlq(pipeline, letters)

    preview = pipeline.scripts.run("dlq_replay.py", "--reason", "unknown product", "--resolve", "--note",
                                   "catalogue fixed", "--by", "alice", "--dry-run")
    assert [line.split()[0] for line in preview.stdout.splitlines()[:-1]] == [
        f"{pipeline.dlq_topic}[0]@{n}" for n in range(3)]
    assert "would mark 3" in preview.stdout
    assert read_marks(settings_of(pipeline), pipeline.dlq_topic) == {}

    resolved = pipeline.scripts.json("dlq_replay.py", "--key", "key-0", "--resolve", "--note", "catalogue fixed",
                                     "--by", "alice")
    discarded = pipeline.scripts.json("dlq_replay.py", "--reason", "price", "--discard")
    again = pipeline.scripts.json("dlq_replay.py", "--key", "key-0", "--resolve")

    assert (resolved["marked"], discarded["marked"], again["marked"]) == (1, 1, 0)
    marks = read_marks(settings_of(pipeline), pipeline.dlq_topic)
    assert marks[mark_key(letters[0], pipeline.dlq_topic, 0, 0)].note == "catalogue fixed"
    assert marks[mark_key(letters[0], pipeline.dlq_topic, 0, 0)].by == "alice"
    assert marks[mark_key(letters[3], pipeline.dlq_topic, 0, 3)].status == "discarded"
    summary = pipeline.scripts.json("dlq_consumer.py")
    assert summary["total"] == 2 and summary["by_stage"] == {"validate": 2}
    assert summary["by_status"] == {"open": 2, "replayed": 0, "resolved": 1, "discarded": 1}

    refused = pipeline.scripts.json("dlq_replay.py", "--key", "key-0")
    forced = pipeline.scripts.json("dlq_replay.py", "--key", "key-0", "--force", "-g", f"{pipeline.group}-forced")

    assert (refused["replayed"], refused["already_handled"]) == (0, 1)
    assert (forced["replayed"], forced["already_handled"]) == (1, 0)
    assert status_of(read_marks(settings_of(pipeline), pipeline.dlq_topic),
                     mark_key(letters[0], pipeline.dlq_topic, 0, 0)) == REPLAYED


def test_export_edit_and_replay_from_file_once_and_an_invalid_edit_is_refused_by_line(pipeline: Pipeline, tmp_path):
    letters = [letter(pipeline, n) for n in range(3)]
    fill_dlq(pipeline, letters)
    export = tmp_path / "fix.jsonl"
    pipeline.scripts.run("dlq_consumer.py", "--export", export)
    exported = [json.loads(line) for line in export.read_text().splitlines()]
    assert [e["order"]["product"] for e in exported] == ["Unobtainium"] * 3
    assert [e["dlq_offset"] for e in exported] == [0, 1, 2]
    assert exported[0]["mark_key"] == mark_key(letters[0], pipeline.dlq_topic, 0, 0).decode()

    for entry in exported:
        entry["order"]["product"] = "Toffee"
    broken = [dict(entry, order=dict(entry["order"])) for entry in exported]
    broken[1]["order"]["price"] = "-3.00"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(entry) + "\n" for entry in broken))
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(entry) + "\n" for entry in exported[:2]))

    refused = pipeline.scripts.run("dlq_replay.py", "--from-file", bad, expect=2)
    assert "line 2" in refused.stderr and "price must be positive" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert pipeline.read(pipeline.topic) == []

    first = pipeline.scripts.json("dlq_replay.py", "--from-file", edited)
    rerun = pipeline.scripts.json("dlq_replay.py", "--from-file", edited)

    assert (first["replayed"], rerun["replayed"], rerun["already_replayed"]) == (2, 0, 2)
    sent = pipeline.read(pipeline.topic)
    assert len(sent) == 2
    by_lineage = {dict(m.headers())["dlq.replay.of"].decode(): m for m in sent}
    assert set(by_lineage) == {f"{pipeline.dlq_topic}[0]@0", f"{pipeline.dlq_topic}[0]@1"}
    for position, message in by_lineage.items():
        assert message.key() == f"key-{position[-1]}".encode()
        assert dict(message.headers())["dlq.replay.count"] == b"1"
    from conftest import classify
    assert all(classify(m.value())[1] is None and classify(m.value())[0]["product"] == "Toffee" for m in sent)
    marks = read_marks(settings_of(pipeline), pipeline.dlq_topic)
    assert [status_of(marks, mark_key(letters[n], pipeline.dlq_topic, 0, n)) for n in range(3)] == [
        REPLAYED, REPLAYED, OPEN]
    assert pipeline.scripts.json("dlq_consumer.py")["total"] == 1
