"""The consumer's fast way of writing a dead letter gives the bytes of the general way, or declines.

DeadLetterProducer.send_failure writes the dead letter of a consumed message without building and
fitting a DeadLetter when every field fits as it is. Whatever the message holds, that must be the
same key, value and headers as encoding dead_letter_of_message(...) the general way, or nothing
(the general way then writes it). No broker: the producer is never asked to send.
"""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

import pytest
from confluent_kafka import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders_dlq.dead_letter import STAGES, dead_letter_of_message
from orders_dlq.dlq import DeadLetterProducer
from orders_dlq.settings import KafkaSettings

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TIMESTAMP = "2026-11-29T06:00:00.123456+00:00"


def writer(dlq_format: str = "envelope", max_bytes: int = 1 << 20) -> DeadLetterProducer:
    settings_ = KafkaSettings("127.0.0.1:1", "orders", "orders.DLQ", dlq_format=dlq_format)
    producer = DeadLetterProducer(settings_, producer=SimpleNamespace())  # encodes only, never sends
    producer._max_bytes = max_bytes  # what describe_configs would have answered
    return producer


WRITER = writer()


def error_of(class_name: str, reason: str) -> Exception:
    return type(class_name, (Exception,), {})(reason)


def general_way(producer, message, order, stage, error, retries, failed_by):
    dead_letter = dead_letter_of_message(message, order, stage, error, retries, failed_by, error_timestamp=TIMESTAMP)
    return producer.encode(dead_letter)


ascii_text = st.characters(min_codepoint=32, max_codepoint=126)
# Around each limit fitted() applies (200 for an order id, 300 for a topic, 1,000 for a header
# name, 2,000 for a reason), in ASCII (the fast way's own case) and not.
any_text = (st.text(max_size=40) | st.text(ascii_text, min_size=195, max_size=205)
            | st.text(ascii_text, min_size=295, max_size=305) | st.text(ascii_text, min_size=995, max_size=1005)
            | st.text(ascii_text, min_size=1995, max_size=2005) | st.just("caf\udce9"))
optional_bytes = st.none() | st.binary(max_size=64)
header_names = any_text | st.sampled_from(["kafka_dlt-original-topic", "dlq.replay.count",
                                                       "__connect.errors.topic", "traceparent",
                                                       "kafka_original-offset", "kafka_exception-message",
                                                       "kafka_key-exception-fqcn"])
header_lists = st.none() | st.lists(st.tuples(header_names, optional_bytes | st.just(b"3")), max_size=5)
prices = st.integers(-(10**13), 10**13).map(lambda cents: Decimal(cents).scaleb(-2)) | st.just(Decimal("1.005"))
orders = st.none() | st.fixed_dictionaries({
    "order_id": st.none() | any_text, "product": st.none() | any_text, "price": st.none() | prices,
    "created_at": st.integers(0, 2**62)})
messages = st.builds(
    lambda topic, partition, offset, key, value, headers, timestamp: Message(
        topic=topic, partition=partition, offset=offset, key=key, value=value, headers=headers, timestamp=timestamp),
    any_text.filter(bool) | st.just("orders"), st.integers(-1, 2**31 - 1), st.integers(-1001, 2**63 - 1),
    optional_bytes, optional_bytes, header_lists,
    st.tuples(st.sampled_from([0, 1, 2]), st.integers(-(2**63), 2**63 - 1)))


@SETTINGS
@given(messages, orders, st.sampled_from(STAGES), st.sampled_from(["DecodeError", "InvalidOrder", "Ünicode", "E"]),
       any_text, st.integers(-1, 2**31), any_text | st.just("order-aggregation"))
def test_the_fast_way_writes_what_the_general_way_writes_or_declines(message, order, stage, error_type, reason,
                                                                     retries, failed_by):
    error = error_of(error_type, reason)
    fast = WRITER.encode_plain_failure(message, order, stage, error, str(error), retries, failed_by, TIMESTAMP)
    if fast is not None:
        assert fast == general_way(WRITER, message, order, stage, error, retries, failed_by)


plain_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1), optional_bytes, optional_bytes,
       st.none() | st.lists(st.tuples(plain_text.filter(lambda n: not n.startswith(("dlq.", "kafka_dlt-", "__c"))),
                                      optional_bytes), max_size=4),
       st.none() | st.fixed_dictionaries({"order_id": plain_text, "product": plain_text,
                                          "price": st.integers(-10**11, 10**11).map(lambda c: Decimal(c).scaleb(-2)),
                                          "created_at": st.integers(0, 2**62)}),
       st.sampled_from(STAGES), plain_text, st.integers(0, 5))
