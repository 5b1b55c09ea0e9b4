"""The DLQ monitor behind `dlq_consumer.py`: its reading loop, statistics, rate, ages, share of all orders,
the view and the alert.

The share of dead letters among all orders is an estimate from offsets, not a count of orders:

    orders       = messages in the orders topic (sum over its partitions of high minus low
                   watermark) + produce-stage dead letters (orders that never reached the topic)
    share        = dead letters shown (after --stage, --reason, ... filters) / orders

It is exact for a topic that holds every order ever sent exactly once. It is an approximation
when retention (or a delete-records) has removed old orders (a low watermark above 0: their dead
letters may still be in the DLQ, which keeps them 7 days, so the share comes out too high), when
the DLQ itself lost old dead letters, and when replays or transactional producers wrote to the
orders topic (a replayed order counts again; each transaction's commit marker takes an offset).
The monitor says so when it can tell (a low watermark above 0).

The rate counts the dead letters that failed within the last RATE_WINDOW seconds (by their error
time, or the DLQ message time for Spring/Connect dead letters without one), per minute.

Exit codes of dlq_consumer.py: 0 ok, 1 runtime error, 2 usage error, 3 alert (--alert-threshold).
"""

from __future__ import annotations

import bisect
import json
import shutil
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from orders_dlq import metrics, reading
from orders_dlq.codec import dead_letter_codec
from orders_dlq.dead_letter import DeadLetter, DeadLetterCodec, reason_category
from orders_dlq.errors import EXIT_OK, ToolFailure
from orders_dlq.kafka import missing_topics, reader_config
from orders_dlq.logs import log
from orders_dlq.marks import MARKED, OPEN, STATUSES, Mark, mark_key, read_marks
from orders_dlq.runtime import Progress, StopFlag
from orders_dlq.selection import ALL, DlqRecord, Selection, UnreadableRecord, read_dead_letter, status_of_record
from orders_dlq.settings import KafkaSettings

EXIT_ALERT = 3
RATE_WINDOW = 60.0
CLEAR_SCREEN = "\x1b[H\x1b[2J"  # cursor home, clear: only ever written to a terminal


# -- the pure parts ------------------------------------------------------------------------------

class RateWindow:
    """Event times (epoch seconds) within the last `window` seconds; the rate is per minute."""

    def __init__(self, window: float = RATE_WINDOW):
        self.window = window
        self.times: list[float] = []  # sorted: dead letters of several partitions arrive out of order

    def add(self, moment: float, now: float) -> None:
        if moment >= now - self.window:
            bisect.insort(self.times, moment)

    def count(self, now: float) -> int:
        del self.times[:bisect.bisect_left(self.times, now - self.window)]
        return len(self.times)

    def per_minute(self, now: float) -> float:
        return self.count(now) * 60.0 / self.window


@dataclass
class TopicCount:
    """What a topic's watermarks say: messages present, and how many retention already deleted."""

    messages: int
    deleted: int = 0


@dataclass
class Share:
    dead_letters: int
    orders: int
    approximate: bool = False
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.dead_letters / self.orders if self.orders else None


def compute_share(dead_letters: int, never_reached: int, orders_topic: TopicCount | None,
                  dlq_deleted: int = 0) -> Share | None:
    """Dead letters among all orders (see the module docstring); None when the orders topic is unknown."""
    if orders_topic is None:
        return None
    notes = []
    if orders_topic.deleted:
        notes.append(f"retention deleted {orders_topic.deleted} older order(s) whose dead letters may still "
                     "be counted")
    if dlq_deleted:
        notes.append(f"retention deleted {dlq_deleted} older dead letter(s)")
    return Share(dead_letters, orders_topic.messages + never_reached, bool(notes), "; ".join(notes))


def format_percent(ratio: float) -> str:
    value = ratio * 100
    if value == 0 or value >= 0.1:
        return f"{value:.1f}%"
    return f"{value:.2g}%"


def format_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600:02d}h"


def share_text(share: Share | None) -> str:
    if share is None:
        return "unknown (the orders topic does not exist)"
    if share.ratio is None:
        return f"- ({share.dead_letters} dead letter(s), no orders in the topic)"
    text = f"{format_percent(share.ratio)} of {share.orders} orders ({share.dead_letters} dead letters)"
    if share.approximate:
        text += f" - approximation: {share.note}"
    return text


