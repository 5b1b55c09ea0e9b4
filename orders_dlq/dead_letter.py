"""The dead-letter record: what failed, why, where, and the original bytes, as Avro and as headers.

Headers follow two conventions that existing tools already read:
- Spring Kafka's DeadLetterPublishingRecoverer (`kafka_dlt-*`): topic, group, exception class and
  message as UTF-8; partition as a 4-byte big-endian int; offset and timestamp as 8-byte
  big-endian longs; timestamp type as the string "CreateTime"/"LogAppendTime". Read back also
  under the names of Spring's retry topics (kafka_original-*, kafka_exception-*).
- Kafka Connect's errors.deadletterqueue.context.headers.enable (`__connect.errors.*`): all UTF-8
  strings, numbers in decimal.
Our own `dlq.*` headers carry what neither has: stage, retry and replay counts, time of failure.

Two ways to write a dead letter (--dlq-format):
- envelope (the default): the value is our Avro DeadLetter record, marked `dlq.format:
  orders_dlq.DeadLetter/avro`; the headers repeat the context for tools that only look there.
- original: the value and key are the original message's bytes unchanged, the way Spring's
  DeadLetterPublishingRecoverer and Connect's DLQ write them, so a Spring @DltHandler or a Connect
  reader gets the record it would have got; all context is in the headers above, plus the stack
  trace headers and Connect's connector.name / task.id / class.name, marked `dlq.format: original`.
  A dead letter without an original value to carry (a null message, or one too large for the DLQ)
  is written as an envelope even then: the envelope is what can say what was left out.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import time
import traceback
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from decimal import Decimal

from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME

from orders_dlq.codec import PRICE_SCALE, AvroCodec, DecodeError, avro_decimal, avro_length, avro_long, unscaled_cents

STAGES = ("produce", "deserialize", "validate", "process")

SPRING_TOPIC = "kafka_dlt-original-topic"
SPRING_PARTITION = "kafka_dlt-original-partition"
SPRING_OFFSET = "kafka_dlt-original-offset"
SPRING_TIMESTAMP = "kafka_dlt-original-timestamp"
SPRING_TIMESTAMP_TYPE = "kafka_dlt-original-timestamp-type"
SPRING_GROUP = "kafka_dlt-original-consumer-group"
SPRING_EXCEPTION_CLASS = "kafka_dlt-exception-fqcn"
SPRING_EXCEPTION_MESSAGE = "kafka_dlt-exception-message"
SPRING_STACKTRACE = "kafka_dlt-exception-stacktrace"
SPRING_KEY_EXCEPTION_CLASS = "kafka_dlt-key-exception-fqcn"  # when the key failed to deserialize
SPRING_KEY_EXCEPTION_MESSAGE = "kafka_dlt-key-exception-message"
SPRING_KEY_STACKTRACE = "kafka_dlt-key-exception-stacktrace"
SPRING_PREFIX = "kafka_dlt-"
SPRING_ORIGINAL_PREFIX = SPRING_PREFIX + "original-"
# Spring's non-blocking retries (@RetryableTopic) write the same context without "dlt-":
# kafka_original-topic, kafka_exception-message, kafka_key-exception-fqcn, ... (read as the above).
SPRING_RETRY_PREFIXES = ("kafka_original-", "kafka_exception-", "kafka_key-exception-")
SPRING_PREFIXES = (SPRING_PREFIX, *SPRING_RETRY_PREFIXES)
CONNECT_PREFIX = "__connect.errors."
OUR_PREFIX = "dlq."
# Marks a value that is our Avro DeadLetter record (other tools' DLQs hold the original bytes).
FORMAT_HEADER = "dlq.format"
FORMAT_AVRO = b"orders_dlq.DeadLetter/avro"
FORMAT_ORIGINAL = b"original"
CONNECT_STACKTRACE = CONNECT_PREFIX + "exception.stacktrace"
CONNECT_CONNECTOR = CONNECT_PREFIX + "connector.name"
CONNECT_TASK = CONNECT_PREFIX + "task.id"
CONNECT_EXECUTING_CLASS = CONNECT_PREFIX + "class.name"
CONNECT_STAGE = CONNECT_PREFIX + "stage"
# Connect's class.name is the class that was running when the record failed; ours, per stage.
EXECUTING_CLASS = {"produce": "orders_dlq.delivery.OrderSender", "deserialize": "orders_dlq.codec.OrderCodec",
                   "validate": "orders_dlq.orders.validate", "process": "orders_dlq.aggregation.OrderAggregator"}
# Dead-letter context (ours, Spring's and Connect's): dead-lettering a replayed dead letter replaces it.
ERROR_HEADER_PREFIXES = (*SPRING_PREFIXES, CONNECT_PREFIX, OUR_PREFIX)
REPLAY_COUNT_HEADER = OUR_PREFIX + "replay.count"
STAGE_HEADER = OUR_PREFIX + "error.stage"
TIMESTAMP_HEADER = OUR_PREFIX + "error.timestamp"
RETRY_COUNT_HEADER = OUR_PREFIX + "retry.count"
# A dead letter too large for the DLQ is written without (part of) the original message; these
# headers say what was left out and let anyone check a copy of the original against it.
REDUCED_HEADER = OUR_PREFIX + "reduced"
ORIGINAL_SIZE_HEADER = OUR_PREFIX + "original.size"
ORIGINAL_SHA256_HEADER = OUR_PREFIX + "original.sha256"
# Set when the original message's headers could not be read at all (for instance a header name
# that is not valid UTF-8): the dead letter then carries none of them, and says why.
HEADERS_UNREADABLE_HEADER = OUR_PREFIX + "original.headers.unreadable"

# What the Avro schema can hold: int is 32-bit, long 64-bit, the price a decimal(12, 2).
INT_MAX = 2**31 - 1
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
PRICE_LIMIT = Decimal(10) ** 10
CENT = Decimal("0.01")
# A reason longer than this is cut: an exception text can quote a whole hostile message.
MAX_TEXT = 2000
# A stack trace longer than this is cut (it is written twice, Spring's and Connect's header).
MAX_STACKTRACE = 8000


def fits_as_is(value, limit: int) -> bool:
    """Whether fit_text(value, limit) is value itself, cheaply: an ASCII str at most `limit` long."""
    return type(value) is str and len(value) <= limit and value.isascii()


def fit_text(value, limit: int = MAX_TEXT) -> str:
    """Any value as a str that encodes to UTF-8 (lone surrogates escaped) and is at most `limit` long."""
    if fits_as_is(value, limit):
        return value  # the common case, without encoding it once only to check
    if not isinstance(value, str):
        try:
            value = "" if value is None else str(value)
        except Exception as exc:  # noqa: BLE001 - a hostile __str__ must not stop a dead letter
            value = f"<unprintable {type(value).__name__}: {type(exc).__name__}>"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(value) > limit:
        value = f"{value[:limit]}... ({len(value)} characters)"
    return value


def _fit_optional_text(value, limit: int = MAX_TEXT) -> str | None:
    return None if value is None else fit_text(value, limit)


def _fit_int(value, low: int, high: int) -> int | None:
    """An int inside the Avro type's range, or None."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def _fit_count(value) -> int:
    """A retry or replay count: clamped into Avro int, never negative."""
    if isinstance(value, int) and not isinstance(value, bool):
        return min(max(value, 0), INT_MAX)
    return 0


