"""The marks of dead letters: which key names a dead letter, and what a mark record holds."""

from __future__ import annotations

import json

from orders_dlq.dead_letter import DeadLetter
from orders_dlq.marks import DISCARDED, OPEN, REPLAYED, RESOLVED, Mark, mark_key, marks_topic, status_of


def letter(**fields) -> DeadLetter:
    return DeadLetter(error_reason="unknown product: 'X'", error_type="InvalidOrder", error_stage="validate",
                      original_topic="orders", failed_by="test", **fields)


def test_the_marks_topic_sits_beside_the_dlq():
    assert marks_topic("orders.DLQ") == "orders.DLQ.status"


def test_copies_of_one_original_share_a_key_wherever_they_are_in_the_dlq():
    original = letter(original_partition=2, original_offset=41)
    assert mark_key(original, "orders.DLQ", 0, 5) == mark_key(original, "orders.DLQ", 1, 99)
    assert json.loads(mark_key(original, "orders.DLQ", 0, 5)) == ["original", "orders", 2, 41]


def test_a_dead_letter_without_an_original_offset_is_named_by_its_dlq_position():
    never_sent = letter()  # a produce failure: the order never had an offset
    assert json.loads(mark_key(never_sent, "orders.DLQ", 1, 7)) == ["dlq", "orders.DLQ", 1, 7]
    assert mark_key(never_sent, "orders.DLQ", 1, 7) != mark_key(never_sent, "orders.DLQ", 1, 8)


def test_a_mark_survives_its_record():
    mark = Mark(RESOLVED, "2026-11-29T03:00:00+00:00", "alice", "fixed upstream")
    assert Mark.from_bytes(mark.to_bytes()) == mark
    replayed = Mark(REPLAYED, "2026-11-29T03:00:00+00:00", "g.replayer", target="orders")
    data = json.loads(replayed.to_bytes("orders.DLQ[0]@3"))
    assert data == {"status": "replayed", "at": "2026-11-29T03:00:00+00:00", "by": "g.replayer", "note": "",
                    "target": "orders", "dlq": "orders.DLQ[0]@3"}
    assert Mark.from_bytes(replayed.to_bytes("orders.DLQ[0]@3")) == replayed


def test_records_that_are_not_marks_are_not_read_as_marks():
    for value in (b"", b"\xff\x00", b"[]", b"{}", b'{"status": "open"}', b'{"status": "lost"}', b"null"):
        assert Mark.from_bytes(value) is None


def test_without_a_mark_a_dead_letter_is_open():
    marks = {b"a": Mark(DISCARDED, "", "bob")}
    assert status_of(marks, b"a") == DISCARDED
    assert status_of(marks, b"b") == OPEN
