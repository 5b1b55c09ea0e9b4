"""A dead letter can always be written, whatever the message it comes from held."""

from __future__ import annotations

import hashlib
import struct
from decimal import Decimal

import pytest
from confluent_kafka import KafkaError
from hypothesis import given, settings
from hypothesis import strategies as st

from orders_dlq.codec import DecodeError, dead_letter_codec
from orders_dlq.dead_letter import (
    INT_MAX,
    ORIGINAL_SHA256_HEADER,
    ORIGINAL_SIZE_HEADER,
    REDUCED_HEADER,
    DeadLetter,
    DeadLetterCodec,
    replay_count_of,
)
from orders_dlq.dlq import permanent_error_sentence

CODEC = DeadLetterCodec(dead_letter_codec())

anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(), st.binary(),
    st.decimals(allow_nan=True, allow_infinity=True), st.lists(st.integers(), max_size=3),
)
# Text as Python can hold it, lone surrogates included: what a bug or a decoder with
# errors="surrogateescape" could hand us.
any_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF))


@settings(max_examples=300, deadline=None)
@given(
    reason=st.one_of(any_text, anything), order_id=st.one_of(any_text, anything), product=anything,
    price=anything, retries=anything, replays=anything, partition=anything, offset=anything,
    timestamp=anything, key=anything, value=anything,
    headers=st.lists(st.tuples(any_text, st.one_of(st.none(), st.binary(), any_text)), max_size=5),
)
def test_any_field_values_still_encode_and_decode_back(reason, order_id, product, price, retries, replays,
                                                       partition, offset, timestamp, key, value, headers):
    dead_letter = DeadLetter(error_reason=reason, error_type="X", error_stage="validate", original_topic="orders",
                             failed_by="g", retry_count=retries, replay_count=replays, order_id=order_id,
                             product=product, price=price, original_partition=partition, original_offset=offset,
                             original_timestamp=timestamp, original_key=key, original_value=value,
                             original_headers=headers).fitted()
    value_bytes = CODEC.encode(dead_letter)
    kafka_headers = dead_letter.headers()
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in kafka_headers if v is not None)
    back = CODEC.decode_message(value_bytes, kafka_headers)
    assert back.retry_count == dead_letter.retry_count and 0 <= back.replay_count <= INT_MAX
    assert back.original_value == dead_letter.original_value


def test_values_the_schema_cannot_hold_become_null_or_clamped():
    dead_letter = DeadLetter(error_reason="bad \udcff", error_type="T", error_stage="validate",
                             original_topic="orders", failed_by="g", retry_count=-3, replay_count=10**20,
                             price=Decimal("1e20"), original_partition=2**40, original_offset=-1,
                             original_headers=[("k\udcfe", b"v")]).fitted()
    assert dead_letter.price is None and dead_letter.replay_count == INT_MAX and dead_letter.retry_count == 0
    assert dead_letter.original_partition is None and dead_letter.original_offset is None
    assert dead_letter.error_reason == "bad \\udcff" and dead_letter.original_headers == [("k\\udcfe", b"v")]
    assert CODEC.encode(dead_letter)


def test_prices_that_fit_decimal_12_2_are_kept_exactly():
    for text in ("0.01", "9999999999.99", "-5.00", "12.30"):
        assert DeadLetter(error_reason="r", error_type="T", error_stage="validate", original_topic="o",
                          failed_by="g", price=Decimal(text)).fitted().price == Decimal(text)
    for text in ("10000000000.00", "1.001", "NaN"):
        assert DeadLetter(error_reason="r", error_type="T", error_stage="validate", original_topic="o",
                          failed_by="g", price=Decimal(text)).fitted().price is None


def test_replay_count_header_is_read_only_when_it_is_a_sane_number():
    assert replay_count_of([("dlq.replay.count", b"2")]) == 2
    assert replay_count_of([("dlq.replay.count", b"9" * 20)]) == 0
    assert replay_count_of([("dlq.replay.count", b"9999999999")]) == INT_MAX
    assert replay_count_of([("dlq.replay.count", b"-1"), ("dlq.replay.count", None)]) == 0
    assert replay_count_of([("dlq.replay.count", "\u0663".encode())]) == 0
    assert replay_count_of(None) == 0


