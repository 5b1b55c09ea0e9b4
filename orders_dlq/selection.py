"""Reading a DLQ and choosing from it, for every tool that does (the monitor, the replayer).

- `read_dead_letter()` turns one DLQ message into a `DlqRecord`, whatever wrote it: our dead letters
  in either format (envelope or original), Spring Kafka's and Kafka Connect's (original value +
  error headers). Anything else (random bytes, tombstones, hostile headers) raises
  `UnreadableRecord` with the reason, for the caller to count and pass over: a DLQ holds whatever
  anyone wrote to it.
- `Selection` is which dead letters a tool works on (reason, stage, product, original topic, key,
  order id, headers, text, time, DLQ offsets, status), where reading starts (an offset, a time),
  with its command-line flags and its one consistency check. dlq_consumer.py, dlq_replay.py and
  the console all select with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from orders_dlq.codec import DecodeError
from orders_dlq.dead_letter import FORMAT_AVRO, FORMAT_HEADER, STAGES, DeadLetter, DeadLetterCodec
from orders_dlq.errors import UsageError
from orders_dlq.foreign import with_order_fields
from orders_dlq.marks import STATUSES, Mark, mark_key, status_of

ALL = "all"  # --status all: every dead letter, whatever its mark


class UnreadableRecord(Exception):
    """A DLQ message that is not a dead letter anyone could read; the message says why."""


@dataclass
class DlqRecord:
    """One dead letter and where it is in the DLQ."""

    dead_letter: DeadLetter
    topic: str
    partition: int
    offset: int
    message_time_ms: int | None  # the DLQ record's own timestamp, when it has one

    @property
    def position(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"

    @property
    def failed_at(self) -> datetime | None:
        return error_time(self.dead_letter, self.message_time_ms)


def read_dead_letter(message, codec: DeadLetterCodec, dlq_topic: str) -> DlqRecord:
    """Decode one DLQ message; anything at all that goes wrong is an UnreadableRecord.

    A dead letter whose value is the original message (our original format, Spring's, Connect's)
    gets its order fields from that message when it is one of our orders."""
    try:
        headers = message.headers() or []
        dead_letter = codec.decode_message(message.value(), headers, message.key(), dlq_topic)
        if (FORMAT_HEADER, FORMAT_AVRO) not in headers:
            dead_letter = with_order_fields(dead_letter)
        timestamp_type, timestamp = message.timestamp()
        return DlqRecord(dead_letter, message.topic(), message.partition(), message.offset(),
                         timestamp if timestamp_type else None)
    except DecodeError as exc:
        raise UnreadableRecord(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - the boundary of one foreign message
        raise UnreadableRecord(f"{type(exc).__name__}: {exc}") from exc


def parse_time(raw: str) -> datetime:
    """An ISO-8601 time; without a zone it is local time. Returned timezone-aware."""
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise ValueError(f"{raw!r} is not an ISO-8601 time") from None
    return moment if moment.tzinfo is not None else moment.astimezone()


def parse_offset(raw: str) -> tuple[int | None, int]:
    """'OFFSET' (every DLQ partition) or 'PARTITION:OFFSET'."""
    partition, sep, offset = raw.strip().rpartition(":")
    try:
        number = int(offset)
        where = int(partition) if sep else None
    except ValueError:
        raise ValueError(f"{raw!r} is not OFFSET or PARTITION:OFFSET") from None
    if number < 0 or (where is not None and where < 0):
        raise ValueError(f"{raw!r} must not be negative")
    return where, number


def parse_header(raw: str) -> tuple[str, str]:
    """'NAME=VALUE': an original header that must be present with exactly this (UTF-8) value."""
    name, sep, value = raw.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"{raw!r} is not NAME=VALUE")
    return name.strip(), value


@dataclass
class Selection:
    """Which dead letters a tool works on; every given criterion must hold."""

    reason: str | None = None           # substring of error_reason, case-insensitive
    stage: str | None = None
    product: str | None = None
    original_topic: str | None = None
    since: datetime | None = None       # error time, inclusive
    until: datetime | None = None       # error time, exclusive
    # DLQ offsets, inclusive: (None, n) for every partition, (p, n) for partition p only (and when
    # only such partition-qualified bounds are given, only the partitions they name are selected).
    from_offsets: list[tuple[int | None, int]] = field(default_factory=list)
    to_offsets: list[tuple[int | None, int]] = field(default_factory=list)
    key: str | None = None              # the original message key, exactly (as UTF-8 text)
    order_id: str | None = None         # exactly
    headers: list[tuple[str, str]] = field(default_factory=list)  # original headers NAME=VALUE, all present
    grep: str | None = None             # text in the reason, error type or original value, case-insensitive
    from_time: datetime | None = None   # DLQ record time: reading starts there (offsets_for_times)
    status: str = ALL                   # open, replayed, resolved, discarded or all: needs the marks

    @property
    def needs_marks(self) -> bool:
        return self.status != ALL

    @staticmethod
    def _bound(bounds: list[tuple[int | None, int]], partition: int) -> int | None:
        """The bound for a partition: a partition-qualified one wins over an unqualified one."""
        specific = [offset for where, offset in bounds if where == partition]
        general = [offset for where, offset in bounds if where is None]
        return (specific or general or [None])[-1]

    def validate(self) -> None:
        """The one check of a selection's consistency, for every tool that takes one."""
        if self.since and self.until and self.since >= self.until:
            raise UsageError("--since must be before --until")
        if self.status not in (*STATUSES, ALL):
            raise UsageError(f"--status {self.status!r} is not one of {', '.join((*STATUSES, ALL))}")
        for name, text in (("--key", self.key), ("--order-id", self.order_id), ("--grep", self.grep)):
            if text is not None and not text:
                raise UsageError(f"{name} must not be empty")
        if self.from_time and self.until and self.from_time >= self.until:
            raise UsageError("--from-time must be before --until")
        highs = dict(self.to_offsets)
        for where, low in self.from_offsets:
            if where in highs and low > highs[where]:
                raise UsageError(f"--from-offset {low} is after --to-offset {highs[where]}"
                                 + (f" for partition {where}" if where is not None else ""))

    def in_partitions(self, partition: int) -> bool:
        """Partition-qualified offsets (and no plain ones) limit the selection to the partitions named."""
        bounds = self.from_offsets + self.to_offsets
        named = {where for where, _ in bounds if where is not None}
        return not named or any(where is None for where, _ in bounds) or partition in named

    def selects(self, record: DlqRecord, marks: dict[bytes, Mark] | None = None) -> bool:
        """Whether a dead letter is selected; with a --status other than all, `marks` must be given."""
        if not self.matches(record.dead_letter, record.partition, record.offset, record.message_time_ms):
            return False
        return not self.needs_marks or self.status == status_of_record(record, marks)

    def matches(self, dead_letter: DeadLetter, partition: int, offset: int, message_time_ms: int | None) -> bool:
        """Every criterion but the status (which needs the marks)."""
        if not self.in_partitions(partition):
            return False
        low = self._bound(self.from_offsets, partition)
        high = self._bound(self.to_offsets, partition)
        if (low is not None and offset < low) or (high is not None and offset > high):
            return False
        if self.stage and dead_letter.error_stage != self.stage:
            return False
        if self.reason and self.reason.lower() not in (dead_letter.error_reason or "").lower():
            return False
        if self.product and dead_letter.product != self.product:
            return False
        if self.original_topic and dead_letter.original_topic != self.original_topic:
            return False
        if self.order_id is not None and dead_letter.order_id != self.order_id:
            return False
        if self.key is not None and dead_letter.original_key != self.key.encode():
            return False
        if self.headers and not self._has_headers(dead_letter):
            return False
        if self.grep is not None and not self._contains(dead_letter):
            return False
        if self.from_time is not None:
            written_at = _from_millis(message_time_ms)
            if written_at is None or written_at < self.from_time:
                return False
        if self.since or self.until:
            failed_at = error_time(dead_letter, message_time_ms)
            if failed_at is None:
                return False
            if self.since and failed_at < self.since:
                return False
            if self.until and failed_at >= self.until:
                return False
        return True

    def _has_headers(self, dead_letter: DeadLetter) -> bool:
        present = {(name, value) for name, value in dead_letter.original_headers}
        return all((name, value.encode()) in present for name, value in self.headers)

    def _contains(self, dead_letter: DeadLetter) -> bool:
        wanted = self.grep.lower()
        if wanted in (dead_letter.error_reason or "").lower() or wanted in (dead_letter.error_type or "").lower():
            return True
        value = dead_letter.original_value
        return value is not None and wanted.encode() in value.lower()  # JSON or text payloads


