#!/usr/bin/env python3
"""The shared DLQ helper: drain, list or prune the local spool, or send the guide's example dead letter.

As a module it is the helper the guide's design names: producer.py and consumer_aggregation.py
open their dead-letter producer and drain the spool through the small API below (__all__).
Run as a script it drains the spool (--flush-spool), lists it (--spool-status), removes rows on
purpose (--discard), or sends one dead letter like the guide's example (--send-example). Without
a flag it prints help.
"""

from __future__ import annotations

import orders_dlq.python_version  # noqa: F401  first: below Python 3.11, one sentence and exit 2

# isort: split

import json
import time
import uuid
from decimal import Decimal

from orders_dlq import cli, metrics
from orders_dlq.codec import dead_letter_codec
from orders_dlq.dead_letter import DeadLetter
from orders_dlq.dlq import DeadLetterProducer, DrainResult, drain_if_pending
from orders_dlq.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError
from orders_dlq.kafka import require_cluster, require_topics
from orders_dlq.monitor import format_age
from orders_dlq.settings import KafkaSettings, kafka_settings, positive, setting
from orders_dlq.spool import DEFAULT_SPOOL_PATH, Spool

# What producer.py and consumer_aggregation.py use; nothing else in this file is an API.
__all__ = ["add_spool_argument", "open_dead_letter_producer", "drain_spool_if_pending"]

EXAMPLE = "python dlq_producer.py --flush-spool   (or --spool-status, --discard --for-topic orders.DLQ)"


def add_spool_argument(parser) -> None:
    """--spool: where dead letters wait while Kafka cannot take them."""
    parser.add_argument("--spool", metavar="PATH", help="local file for dead letters Kafka cannot take "
                                                        f"(env DLQ_SPOOL, default {DEFAULT_SPOOL_PATH})")


def open_dead_letter_producer(args, settings: KafkaSettings, **options) -> DeadLetterProducer:
    """The dead-letter producer of a script, over the spool --spool / DLQ_SPOOL names (one sentence and
    exit 2 when that file cannot be opened). `options` go to DeadLetterProducer (delivery_timeout, origin)."""
    return DeadLetterProducer(settings, spool=open_spool(args), **options)


def drain_spool_if_pending(dead_letters: DeadLetterProducer) -> DrainResult:
    """At a script's start, with the cluster reachable: what waits in the spool for this cluster goes to
    the DLQ first (never waiting for another process's drain), and the spool gauge shows what is left."""
    result = drain_if_pending(dead_letters)
    metrics.SPOOL_SIZE.set(dead_letters.spool.count())
    return result


def open_spool(args) -> Spool:
    path = setting(args, "spool", "DLQ_SPOOL", DEFAULT_SPOOL_PATH)
    try:
        return Spool(path)
    except Exception as exc:  # sqlite3 and OS errors alike: the path is the operator's to fix
        raise UsageError(f"cannot open the spool {path}: {exc}") from None


def example_dead_letter(topic: str) -> DeadLetter:
    """The guide's example: an order the producer gave up on while the broker was down."""
    return DeadLetter(
        order_id=str(uuid.uuid4()),
        product="Toffee",
        price=Decimal("10.00"),
        error_reason="Max retries exceeded - Kafka broker unavailable",
        error_type="TestDeadLetter",
        error_stage="produce",
        retry_count=3,
        original_topic=topic,
        failed_by="dlq_producer.py",
    )


