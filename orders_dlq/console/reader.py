"""What the console reads from Kafka: pages of the DLQ by offset, one dead letter, the marks, an overview.

Every view seeks; none scans the DLQ from its start. A page starts at a cursor (partition, offset)
and reads forward until it has its rows, reaches the end of the partition (then goes on with the
next one) or has looked at SCAN_LIMIT messages, whichever comes first: a filter that matches
nothing in a million dead letters answers quickly with "nothing in this stretch, continue from
here" instead of a page that never comes.

The overview comes from `DlqIndex`, a background reader that follows the whole DLQ and keeps only
counters (per minute and reason category, per stage, per kind of record) and the few oldest dead
letters, so its memory does not grow with the DLQ. `MarksFollower` keeps the latest mark of each
marked dead letter (one entry per key of the compacted `<dlq>.status` topic).
"""

from __future__ import annotations

import heapq
import os
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, fields
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from orders_dlq.codec import DecodeError, dead_letter_codec, order_codec
from orders_dlq.dead_letter import (
    CONNECT_PREFIX,
    FORMAT_HEADER,
    OUR_PREFIX,
    SPRING_PREFIXES,
    DeadLetter,
    DeadLetterCodec,
    reason_category,
)
from orders_dlq.kafka import reader_config
from orders_dlq.logs import log
from orders_dlq.marks import MARKED, OPEN, Mark, mark_key, marks_topic
from orders_dlq.registry import OriginalOrders
from orders_dlq.selection import DlqRecord, Selection, UnreadableRecord, read_dead_letter
from orders_dlq.settings import KafkaSettings

PAGE_SIZE = 50
SCAN_LIMIT = 20_000        # messages one page request looks at, at most
PAGE_TIME_BUDGET = 1.5     # seconds one page request reads, at most (the first page must show within 2 s)
HEX_LIMIT = 64 * 1024      # bytes of the original message the hex view shows
MAX_REASONS = 12           # reason categories the chart keeps apart; the rest are "other"
BUCKET_SECONDS = 60
MAX_BUCKETS = 8 * 24 * 60  # a week of minutes and a day more: the DLQ keeps 7 days
OLDEST_KEPT = 1000         # the oldest dead letters remembered, to find the oldest open one


def small_reader_config(settings: KafkaSettings) -> dict:
    """A reader (no group membership, no commits) whose prefetch stays small: the console holds
    several consumers for as long as it runs, and librdkafka would otherwise queue up to 64 MiB
    of fetched messages for each, whatever the Python side keeps."""
    return {**reader_config(settings, f"dlq-console-{uuid.uuid4()}"),
            # Fetched-but-unconsumed messages kept per consumer, in KiB (default 65536).
            "queued.max.messages.kbytes": 8192,
            # librdkafka otherwise prefetches 100,000 messages per partition whatever their size:
            # measured on 300,000 dead letters, 241 MB peak RSS with the default, 182 MB with 1,000.
            "queued.min.messages": 1000,
            # At most this much per fetch response: with the limit above, memory stays bounded.
            "fetch.max.bytes": 8 * 1024 * 1024}


# -- one record ------------------------------------------------------------------------------------

def kind_of(headers: list | None, value: bytes | None) -> str:
    """Who wrote a DLQ record, from its headers: ours (Avro), Spring Kafka, Kafka Connect, or nobody we know."""
    names = [name for name, _ in headers or ()]
    if FORMAT_HEADER in names:
        return "orders_dlq"
    if any(name.startswith(SPRING_PREFIXES) for name in names):
        return "spring"
    if any(name.startswith(CONNECT_PREFIX) for name in names):
        return "connect"
    return "tombstone" if value is None else "foreign"


def iso(moment: datetime | None) -> str | None:
    try:
        return None if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError):
        return None