def status_of_record(record: DlqRecord, marks: dict[bytes, Mark] | None) -> str:
    if marks is None:
        raise ValueError("the marks are needed to select by status")
    return status_of(marks, mark_key(record.dead_letter, record.topic, record.partition, record.offset))


def _time_argument(raw: str) -> datetime:
    return parse_time(raw)


_time_argument.__name__ = "ISO-8601 time"  # argparse names the type in its error


def _offset_argument(raw: str) -> tuple[int | None, int]:
    return parse_offset(raw)


_offset_argument.__name__ = "[PARTITION:]OFFSET"


def _header_argument(raw: str) -> tuple[str, str]:
    return parse_header(raw)


_header_argument.__name__ = "NAME=VALUE"


def add_selection_arguments(parser, offsets: bool = True, status_default: str | None = ALL) -> None:
    """The selection flags dlq_consumer.py and dlq_replay.py share.

    `status_default` is what --status is without the flag (None: the tool decides, see its help)."""
    select = parser.add_argument_group("selection (all given criteria must hold)")
    select.add_argument("--reason", help="dead letters whose reason contains this text (case-insensitive)")
    select.add_argument("--stage", choices=STAGES, help="dead letters of this stage")
    select.add_argument("--product", help="dead letters of this product")
    select.add_argument("--original-topic", metavar="TOPIC", help="dead letters that came from this topic")
    select.add_argument("--key", help="dead letters whose original message key is exactly this text")
    select.add_argument("--order-id", metavar="ID", help="the dead letters of this order id")
    select.add_argument("--header", type=_header_argument, action="append", default=[], metavar="NAME=VALUE",
                        help="dead letters whose original message had this header with this value; repeatable")
    select.add_argument("--grep", metavar="TEXT",
                        help="dead letters whose reason, error type or original value contains TEXT "
                             "(case-insensitive)")
    select.add_argument("--status", choices=(*STATUSES, ALL), default=status_default,
                        help="dead letters of this status, from the marks topic <dlq>.status "
                             f"(default {status_default or 'see below'})")
    select.add_argument("--since", type=_time_argument, metavar="ISO-TIME",
                        help="failed at or after this time, e.g. 2026-11-28T09:00 (local time without a zone; "
                             "2026-11-28T08:00Z or +01:00 name one)")
    select.add_argument("--until", type=_time_argument, metavar="ISO-TIME", help="failed before this time")
    select.add_argument("--from-time", type=_time_argument, metavar="ISO-TIME",
                        help="start reading the DLQ at its first record written at or after this time (a seek "
                             "on the broker's time index, unlike --since which checks each failure time)")
    if offsets:
        select.add_argument("--from-offset", "--offset", type=_offset_argument, action="append", default=[],
                            metavar="[PARTITION:]OFFSET",
                            help="start at this DLQ offset (inclusive), in every partition or in PARTITION; "
                                 "repeatable (--offset is the same)")
        select.add_argument("--to-offset", type=_offset_argument, action="append", default=[],
                            metavar="[PARTITION:]OFFSET",
                            help="DLQ offsets up to this one (inclusive), in every partition or in PARTITION; "
                                 "repeatable")


