"""Dead-letter headers (Spring Kafka, Kafka Connect, ours), re-dead-lettering, reading other tools' DLQs."""

from __future__ import annotations

import struct
from datetime import datetime
from decimal import Decimal

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME, Message

from orders_dlq.codec import DecodeError, dead_letter_codec
from orders_dlq.dead_letter import (
    FORMAT_AVRO,
    FORMAT_HEADER,
    DeadLetter,
    DeadLetterCodec,
    dead_letter_from_headers,
    dead_letter_of_message,
)


def make_letter(**changes) -> DeadLetter:
    values = dict(
        error_reason="prix négatif: -3.00 €", error_type="InvalidOrder", error_stage="validate",
        original_topic="orders", failed_by="aggregation-1", retry_count=2, replay_count=1,
        error_timestamp="2024-05-01T12:00:00+00:00", order_id="3f1c2b1e-7d4a-4c3b-9a1e-0123456789ab",
        product="Fudge", price=Decimal("-3.00"), original_partition=5, original_offset=2**33 + 7,
        original_timestamp=1_714_564_800_123, original_key=b"k\x00", original_value=b"\x00\xffvalue",
        original_headers=[("trace-id", b"abc"), ("nothing", None)],
    )
    values.update(changes)
    return DeadLetter(**values)


@pytest.fixture(scope="module")
def codec():
    return DeadLetterCodec(dead_letter_codec())


def test_headers_exact_names_order_and_encodings():
    assert make_letter().headers() == [
        ("trace-id", b"abc"),
        ("nothing", None),
        ("kafka_dlt-original-topic", b"orders"),
        ("kafka_dlt-original-consumer-group", b"aggregation-1"),
        ("kafka_dlt-exception-fqcn", b"InvalidOrder"),
        ("kafka_dlt-exception-message", "prix négatif: -3.00 €".encode()),
        ("__connect.errors.topic", b"orders"),
        ("__connect.errors.stage", b"validate"),
        ("__connect.errors.exception.class.name", b"InvalidOrder"),
        ("__connect.errors.exception.message", "prix négatif: -3.00 €".encode()),
        ("dlq.error.stage", b"validate"),
        ("dlq.error.timestamp", b"2024-05-01T12:00:00+00:00"),
        ("dlq.retry.count", b"2"),
        ("dlq.replay.count", b"1"),
        ("dlq.failed.by", b"aggregation-1"),
        ("kafka_dlt-original-partition", b"\x00\x00\x00\x05"),
        ("__connect.errors.partition", b"5"),
        ("kafka_dlt-original-offset", b"\x00\x00\x00\x02\x00\x00\x00\x07"),
        ("__connect.errors.offset", b"8589934599"),
        ("kafka_dlt-original-timestamp", struct.pack(">q", 1_714_564_800_123)),
        ("kafka_dlt-original-timestamp-type", b"CreateTime"),
        ("dlq.format", b"orders_dlq.DeadLetter/avro"),
    ]


def test_spring_binary_headers_are_big_endian_fixed_width():
    headers = dict(make_letter(original_partition=258, original_offset=1, original_timestamp=2**40).headers())
    assert headers["kafka_dlt-original-partition"] == b"\x00\x00\x01\x02"
    assert len(headers["kafka_dlt-original-offset"]) == 8
    assert struct.unpack(">q", headers["kafka_dlt-original-offset"]) == (1,)
    assert headers["kafka_dlt-original-timestamp"] == b"\x00\x00\x01\x00\x00\x00\x00\x00"


def test_headers_without_optional_positions():
    letter = make_letter(original_partition=None, original_offset=None, original_timestamp=None,
                         original_headers=[])
    names = [name for name, _ in letter.headers()]
    assert names == [
        "kafka_dlt-original-topic", "kafka_dlt-original-consumer-group", "kafka_dlt-exception-fqcn",
        "kafka_dlt-exception-message", "__connect.errors.topic", "__connect.errors.stage",
        "__connect.errors.exception.class.name", "__connect.errors.exception.message", "dlq.error.stage",
        "dlq.error.timestamp", "dlq.retry.count", "dlq.replay.count", "dlq.failed.by", "dlq.format"]


def test_partition_zero_and_offset_zero_are_written():
    headers = dict(make_letter(original_partition=0, original_offset=0, original_timestamp=0).headers())
    assert headers["kafka_dlt-original-partition"] == b"\x00" * 4
    assert headers["kafka_dlt-original-offset"] == b"\x00" * 8
    assert headers["kafka_dlt-original-timestamp"] == b"\x00" * 8
    assert headers["__connect.errors.partition"] == b"0"