def test_an_ordinary_failure_takes_the_fast_way(partition, offset, key, value, headers, order, stage, reason, retries):
    # The fast way must actually be taken for what a poison flood is made of, not only be safe.
    message = Message(topic="orders", partition=partition, offset=offset, key=key, value=value, headers=headers,
                      timestamp=(1, 1_764_400_000_000))
    error = error_of("DecodeError", reason)
    fast = WRITER.encode_plain_failure(message, order, stage, error, reason, retries, "order-aggregation", TIMESTAMP)
    assert fast is not None
    assert fast == general_way(WRITER, message, order, stage, error, retries, "order-aggregation")


@pytest.mark.parametrize("why, producer, message", [
    ("the original format", writer("original"), Message(topic="orders", partition=0, offset=1, value=b"x")),
    ("a dead letter near the DLQ's limit", writer(max_bytes=70_000),
     Message(topic="orders", partition=0, offset=1, value=b"x" * 5000)),
    ("headers carrying earlier error context", WRITER,
     Message(topic="orders", partition=0, offset=1, value=b"x", headers=[("dlq.error.stage", b"validate")])),
])
def test_what_needs_the_general_way_is_declined(why, producer, message):
    error = error_of("DecodeError", "not a valid Avro order record: x")
    fast = producer.encode_plain_failure(message, None, "deserialize", error, str(error), 0, "g", TIMESTAMP)
    assert fast is None, why


def _failure_with(field: str, text: str):
    """An ordinary failure whose one `field` is `text` (everything else plain)."""
    parts = {"reason": "not a valid Avro order record: x", "topic": "orders", "failed_by": "order-aggregation",
             "order_id": "o-1", "product": "Toffee", "header": "traceparent"}
    parts[field] = text
    message = Message(topic=parts["topic"], partition=1, offset=7, key=b"k", value=b"\x00POISON",
                      headers=[(parts["header"], b"v")], timestamp=(1, 1_764_400_000_000))
    order = {"order_id": parts["order_id"], "product": parts["product"], "price": Decimal("1.50"), "created_at": 1}
    return message, order, error_of("InvalidOrder", parts["reason"]), parts["failed_by"]


@pytest.mark.parametrize("field, limit", [("reason", 2000), ("topic", 300), ("failed_by", 300), ("order_id", 200),
                                          ("product", 200), ("header", 1000)])
@pytest.mark.parametrize("offset", [-1, 0, 1])
@pytest.mark.parametrize("ascii_only", [True, False])
def test_each_text_limit_of_fitting_is_the_fast_ways_limit(field, limit, offset, ascii_only):
    text = "a" * (limit + offset - 1) + ("b" if ascii_only else "\u00e9")
    message, order, error, failed_by = _failure_with(field, text)
    fast = WRITER.encode_plain_failure(message, order, "validate", error, str(error), 0, failed_by, TIMESTAMP)
    general = general_way(WRITER, message, order, "validate", error, 0, failed_by)
    if ascii_only and offset <= 0:
        assert fast == general  # fits as it is: the fast way is taken, and writes the same
    else:
        assert fast is None  # fitting would change it: left to the general way


def test_in_registry_mode_both_ways_write_the_confluent_header():
    # frame_dead_letters gives the codec the 5-byte header of the registered dead-letter schema;
    # the fast way must write it too (it once wrote bare Avro behind a registry-mode consumer).
    framed = writer()
    framed.codec.header = bytes((0,)) + (42).to_bytes(4, "big")
    message, order, error, failed_by = _failure_with("reason", "price must be positive: -1.00")
    fast = framed.encode_plain_failure(message, order, "validate", error, str(error), 0, failed_by, TIMESTAMP)
    assert fast is not None and fast[1].startswith(framed.codec.header)
    assert fast == general_way(framed, message, order, "validate", error, 0, failed_by)


def test_a_dlq_that_refuses_even_a_minimal_dead_letter_is_one_sentence_not_a_value_error():
    """The limit a DLQ's refusals taught (see _learn_from_delivery) can fall below any dead letter:
    the run must end with a sentence naming the topic, never with a traceback."""
    from orders_dlq.dead_letter import DeadLetter
    from orders_dlq.errors import ToolFailure

    small = writer(max_bytes=300)
    small._last_refusal = "Broker: Broker failed to validate record"
    letter = DeadLetter(error_reason="not an order", error_type="DecodeError", error_stage="deserialize",
                        original_topic="orders", failed_by="group", original_value=b"\x00poison")
    with pytest.raises(ToolFailure) as failure:
        small.encode(letter)
    assert "orders.DLQ refuses even a dead letter" in str(failure.value)
    assert "failed to validate record" in str(failure.value)