def text_or_hex(raw: bytes | None) -> dict | None:
    """Bytes for a page: as text when they are UTF-8, always as hex (cut at HEX_LIMIT)."""
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and not all(ch.isprintable() or ch in "\t\n\r" for ch in text):
        text = None  # e.g. Spring's binary partition and offset headers: shown as hex, not as garbage
    return {"size": len(raw), "text": text, "hex": raw[:HEX_LIMIT].hex(), "cut": len(raw) > HEX_LIMIT}


def hex_dump(raw: bytes | None, limit: int = HEX_LIMIT) -> list[str]:
    """The classic view: offset, 16 bytes in hex, the same as printable ASCII."""
    if raw is None:
        return []
    lines = []
    for start in range(0, min(len(raw), limit), 16):
        chunk = raw[start:start + 16]
        hexes = " ".join(f"{byte:02x}" for byte in chunk)
        shown = "".join(chr(byte) if 32 <= byte < 127 else "." for byte in chunk)
        lines.append(f"{start:08x}  {hexes:<47}  {shown}")
    if len(raw) > limit:
        lines.append(f"... {len(raw) - limit} more byte(s)")
    return lines


@dataclass
class Row:
    """One DLQ message as a line of the list: a dead letter, or what it is when it is not one."""

    partition: int
    offset: int
    kind: str
    status: str | None = None
    failed_at: str | None = None
    stage: str | None = None
    reason: str | None = None
    order_id: str | None = None
    product: str | None = None
    original_topic: str | None = None
    unreadable: str | None = None   # why it is not a dead letter

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# -- filters ---------------------------------------------------------------------------------------

@dataclass
class Filters:
    """The list's filters: a Selection (the CLI's) plus the status the marks give."""

    selection: Selection
    status: str = OPEN  # open, replayed, resolved, discarded or all

    @property
    def seek_time(self):
        """Where reading a partition may start: the later of since (failure time, which comes after
        the record was written only by clock skew) and from_time (the DLQ record time)."""
        times = [moment for moment in (self.selection.since, self.selection.from_time) if moment is not None]
        return max(times) if times else None

    @property
    def narrowed(self) -> bool:
        """Whether anything beyond the status is asked (unreadable records match no criterion)."""
        default = Selection()
        return any(getattr(self.selection, f.name) != getattr(default, f.name) for f in fields(Selection))

    def keeps(self, status: str) -> bool:
        return self.status == "all" or status == self.status


# -- reading ---------------------------------------------------------------------------------------

