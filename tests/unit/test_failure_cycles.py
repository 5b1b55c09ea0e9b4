"""A message that is no valid order leaves no reference cycle behind.

A poison flood dead-letters every message; when each failure's error kept its traceback, the
frames of the consumer's loop and the Failure that held the error formed a cycle per message,
and Python's cyclic collector took 15 % of the consumer's CPU freeing them."""

from __future__ import annotations

import gc
import types

from confluent_kafka import Message

from orders_dlq.aggregation import OrderAggregator
from orders_dlq.codec import order_codec
from orders_dlq.orders import CATALOGUE, OrderGenerator

GENERATOR = OrderGenerator(7)
CODEC = order_codec()


def bad_values() -> list[bytes]:
    """Poison bytes, and orders that decode but break a rule (each kind the generator makes)."""
    values = [GENERATOR.poison() for _ in range(20)] + [b"", b"\x02", b"\x00\x00\x00\x00\x01garbage"]
    values += [CODEC.encode(GENERATOR.bad()) for _ in range(40)]
    return values


def handle_like_the_consumer(aggregator, message):
    """The consumer's _handle keeps the Failure in a local of its own frame, as this does."""
    failure = OrderAggregator._evaluate(aggregator, None, message)
    assert failure is not None and failure.stage in ("deserialize", "validate")
    return failure.stage


def test_failures_of_bad_messages_are_freed_without_the_cyclic_collector():
    aggregator = types.SimpleNamespace(codec=CODEC, products=frozenset(CATALOGUE))
    messages = [Message(topic="orders", partition=0, offset=i, key=b"k", value=value, headers=None,
                        timestamp=(1, 1_000))
                for i, value in enumerate(bad_values())]
    stages = set()
    gc.collect()
    gc.disable()
    try:
        for message in messages:
            stages.add(handle_like_the_consumer(aggregator, message))
        left_in_cycles = gc.collect()
    finally:
        gc.enable()
    assert stages == {"deserialize", "validate"}
    assert left_in_cycles == 0, f"{left_in_cycles} objects were only freed by the cyclic collector"
