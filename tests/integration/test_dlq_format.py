"""--dlq-format original against the real broker, and the DLQ tools on a DLQ that holds every kind of record:
our envelope, our original format, Spring Kafka's and Kafka Connect's dead letters, and garbage."""

from __future__ import annotations

import json
import struct

import pytest
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource
from conftest import Pipeline, a_valid_order, encode_order, produce

from orders_dlq.codec import dead_letter_codec
from orders_dlq.dead_letter import DeadLetter, DeadLetterCodec
from orders_dlq.dlq import DeadLetterProducer
from orders_dlq.settings import KafkaSettings
from orders_dlq.spool import Spool

pytestmark = pytest.mark.integration

POISON = b"\x00not an order\xff"


def test_original_format_writes_the_original_bytes_with_spring_and_connect_headers(pipeline: Pipeline):
    bad = encode_order(a_valid_order(product="Gravel"))
    messages = [(b"good", encode_order(a_valid_order("2.50")), None),
                (b"bad", bad, [("traceparent", b"00-abc-01")]),
                (b"poison", POISON, None)]
    offsets = produce(pipeline.bootstrap, pipeline.topic, messages)
    originals = {m.offset(): m for m in pipeline.read(pipeline.topic)}

    summary = pipeline.consume("--dlq-format", "original")

    assert (summary["processed"], summary["dead_lettered"]) == (1, 2)
    # A plain confluent_kafka consumer, as any non-toolkit reader: the value is the original record.
    letters = {message.key(): message for message in pipeline.read(pipeline.dlq_topic)}
    assert set(letters) == {b"bad", b"poison"}
    for key, offset, stage in ((b"bad", offsets[1], b"validate"), (b"poison", offsets[2], b"deserialize")):
        letter, original = letters[key], originals[offset]
        assert letter.value() == original.value()
        headers = dict(letter.headers())
        assert headers["kafka_dlt-original-topic"] == pipeline.topic.encode()
        assert headers["kafka_dlt-original-partition"] == struct.pack(">i", 0)
        assert headers["kafka_dlt-original-offset"] == struct.pack(">q", offset)
        assert headers["kafka_dlt-original-timestamp"] == struct.pack(">q", original.timestamp()[1])
        assert headers["kafka_dlt-original-timestamp-type"] == b"CreateTime"
        assert headers["kafka_dlt-original-consumer-group"] == pipeline.group.encode()
        assert headers["kafka_dlt-exception-stacktrace"] == headers["__connect.errors.exception.stacktrace"]
        assert headers["kafka_dlt-exception-message"] == headers["__connect.errors.exception.message"]
        assert headers["__connect.errors.topic"] == pipeline.topic.encode()
        assert headers["__connect.errors.partition"] == b"0"
        assert headers["__connect.errors.offset"] == str(offset).encode()
        assert headers["__connect.errors.stage"] == headers["dlq.error.stage"] == stage
        assert headers["__connect.errors.connector.name"] == pipeline.group.encode()
        assert headers["__connect.errors.task.id"]  # the consumer instance, host:pid
        assert headers["dlq.format"] == b"original"
    assert dict(letters[b"bad"].headers())["kafka_dlt-exception-message"].startswith(b"unknown product")
    assert letters[b"bad"].headers()[0] == ("traceparent", b"00-abc-01")  # the original headers come first


def spring_dead_letter(topic: str, order: dict) -> tuple:
    """What Spring Kafka's DeadLetterPublishingRecoverer writes for a listener failure."""
    return (b"spring", encode_order(order), [
        ("kafka_dlt-original-topic", topic.encode()),
        ("kafka_dlt-original-partition", struct.pack(">i", 1)),
        ("kafka_dlt-original-offset", struct.pack(">q", 42)),
        ("kafka_dlt-original-timestamp", struct.pack(">q", 1_764_385_200_000)),
        ("kafka_dlt-original-timestamp-type", b"CreateTime"),
        ("kafka_dlt-original-consumer-group", b"spring-orders"),
        ("kafka_dlt-exception-fqcn", b"org.springframework.kafka.listener.ListenerExecutionFailedException"),
        ("kafka_dlt-exception-cause-fqcn", b"java.lang.IllegalStateException"),
        ("kafka_dlt-exception-message", b"Listener method threw exception; payment service down"),
        ("kafka_dlt-exception-stacktrace", b"org.springframework...ListenerExecutionFailedException\n\tat ..."),
    ])


def connect_dead_letter(topic: str, order: dict) -> tuple:
    """What a Kafka Connect sink writes with errors.deadletterqueue.context.headers.enable=true."""
    return (b"connect", encode_order(order), [
        ("__connect.errors.topic", topic.encode()),
        ("__connect.errors.partition", b"2"),
        ("__connect.errors.offset", b"77"),
        ("__connect.errors.connector.name", b"orders-jdbc-sink"),
        ("__connect.errors.task.id", b"0"),
        ("__connect.errors.stage", b"VALUE_CONVERTER"),
        ("__connect.errors.class.name", b"io.confluent.connect.avro.AvroConverter"),
        ("__connect.errors.exception.class.name", b"org.apache.kafka.connect.errors.DataException"),
        ("__connect.errors.exception.message", b"Failed to deserialize data for topic orders to Avro"),
        ("__connect.errors.exception.stacktrace", b"org.apache.kafka.connect.errors.DataException: ...\n\tat ..."),
    ])


