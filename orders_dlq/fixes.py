"""Fix and replay: dead letters exported as JSON lines to edit by hand, and the edited lines read back.

`dlq_consumer.py --export FILE` writes one JSON object per dead letter:

    {"dlq_position": "orders.DLQ[0]@17", "dlq_topic": ..., "dlq_partition": 0, "dlq_offset": 17,
     "mark_key": "[\"original\", \"orders\", 2, 41]", "status": "open",
     "order": {"order_id": ..., "product": ..., "price": "12.34", "created_at": 1764385200000000},
     "order_error": null,            (why "order" is null: the original bytes are not an order)
     "context": {"error_reason": ..., "error_stage": ..., "original_topic": ..., ...},
     "original_key_base64": ..., "original_value_base64": ..., "original_headers": [{"key", "value_base64"}]}

Only "order" is meant to be edited (price as a decimal string, created_at in microseconds since
the epoch). `dlq_replay.py --from-file FILE` reads it back with `read_fixes()`: every line is
checked first (JSON, the order schema, the business rules of orders.validate) and one bad line
refuses the whole file with its line number, so that nothing of a half-right file is sent.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from orders_dlq.codec import AvroCodec, DecodeError
from orders_dlq.errors import UsageError
from orders_dlq.orders import InvalidOrder, validate
from orders_dlq.selection import DlqRecord

# The context a person needs to decide on a fix; the rest of a dead letter is in the original bytes.
CONTEXT_FIELDS = ("error_reason", "error_type", "error_stage", "error_timestamp", "failed_by", "original_topic",
                  "original_partition", "original_offset", "original_timestamp", "retry_count", "replay_count")


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


def order_as_json(order: dict) -> dict:
    return {"order_id": order["order_id"], "product": order["product"], "price": str(order["price"]),
            "created_at": order["created_at"]}


def export_record(record: DlqRecord, status: str, mark_key: bytes, codec: AvroCodec) -> dict:
    """One dead letter as an editable JSON object (see the module docstring)."""
    dead_letter = record.dead_letter
    order, order_error = None, None
    try:
        order = order_as_json(codec.decode(dead_letter.original_value))
    except DecodeError as exc:
        order_error = str(exc)
    return {
        "dlq_position": record.position, "dlq_topic": record.topic, "dlq_partition": record.partition,
        "dlq_offset": record.offset, "mark_key": mark_key.decode(), "status": status,
        "order": order, "order_error": order_error,
        "context": {name: getattr(dead_letter, name) for name in CONTEXT_FIELDS},
        "original_key_base64": _b64(dead_letter.original_key),
        "original_value_base64": _b64(dead_letter.original_value),
        "original_headers": [{"key": key, "value_base64": _b64(value)} for key, value in dead_letter.original_headers],
    }


@dataclass
class Fix:
    """One edited line, checked: the order's new bytes and where its dead letter is."""

    line: int
    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    mark_key: bytes
    target: str
    original_partition: int | None
    original_timestamp: int | None
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes | None]]
    order_id: str
    replay_count: int = 0

    @property
    def position(self) -> str:
        return f"{self.dlq_topic}[{self.dlq_partition}]@{self.dlq_offset}"


class BadFix(ValueError):
    """A line of an edited file that cannot be replayed; the message says why."""


def _order_from_json(raw) -> dict:
    if not isinstance(raw, dict):
        raise BadFix("\"order\" is not an object (a dead letter whose original is not an order cannot be "
                     "replayed from a file: remove its line)")
    wanted = {"order_id", "product", "price", "created_at"}
    if set(raw) != wanted:
        missing, extra = sorted(wanted - set(raw)), sorted(set(raw) - wanted)
        raise BadFix("\"order\" must have exactly the fields order_id, product, price, created_at"
                     + (f" (missing {', '.join(missing)})" if missing else "")
                     + (f" (unknown {', '.join(extra)})" if extra else ""))
    if not isinstance(raw["order_id"], str) or not isinstance(raw["product"], str):
        raise BadFix("order_id and product must be strings")
    if isinstance(raw["price"], bool) or not isinstance(raw["price"], (str, int)):
        raise BadFix(f"price must be a decimal string such as \"12.34\", not {raw['price']!r}")
    try:
        price = Decimal(str(raw["price"]))
    except InvalidOperation:
        raise BadFix(f"price {raw['price']!r} is not a number") from None
    if not price.is_finite() or price != price.quantize(Decimal("0.01")):
        raise BadFix(f"price {raw['price']!r} must have at most two decimal places")
    if isinstance(raw["created_at"], bool) or not isinstance(raw["created_at"], int):
        raise BadFix("created_at must be an integer (microseconds since the epoch)")
    return {"order_id": raw["order_id"], "product": raw["product"], "price": price.quantize(Decimal("0.01")),
            "created_at": raw["created_at"]}