class DlqReader:
    """Seeks and reads the DLQ for the pages: one consumer, used by one request at a time."""

    def __init__(self, settings: KafkaSettings, marks: MarksFollower):
        self.settings = settings
        self.topic = settings.dlq_topic
        self.marks = marks
        self.codec = DeadLetterCodec(dead_letter_codec())
        self.orders = order_codec()
        self.originals = OriginalOrders()  # either framing; the console gives it the registry when it has one
        self.consumer = Consumer(small_reader_config(settings))
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            self.consumer.close()

    def partitions(self) -> list[int]:
        metadata = self.consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if metadata is None or metadata.error is not None:
            return []
        return sorted(metadata.partitions)

    def watermarks(self, partition: int) -> tuple[int, int]:
        return self.consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10)

    def _seek_time(self, partition: int, since: datetime) -> int | None:
        """The first offset whose record time is at or after `since` (the broker's time index), None past the end."""
        found = self.consumer.offsets_for_times(
            [TopicPartition(self.topic, partition, int(since.timestamp() * 1000))], timeout=10)
        return None if found[0].offset < 0 else found[0].offset

    def _status(self, record: DlqRecord) -> str:
        return self.marks.status(mark_key(record.dead_letter, self.topic, record.partition, record.offset))

    def row(self, message) -> Row:
        partition, offset = message.partition(), message.offset()
        kind = kind_of(message.headers(), message.value())
        try:
            record = read_dead_letter(message, self.codec, self.topic)
        except UnreadableRecord as exc:
            why = "a tombstone (no value)" if kind == "tombstone" else str(exc)[:300]
            return Row(partition, offset, "tombstone" if kind == "tombstone" else "unreadable", unreadable=why)
        letter = record.dead_letter
        return Row(partition, offset, kind, self._status(record), iso(record.failed_at), letter.error_stage,
                   letter.error_reason, letter.order_id, letter.product, letter.original_topic)

    def page(self, filters: Filters, partition: int | None = None, offset: int | None = None,
             size: int = PAGE_SIZE) -> dict:
        """Up to `size` matching rows from the cursor on; the cursor to continue from (None at the end)."""
        with self.lock:
            return self._page(filters, partition, offset, size)

    def _page(self, filters: Filters, partition: int | None, offset: int | None, size: int) -> dict:
        partitions = self.partitions()
        if not partitions:
            return {"rows": [], "next": None, "scanned": 0}
        current = partition if partition in partitions else partitions[0]
        rows: list[dict] = []
        scanned = 0
        deadline = time.monotonic() + PAGE_TIME_BUDGET
        position = offset
        while True:
            low, high = self.watermarks(current)
            if position is None:
                # A fresh partition: start at --since through the time index, else at its beginning.
                since = filters.seek_time
                position = low if since is None else self._seek_time(current, since)
                position = high if position is None else position
            position = max(position, low)
            if position < high:
                position, read, done = self._read_stretch(current, position, high, filters, rows, size,
                                                          SCAN_LIMIT - scanned, deadline)
                scanned += read
            else:
                done = True
            if len(rows) >= size or scanned >= SCAN_LIMIT or time.monotonic() >= deadline:
                if done and current == partitions[-1]:
                    return {"rows": rows, "next": None, "scanned": scanned}
                if done:
                    current, position = partitions[partitions.index(current) + 1], None
                return {"rows": rows, "next": {"partition": current, "offset": position}, "scanned": scanned}
            if current == partitions[-1]:
                return {"rows": rows, "next": None, "scanned": scanned}
            current, position = partitions[partitions.index(current) + 1], None

    def _read_stretch(self, partition: int, start: int, high: int, filters: Filters, rows: list, size: int,
                      budget: int, deadline: float) -> tuple[int, int, bool]:
        """Read one partition from `start`; returns where to go on, how many were read, and whether its end came."""
        self.consumer.assign([TopicPartition(self.topic, partition, start)])
        position, read = start, 0
        try:
            while len(rows) < size and read < budget and time.monotonic() < deadline:
                messages = self.consumer.consume(min(500, budget - read), timeout=0.2)
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            return position, read, True
                        raise KafkaException(error)
                    read += 1
                    position = message.offset() + 1
                    row = self.row(message)
                    if self._wanted(row, message, filters):
                        rows.append(row.to_json())
                    if len(rows) >= size or position >= high:
                        break
                if position >= high:
                    return position, read, True
            return position, read, False
        finally:
            self.consumer.unassign()

    def _wanted(self, row: Row, message, filters: Filters) -> bool:
        if row.unreadable is not None:
            # Not a dead letter: shown wherever no criterion is asked, so that it is never hidden.
            return not filters.narrowed and filters.status in (OPEN, "all")
        if not filters.keeps(row.status or OPEN):
            return False
        record = read_dead_letter(message, self.codec, self.topic)
        return filters.selection.selects(record)

    def message(self, partition: int, offset: int, timeout: float = 10.0):
        """The DLQ message at (partition, offset), or None when there is none (deleted, compacted, aborted)."""
        with self.lock:
            low, high = self.watermarks(partition) if partition in self.partitions() else (0, 0)
            if not low <= offset < high:
                return None
            self.consumer.assign([TopicPartition(self.topic, partition, offset)])
            try:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    for message in self.consumer.consume(1, timeout=0.5):
                        error = message.error()
                        if error is not None:
                            if error.code() == KafkaError._PARTITION_EOF:
                                return None
                            raise KafkaException(error)
                        return message if message.offset() == offset else None
                return None
            finally:
                self.consumer.unassign()

    def detail(self, message) -> dict:
        """Everything about one DLQ message: the dead letter, the order inside, headers, hex of the bytes."""
        row = self.row(message)
        headers = message.headers() or []
        conventions = {"orders_dlq": [], "spring": [], "connect": [], "other": []}
        for name, value in headers:
            group = ("orders_dlq" if name.startswith(OUR_PREFIX) else "spring" if name.startswith(SPRING_PREFIXES)
                     else "connect" if name.startswith(CONNECT_PREFIX) else "other")
            conventions[group].append({"name": name, "value": text_or_hex(value)})
        detail = {"row": row.to_json(), "position": f"{self.topic}[{message.partition()}]@{message.offset()}",
                  "headers": conventions, "dead_letter": None, "order": None, "order_error": None,
                  "mark": None, "key": text_or_hex(message.key())}
        if row.unreadable is not None:
            detail["value"] = text_or_hex(message.value())
            detail["hex"] = hex_dump(message.value())
            return detail
        record = read_dead_letter(message, self.codec, self.topic)
        letter = record.dead_letter
        detail["dead_letter"] = dead_letter_json(letter)
        detail["hex"] = hex_dump(letter.original_value)
        mark = self.marks.get(mark_key(letter, self.topic, message.partition(), message.offset()))
        detail["mark"] = None if mark is None else vars(mark)
        try:
            order = self.originals.read(letter.original_value) or self.orders.decode(letter.original_value)
            detail["order"] = {name: value if isinstance(value, (str, int, float, type(None))) else str(value)
                               for name, value in order.items()}
        except DecodeError as exc:
            detail["order_error"] = str(exc)[:500]
        except Exception as exc:  # noqa: BLE001 - whatever bytes were dead-lettered, the page still shows
            detail["order_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        return detail


def dead_letter_json(letter: DeadLetter) -> dict:
    data = {}
    for name in ("error_reason", "error_type", "error_stage", "error_timestamp", "original_topic", "failed_by",
                 "retry_count", "replay_count", "order_id", "product", "original_partition", "original_offset",
                 "original_timestamp", "log_append_time", "reduced", "original_size", "original_sha256",
                 "headers_unreadable"):
        data[name] = getattr(letter, name)
    data["price"] = None if letter.price is None else str(letter.price)
    data["original_key"] = text_or_hex(letter.original_key)
    data["original_value_size"] = None if letter.original_value is None else len(letter.original_value)
    data["original_headers"] = [{"name": name, "value": text_or_hex(value)}
                                for name, value in letter.original_headers or ()]
    return data


# -- following topics in the background --------------------------------------------------------------

class Follower(threading.Thread):
    """A daemon thread reading every partition of a topic from its start and then following it."""

    def __init__(self, settings: KafkaSettings, topic: str, name: str):
        super().__init__(name=name, daemon=True)
        self.settings = settings
        self.topic = topic
        self.stopping = threading.Event()
        self.error: str | None = None
        self.ends: dict[int, int] = {}       # high watermarks, refreshed now and then
        self.positions: dict[int, int] = {}  # next offset to read per partition
        self.lows: dict[int, int] = {}       # where each partition started when first seen

    def stop(self) -> None:
        self.stopping.set()

    def caught_up(self) -> bool:
        return bool(self.ends) and all(self.positions.get(p, 0) >= end for p, end in self.ends.items())

    def run(self) -> None:
        consumer = Consumer(small_reader_config(self.settings))
        try:
            assigned: set[int] = set()
            next_check = 0.0
            while not self.stopping.is_set():
                if time.monotonic() >= next_check:
                    assigned = self._check(consumer, assigned)
                    next_check = time.monotonic() + 5
                if not assigned:
                    self.stopping.wait(1)
                    continue
                for message in consumer.consume(1000, timeout=0.5):
                    error = message.error()
                    if error is None:
                        self.positions[message.partition()] = message.offset() + 1
                        self.take(message)
                    elif error.code() == KafkaError._PARTITION_EOF:
                        self.positions[message.partition()] = max(self.positions.get(message.partition(), 0),
                                                                  message.offset())
                    else:
                        self.error = error.str()
        except Exception as exc:  # noqa: BLE001 - a background reader reports, the page shows it
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("reading %s in the background stopped: %s", self.topic, self.error)
        finally:
            consumer.close()

    def _check(self, consumer: Consumer, assigned: set[int]) -> set[int]:
        """Watermarks now; partitions that appeared (a DLQ can gain partitions) are added from their start."""
        try:
            metadata = consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if metadata is None or metadata.error is not None:
                self.error = f"topic {self.topic} does not exist"
                return assigned
            for partition in metadata.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10)
                self.ends[partition] = high
                if partition not in self.positions or self.positions[partition] < low:
                    self.positions[partition] = low
                    self.lows[partition] = low
            new = set(metadata.partitions) - assigned
            if new:
                consumer.incremental_assign([TopicPartition(self.topic, p, self.positions[p]) for p in new])
            self.error = None
            return assigned | new
        except KafkaException as exc:
            self.error = exc.args[0].str()
            return assigned

    def take(self, message) -> None:
        raise NotImplementedError


