"""A message-level fuzzer against the real consumer: whatever a message holds, it is aggregated or
dead-lettered exactly once, and the consumer ends by itself with exit code 0, in both guarantees.

Hypothesis writes a few hundred messages (orders with mutated fields, huge and tiny fields, random
bytes, empty and null values and keys, hostile headers, our own dlq.* and kafka_dlt-* headers with
nonsense) into one partition; consumer_aggregation.py runs as a subprocess; an independent model of
the rules (fastavro and uuid, not the toolkit's code) says where each message must end.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections import Counter
from decimal import Decimal

import fastavro
import pytest
from conftest import PRODUCTS, ROOT, Pipeline, produce
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

# The order record with every field in its plain Avro type, so the fuzzer can write any value.
PLAIN = fastavro.parse_schema({"type": "record", "name": "Order", "fields": [
    {"name": "order_id", "type": "string"}, {"name": "product", "type": "string"},
    {"name": "price", "type": "bytes"}, {"name": "created_at", "type": "long"}]})
NOW_MICROS = int(time.time() * 1_000_000)
DAY_MICROS = 24 * 3600 * 1_000_000
MAX_CENTS = 1_000_000  # 10000.00
DLQ_SCHEMA = fastavro.parse_schema(json.loads((ROOT / "schemas" / "dead_letter.avsc").read_text()))


def plain_encode(order: dict) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, PLAIN, order)
    return buffer.getvalue()


def cents_bytes(cents: int) -> bytes:
    return cents.to_bytes((abs(cents).bit_length() + 8) // 8, "big", signed=True)


def expected_outcome(value: bytes | None):
    """(product, price) for an order that must be aggregated, or the stage of its dead letter."""
    if not value:
        return "deserialize"
    stream = io.BytesIO(value)
    try:
        order = fastavro.schemaless_reader(stream, PLAIN)
    except Exception:
        return "deserialize"
    if stream.tell() != len(value):
        return "deserialize"
    try:
        canonical = str(uuid.UUID(order["order_id"])) == order["order_id"].lower()
    except ValueError:
        canonical = False
    cents = int.from_bytes(order["price"], "big", signed=True)
    if (not canonical or order["product"] not in PRODUCTS or not 0 < cents <= MAX_CENTS
            or order["created_at"] > NOW_MICROS + DAY_MICROS):
        return "validate"
    return order["product"], Decimal(cents).scaleb(-2)


no_surrogates = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
order_ids = st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), st.text(max_size=40),
                      st.integers(0, 200_000).map(lambda n: "a" * n))
products = st.one_of(st.sampled_from(sorted(PRODUCTS)), st.sampled_from(sorted(PRODUCTS)).map(str.lower),
                     st.text(max_size=12))
prices = st.one_of(st.integers(-5_000, 2 * MAX_CENTS).map(cents_bytes), st.binary(max_size=24),
                   st.integers(1, 300_000).map(lambda n: b"\x7f" * n), st.just(b""))
created = st.one_of(st.integers(0, NOW_MICROS), st.integers(NOW_MICROS + 2 * DAY_MICROS, 2**63 - 1),
                    st.integers(-(2**63), -1))
orders = st.builds(lambda *f: plain_encode(dict(zip(("order_id", "product", "price", "created_at"), f, strict=True))),
                   order_ids, products, prices, created)


@st.composite
def mutated(draw, encodings):
    value = draw(encodings)
    how = draw(st.sampled_from(["keep", "keep", "keep", "truncate", "append", "flip"]))
    if how == "truncate" and value:
        return value[:draw(st.integers(0, len(value) - 1))]
    if how == "append":
        return value + draw(st.binary(min_size=1, max_size=8))
    if how == "flip" and value:
        at = draw(st.integers(0, len(value) - 1))
        return value[:at] + bytes([value[at] ^ draw(st.integers(1, 255))]) + value[at + 1:]
    return value


valid_orders = st.builds(
    lambda order_id, product, cents, at: plain_encode({"order_id": str(order_id), "product": product,
                                                       "price": cents_bytes(cents), "created_at": at}),
    st.uuids(), st.sampled_from(sorted(PRODUCTS)), st.integers(1, MAX_CENTS), st.integers(0, NOW_MICROS))
# About half valid orders, so that exact totals are checked among the failures.
values = st.one_of(valid_orders, valid_orders, valid_orders, valid_orders, mutated(orders),
                   st.binary(max_size=200), st.just(b""), st.none(),
                   st.integers(100_000, 900_000).map(lambda n: b"\x01" * n))
header_names = st.one_of(st.text(alphabet=no_surrogates, max_size=20), st.sampled_from([
    "dlq.replay.count", "dlq.retry.count", "dlq.format", "dlq.error.stage", "dlq.spool.id", "dlq.reduced",
    "kafka_dlt-original-partition", "kafka_dlt-original-offset", "kafka_dlt-exception-message",
    "__connect.errors.offset", "__connect.errors.topic"]))
header_values = st.one_of(st.none(), st.binary(max_size=30), st.sampled_from([
    b"9" * 20, b"-1", b"\x00\x00\x00\x01", b"orders_dlq.DeadLetter/avro", "٣".encode(), b"\xff\xfe"]))
messages = st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=40)), values,
                              st.one_of(st.none(), st.lists(st.tuples(header_names, header_values), max_size=6))),
                    min_size=150, max_size=250)

GOOD = plain_encode({"order_id": "0b7c2a1e-6b53-4f0e-9c3a-3f0b8f1f2d11", "product": "Fudge",
                     "price": cents_bytes(1234), "created_at": NOW_MICROS})
# Inputs that once stopped the consumer: kept as fixed cases.
REGRESSIONS = [
    (b"k", plain_encode({"order_id": "x", "product": "Toffee", "price": b"\x7f" * 420_000, "created_at": 1}), None),
    (b"k", plain_encode({"order_id": "x", "product": "Gravel", "price": b"\x01", "created_at": 1}),
     [("dlq.replay.count", b"9" * 20)]),
    (None, None, [("kafka_dlt-original-partition", b"\x01"), ("dlq.format", b"orders_dlq.DeadLetter/avro")]),
] + [(b"g", GOOD, None)] * 150


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_every_fuzzed_message_ends_in_exactly_one_place(kafka_bootstrap, scripts, guarantee):
    @settings(max_examples=2, deadline=None, derandomize=True, database=None,
              phases=(Phase.explicit, Phase.generate),
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @example(REGRESSIONS)
    @given(messages)
    def check(batch):
        pipeline = Pipeline(kafka_bootstrap, scripts, partitions=1)
        pipeline.setup()
        offsets = produce(kafka_bootstrap, pipeline.topic, batch)
        expected = {offset: expected_outcome(value) for offset, (_, value, _) in zip(offsets, batch, strict=True)}

        result = scripts.run("consumer_aggregation.py", "-g", pipeline.group, "--guarantee", guarantee,
                             "--idle-timeout", 3, "--json", timeout=120)
        assert "Traceback" not in result.stderr, result.stderr[-3000:]

        letters = Counter()
        stages = {}
        for message in pipeline.read(pipeline.dlq_topic):
            record = fastavro.schemaless_reader(io.BytesIO(message.value()), DLQ_SCHEMA)
            letters[record["original_offset"]] += 1
            stages[record["original_offset"]] = record["error_stage"]
        assert not [o for o, n in letters.items() if n > 1], "a message was dead-lettered twice"
        failed = {o: stage for o, stage in expected.items() if isinstance(stage, str)}
        assert {o: stages.get(o) for o in failed} == failed
        assert set(letters) == set(failed), "a valid order was dead-lettered"

        totals: dict[str, list] = {}
        for outcome in expected.values():
            if not isinstance(outcome, str):
                bucket = totals.setdefault(outcome[0], [0, Decimal("0.00")])
                bucket[0] += 1
                bucket[1] += outcome[1]
        summary = json.loads(result.stdout)
        assert summary["processed"] + summary["dead_lettered"] == len(batch)
        assert {name: (p["count"], Decimal(p["total"])) for name, p in summary["products"].items()} == {
            name: (count, total) for name, (count, total) in totals.items()}

    check()