def alert_message(share: Share | None, threshold: float) -> str | None:
    """The one ALERT line when the share exceeds the threshold, else None."""
    if share is None or share.ratio is None or not share.ratio > threshold:
        return None
    line = (f"ALERT: dead-letter rate {format_percent(share.ratio)} exceeds threshold {format_percent(threshold)} "
            f"({share.dead_letters} of {share.orders} orders)")
    if share.approximate:
        line += f" [approximation: {share.note}]"
    return line


def describe(dead_letter: DeadLetter, where: str, failed_at: datetime | None, detailed: bool = False) -> str:
    """One dead letter for people, the same in every tool: one line (the follow view, a replay's
    listing), or with `detailed` a second line with price, type, counts, origin and who failed it."""
    try:
        when = failed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if failed_at else "-"
    except (OverflowError, ValueError):
        when = "-"  # e.g. year 1 at +05:00: no UTC time to show, still a dead letter to show
    line = (f"{where} {when} {dead_letter.error_stage}: {dead_letter.error_reason}  "
            f"order {dead_letter.order_id or '-'}  product {dead_letter.product or '-'}")
    if not detailed:
        return line
    price = "-" if dead_letter.price is None else str(dead_letter.price)
    origin = (f"{dead_letter.original_topic}[{dead_letter.original_partition}]@{dead_letter.original_offset}"
              if dead_letter.original_partition is not None else dead_letter.original_topic)
    return (f"{line}\n    price {price}  {dead_letter.error_type}  retries {dead_letter.retry_count}  "
            f"replays {dead_letter.replay_count}  from {origin}  by {dead_letter.failed_by}")


class DeadLetterStats:
    """Counts of dead letters by reason, stage, original topic, product and retry count."""

    def __init__(self):
        self.total = 0
        self.by_reason: Counter = Counter()
        self.by_stage: Counter = Counter()
        self.by_original_topic: Counter = Counter()
        self.by_product: Counter = Counter()
        self.retry_counts: Counter = Counter()
        self.first_error: str | None = None
        self.last_error: str | None = None

    def add(self, dead_letter) -> None:
        self.total += 1
        self.by_reason[reason_category(dead_letter.error_reason)] += 1
        self.by_stage[dead_letter.error_stage] += 1
        self.by_original_topic[dead_letter.original_topic] += 1
        self.by_product[dead_letter.product or "(unknown)"] += 1
        self.retry_counts[str(dead_letter.retry_count)] += 1
        stamp = dead_letter.error_timestamp or None
        if stamp:
            self.first_error = min(filter(None, (self.first_error, stamp)))
            self.last_error = max(filter(None, (self.last_error, stamp)))

    def summary(self) -> dict:
        def ordered(counter):
            return dict(counter.most_common())
        return {
            "total": self.total,
            "by_reason": ordered(self.by_reason),
            "by_stage": ordered(self.by_stage),
            "by_original_topic": ordered(self.by_original_topic),
            "by_product": ordered(self.by_product),
            "retry_counts": dict(sorted(self.retry_counts.items(), key=lambda kv: int(kv[0]))),
            "first_error": self.first_error,
            "last_error": self.last_error,
        }