class MarksFollower(Follower):
    """The latest mark of every marked dead letter, kept current from the compacted `<dlq>.status` topic."""

    def __init__(self, settings: KafkaSettings):
        super().__init__(settings, marks_topic(settings.dlq_topic), "marks")
        self.marks: dict[bytes, Mark] = {}
        self.lock = threading.Lock()

    def take(self, message) -> None:
        key, value = message.key(), message.value()
        if key is None:
            return
        mark = None if value is None else Mark.from_bytes(value)
        with self.lock:
            if mark is not None:
                self.marks[key] = mark
            elif value is None:
                self.marks.pop(key, None)  # a tombstone reopens the dead letter

    def remember(self, key: bytes, mark: Mark) -> None:
        """A mark this console wrote: shown at once, before the follower reads it back."""
        with self.lock:
            self.marks[key] = mark

    def get(self, key: bytes) -> Mark | None:
        with self.lock:
            return self.marks.get(key)

    def status(self, key: bytes) -> str:
        mark = self.get(key)
        return OPEN if mark is None else mark.status

    def counts(self) -> dict[str, int]:
        with self.lock:
            counted = Counter(mark.status for mark in self.marks.values())
        return {status: counted.get(status, 0) for status in MARKED}


class DlqIndex(Follower):
    """The overview's figures, kept as counters while following the whole DLQ (bounded memory)."""

    def __init__(self, settings: KafkaSettings, marks: MarksFollower):
        super().__init__(settings, settings.dlq_topic, "dlq-index")
        self.marks = marks
        self.codec = DeadLetterCodec(dead_letter_codec())
        self.lock = threading.Lock()
        self.total = 0
        self.by_kind: Counter = Counter()
        self.by_stage: Counter = Counter()
        self.by_reason: Counter = Counter()
        self.reasons: list[str] = []                  # the categories kept apart, in order of appearance
        self.buckets: dict[int, Counter] = {}         # minute -> reason category -> count
        self.oldest: list[tuple[float, int, int, bytes]] = []  # max-heap (negated) of the OLDEST_KEPT oldest
        self.newest: float | None = None

    def _reason(self, reason: str | None) -> str:
        category = reason_category(reason or "unknown").strip()[:80] or "unknown"
        if category in self.reasons:
            return category
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(category)
            return category
        return "other"

    def take(self, message) -> None:
        kind = kind_of(message.headers(), message.value())
        try:
            record = read_dead_letter(message, self.codec, self.topic)
        except UnreadableRecord:
            with self.lock:
                self.total += 1
                self.by_kind["tombstone" if kind == "tombstone" else "unreadable"] += 1
            return
        letter, failed_at = record.dead_letter, record.failed_at
        with self.lock:
            self.total += 1
            self.by_kind[kind] += 1
            self.by_stage[letter.error_stage] += 1
            category = self._reason(letter.error_reason)
            self.by_reason[category] += 1
            if failed_at is None:
                return
            moment = failed_at.timestamp()
            self.newest = moment if self.newest is None else max(self.newest, moment)
            minute = int(moment // BUCKET_SECONDS)
            self.buckets.setdefault(minute, Counter())[category] += 1
            if len(self.buckets) > MAX_BUCKETS:
                del self.buckets[min(self.buckets)]
            entry = (-moment, message.partition(), message.offset(),
                     mark_key(letter, self.topic, message.partition(), message.offset()))
            if len(self.oldest) < OLDEST_KEPT:
                heapq.heappush(self.oldest, entry)
            elif entry > self.oldest[0]:
                heapq.heapreplace(self.oldest, entry)

    def overview(self, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        marked = self.marks.counts()
        with self.lock:
            readable = self.total - self.by_kind["unreadable"] - self.by_kind["tombstone"]
            series_names = [*self.reasons, *(["other"] if "other" in self.by_reason else [])]
            current = int(now // BUCKET_SECONDS)
            minutes, series = chart_series(self.buckets, series_names, current)
            last_minute = sum(self.buckets.get(current, Counter()).values())
            previous = sum(self.buckets.get(current - 1, Counter()).values())
            # Per minute over the last 60 s: this minute so far plus the matching share of the one before.
            share = (now % BUCKET_SECONDS) / BUCKET_SECONDS
            rate = last_minute + previous * (1 - share)
            oldest_open = None
            for negated, partition, offset, key in sorted(self.oldest, reverse=True):
                if self.marks.status(key) == OPEN:
                    oldest_open = {"partition": partition, "offset": offset,
                                   "failed_at": iso(datetime.fromtimestamp(-negated, UTC)),
                                   "age_seconds": max(0.0, now + negated)}
                    break
            indexed = sum(self.positions.values()) - sum(self.lows.values())
            return {
                "total": self.total,
                "dead_letters": readable,
                "by_kind": dict(self.by_kind),
                "by_stage": dict(self.by_stage.most_common()),
                "by_reason": dict(self.by_reason.most_common()),
                "status": {OPEN: max(0, readable - sum(marked.values())), **marked},
                "oldest_open": oldest_open,
                "oldest_known": len(self.oldest) < OLDEST_KEPT or oldest_open is not None,
                "rate_per_minute": round(rate, 2),
                "newest_failed_at": None if self.newest is None else iso(datetime.fromtimestamp(self.newest, UTC)),
                "chart": {"times": minutes, "series": series,
                          "step_minutes": (minutes[1] - minutes[0]) // BUCKET_SECONDS if len(minutes) > 1 else 1},
                "indexing": {"done": self.caught_up(), "indexed": indexed,
                             "end": sum(self.ends.values()) - sum(self.lows.values()), "error": self.error},
            }


CHART_STEPS = (1, 5, 15, 60, 180, 360)  # minutes per point; the smallest that keeps the chart under MAX_POINTS
MAX_POINTS = 720


def chart_series(buckets: dict[int, Counter], names: list[str], current: int,
                 hour_at_least: int = 60) -> tuple[list[int], dict[str, list[int]]]:
    """Counts per reason over time, zero-filled from the first dead letter (or the last hour) to now,
    in steps wide enough that a week of minutes still makes a chart of at most MAX_POINTS points."""
    first = min(min(buckets, default=current), current - hour_at_least + 1)
    last = max(current, max(buckets, default=current))
    span = last - first + 1
    step = next((size for size in CHART_STEPS if span / size <= MAX_POINTS), CHART_STEPS[-1])
    first -= first % step
    count = (last - first) // step + 1
    series = {name: [0] * count for name in names}
    for minute, counter in buckets.items():
        index = (minute - first) // step
        if 0 <= index < count:
            for name, value in counter.items():
                if name in series:
                    series[name][index] += value
    return [(first + i * step) * BUCKET_SECONDS for i in range(count)], series


def rss_bytes() -> int | None:
    """This process's resident memory (Linux /proc), for the page and the bench."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