def test_dlq_tools_read_and_replay_every_kind_of_dead_letter(pipeline: Pipeline):
    envelope_order, original_order = a_valid_order(product="Gravel"), a_valid_order(product="Granite")
    spring_order, connect_order = a_valid_order("4.00", "Fudge"), a_valid_order("6.00", "Nougat")
    produce(pipeline.bootstrap, pipeline.topic, [(b"envelope", encode_order(envelope_order), None)])
    pipeline.consume()  # the default: an envelope
    produce(pipeline.bootstrap, pipeline.topic, [(b"original", encode_order(original_order), None)])
    pipeline.consume("--dlq-format", "original")
    foreign = [spring_dead_letter(pipeline.topic, spring_order), connect_dead_letter(pipeline.topic, connect_order),
               (b"garbage", b"\x13\x37 random bytes", None), (b"tombstone", None, None)]
    produce(pipeline.bootstrap, pipeline.dlq_topic, foreign)

    listed = pipeline.scripts.run("dlq_consumer.py", "--jsonl")
    letters = {letter["order_id"]: letter for letter in map(json.loads, listed.stdout.splitlines())}

    assert set(letters) == {o["order_id"] for o in (envelope_order, original_order, spring_order, connect_order)}
    assert {letter["original_topic"] for letter in letters.values()} == {pipeline.topic}
    assert {o: v["error_stage"] for o, v in letters.items()} == {
        envelope_order["order_id"]: "validate", original_order["order_id"]: "validate",
        spring_order["order_id"]: "process", connect_order["order_id"]: "deserialize"}
    assert letters[original_order["order_id"]]["error_reason"].startswith("unknown product")
    assert (letters[original_order["order_id"]]["product"], letters[connect_order["order_id"]]["price"]) == \
        ("Granite", "6.00")
    spring = letters[spring_order["order_id"]]
    assert (spring["original_partition"], spring["original_offset"], spring["failed_by"]) == (1, 42, "spring-orders")
    connect = letters[connect_order["order_id"]]
    assert (connect["original_partition"], connect["original_offset"], connect["failed_by"]) == \
        (2, 77, "orders-jdbc-sink")
    assert "2 message(s)" in listed.stderr and "could not be read as dead letters" in listed.stderr
    stats = pipeline.scripts.json("dlq_consumer.py")
    assert stats["total"] == 4 and stats["by_stage"] == {"validate": 2, "process": 1, "deserialize": 1}

    result = pipeline.scripts.json("dlq_replay.py")

    assert (result["selected"], result["replayed"], result["unreadable"]) == (4, 4, 2)
    replayed = {m.key(): m for m in pipeline.read(pipeline.topic) if "dlq.replay.count" in dict(m.headers() or [])}
    expected = {b"envelope": envelope_order, b"original": original_order, b"spring": spring_order,
                b"connect": connect_order}
    assert {key: m.value() for key, m in replayed.items()} == {key: encode_order(o) for key, o in expected.items()}
    assert (replayed[b"spring"].partition(), replayed[b"connect"].partition()) == (1, 2)
    again = pipeline.scripts.json("dlq_replay.py")
    assert again["replayed"] == 0  # exactly once: the cursor is past them


def test_a_spooled_produce_failure_is_drained_in_the_configured_format(pipeline: Pipeline):
    """producer.py spools an order it could not deliver; a drain configured for the original format
    writes the encoded order itself, whatever format the row was spooled in."""
    order = encode_order(a_valid_order("9.99", "Caramel"))
    letter = DeadLetter(error_reason="Kafka broker unavailable: not confirmed within the 1s delivery budget",
                        error_type="KafkaError._MSG_TIMED_OUT", error_stage="produce", original_topic=pipeline.topic,
                        failed_by="producer.py@host:1", retry_count=1, original_key=b"k-9", original_value=order)
    spool_path = pipeline.scripts.cwd / "spool.sqlite3"
    settings = KafkaSettings(pipeline.bootstrap, pipeline.topic, pipeline.dlq_topic)  # envelope
    spooling = DeadLetterProducer(settings, spool=Spool(spool_path))
    spooling._max_bytes = 1_000_000  # the spool is written without asking the broker, as in an outage
    assert spooling.spool_all([letter]) == 1

    drained = pipeline.scripts.json("dlq_producer.py", "--flush-spool", "--spool", spool_path,
                                    "--dlq-format", "original")

    assert (drained["sent"], drained["remaining"]) == (1, 0)
    [message] = pipeline.read(pipeline.dlq_topic)
    headers = dict(message.headers())
    assert (message.key(), message.value()) == (b"k-9", order)
    assert (headers["dlq.format"], headers["__connect.errors.stage"]) == (b"original", b"produce")
    assert "kafka_dlt-original-partition" not in headers  # a produce failure never had a partition
    assert "dlq.spool.id" in headers  # what makes a drain exactly-once


