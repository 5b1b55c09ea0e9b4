#!/usr/bin/env python3
"""Read the dead letter queue: print each dead letter with its reason, then summary statistics.

Reads from the beginning without committing anything, so it never moves another monitor's
position. Understands our Avro dead letters and those of Spring Kafka / Kafka Connect (headers).

--follow keeps watching: counts by stage and reason, the rate of new dead letters (per minute
over the last minute), the age of the oldest and newest, and their share of all orders (estimated
from the orders topic's offsets; see orders_dlq/monitor.py). On a terminal the view is redrawn in
place every --refresh seconds; otherwise each new dead letter and one status line per refresh are
printed as plain lines. It ends on Ctrl+C/SIGTERM, after --duration seconds or at --limit.

--alert-threshold RATIO checks the share after reading (with --follow: at every refresh) and
prints one ALERT line on stderr and exits 3 when it is exceeded, for cron or CI.
Exit codes: 0 ok, 1 runtime error (broker, topic), 2 usage error, 3 alert.
"""

from __future__ import annotations

import orders_dlq.python_version  # noqa: F401  first: below Python 3.11, one sentence and exit 2

# isort: split

import json
import shutil
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from orders_dlq import cli, metrics
from orders_dlq.codec import DecodeError, dead_letter_codec
from orders_dlq.dead_letter import DeadLetter, DeadLetterCodec
from orders_dlq.errors import EXIT_OK, ToolFailure
from orders_dlq.kafka import read_to_end, reader_config, require_cluster, require_topics
from orders_dlq.logs import log
from orders_dlq.monitor import (
    CLEAR_SCREEN,
    EXIT_ALERT,
    RATE_WINDOW,
    Monitor,
    alert_message,
    describe_line,
    topic_count,
)
from orders_dlq.replay import add_selection_arguments, error_time, selection_from_args
from orders_dlq.runtime import StopFlag
from orders_dlq.settings import KafkaSettings, kafka_settings, positive, ratio

EXAMPLE = "python dlq_consumer.py --stage validate --json"


