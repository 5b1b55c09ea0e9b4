#!/usr/bin/env python3
"""Send Avro orders to Kafka; an order that cannot be delivered within its budget goes to the DLQ."""

from __future__ import annotations

import orders_dlq.python_version  # noqa: F401  first: below Python 3.11, one sentence and exit 2

# isort: split

import json
import os
import socket
import time

from dlq_producer import add_spool_argument, drain_spool_if_pending, open_dead_letter_producer
from orders_dlq import cli, metrics
from orders_dlq.delivery import OrderSender
from orders_dlq.dlq import DeadLetterProducer
from orders_dlq.errors import EXIT_FAILURE, EXIT_OK, ToolFailure, UsageError
from orders_dlq.kafka import SHARED_ERRORS, fail_if_refused, reachable, reliable_producer_config, require_topics
from orders_dlq.logs import log
from orders_dlq.orders import OrderGenerator
from orders_dlq.registry import add_registry_argument, frame_dead_letters, order_codec_for
from orders_dlq.runtime import Progress, StopFlag
from orders_dlq.settings import kafka_settings, non_negative, positive, ratio, setting
from orders_dlq.spool import Spool

EXAMPLE = "python producer.py --count 1000 --rate 200 --bad-ratio 0.05"


def build_parser():
    parser = cli.build_parser(__doc__, EXAMPLE)
    parser.add_argument("-c", "--count", type=non_negative(int),
                        help="orders to send (env ORDER_COUNT, default 10)")
    parser.add_argument("--rate", type=non_negative(float),
                        help="orders per second, 0 = as fast as possible (env ORDER_RATE, default 0)")
    parser.add_argument("--bad-ratio", type=ratio,
                        help="share of invalid orders (negative price, unknown product, ...) the consumer "
                             "must dead-letter (env BAD_RATIO, default 0)")
    parser.add_argument("--poison-ratio", type=ratio,
                        help="share of messages that are not Avro at all (env POISON_RATIO, default 0)")
    parser.add_argument("--seed", type=int, help="random seed for reproducible orders")
    parser.add_argument("--delivery-timeout", type=positive(float),
                        help="seconds an order may take to be delivered, librdkafka's own retries included; "
                             "then it is dead-lettered, never sent twice (env DELIVERY_TIMEOUT, default 30)")
    add_spool_argument(parser)
    cli.add_dlq_format_argument(parser)
    add_registry_argument(parser)
    metrics.add_metrics_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    return parser


def send_orders(sender: OrderSender, generator: OrderGenerator, codec, count: int, rate: float,
                bad_ratio: float, poison_ratio: float, stop, counts) -> tuple[int, dict]:
    """Generate, encode and send `count` orders (some invalid or poison on purpose), paced at `rate`/s."""
    progress = Progress(count, "producing")
    kinds = {"valid": 0, "invalid": 0, "poison": 0}
    started = time.monotonic()
    produced = 0
    draw, good, encode, send = generator.random.random, generator.good_keyed, codec.encode_keyed, sender.send
    for produced in range(1, count + 1):
        if stop or sender.halted:  # halted: a failed order could not be kept, sending more would lose more
            produced -= 1
            break
        if rate:
            # Pace by schedule, not by sleeping a fixed gap, so slow polls do not lower the rate;
            # orders due within the next millisecond go at once (a wake-up per order at high rates
            # costs more CPU than sending them, and the CPU is shared with Kafka).
            delay = started + (produced - 1) / rate - time.monotonic()
            if delay > 0.001:
                sender.service(delay)
        chance = draw()
        if chance >= poison_ratio + bad_ratio:
            fields = good()
            send(fields[0], encode(*fields))
        elif chance < poison_ratio:
            kinds["poison"] += 1
            send(generator.order_id_bytes(), generator.poison())
        else:
            kinds["invalid"] += 1
            order = generator.bad()
            send(order["order_id"].encode(), codec.encode(order))
        if not produced % 256:
            progress.update(produced)
            if counts:
                counts.update(produced, sender.delivered)
    kinds["valid"] = produced - kinds["poison"] - kinds["invalid"]
    sender.finish(lambda: progress.update(produced))
    if counts:
        counts.update(produced, sender.delivered, force=True)
    progress.update(produced, force=True)
    progress.close()
    return produced, kinds


def deliver_spooled(dead_letters: DeadLetterProducer, spool: Spool, producer, origin: str,
                    failed: int) -> tuple[int, int]:
    """At the end, with Kafka back: this run's spooled dead letters go to the DLQ. Returns
    (dead-lettered, still spooled) for this run's failures."""
    if failed and reachable(producer, timeout=2):
        drain_spool_if_pending(dead_letters)
    still_spooled = spool.count(origin=origin)
    return failed - still_spooled, still_spooled


