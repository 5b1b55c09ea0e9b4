"""Avro encoding of orders and dead letters: schemas from schemas/*.avsc, parsed once, reused."""

from __future__ import annotations

import copy
import io
import json
import os
import re
from decimal import Decimal
from pathlib import Path

import fastavro
from fastavro.schema import SchemaParseException

from orders_dlq.errors import UsageError

DEFAULT_SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
ORDER_SCHEMA_FILE = "order.avsc"
DEAD_LETTER_SCHEMA_FILE = "dead_letter.avsc"
# Logical types decoded as their plain Avro type so that *we* validate them and
# a bad uuid becomes a "validate" dead letter instead of a decoder crash.
LOGICAL_TYPES_CHECKED_BY_US = {"uuid", "timestamp-micros"}


class DecodeError(Exception):
    """The bytes are not an Avro record of the expected schema ("<problem>: <detail>")."""


# The problems of a DecodeError (what statistics count a reason by).
NOT_AN_ORDER = "not a valid Avro order record"
TRAILING_BYTES = "unexpected bytes after the Avro record"


def schema_dir() -> Path:
    return Path(os.environ.get("SCHEMA_DIR") or DEFAULT_SCHEMA_DIR)


def load_schema(file_name: str, directory: Path | None = None) -> dict:
    """Read and check one .avsc (returned unparsed); a missing or invalid file is the operator's to fix (exit 2)."""
    path = (directory or schema_dir()) / file_name
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        fastavro.parse_schema(copy.deepcopy(raw))
        if not isinstance(raw, dict) or raw.get("type") != "record":
            raise ValueError("the top level must be a record")
        return raw
    except FileNotFoundError:
        raise UsageError(f"schema file {path} is missing") from None
    except (json.JSONDecodeError, SchemaParseException, ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"schema file {path} is not a valid Avro schema: {exc}") from None


def _without_checked_logical_types(node):
    """A copy of a raw schema with uuid/timestamp logical types removed (same binary encoding)."""
    if isinstance(node, dict):
        node = {k: _without_checked_logical_types(v) for k, v in node.items()}
        if node.get("logicalType") in LOGICAL_TYPES_CHECKED_BY_US:
            node.pop("logicalType")
        return node
    if isinstance(node, list):
        return [_without_checked_logical_types(item) for item in node]
    return node


# A decimal of more bits than this is no price (2**256 has 78 digits): its exact value is not
# worth computing. Converting the 420 KB decimal of a hostile order to a Decimal takes minutes.
MAX_DECIMAL_BITS = 256
LOG10_2 = 0.30102999566398120


def decimal_from_bytes(raw: bytes, scale: int) -> Decimal:
    """An Avro bytes decimal (big-endian two's complement, unscaled) as a Decimal, in linear time.

    Within MAX_DECIMAL_BITS it is exact, as fastavro would give it; beyond, it keeps the sign and
    the order of magnitude (1E+n), which is all validation needs to reject it.
    """
    unscaled = int.from_bytes(raw, "big", signed=True)
    bits = unscaled.bit_length()
    if bits <= MAX_DECIMAL_BITS:
        return Decimal(unscaled).scaleb(-scale)
    return Decimal((1 if unscaled < 0 else 0, (1,), int(bits * LOG10_2) - scale))


def _bytes_decimal_fields(raw: dict) -> list[tuple[str, int]]:
    """The top-level fields that are a bytes decimal (alone or in a union with null), with their scale."""
    found = []
    for field in raw["fields"]:
        for node in field["type"] if isinstance(field["type"], list) else [field["type"]]:
            if isinstance(node, dict) and node.get("type") == "bytes" and node.get("logicalType") == "decimal":
                found.append((field["name"], node.get("scale", 0)))
    return found


def _without_bytes_decimals(raw: dict, names: set[str]) -> dict:
    """A copy of a raw schema whose named top-level bytes decimals are read as plain bytes."""
    def plain(node):
        if isinstance(node, dict) and node.get("logicalType") == "decimal" and node.get("type") == "bytes":
            return "bytes"
        return node
    fields = []
    for field in raw["fields"]:
        if field["name"] in names:
            kind = field["type"]
            field = {**field, "type": [plain(n) for n in kind] if isinstance(kind, list) else plain(kind)}
        fields.append(field)
    return {**raw, "fields": fields}