@pytest.mark.parametrize("dlq_format", ["envelope", "original"])
def test_an_orders_topic_stamped_by_the_broker_gives_dead_letters_that_say_so(pipeline: Pipeline, admin,
                                                                               dlq_format):
    """On a topic with message.timestamp.type=LogAppendTime the original timestamp is the broker's
    append time: Spring's timestamp-type header must say LogAppendTime, and the timestamp must be
    the one a reader of the orders topic sees, through the consumer's fast and general ways alike
    (a poison message fits as it is; a header that needs escaping takes the general way)."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, pipeline.topic, incremental_configs=[
        ConfigEntry("message.timestamp.type", "LogAppendTime", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(30)
    produce(pipeline.bootstrap, pipeline.topic, [
        (b"fast", POISON, None),
        (b"general", POISON, [("kafka_dlt-exception-message", b"an earlier failure's context")]),
        (b"good", encode_order(a_valid_order("2.50")), None)])
    originals = {m.key(): m for m in pipeline.read(pipeline.topic)}
    assert all(m.timestamp()[0] == TIMESTAMP_LOG_APPEND_TIME for m in originals.values())

    summary = pipeline.consume("--dlq-format", dlq_format)

    assert (summary["processed"], summary["dead_lettered"]) == (1, 2)
    letters = {m.key(): m for m in pipeline.read(pipeline.dlq_topic)}
    assert set(letters) == {b"fast", b"general"}
    codec = DeadLetterCodec(dead_letter_codec())
    for key, letter in letters.items():
        headers = dict(letter.headers())
        assert headers["kafka_dlt-original-timestamp-type"] == b"LogAppendTime", key
        assert headers["kafka_dlt-original-timestamp"] == struct.pack(">q", originals[key].timestamp()[1]), key
        read = codec.decode_message(letter.value(), letter.headers(), letter.key(), pipeline.dlq_topic)
        assert read.log_append_time is True and read.original_timestamp == originals[key].timestamp()[1], key


def test_spring_retry_topic_and_twice_dead_lettered_records_are_listed_and_replayed_to_their_origin(
        pipeline: Pipeline):
    """Two of Spring's other shapes: @RetryableTopic's recoverer (kafka_original-*, kafka_exception-*)
    and a record dead-lettered twice (appendOriginalHeaders: a second set of original-* headers, the
    first naming the origin). The tools list both with their origin and replay each there, without
    Spring's context in the replayed message."""
    retried, twice = a_valid_order("3.00", "Toffee"), a_valid_order("5.00", "Caramel")
    retry_topic = (b"retried", encode_order(retried), [
        ("kafka_original-topic", pipeline.topic.encode()), ("kafka_original-partition", struct.pack(">i", 2)),
        ("kafka_original-offset", struct.pack(">q", 11)),
        ("kafka_exception-fqcn", b"org.springframework.kafka.listener.ListenerExecutionFailedException"),
        ("kafka_exception-message", b"Listener failed; stock service down"), ("app", b"kept")])
    dead_lettered_twice = (b"twice", encode_order(twice), [
        ("kafka_dlt-original-topic", pipeline.topic.encode()), ("kafka_dlt-original-partition", struct.pack(">i", 1)),
        ("kafka_dlt-original-offset", struct.pack(">q", 21)),
        ("kafka_dlt-original-topic", pipeline.dlq_topic.encode()),
        ("kafka_dlt-original-partition", struct.pack(">i", 0)), ("kafka_dlt-original-offset", struct.pack(">q", 3)),
        ("kafka_dlt-exception-message", b"failed again after a replay")])
    produce(pipeline.bootstrap, pipeline.dlq_topic, [retry_topic, dead_lettered_twice])

    listed = pipeline.scripts.run("dlq_consumer.py", "--jsonl")
    letters = {letter["order_id"]: letter for letter in map(json.loads, listed.stdout.splitlines())}
    assert set(letters) == {retried["order_id"], twice["order_id"]}, listed.stderr
    first, second = letters[retried["order_id"]], letters[twice["order_id"]]
    assert (first["original_topic"], first["original_partition"], first["original_offset"]) == (pipeline.topic, 2, 11)
    assert (first["error_reason"], first["error_stage"]) == ("Listener failed; stock service down", "process")
    assert (second["original_topic"], second["original_partition"], second["original_offset"]) == \
        (pipeline.topic, 1, 21)
    assert second["error_reason"] == "failed again after a replay"

    result = pipeline.scripts.json("dlq_replay.py")

    assert (result["selected"], result["replayed"]) == (2, 2)
    replayed = {m.key(): m for m in pipeline.read(pipeline.topic)}
    assert (replayed[b"retried"].partition(), replayed[b"twice"].partition()) == (2, 1)
    assert replayed[b"retried"].value() == encode_order(retried)
    for message in replayed.values():
        names = [name for name, _ in message.headers()]
        assert not [n for n in names if n.startswith(("kafka_dlt-", "kafka_original-", "kafka_exception-"))], names
    assert ("app", b"kept") in replayed[b"retried"].headers()