def test_redead_lettering_does_not_pile_up_error_headers():
    first = make_letter(original_headers=[("trace-id", b"abc"), ("nothing", None)])
    second = make_letter(error_reason="second failure: boom", retry_count=0, replay_count=2,
                         original_headers=[("a", b"1")] + first.headers() + [("dlq.spool.id", b"xyz"),
                                                                             ("z", b"2")])
    headers = second.headers()
    names = [name for name, _ in headers]
    error_names = [n for n in names if n.startswith(("kafka_dlt-", "__connect.errors.", "dlq."))]
    assert len(error_names) == len(set(error_names)) == 20
    assert error_names == [n for n, _ in first.headers() if n not in ("trace-id", "nothing")]
    assert "dlq.spool.id" not in names
    # the non-error original headers are kept, in their order, before this failure's context
    assert headers[:4] == [("a", b"1"), ("trace-id", b"abc"), ("nothing", None), ("z", b"2")]
    values = dict(headers)
    assert values["kafka_dlt-exception-message"] == b"second failure: boom"
    assert values["dlq.replay.count"] == b"2"
    assert headers[-1] == (FORMAT_HEADER, FORMAT_AVRO)


def test_default_error_timestamp_is_utc_iso8601():
    letter = DeadLetter("r", "T", "process", "orders", "g")
    stamp = datetime.fromisoformat(letter.error_timestamp)
    assert stamp.utcoffset().total_seconds() == 0
    assert letter.retry_count == 0 and letter.replay_count == 0 and letter.original_headers == []


def test_for_order_copies_order_fields():
    order = {"order_id": "id", "product": "Nougat", "price": Decimal("1.00"), "created_at": 1}
    letter = DeadLetter.for_order(order, error_reason="r", error_type="T", error_stage="validate",
                                  original_topic="orders", failed_by="g")
    assert (letter.order_id, letter.product, letter.price) == ("id", "Nougat", Decimal("1.00"))
    empty = DeadLetter.for_order(None, error_reason="r", error_type="T", error_stage="deserialize",
                                 original_topic="orders", failed_by="g")
    assert (empty.order_id, empty.product, empty.price) == (None, None, None)


def test_from_record_ignores_unknown_fields():
    record = make_letter().to_record()
    record["something_new"] = 1
    assert DeadLetter.from_record(record) == make_letter()


# -- reading other tools' DLQs -------------------------------------------------------------------

def test_spring_style_message():
    headers = [
        ("traceparent", b"00-abc"),
        ("kafka_dlt-original-topic", b"payments"),
        ("kafka_dlt-original-partition", struct.pack(">i", 3)),
        ("kafka_dlt-original-offset", struct.pack(">q", 123456789012)),
        ("kafka_dlt-original-timestamp", struct.pack(">q", 1_714_564_800_000)),
        ("kafka_dlt-original-timestamp-type", b"CreateTime"),
        ("kafka_dlt-original-consumer-group", b"payments-service"),
        ("kafka_dlt-exception-fqcn", b"org.springframework.kafka.support.serializer.DeserializationException"),
        ("kafka_dlt-exception-message", b"failed to deserialize: bad magic byte"),
        ("kafka_dlt-exception-stacktrace", b"at ..."),
    ]
    letter = dead_letter_from_headers(b"\x00original", headers, b"key-1", "payments.DLT")
    assert letter == DeadLetter(
        error_reason="failed to deserialize: bad magic byte",
        error_type="org.springframework.kafka.support.serializer.DeserializationException",
        error_stage="deserialize", error_timestamp="", original_topic="payments", failed_by="payments-service",
        original_partition=3, original_offset=123456789012, original_timestamp=1_714_564_800_000,
        original_key=b"key-1", original_value=b"\x00original", original_headers=[("traceparent", b"00-abc")],
        stacktrace="at ...",
    )


