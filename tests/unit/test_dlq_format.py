"""--dlq-format original: the original bytes with Spring's and Connect's headers, written and read back."""

from __future__ import annotations

import struct
from decimal import Decimal
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders_dlq.codec import dead_letter_codec, order_codec
from orders_dlq.dead_letter import (
    FORMAT_AVRO,
    FORMAT_HEADER,
    FORMAT_ORIGINAL,
    DeadLetter,
    DeadLetterCodec,
    dead_letter_from_headers,
)
from orders_dlq.dlq import DeadLetterProducer
from orders_dlq.errors import UsageError
from orders_dlq.foreign import with_order_fields
from orders_dlq.selection import UnreadableRecord, read_dead_letter
from orders_dlq.settings import KafkaSettings, kafka_settings

CODEC = DeadLetterCodec(dead_letter_codec())
ORDERS = order_codec()
ERROR_PREFIXES = ("kafka_dlt-", "__connect.errors.", "dlq.")


def make_letter(**changes) -> DeadLetter:
    values = dict(
        error_reason="price must be positive: -3.00", error_type="InvalidOrder", error_stage="validate",
        original_topic="orders", failed_by="aggregation-1", retry_count=2, replay_count=1,
        error_timestamp="2026-11-29T03:00:00+00:00", original_partition=5, original_offset=2**33 + 7,
        original_timestamp=1_714_564_800_123, original_key=b"k\x00", original_value=b"\x00\xffvalue",
        original_headers=[("trace-id", b"abc"), ("nothing", None)],
    )
    values.update(changes)
    return DeadLetter(**values)


def named(headers) -> dict:
    return dict(headers)


def test_original_format_headers_use_spring_and_connect_encodings():
    key, value, headers = CODEC.encode_original(make_letter(), "consumer@host:42")
    assert (key, value) == (b"k\x00", b"\x00\xffvalue")  # the original bytes, unchanged
    assert headers[:2] == [("trace-id", b"abc"), ("nothing", None)]  # the original headers first
    h = named(headers)
    # Spring Kafka's DeadLetterPublishingRecoverer: int and longs big-endian, the rest UTF-8 text.
    assert h["kafka_dlt-original-topic"] == b"orders"
    assert h["kafka_dlt-original-partition"] == b"\x00\x00\x00\x05"
    assert h["kafka_dlt-original-offset"] == struct.pack(">q", 2**33 + 7) == b"\x00\x00\x00\x02\x00\x00\x00\x07"
    assert h["kafka_dlt-original-timestamp"] == struct.pack(">q", 1_714_564_800_123)
    assert h["kafka_dlt-original-timestamp-type"] == b"CreateTime"
    assert h["kafka_dlt-original-consumer-group"] == b"aggregation-1"
    assert h["kafka_dlt-exception-fqcn"] == b"InvalidOrder"
    assert h["kafka_dlt-exception-message"] == b"price must be positive: -3.00"
    assert h["kafka_dlt-exception-stacktrace"] == b"InvalidOrder: price must be positive: -3.00"
    # Kafka Connect's errors.deadletterqueue.context.headers.enable: every value a string.
    assert h["__connect.errors.topic"] == b"orders"
    assert h["__connect.errors.partition"] == b"5"
    assert h["__connect.errors.offset"] == str(2**33 + 7).encode()
    assert h["__connect.errors.stage"] == b"validate"
    assert h["__connect.errors.class.name"] == b"orders_dlq.orders.validate"
    assert h["__connect.errors.exception.class.name"] == b"InvalidOrder"
    assert h["__connect.errors.exception.message"] == b"price must be positive: -3.00"
    assert h["__connect.errors.exception.stacktrace"] == b"InvalidOrder: price must be positive: -3.00"
    assert h["__connect.errors.connector.name"] == b"aggregation-1"
    assert h["__connect.errors.task.id"] == b"consumer@host:42"
    # Ours, for what neither has; and no envelope marker: the value is not our Avro record.
    assert (h["dlq.error.stage"], h["dlq.retry.count"], h["dlq.replay.count"]) == (b"validate", b"2", b"1")
    assert h["dlq.error.timestamp"] == b"2026-11-29T03:00:00+00:00"
    assert h[FORMAT_HEADER] == FORMAT_ORIGINAL
    assert (FORMAT_HEADER, FORMAT_AVRO) not in headers