def build_parser():
    parser = cli.build_parser(__doc__.splitlines()[0], EXAMPLE)
    parser.add_argument("--follow", action="store_true",
                        help="keep monitoring: a live view on a terminal, plain lines otherwise")
    add_selection_arguments(parser, offsets=False)
    parser.add_argument("-c", "--count", "--limit", dest="limit", metavar="N", type=positive(int),
                        help="stop after this many matching dead letters (--limit is the older name)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="print only the statistics, as JSON (with --follow: one line per refresh)")
    output.add_argument("--jsonl", action="store_true", help="print each dead letter as one JSON line")
    parser.add_argument("--refresh", type=positive(float), default=5.0, metavar="SECONDS",
                        help="with --follow: how often the view is redrawn (default 5)")
    parser.add_argument("--duration", type=positive(float), metavar="SECONDS",
                        help="with --follow: stop after this many seconds")
    parser.add_argument("--alert-threshold", type=ratio, metavar="RATIO",
                        help="exit 3 with an ALERT line on stderr when dead letters exceed this share of all "
                             "orders, e.g. 0.05 for 5%% (with --follow: checked at every refresh)")
    metrics.add_metrics_argument(parser)
    return parser


def as_json(dead_letter: DeadLetter, message) -> dict:
    record = dead_letter.to_record()
    for name in ("original_key", "original_value"):
        record[name] = None if record[name] is None else record[name].hex()
    record["original_headers"] = [{"key": h["key"], "value": None if h["value"] is None else h["value"].hex()}
                                  for h in record["original_headers"]]
    record["price"] = None if dead_letter.price is None else str(dead_letter.price)
    record["dlq_position"] = f"{message.topic()}[{message.partition()}]@{message.offset()}"
    return record


def describe(dead_letter: DeadLetter, message) -> str:
    price = "-" if dead_letter.price is None else str(dead_letter.price)
    where = (f"{dead_letter.original_topic}[{dead_letter.original_partition}]@{dead_letter.original_offset}"
             if dead_letter.original_partition is not None else dead_letter.original_topic)
    return (f"[{message.partition()}@{message.offset()}] order {dead_letter.order_id or '-'}  "
            f"product {dead_letter.product or '-'}  price {price}\n"
            f"    reason: {dead_letter.error_reason}\n"
            f"    stage {dead_letter.error_stage} ({dead_letter.error_type})  at {dead_letter.error_timestamp}  "
            f"retries {dead_letter.retry_count}  from {where}  by {dead_letter.failed_by}")


def stats_text(summary: dict) -> str:
    lines = [f"dead letters: {summary['total']}"]
    if summary["total"]:
        lines.append(f"first {summary['first_error']}  last {summary['last_error']}")
    for title in ("by_stage", "by_reason", "by_original_topic", "by_product", "retry_counts"):
        if summary[title]:
            lines.append(title.replace("_", " ") + ":")
            lines += [f"  {count:>7}  {name}" for name, count in summary[title].items()]
    return "\n".join(lines)


class DlqMonitor:
    """One run of dlq_consumer.py: reads the DLQ, selects, counts and prints."""

    def __init__(self, args, settings: KafkaSettings, partitions: int, stop: StopFlag):
        self.args = args
        self.settings = settings
        self.stop = stop
        self.codec = DeadLetterCodec(dead_letter_codec())
        self.selection = selection_from_args(args)
        self.monitor = Monitor(settings.topic, RATE_WINDOW)
        self.consumer = Consumer(reader_config(settings, f"dlq-monitor-{uuid.uuid4()}"))
        # Offsets are asked on a client of their own: on the reading one each request would wait
        # behind the fetch long-polls of the assigned partitions (up to fetch.wait.max.ms each).
        self.counter = Consumer(reader_config(settings, f"dlq-monitor-{uuid.uuid4()}"))
        self.start = [TopicPartition(settings.dlq_topic, p, 0) for p in range(partitions)]
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
            return self._handle(message)
        except DecodeError as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - the boundary of one foreign message
            reason = f"{type(exc).__name__}: {exc}"
            log.debug("reading %s[%d]@%d", message.topic(), message.partition(), message.offset(),
                      exc_info=True)
        self.unreadable += 1
        log.warning("%s[%d]@%d is not a dead letter: %s", message.topic(), message.partition(),
                    message.offset(), reason[:300])
        return False

    def _handle(self, message) -> bool:
        dead_letter = self.codec.decode_message(message.value(), message.headers(), message.key(),
                                                self.settings.dlq_topic)
        timestamp_type, timestamp = message.timestamp()
        message_time = timestamp if timestamp_type else None
        if not self.selection.matches(dead_letter, message.partition(), message.offset(), message_time):
            return False
        failed_at = error_time(dead_letter, message_time)
        line = describe_line(dead_letter, message.partition(), message.offset(), failed_at) \
            if self.args.follow else ""
        self.monitor.add(dead_letter, failed_at, time.time(), line)
        if self.args.jsonl:
            print(json.dumps(as_json(dead_letter, message)), flush=True)
        elif self.args.json or self.terminal:
            pass
        elif self.args.follow:
            print(line, flush=True)
        else:
            print(describe(dead_letter, message))
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
        for message in read_to_end(self.consumer, self.start, timeout=120):
            if self.handle(message):
                break
        self.count_orders()

    def follow(self) -> int:
        """Watch until a signal, --duration or --limit; returns EXIT_ALERT at the first alert."""
        args = self.args
        self.consumer.assign(self.start)
        started = time.monotonic()
        deadline = started + args.duration if args.duration else None
        not_at_end = {tp.partition for tp in self.start}
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
                if self.refresh():
                    return EXIT_ALERT
                next_refresh = time.monotonic() + args.refresh
        return EXIT_ALERT if self.refresh(final=True) else EXIT_OK

    # -- output -----------------------------------------------------------------------------------

    def refresh(self, final: bool = False) -> bool:
        """Count the orders, update the metrics, show the view; True when the alert fires."""
        self.count_orders()
        now = time.time()
        self.monitor.publish_metrics(now)
        if self.terminal:
            size = shutil.get_terminal_size()
            view = self.monitor.render(now, f"dead letters in {self.settings.dlq_topic}", size.columns, size.lines)
            sys.stdout.write(CLEAR_SCREEN + "\n".join(view) + "\n")
            sys.stdout.flush()
        elif self.args.json and not final:
            print(json.dumps(self.summary(now)), flush=True)
        elif not (self.args.json or self.args.jsonl):
            print(self.monitor.status_line(now), flush=True)
        return self.alert()

    def summary(self, now: float) -> dict:
        return {**self.monitor.stats.summary(), **self.monitor.summary_extra(now)}

    def report(self) -> None:
        """The final statistics (not on a terminal view, whose last frame stays on the screen)."""
        if self.terminal:
            return
        now = time.time()
        if self.args.json:
            print(json.dumps(self.summary(now)), flush=True)
        elif not self.args.jsonl:
            print(stats_text(self.monitor.stats.summary()))
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


def main(argv=None) -> int:
    parser = build_parser()
    args = cli.parse_args(parser, argv)
    if args.duration is not None and not args.follow:
        parser.error("--duration needs --follow")
    if args.since and args.until and args.since >= args.until:
        parser.error("--since must be before --until")
    settings = kafka_settings(args)
    metrics.serve(args, metrics.MONITOR)
    admin = require_cluster(settings)
    partitions = require_topics(admin, [settings.dlq_topic])[settings.dlq_topic]
    stop = StopFlag().install()
    run = DlqMonitor(args, settings, partitions, stop)
    try:
        if args.follow:
            code = run.follow()
        else:
            run.read_all()
            run.monitor.publish_metrics(time.time())
            code = None
    finally:
        run.close()
    run.report()
    if code is None:
        code = EXIT_ALERT if run.alert() else EXIT_OK
    if run.unreadable:
        log.warning("%d message(s) in %s could not be read as dead letters", run.unreadable, settings.dlq_topic)
    return code


if __name__ == "__main__":
    cli.run(main)
