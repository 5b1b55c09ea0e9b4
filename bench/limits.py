#!/usr/bin/env python3
"""The limits: minimal confluent-kafka loops with no framework, each run as its own process.

    python bench/limits.py produce  -b HOST:PORT -t TOPIC --count N
    python bench/limits.py original -b HOST:PORT -t TOPIC --count N
    python bench/limits.py consume  -b HOST:PORT -t TOPIC --count N -g GROUP
    python bench/limits.py forward  -b HOST:PORT -t TOPIC --count N -g GROUP --to TOPIC.DLQ

Each prints one JSON line on stdout: {"count": ..., "seconds": ..., "rate": ...}.

The orders are generated and Avro-encoded *before* the clock starts (the producer loops time only
produce/poll/flush). The producer settings are the project's durability settings, copied here on
purpose (no import of the toolkit's config code); bench/run.py checks that they still match
orders_dlq.kafka.reliable_producer_config.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from decimal import Decimal
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, Producer

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "schemas" / "order.avsc"

# The durability settings of orders_dlq.kafka.reliable_producer_config (checked by bench/run.py).
DURABILITY = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": 30000,  # producer.py's default --delivery-timeout of 30 s
}
BATCH = 1000  # messages per consume() call, as consumer_aggregation.py's default --batch-size


def steady_rate(points: list[tuple[float, int]], total: int, low: float = 0.1, high: float = 0.9) -> float | None:
    """Messages/s between the moments `low` and `high` of `total` were done (linear interpolation).

    points: (time in seconds, messages done by then), ascending. This leaves out start-up (group
    join, restore) and the tail (last partial batch, idle detection), which are fixed costs.
    """
    def when(mark):
        for (t0, p0), (t1, p1) in zip(points, points[1:], strict=False):
            if p0 <= mark <= p1 and p1 > p0:
                return t0 + (t1 - t0) * (mark - p0) / (p1 - p0)
        return None

    if len(points) < 2:
        return None
    start = max(low * total, points[0][1])
    end = high * total
    if end - start < 0.3 * total:
        return None
    if sum(1 for _, p in points if start <= p <= end) < 3:
        return None  # too few samples inside the window to tell a rate (tiny runs)
    t_start, t_end = when(start), when(end)
    if t_start is None or t_end is None or t_end <= t_start:
        return None
    return (end - start) / (t_end - t_start)


def order_schema() -> dict:
    """The order schema, decoded as the consumer decodes it: uuid and timestamp as plain string/long."""
    raw = json.loads(SCHEMA_FILE.read_text())
    for field in raw["fields"]:
        kind = field["type"]
        if isinstance(kind, dict) and kind.get("logicalType") in ("uuid", "timestamp-micros"):
            field["type"] = kind["type"]
    return fastavro.parse_schema(raw)


def encoded_orders(count: int, seed: int) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of the same orders (and so the same sizes) producer.py sends."""
    from orders_dlq.orders import OrderGenerator  # data only: the records, not the sending code

    generator = OrderGenerator(seed)
    schema = order_schema()
    out = []
    for _ in range(count):
        order = generator.good()
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, schema, order)
        out.append((order["order_id"].encode(), buffer.getvalue()))
    return out


def producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, **DURABILITY})


def produce(args) -> dict:
    """produce + poll(0) per message, BufferError handled, one flush at the end."""
    records = encoded_orders(args.count, args.seed)
    p = producer(args.bootstrap)
    topic = args.topic
    started = time.perf_counter()
    for key, value in records:
        while True:
            try:
                p.produce(topic, value, key)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    remaining = p.flush(60)
    seconds = time.perf_counter() - started
    return {"count": args.count - remaining, "seconds": seconds, "undelivered": remaining,
            "value_bytes_avg": sum(len(v) for _, v in records) / max(1, len(records))}


def original(args) -> dict:
    """The original design: produce, then flush, for every message."""
    records = encoded_orders(args.count, args.seed)
    p = producer(args.bootstrap)
    topic = args.topic
    undelivered = 0
    started = time.perf_counter()
    for key, value in records:
        p.produce(topic, value, key)
        undelivered += p.flush(30)
    seconds = time.perf_counter() - started
    return {"count": args.count - undelivered, "seconds": seconds, "undelivered": undelivered}


def consumer(args) -> Consumer:
    return Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group,
                     "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                     "enable.auto.commit": False})


def consume(args) -> dict:
    """consume() batches, decode each value (parsed schema reused), sum the prices."""
    schema = order_schema()
    reader = fastavro.schemaless_reader
    c = consumer(args)
    total = Decimal(0)
    seen = failed = 0
    started = time.perf_counter()
    c.subscribe([args.topic])
    first = None
    points = []
    while seen < args.count:
        for message in c.consume(num_messages=min(BATCH, args.count - seen), timeout=0.5):
            if message.error() is not None:
                continue
            if first is None:
                first = time.perf_counter()
            seen += 1
            try:
                total += reader(io.BytesIO(message.value()), schema)["price"]
            except Exception:  # noqa: BLE001 - a poison message is skipped, not fatal
                failed += 1
        points.append((time.perf_counter(), seen))
    ended = time.perf_counter()
    c.close()
    return {"count": seen, "seconds": ended - started, "seconds_from_first_message": ended - (first or started),
            "steady_rate": steady_rate(points, args.count), "undecodable": failed, "total": str(total)}


def forward(args) -> dict:
    """Consume and re-produce every value to another topic (the bare work of dead-lettering)."""
    c = consumer(args)
    p = producer(args.bootstrap)
    to = args.to
    seen = 0
    started = time.perf_counter()
    c.subscribe([args.topic])
    points = []
    while seen < args.count:
        for message in c.consume(num_messages=min(BATCH, args.count - seen), timeout=0.5):
            if message.error() is not None:
                continue
            seen += 1
            while True:
                try:
                    p.produce(to, message.value(), message.key())
                    break
                except BufferError:
                    p.poll(0.05)
            p.poll(0)
        points.append((time.perf_counter(), seen))
    remaining = p.flush(60)
    ended = time.perf_counter()
    c.close()
    return {"count": seen - remaining, "seconds": ended - started, "steady_rate": steady_rate(points, args.count),
            "undelivered": remaining}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("loop", choices=("produce", "original", "consume", "forward"))
    parser.add_argument("-b", "--bootstrap", required=True)
    parser.add_argument("-t", "--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("-g", "--group", default="bench-limit")
    parser.add_argument("--to", help="target topic of the forward loop")
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    result = {"produce": produce, "original": original, "consume": consume, "forward": forward}[args.loop](args)
    result["rate"] = result["count"] / result["seconds"] if result["seconds"] > 0 else 0.0
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