def selection_from_args(args, status: str | None = None) -> Selection:
    """The selection the flags of add_selection_arguments describe, checked (UsageError if inconsistent).

    `status` is used when --status was neither given nor defaulted by the parser."""
    selection = Selection(reason=args.reason, stage=args.stage, product=args.product,
                          original_topic=args.original_topic, since=args.since, until=args.until,
                          from_offsets=getattr(args, "from_offset", []), to_offsets=getattr(args, "to_offset", []),
                          key=args.key, order_id=args.order_id, headers=args.header, grep=args.grep,
                          from_time=args.from_time, status=args.status or status or ALL)
    selection.validate()
    return selection


def _from_millis(millis: int | None) -> datetime | None:
    if millis is None or millis <= 0:
        return None
    try:
        return datetime.fromtimestamp(millis / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None  # another producer's timestamp beyond what a datetime holds


def error_time(dead_letter: DeadLetter, message_time_ms: int | None) -> datetime | None:
    """When it failed: error_timestamp, else (headers-only dead letters) when the DLQ got it."""
    if dead_letter.error_timestamp:
        try:
            moment = datetime.fromisoformat(dead_letter.error_timestamp)
            return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        except ValueError:
            pass
    if message_time_ms is not None and message_time_ms > 0:
        try:
            return datetime.fromtimestamp(message_time_ms / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            pass  # another producer's timestamp beyond what a datetime holds: no time, not a broken letter
    return None
