"""The hand-written order encoder writes exactly fastavro's bytes, and the fast UUIDs are real UUIDs."""

from __future__ import annotations

import random
import uuid
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orders_dlq.codec import (
    NOT_AN_ORDER,
    ORDER_SCHEMA_FILE,
    TRAILING_BYTES,
    AvroCodec,
    DecodeError,
    decode_order_fast,
    order_codec,
    read_order,
)
from orders_dlq.orders import ORDER_ID_BLOCK, OrderGenerator

FAST = order_codec()
REFERENCE = AvroCodec(ORDER_SCHEMA_FILE)  # the generic fastavro path

orders = st.fixed_dictionaries({
    "order_id": st.text(max_size=60),
    "product": st.text(max_size=40),
    "price": st.integers(min_value=-(10**12) + 1, max_value=10**12 - 1).map(lambda cents: Decimal(cents).scaleb(-2)),
    "created_at": st.integers(min_value=-(2**63), max_value=2**63 - 1),
})


def test_the_fast_path_is_in_use():
    assert FAST.fast


@settings(max_examples=500, deadline=None)
@given(orders)
def test_fast_encoding_equals_fastavro(order):
    assert FAST.encode(order) == REFERENCE.encode(order)
    assert FAST.decode(FAST.encode(order)) == REFERENCE.decode(REFERENCE.encode(order))


@pytest.mark.parametrize("price", ["0.00", "0.01", "-0.01", "1.27", "1.28", "-1.28", "-1.29", "327.67", "327.68",
                                   "-327.68", "-327.69", "9999999999.99", "-9999999999.99", "10", "-7.5"])
def test_decimal_byte_lengths_match_fastavro_at_the_boundaries(price):
    order = {"order_id": "x", "product": "Toffee", "price": Decimal(price), "created_at": 0}
    assert FAST.encode(order) == REFERENCE.encode(order)


def test_more_than_two_decimal_places_is_refused_like_fastavro():
    order = {"order_id": "x", "product": "Toffee", "price": Decimal("1.005"), "created_at": 0}
    with pytest.raises(ValueError):
        REFERENCE.encode(order)
    with pytest.raises(ValueError):
        FAST.encode(order)


def test_generated_order_ids_are_the_uuid_modules_version_4_ids():
    # Made a block at a time from the generator's random bytes: each id is what the uuid module
    # makes of the same 16 bytes, in the order they were drawn, across block boundaries too.
    rng = random.Random(3)
    for _ in range(20):
        seed = rng.getrandbits(64)
        generator = OrderGenerator(seed)
        reference = random.Random(seed)
        for _ in range(2):
            drawn = reference.randbytes(16 * ORDER_ID_BLOCK)
            for start in range(0, len(drawn), 16):
                expected = str(uuid.UUID(bytes=drawn[start:start + 16], version=4))
                assert generator.order_id() == expected
                assert uuid.UUID(expected).version == 4


def test_every_generated_order_id_is_a_canonical_version_4_uuid_and_they_do_not_repeat():
    generator = OrderGenerator(5)
    ids = [generator.order_id_bytes() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for key in ids:
        parsed = uuid.UUID(key.decode())
        assert str(parsed).encode() == key
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_the_keyed_encoding_equals_the_encoding_of_the_text_id():
    generator = OrderGenerator(9)
    for _ in range(500):
        key, product, price, created_at = generator.good_keyed()
        assert FAST.encode_keyed(key, product, price, created_at) == REFERENCE.encode(
            {"order_id": key.decode(), "product": product, "price": price, "created_at": created_at})


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=8192, max_value=2**62 - 1), st.lists(st.integers(0, 20_000), min_size=1, max_size=40))
def test_timestamps_in_sequence_equal_fastavro_across_the_cached_tail(start, steps):
    # The encoder caches the varint tail of created_at >> 13 (8 ms): consecutive orders, a few
    # microseconds apart, cross that boundary often, and each one must still be fastavro's bytes.
    codec = order_codec()
    created_at = start
    for step in steps:
        created_at = min(created_at + step, 2**62 - 1)
        order = {"order_id": "x", "product": "Toffee", "price": Decimal("1.00"), "created_at": created_at}
        assert codec.encode(order) == REFERENCE.encode(order)


def test_equal_prices_written_differently_share_one_encoding_as_in_fastavro():
    codec = order_codec()
    for price in ("12.3", "12.30", "12.3", "-0.5", "-0.50"):
        order = {"order_id": "x", "product": "Toffee", "price": Decimal(price), "created_at": 1}
        assert codec.encode(order) == REFERENCE.encode(order)