class Monitor:
    """Everything the monitor knows about the dead letters it selected, and the orders topic."""

    def __init__(self, orders_topic: str, window: float = RATE_WINDOW, recent: int = 5):
        self.orders_topic = orders_topic
        self.stats = DeadLetterStats()
        self.rate = RateWindow(window)
        self.oldest: datetime | None = None
        self.newest: datetime | None = None
        self.never_reached = 0  # produce-stage dead letters: orders the orders topic never got
        self.by_stage_reason: Counter = Counter()
        self.recent: deque[str] = deque(maxlen=recent)
        self.orders: TopicCount | None = None
        self.dlq_deleted = 0
        self._published: Counter = Counter()

    def add(self, dead_letter: DeadLetter, failed_at: datetime | None, now: float, line: str = "") -> None:
        self.stats.add(dead_letter)
        self.by_stage_reason[dead_letter.error_stage, metrics.reason_label(dead_letter.error_reason)] += 1
        if dead_letter.error_stage == "produce" and dead_letter.original_topic == self.orders_topic:
            self.never_reached += 1
        if failed_at is not None:
            self.oldest = failed_at if self.oldest is None else min(self.oldest, failed_at)
            self.newest = failed_at if self.newest is None else max(self.newest, failed_at)
            self.rate.add(failed_at.timestamp(), now)
        if line:
            self.recent.append(line)

    def share(self) -> Share | None:
        return compute_share(self.stats.total, self.never_reached, self.orders, self.dlq_deleted)

    def ages(self, now: float) -> tuple[float | None, float | None]:
        """Seconds since the oldest and since the newest dead letter failed."""
        def age(moment):
            return None if moment is None else max(0.0, now - moment.timestamp())
        return age(self.oldest), age(self.newest)

    def summary_extra(self, now: float) -> dict:
        """What --json adds to DeadLetterStats.summary()."""
        share = self.share()
        return {
            "orders_total": share.orders if share else None,
            "share_of_orders": None if share is None or share.ratio is None else round(share.ratio, 6),
            "share_is_approximate": bool(share and share.approximate),
            "rate_per_minute": round(self.rate.per_minute(now), 3),
        }

    def publish_metrics(self, now: float) -> None:
        """Move the monitor's Prometheus metrics to what it knows now (once per refresh, not per letter)."""
        for labels, count in self.by_stage_reason.items():
            delta = count - self._published[labels]
            if delta > 0:
                metrics.MONITOR_SEEN.labels(*labels).inc(delta)
                self._published[labels] = count
        share = self.share()
        oldest, newest = self.ages(now)
        metrics.MONITOR_GAUGES.update(
            monitor_dead_letter_rate_per_minute=self.rate.per_minute(now),
            monitor_orders_topic_messages=None if self.orders is None else self.orders.messages,
            monitor_dead_letter_share=None if share is None else share.ratio,
            monitor_oldest_dead_letter_age_seconds=oldest,
            monitor_newest_dead_letter_age_seconds=newest,
        )

    # -- text ------------------------------------------------------------------------------------

    def _ages_text(self, now: float) -> str:
        oldest, newest = self.ages(now)
        if oldest is None:
            return "newest -  oldest -"
        return f"newest {format_age(newest)} ago  oldest {format_age(oldest)} ago"

    def _rate_text(self, now: float) -> str:
        return f"{self.rate.per_minute(now):.1f}/min (last {self.rate.window:g}s)"

    def status_line(self, now: float) -> str:
        """One plain line per refresh (output that is not a terminal)."""
        stamp = datetime.fromtimestamp(now, UTC).strftime("%H:%M:%SZ")
        stages = ", ".join(f"{name} {count}" for name, count in self.stats.by_stage.most_common()) or "-"
        return (f"{stamp} dead letters {self.stats.total}  rate {self._rate_text(now)}  {self._ages_text(now)}  "
                f"share {share_text(self.share())}  by stage: {stages}")

    def summary_lines(self, now: float) -> list[str]:
        """What the plain report adds after the statistics."""
        return [f"share of orders: {share_text(self.share())}",
                f"rate: {self._rate_text(now)}  {self._ages_text(now)}"]

    def render(self, now: float, title: str, width: int = 120, height: int = 40, top: int = 8) -> list[str]:
        """The whole view for a terminal, redrawn in place every refresh; lines cut to the width."""
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        lines = [f"{title}  {stamp}  (Ctrl+C to stop)", "",
                 f"dead letters  {self.stats.total}",
                 f"rate          {self._rate_text(now)}",
                 f"age           {self._ages_text(now)}",
                 f"share         {share_text(self.share())}"]
        for heading, counter in (("by stage", self.stats.by_stage), ("by reason", self.stats.by_reason)):
            if counter:
                lines += ["", heading]
                ranked = counter.most_common()
                lines += [f"  {count:>8}  {name}" for name, count in ranked[:top]]
                if len(ranked) > top:
                    rest = sum(count for _, count in ranked[top:])
                    lines.append(f"  {rest:>8}  ({len(ranked) - top} more)")
        if self.recent:
            lines += ["", "latest"] + [f"  {line}" for line in self.recent]
        return [line[:width] for line in lines[:max(height - 1, 1)]]


# -- Kafka ---------------------------------------------------------------------------------------

def topic_count(consumer, topic: str, timeout: float = 5.0) -> TopicCount | None:
    """Sum of high minus low watermarks of a topic (None if it does not exist). Raises KafkaException."""
    metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return None
    count = TopicCount(0, 0)
    for partition in metadata.partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        count.messages += max(0, high - low)
        count.deleted += max(0, low)
    return count


# -- where a read starts -------------------------------------------------------------------------