def main(argv=None) -> int:
    args = cli.parse_args(build_parser(), argv)
    settings = kafka_settings(args)
    count = setting(args, "count", "ORDER_COUNT", 10, non_negative(int))
    rate = setting(args, "rate", "ORDER_RATE", 0.0, non_negative(float))
    bad_ratio = setting(args, "bad_ratio", "BAD_RATIO", 0.0, ratio)
    poison_ratio = setting(args, "poison_ratio", "POISON_RATIO", 0.0, ratio)
    if bad_ratio + poison_ratio > 1:
        raise UsageError(f"--bad-ratio/BAD_RATIO ({bad_ratio:g}) and --poison-ratio/POISON_RATIO "
                         f"({poison_ratio:g}) together must not exceed 1")
    # One budget: long enough for a leader election (several seconds) to pass unnoticed.
    delivery_timeout = setting(args, "delivery_timeout", "DELIVERY_TIMEOUT", 30.0, positive(float))
    # Registry mode registers order.avsc under <topic>-value first: a schema the registry refuses
    # (incompatible with what is registered) stops the run before any order is sent.
    codec = order_codec_for(args, settings.topic, producing=True)
    serving = metrics.serve(args, metrics.PRODUCER)
    counts = metrics.ProducerMetrics() if serving else None
    client_id = f"producer.py@{socket.gethostname()}:{os.getpid()}"
    stop = StopFlag().install()

    dead_letters = open_dead_letter_producer(args, settings, delivery_timeout=delivery_timeout, origin=client_id)
    frame_dead_letters(codec, dead_letters, settings.dlq_topic)
    spool = dead_letters.spool
    sender = OrderSender(reliable_producer_config(settings, delivery_timeout, **{
        "client.id": client_id,
        # An orders topic deleted under the producer: librdkafka fails the queued orders (Unknown
        # partition) and refuses new ones once the topic has been missing from the metadata this
        # long. At the 30 s default, every order in between waited out its delivery budget and
        # was dead-lettered as "broker unavailable" although the broker was fine. The topic
        # existed at start (checked below), so no creation is still propagating.
        "topic.metadata.propagation.max.ms": 5000}),
                         # Orders that failed for good are committed to the spool as they fail, a batch
                         # at a time: a long outage holds none of them in memory, a kill loses none.
                         settings.topic, codec, client_id, on_failures=dead_letters.spool_all)
    producer = sender.producer
    # Asking the producer itself for metadata also opens its connection before the first order
    # is created, so the first orders do not wait for it.
    SHARED_ERRORS.quiet = True  # what the first look meets makes the one sentence or the warning below
    answered = reachable(producer, timeout=3)
    if not answered:
        # Refused (a security setting wrong) is no outage: its orders would only fill the spool.
        fail_if_refused(producer, settings)
    SHARED_ERRORS.quiet = False
    if answered:
        require_topics(producer, [settings.topic, settings.dlq_topic])
        dead_letters.cluster_id = producer.list_topics(timeout=5).cluster_id
        dead_letters.check_topic()  # a compacted DLQ stops the run here, before any order is sent
        drain_spool_if_pending(dead_letters)
    else:
        log.warning("Kafka at %s does not answer: each order waits up to %gs to be delivered, "
                    "then it is kept in the local spool %s", settings.bootstrap_servers, delivery_timeout,
                    spool.path)
    metrics.SPOOL_SIZE.set(spool.count())
    started = time.monotonic()
    produced, kinds = send_orders(sender, OrderGenerator(args.seed), codec, count, rate, bad_ratio, poison_ratio,
                                  stop, counts)
    elapsed = time.monotonic() - started
    delivered, spooled = deliver_spooled(dead_letters, spool, producer, client_id, sender.failed - sender.not_kept)
    dead_letters.close()
    metrics.SPOOL_SIZE.set(spool.count())
    summary = {
        "produced": produced,
        "sent": sender.delivered,
        "dead_lettered": delivered,
        "spooled": spooled,
        "kinds": kinds,
        "elapsed_seconds": round(elapsed, 3),
        "rate_per_second": round(sender.delivered / elapsed, 1) if elapsed > 0 else 0.0,
        "spool": str(spool.path) if spooled else None,
        "not_kept": sender.not_kept,
    }
    if sender.not_kept:
        summary["not_kept_order_ids"] = sender.not_kept_ids
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"sent {summary['sent']} of {produced} orders to {settings.topic} in {elapsed:.2f}s "
              f"({summary['rate_per_second']:,.0f}/s); {kinds['invalid']} invalid and {kinds['poison']} poison "
              "among them on purpose")
        if sender.failed:
            print(f"{sender.failed} order(s) could not be delivered: {delivered} dead-lettered to "
                  f"{settings.dlq_topic}, {spooled} kept in the local spool {spool.path} "
                  "(sent to the DLQ when Kafka is back)")
        if sender.not_kept:
            print(f"{sender.not_kept} order(s) neither delivered nor kept: {' '.join(sender.not_kept_ids)}")
    if sender.not_kept:
        raise ToolFailure(
            f"{sender.not_kept} order(s) could not be delivered to {settings.topic} nor kept in the spool "
            f"{spool.path} ({sender.not_kept_cause}); sending stopped after {produced} of {count} orders, and the "
            "ids of those not kept are on stdout: make room for the spool, then send them again")
    if sender.refusal is not None:
        raise ToolFailure(
            f"{settings.topic} refused orders ({sender.refusal.str()}): sending stopped after {produced} of {count} "
            f"orders; the {sender.failed} that were not delivered are dead-lettered to {settings.dlq_topic} or kept "
            "in the spool, as the summary on stdout says")
    return EXIT_FAILURE if sender.failed or stop else EXIT_OK


if __name__ == "__main__":
    cli.run(main)