def fit_price(value) -> Decimal | None:
    """The price when decimal(12, 2) can carry it exactly; None otherwise (the original bytes keep it)."""
    try:
        if (isinstance(value, Decimal) and value.is_finite() and abs(value) < PRICE_LIMIT
                and value == value.quantize(CENT)):
            return value
    except ArithmeticError:
        pass
    return None


def _fit_bytes(value) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return fit_text(value).encode()


_second_prefix: tuple[int, str] = (-1, "")


def utc_now_iso() -> str:
    """datetime.now(UTC).isoformat(), at a fraction of its cost (a poison flood stamps every
    message): the text up to the second is made once a second."""
    global _second_prefix
    micros = time.time_ns() // 1000
    second, fraction = divmod(micros, 1_000_000)
    if second != _second_prefix[0]:
        _second_prefix = (second, datetime.fromtimestamp(second, UTC).isoformat()[:19])
    return f"{_second_prefix[1]}.{fraction:06d}+00:00"


@dataclass
class DeadLetter:
    error_reason: str
    error_type: str
    error_stage: str
    original_topic: str
    failed_by: str
    retry_count: int = 0
    replay_count: int = 0
    error_timestamp: str = field(default_factory=lambda: utc_now_iso())
    order_id: str | None = None
    product: str | None = None
    price: object = None  # Decimal or None
    original_partition: int | None = None
    original_offset: int | None = None
    original_timestamp: int | None = None
    original_key: bytes | None = None
    original_value: bytes | None = None
    original_headers: list = field(default_factory=list)  # [(key, bytes|None)]
    # Not in the Avro record, carried as headers: what a reduced dead letter left out.
    reduced: str | None = None
    original_size: int | None = None
    original_sha256: str | None = None
    headers_unreadable: str | None = None
    # Only in the original format's stack trace headers: the Python traceback, when there was one.
    stacktrace: str | None = None
    # How original_timestamp was set: by the producer (CreateTime, the default) or by the broker,
    # for a topic with message.timestamp.type=LogAppendTime. Only in Spring's timestamp-type header.
    log_append_time: bool = False

    @classmethod
    def for_order(cls, order: dict | None, **context) -> DeadLetter:
        """A dead letter carrying the order's fields when it could be decoded."""
        order = order or {}
        return cls(order_id=order.get("order_id"), product=order.get("product"),
                   price=order.get("price"), **context)

    def fitted(self) -> DeadLetter:
        """A copy whose every field fits the Avro schema and the headers, whatever it was built from.

        A dead letter is built from hostile input (a 420 KB decimal, a 20-digit replay count, text
        that is not UTF-8) and must never fail to be written because of it: a value the schema
        cannot hold becomes null (the original bytes carry it anyway) or is clamped or escaped.
        """
        return DeadLetter(
            error_reason=fit_text(self.error_reason),
            error_type=fit_text(self.error_type, 200),
            error_stage=fit_text(self.error_stage, 50),
            original_topic=fit_text(self.original_topic, 300),
            failed_by=fit_text(self.failed_by, 300),
            retry_count=_fit_count(self.retry_count),
            replay_count=_fit_count(self.replay_count),
            error_timestamp=fit_text(self.error_timestamp, 100),
            order_id=_fit_optional_text(self.order_id, 200),
            product=_fit_optional_text(self.product, 200),
            price=fit_price(self.price),
            original_partition=_fit_int(self.original_partition, 0, INT_MAX),
            original_offset=_fit_int(self.original_offset, 0, LONG_MAX),
            original_timestamp=_fit_int(self.original_timestamp, LONG_MIN, LONG_MAX),
            original_key=_fit_bytes(self.original_key),
            original_value=_fit_bytes(self.original_value),
            original_headers=[(fit_text(k, 1000), _fit_bytes(v)) for k, v in self.original_headers or []],
            reduced=_fit_optional_text(self.reduced, 200),
            original_size=_fit_int(self.original_size, 0, LONG_MAX),
            original_sha256=_fit_optional_text(self.original_sha256, 64),
            headers_unreadable=_fit_optional_text(self.headers_unreadable, 500),
            stacktrace=_fit_optional_text(self.stacktrace, MAX_STACKTRACE),
            log_append_time=self.log_append_time is True,
        )

    def reduced_to_fit(self, level: int = 1) -> DeadLetter:
        """A smaller copy for a DLQ that cannot take the full one: level 1 leaves out the original
        value, level 2 also the original key and headers. Size and SHA-256 of the value stay."""
        value = self.original_value if self.reduced is None else None
        left_out = ["value"] if level < 2 else ["value", "key", "headers"]
        size = self.original_size if value is None else len(value)
        sha256 = self.original_sha256 if value is None else hashlib.sha256(value).hexdigest()
        reason = self.error_reason
        if self.reduced is None:
            reason = f"{reason} [dead letter reduced: original value of {size} bytes left out, sha256 {sha256}]"
        return replace(
            self,
            error_reason=reason,
            original_value=None,
            original_key=self.original_key if level < 2 else None,
            original_headers=self.original_headers if level < 2 else [],
            reduced=",".join(left_out),
            original_size=size,
            original_sha256=sha256,
        )

    def to_record(self) -> dict:
        # Not dataclasses.asdict: it deep-copies every field, bytes included, for nothing.
        record = {name: getattr(self, name) for name in RECORD_FIELDS}
        record["original_headers"] = [{"key": k, "value": v} for k, v in self.original_headers]
        return record

    @classmethod
    def from_record(cls, record: dict) -> DeadLetter:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in record.items() if k in names}
        values["original_headers"] = [(h["key"], h["value"]) for h in record.get("original_headers") or []]
        return cls(**values)

    def headers(self) -> list[tuple[str, bytes]]:
        """The original headers (minus earlier error context) followed by this failure's context."""
        text = {}
        if self.reduced is not None:
            text[REDUCED_HEADER] = self.reduced
            if self.original_size is not None:
                text[ORIGINAL_SIZE_HEADER] = str(self.original_size)
            if self.original_sha256 is not None:
                text[ORIGINAL_SHA256_HEADER] = self.original_sha256
        if self.headers_unreadable is not None:
            text[HEADERS_UNREADABLE_HEADER] = self.headers_unreadable
        return context_headers(without_error_context(self.original_headers), self.error_reason, self.original_topic,
                               self.failed_by, self.error_type, self.error_stage, self.error_timestamp,
                               self.retry_count, self.replay_count, self.original_partition, self.original_offset,
                               self.original_timestamp,
                               [(k, v.encode("utf-8", "backslashreplace")) for k, v in text.items()],
                               self.log_append_time)

    def original_format_headers(self, instance: str) -> list[tuple[str, bytes]]:
        """The headers of this dead letter in the original format: those of headers(), plus what a
        Spring @DltHandler or a Connect-style reader finds beside the original value. `instance` (the
        writing client) stands in for Connect's task.id, the consumer group or client for its
        connector.name. The stack trace headers hold the Python traceback when the dead letter carries
        one, else `<type>: <reason>` (a rejected order is not a crash: its reason is the whole story)."""
        out = self.headers()
        out.pop()  # headers() ends with the envelope's format marker
        trace = (self.stacktrace or f"{self.error_type}: {self.error_reason}").encode("utf-8", "backslashreplace")
        out += [(SPRING_STACKTRACE, trace), (CONNECT_STACKTRACE, trace),
                (CONNECT_CONNECTOR, self.failed_by.encode("utf-8", "backslashreplace")),
                (CONNECT_TASK, instance.encode("utf-8", "backslashreplace")),
                (CONNECT_EXECUTING_CLASS, EXECUTING_CLASS.get(self.error_stage, "orders_dlq").encode()),
                (FORMAT_HEADER, FORMAT_ORIGINAL)]
        return out