def test_a_python_traceback_goes_into_both_stacktrace_headers():
    letter = make_letter(stacktrace='Traceback (most recent call last):\n  File "x.py", line 1\nKeyError: 1')
    h = named(CODEC.encode_original(letter, "i")[2])
    assert h["kafka_dlt-exception-stacktrace"] == h["__connect.errors.exception.stacktrace"]
    assert h["kafka_dlt-exception-stacktrace"].startswith(b"Traceback (most recent call last):")


def test_original_format_reads_back_as_the_same_dead_letter():
    letter = make_letter()
    key, value, headers = CODEC.encode_original(letter, "i")
    back = CODEC.decode_message(value, headers, key, "orders.DLQ")
    assert back == make_letter(stacktrace="InvalidOrder: price must be positive: -3.00")


texts = st.text(min_size=1, max_size=40)
optional_bytes = st.one_of(st.none(), st.binary(max_size=100))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=200), optional_bytes,
       st.lists(st.tuples(st.text(max_size=20), optional_bytes), max_size=5),
       texts, texts, st.sampled_from(["produce", "deserialize", "validate", "process"]), texts, texts,
       st.integers(-5, 2**40), st.integers(-5, 2**40), st.one_of(st.none(), st.integers(-(2**40), 2**40)),
       st.one_of(st.none(), st.integers(-(2**31), 2**31)), st.one_of(st.none(), st.integers(-1, 2**64)),
       st.one_of(st.none(), st.integers(-(2**64), 2**64)), st.one_of(st.none(), texts))
def test_round_trip_through_headers(value, key, headers, reason, error_type, stage, topic, failed_by, retries,
                                    replays, timestamp, partition, offset, original_timestamp, trace):
    """Whatever a dead letter holds, its original-format message reads back as the same dead letter
    (fitted: the values the headers cannot carry are clamped or dropped the same way as in the envelope)."""
    letter = DeadLetter(error_reason=reason, error_type=error_type, error_stage=stage, original_topic=topic,
                        failed_by=failed_by, retry_count=retries, replay_count=replays,
                        error_timestamp=str(timestamp), original_partition=partition, original_offset=offset,
                        original_timestamp=original_timestamp, original_key=key, original_value=value,
                        original_headers=headers, stacktrace=trace).fitted()
    out_key, out_value, out_headers = CODEC.encode_original(letter, "task-1")
    assert (out_key, out_value) == (key, value)
    back = CODEC.decode_message(out_value, out_headers, out_key, "orders.DLQ")
    kept = [(k, v) for k, v in letter.original_headers if not k.startswith(ERROR_PREFIXES)]
    expected = DeadLetter(**{**letter.__dict__, "original_headers": kept,
                             "stacktrace": letter.stacktrace or f"{letter.error_type}: {letter.error_reason}"})
    assert back == expected


# -- reading -------------------------------------------------------------------------------------

def message(value, headers, key=None, offset=7):
    """Enough of a confluent_kafka Message for read_dead_letter."""
    return SimpleNamespace(value=lambda: value, headers=lambda: headers, key=lambda: key, topic=lambda: "o.DLQ",
                           partition=lambda: 0, offset=lambda: offset, timestamp=lambda: (1, 1_764_385_200_000))


def an_order(**changes) -> dict:
    order = {"order_id": "0b7e5c1e-0000-4000-8000-000000000001", "product": "Fudge", "price": Decimal("-3.00"),
             "created_at": 1_764_385_200_000_000}
    order.update(changes)
    return order


def test_an_original_value_that_is_an_order_gives_the_order_fields():
    order = an_order()
    letter = make_letter(original_value=ORDERS.encode(order))
    key, value, headers = CODEC.encode_original(letter, "i")
    record = read_dead_letter(message(value, headers, key), CODEC, "o.DLQ")
    dead = record.dead_letter
    assert (dead.order_id, dead.product, dead.price) == (order["order_id"], "Fudge", Decimal("-3.00"))
    assert dead.original_value == value


def test_poison_as_original_value_has_no_order_fields():
    assert with_order_fields(make_letter(original_value=b"\xff\xfe")).order_id is None
    assert with_order_fields(make_letter(original_value=None)).order_id is None


def test_spring_record_is_read_with_a_stage_and_the_dlq_record_time():
    headers = [("kafka_dlt-original-topic", b"orders"), ("kafka_dlt-original-partition", struct.pack(">i", 2)),
               ("kafka_dlt-original-offset", struct.pack(">q", 99)),
               ("kafka_dlt-exception-fqcn", b"org.springframework.kafka.listener.ListenerExecutionFailedException"),
               ("kafka_dlt-exception-message", b"Listener failed")]
    record = read_dead_letter(message(b"payload", headers), CODEC, "o.DLQ")
    dead = record.dead_letter
    assert (dead.error_stage, dead.original_partition, dead.original_offset) == ("process", 2, 99)
    assert record.failed_at is not None and record.failed_at.year == 2025


