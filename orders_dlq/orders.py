"""Orders: the product catalogue, the validation rules, and a generator of good and bad orders."""

from __future__ import annotations

import random
import re
import time
from decimal import Decimal

# The products the shop sells; anything else is an invalid order.
CATALOGUE = ("Toffee", "Fudge", "Caramel", "Lollipop", "Marshmallow", "Nougat")
MAX_PRICE = Decimal("10000.00")
# An order created more than this far in the future says the producer's clock or data is wrong.
MAX_CLOCK_SKEW_MICROS = 24 * 3600 * 1_000_000

# The canonical 8-4-4-4-12 hex form (any case): exactly what uuid.UUID(x).urn[9:] == x.lower() accepted,
# at a quarter of the cost (this runs for every consumed order).
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}").fullmatch

BAD_ORDER_KINDS = ("negative price", "zero price", "absurd price", "unknown product", "non-uuid order id")


class InvalidOrder(Exception):
    """A well-formed record that breaks a business rule; retrying cannot help.

    Messages read "<rule>: <detail>"; the DLQ statistics count by the rule.
    """


def validate(order: dict, products: frozenset[str] = frozenset(CATALOGUE)) -> None:
    """Raise InvalidOrder with a readable reason when an order breaks a rule."""
    order_id = order["order_id"]
    try:
        if _CANONICAL_UUID(order_id) is None:
            raise ValueError
    except (ValueError, AttributeError, TypeError):
        raise InvalidOrder(f"order_id is not a UUID: {order_id!r}") from None
    product = order["product"]
    if product not in products:
        raise InvalidOrder(f"unknown product: {product!r}")
    price = order["price"]
    if not price.is_finite():
        raise InvalidOrder(f"price is not a number: {price}")
    if price <= 0:
        raise InvalidOrder(f"price must be positive: {price}")
    if price > MAX_PRICE:
        raise InvalidOrder(f"price exceeds the maximum of {MAX_PRICE}: {price}")
    if order["created_at"] > time.time_ns() // 1000 + MAX_CLOCK_SKEW_MICROS:
        raise InvalidOrder(f"created_at is more than a day in the future: {order['created_at']}")


ORDER_FIELDS = ("order_id", "product", "price", "created_at")
# Order ids are made ORDER_ID_BLOCK at a time, with a few C-level operations on the whole block
# instead of formatting each UUID in Python (2.3 us each, a sixth of producer.py's time per order).
ORDER_ID_BLOCK = 512
# Where hex digit j of the 32 lands in the 36-character 8-4-4-4-12 form.
_UUID_COLUMNS = tuple(j + (j >= 8) + (j >= 12) + (j >= 16) + (j >= 20) for j in range(32))
# Version 4: the 13th digit is "4"; RFC 4122 variant: the 17th digit's top bits are 10 (8, 9, a, b).
_UUID_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")


def uuid4_block(rng: random.Random, count: int) -> list[bytes]:
    """`count` random version-4 UUIDs in their canonical text form, as ASCII bytes, in the reverse
    of the order they were drawn (for pop()). Each one is str(uuid.UUID(bytes=b, version=4)) of
    the next 16 bytes b that rng.randbytes draws."""
    digits = rng.randbytes(16 * count).hex().encode()
    text = bytearray(36 * count)
    for digit, column in enumerate(_UUID_COLUMNS):
        text[column::36] = digits[digit::32]
    for dash in (8, 13, 18, 23):
        text[dash::36] = b"-" * count
    text[14::36] = b"4" * count
    text[19::36] = digits[16::32].translate(_UUID_VARIANT)
    block = bytes(text)
    return [block[start:start + 36] for start in range(36 * (count - 1), -1, -36)]


# Every price the generator draws, made once: Decimal arithmetic per order costs more than sending it.
_PRICES = tuple(Decimal(cents).scaleb(-2) for cents in range(50, 5001))


class OrderGenerator:
    """Random orders for the demo, tests and benchmarks; reproducible with a seed."""

    def __init__(self, seed: int | None = None, products: tuple[str, ...] = CATALOGUE):
        self.random = random.Random(seed)
        self.products = products
        self._order_ids: list[bytes] = []

    def order_id_bytes(self) -> bytes:
        """A random version-4 UUID as ASCII bytes: an order's id as its message key carries it."""
        if not self._order_ids:
            self._order_ids = uuid4_block(self.random, ORDER_ID_BLOCK)
        return self._order_ids.pop()

    def order_id(self) -> str:
        """A random version-4 UUID string."""
        return self.order_id_bytes().decode()

    def good(self) -> dict:
        return dict(zip(ORDER_FIELDS, self.good_fields(), strict=True))

    def good_fields(self) -> tuple[str, str, Decimal, int]:
        """A valid order as (order_id, product, price, created_at)."""
        key, product, price, created_at = self.good_keyed()
        return key.decode(), product, price, created_at

    def good_keyed(self) -> tuple[bytes, str, Decimal, int]:
        """good_fields() with the order id as ASCII bytes, the message key: the producer's fast path."""
        draw = self.random.random
        # Prices between 0.50 and 50.00 in whole cents: exact in decimal, not in binary floats.
        return (self.order_id_bytes(),
                self.products[int(draw() * len(self.products))],  # choice() costs 3x more
                _PRICES[int(draw() * 4951)],  # 0.50..50.00; randint costs 3x more
                time.time_ns() // 1000)

    def bad(self) -> dict:
        """A record that encodes fine but must be rejected by the consumer's validation."""
        order = self.good()
        kind = self.random.choice(BAD_ORDER_KINDS)
        if kind == "negative price":
            order["price"] = -order["price"]
        elif kind == "zero price":
            order["price"] = Decimal("0.00")
        elif kind == "absurd price":
            order["price"] = Decimal("99999999.99")
        elif kind == "unknown product":
            order["product"] = "Unobtainium"
        else:
            order["order_id"] = f"order-{self.random.randint(1, 10**6)}"
        return order

    def poison(self) -> bytes:
        """Bytes that are not an Avro order at all."""
        return b"\x00POISON" + self.random.randbytes(self.random.randint(0, 24))