def test_connect_style_message():
    headers = [
        ("__connect.errors.topic", b"sensor-readings"),
        ("__connect.errors.partition", b"11"),
        ("__connect.errors.offset", b"4242"),
        ("__connect.errors.connector.name", b"jdbc-sink"),
        ("__connect.errors.task.id", b"0"),
        ("__connect.errors.stage", b"VALUE_CONVERTER"),
        ("__connect.errors.class.name", b"org.apache.kafka.connect.json.JsonConverter"),
        ("__connect.errors.exception.class.name", b"org.apache.kafka.connect.errors.DataException"),
        ("__connect.errors.exception.message", b"Converting byte[] to Kafka Connect data failed"),
        ("app", None),
    ]
    letter = dead_letter_from_headers(b"{bad json", headers, None, "dlq-jdbc")
    assert letter.error_reason == "Converting byte[] to Kafka Connect data failed"
    assert letter.error_type == "org.apache.kafka.connect.errors.DataException"
    assert letter.error_stage == "deserialize"  # Connect's converter stage, in our words
    assert letter.original_topic == "sensor-readings"
    assert letter.original_partition == 11 and letter.original_offset == 4242
    assert letter.original_timestamp is None
    assert letter.failed_by == "jdbc-sink"
    assert letter.retry_count == 0 and letter.replay_count == 0
    assert letter.original_value == b"{bad json" and letter.original_key is None
    assert letter.original_headers == [("app", None)]
    assert letter.order_id is None and letter.price is None


def test_topic_falls_back_to_the_dlq_topic_name():
    headers = [("__connect.errors.exception.message", b"boom")]
    assert dead_letter_from_headers(b"v", headers, None, "orders.DLQ").original_topic == "orders"
    assert dead_letter_from_headers(b"v", headers, None, "orders.DLT").original_topic == "orders"
    assert dead_letter_from_headers(b"v", headers, None, "").original_topic == "unknown"
    letter = dead_letter_from_headers(b"v", headers, None)
    assert (letter.error_type, letter.error_stage, letter.failed_by) == ("unknown", "unknown", "unknown")


def test_our_headers_read_back_without_the_avro_value():
    letter = make_letter()
    back = dead_letter_from_headers(letter.original_value, letter.headers(), letter.original_key, "orders.DLQ")
    assert back == make_letter(order_id=None, product=None, price=None)


def test_message_without_error_headers_is_a_decode_error():
    with pytest.raises(DecodeError, match="^neither our Avro dead letter nor a message with dead-letter headers$"):
        dead_letter_from_headers(b"v", [("trace-id", b"x")], None)
    with pytest.raises(DecodeError):
        dead_letter_from_headers(b"v", [], None)


def test_decode_message_dispatches_on_the_format_header(codec):
    letter = make_letter()
    value = codec.encode(letter)
    assert codec.decode_message(value, letter.headers(), b"ignored", "orders.DLQ") == letter
    # without the format header the value is taken as the original message
    without = [h for h in letter.headers() if h[0] != FORMAT_HEADER]
    other = codec.decode_message(value, without, b"k", "orders.DLQ")
    assert other.original_value == value and other.order_id is None
    # a different format value is not ours either
    other = codec.decode_message(b"raw", without + [(FORMAT_HEADER, b"something/else")], None)
    assert other.original_value == b"raw"


def test_decode_message_without_headers_is_a_decode_error(codec):
    with pytest.raises(DecodeError):
        codec.decode_message(b"anything", None)
    with pytest.raises(DecodeError):
        codec.decode_message(None, [])


def test_decode_message_with_format_header_but_garbage_value(codec):
    with pytest.raises(DecodeError):
        codec.decode_message(b"\x00garbage", [(FORMAT_HEADER, FORMAT_AVRO)])


@pytest.mark.parametrize("header, value", [
    ("__connect.errors.partition", b"abc"),
    ("__connect.errors.partition", b""),
    ("__connect.errors.partition", b"-"),
    ("__connect.errors.partition", b"5x"),
    ("kafka_dlt-original-partition", b"\x00\x01"),  # neither 4 nor 8 bytes, no text fallback
])
def test_unreadable_positions_become_none(header, value):
    letter = dead_letter_from_headers(b"v", [("__connect.errors.topic", b"t"), (header, value)], None)
    assert letter.original_partition is None


def test_negative_text_position_is_read():
    letter = dead_letter_from_headers(b"v", [("__connect.errors.offset", b"-1")], None)
    assert letter.original_offset == -1



@pytest.mark.parametrize("value", [b"--5", "²".encode()])
def test_malformed_text_position_does_not_crash(value):
    letter = dead_letter_from_headers(b"v", [("__connect.errors.partition", value)], None)
    assert letter.original_partition is None


