"""A catalogue of bad inputs on `orders`: each one ends in the DLQ once, at the right stage and with
the right reason, with its original bytes, key and headers; the consumer survives all of them and
aggregates the valid orders around them exactly."""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import fastavro
import pytest
from confluent_kafka import Producer
from conftest import ORDER_SCHEMA, ROOT, Pipeline
from conftest import a_valid_order as order

pytestmark = pytest.mark.integration

DESERIALIZE, VALIDATE = "deserialize", "validate"
NOT_AVRO = "not a valid Avro order record"
TRAILING = "unexpected bytes after the Avro record"
NOT_UUID = "order_id is not a UUID"
NOT_POSITIVE = "price must be positive"
TOO_EXPENSIVE = "price exceeds the maximum of 10000.00"
HEADERS_WITH_JUNK = [("null-header", None), ("junk", bytes(range(256))), ("ключ", "значение".encode()),
                     ("dup", b"1"), ("dup", b"2")]
# The orders topic takes a record batch of up to the broker default max.message.bytes (1048588);
# a dead letter wraps such a value plus its context, so it is bigger than anything the topic took.
NEAR_LIMIT = 1_048_000


def encode(order: dict, schema=ORDER_SCHEMA) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, order)
    return buffer.getvalue()


def _price_as_plain_bytes_schema():
    """The order schema with price as plain bytes: lets a test write any unscaled decimal it likes."""
    raw = json.loads((ROOT / "schemas" / "order.avsc").read_text())
    raw["fields"][0]["type"] = "string"
    raw["fields"][2]["type"] = "bytes"
    raw["fields"][3]["type"] = "long"
    return fastavro.parse_schema(raw)


PLAIN_BYTES_PRICE = _price_as_plain_bytes_schema()


def with_raw_price(unscaled: bytes) -> bytes:
    record = order()
    record["price"] = unscaled
    record["created_at"] = int(record["created_at"].timestamp() * 1_000_000)
    return encode(record, PLAIN_BYTES_PRICE)


def another_schema() -> bytes:
    schema = fastavro.parse_schema({"type": "record", "name": "User", "fields": [
        {"name": "name", "type": "string"}, {"name": "age", "type": "int"},
        {"name": "emails", "type": {"type": "array", "items": "string"}}]})
    return encode({"name": "Alice", "age": 30, "emails": ["a@example.com", "b@example.com"]}, schema)


VALID = encode(order("10.00"))
# (name, value, headers, expected stage, expected reason category: the reason's text before ": ")
BAD_INPUTS = [
    ("empty value", b"", None, DESERIALIZE, "empty value"),
    ("null value (tombstone)", None, None, DESERIALIZE, "null value"),
    ("random bytes", b"\x00\xffnot avro at all\x13\x37", None, DESERIALIZE, NOT_AVRO),
    ("truncated Avro", VALID[:-3], None, DESERIALIZE, NOT_AVRO),
    ("truncated inside the id", VALID[:7], None, DESERIALIZE, NOT_AVRO),
    ("trailing bytes", VALID + b"\x00", None, DESERIALIZE, TRAILING),
    ("Avro of another schema", another_schema(), None, DESERIALIZE, NOT_AVRO),
    ("oversized garbage (~900 KB)", b"\x01" + random.Random(1).randbytes(900_000), None, DESERIALIZE, NOT_AVRO),
    ("garbage at the topic's size limit", b"\x01" + random.Random(2).randbytes(NEAR_LIMIT), None,
     DESERIALIZE, NOT_AVRO),
    ("negative price", encode(order("-5.00")), None, VALIDATE, NOT_POSITIVE),
    ("zero price", encode(order("0.00")), None, VALIDATE, NOT_POSITIVE),
    ("absurd price", encode(order("99999999.99")), None, VALIDATE, TOO_EXPENSIVE),
    ("decimal with more than 12 digits", with_raw_price((10 ** 20).to_bytes(9, "big", signed=True)), None,
     VALIDATE, TOO_EXPENSIVE),
    ("decimal of 100 bytes", with_raw_price(b"\x7f" * 100), None, VALIDATE, TOO_EXPENSIVE),
    ("negative decimal bytes", with_raw_price(b"\x80"), None, VALIDATE, NOT_POSITIVE),
    ("empty decimal bytes", with_raw_price(b""), None, VALIDATE, NOT_POSITIVE),
    ("unknown product", encode(order(product="Unobtainium")), None, VALIDATE, "unknown product"),
    ("empty order id", encode(order(order_id="")), None, VALIDATE, NOT_UUID),
    ("non-uuid order id", encode(order(order_id="order-42")), None, VALIDATE, NOT_UUID),
    ("created a year from now", encode(order(created_at=datetime.now(UTC) + timedelta(days=365))),
     None, VALIDATE, "created_at is more than a day in the future"),
    ("invalid order with junk headers", encode(order(product="Gravel")), HEADERS_WITH_JUNK,
     VALIDATE, "unknown product"),
    ("poison with junk headers", b"\x00POISON", HEADERS_WITH_JUNK, DESERIALIZE, NOT_AVRO),
]
# Valid orders around and between the bad ones: distinct prices, so a lost or doubled one shows.
VALID_PRICES = [f"{n}.{n:02d}" for n in range(1, len(BAD_INPUTS) + 2)]