def error_text(error) -> str:
    """str(error), or what it was when even that fails (an exception with a hostile __str__)."""
    try:
        return str(error)
    except Exception as exc:  # noqa: BLE001 - the dead letter must be written whatever the error is
        return f"<unprintable {type(error).__name__}: {type(exc).__name__}>"


def dead_letter_of_message(message, order: dict | None, stage: str, error: BaseException, retries: int,
                           failed_by: str, *, error_timestamp: str | None = None,
                           with_stacktrace: bool = False) -> DeadLetter:
    """The dead letter of one consumed message that failed at `stage`. Everything read from the
    message is read defensively: its headers may not even be readable (a header name that is not
    UTF-8 raises in the client)."""
    headers_unreadable = None
    try:
        headers = message.headers() or []
    except Exception as exc:  # noqa: BLE001 - the client cannot read them: carry none, say why
        headers, headers_unreadable = [], f"{type(exc).__name__}: {exc}"
    timestamp_type, timestamp = message.timestamp()
    dead_letter = DeadLetter.for_order(
        order,
        error_reason=error_text(error),
        error_type=type(error).__name__,
        error_stage=stage,
        original_topic=message.topic(),
        failed_by=failed_by,
        retry_count=retries,
        replay_count=replay_count_of(headers),
        original_partition=message.partition(),
        original_offset=message.offset(),
        original_timestamp=timestamp if timestamp_type else None,
        log_append_time=timestamp_type == TIMESTAMP_LOG_APPEND_TIME,
        original_key=message.key(),
        original_value=message.value(),
        original_headers=headers,
    )
    if error_timestamp is not None:
        dead_letter.error_timestamp = error_timestamp
    dead_letter.headers_unreadable = headers_unreadable
    if with_stacktrace:
        # Where the processing step failed, for the stack-trace headers Spring's and Connect's
        # readers show (decode and validate failures are the message's, their reason says all).
        dead_letter.stacktrace = "".join(traceback.format_exception(error))
    return dead_letter