def test_a_reduced_dead_letter_keeps_size_and_hash_and_says_what_it_left_out():
    original = bytes(range(256)) * 1000
    dead_letter = DeadLetter(error_reason="not a valid Avro order record: x", error_type="DecodeError",
                             error_stage="deserialize", original_topic="orders", failed_by="g",
                             original_partition=1, original_offset=7, original_key=b"k",
                             original_value=original, original_headers=[("h", b"v")])
    reduced = dead_letter.reduced_to_fit(1)
    assert reduced.original_value is None and reduced.original_key == b"k" and reduced.original_headers
    assert reduced.error_reason.startswith("not a valid Avro order record: x [dead letter reduced:")
    headers = dict(reduced.headers())
    assert headers[REDUCED_HEADER] == b"value"
    assert headers[ORIGINAL_SIZE_HEADER] == str(len(original)).encode()
    assert headers[ORIGINAL_SHA256_HEADER] == hashlib.sha256(original).hexdigest().encode()
    smaller = reduced.reduced_to_fit(2)
    assert (smaller.original_key, smaller.original_headers) == (None, [])
    assert smaller.original_sha256 == reduced.original_sha256 and smaller.error_reason == reduced.error_reason
    back = CODEC.decode_message(CODEC.encode(smaller), smaller.headers())
    assert (back.reduced, back.original_size, back.original_sha256) == (
        "value,key,headers", len(original), hashlib.sha256(original).hexdigest())


def test_foreign_headers_with_nonsense_numbers_do_not_break_reading():
    headers = [("kafka_dlt-original-partition", b"\x00\x01"), ("__connect.errors.offset", b"9" * 5000),
               ("kafka_dlt-exception-message", b"\xff\xfe"), ("dlq.retry.count", b"abc")]
    dead_letter = CODEC.decode_message(b"raw", headers, b"key", "orders.DLQ")
    assert dead_letter.original_partition is None and dead_letter.original_offset is None
    assert dead_letter.retry_count == 0 and dead_letter.original_value == b"raw"


def test_a_huge_decimal_price_decodes_to_its_magnitude_and_is_rejected_by_validation():
    from orders_dlq.codec import avro_long, decimal_from_bytes, order_codec
    from orders_dlq.orders import InvalidOrder, validate
    # A schema-valid order whose price is 420 KB of decimal: fastavro raised decimal.Overflow after
    # minutes of work (its conversion is quadratic); ours keeps sign and magnitude in linear time.
    price = b"\x7f" * 420_000
    huge = b"".join((avro_long(36), b"4f1e1c1b-1111-4aaa-8bbb-123456789abc", avro_long(6), b"Toffee",
                     avro_long(len(price)), price, avro_long(5)))
    order = order_codec().decode(huge)
    assert order["price"].adjusted() > 1_000_000 and not order["price"].is_signed()
    with pytest.raises(InvalidOrder, match="price exceeds the maximum"):
        validate(order)
    negative = decimal_from_bytes(b"\x80" + b"\x00" * 400, 2)
    assert negative.is_signed() and negative.adjusted() > 900
    for unscaled in (0, 1, -1, 1234, -99999999999, 2**255 - 1, -(2**255)):
        raw = unscaled.to_bytes((abs(unscaled).bit_length() + 8) // 8, "big", signed=True)
        assert decimal_from_bytes(raw, 2) == Decimal(unscaled).scaleb(-2)


def test_decoder_failures_of_any_kind_are_decode_errors():
    from orders_dlq.codec import order_codec
    codec = order_codec()
    for value in (b"\xff" * 20, b"\x02", b"\x02a\x02b\xff\xff\xff\xff\x0f"):
        with pytest.raises(DecodeError):
            codec.decode(value)


def test_permanent_delivery_errors_are_told_apart_from_transient_ones():
    assert permanent_error_sentence(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), "orders.DLQ")
    for code in (KafkaError._MSG_TIMED_OUT, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.NOT_ENOUGH_REPLICAS):
        assert permanent_error_sentence(KafkaError(code), "orders.DLQ") is None


def test_a_struct_packed_spring_partition_still_reads():
    dead_letter = CODEC.decode_message(b"raw", [("kafka_dlt-original-partition", struct.pack(">i", 4))])
    assert dead_letter.original_partition == 4


class MessageWithUnreadableHeaders:
    """What confluent-kafka hands over for a record whose header name is not UTF-8: headers() raises."""

    def headers(self):
        raise SystemError("<built-in method headers> returned a result with an exception set")

    def timestamp(self):
        return 1, 1_700_000_000_000

    def topic(self):
        return "orders"

    def partition(self):
        return 2

    def offset(self):
        return 41

    def key(self):
        return b"k"

    def value(self):
        return b"\x00POISON"


def test_a_message_whose_headers_cannot_be_read_still_gets_its_dead_letter():
    from orders_dlq.dead_letter import dead_letter_of_message
    dead_letter = dead_letter_of_message(MessageWithUnreadableHeaders(), None, "deserialize",
                                         DecodeError("not a valid Avro order"), 0, "g")
    fitted = dead_letter.fitted()
    headers = dict(fitted.headers())
    assert fitted.original_headers == [] and fitted.original_value == b"\x00POISON"
    assert headers["dlq.original.headers.unreadable"].startswith(b"SystemError: ")
    back = CODEC.decode_message(CODEC.encode(fitted), fitted.headers())
    assert (back.original_partition, back.original_offset, back.error_stage) == (2, 41, "deserialize")