def start_positions(consumer, topic: str, selection: Selection) -> tuple[dict[int, int], dict[int, int]]:
    """Where a read of the DLQ starts and ends in each partition, for a selection.

    It starts at the latest of: the partition's beginning, the selection's --from-offset for it,
    and the first record written at or after --from-time (the broker's time index). It ends at
    --to-offset, or at the end right now.
    """
    partitions = [p for p in reading.partitions_of(consumer, topic) if selection.in_partitions(p)]
    bounds = reading.watermarks(consumer, topic, partitions)
    by_time = reading.offsets_at(consumer, topic, partitions, selection.from_time) if selection.from_time else {}
    starts, ends = {}, {}
    for partition, (low, high) in bounds.items():
        start = max(low, selection._bound(selection.from_offsets, partition) or 0)
        if selection.from_time:
            found = by_time.get(partition)
            start = max(start, high if found is None else found)
        last = selection._bound(selection.to_offsets, partition)
        end = high if last is None else min(high, last + 1)  # --to-offset: no need to read beyond it
        starts[partition], ends[partition] = min(start, end), end
    return starts, ends


def marks_for(settings: KafkaSettings, selection: Selection) -> dict[bytes, Mark] | None:
    """The marks of the DLQ's dead letters; None (statuses unknown) only when --status all asks for
    no status and the marks topic does not exist, which a DLQ set up before the marks existed lacks."""
    try:
        return read_marks(settings, settings.dlq_topic)
    except ToolFailure as exc:
        if selection.status != ALL or "does not exist" not in str(exc):
            raise
        log.warning("%s: statuses are not shown", exc)
        return None


# -- the reading loop of dlq_consumer.py -----------------------------------------------------------

def as_json(found: DlqRecord) -> dict:
    """One dead letter as a JSON object (bytes as hex), with its place in the DLQ."""
    dead_letter = found.dead_letter
    record = dead_letter.to_record()
    for name in ("original_key", "original_value"):
        record[name] = None if record[name] is None else record[name].hex()
    record["original_headers"] = [{"key": h["key"], "value": None if h["value"] is None else h["value"].hex()}
                                  for h in record["original_headers"]]
    record["price"] = None if dead_letter.price is None else str(dead_letter.price)
    record["dlq_position"] = found.position
    return record


def stats_text(summary: dict) -> str:
    """The statistics as text: totals, then counts by stage, reason, topic, product, retries."""
    lines = [f"dead letters: {summary['total']}"]
    by_status = summary.get("by_status")
    if by_status:
        lines.append(f"status: {summary.get('status', ALL)} shown; all by status: "
                     + "  ".join(f"{name} {by_status.get(name, 0)}" for name in STATUSES))
    if summary["total"]:
        lines.append(f"first {summary['first_error']}  last {summary['last_error']}")
    for title in ("by_stage", "by_reason", "by_original_topic", "by_product", "retry_counts"):
        if summary[title]:
            lines.append(title.replace("_", " ") + ":")
            lines += [f"  {count:>7}  {name}" for name, count in summary[title].items()]
    return "\n".join(lines)


