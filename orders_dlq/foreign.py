"""What a dead letter read from headers alone (original format, Spring's, Connect's) lacks: the order.

An envelope carries the order's fields; a dead letter whose value is the original message carries
them only inside that message. When the message is one of our orders, they are read from it.
"""

from __future__ import annotations

import functools

from orders_dlq.codec import order_codec
from orders_dlq.dead_letter import DeadLetter, fit_price, fit_text


@functools.cache
def _orders():
    return order_codec()


def with_order_fields(dead_letter: DeadLetter) -> DeadLetter:
    """The dead letter with order_id, product and price taken from its original value when that
    decodes as an order; unchanged otherwise (poison, another tool's payload, no value)."""
    if dead_letter.order_id is not None or not dead_letter.original_value:
        return dead_letter
    try:
        order = _orders().decode(dead_letter.original_value)
    except Exception:  # noqa: BLE001 - not an order of ours: the dead letter is complete without it
        return dead_letter
    if not isinstance(order, dict):
        return dead_letter
    dead_letter.order_id = None if order.get("order_id") is None else fit_text(order["order_id"], 200)
    dead_letter.product = None if order.get("product") is None else fit_text(order["product"], 200)
    dead_letter.price = fit_price(order.get("price"))
    return dead_letter