# The record's layout (schemas/dead_letter.avsc) as the hand-written encoder writes it: field,
# Avro type, nullable. Another layout in the schema file falls back to fastavro.
DEAD_LETTER_LAYOUT = [
    ("order_id", "string", True), ("product", "string", True), ("price", "decimal", True),
    ("error_reason", "string", False), ("error_type", "string", False), ("error_stage", "string", False),
    ("error_timestamp", "string", False), ("retry_count", "int", False), ("replay_count", "int", False),
    ("original_topic", "string", False), ("original_partition", "int", True), ("original_offset", "long", True),
    ("original_timestamp", "long", True), ("original_key", "bytes", True), ("original_value", "bytes", True),
    ("original_headers", "headers", False), ("failed_by", "string", False),
]
_NULL, _PRESENT, _EMPTY_ARRAY = b"\x00", b"\x02", b"\x00"


def _layout_of(schema: dict) -> list[tuple[str, str, bool]]:
    layout = []
    for entry in schema["fields"]:
        kind = entry["type"]
        nullable = isinstance(kind, list) and len(kind) == 2 and kind[0] == "null"
        kind = kind[1] if nullable else kind
        if isinstance(kind, dict):
            kind = ("decimal" if kind.get("logicalType") == "decimal" and kind.get("scale") == PRICE_SCALE
                    else "headers" if kind.get("type") == "array" else repr(kind))
        layout.append((entry["name"], kind, nullable))
    return layout


