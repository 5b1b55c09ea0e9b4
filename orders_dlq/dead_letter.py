"""The dead-letter record: what failed, why, where, and the original bytes, as Avro and as headers.

Headers follow two conventions that existing tools already read:
- Spring Kafka's DeadLetterPublishingRecoverer (`kafka_dlt-*`): topic, group, exception class and
  message as UTF-8; partition as a 4-byte big-endian int; offset and timestamp as 8-byte
  big-endian longs; timestamp type as the string "CreateTime"/"LogAppendTime".
- Kafka Connect's errors.deadletterqueue.context.headers.enable (`__connect.errors.*`): all UTF-8
  strings, numbers in decimal.
Our own `dlq.*` headers carry what neither has: stage, retry and replay counts, time of failure.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

from orders_dlq.codec import AvroCodec, DecodeError

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
CONNECT_PREFIX = "__connect.errors."
OUR_PREFIX = "dlq."
# Marks a value that is our Avro DeadLetter record (other tools' DLQs hold the original bytes).
FORMAT_HEADER = "dlq.format"
FORMAT_AVRO = b"orders_dlq.DeadLetter/avro"
# Header names we write ourselves; dead-lettering a replayed dead letter replaces them.
ERROR_HEADER_PREFIXES = ("kafka_dlt-", CONNECT_PREFIX, OUR_PREFIX)


@dataclass
class DeadLetter:
    error_reason: str
    error_type: str
    error_stage: str
    original_topic: str
    failed_by: str
    retry_count: int = 0
    replay_count: int = 0
    error_timestamp: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    order_id: str | None = None
    product: str | None = None
    price: object = None  # Decimal or None
    original_partition: int | None = None
    original_offset: int | None = None
    original_timestamp: int | None = None
    original_key: bytes | None = None
    original_value: bytes | None = None
    original_headers: list = field(default_factory=list)  # [(key, bytes|None)]

    @classmethod
    def for_order(cls, order: dict | None, **context) -> DeadLetter:
        """A dead letter carrying the order's fields when it could be decoded."""
        order = order or {}
        return cls(order_id=order.get("order_id"), product=order.get("product"),
                   price=order.get("price"), **context)

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
        kept = [(k, v) for k, v in self.original_headers if not k.startswith(ERROR_HEADER_PREFIXES)]
        text = {
            SPRING_TOPIC: self.original_topic,
            SPRING_GROUP: self.failed_by,
            SPRING_EXCEPTION_CLASS: self.error_type,
            SPRING_EXCEPTION_MESSAGE: self.error_reason,
            CONNECT_PREFIX + "topic": self.original_topic,
            CONNECT_PREFIX + "stage": self.error_stage,
            CONNECT_PREFIX + "exception.class.name": self.error_type,
            CONNECT_PREFIX + "exception.message": self.error_reason,
            OUR_PREFIX + "error.stage": self.error_stage,
            OUR_PREFIX + "error.timestamp": self.error_timestamp,
            OUR_PREFIX + "retry.count": str(self.retry_count),
            OUR_PREFIX + "replay.count": str(self.replay_count),
            OUR_PREFIX + "failed.by": self.failed_by,
        }
        out = kept + [(k, v.encode()) for k, v in text.items()]
        if self.original_partition is not None:
            out += [(SPRING_PARTITION, struct.pack(">i", self.original_partition)),
                    (CONNECT_PREFIX + "partition", str(self.original_partition).encode())]
        if self.original_offset is not None:
            out += [(SPRING_OFFSET, struct.pack(">q", self.original_offset)),
                    (CONNECT_PREFIX + "offset", str(self.original_offset).encode())]
        if self.original_timestamp is not None:
            out += [(SPRING_TIMESTAMP, struct.pack(">q", self.original_timestamp)),
                    (SPRING_TIMESTAMP_TYPE, b"CreateTime")]
        out.append((FORMAT_HEADER, FORMAT_AVRO))
        return out


class DeadLetterCodec:
    """Turns dead letters into Kafka messages and back, ours (Avro) or other tools' (headers only)."""

    def __init__(self, codec: AvroCodec):
        self.codec = codec

    def encode(self, dead_letter: DeadLetter) -> bytes:
        return self.codec.encode(dead_letter.to_record())

    def decode_message(self, value: bytes | None, headers: list | None, key: bytes | None = None,
                       dlq_topic: str = "") -> DeadLetter:
        """Read one DLQ message; a message without our format header is read from its headers."""
        headers = headers or []
        if (FORMAT_HEADER, FORMAT_AVRO) in headers:
            return DeadLetter.from_record(self.codec.decode(value))
        return dead_letter_from_headers(value, headers, key, dlq_topic)


def _header_text(headers: dict, name: str) -> str | None:
    value = headers.get(name)
    return value.decode("utf-8", "replace") if value is not None else None


def _header_int(headers: dict, binary_name: str, text_name: str) -> int | None:
    raw = headers.get(binary_name)
    if raw is not None and len(raw) in (4, 8):
        return struct.unpack(">i" if len(raw) == 4 else ">q", raw)[0]
    try:
        return int(_header_text(headers, text_name) or "")
    except ValueError:
        return None  # another tool's header we cannot read is not worth failing the dead letter


def dead_letter_from_headers(value: bytes | None, header_list: list, key: bytes | None,
                             dlq_topic: str = "") -> DeadLetter:
    """A dead letter written by Spring Kafka or Kafka Connect: the value is the original message."""
    headers = dict(header_list)
    if not any(k.startswith(ERROR_HEADER_PREFIXES) for k in headers):
        raise DecodeError("neither our Avro dead letter nor a message with dead-letter headers")
    reason = (_header_text(headers, SPRING_EXCEPTION_MESSAGE)
              or _header_text(headers, CONNECT_PREFIX + "exception.message") or "unknown")
    return DeadLetter(
        error_reason=reason,
        error_type=(_header_text(headers, SPRING_EXCEPTION_CLASS)
                    or _header_text(headers, CONNECT_PREFIX + "exception.class.name") or "unknown"),
        error_stage=(_header_text(headers, OUR_PREFIX + "error.stage")
                     or _header_text(headers, CONNECT_PREFIX + "stage") or "unknown"),
        error_timestamp=_header_text(headers, OUR_PREFIX + "error.timestamp") or "",
        original_topic=(_header_text(headers, SPRING_TOPIC)
                        or _header_text(headers, CONNECT_PREFIX + "topic")
                        or dlq_topic.removesuffix(".DLQ").removesuffix(".DLT") or "unknown"),
        original_partition=_header_int(headers, SPRING_PARTITION, CONNECT_PREFIX + "partition"),
        original_offset=_header_int(headers, SPRING_OFFSET, CONNECT_PREFIX + "offset"),
        original_timestamp=_header_int(headers, SPRING_TIMESTAMP, "-"),
        failed_by=(_header_text(headers, SPRING_GROUP)
                   or _header_text(headers, CONNECT_PREFIX + "connector.name") or "unknown"),
        retry_count=_header_int(headers, "-", OUR_PREFIX + "retry.count") or 0,
        replay_count=_header_int(headers, "-", OUR_PREFIX + "replay.count") or 0,
        original_key=key,
        original_value=value,
        original_headers=[(k, v) for k, v in header_list if not k.startswith(ERROR_HEADER_PREFIXES)],
    )


RECORD_FIELDS = tuple(f.name for f in fields(DeadLetter))
