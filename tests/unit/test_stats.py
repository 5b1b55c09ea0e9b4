"""Exact totals, per-partition state, and dead-letter statistics."""

from __future__ import annotations

import json
import random
from decimal import Decimal

import pytest

from orders_dlq.changelog import PartitionState
from orders_dlq.dead_letter import DeadLetter, reason_category
from orders_dlq.monitor import DeadLetterStats
from orders_dlq.stats import Aggregate, Totals, combine

D = Decimal


def totals_of(*prices: str) -> Totals:
    totals = Totals()
    for price in prices:
        totals.add(D(price))
    return totals


def test_empty_totals():
    totals = Totals()
    assert totals.average is None
    assert totals.to_json() == {"count": 0, "total": "0.00", "average": None, "min": None, "max": None}


def test_add_is_exact():
    totals = totals_of("0.10", "0.20")
    assert totals.total == D("0.30") and str(totals.total) == "0.30"
    assert (totals.count, totals.min, totals.max) == (2, D("0.10"), D("0.20"))


def test_sum_of_many_cents_is_exact():
    totals = totals_of(*["0.10"] * 1000)
    assert str(totals.total) == "100.00"


def test_min_max_with_negative_and_equal_values():
    totals = totals_of("5.00", "-1.00", "5.00", "3.00")
    assert (totals.min, totals.max) == (D("-1.00"), D("5.00"))


@pytest.mark.parametrize("prices, average", [
    (("0.01", "0.02"), "0.02"),   # 0.015 -> half-even -> 0.02
    (("0.02", "0.03"), "0.02"),   # 0.025 -> 0.02 (not 0.03)
    (("0.03", "0.04"), "0.04"),   # 0.035 -> 0.04
    (("0.01", "0.01", "0.02"), "0.01"),  # 0.01333...
    (("0.02", "0.02", "0.01"), "0.02"),  # 0.01666...
    (("10.00", "0.00", "0.01"), "3.34"),  # 3.33666...
    (("1.00",), "1.00"),
    (("-0.01", "-0.02"), "-0.02"),
])
def test_average_rounds_half_even_to_the_cent(prices, average):
    assert str(totals_of(*prices).average) == average


def test_to_json_strings():
    assert totals_of("1.50", "2.25").to_json() == {"count": 2, "total": "3.75", "average": "1.88",
                                                   "min": "1.50", "max": "2.25"}


def test_json_round_trip():
    totals = totals_of("1.50", "2.25", "0.01")
    back = Totals.from_json(json.loads(json.dumps(totals.to_json())))
    assert back == totals
    assert Totals.from_json(Totals().to_json()) == Totals()


def test_merge_equals_adding_everything():
    a, b = totals_of("1.00", "9.00"), totals_of("0.50", "4.00", "12.00")
    a.merge(b)
    assert a == totals_of("1.00", "9.00", "0.50", "4.00", "12.00")
    assert (a.count, a.total, a.min, a.max) == (5, D("26.50"), D("0.50"), D("12.00"))


def test_merge_with_empty_on_either_side():
    filled = totals_of("2.00", "3.00")
    empty = Totals()
    empty.merge(filled)
    assert empty == filled
    filled.merge(Totals())
    assert filled == totals_of("2.00", "3.00")


def random_orders(seed: int, n: int):
    rng = random.Random(seed)
    return [(rng.choice("ABCD"), D(rng.randint(-500, 100_000)).scaleb(-2)) for _ in range(n)]


def test_aggregate_merge_of_partitions_equals_aggregating_all_at_once():
    orders = random_orders(5, 600)
    everything = Aggregate()
    parts = [Aggregate() for _ in range(4)]
    for i, (product, price) in enumerate(orders):
        everything.add_order(product, price)
        parts[i % 4].add_order(product, price)
    everything.dead_lettered = 10
    for i, part in enumerate(parts):
        part.dead_lettered = [1, 2, 3, 4][i]
    merged = combine(PartitionState(i, part) for i, part in enumerate(parts))
    assert merged.summary() == everything.summary()
    assert merged.processed == 600
    manual = Aggregate()
    for part in reversed(parts):
        manual.merge(part)
    assert manual.summary() == everything.summary()


def test_aggregate_summary_shape_and_round_trip():
    aggregate = Aggregate()
    aggregate.add_order("Toffee", D("1.00"))
    aggregate.add_order("Fudge", D("2.50"))
    aggregate.add_order("Toffee", D("3.00"))
    aggregate.dead_lettered = 2
    summary = aggregate.summary()
    assert summary == {
        "processed": 3, "dead_lettered": 2,
        "overall": {"count": 3, "total": "6.50", "average": "2.17", "min": "1.00", "max": "3.00"},
        "products": {
            "Fudge": {"count": 1, "total": "2.50", "average": "2.50", "min": "2.50", "max": "2.50"},
            "Toffee": {"count": 2, "total": "4.00", "average": "2.00", "min": "1.00", "max": "3.00"},
        },
    }
    assert list(summary["products"]) == ["Fudge", "Toffee"]
    assert Aggregate.from_summary(json.loads(json.dumps(summary))) == aggregate


