"""Property tests: any bytes are classified (order, DecodeError or InvalidOrder), dead letters round-trip."""

from __future__ import annotations

import uuid
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders_dlq.codec import DecodeError, dead_letter_codec, order_codec
from orders_dlq.dead_letter import DeadLetter, DeadLetterCodec, dead_letter_from_headers
from orders_dlq.orders import CATALOGUE, InvalidOrder, OrderGenerator, validate

ORDER_CODEC = order_codec()
DL_CODEC = DeadLetterCodec(dead_letter_codec())
FIELDS = {"order_id", "product", "price", "created_at"}
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def classify(data):
    """'deserialize', 'validate' or the decoded order: never any other outcome."""
    try:
        order = ORDER_CODEC.decode(data)
    except DecodeError as exc:
        assert ": " in str(exc) or str(exc) == "empty value"
        return "deserialize"
    assert set(order) == FIELDS
    assert isinstance(order["order_id"], str) and isinstance(order["product"], str)
    assert isinstance(order["price"], Decimal) and isinstance(order["created_at"], int)
    try:
        validate(order)
    except InvalidOrder as exc:
        assert ": " in str(exc)
        return "validate"
    return order


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_classified(data):
    classify(data)


_valid_prefix = ORDER_CODEC.encode(OrderGenerator(seed=1).good())


@SETTINGS
@given(st.integers(min_value=0, max_value=len(_valid_prefix) - 1), st.binary(max_size=40))
def test_mutated_valid_encodings_are_classified(cut, tail):
    classify(_valid_prefix[:cut] + tail)


order_ids = st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), st.text(max_size=40))
products = st.one_of(st.sampled_from(CATALOGUE), st.text(max_size=30))
prices = st.decimals(min_value=Decimal("-9999999999.99"), max_value=Decimal("9999999999.99"), places=2,
                     allow_nan=False, allow_infinity=False)
# up to 2020-09-13: always in the past, so the clock rule never depends on when the test runs
past = st.integers(min_value=-(2**63), max_value=1_600_000_000_000_000)
far_future = st.integers(min_value=2**62, max_value=2**63 - 1)


def canonical_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


@SETTINGS
@given(order_ids, products, prices, past)
def test_valid_shaped_orders_round_trip_and_are_classified(order_id, product, price, created_at):
    order = {"order_id": order_id, "product": product, "price": price, "created_at": created_at}
    data = ORDER_CODEC.encode(order)
    decoded = ORDER_CODEC.decode(data)
    assert decoded == order
    assert decoded["price"].as_tuple().exponent == -2
    expected_valid = canonical_uuid(order_id) and product in CATALOGUE and Decimal("0") < price <= Decimal("10000")
    assert classify(data) == (order if expected_valid else "validate")


@SETTINGS
@given(st.uuids().map(str), st.sampled_from(CATALOGUE), prices, far_future)
def test_orders_far_in_the_future_are_invalid(order_id, product, price, created_at):
    data = ORDER_CODEC.encode({"order_id": order_id, "product": product, "price": price, "created_at": created_at})
    assert classify(data) == "validate"


optional_bytes = st.one_of(st.none(), st.binary(max_size=200))
header_lists = st.lists(st.tuples(st.text(max_size=20), optional_bytes), max_size=6)


@SETTINGS
@given(optional_bytes, optional_bytes, header_lists, st.text(max_size=60), st.integers(0, 2**31 - 1),
       st.one_of(st.none(), st.integers(0, 2**31 - 1)), st.one_of(st.none(), st.integers(0, 2**63 - 1)),
       st.one_of(st.none(), prices))
def test_dead_letter_round_trip(key, value, headers, reason, retries, partition, offset, price):
    letter = DeadLetter(error_reason=reason, error_type="SomeError", error_stage="process",
                        original_topic="orders", failed_by="group", retry_count=retries,
                        original_partition=partition, original_offset=offset, price=price,
                        original_key=key, original_value=value, original_headers=headers)
    data = DL_CODEC.encode(letter)
    assert DL_CODEC.decode_message(data, letter.headers(), b"dlq-key", "orders.DLQ") == letter
    from_headers = dead_letter_from_headers(value, letter.headers(), key, "orders.DLQ")
    kept = [(k, v) for k, v in headers if not k.startswith(("kafka_dlt-", "__connect.errors.", "dlq."))]
    assert from_headers.original_headers == kept
    assert (from_headers.original_partition, from_headers.original_offset) == (partition, offset)
    assert (from_headers.error_reason or "unknown") == (reason or "unknown")
    assert from_headers.retry_count == retries