def produce_in_order(pipeline: Pipeline, messages: list[tuple]) -> list[int]:
    """Write (key, value, headers) to partition 0 in this order; return each message's offset."""
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True,
                         "message.max.bytes": 2 * NEAR_LIMIT, "linger.ms": 0})
    offsets: list[int | None] = [None] * len(messages)
    errors = []

    def delivered(index):
        def report(error, message):
            if error is not None:
                errors.append(f"message {index}: {error.str()}")
            else:
                offsets[index] = message.offset()
        return report

    for index, (key, value, headers) in enumerate(messages):
        producer.produce(pipeline.topic, value=value, key=key, headers=headers, partition=0,
                         on_delivery=delivered(index))
        producer.flush(30)  # one at a time: the offsets are the order written
    assert not errors, errors
    assert offsets == sorted(offsets) and None not in offsets
    return offsets


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_every_bad_input_is_dead_lettered_once_and_valid_orders_around_them_count(pipeline: Pipeline,
                                                                                  guarantee):
    valid_orders = [order(price, product="Fudge" if i % 2 else "Toffee") for i, price in enumerate(VALID_PRICES)]
    messages = []  # (key, value, headers), the valid orders before, between and after the bad ones
    for i, bad in enumerate(BAD_INPUTS):
        good = valid_orders[i]
        # Every other valid order carries None-valued and binary headers: they must not matter.
        messages.append((good["order_id"].encode(), encode(good), HEADERS_WITH_JUNK if i % 2 else None))
        name, value, headers = bad[0], bad[1], bad[2]
        # One bad message without a key: its dead letter has none either.
        key = None if name == "random bytes" else f"bad-{i}".encode()
        messages.append((key, value, headers))
    last = valid_orders[-1]
    messages.append((last["order_id"].encode(), encode(last), None))
    offsets = produce_in_order(pipeline, messages)

    summary = pipeline.consume(guarantee=guarantee, timeout=120)

    expected = {"count": 0, "total": Decimal("0.00")}
    per_product: dict[str, dict] = {}
    for good in valid_orders:
        for bucket in (expected, per_product.setdefault(good["product"], {"count": 0, "total": Decimal("0.00")})):
            bucket["count"] += 1
            bucket["total"] += good["price"]
    assert summary["processed"] == len(valid_orders)
    assert summary["dead_lettered"] == len(BAD_INPUTS)
    assert (summary["overall"]["count"], summary["overall"]["total"]) == (expected["count"], str(expected["total"]))
    assert {name: (t["count"], t["total"]) for name, t in summary["products"].items()} == {
        name: (t["count"], str(t["total"])) for name, t in per_product.items()}

    letters = pipeline.dead_letters()
    by_offset = Counter(letter["original_offset"] for letter in letters)
    bad_offsets = {offsets[2 * i + 1]: i for i in range(len(BAD_INPUTS))}
    duplicates = {offset: n for offset, n in by_offset.items() if n != 1}
    assert not duplicates, f"dead-lettered more than once: {duplicates}"
    unexpected = set(by_offset) - set(bad_offsets)
    assert not unexpected, f"valid orders in the DLQ at offsets {sorted(unexpected)}"
    missing = [BAD_INPUTS[i][0] for offset, i in bad_offsets.items() if offset not in by_offset]
    assert not missing, f"never dead-lettered: {missing}"

    failures = []
    for letter in letters:
        i = bad_offsets[letter["original_offset"]]
        name, value, headers, stage, category = BAD_INPUTS[i]
        key = messages[2 * i + 1][0]
        got = (letter["error_stage"], letter["error_reason"].split(": ", 1)[0])
        if got != (stage, category):
            failures.append(f"{name}: expected {(stage, category)}, got {got} ({letter['error_reason'][:200]!r})")
        checks = {
            "original value": letter["original_value"] == value,
            "original key": letter["original_key"] == key and letter["_key"] == key,
            "original topic/partition": (letter["original_topic"], letter["original_partition"]) == (pipeline.topic, 0),
            "error type": letter["error_type"] == ("DecodeError" if stage == DESERIALIZE else "InvalidOrder"),
            "retry count": letter["retry_count"] == 0,
            "failed by": letter["failed_by"] == pipeline.group,
            "original headers": letter["original_headers"] == [{"key": k, "value": v} for k, v in headers or []],
            "stage header": letter["_headers"].get("dlq.error.stage") == stage.encode(),
        }
        if headers:
            # Carried over as Kafka headers too (a dict keeps the last of the duplicate "dup").
            checks["kafka headers"] = all(letter["_headers"].get(k, "absent") == v for k, v in dict(headers).items())
        if stage == VALIDATE:
            checks["decoded fields"] = letter["order_id"] is not None and letter["product"] is not None
        else:
            checks["no decoded fields"] = (letter["order_id"], letter["product"], letter["price"]) == (None, None, None)
        failures += [f"{name}: wrong {what}" for what, ok in checks.items() if not ok]
    assert not failures, "\n".join(failures)