def _bytes(value, name: str) -> bytes | None:
    if value is None:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (ValueError, TypeError):
        raise BadFix(f"{name} is not base64") from None


def parse_fix(text: str, number: int, codec: AvroCodec, products: frozenset[str], to_topic: str | None) -> Fix:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadFix(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadFix("not a JSON object")
    try:
        topic, partition, offset = data["dlq_topic"], data["dlq_partition"], data["dlq_offset"]
        mark_key = data["mark_key"]
        context = data["context"]
        original_topic = context["original_topic"]
    except (KeyError, TypeError) as exc:
        raise BadFix(f"{exc} is missing: keep the lines as dlq_consumer.py --export wrote them, edit only "
                     "\"order\"") from None
    if not (isinstance(topic, str) and isinstance(partition, int) and isinstance(offset, int)
            and isinstance(mark_key, str) and isinstance(original_topic, str)):
        raise BadFix("dlq_topic, dlq_partition, dlq_offset, mark_key or context.original_topic has the wrong type")
    order = _order_from_json(data.get("order"))
    try:
        validate(order, products)
    except InvalidOrder as exc:
        raise BadFix(f"the edited order is still invalid: {exc}") from None
    try:
        value = codec.encode(order)
        codec.decode(value)  # the schema check: what we send must read back as an order
    except (DecodeError, ValueError, TypeError, OverflowError) as exc:
        raise BadFix(f"the edited order does not fit the order schema: {exc}") from None
    headers_raw = data.get("original_headers") or []
    if not isinstance(headers_raw, list) or not all(isinstance(h, dict) and isinstance(h.get("key"), str)
                                                    for h in headers_raw):
        raise BadFix("original_headers must be a list of {\"key\", \"value_base64\"}")
    original_partition = context.get("original_partition")
    original_timestamp = context.get("original_timestamp")
    replay_count = context.get("replay_count")
    return Fix(number, topic, partition, offset, mark_key.encode(), to_topic or original_topic,
               original_partition if isinstance(original_partition, int) else None,
               original_timestamp if isinstance(original_timestamp, int) else None,
               _bytes(data.get("original_key_base64"), "original_key_base64"), value,
               [(h["key"], _bytes(h.get("value_base64"), f"header {h['key']}")) for h in headers_raw],
               order["order_id"], replay_count if isinstance(replay_count, int) and replay_count >= 0 else 0)


def _lines(path: Path):
    try:
        with open(path, encoding="utf-8") as stream:
            for number, text in enumerate(stream, 1):
                if text.strip():
                    yield number, text
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None


def check_fixes(path: Path, codec: AvroCodec, products: frozenset[str]) -> int:
    """Check every line of an edited export before anything is sent; UsageError names the first bad line.

    Returns the number of lines (blank lines are skipped). Memory does not grow with the file."""
    count = 0
    for number, text in _lines(path):
        try:
            parse_fix(text, number, codec, products, None)
        except BadFix as exc:
            raise UsageError(f"{path} line {number}: {exc}; nothing was sent") from None
        count += 1
    if not count:
        raise UsageError(f"{path} holds no dead letter to replay")
    return count


def read_fixes(path: Path, codec: AvroCodec, products: frozenset[str], to_topic: str | None = None):
    """The fixes of a file that check_fixes() accepted, one at a time."""
    for number, text in _lines(path):
        try:
            yield parse_fix(text, number, codec, products, to_topic)
        except BadFix as exc:  # the file changed since it was checked
            raise UsageError(f"{path} line {number}: {exc}") from None