@pytest.mark.parametrize("value, headers", [(None, None), (None, []), (b"\x00random", []),
                                            (b"\x00random", [(FORMAT_HEADER, FORMAT_AVRO)])])
def test_garbage_and_tombstones_are_unreadable(value, headers):
    with pytest.raises(UnreadableRecord):
        read_dead_letter(message(value, headers), CODEC, "o.DLQ")


def test_reduced_marker_is_read_back_from_headers():
    letter = make_letter().reduced_to_fit(1)
    back = dead_letter_from_headers(None, letter.headers(), None, "o.DLQ")
    assert (back.reduced, back.original_size, back.original_sha256) == ("value", len(make_letter().original_value),
                                                                          letter.original_sha256)


# -- writing through DeadLetterProducer ----------------------------------------------------------

def dead_letter_producer(dlq_format: str, max_bytes: int = 1_000_000) -> DeadLetterProducer:
    # Nothing is sent: the producer is never polled and the DLQ limit is given, not asked for.
    settings = KafkaSettings("127.0.0.1:9", "orders", "orders.DLQ", dlq_format=dlq_format)
    publisher = DeadLetterProducer(settings, origin="producer.py@host:1")
    publisher._max_bytes = max_bytes
    return publisher


def test_producer_writes_the_configured_format():
    letter = make_letter()
    key, value, headers = dead_letter_producer("original").encode(letter)
    assert (key, value) == (letter.original_key, letter.original_value)
    assert named(headers)["__connect.errors.task.id"] == b"producer.py@host:1"
    key, value, headers = dead_letter_producer("envelope").encode(letter)
    assert (FORMAT_HEADER, FORMAT_AVRO) in headers and value != letter.original_value
    assert "kafka_dlt-exception-stacktrace" not in named(headers)  # the envelope's cost is unchanged


def test_original_without_a_value_or_too_large_is_written_as_an_envelope():
    key, value, headers = dead_letter_producer("original").encode(make_letter(original_value=None))
    assert (FORMAT_HEADER, FORMAT_AVRO) in headers
    big = make_letter(original_value=b"x" * 200_000)
    key, value, headers = dead_letter_producer("original", max_bytes=100_000).encode(big)
    back = CODEC.decode_message(value, headers, key)
    assert (back.reduced, back.original_size, back.original_value) == ("value", 200_000, None)


def test_a_spooled_row_is_converted_to_the_drain_format():
    order = an_order()
    letter = make_letter(original_value=ORDERS.encode(order))
    envelope = dead_letter_producer("envelope")
    original = dead_letter_producer("original")
    as_envelope = envelope.encode(letter)
    as_original = original.encode(letter)
    assert envelope.in_configured_format(*as_envelope) == as_envelope  # same format: untouched
    key, value, headers = original.in_configured_format(*as_envelope)
    assert (key, value, named(headers)[FORMAT_HEADER]) == (letter.original_key, letter.original_value,
                                                           FORMAT_ORIGINAL)
    key, value, headers = envelope.in_configured_format(*as_original)
    back = CODEC.decode_message(value, headers, key)
    assert (FORMAT_HEADER, FORMAT_AVRO) in headers and back.original_value == letter.original_value
    assert (back.error_reason, back.retry_count, back.original_offset) == (letter.error_reason, 2, 2**33 + 7)
    assert (back.order_id, back.product, back.price) == (order["order_id"], "Fudge", Decimal("-3.00"))


# -- the setting ---------------------------------------------------------------------------------

def args(**given):
    return SimpleNamespace(bootstrap_servers=None, topic=None, dlq_topic=None, client_overrides=[], **given)


def test_dlq_format_flag_beats_environment_beats_default(monkeypatch):
    monkeypatch.delenv("DLQ_FORMAT", raising=False)
    assert kafka_settings(args()).dlq_format == "envelope"
    monkeypatch.setenv("DLQ_FORMAT", "original")
    assert kafka_settings(args()).dlq_format == "original"
    assert kafka_settings(args(dlq_format="envelope")).dlq_format == "envelope"


def test_a_bad_dlq_format_in_the_environment_is_one_sentence(monkeypatch):
    monkeypatch.setenv("DLQ_FORMAT", "json")
    with pytest.raises(UsageError, match=r"^DLQ_FORMAT='json' .* must be one of envelope, original$"):
        kafka_settings(args())
