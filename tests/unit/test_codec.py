"""Order and dead-letter Avro codecs: exact round trips, strict decoding, schema loading errors."""

from __future__ import annotations

import io
import json
import random
from decimal import Decimal
from pathlib import Path

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orders_dlq import codec as codec_module
from orders_dlq.codec import DecodeError, avro_long, dead_letter_codec, load_schema, money, order_codec
from orders_dlq.dead_letter import DeadLetter, DeadLetterCodec
from orders_dlq.errors import UsageError
from orders_dlq.orders import InvalidOrder, validate

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"

ORDER = {
    "order_id": "3f1c2b1e-7d4a-4c3b-9a1e-0123456789ab",
    "product": "Toffee",
    "price": Decimal("0.10") + Decimal("0.20"),
    "created_at": 1_700_000_000_123_456,
}


@pytest.fixture(scope="module")
def codec():
    return order_codec()


@pytest.fixture(scope="module")
def encoded(codec):
    return codec.encode(ORDER)


def test_order_round_trip_is_exact(codec, encoded):
    decoded = codec.decode(encoded)
    assert decoded == ORDER
    assert decoded["price"] == Decimal("0.30")
    assert str(decoded["price"]) == "0.30"
    assert type(decoded["price"]) is Decimal
    # uuid and timestamp-micros are decoded as their plain types, checked by validate()
    assert type(decoded["order_id"]) is str
    assert type(decoded["created_at"]) is int
    assert decoded["created_at"] == 1_700_000_000_123_456
    assert list(decoded) == ["order_id", "product", "price", "created_at"]


def test_encoding_matches_plain_fastavro_with_the_schema_file(encoded):
    schema = fastavro.parse_schema(json.loads((SCHEMAS / "order.avsc").read_text()))
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, ORDER)
    assert encoded == buffer.getvalue()


@pytest.mark.parametrize("price", ["0.01", "0.30", "10000.00", "9999999999.99", "-9999999999.99", "0.00", "-0.01"])
def test_prices_survive_exactly(codec, price):
    order = dict(ORDER, price=Decimal(price))
    assert str(codec.decode(codec.encode(order))["price"]) == price


def test_encode_reuses_buffer_without_leaking_previous_bytes(codec):
    long_order = dict(ORDER, product="X" * 200)
    long_bytes = codec.encode(long_order)
    short_bytes = codec.encode(ORDER)
    assert len(short_bytes) < len(long_bytes)
    assert codec.decode(short_bytes) == ORDER
    assert codec.decode(long_bytes) == long_order


def test_encode_returns_independent_bytes(codec):
    first = codec.encode(ORDER)
    codec.encode(dict(ORDER, product="Fudge"))
    assert codec.decode(first)["product"] == "Toffee"


def test_empty_value_is_a_decode_error(codec):
    with pytest.raises(DecodeError) as info:
        codec.decode(b"")
    assert str(info.value) == "empty value"


def test_none_value_is_a_tombstone_decode_error(codec):
    with pytest.raises(DecodeError) as info:
        codec.decode(None)
    assert str(info.value) == "null value: a tombstone is not an order"


def test_every_truncated_prefix_is_a_decode_error(codec, encoded):
    for length in range(len(encoded)):
        with pytest.raises(DecodeError) as info:
            codec.decode(encoded[:length])
        problem, sep, _detail = str(info.value).partition(": ")
        if length:
            assert sep == ": ", str(info.value)
            assert problem == "not a valid Avro order record"


def test_trailing_bytes_are_a_decode_error(codec, encoded):
    for extra in (b"\x00", b"\x00\xff", encoded):
        with pytest.raises(DecodeError) as info:
            codec.decode(encoded + extra)
        assert str(info.value) == f"unexpected bytes after the Avro record: {len(extra)}"