def test_the_cheap_failure_timestamp_is_the_utc_iso_time_of_now():
    from datetime import UTC, datetime

    from orders_dlq.dead_letter import utc_now_iso

    for _ in range(3):
        before = datetime.now(UTC)
        stamped = datetime.fromisoformat(utc_now_iso())
        after = datetime.now(UTC)
        assert stamped.utcoffset().total_seconds() == 0
        assert before <= stamped <= after


@pytest.mark.parametrize("timestamp_type, header", [(TIMESTAMP_CREATE_TIME, b"CreateTime"),
                                                    (TIMESTAMP_LOG_APPEND_TIME, b"LogAppendTime")])
def test_the_timestamp_type_of_the_original_travels_in_spring_s_header_and_back(codec, timestamp_type, header):
    message = Message(topic="orders", partition=1, offset=9, key=b"k", value=b"\x00poison",
                      timestamp=(timestamp_type, 1_764_385_200_000))
    letter = dead_letter_of_message(message, None, "deserialize", ValueError("no order"), 0, "group")
    headers = letter.headers()
    assert dict(headers)["kafka_dlt-original-timestamp-type"] == header
    assert codec.decode_message(codec.encode(letter), headers).log_append_time is (header == b"LogAppendTime")
    original = letter.original_format_headers("host:1")
    assert dead_letter_from_headers(b"\x00poison", original, b"k").log_append_time is (header == b"LogAppendTime")
    assert letter.fitted().log_append_time is letter.log_append_time


def test_a_spring_retry_topic_dead_letter_is_read_from_its_kafka_original_headers():
    """@RetryableTopic's recoverer names the context kafka_original-* and kafka_exception-*."""
    headers = [
        ("kafka_original-topic", b"payments"), ("kafka_original-partition", struct.pack(">i", 2)),
        ("kafka_original-offset", struct.pack(">q", 77)), ("kafka_original-timestamp", struct.pack(">q", 1_000)),
        ("kafka_original-timestamp-type", b"LogAppendTime"),
        ("kafka_dlt-original-consumer-group", b"payments-service"),
        ("kafka_exception-fqcn", b"org.springframework.kafka.listener.ListenerExecutionFailedException"),
        ("kafka_exception-message", b"Listener failed; card declined"),
        ("kafka_exception-stacktrace", b"at ..."), ("traceparent", b"00-abc"),
    ]
    letter = dead_letter_from_headers(b"original", headers, b"k", "payments-dlt")
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == ("payments", 2, 77)
    assert (letter.original_timestamp, letter.log_append_time) == (1_000, True)
    assert (letter.error_reason, letter.error_stage, letter.failed_by) == (
        "Listener failed; card declined", "process", "payments-service")
    assert letter.stacktrace == "at ..."
    assert letter.original_headers == [("traceparent", b"00-abc")]  # Spring's context is not the original's


def test_a_record_dead_lettered_twice_by_spring_keeps_its_first_origin_and_its_last_exception():
    """appendOriginalHeaders (Spring's default) adds the original-* headers again at each hop."""
    def hop(topic: bytes, offset: int) -> list:
        return [("kafka_dlt-original-topic", topic), ("kafka_dlt-original-partition", struct.pack(">i", 0)),
                ("kafka_dlt-original-offset", struct.pack(">q", offset))]
    headers = [*hop(b"orders", 5), ("kafka_dlt-exception-message", b"first failure"),
               *hop(b"orders.DLT", 9), ("kafka_dlt-exception-message", b"second failure")]
    letter = dead_letter_from_headers(b"v", headers, None)
    assert (letter.original_topic, letter.original_offset) == ("orders", 5)
    assert letter.error_reason == "second failure"


def test_a_spring_key_deserialization_failure_gives_its_reason_and_the_deserialize_stage():
    headers = [("kafka_dlt-original-topic", b"orders"),
               ("kafka_dlt-key-exception-fqcn",
                b"org.springframework.kafka.support.serializer.DeserializationException"),
               ("kafka_dlt-key-exception-message", b"failed to deserialize the key"),
               ("kafka_dlt-key-exception-stacktrace", b"at key ...")]
    letter = dead_letter_from_headers(b"v", headers, b"\xff")
    assert (letter.error_reason, letter.error_stage, letter.stacktrace) == (
        "failed to deserialize the key", "deserialize", "at key ...")
    assert letter.error_type.endswith("DeserializationException")
