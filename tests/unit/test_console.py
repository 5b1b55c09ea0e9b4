"""The console's pure parts: the chart's series, the hex view, who wrote a record, the filters, the token."""

from __future__ import annotations

from collections import Counter

import pytest
from starlette.datastructures import QueryParams

from orders_dlq.console.app import filters_from, token_matches
from orders_dlq.console.reader import BUCKET_SECONDS, MAX_POINTS, chart_series, hex_dump, kind_of
from orders_dlq.errors import UsageError


def test_chart_is_zero_filled_per_minute_over_the_last_hour_at_least():
    now = 1_000_000
    times, series = chart_series({now - 2: Counter(a=3), now: Counter(a=1, b=2)}, ["a", "b"], now)
    assert len(times) == 60 and times[-1] == now * BUCKET_SECONDS
    assert series["a"][-3:] == [3, 0, 1] and series["b"][-3:] == [0, 0, 2]
    assert sum(series["a"]) == 4


def test_a_week_of_minutes_is_summed_into_wider_steps_without_losing_a_count():
    now = 2_000_000
    buckets = {minute: Counter(a=1) for minute in range(now - 7 * 24 * 60, now + 1)}
    times, series = chart_series(buckets, ["a"], now)
    assert len(times) <= MAX_POINTS
    assert sum(series["a"]) == len(buckets)
    assert times[1] - times[0] == 15 * BUCKET_SECONDS


def test_hex_dump_shows_offset_hex_and_printable_text_and_is_cut():
    lines = hex_dump(b"\x00ABC" + bytes(range(28)), limit=16)
    assert lines[0].startswith("00000000  00 41 42 43 00 01") and lines[0].endswith(".ABC............")
    assert lines[-1] == "... 16 more byte(s)"
    assert hex_dump(None) == []


@pytest.mark.parametrize(("headers", "value", "kind"), [
    ([("dlq.format", b"orders_dlq.DeadLetter/avro")], b"x", "orders_dlq"),
    ([("kafka_dlt-exception-message", b"boom")], b"x", "spring"),
    ([("kafka_original-topic", b"orders"), ("kafka_exception-message", b"boom")], b"x", "spring"),  # @RetryableTopic
    ([("__connect.errors.topic", b"t")], b"x", "connect"),
    (None, None, "tombstone"),
    ([("other", b"1")], b"\xff", "foreign"),
])
def test_who_wrote_a_record(headers, value, kind):
    assert kind_of(headers, value) == kind


def test_filters_are_the_cli_selection_plus_a_status():
    filters = filters_from(QueryParams("status=all&reason=unknown&stage=validate&header=a=b&since=2026-11-28T09:00Z"))
    assert filters.status == "all" and filters.narrowed
    assert filters.selection.reason == "unknown" and filters.selection.headers == [("a", "b")]
    assert filters_from(QueryParams("")).status == "open" and not filters_from(QueryParams("")).narrowed
    for bad in ("status=gone", "stage=nope", "since=yesterday", "header=novalue",
                "since=2026-11-29T00:00Z&until=2026-11-28T00:00Z"):
        with pytest.raises(UsageError):
            filters_from(QueryParams(bad))


def test_token_comparison():
    assert token_matches("abc", "abc")
    assert not token_matches("abd", "abc") and not token_matches(None, "abc") and not token_matches("", "abc")


def test_bytes_are_text_only_when_readable():
    from orders_dlq.console.reader import text_or_hex

    assert text_or_hex(b"orders")["text"] == "orders"
    spring_partition = (3).to_bytes(4, "big")  # valid UTF-8, but control characters
    assert text_or_hex(spring_partition) == {"size": 4, "text": None, "hex": "00000003", "cut": False}
    assert text_or_hex(None) is None