@pytest.mark.parametrize("data", [
    b"\x00",
    b"\xff" * 20,
    b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01",      # string length 2**63-1
    b"\x02\xff\x02b\x00\x00",                           # invalid UTF-8 in order_id
    b"\x02a\x02b\x02\x01" + b"\xff" * 9,                 # created_at varint never terminates
    b"\x03abc",                                         # negative string length
    b"not avro at all",
    b"\x00POISON",
])
def test_garbage_is_a_decode_error_with_problem_and_detail(codec, data):
    with pytest.raises(DecodeError) as info:
        codec.decode(data)
    problem, sep, detail = str(info.value).partition(": ")
    assert sep == ": " and problem and detail


def test_random_garbage_only_ever_raises_decode_error(codec):
    rng = random.Random(20240501)
    decoded = 0
    for _ in range(3000):
        data = rng.randbytes(rng.randint(1, 80))
        try:
            record = codec.decode(data)
        except DecodeError:
            continue
        decoded += 1
        assert set(record) == {"order_id", "product", "price", "created_at"}
    assert decoded < 3000


def test_minimal_well_formed_bytes_decode_to_a_record_that_fails_validation(codec):
    record = codec.decode(b"\x02a\x02b\x00\x00")
    assert record == {"order_id": "a", "product": "b", "price": Decimal("0.00"), "created_at": 0}
    with pytest.raises(InvalidOrder, match=r"^order_id is not a UUID: 'a'$"):
        validate(record)


def _encode_with(schema: dict, record: dict) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


def test_avro_of_another_schema_is_a_decode_error(codec):
    data = _encode_with({"type": "record", "name": "Other", "fields": [
        {"name": "a", "type": "long"}, {"name": "b", "type": "string"}]}, {"a": 5, "b": "hello"})
    with pytest.raises(DecodeError) as info:
        codec.decode(data)
    assert str(info.value).startswith("not a valid Avro order record: EOFError: ")


def test_avro_of_a_layout_compatible_schema_decodes_then_fails_validation(codec):
    data = _encode_with({"type": "record", "name": "Other", "fields": [
        {"name": "name", "type": "string"}, {"name": "sku", "type": "string"},
        {"name": "blob", "type": "bytes"}, {"name": "n", "type": "long"}]},
        {"name": "alice", "sku": "Toffee", "blob": b"\x01", "n": 7})
    record = codec.decode(data)
    assert record == {"order_id": "alice", "product": "Toffee", "price": Decimal("0.01"), "created_at": 7}
    with pytest.raises(InvalidOrder):
        validate(record)


# -- load_schema ---------------------------------------------------------------------------------

def test_load_schema_returns_the_raw_json():
    raw = load_schema("order.avsc", SCHEMAS)
    assert raw == json.loads((SCHEMAS / "order.avsc").read_text())
    # the raw schema keeps its logical types (they are stripped only for reading)
    assert raw["fields"][0]["type"] == {"type": "string", "logicalType": "uuid"}


def test_load_schema_uses_schema_dir_environment(tmp_path, monkeypatch):
    (tmp_path / "order.avsc").write_text((SCHEMAS / "order.avsc").read_text())
    monkeypatch.setenv("SCHEMA_DIR", str(tmp_path))
    assert codec_module.schema_dir() == tmp_path
    (tmp_path / "order.avsc").unlink()
    with pytest.raises(UsageError, match="is missing"):
        load_schema("order.avsc")


def test_schema_dir_defaults_to_the_repository_schemas(monkeypatch):
    monkeypatch.delenv("SCHEMA_DIR", raising=False)
    assert codec_module.schema_dir() == SCHEMAS


def test_missing_schema_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as info:
        order_codec(tmp_path)
    message = str(info.value)
    assert message == f"schema file {tmp_path / 'order.avsc'} is missing"
    assert "\n" not in message