def test_partition_state_encode_decode():
    state = PartitionState(42)
    state.aggregate.add_order("Nougat", D("0.30"))
    state.aggregate.dead_lettered = 1
    data = state.encode()
    assert isinstance(data, bytes)
    assert b" " not in data  # compact separators
    assert json.loads(data)["next_offset"] == 42
    back = PartitionState.decode(data)
    assert back == state
    assert str(back.aggregate.overall.total) == "0.30"


def test_partition_state_copy_is_independent():
    state = PartitionState(10)
    state.aggregate.add_order("Nougat", D("1.00"))
    copy = state.copy()
    assert copy == state
    copy.next_offset = 99
    copy.aggregate.add_order("Nougat", D("5.00"))
    copy.aggregate.add_order("Fudge", D("2.00"))
    copy.aggregate.dead_lettered += 3
    assert state.next_offset == 10
    assert state.aggregate.processed == 1 and state.aggregate.dead_lettered == 0
    assert set(state.aggregate.products) == {"Nougat"}
    assert state.aggregate.products["Nougat"] == totals_of("1.00")
    assert state.aggregate.overall == totals_of("1.00")


def test_empty_partition_state_round_trip():
    assert PartitionState.decode(PartitionState(0).encode()) == PartitionState(0)


# -- dead letter statistics ----------------------------------------------------------------------

def letter(reason="price must be positive: -1.00", stage="validate", topic="orders", product=None,
           retry_count=0, timestamp="2024-05-01T12:00:00+00:00") -> DeadLetter:
    return DeadLetter(error_reason=reason, error_type="InvalidOrder", error_stage=stage, original_topic=topic,
                      failed_by="g", retry_count=retry_count, error_timestamp=timestamp, product=product)


@pytest.mark.parametrize("reason, category", [
    ("price must be positive: -3.00", "price must be positive"),
    ("not a valid Avro order record: EOFError: Expected 6 bytes", "not a valid Avro order record"),
    ("empty value", "empty value"),
    ("a:b", "a:b"),
    ("", ""),
])
def test_reason_category(reason, category):
    assert reason_category(reason) == category


def test_empty_stats_summary():
    assert DeadLetterStats().summary() == {
        "total": 0, "by_reason": {}, "by_stage": {}, "by_original_topic": {}, "by_product": {},
        "retry_counts": {}, "first_error": None, "last_error": None}


def test_dead_letter_stats_counts():
    stats = DeadLetterStats()
    for item in [
        letter(product="Toffee", timestamp="2024-05-01T12:00:05+00:00"),
        letter(reason="price must be positive: -2.00", product="Toffee", retry_count=10),
        letter(reason="unknown product: 'X'", product="X", timestamp="2024-05-01T11:59:59.500000+00:00"),
        letter(reason="empty value", stage="deserialize", topic="other", retry_count=2, timestamp=""),
        letter(reason="boom: x", stage="process", retry_count=3, product="Fudge",
               timestamp="2024-05-01T12:00:10+00:00"),
        letter(reason="price must be positive: -5.00", retry_count=2),
    ]:
        stats.add(item)
    summary = stats.summary()
    assert summary == {
        "total": 6,
        "by_reason": {"price must be positive": 3, "unknown product": 1, "empty value": 1, "boom": 1},
        "by_stage": {"validate": 4, "deserialize": 1, "process": 1},
        "by_original_topic": {"orders": 5, "other": 1},
        "by_product": {"Toffee": 2, "(unknown)": 2, "X": 1, "Fudge": 1},
        "retry_counts": {"0": 2, "2": 2, "3": 1, "10": 1},
        "first_error": "2024-05-01T11:59:59.500000+00:00",
        "last_error": "2024-05-01T12:00:10+00:00",
    }
    assert list(summary["by_reason"]) == ["price must be positive", "unknown product", "empty value", "boom"]
    assert list(summary["retry_counts"]) == ["0", "2", "3", "10"]
    assert list(summary["by_product"])[:2] == ["Toffee", "(unknown)"]


def test_stats_without_any_timestamp():
    stats = DeadLetterStats()
    stats.add(letter(timestamp=""))
    assert (stats.first_error, stats.last_error) == (None, None)
    stats.add(letter(timestamp="2024-01-01T00:00:00+00:00"))
    assert stats.first_error == stats.last_error == "2024-01-01T00:00:00+00:00"