class AvroCodec:
    """Encode and decode one record type; the parsed schema and the write buffer are reused."""

    def __init__(self, file_name: str, directory: Path | None = None):
        raw = load_schema(file_name, directory)
        self.schema = raw  # as the file says it
        self.field_names = [field["name"] for field in raw["fields"]]
        self._read_schema = fastavro.parse_schema(_without_checked_logical_types(raw))
        # Decimals are read as bytes and converted by decimal_from_bytes: fastavro's conversion is
        # quadratic in the number of digits, so one crafted order could stall a partition for minutes.
        self._decimals = _bytes_decimal_fields(raw)
        self._decode_schema = fastavro.parse_schema(_without_checked_logical_types(
            _without_bytes_decimals(raw, {name for name, _ in self._decimals})))
        self._buffer = io.BytesIO()

    def encode(self, record: dict) -> bytes:
        buffer = self._buffer
        buffer.seek(0)
        buffer.truncate()
        fastavro.schemaless_writer(buffer, self._read_schema, record)
        return buffer.getvalue()

    def writer_schema(self, raw: dict):
        """A writer's schema (from a registry id or an older .avsc), parsed for decode_with().

        Transformed as the reader's is (bytes decimals and checked logical types read plain), so
        that Avro schema resolution pairs like with like; fastavro then fills fields the writer
        lacks with the reader's defaults and skips fields the reader lacks.
        """
        return fastavro.parse_schema(_without_checked_logical_types(
            _without_bytes_decimals(raw, {name for name, _ in self._decimals})))

    def decode(self, data: bytes | None) -> dict:
        """Strict decode: the whole value must be exactly one record, nothing left over."""
        return self.decode_with(data, None)

    def decode_with(self, data: bytes | None, writer) -> dict:
        """decode() of bytes written with `writer` (a writer_schema(); None: this codec's own schema)."""
        if not data:
            raise DecodeError("empty value" if data is not None else "null value: a tombstone is not an order")
        stream = io.BytesIO(data)
        try:
            if writer is None:
                record = fastavro.schemaless_reader(stream, self._decode_schema)
            else:
                record = fastavro.schemaless_reader(stream, writer, self._decode_schema)
            for name, scale in self._decimals:
                if record[name] is not None:
                    record[name] = decimal_from_bytes(record[name], scale)
        except StopIteration:
            raise DecodeError(f"{NOT_AN_ORDER}: truncated, {len(data)} bytes") from None
        except Exception as exc:  # noqa: BLE001 - whatever the decoder raises, the bytes are not a record
            # Not a list of classes: fastavro raises EOFError, UnicodeDecodeError, ValueError,
            # IndexError, decimal.Overflow (a 420 KB decimal), MemoryError... and may raise new ones.
            detail = str(exc)
            if len(detail) > 300:
                detail = detail[:300] + "..."
            raise DecodeError(f"{NOT_AN_ORDER}: {type(exc).__name__}: {detail}") from None
        if stream.tell() != len(data):
            raise DecodeError(f"{TRAILING_BYTES}: {len(data) - stream.tell()}")
        return record


# The Confluent wire format of registry mode: magic byte 0, the schema id as a 4-byte big-endian
# unsigned int, then the Avro body (schemaless binary). The id is the registry's, not a version.
CONFLUENT_MAGIC_BYTE = 0
CONFLUENT_HEADER_SIZE = 5


def confluent_header(schema_id: int) -> bytes:
    return bytes((CONFLUENT_MAGIC_BYTE,)) + schema_id.to_bytes(4, "big")


def split_confluent_frame(data: bytes | None) -> tuple[int, bytes] | None:
    """(schema id, Avro body) if the value has the Confluent framing, else None."""
    if data is None or len(data) < CONFLUENT_HEADER_SIZE or data[0] != CONFLUENT_MAGIC_BYTE:
        return None
    return int.from_bytes(data[1:CONFLUENT_HEADER_SIZE], "big"), data[CONFLUENT_HEADER_SIZE:]


# Older order schemas kept for schemaless mode, where no id says which one wrote the bytes:
# schemas/order.v1.avsc, order.v2.avsc, ... (the current one is order.avsc).
ORDER_VERSION_FILE = re.compile(r"order\.v(\d+)\.avsc")


def order_schema_versions(directory: Path | None = None) -> list[tuple[int, dict]]:
    """The versioned order schemas in the schema directory, newest first."""
    folder = directory or schema_dir()
    found = []
    for path in folder.glob("order.v*.avsc"):
        match = ORDER_VERSION_FILE.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), load_schema(path.name, folder)))
    return sorted(found, key=lambda item: item[0], reverse=True)


