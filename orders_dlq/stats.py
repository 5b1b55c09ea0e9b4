"""Exact running aggregates of orders (decimal money, per product) and a bounded latency sample."""

from __future__ import annotations

import random
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
        return {"count": self.count, "p50": pick(0.50), "p99": pick(0.99), "p99.9": pick(0.999), "max": pick(1.0)}


def combine(states) -> Aggregate:
    """The totals of several partitions (or several instances) as one aggregate."""
    combined = Aggregate()
    for state in states:
        combined.merge(state.aggregate)
    return combined