def _text(value: str) -> bytes:
    data = value.encode()
    return avro_length(len(data)) + data


@functools.lru_cache(maxsize=1024)
def _repeated_text(value: str) -> bytes:
    """_text() of the fields that repeat from one dead letter to the next (topic, group, error
    type and stage), encoded once."""
    return _text(value)


def _blob(value: bytes) -> bytes:
    return avro_length(len(value)) + value


@functools.lru_cache(maxsize=1024)
def _context_headers(topic: str, failed_by: str, error_type: str, stage: str) -> tuple:
    """The context headers that repeat from one dead letter to the next (a poison flood writes the
    same ones for every message), encoded once per combination."""
    def encoded(text: str) -> bytes:
        return text.encode("utf-8", "backslashreplace")
    spring = ((SPRING_TOPIC, encoded(topic)), (SPRING_GROUP, encoded(failed_by)),
              (SPRING_EXCEPTION_CLASS, encoded(error_type)))
    connect = ((CONNECT_PREFIX + "topic", encoded(topic)), (CONNECT_STAGE, encoded(stage)),
               (CONNECT_PREFIX + "exception.class.name", encoded(error_type)))
    return spring, connect, (STAGE_HEADER, encoded(stage)), (OUR_PREFIX + "failed.by", encoded(failed_by))