# The order record's layout as the hand-written encoder below writes it.
ORDER_LAYOUT = [("order_id", "string"), ("product", "string"), ("price", "bytes"), ("created_at", "long")]
PRICE_SCALE = 2


_ONE_BYTE = [bytes((n,)) for n in range(128)]


def avro_length(size: int) -> bytes:
    """The zig-zag varint of a string or bytes length: one byte below 64."""
    return _ONE_BYTE[size << 1] if size < 64 else avro_long(size)


def avro_long(value: int) -> bytes:
    """Avro's zig-zag variable-length encoding of an int or long."""
    if 0 <= value < 64:
        return _ONE_BYTE[value << 1]  # counts, small partitions: one byte
    value = (value << 1) ^ (value >> 63)
    # Unrolled by length: a dead letter writes several multi-byte longs (offset, timestamp in ms),
    # and the general loop below costs 10-25 % more per call (0.5-1.1 us against 0.4-1.0).
    if value < 0x80:
        return _ONE_BYTE[value]  # small negative numbers
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0x200000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
    if value < 0x10000000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14 & 0x7F | 0x80, value >> 21))
    if value < 0x800000000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14 & 0x7F | 0x80,
                      value >> 21 & 0x7F | 0x80, value >> 28))
    if value < 0x40000000000:
        # Six bytes: millisecond timestamps from 1971 to 2039 (a dead letter's original timestamp).
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14 & 0x7F | 0x80,
                      value >> 21 & 0x7F | 0x80, value >> 28 & 0x7F | 0x80, value >> 35))
    if value >> 49 and not value >> 56:
        # Eight bytes: every microsecond timestamp from 1978 to 2198, so every order's created_at.
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14 & 0x7F | 0x80,
                      value >> 21 & 0x7F | 0x80, value >> 28 & 0x7F | 0x80, value >> 35 & 0x7F | 0x80,
                      value >> 42 & 0x7F | 0x80, value >> 49))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def avro_decimal(unscaled: int) -> bytes:
    """A decimal's unscaled value as Avro bytes: big-endian two's complement, as long as fastavro writes it."""
    return unscaled.to_bytes((abs(unscaled).bit_length() + 8) // 8, "big", signed=True)


def unscaled_cents(price) -> int:
    """A price with at most two decimal places as an integer number of cents."""
    numerator, denominator = price.as_integer_ratio()
    unscaled, remainder = divmod(numerator * 10**PRICE_SCALE, denominator)
    if remainder:
        raise ValueError(f"price {price} has more than {PRICE_SCALE} decimal places")
    return unscaled


# The first two varint bytes (continuation bit set) of every 14-bit value.
_TWO_LOW_BYTES = tuple(bytes((low & 0x7F | 0x80, low >> 7 | 0x80)) for low in range(1 << 14))
FIELD_CACHE_SIZE = 65536


class OrderCodec(AvroCodec):
    """The order codec, with a hand-written encoder for the fixed four-field record.

    The producer encodes every order; fastavro's per-call overhead was a third of its cost. The
    bytes are identical to fastavro's (a property test checks it); if the schema file no longer
    has this layout, the generic encoder is used.
    """

    def __init__(self, directory: Path | None = None):
        super().__init__(ORDER_SCHEMA_FILE, directory)
        fields = self.schema["fields"]
        layout = [(f["name"], f["type"] if isinstance(f["type"], str) else f["type"].get("type")) for f in fields]
        price = fields[2]["type"] if len(fields) > 2 else {}
        self.fast = layout == ORDER_LAYOUT and isinstance(price, dict) and price.get("scale") == PRICE_SCALE
        # Schemaless evolution: bytes the current schema cannot read exactly are tried with each
        # older version (newest first); one is accepted only if it consumes the bytes exactly.
        canonical = _canonical(self.schema)
        self.older_writers = [(version, self.writer_schema(raw)) for version, raw in order_schema_versions(directory)
                              if _canonical(raw) != canonical]
        # A shop has few products and prices: their Avro bytes (length included) are made once.
        self._products: dict = {}
        self._prices: dict = {}
        self._tail_of = -1  # created_at >> 13 whose varint tail is _tail
        self._tail = b""

    # Written before every body: empty (schemaless), or registry mode's 5-byte Confluent header.
    header = b""

    def encode(self, record: dict) -> bytes:
        if not self.fast:
            return self.header + super().encode(record)
        return self.encode_fields(record["order_id"], record["product"], record["price"], record["created_at"])

    def encode_fields(self, order_id: str, product: str, price, created_at: int) -> bytes:
        """encode() of the order with these fields, without building the record first."""
        if not self.fast:
            return self.header + super().encode({"order_id": order_id, "product": product, "price": price,
                                                 "created_at": created_at})
        return self.encode_keyed(order_id.encode(), product, price, created_at)

    def encode_keyed(self, order_id_bytes: bytes, product: str, price, created_at: int) -> bytes:
        """encode_fields() with the order id already UTF-8 bytes (the message key it is sent with)."""
        if not self.fast:
            return self.encode_fields(order_id_bytes.decode(), product, price, created_at)
        product_bytes = self._products.get(product)
        if product_bytes is None:
            product_bytes = avro_length(len(product.encode())) + product.encode()
            self._remember(self._products, product, product_bytes)
        price_bytes = self._prices.get(price)
        if price_bytes is None:
            unscaled = avro_decimal(unscaled_cents(price))  # raises for a price it cannot write
            price_bytes = avro_length(len(unscaled)) + unscaled
            self._remember(self._prices, price, price_bytes)
        return b"".join((self.header, avro_length(len(order_id_bytes)), order_id_bytes, product_bytes, price_bytes,
                         self._created_at(created_at)))

    @staticmethod
    def _remember(cache: dict, key, value: bytes) -> None:
        if len(cache) >= FIELD_CACHE_SIZE:
            cache.clear()  # bounded, whatever the input: a few repeated values are what it is for
        cache[key] = value

    def _created_at(self, micros: int) -> bytes:
        """avro_long(micros) for timestamps, from a table and a cached tail.

        The zig-zag value of a timestamp t >= 0 is 2t; its first two varint bytes carry the low 14
        bits, the rest (the tail) depends only on t >> 13, which changes every 8 ms."""
        if not isinstance(micros, int) or micros < 8192 or micros >> 62:
            return avro_long(micros)  # not an int, small, negative or huge: the general way
        if micros >> 13 != self._tail_of:
            self._tail_of = micros >> 13
            self._tail = avro_long(micros)[2:]
        return _TWO_LOW_BYTES[(micros << 1) & 0x3FFF] + self._tail

    def decode_with(self, data: bytes | None, writer) -> dict:
        if writer is None and self.fast and data:
            record = read_order(data)
            if type(record) is dict:
                return record
            if record is not None:
                raise DecodeError(record)  # certain without fastavro (see read_order)
        return super().decode_with(data, writer)  # anything unusual, and the reason when it fails

    def decode(self, data: bytes | None) -> dict:
        """A schemaless order written with the current schema or an older version of it."""
        reason = None
        if self.fast and data:
            record = read_order(data)  # the common case first, one call deep: once per order
            if type(record) is dict:
                return record
            reason = record  # why it is no order, when that is certain without fastavro
        try:
            if reason is not None:
                raise DecodeError(reason)
            # read_order already said "only fastavro can tell": ask it, not the reader again.
            return super().decode_with(data, None)
        except DecodeError as current_error:
            for _version, writer in self.older_writers:
                try:
                    return self.decode_with(data, writer)
                except DecodeError:
                    continue
            frame = split_confluent_frame(data)
            if frame is not None and self.decodes(frame[1]):
                raise DecodeError(f"confluent-framed, schema id {frame[0]}, but the consumer runs schemaless "
                                  "(start it with --schema-registry)") from None
            raise current_error from None

    def decodes(self, data: bytes) -> bool:
        """True if the bytes are a schemaless order of the current or an older schema."""
        if self.fast and decode_order_fast(data) is not None:
            return True
        if self.fast and not self.older_writers:
            # Asked of every poison message that starts with a zero byte (it looks framed): the
            # hand-written reader's "no" is enough, without a second failing fastavro call.
            return False
        for writer in (None, *(writer for _version, writer in self.older_writers)):
            try:
                self.decode_with(data, writer)
                return True
            except DecodeError:
                continue
        return False


def _read_long(data: bytes, position: int) -> tuple[int, int]:
    """An Avro zig-zag varint at `position`: (value, next position). IndexError past the end;
    ValueError for what does not fit a long (fastavro then gives the reason)."""
    byte = data[position]
    position += 1
    value = byte & 0x7F
    shift = 7
    while byte & 0x80:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if shift > 70:
            raise ValueError("varint longer than 10 bytes")
    if value >> 64:
        raise ValueError("varint beyond 64 bits")
    return (value >> 1) ^ -(value & 1), position


_PRICES_READ: dict[bytes, Decimal] = {}
# created_at's varint past its first two bytes -> its value with the low 14 bits clear. Those
# bytes change only every 8 ms (the encoder's _TWO_LOW_BYTES), so consecutive orders share them.
_TIMESTAMP_TAILS: dict[bytes, int] = {}
_LENGTH_PREFIXED = ("order_id", "product", "price")  # ORDER_LAYOUT's string and bytes fields, in order


def decode_order_fast(data: bytes) -> dict | None:
    """The order of the four-field layout (ORDER_LAYOUT) in `data`, read by hand, or None for
    anything it does not read cleanly (the caller then asks fastavro, which gives the reason).

    It returns exactly what the fastavro path returns whenever it returns at all: a property test
    checks both on arbitrary and on damaged bytes. A consumer decodes every order; this takes
    about a third of the fastavro path's time."""
    record = read_order(data)
    return record if type(record) is dict else None


def read_order(data: bytes) -> dict | str | None:
    """decode_order_fast()'s reader: the order; or, when the bytes cannot be an order of this
    layout whatever reads them, why (a field runs past the end, a string is not UTF-8, bytes are
    left over); or None when only fastavro can tell (a negative length, a varint beyond 64 bits).

    A poison flood is all failures: asking fastavro for each reason cost ten times the read."""
    position = 0
    values = []  # order_id and product as text, the price's bytes
    try:
        for name in _LENGTH_PREFIXED:
            size, start = _read_long(data, position)
            position = start + size
            if size < 0:
                return None
            if position > len(data):
                return f"{NOT_AN_ORDER}: {name} needs {size} bytes, {len(data) - start} left"
            raw = data[start:position]
            values.append(raw if name == "price" else raw.decode("utf-8"))
        name = "created_at"
        # The last field: its bytes past the first two are looked up, not read one at a time (that
        # loop was half of the reader's time). A tail is only ever stored from a varint that ended
        # exactly at the end of its value, so a hit reads what _read_long would read.
        high = _TIMESTAMP_TAILS.get(data[position + 2:])
        if high is not None and data[position] & data[position + 1] & 0x80:
            value = (data[position] & 0x7F) | (data[position + 1] & 0x7F) << 7 | high
            created_at, position = (value >> 1) ^ -(value & 1), len(data)
        else:
            start = position
            created_at, position = _read_long(data, position)
            if position == len(data) and position - start > 2:
                if len(_TIMESTAMP_TAILS) >= FIELD_CACHE_SIZE:
                    _TIMESTAMP_TAILS.clear()  # bounded, whatever the input
                zigzag = (created_at << 1) ^ (created_at >> 63)
                _TIMESTAMP_TAILS[data[start + 2:]] = zigzag >> 14 << 14
    except IndexError:
        return f"{NOT_AN_ORDER}: the value ends inside {name} ({len(data)} bytes)"
    except UnicodeDecodeError:
        return f"{NOT_AN_ORDER}: {name} is not UTF-8 text"
    except ValueError:
        return None  # a varint fastavro reads otherwise: its reason
    order_id, product, raw_price = values
    price = _PRICES_READ.get(raw_price)
    if price is None:
        price = decimal_from_bytes(raw_price, PRICE_SCALE)
        if len(_PRICES_READ) >= FIELD_CACHE_SIZE:
            _PRICES_READ.clear()  # bounded, whatever the input
        _PRICES_READ[raw_price] = price  # Decimals are immutable: one per price is shared
    if position != len(data):
        return f"{TRAILING_BYTES}: {len(data) - position}"
    return {"order_id": order_id, "product": product, "price": price, "created_at": created_at}


def _canonical(raw: dict) -> str:
    return json.dumps(raw, sort_keys=True, separators=(",", ":"))


def order_codec(directory: Path | None = None) -> OrderCodec:
    return OrderCodec(directory)


def dead_letter_codec(directory: Path | None = None) -> AvroCodec:
    return AvroCodec(DEAD_LETTER_SCHEMA_FILE, directory)


def money(value) -> Decimal:
    """A money amount with exactly two decimal places."""
    return Decimal(value).quantize(Decimal("0.01"))
