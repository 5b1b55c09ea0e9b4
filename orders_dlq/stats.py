"""Exact running aggregates of orders, per input partition, and statistics of dead letters."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

CENT = Decimal("0.01")
ZERO = Decimal("0.00")


@dataclass
class Totals:
    """Count, sum, min and max of prices; the average is derived, rounded half-even to the cent."""

    count: int = 0
    total: Decimal = ZERO
    min: Decimal | None = None
    max: Decimal | None = None

    def add(self, price: Decimal) -> None:
        self.count += 1
        self.total += price
        if self.min is None or price < self.min:
            self.min = price
        if self.max is None or price > self.max:
            self.max = price

    def merge(self, other: Totals) -> None:
        self.count += other.count
        self.total += other.total
        for value in (other.min, other.max):
            if value is not None:
                self.min = value if self.min is None or value < self.min else self.min
                self.max = value if self.max is None or value > self.max else self.max

    @property
    def average(self) -> Decimal | None:
        if not self.count:
            return None
        return (self.total / self.count).quantize(CENT, rounding=ROUND_HALF_EVEN)

    def to_json(self) -> dict:
        def text(value):
            return None if value is None else str(value)
        return {"count": self.count, "total": str(self.total), "average": text(self.average),
                "min": text(self.min), "max": text(self.max)}

    @classmethod
    def from_json(cls, data: dict) -> Totals:
        def number(value):
            return None if value is None else Decimal(value)
        return cls(data["count"], Decimal(data["total"]), number(data["min"]), number(data["max"]))


@dataclass
class Aggregate:
    """Overall and per-product totals, plus how many messages ended where."""

    processed: int = 0
    dead_lettered: int = 0
    overall: Totals = field(default_factory=Totals)
    products: dict[str, Totals] = field(default_factory=dict)

    def add_order(self, product: str, price: Decimal) -> None:
        self.processed += 1
        self.overall.add(price)
        totals = self.products.get(product)
        if totals is None:
            totals = self.products[product] = Totals()
        totals.add(price)

    def merge(self, other: Aggregate) -> None:
        self.processed += other.processed
        self.dead_lettered += other.dead_lettered
        self.overall.merge(other.overall)
        for product, totals in other.products.items():
            self.products.setdefault(product, Totals()).merge(totals)

    def summary(self) -> dict:
        """The shape `consumer_aggregation.py --json` prints; money as decimal strings."""
        return {
            "processed": self.processed,
            "dead_lettered": self.dead_lettered,
            "overall": self.overall.to_json(),
            "products": {name: self.products[name].to_json() for name in sorted(self.products)},
        }

    @classmethod
    def from_summary(cls, data: dict) -> Aggregate:
        return cls(data["processed"], data["dead_lettered"], Totals.from_json(data["overall"]),
                   {name: Totals.from_json(t) for name, t in data["products"].items()})


@dataclass
class PartitionState:
    """The aggregate of one input partition up to (excluding) next_offset: the changelog's unit."""

    next_offset: int
    aggregate: Aggregate = field(default_factory=Aggregate)
    # The input topic's id when this state was written: a topic deleted and created again under
    # the same name has another id, and its offsets start over.
    topic_id: str | None = None
    # The committed offset the unit of work that wrote this state started from. At-least-once
    # writes the state before the offsets, so after a crash the group's committed offset is this
    # one; any other offset below next_offset was set by someone else (an offset reset).
    unit_start: int | None = None

    def encode(self) -> bytes:
        extra = {}
        if self.topic_id is not None:
            extra["topic_id"] = self.topic_id
        if self.unit_start is not None:
            extra["unit_start"] = self.unit_start
        return json.dumps({"next_offset": self.next_offset, **extra, **self.aggregate.summary()},
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> PartitionState:
        raw = json.loads(data)
        return cls(raw["next_offset"], Aggregate.from_summary(raw), raw.get("topic_id"), raw.get("unit_start"))

    def copy(self) -> PartitionState:
        return PartitionState.decode(self.encode())


class LatencyReservoir:
    """A bounded uniform sample (reservoir sampling) of latencies in ms: memory stays flat however many orders."""

    def __init__(self, size: int = 100_000, seed: int = 0):
        self.size = size
        self.count = 0
        self.samples: list[float] = []
        self._random = random.Random(seed)

    def add(self, ms: float) -> None:
        self.count += 1
        if len(self.samples) < self.size:
            self.samples.append(ms)
        else:
            slot = self._random.randrange(self.count)
            if slot < self.size:
                self.samples[slot] = ms

    def summary(self) -> dict:
        ordered = sorted(self.samples)

        def pick(q):
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else None
        return {"count": self.count, "p50": pick(0.50), "p99": pick(0.99), "max": pick(1.0)}


def combine(states) -> Aggregate:
    """The totals of several partitions (or several instances) as one aggregate."""
    combined = Aggregate()
    for state in states:
        combined.merge(state.aggregate)
    return combined


def reason_category(reason: str) -> str:
    """The rule part of a reason ("price must be positive: -3.00" counts as "price must be positive")."""
    return reason.split(": ", 1)[0]


class DeadLetterStats:
    """Counts of dead letters by reason, stage, original topic, product and retry count."""

    def __init__(self):
        self.total = 0
        self.by_reason: Counter = Counter()
        self.by_stage: Counter = Counter()
        self.by_original_topic: Counter = Counter()
        self.by_product: Counter = Counter()
        self.retry_counts: Counter = Counter()
        self.first_error: str | None = None
        self.last_error: str | None = None

    def add(self, dead_letter) -> None:
        self.total += 1
        self.by_reason[reason_category(dead_letter.error_reason)] += 1
        self.by_stage[dead_letter.error_stage] += 1
        self.by_original_topic[dead_letter.original_topic] += 1
        self.by_product[dead_letter.product or "(unknown)"] += 1
        self.retry_counts[str(dead_letter.retry_count)] += 1
        stamp = dead_letter.error_timestamp or None
        if stamp:
            self.first_error = min(filter(None, (self.first_error, stamp)))
            self.last_error = max(filter(None, (self.last_error, stamp)))

    def summary(self) -> dict:
        def ordered(counter):
            return dict(counter.most_common())
        return {
            "total": self.total,
            "by_reason": ordered(self.by_reason),
            "by_stage": ordered(self.by_stage),
            "by_original_topic": ordered(self.by_original_topic),
            "by_product": ordered(self.by_product),
            "retry_counts": dict(sorted(self.retry_counts.items(), key=lambda kv: int(kv[0]))),
            "first_error": self.first_error,
            "last_error": self.last_error,
        }
