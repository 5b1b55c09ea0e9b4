"""A failed message leaves no reference cycle behind.

A poison flood dead-letters every message; when each failure's error kept its traceback, the
frames of the consumer's loop and the Failure that held the error formed a cycle per message,
and Python's cyclic collector took 15 % of the consumer's CPU freeing them. No broker is needed:
the dead letters of the processing case are only queued by a producer that never connects."""

from __future__ import annotations

import gc
import types

from confluent_kafka import Message, Producer

from orders_dlq import transactions
from orders_dlq.aggregation import OrderAggregator
from orders_dlq.changelog import PartitionState
from orders_dlq.codec import order_codec
from orders_dlq.dlq import DeadLetterProducer
from orders_dlq.orders import CATALOGUE, OrderGenerator
from orders_dlq.retry import RetryPolicy
from orders_dlq.settings import KafkaSettings

GENERATOR = OrderGenerator(7)
CODEC = order_codec()


def messages_of(values: list[bytes]) -> list[Message]:
    return [Message(topic="orders", partition=0, offset=i, key=b"k", value=value, headers=None, timestamp=(1, 1_000))
            for i, value in enumerate(values)]


def bad_values() -> list[bytes]:
    """Poison bytes, and orders that decode but break a rule (each kind the generator makes)."""
    values = [GENERATOR.poison() for _ in range(20)] + [b"", b"\x02", b"\x00\x00\x00\x00\x01garbage"]
    return values + [CODEC.encode(GENERATOR.bad()) for _ in range(40)]


def handle_like_the_consumer(aggregator, message):
    """The consumer's _handle keeps the Failure in a local of its own frame, as this does."""
    failure = OrderAggregator._evaluate(aggregator, None, message)
    assert failure is not None and failure.stage in ("deserialize", "validate")
    return failure.stage


def freed_only_by_the_cyclic_collector(work) -> int:
    gc.collect()
    gc.disable()
    try:
        work()
        return gc.collect()
    finally:
        gc.enable()


def test_failures_of_bad_messages_are_freed_without_the_cyclic_collector():
    aggregator = types.SimpleNamespace(codec=CODEC, products=frozenset(CATALOGUE))
    messages = messages_of(bad_values())
    stages = set()
    left = freed_only_by_the_cyclic_collector(
        lambda: [stages.add(handle_like_the_consumer(aggregator, message)) for message in messages])
    assert stages == {"deserialize", "validate"}
    assert left == 0, f"{left} objects were only freed by the cyclic collector"


class BuggyAggregator(OrderAggregator):
    """A processing step that raises for every order: a bad deploy, the other kind of flood."""

    def __init__(self):  # noqa: D107 - no Kafka: only what _handle and _send_dead_letter use
        self.codec, self.products = CODEC, frozenset(CATALOGUE)
        self.retry = RetryPolicy(max_attempts=1)
        self.latency, self.observe_latency = None, False
        self.run_processed = self.run_dead_lettered = 0
        self.states = {0: PartitionState(0)}
        self.committing, self.held, self.dirty = None, [], set()
        self.group, self.exactly_once = "cycles", False
        self.delivery_errors = transactions.DeliveryErrors()
        # A producer that never reaches a broker: produce() only queues.
        settings = KafkaSettings("127.0.0.1:9", "orders", "orders.DLQ", {}, "envelope")
        self.producer = Producer({"bootstrap.servers": "127.0.0.1:9", "log_level": 0})
        self.dead_letters = DeadLetterProducer(settings, producer=self.producer)
        self.dead_letters._max_bytes = 1_000_000  # not asked of the absent broker

    def process_order(self, aggregate, order):
        raise RuntimeError(f"a bug met order {order['order_id']}")


def test_processing_errors_are_freed_without_the_cyclic_collector_once_dead_lettered():
    aggregator = BuggyAggregator()
    messages = messages_of([CODEC.encode(GENERATOR.good()) for _ in range(50)])
    try:
        def handle_then_dead_letter():
            for message in messages:
                aggregator._handle(message)  # the failure is held for the unit's commit
            assert len(aggregator.held) == len(messages)
            assert aggregator._send_held(in_rebalance=False)  # what the commit does first
        left = freed_only_by_the_cyclic_collector(handle_then_dead_letter)
        assert aggregator.run_dead_lettered == len(messages) and aggregator.run_processed == 0
        assert len(aggregator.producer) >= len(messages)  # every dead letter queued
    finally:
        aggregator.producer.purge()
    assert left == 0, f"{left} objects were only freed by the cyclic collector"