def context_headers(kept: list, reason: str, topic: str, failed_by: str, error_type: str, stage: str,
                    timestamp: str, retry_count: int, replay_count: int, partition: int | None,
                    offset: int | None, original_timestamp: int | None, extra: list = (),
                    log_append_time: bool = False) -> list:
    """A dead letter's Kafka headers: the original ones kept, then the context in Spring's,
    Connect's and our names (`extra`: what a reduced dead letter left out), then the format mark.
    `log_append_time`: the original timestamp is the broker's append time, not the producer's.
    What repeats from one dead letter to the next is encoded once (see _context_headers)."""
    reason_bytes = reason.encode("utf-8", "backslashreplace")
    spring, connect, stage_header, failed_by_header = _context_headers(topic, failed_by, error_type, stage)
    out = [*kept, *spring, (SPRING_EXCEPTION_MESSAGE, reason_bytes), *connect,
           (CONNECT_PREFIX + "exception.message", reason_bytes), stage_header,
           (TIMESTAMP_HEADER, timestamp.encode("utf-8", "backslashreplace")),
           (RETRY_COUNT_HEADER, _decimal_text(retry_count)), (REPLAY_COUNT_HEADER, _decimal_text(replay_count)),
           failed_by_header, *extra]
    if partition is not None:
        out += _partition_headers(partition)
    if offset is not None:
        out += [(SPRING_OFFSET, struct.pack(">q", offset)), (CONNECT_PREFIX + "offset", str(offset).encode())]
    if original_timestamp is not None:
        out += [(SPRING_TIMESTAMP, struct.pack(">q", original_timestamp)),
                _LOG_APPEND_TIME if log_append_time else _CREATE_TIME]
    out.append(_FORMAT_MARK)
    return out


_FORMAT_MARK = (FORMAT_HEADER, FORMAT_AVRO)
# Spring's names of Kafka's TimestampType values.
_CREATE_TIME = (SPRING_TIMESTAMP_TYPE, b"CreateTime")
_LOG_APPEND_TIME = (SPRING_TIMESTAMP_TYPE, b"LogAppendTime")
_SMALL_DECIMALS = [str(n).encode() for n in range(16)]


def _decimal_text(count: int) -> bytes:
    return _SMALL_DECIMALS[count] if 0 <= count < 16 else str(count).encode()


@functools.lru_cache(maxsize=1024)
def _partition_headers(partition: int) -> tuple:
    return ((SPRING_PARTITION, struct.pack(">i", partition)), (CONNECT_PREFIX + "partition", str(partition).encode()))


class DeadLetterCodec:
    """Turns dead letters into Kafka messages and back, ours (Avro) or other tools' (headers only).

    Dead letters are written by hand (a poison flood writes one per message, and fastavro's
    per-call cost was the largest part of it); the bytes are identical to fastavro's, which a
    property test checks."""

    def __init__(self, codec: AvroCodec):
        self.codec = codec
        self.fast = _layout_of(codec.schema) == DEAD_LETTER_LAYOUT

    # Written before every record: empty (schemaless), or registry mode's 5-byte Confluent header
    # (see orders_dlq/registry.py: frame_dead_letters).
    header = b""

    def encode(self, dead_letter: DeadLetter) -> bytes:
        """The Avro record of a fitted dead letter (see DeadLetter.fitted)."""
        if not self.fast:
            return self.header + self.codec.encode(dead_letter.to_record())
        d = dead_letter
        return self.encode_fields(d.order_id, d.product, d.price, d.error_reason, d.error_type, d.error_stage,
                                  d.error_timestamp, d.retry_count, d.replay_count, d.original_topic,
                                  d.original_partition, d.original_offset, d.original_timestamp, d.original_key,
                                  d.original_value, d.original_headers, d.failed_by)

    def encode_fields(self, order_id, product, price, error_reason, error_type, error_stage, error_timestamp,
                      retry_count, replay_count, original_topic, original_partition, original_offset,
                      original_timestamp, original_key, original_value, original_headers, failed_by) -> bytes:
        """encode() of fitted fields, without a DeadLetter (the consumer's fast path); only for a
        codec whose schema has the hand-written layout (`fast`)."""
        out = [
            self.header,
            _NULL if order_id is None else _PRESENT + _text(order_id),
            _NULL if product is None else _PRESENT + _text(product),
            _NULL if price is None else _PRESENT + _blob(avro_decimal(unscaled_cents(price))),
            _text(error_reason), _repeated_text(error_type), _repeated_text(error_stage),
            _text(error_timestamp), avro_long(retry_count), avro_long(replay_count),
            _repeated_text(original_topic),
            _NULL if original_partition is None else _PRESENT + avro_long(original_partition),
            _NULL if original_offset is None else _PRESENT + avro_long(original_offset),
            _NULL if original_timestamp is None else _PRESENT + avro_long(original_timestamp),
            _NULL if original_key is None else _PRESENT + _blob(original_key),
            _NULL if original_value is None else _PRESENT + _blob(original_value),
        ]
        if original_headers:
            out.append(avro_long(len(original_headers)))
            for key, value in original_headers:
                out.append(_text(key))
                out.append(_NULL if value is None else _PRESENT + _blob(value))
        out.append(_EMPTY_ARRAY)
        out.append(_repeated_text(failed_by))
        return b"".join(out)

    def decode_message(self, value: bytes | None, headers: list | None, key: bytes | None = None,
                       dlq_topic: str = "") -> DeadLetter:
        """Read one DLQ message; a message without our format header is read from its headers."""
        headers = headers or []
        if (FORMAT_HEADER, FORMAT_AVRO) in headers:
            dead_letter = DeadLetter.from_record(self.codec.decode(value))
            named = dict(headers)
            dead_letter.log_append_time = named.get(SPRING_TIMESTAMP_TYPE) == b"LogAppendTime"
            if REDUCED_HEADER in named:
                dead_letter.reduced = _header_text(named, REDUCED_HEADER)
                dead_letter.original_size = _header_int(named, None, ORIGINAL_SIZE_HEADER)
                dead_letter.original_sha256 = _header_text(named, ORIGINAL_SHA256_HEADER)
            return dead_letter
        return dead_letter_from_headers(value, headers, key, dlq_topic)

    def encode_original(self, dead_letter: DeadLetter, instance: str) -> tuple[bytes | None, bytes, list]:
        """Key, value and headers of a fitted dead letter in the original format (see the module doc)."""
        return dead_letter.original_key, dead_letter.original_value, dead_letter.original_format_headers(instance)