def spool_status_text(spool: Spool, rows: list[dict]) -> str:
    if not rows:
        return f"spool {spool.path}: empty"
    now = time.time()
    lines = [f"spool {spool.path}: {sum(row['count'] for row in rows)} dead letter(s) waiting"]
    for row in rows:
        cluster = row["cluster_id"] or "cluster id unknown"
        lines.append(f"  {row['count']:>7}  {row['topic']}  on {row['bootstrap'] or 'any cluster'} ({cluster})  "
                     f"oldest {format_age(now - row['oldest'])} ago, newest {format_age(now - row['newest'])} ago")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = cli.build_parser(__doc__.splitlines()[0], EXAMPLE)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--flush-spool", action="store_true",
                        help="send every spooled dead letter of this cluster to the DLQ (exactly once) and exit")
    action.add_argument("--spool-status", action="store_true",
                        help="list what waits in the spool, per cluster and topic, with ages (no broker needed)")
    action.add_argument("--discard", action="store_true",
                        help="delete spooled dead letters on purpose: those matching --for-topic, --cluster and "
                             "--older-than, or every one with --all (no broker needed)")
    action.add_argument("--send-example", action="store_true",
                        help="write the guide's example dead letter to the DLQ (it counts in statistics and alerts)")
    discard = parser.add_argument_group("selection for --discard")
    discard.add_argument("--for-topic", dest="discard_topic", metavar="TOPIC", help="rows bound for this DLQ topic")
    discard.add_argument("--cluster", metavar="ID_OR_SERVERS", help="rows of this cluster id or bootstrap servers")
    discard.add_argument("--older-than", type=positive(float), metavar="HOURS",
                         help="rows spooled more than this many hours ago")
    discard.add_argument("--all", action="store_true", help="every row")
    add_spool_argument(parser)
    cli.add_dlq_format_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = cli.parse_args(parser, argv)
    selection = (args.discard_topic, args.cluster, args.older_than)
    if args.discard and not args.all and selection == (None, None, None):
        raise UsageError("--discard needs a selection (--for-topic, --cluster, --older-than) or --all")
    if not args.discard and (args.all or selection != (None, None, None)):
        raise UsageError("--for-topic, --cluster, --older-than and --all only select rows for --discard")
    # Settings and schema first: a bad flag, .env value or schema is reported even without an action.
    settings = kafka_settings(args)
    dead_letter_codec()
    if not (args.flush_spool or args.spool_status or args.discard or args.send_example):
        parser.print_help()
        return EXIT_USAGE
    spool = open_spool(args)
    if args.spool_status:
        rows = spool.summary()
        print(json.dumps(rows) if args.json else spool_status_text(spool, rows))
        return EXIT_OK
    if args.discard:
        older = None if args.older_than is None else args.older_than * 3600
        deleted = spool.discard(topic=args.discard_topic, cluster=args.cluster, older_than=older)
        print(json.dumps({"discarded": deleted, "remaining": spool.count()}) if args.json
              else f"spool {spool.path}: discarded {deleted} dead letter(s) on purpose, {spool.count()} remain")
        return EXIT_OK
    admin = require_cluster(settings)
    require_topics(admin, [settings.dlq_topic])
    dead_letters = DeadLetterProducer(settings, spool=spool)
    dead_letters.check_topic()  # a compacted DLQ: one sentence, and every spooled row stays where it is
    if args.flush_spool:
        result = dead_letters.drain_spool()
        output = {"sent": result.sent, "already_in_kafka": result.already_in_kafka, "remaining": result.remaining}
        text = (f"spool {spool.path}: sent {result.sent} dead letter(s) to Kafka, {result.already_in_kafka} "
                f"were already there, {result.remaining} remain")
        if result.held:
            output["held"] = result.held
            text += f" ({result.held_text()})"
        failed = result.remaining > 0
    else:
        dead_letter = example_dead_letter(settings.topic)
        result = dead_letters.send_confirmed([dead_letter])
        output = {"delivered": result.delivered, "spooled": result.spooled, "order_id": dead_letter.order_id}
        text = (f"sent the example dead letter for order {dead_letter.order_id} to {settings.dlq_topic}"
                if result.delivered else f"the example dead letter was kept in the spool {spool.path}")
        failed = not result.delivered
    print(json.dumps(output) if args.json else text)
    return EXIT_FAILURE if failed else EXIT_OK


if __name__ == "__main__":
    cli.run(main)
