"""Selecting dead letters by DLQ offset: --from-offset / --to-offset, per partition or for all."""

from __future__ import annotations

import argparse

import pytest

from orders_dlq.dead_letter import DeadLetter
from orders_dlq.errors import UsageError
from orders_dlq.selection import Selection, add_selection_arguments, parse_offset, selection_from_args

LETTER = DeadLetter(error_reason="unknown product: 'X'", error_type="InvalidOrder", error_stage="validate",
                    original_topic="orders", failed_by="test")


def selected(selection: Selection, partition: int, offset: int) -> bool:
    return selection.matches(LETTER, partition, offset, None)


@pytest.mark.parametrize("raw, parsed", [("17", (None, 17)), ("2:0", (2, 0)), (" 3:40 ", (3, 40)), ("0", (None, 0))])
def test_offsets_parse_with_or_without_a_partition(raw, parsed):
    assert parse_offset(raw) == parsed


@pytest.mark.parametrize("raw", ["", "x", "1:x", "-1", "1:-5", "-2:5", "1:2:3", "1.5"])
def test_bad_offsets_are_refused(raw):
    with pytest.raises(ValueError):
        parse_offset(raw)


def test_bounds_are_inclusive_in_every_partition():
    selection = Selection(from_offsets=[(None, 10)], to_offsets=[(None, 20)])
    assert [offset for offset in range(30) if selected(selection, 0, offset)] == list(range(10, 21))
    assert selected(selection, 5, 10) and selected(selection, 5, 20) and not selected(selection, 5, 21)


def test_a_partition_bound_wins_over_the_general_one_for_that_partition_only():
    selection = Selection(from_offsets=[(None, 10), (1, 50)])
    assert selected(selection, 0, 10) and not selected(selection, 0, 9)
    assert not selected(selection, 1, 49) and selected(selection, 1, 50)


def test_only_partition_bounds_limit_the_selection_to_the_partitions_named():
    selection = Selection(from_offsets=[(2, 5)], to_offsets=[(3, 7)])
    assert not selected(selection, 0, 6)
    assert selected(selection, 2, 5) and not selected(selection, 2, 4)
    assert selected(selection, 3, 0) and selected(selection, 3, 7) and not selected(selection, 3, 8)


def test_no_bounds_select_every_offset_of_every_partition():
    assert all(selected(Selection(), partition, offset) for partition in range(3) for offset in (0, 1, 10**12))


@pytest.mark.parametrize("flags, message", [
    (["--from-offset", "30", "--to-offset", "20"], "--from-offset 30 is after --to-offset 20"),
    (["--from-offset", "1:30", "--to-offset", "1:20"], "for partition 1"),
    (["--since", "2026-11-28T10:00Z", "--until", "2026-11-28T10:00Z"], "--since must be before --until"),
])
def test_a_contradictory_selection_is_one_usage_error(flags, message):
    parser = argparse.ArgumentParser()
    add_selection_arguments(parser, offsets=True)
    with pytest.raises(UsageError, match=message):
        selection_from_args(parser.parse_args(flags))


def test_bounds_of_different_partitions_do_not_contradict_each_other():
    parser = argparse.ArgumentParser()
    add_selection_arguments(parser, offsets=True)
    selection = selection_from_args(parser.parse_args(["--from-offset", "0:30", "--to-offset", "1:20"]))
    assert selected(selection, 0, 30) and selected(selection, 1, 20) and not selected(selection, 1, 21)


def test_a_dlq_message_time_beyond_any_date_is_no_time_and_no_error():
    from dataclasses import replace
    from datetime import UTC, datetime

    from orders_dlq.selection import error_time

    foreign = replace(LETTER, error_timestamp="")  # a Spring/Connect dead letter: only the message time
    assert error_time(foreign, 2**62) is None  # year ~146 million: no datetime holds it
    since = Selection(since=datetime(2026, 1, 1, tzinfo=UTC))
    assert not since.matches(foreign, 0, 0, 2**62)  # unknown time: not selected by a time bound


# -- finding: key, order id, headers, text, status ---------------------------------------------------

def found(selection: Selection, dead_letter: DeadLetter) -> bool:
    return selection.matches(dead_letter, 0, 0, None)


def test_key_order_id_and_headers_must_match_exactly():
    letter = DeadLetter(error_reason="r", error_type="T", error_stage="validate", original_topic="orders",
                        failed_by="test", order_id="abc", original_key=b"k-1",
                        original_headers=[("tenant", b"blue"), ("trace", None)])
    assert found(Selection(key="k-1"), letter) and not found(Selection(key="k-"), letter)
    assert found(Selection(order_id="abc"), letter) and not found(Selection(order_id="ab"), letter)
    assert found(Selection(headers=[("tenant", "blue")]), letter)
    assert not found(Selection(headers=[("tenant", "blue"), ("region", "eu")]), letter)
    assert not found(Selection(headers=[("tenant", "Blue")]), letter)


def test_grep_looks_in_the_reason_the_error_type_and_the_original_value_in_any_case():
    letter = DeadLetter(error_reason="unknown product: 'X'", error_type="InvalidOrder", error_stage="validate",
                        original_topic="orders", failed_by="test", original_value=b'{"customer": "ACME Ltd"}')
    for text in ("UNKNOWN PRODUCT", "invalidorder", "acme"):
        assert found(Selection(grep=text), letter), text
    assert not found(Selection(grep="fudge"), letter)
    assert not found(Selection(grep="acme"), DeadLetter(error_reason="r", error_type="T", error_stage="produce",
                                                        original_topic="orders", failed_by="test"))


def test_a_status_needs_the_marks_and_all_does_not():
    from orders_dlq.marks import RESOLVED, Mark, mark_key
    from orders_dlq.selection import DlqRecord
    record = DlqRecord(LETTER, "orders.DLQ", 1, 7, None)
    marks = {mark_key(LETTER, "orders.DLQ", 1, 7): Mark(RESOLVED, "", "alice")}
    assert Selection(status="resolved").selects(record, marks)
    assert not Selection(status="open").selects(record, marks)
    assert Selection(status="open").selects(record, {})
    assert Selection().selects(record)  # status all: no marks needed
    with pytest.raises(ValueError):
        Selection(status="open").selects(record)


@pytest.mark.parametrize("raw, parsed", [("a=b", ("a", "b")), ("a=", ("a", "")), ("a=b=c", ("a", "b=c"))])
def test_headers_parse_as_name_equals_value(raw, parsed):
    from orders_dlq.selection import parse_header
    assert parse_header(raw) == parsed


@pytest.mark.parametrize("raw", ["", "a", "=b"])
def test_bad_headers_are_refused(raw):
    from orders_dlq.selection import parse_header
    with pytest.raises(ValueError):
        parse_header(raw)


def test_an_unknown_status_or_an_empty_text_is_a_usage_error():
    for selection in (Selection(status="done"), Selection(grep=""), Selection(key="")):
        with pytest.raises(UsageError):
            selection.validate()