def _header_text(headers: dict, name: str) -> str | None:
    value = headers.get(name)
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else None


def _header_int(headers: dict, binary_name: str | None, text_name: str | None) -> int | None:
    """A number from Spring's binary header, else from the decimal text one (None: that kind has none)."""
    raw = headers.get(binary_name) if binary_name else None
    if isinstance(raw, bytes) and len(raw) in (4, 8):
        return struct.unpack(">i" if len(raw) == 4 else ">q", raw)[0]
    try:
        return int((_header_text(headers, text_name) if text_name else None) or "")
    except ValueError:
        return None  # another tool's header we cannot read is not worth failing the dead letter


def dead_letter_from_headers(value: bytes | None, header_list: list, key: bytes | None,
                             dlq_topic: str = "") -> DeadLetter:
    """A dead letter written by Spring Kafka or Kafka Connect: the value is the original message."""
    headers = context_by_name(header_list)
    if not any(k.startswith(ERROR_HEADER_PREFIXES) for k in headers):
        raise DecodeError("neither our Avro dead letter nor a message with dead-letter headers")
    reason = (_header_text(headers, SPRING_EXCEPTION_MESSAGE) or _header_text(headers, SPRING_KEY_EXCEPTION_MESSAGE)
              or _header_text(headers, CONNECT_PREFIX + "exception.message") or "unknown")
    dead_letter = DeadLetter(
        error_reason=reason,
        error_type=(_header_text(headers, SPRING_EXCEPTION_CLASS) or _header_text(headers, SPRING_KEY_EXCEPTION_CLASS)
                    or _header_text(headers, CONNECT_PREFIX + "exception.class.name") or "unknown"),
        error_stage=_stage_of(headers),
        error_timestamp=_header_text(headers, TIMESTAMP_HEADER) or "",
        original_topic=(_header_text(headers, SPRING_TOPIC)
                        or _header_text(headers, CONNECT_PREFIX + "topic")
                        or dlq_topic.removesuffix(".DLQ").removesuffix(".DLT") or "unknown"),
        original_partition=_header_int(headers, SPRING_PARTITION, CONNECT_PREFIX + "partition"),
        original_offset=_header_int(headers, SPRING_OFFSET, CONNECT_PREFIX + "offset"),
        original_timestamp=_header_int(headers, SPRING_TIMESTAMP, None),
        log_append_time=headers.get(SPRING_TIMESTAMP_TYPE) == b"LogAppendTime",
        failed_by=(_header_text(headers, SPRING_GROUP)
                   or _header_text(headers, CONNECT_PREFIX + "connector.name") or "unknown"),
        retry_count=_header_int(headers, None, RETRY_COUNT_HEADER) or 0,
        replay_count=_header_int(headers, None, REPLAY_COUNT_HEADER) or 0,
        original_key=key,
        original_value=value,
        original_headers=without_error_context(header_list),
        stacktrace=(_header_text(headers, SPRING_STACKTRACE) or _header_text(headers, SPRING_KEY_STACKTRACE)
                    or _header_text(headers, CONNECT_STACKTRACE)),
    )
    if REDUCED_HEADER in headers:
        dead_letter.reduced = _header_text(headers, REDUCED_HEADER)
        dead_letter.original_size = _header_int(headers, None, ORIGINAL_SIZE_HEADER)
        dead_letter.original_sha256 = _header_text(headers, ORIGINAL_SHA256_HEADER)
    dead_letter.headers_unreadable = _header_text(headers, HEADERS_UNREADABLE_HEADER)
    return dead_letter


