"""The DLQ monitor behind `dlq_consumer.py`: counts, rate, ages, share of all orders, the view, the alert.

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
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import TopicPartition

from orders_dlq import metrics
from orders_dlq.dead_letter import DeadLetter
from orders_dlq.stats import DeadLetterStats

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


def describe_line(dead_letter: DeadLetter, partition: int, offset: int, failed_at: datetime | None) -> str:
    """One dead letter on one line (the follow view and its plain output)."""
    when = failed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if failed_at else "-"
    return (f"[{partition}@{offset}] {when} {dead_letter.error_stage}: {dead_letter.error_reason}  "
            f"order {dead_letter.order_id or '-'}  product {dead_letter.product or '-'}")


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
