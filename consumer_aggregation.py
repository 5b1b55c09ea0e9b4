#!/usr/bin/env python3
"""Aggregate orders into exact running totals and averages; undecodable or invalid orders go to the DLQ."""

from __future__ import annotations

import orders_dlq.python_version  # noqa: F401  first: below Python 3.11, one sentence and exit 2

# isort: split

import json
import time

from dlq_producer import add_spool_argument, drain_spool_if_pending, open_dead_letter_producer
from orders_dlq import cli, metrics
from orders_dlq.aggregation import EXACTLY_ONCE, GUARANTEES, OrderAggregator
from orders_dlq.changelog import read_states
from orders_dlq.errors import EXIT_OK, ToolFailure, UsageError
from orders_dlq.kafka import require_cluster, require_topics
from orders_dlq.logs import log
from orders_dlq.orders import CATALOGUE
from orders_dlq.registry import add_registry_argument, frame_dead_letters, order_codec_for
from orders_dlq.retry import add_retry_arguments, retry_policy
from orders_dlq.runtime import StopFlag
from orders_dlq.settings import kafka_settings, non_negative, positive, setting, state_topic_setting
from orders_dlq.stats import Aggregate, LatencyReservoir, combine

EXAMPLE = "python consumer_aggregation.py --idle-timeout 10     # stop after 10 s without orders"
DEFAULT_GROUP = "order-aggregation-consumers"


def build_parser():
    parser = cli.build_parser(__doc__, EXAMPLE)
    parser.add_argument("-g", "--group", help=f"consumer group (env CONSUMER_GROUP, default {DEFAULT_GROUP})")
    parser.add_argument("--guarantee", choices=GUARANTEES,
                        help="exactly-once (transactions, the default) or at-least-once (env GUARANTEE)")
    parser.add_argument("--instance-id",
                        help="stable name of this instance (its transactional id): a restart with the "
                             "same name aborts its predecessor's open transaction at once instead of "
                             "after the transaction timeout (env INSTANCE_ID; default: anonymous)")
    parser.add_argument("--state-topic", help="aggregate changelog (env STATE_TOPIC, default <topic>.aggregates)")
    parser.add_argument("--products", help="comma-separated products to accept (env PRODUCTS, default: "
                                           + ",".join(CATALOGUE) + ")")
    parser.add_argument("-c", "--count", "--max-messages", dest="max_messages", metavar="N", type=positive(int),
                        help="stop after this many messages (--max-messages is the older name)")
    parser.add_argument("--idle-timeout", type=positive(float), metavar="SECONDS",
                        help="stop after this long without a new message")
    parser.add_argument("--commit-interval-ms", type=positive(int),
                        help="how often work is committed (env COMMIT_INTERVAL_MS, default 100)")
    parser.add_argument("--batch-size", type=positive(int),
                        help="messages per consume call, and dead letters written at a time in a flood (default 1000)")
    parser.add_argument("--print-interval", type=non_negative(float), default=1.0, metavar="SECONDS",
                        help="print the running average at most this often (0 = never; default 1)")
    parser.add_argument("--latency", action="store_true",
                        help="sample each order's creation-to-aggregation time (bounded memory) and print "
                             "p50/p99 in ms (--json: under latency_ms)")
    parser.add_argument("--report", action="store_true",
                        help="print the combined totals of all instances from the changelog and exit")
    add_retry_arguments(parser)
    add_spool_argument(parser)
    cli.add_dlq_format_argument(parser)
    metrics.add_metrics_argument(parser)
    add_registry_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the final summary as JSON on stdout")
    return parser


def summary_text(aggregate: Aggregate) -> str:
    def row(name, totals):
        t = totals.to_json()
        return (f"{name:<12} count {t['count']:>8}  total {t['total']:>12}  average {t['average'] or '-':>8}  "
                f"min {t['min'] or '-':>8}  max {t['max'] or '-':>8}")
    lines = [f"processed {aggregate.processed} orders, dead-lettered {aggregate.dead_lettered}",
             row("overall", aggregate.overall)]
    lines += [row(name, aggregate.products[name]) for name in sorted(aggregate.products)]
    return "\n".join(lines)


def running_average_printer(interval: float):
    """Prints the guide's running-average line, at most once per interval (not once per order)."""
    last = [0.0, -1]

    def maybe_print(aggregator: OrderAggregator):
        now = time.monotonic()
        if now - last[0] < interval:
            return
        totals = aggregator.totals()
        if totals.processed + totals.dead_lettered in (0, last[1]):
            return
        last[:] = [now, totals.processed + totals.dead_lettered]
        average = totals.overall.average
        print(f"running average: {average if average is not None else '-'} over {totals.overall.count} orders "
              f"({totals.dead_lettered} dead-lettered)", flush=True)
    return maybe_print