def _fastavro_path(data: bytes):
    """What the generic fastavro path gives for these bytes: the record, or the DecodeError."""
    try:
        return REFERENCE.decode(data)
    except DecodeError as exc:
        return exc


def _damaged(order: dict, cut: int, flip: int, extra: bytes) -> bytes:
    data = bytearray(REFERENCE.encode(order))
    if data and flip >= 0:
        data[flip % len(data)] ^= 1 << (flip % 8)
    return bytes(data[:len(data) - cut] if cut else data) + extra


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=80),
                 st.builds(_damaged, orders, st.integers(0, 4), st.integers(-1, 200), st.binary(max_size=3))))
def test_the_hand_written_decoder_returns_what_fastavro_returns_or_nothing(data):
    expected = _assert_fast_path_reads_as_fastavro(data)
    assert (FAST.decode(data) if not isinstance(expected, DecodeError) else expected) == expected


def _assert_fast_path_reads_as_fastavro(data: bytes):
    """The fast path may decline (None) anything; whatever it returns must be fastavro's record,
    and it must never accept bytes the fastavro path refuses. Returns fastavro's outcome."""
    expected = _fastavro_path(data)
    fast = decode_order_fast(data)
    if isinstance(expected, DecodeError):
        assert fast is None
    elif fast is not None:
        assert fast == expected and list(fast) == list(expected)
    return expected


@settings(max_examples=300, deadline=None)
@given(orders)
def test_every_well_formed_order_is_read_by_the_fast_path(order):
    data = REFERENCE.encode(order)
    assert decode_order_fast(data) == REFERENCE.decode(data)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.binary(max_size=80), st.binary(max_size=8).map(lambda tail: b"\x00POISON" + tail),
                 st.builds(_damaged, orders, st.integers(0, 4), st.integers(-1, 200), st.binary(max_size=3))))
def test_a_reason_from_the_hand_written_reader_is_a_failure_of_fastavro_too(data):
    # read_order names why bytes are not an order without asking fastavro (a poison flood is all
    # failures); it may only do so for bytes fastavro refuses as well, and in the same two problems.
    outcome = read_order(data)
    if isinstance(outcome, str):
        assert isinstance(_fastavro_path(data), DecodeError), outcome
        assert outcome.partition(": ")[0] in (NOT_AN_ORDER, TRAILING_BYTES)
        with pytest.raises(DecodeError) as info:
            FAST.decode(data)
        assert str(info.value) == (outcome if data else "empty value")


def test_registry_mode_frames_every_way_the_order_codec_writes_an_order():
    # producer.py picks an encoder by name; in registry mode each must carry the 5-byte header.
    from orders_dlq.codec import OrderCodec
    from orders_dlq.registry import ORDER_ENCODERS, RegistryOrderCodec, confluent_header

    assert {name for name in dir(OrderCodec) if name.startswith("encode")} == set(ORDER_ENCODERS)

    class OneSchemaRegistry:  # the id a registry answers; what it stores is tested against the real one
        def register_order_schema(self, topic, codec):
            return 42

    codec = RegistryOrderCodec(OneSchemaRegistry(), "orders", local=order_codec())
    generator = OrderGenerator(4)
    key, product, price, created_at = generator.good_keyed()
    with pytest.raises(RuntimeError, match="register"):
        codec.encode_keyed(key, product, price, created_at)
    codec.register()
    body = REFERENCE.encode({"order_id": key.decode(), "product": product, "price": price, "created_at": created_at})
    framed = confluent_header(42) + body
    assert codec.encode_keyed(key, product, price, created_at) == framed
    assert codec.encode_fields(key.decode(), product, price, created_at) == framed
    assert codec.encode({"order_id": key.decode(), "product": product, "price": price,
                         "created_at": created_at}) == framed


@settings(max_examples=500, deadline=None)
@given(orders, st.integers(0, 4), st.integers(-1, 200), st.binary(max_size=3))
def test_a_remembered_timestamp_tail_never_changes_what_is_read(order, cut, flip, extra):
    # The reader remembers created_at's bytes past the first two from the orders it read; a value
    # damaged around them (bits flipped, cut, bytes added) must still read as fastavro reads it.
    assert decode_order_fast(REFERENCE.encode(order)) == REFERENCE.decode(REFERENCE.encode(order))
    _assert_fast_path_reads_as_fastavro(_damaged(order, cut, flip, extra))
