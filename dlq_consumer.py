#!/usr/bin/env python3
"""Read the dead letter queue: print each dead letter with its reason, then summary statistics.

Reads from the beginning without committing anything, so it never moves another monitor's
position. Understands our Avro dead letters and those of Spring Kafka / Kafka Connect (headers).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime

from confluent_kafka import Consumer, KafkaError, TopicPartition

from orders_dlq import cli
from orders_dlq.codec import DecodeError, dead_letter_codec
from orders_dlq.dead_letter import DeadLetter, DeadLetterCodec
from orders_dlq.kafka import read_to_end, reader_config, require_cluster, require_topics
from orders_dlq.stats import DeadLetterStats

EXAMPLE = "python dlq_consumer.py --stage validate --json"


def build_parser():
    parser = cli.build_parser(__doc__.splitlines()[0], EXAMPLE)
    parser.add_argument("--follow", action="store_true", help="keep monitoring; refresh the statistics")
    parser.add_argument("--reason", help="only dead letters whose reason contains this text")
    parser.add_argument("--stage", choices=("produce", "deserialize", "validate", "process"), help="only this stage")
    parser.add_argument("--product", help="only this product")
    parser.add_argument("--since", type=_timestamp, metavar="ISO-TIME",
                        help="only dead letters that failed at or after this time, e.g. 2026-11-28T09:00")
    parser.add_argument("--limit", type=cli.positive(int), help="stop after this many matching dead letters")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print only the statistics, as JSON")
    output.add_argument("--jsonl", action="store_true", help="print each dead letter as one JSON line")
    parser.add_argument("--refresh", type=cli.positive(float), default=5.0, metavar="SECONDS",
                        help="with --follow: how often the statistics are printed (default 5)")
    return parser


def _timestamp(raw: str) -> str:
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not an ISO-8601 time") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.isoformat()


def matches(dead_letter: DeadLetter, args) -> bool:
    if args.stage and dead_letter.error_stage != args.stage:
        return False
    if args.reason and args.reason.lower() not in dead_letter.error_reason.lower():
        return False
    if args.product and dead_letter.product != args.product:
        return False
    if args.since and (dead_letter.error_timestamp or "") < args.since:
        return False
    return True


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


def main(argv=None) -> int:
    args = cli.parse_args(build_parser(), argv)
    settings = cli.kafka_settings(args)
    admin = require_cluster(settings)
    partitions = require_topics(admin, [settings.dlq_topic])[settings.dlq_topic]
    codec = DeadLetterCodec(dead_letter_codec())
    stats = DeadLetterStats()
    stop = cli.StopFlag().install()
    consumer = Consumer(reader_config(settings, f"dlq-monitor-{uuid.uuid4()}"))
    start = [TopicPartition(settings.dlq_topic, p, 0) for p in range(partitions)]
    unreadable = 0
    try:
        messages = follow(consumer, start, stop, args.refresh, stats, args) if args.follow \
            else read_to_end(consumer, start, timeout=120)
        for message in messages:
            try:
                dead_letter = codec.decode_message(message.value(), message.headers(), message.key(),
                                                   settings.dlq_topic)
            except DecodeError as exc:
                unreadable += 1
                cli.log.warning("%s[%d]@%d is not a dead letter: %s", message.topic(), message.partition(),
                                message.offset(), exc)
                continue
            if not matches(dead_letter, args):
                continue
            stats.add(dead_letter)
            if args.jsonl:
                print(json.dumps(as_json(dead_letter, message)), flush=True)
            elif not args.json:
                print(describe(dead_letter, message), flush=args.follow)
            if args.limit and stats.total >= args.limit:
                break
    finally:
        consumer.close()
    summary = stats.summary()
    if args.json:
        print(json.dumps(summary))
    elif not args.jsonl:
        print(stats_text(summary))
    if unreadable:
        cli.log.warning("%d message(s) in %s could not be read as dead letters", unreadable, settings.dlq_topic)
    return cli.EXIT_OK


def follow(consumer, start, stop, refresh: float, stats: DeadLetterStats, args):
    """Yield dead letters as they arrive; print the statistics every `refresh` seconds on stderr."""
    consumer.assign(start)
    last = time.monotonic()
    while not stop:
        for message in consumer.consume(500, timeout=0.5):
            if message.error() is None:
                yield message
            elif message.error().code() != KafkaError._PARTITION_EOF:
                cli.log.warning("%s", message.error().str())
        if time.monotonic() - last >= refresh and not (args.json or args.jsonl):
            print(stats_text(stats.summary()), flush=True)
            last = time.monotonic()


if __name__ == "__main__":
    cli.run(main)