@pytest.mark.parametrize("content", [
    "{not json",
    "",
    '{"type": "record"}',
    '{"type": "nonsense"}',
    '{"type": "record", "name": "X", "fields": 5}',
    '{"type": "record", "name": "X", "fields": [{"name": "a"}]}',
    '{"type": "bytes", "logicalType": "decimal", "precision": 2, "scale": 5}',
    'null',
])
def test_invalid_schema_file_is_a_one_line_usage_error_naming_the_file(tmp_path, content):
    (tmp_path / "order.avsc").write_text(content)
    with pytest.raises(UsageError) as info:
        order_codec(tmp_path)
    message = str(info.value)
    assert message.startswith(f"schema file {tmp_path / 'order.avsc'} is not a valid Avro schema: ")
    assert "\n" not in message


def test_non_utf8_schema_file_is_a_usage_error(tmp_path):
    (tmp_path / "dead_letter.avsc").write_bytes(b"\xff\xfe{}")
    with pytest.raises(UsageError, match="dead_letter.avsc is not a valid Avro schema"):
        dead_letter_codec(tmp_path)



@pytest.mark.parametrize("content", ['"int"', "[]"])
def test_valid_avro_that_is_not_a_record_is_a_usage_error(tmp_path, content):
    (tmp_path / "order.avsc").write_text(content)
    with pytest.raises(UsageError):
        order_codec(tmp_path)


def test_money_quantizes_to_cents():
    assert str(money("1")) == "1.00"
    assert str(money(Decimal("2.5"))) == "2.50"
    assert str(money("0.125")) == "0.12"  # default context: half-even
    assert str(money(7)) == "7.00"


# -- dead letter codec ---------------------------------------------------------------------------

def test_dead_letter_round_trip_with_every_field():
    codec = DeadLetterCodec(dead_letter_codec())
    letter = DeadLetter(
        error_reason="price must be positive: -3.00", error_type="InvalidOrder", error_stage="validate",
        original_topic="orders", failed_by="aggregation", retry_count=3, replay_count=2,
        error_timestamp="2024-05-01T12:00:00.123456+00:00",
        order_id="3f1c2b1e-7d4a-4c3b-9a1e-0123456789ab", product="Fudge", price=Decimal("-3.00"),
        original_partition=7, original_offset=2**40 + 1, original_timestamp=1_714_564_800_000,
        original_key=b"\x00\xff", original_value=b"\x00\xffraw\x00",
        original_headers=[("trace", b"\x00\xff"), ("empty", None), ("blank", b"")],
    )
    data = codec.encode(letter)
    raw = codec.codec.decode(data)
    assert raw["original_headers"] == [{"key": "trace", "value": b"\x00\xff"}, {"key": "empty", "value": None},
                                       {"key": "blank", "value": b""}]
    back = DeadLetter.from_record(raw)
    assert back == letter
    assert str(back.price) == "-3.00"
    assert back.original_headers == [("trace", b"\x00\xff"), ("empty", None), ("blank", b"")]


def test_dead_letter_round_trip_with_all_optional_fields_empty():
    codec = DeadLetterCodec(dead_letter_codec())
    letter = DeadLetter(error_reason="x", error_type="T", error_stage="deserialize", original_topic="t",
                        failed_by="g", error_timestamp="")
    back = DeadLetter.from_record(codec.codec.decode(codec.encode(letter)))
    assert back == letter
    assert back.original_key is None and back.original_value is None and back.original_headers == []


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1),
                 st.integers(min_value=-(2**15), max_value=2**29),
                 st.sampled_from([0, 63, 64, 8191, 8192, 2**20 - 1, 2**20, 2**27 - 1, 2**27, 2**41 - 1, 2**41,
                                  2**48 - 1, 2**48, 2**55 - 1, 2**55, 2**63 - 1, -1, -64, -65, -(2**63)])))
def test_avro_long_writes_the_bytes_fastavro_writes(value):
    out = io.BytesIO()
    fastavro.schemaless_writer(out, "long", value)
    assert avro_long(value) == out.getvalue()
