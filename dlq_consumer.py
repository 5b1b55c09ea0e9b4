#!/usr/bin/env python3
"""Read the dead letter queue: print each dead letter with its reason, then summary statistics.

Reads from the beginning without committing anything, so it never moves another monitor's
position. Understands our Avro dead letters and those of Spring Kafka / Kafka Connect (headers).
Shows and counts the open dead letters (not replayed, resolved or discarded, as the marks topic
<dlq>.status says), with the count of each status beside; --status chooses another.

Find and seek: --key, --order-id, --header NAME=VALUE, --grep TEXT select; --offset [P:]N and
--from-time ISO-TIME start reading anywhere; --tail N shows only the last N selected. --export
FILE.jsonl writes the selection as editable JSON lines for `dlq_replay.py --from-file`.

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
import time

from orders_dlq import cli, metrics
from orders_dlq.codec import order_codec
from orders_dlq.errors import EXIT_OK, UsageError
from orders_dlq.fixes import export_record
from orders_dlq.kafka import require_cluster, require_topics
from orders_dlq.logs import log
from orders_dlq.marks import OPEN, mark_key
from orders_dlq.monitor import EXIT_ALERT, DlqMonitor, marks_for
from orders_dlq.registry import add_registry_argument, show_original_orders
from orders_dlq.runtime import StopFlag
from orders_dlq.selection import add_selection_arguments, selection_from_args
from orders_dlq.settings import kafka_settings, positive, ratio

EXAMPLE = ("python dlq_consumer.py --stage validate --json\n"
           "  python dlq_consumer.py --order-id 3f2a... --status all     # find one order, whatever its status\n"
           "  python dlq_consumer.py --reason \"unknown product\" --export fix.jsonl   # then edit, then "
           "dlq_replay.py --from-file")


def build_parser():
    parser = cli.build_parser(__doc__.splitlines()[0], EXAMPLE)
    parser.add_argument("--follow", action="store_true",
                        help="keep monitoring: a live view on a terminal, plain lines otherwise")
    add_selection_arguments(parser, offsets=True, status_default=OPEN)
    parser.add_argument("-c", "--count", "--limit", dest="limit", metavar="N", type=positive(int),
                        help="stop after this many matching dead letters (--limit is the older name)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="print only the statistics, as JSON (with --follow: one line per refresh)")
    output.add_argument("--jsonl", action="store_true", help="print each dead letter as one JSON line")
    output.add_argument("--export", metavar="FILE.jsonl",
                        help="write the selected dead letters to FILE as JSON lines to edit and replay with "
                             "dlq_replay.py --from-file (decoded order, context, original bytes in base64)")
    parser.add_argument("--tail", type=positive(int), metavar="N",
                        help="show only the last N selected dead letters (not with --follow)")
    parser.add_argument("--refresh", type=positive(float), default=5.0, metavar="SECONDS",
                        help="with --follow: how often the view is redrawn (default 5)")
    parser.add_argument("--duration", type=positive(float), metavar="SECONDS",
                        help="with --follow: stop after this many seconds")
    parser.add_argument("--alert-threshold", type=ratio, metavar="RATIO",
                        help="exit 3 with an ALERT line on stderr when dead letters exceed this share of all "
                             "orders, e.g. 0.05 for 5%% (with --follow: checked at every refresh)")
    add_registry_argument(parser, shows_orders=True)
    metrics.add_metrics_argument(parser)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = cli.parse_args(parser, argv)
    if args.duration is not None and not args.follow:
        parser.error("--duration needs --follow")
    if args.follow and (args.tail or args.export):
        parser.error("--tail and --export read to the end of the DLQ and stop: they do not go with --follow")
    selection = selection_from_args(args)  # a contradictory one is refused before any connection
    settings = kafka_settings(args)
    metrics.serve(args, metrics.MONITOR)
    admin = require_cluster(settings)
    partitions = require_topics(admin, [settings.dlq_topic])[settings.dlq_topic]
    marks = marks_for(settings, selection)
    stop = StopFlag().install()
    export, write = None, None
    if args.export:
        try:
            export = open(args.export, "w", encoding="utf-8")  # noqa: SIM115 - closed in finally below
        except OSError as exc:
            raise UsageError(f"--export cannot write {args.export}: {exc.strerror}") from None
        codec = order_codec()

        def write(record, status):
            key = mark_key(record.dead_letter, record.topic, record.partition, record.offset)
            export.write(json.dumps(export_record(record, status, key, codec)) + "\n")

    run = DlqMonitor(args, settings, partitions, stop, selection, marks, on_record=write)
    show_original_orders(args, run, settings.topic)
    try:
        if args.follow:
            code = run.follow()
        else:
            run.read_all()
            run.publish_metrics(time.time())
            code = None
    finally:
        run.close()
        if export is not None:
            export.close()
    if export is not None:
        log.info("exported %d dead letter(s) to %s", run.monitor.stats.total, args.export)
    run.report()
    if code is None:
        code = EXIT_ALERT if run.alert() else EXIT_OK
    if run.unreadable:
        log.warning("%d message(s) in %s could not be read as dead letters", run.unreadable, settings.dlq_topic)
    return code


if __name__ == "__main__":
    cli.run(main)
