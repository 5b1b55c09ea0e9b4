"""Order validation rules and the order generator."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from orders_dlq import orders
from orders_dlq.codec import DecodeError, order_codec
from orders_dlq.orders import (
    BAD_ORDER_KINDS,
    CATALOGUE,
    MAX_CLOCK_SKEW_MICROS,
    MAX_PRICE,
    InvalidOrder,
    OrderGenerator,
    validate,
)

NOW_MICROS = 1_714_564_800_000_000
VALID = {
    "order_id": "3f1c2b1e-7d4a-4c3b-9a1e-0123456789ab",
    "product": "Toffee",
    "price": Decimal("12.34"),
    "created_at": NOW_MICROS,
}


@pytest.fixture
def frozen_clock(monkeypatch):
    monkeypatch.setattr(orders.time, "time_ns", lambda: NOW_MICROS * 1000)


def invalid(**changes) -> str:
    with pytest.raises(InvalidOrder) as info:
        validate(dict(VALID, **changes))
    return str(info.value)


def test_catalogue_and_limits():
    assert CATALOGUE == ("Toffee", "Fudge", "Caramel", "Lollipop", "Marshmallow", "Nougat")
    assert MAX_PRICE == Decimal("10000.00")
    assert MAX_CLOCK_SKEW_MICROS == 86_400_000_000


def test_valid_order_passes(frozen_clock):
    assert validate(dict(VALID)) is None
    for product in CATALOGUE:
        validate(dict(VALID, product=product))


@pytest.mark.parametrize("order_id", [
    "order-42", "", "3f1c2b1e7d4a4c3b9a1e0123456789ab", "{3f1c2b1e-7d4a-4c3b-9a1e-0123456789ab}",
    "urn:uuid:3f1c2b1e-7d4a-4c3b-9a1e-0123456789ab", "3f1c2b1e-7d4a-4c3b-9a1e-0123456789a",
    "3f1c2b1e-7d4a-4c3b-9a1e-0123456789abc", " 3f1c2b1e-7d4a-4c3b-9a1e-0123456789ab",
    "3f1c2b1e-7d4a-4c3b-9a1e-0123456789ag", None, 42,
])
def test_non_uuid_order_id_is_invalid(frozen_clock, order_id):
    assert invalid(order_id=order_id) == f"order_id is not a UUID: {order_id!r}"


def test_uppercase_uuid_is_accepted(frozen_clock):
    # validate() compares the canonical form to order_id.lower(): case does not matter
    validate(dict(VALID, order_id=VALID["order_id"].upper()))


def test_any_uuid_version_is_accepted(frozen_clock):
    validate(dict(VALID, order_id="00000000-0000-0000-0000-000000000000"))
    validate(dict(VALID, order_id="6ba7b810-9dad-11d1-80b4-00c04fd430c8"))  # version 1


@pytest.mark.parametrize("product", ["Unobtainium", "toffee", "Toffee ", "", "TOFFEE"])
def test_unknown_product_is_invalid(frozen_clock, product):
    assert invalid(product=product) == f"unknown product: {product!r}"


def test_custom_products_set(frozen_clock):
    validate(dict(VALID, product="Unobtainium"), products=frozenset({"Unobtainium"}))
    with pytest.raises(InvalidOrder, match=r"^unknown product: 'Toffee'$"):
        validate(dict(VALID), products=frozenset({"Unobtainium"}))


@pytest.mark.parametrize("price", ["0.00", "0", "-0.00", "-0.01", "-12.34", "-99999999.99"])
def test_non_positive_price_is_invalid(frozen_clock, price):
    assert invalid(price=Decimal(price)) == f"price must be positive: {Decimal(price)}"


@pytest.mark.parametrize("price", ["10000.01", "99999999.99", "1E+30"])
def test_absurd_price_is_invalid(frozen_clock, price):
    assert invalid(price=Decimal(price)) == f"price exceeds the maximum of 10000.00: {Decimal(price)}"


@pytest.mark.parametrize("price", ["0.01", "10000.00", "9999.99"])
def test_price_bounds_are_inclusive(frozen_clock, price):
    validate(dict(VALID, price=Decimal(price)))


@pytest.mark.parametrize("price", ["NaN", "-NaN", "sNaN", "Infinity", "-Infinity"])
def test_non_finite_price_is_invalid_before_comparison(frozen_clock, price):
    # is_finite() runs before `<= 0`, so NaN (and signalling NaN) never reach a comparison that would raise
    assert invalid(price=Decimal(price)) == f"price is not a number: {Decimal(price)}"


def test_rules_are_checked_in_order(frozen_clock):
    assert invalid(order_id="x", product="Nope", price=Decimal("-1")).startswith("order_id is not a UUID")
    assert invalid(product="Nope", price=Decimal("-1")).startswith("unknown product")
    assert invalid(price=Decimal("-1"), created_at=NOW_MICROS * 2).startswith("price must be positive")


def test_created_at_at_most_one_day_in_the_future(frozen_clock):
    validate(dict(VALID, created_at=NOW_MICROS + MAX_CLOCK_SKEW_MICROS))
    validate(dict(VALID, created_at=0))
    validate(dict(VALID, created_at=-(2**63)))
    future = NOW_MICROS + MAX_CLOCK_SKEW_MICROS + 1
    assert invalid(created_at=future) == f"created_at is more than a day in the future: {future}"


def test_messages_have_rule_colon_detail_shape(frozen_clock):
    for changes in ({"order_id": "x"}, {"product": "x"}, {"price": Decimal("NaN")}, {"price": Decimal("0")},
                    {"price": Decimal("20000")}, {"created_at": NOW_MICROS * 2}):
        rule, sep, detail = invalid(**changes).partition(": ")
        assert sep == ": " and rule and detail


# -- generator -----------------------------------------------------------------------------------

def without_time(order: dict) -> dict:
    return {k: v for k, v in order.items() if k != "created_at"}


def test_generator_is_reproducible_with_a_seed():
    a, b = OrderGenerator(seed=7), OrderGenerator(seed=7)
    for _ in range(50):
        assert without_time(a.good()) == without_time(b.good())
        assert without_time(a.bad()) == without_time(b.bad())
        assert a.poison() == b.poison()


def test_different_seeds_differ():
    a, b = OrderGenerator(seed=1), OrderGenerator(seed=2)
    assert [without_time(a.good()) for _ in range(10)] != [without_time(b.good()) for _ in range(10)]


def test_good_orders_are_valid_and_well_formed():
    generator = OrderGenerator(seed=11)
    before = time.time_ns() // 1000
    for _ in range(500):
        order = generator.good()
        validate(order)
        assert set(order) == {"order_id", "product", "price", "created_at"}
        assert order["product"] in CATALOGUE
        assert Decimal("0.50") <= order["price"] <= Decimal("50.00")
        assert order["price"].as_tuple().exponent == -2
        assert before <= order["created_at"] <= time.time_ns() // 1000
        assert order["order_id"][14] == "4"  # version 4


def test_generator_uses_its_products():
    generator = OrderGenerator(seed=3, products=("Only",))
    assert {generator.good()["product"] for _ in range(20)} == {"Only"}


def test_bad_orders_are_always_invalid_and_cover_every_kind():
    generator = OrderGenerator(seed=12)
    codec = order_codec()
    rules = set()
    for _ in range(500):
        order = generator.bad()
        with pytest.raises(InvalidOrder) as info:
            validate(codec.decode(codec.encode(order)))  # bad orders still encode and decode fine
        rules.add(str(info.value).split(": ", 1)[0])
    assert rules == {"price must be positive", "price exceeds the maximum of 10000.00", "unknown product",
                     "order_id is not a UUID"}
    assert len(BAD_ORDER_KINDS) == 5


def test_poison_never_decodes():
    generator = OrderGenerator(seed=13)
    codec = order_codec()
    for _ in range(500):
        data = generator.poison()
        assert data.startswith(b"\x00POISON")
        with pytest.raises(DecodeError):
            codec.decode(data)