def main(argv=None) -> int:
    args = cli.parse_args(build_parser(), argv)
    settings = kafka_settings(args)
    group = setting(args, "group", "CONSUMER_GROUP", DEFAULT_GROUP)
    if not group:
        raise UsageError("-g/--group (CONSUMER_GROUP) must not be empty")
    state_topic = state_topic_setting(args, settings)
    guarantee = setting(args, "guarantee", "GUARANTEE", EXACTLY_ONCE, _guarantee)
    products = setting(args, "products", "PRODUCTS", ",".join(CATALOGUE))
    products = [p.strip() for p in products.split(",") if p.strip()]
    if not products:
        raise UsageError("--products (PRODUCTS) names no product: every order would be dead-lettered")
    commit_ms = setting(args, "commit_interval_ms", "COMMIT_INTERVAL_MS", 100, positive(int))
    instance_id = setting(args, "instance_id", "INSTANCE_ID", None)
    policy = retry_policy(args)
    codec = None if args.report else order_codec_for(args, settings.topic, producing=False)
    dead_letters = open_dead_letter_producer(args, settings)
    admin = require_cluster(settings)

    if args.report:
        partitions = set(range(require_topics(admin, [settings.topic, state_topic])[settings.topic]))
        # Each partition's latest state from the tail of its changelog partition; a whole scan only
        # for partitions not found there (written before the changelog was co-partitioned).
        aggregate = combine(read_states(settings, state_topic, group, settings.topic, partitions,
                                        co_partitioned=True, scan_for=partitions).values())
        print(json.dumps(aggregate.summary()) if args.json else summary_text(aggregate))
        return EXIT_OK

    require_topics(admin, [settings.topic, settings.dlq_topic, state_topic])
    serving = metrics.serve(args, metrics.CONSUMER)
    drain_spool_if_pending(dead_letters)
    dead_letters.close()  # the aggregator writes its dead letters through its own (transactional) producer
    stop = StopFlag().install()
    aggregator = OrderAggregator(
        settings, group=group, state_topic=state_topic, guarantee=guarantee, retry=policy,
        instance_id=instance_id, products=products, commit_interval=commit_ms / 1000,
        batch_size=args.batch_size or 1000, stop=stop, latency=LatencyReservoir() if args.latency else None)
    aggregator.codec = codec  # schemaless, or registry mode: the writer's schema from each order's id
    frame_dead_letters(codec, aggregator.dead_letters, settings.dlq_topic)
    aggregator.dead_letters.check_topic()  # a compacted DLQ stops the run here, before anything is consumed
    log.info("consuming %s as group %s (%s)", settings.topic, group, guarantee)
    printer = running_average_printer(args.print_interval) if args.print_interval and not args.json else None
    if serving:
        printer = metrics.ConsumerMetrics(then=printer)
    started = time.monotonic()
    aggregate = aggregator.run(max_messages=args.max_messages, idle_timeout=args.idle_timeout, on_batch=printer)
    elapsed = time.monotonic() - started
    handled = aggregator.run_processed + aggregator.run_dead_lettered
    log.info("this run: %d orders aggregated, %d dead-lettered in %.1fs (%.0f/s)", aggregator.run_processed,
             aggregator.run_dead_lettered, elapsed, handled / elapsed if elapsed else 0)
    summary = aggregate.summary()
    if aggregator.latency is not None:
        summary["latency_ms"] = aggregator.latency.summary()
        summary["commit_ms"] = aggregator.commit_times.summary()
        log.info("creation -> aggregation latency: p50 %s ms, p99 %s ms, p99.9 %s ms (%d orders); each commit "
                 "held the loop p50 %s ms, p99 %s ms (%d commits)", summary["latency_ms"]["p50"],
                 summary["latency_ms"]["p99"], summary["latency_ms"]["p99.9"], aggregator.latency.count,
                 summary["commit_ms"]["p50"], summary["commit_ms"]["p99"], aggregator.commit_times.count)
    print(json.dumps(summary) if args.json else summary_text(aggregate))
    if aggregator.topic_changed:
        raise ToolFailure(aggregator.topic_changed)
    return EXIT_OK


def _guarantee(raw: str) -> str:
    if raw not in GUARANTEES:
        raise ValueError(f"must be one of {', '.join(GUARANTEES)}")
    return raw


if __name__ == "__main__":
    cli.run(main)