# Connect's stages (org.apache.kafka.connect.runtime.errors.Stage) as ours: a converter failing is a
# record that cannot be read, a transformation one that does not pass, the task's own work processing.
CONNECT_STAGES = {"KEY_CONVERTER": "deserialize", "VALUE_CONVERTER": "deserialize",
                  "HEADER_CONVERTER": "deserialize", "KAFKA_CONSUME": "deserialize",
                  "TRANSFORMATION": "validate", "TASK_PUT": "process", "TASK_POLL": "process",
                  "KAFKA_PRODUCE": "produce"}


def _stage_of(headers: dict) -> str:
    """Our stage for a dead letter read from headers: ours when we wrote it, else Connect's stage
    translated, else Spring's (its recoverer sees a deserializer's failure or the listener's)."""
    ours = _header_text(headers, STAGE_HEADER)
    if ours:
        return ours
    connect = _header_text(headers, CONNECT_STAGE)
    if connect:
        return CONNECT_STAGES.get(connect, connect)
    spring = _header_text(headers, SPRING_EXCEPTION_CLASS)
    if spring:
        return "deserialize" if "Deserializ" in spring or "Conversion" in spring else "process"
    if SPRING_KEY_EXCEPTION_CLASS in headers:
        return "deserialize"  # only the key could not be read
    return "unknown"


def context_by_name(header_list) -> dict:
    """A DLQ message's headers by name, Spring's under their kafka_dlt- names whichever of its two
    conventions wrote them. Spring appends its original-* headers again each time a record is
    dead-lettered anew (appendOriginalHeaders, on by default): the first of each names the
    record's origin, so the first is kept; for every other name the last one counts (Spring
    replaces its exception headers: stripPreviousExceptionHeaders)."""
    by_name = {}
    for name, value in header_list:
        if name.startswith(SPRING_RETRY_PREFIXES):
            name = SPRING_PREFIX + name[len("kafka_"):]
        if name.startswith(SPRING_ORIGINAL_PREFIX) and name in by_name:
            continue
        by_name[name] = value
    return by_name


# The dataclass fields that are Avro record fields (the others travel as headers only).
RECORD_FIELDS = tuple(f.name for f in fields(DeadLetter)
                      if f.name not in ("reduced", "original_size", "original_sha256", "headers_unreadable",
                                        "stacktrace", "log_append_time"))


def reason_category(reason: str) -> str:
    """The rule part of a reason ("price must be positive: -3.00" counts as "price must be positive")."""
    return reason.split(": ", 1)[0]


def without_error_context(headers) -> list:
    """Headers minus any dead-letter context (ours, Spring's, Connect's): what the original carried."""
    return [(k, v) for k, v in headers or () if not k.startswith(ERROR_HEADER_PREFIXES)]


def replay_count_of(headers) -> int:
    """The replay count a message carries in its dlq.replay.count header (0 when absent or nonsense)."""
    for name, value in headers or ():
        if name == REPLAY_COUNT_HEADER and isinstance(value, bytes) and 0 < len(value) <= 10 and value.isdigit():
            return min(int(value), INT_MAX)
    return 0