class DlqMonitor:
    """One run of dlq_consumer.py: reads the DLQ, selects, counts and prints.

    Counts and shows the dead letters of the selection's status (open by default); `by_status`
    counts every dead letter the other criteria select, by its mark, to show beside them.
    `on_record(record, status)` (the export) gets each dead letter shown.
    """

    def __init__(self, args, settings: KafkaSettings, partitions: int, stop: StopFlag, selection: Selection,
                 marks: dict[bytes, Mark] | None = None,
                 on_record: Callable[[DlqRecord, str], None] | None = None):
        self.args = args
        self.settings = settings
        self.stop = stop
        self.codec = DeadLetterCodec(dead_letter_codec())
        self.selection = selection
        self.marks = marks
        self.on_record = on_record
        self.by_status: Counter = Counter()
        self.monitor = Monitor(settings.topic, RATE_WINDOW)
        self.consumer = Consumer(reader_config(settings, f"dlq-monitor-{uuid.uuid4()}"))
        # Offsets are asked on a client of their own: on the reading one each request would wait
        # behind the fetch long-polls of the assigned partitions (up to fetch.wait.max.ms each).
        self.counter = Consumer(reader_config(settings, f"dlq-monitor-{uuid.uuid4()}"))
        self.partitions = partitions
        self.tail = getattr(args, "tail", None)
        self.last: deque[tuple[DlqRecord, str]] | None = deque(maxlen=self.tail) if self.tail else None
        self.unreadable = 0
        # Redraw in place only on a terminal: never an escape sequence into a pipe or a file.
        self.terminal = args.follow and not (args.json or args.jsonl) and sys.stdout.isatty()
        self.count_warned = False
        self.count_error: str | None = None

    # -- reading ----------------------------------------------------------------------------------

    def handle(self, message) -> bool:
        """Decode, select, count and print one DLQ message; True when --limit is reached.

        A DLQ holds whatever anyone wrote to it (other tools' dead letters, tombstones, random
        bytes, hostile headers): a message that cannot be read or shown is counted as unreadable
        and passed over, never allowed to stop the monitor.
        """
        try:
            return self._handle(read_dead_letter(message, self.codec, self.settings.dlq_topic))
        except UnreadableRecord as exc:
            reason = str(exc)
        except OSError:
            # Our own output failed (its reader went away: `| head`; its disk is full), not the
            # record: every further message would fail the same way. The CLI ends the run.
            raise
        except Exception as exc:  # noqa: BLE001 - a dead letter we cannot show is passed over the same way
            reason = f"{type(exc).__name__}: {exc}"
            log.debug("showing %s[%d]@%d", message.topic(), message.partition(), message.offset(), exc_info=True)
        self.unreadable += 1
        log.warning("%s[%d]@%d is not a dead letter: %s", message.topic(), message.partition(),
                    message.offset(), reason[:300])
        return False

    def _status(self, record: DlqRecord) -> str | None:
        return None if self.marks is None else status_of_record(record, self.marks)

    def _handle(self, record: DlqRecord) -> bool:
        if not self.selection.matches(record.dead_letter, record.partition, record.offset, record.message_time_ms):
            return False
        status = self._status(record)
        if status is not None:
            self.by_status[status] += 1
        if self.selection.status != ALL and status != self.selection.status:
            return False
        if self.last is not None:
            self.last.append((record, status))  # --tail: shown when the end is reached
            return False
        return self._show(record, status)

    def _show(self, record: DlqRecord, status: str | None) -> bool:
        dead_letter, failed_at = record.dead_letter, record.failed_at
        where = f"[{record.partition}@{record.offset}]"
        line = describe(dead_letter, where, failed_at) if self.args.follow else ""
        self.monitor.add(dead_letter, failed_at, time.time(), line)
        if self.on_record is not None:
            self.on_record(record, status or OPEN)
        if self.args.jsonl:
            print(json.dumps({**as_json(record), "status": status}), flush=True)
        elif self.args.json or self.terminal or getattr(self.args, "export", None):
            pass
        elif self.args.follow:
            print(line, flush=True)
        else:
            text = describe(dead_letter, where, failed_at, detailed=True)
            if status in MARKED:
                mark = self.marks[mark_key(dead_letter, record.topic, record.partition, record.offset)]
                text += f"\n    {mark.status} by {mark.by} at {mark.at}" + (f": {mark.note}" if mark.note else "")
            print(text)
        return bool(self.args.limit and self.monitor.stats.total >= self.args.limit)

    def count_orders(self) -> None:
        """The orders topic's size (and what retention deleted of it and of the DLQ), from watermarks."""
        try:
            self.monitor.orders = topic_count(self.counter, self.settings.topic)
            dlq = topic_count(self.counter, self.settings.dlq_topic)
            self.monitor.dlq_deleted = dlq.deleted if dlq else 0
        except KafkaException as exc:
            # Keep the last known figures: a monitor survives a broker blip.
            self.count_error = f"cannot read the offsets of {self.settings.topic}: {exc.args[0].str()}"
            if not self.count_warned:
                log.warning("%s", self.count_error)
            self.count_warned = True
            return
        missing = f"the orders topic {self.settings.topic} does not exist"
        self.count_error = None if self.monitor.orders is not None else missing

    def read_all(self) -> None:
        """Read from the selection's start to the DLQ's end as it is now; progress on a terminal.

        --tail keeps only the last N selected in memory while it reads: records that are not dead
        letters, or not selected, are no part of the N, so it cannot just seek N before the end."""
        starts, ends = start_positions(self.consumer, self.settings.dlq_topic, self.selection)
        progress = Progress(sum(ends[p] - starts[p] for p in starts), "reading the DLQ")
        scanned = 0
        try:
            for message in reading.read_range(self.consumer, self.settings.dlq_topic, starts, ends,
                                              stop=lambda: bool(self.stop)):
                scanned += 1
                progress.update(scanned)
                if self.handle(message):
                    break
        finally:
            progress.close()
        for record, status in self.last or ():
            self._show(record, status)
        self.count_orders()

    def follow(self) -> int:
        """Watch until a signal, --duration or --limit; returns EXIT_ALERT at the first alert."""
        args = self.args
        starts, _ = start_positions(self.consumer, self.settings.dlq_topic, self.selection)
        self.consumer.assign([TopicPartition(self.settings.dlq_topic, p, o) for p, o in starts.items()])
        started = time.monotonic()
        deadline = started + args.duration if args.duration else None
        not_at_end = set(starts)
        next_refresh = started + args.refresh
        while not self.stop:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wait = min(0.5, next_refresh - now, deadline - now if deadline is not None else 0.5)
            caught_up = limit_reached = False
            for message in self.consumer.consume(500, timeout=max(wait, 0.01)):
                error = message.error()
                if error is None:
                    if self.handle(message):
                        limit_reached = True
                        break
                elif error.code() == KafkaError._PARTITION_EOF:
                    if not_at_end:
                        not_at_end.discard(message.partition())
                        caught_up = not not_at_end  # the backlog is read: show it at once
                elif error.fatal():
                    raise ToolFailure(f"reading {self.settings.dlq_topic}: {error.str()}")
                else:
                    log.warning("reading %s: %s", self.settings.dlq_topic, error.str())
            if limit_reached:
                break
            if caught_up or time.monotonic() >= next_refresh:
                # A deleted DLQ looks like a quiet one to a reader (librdkafka only logs it).
                if missing_topics(self.consumer, [self.settings.dlq_topic], timeout=2):
                    raise ToolFailure(f"{self.settings.dlq_topic} was deleted while it was being followed: stopped")
                if self.refresh():
                    return EXIT_ALERT
                next_refresh = time.monotonic() + args.refresh
        return EXIT_ALERT if self.refresh(final=True) else EXIT_OK

    # -- output -----------------------------------------------------------------------------------

    def refresh(self, final: bool = False) -> bool:
        """Count the orders, update the metrics, show the view; True when the alert fires."""
        self.count_orders()
        now = time.time()
        self.publish_metrics(now)
        if self.terminal:
            size = shutil.get_terminal_size()
            title = f"{self._shown()} dead letters in {self.settings.dlq_topic}{self._by_status_text()}"
            view = self.monitor.render(now, title, size.columns, size.lines)
            sys.stdout.write(CLEAR_SCREEN + "\n".join(view) + "\n")
            sys.stdout.flush()
        elif self.args.json and not final:
            print(json.dumps(self.summary(now)), flush=True)
        elif not (self.args.json or self.args.jsonl):
            print(self.monitor.status_line(now) + self._by_status_text(), flush=True)
        return self.alert()

    def _shown(self) -> str:
        return "all" if self.selection.status == ALL else self.selection.status

    def _by_status_text(self) -> str:
        """The counts of each status, shown beside those of the selected status."""
        if self.marks is None:
            return ""
        return "  (" + ", ".join(f"{name} {self.by_status.get(name, 0)}" for name in STATUSES) + ")"

    def summary(self, now: float) -> dict:
        by_status = None if self.marks is None else {name: self.by_status.get(name, 0) for name in STATUSES}
        return {**self.monitor.stats.summary(), **self.monitor.summary_extra(now),
                "status": self.selection.status, "by_status": by_status}

    def publish_metrics(self, now: float) -> None:
        self.monitor.publish_metrics(now)
        for name in STATUSES if self.marks is not None else ():
            metrics.MONITOR_BY_STATUS.labels(name).set(self.by_status.get(name, 0))

    def report(self) -> None:
        """The final statistics (not on a terminal view, whose last frame stays on the screen)."""
        if self.terminal:
            return
        now = time.time()
        if self.args.json:
            print(json.dumps(self.summary(now)), flush=True)
        elif not self.args.jsonl:
            print(stats_text(self.summary(now)))
            print("\n".join(self.monitor.summary_lines(now)), flush=True)

    def alert(self) -> bool:
        threshold = self.args.alert_threshold
        if threshold is None:
            return False
        if self.monitor.orders is None:
            raise ToolFailure(f"cannot check --alert-threshold: {self.count_error or 'no orders count'} "
                              "(set -t/ORDERS_TOPIC to the topic whose DLQ this is)")
        message = alert_message(self.monitor.share(), threshold)
        if message:
            print(message, file=sys.stderr, flush=True)
        return message is not None

    def close(self) -> None:
        self.consumer.close()
        self.counter.close()
