#!/usr/bin/env python3
"""The shared DLQ helper: send a test dead letter, or flush the local spool into the DLQ topic.

producer.py and consumer_aggregation.py import DeadLetterProducer from here; run as a script it
sends one dead letter like the guide's example, or drains the spool with --flush-spool.
"""

from __future__ import annotations

import orders_dlq.python_version  # noqa: F401  first: below Python 3.11, one sentence and exit 2

# isort: split

import json
import uuid
from decimal import Decimal

from orders_dlq import cli
from orders_dlq.dead_letter import DeadLetter
from orders_dlq.dlq import DeadLetterProducer, DrainResult, SendResult  # noqa: F401 - the shared helper
from orders_dlq.kafka import require_cluster, require_topics
from orders_dlq.spool import DEFAULT_SPOOL_PATH, Spool

EXAMPLE = "python dlq_producer.py --flush-spool"


def add_spool_argument(parser) -> None:
    parser.add_argument("--spool", metavar="PATH", help="local file for dead letters Kafka cannot take "
                                                        f"(env DLQ_SPOOL, default {DEFAULT_SPOOL_PATH})")


def open_spool(args) -> Spool:
    path = cli.setting(args, "spool", "DLQ_SPOOL", DEFAULT_SPOOL_PATH)
    try:
        return Spool(path)
    except Exception as exc:  # sqlite3 and OS errors alike: the path is the operator's to fix
        raise cli.UsageError(f"cannot open the spool {path}: {exc}") from None


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


def main(argv=None) -> int:
    parser = cli.build_parser(__doc__.splitlines()[0], EXAMPLE)
    parser.add_argument("--flush-spool", action="store_true",
                        help="send every spooled dead letter to the DLQ (exactly once) and exit")
    add_spool_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = cli.parse_args(parser, argv)
    settings = cli.kafka_settings(args)
    spool = open_spool(args)
    admin = require_cluster(settings)
    require_topics(admin, [settings.dlq_topic])
    dead_letters = DeadLetterProducer(settings, spool=spool)
    if args.flush_spool:
        result = dead_letters.drain_spool()
        output = {"sent": result.sent, "already_in_kafka": result.already_in_kafka, "remaining": result.remaining}
        text = (f"spool {spool.path}: sent {result.sent} dead letter(s) to Kafka, {result.already_in_kafka} "
                f"were already there, {result.remaining} remain")
        failed = result.remaining > 0
    else:
        dead_letter = example_dead_letter(settings.topic)
        result = dead_letters.send_confirmed([dead_letter])
        output = {"delivered": result.delivered, "spooled": result.spooled, "order_id": dead_letter.order_id}
        text = (f"sent a test dead letter for order {dead_letter.order_id} to {settings.dlq_topic}"
                if result.delivered else f"the test dead letter was kept in the spool {spool.path}")
        failed = not result.delivered
    print(json.dumps(output) if args.json else text)
    return cli.EXIT_FAILURE if failed else cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
