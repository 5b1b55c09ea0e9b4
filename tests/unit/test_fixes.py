"""Export and --from-file: an exported dead letter reads back as the same order, and bad edits are refused."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from orders_dlq.codec import order_codec
from orders_dlq.dead_letter import DeadLetter
from orders_dlq.errors import UsageError
from orders_dlq.fixes import BadFix, check_fixes, export_record, parse_fix, read_fixes
from orders_dlq.orders import CATALOGUE
from orders_dlq.selection import DlqRecord

CODEC = order_codec()
PRODUCTS = frozenset(CATALOGUE)
ORDER = {"order_id": "0b7e9d3c-5f0e-4c3a-9d6e-2f1f5b9b7a10", "product": "Unobtainium", "price": Decimal("12.34"),
         "created_at": 1_764_000_000_000_000}


def exported(value: bytes | None = None) -> dict:
    letter = DeadLetter(error_reason="unknown product: 'Unobtainium'", error_type="InvalidOrder",
                        error_stage="validate", original_topic="orders", failed_by="test", original_partition=2,
                        original_offset=41, original_timestamp=1_764_000_000_000, original_key=b"k",
                        original_value=CODEC.encode(ORDER) if value is None else value,
                        original_headers=[("tenant", b"blue")], replay_count=1)
    return export_record(DlqRecord(letter, "orders.DLQ", 0, 17, None), "open", b'["original", "orders", 2, 41]',
                         CODEC)


def test_an_export_shows_the_order_and_keeps_the_original_bytes():
    entry = json.loads(json.dumps(exported()))  # it is plain JSON
    assert entry["order"] == {"order_id": ORDER["order_id"], "product": "Unobtainium", "price": "12.34",
                              "created_at": ORDER["created_at"]}
    assert (entry["dlq_position"], entry["mark_key"], entry["status"]) == (
        "orders.DLQ[0]@17", '["original", "orders", 2, 41]', "open")
    assert entry["context"]["error_reason"] == "unknown product: 'Unobtainium'"


def test_the_original_bytes_of_a_foreign_payload_are_exported_without_an_order():
    entry = exported(value=b"not avro at all")
    assert entry["order"] is None and entry["order_error"]
    assert entry["original_value_base64"] == "bm90IGF2cm8gYXQgYWxs"


def test_an_edited_order_is_encoded_and_keeps_where_it_goes():
    entry = exported()
    entry["order"]["product"] = "Toffee"
    fix = parse_fix(json.dumps(entry), 1, CODEC, PRODUCTS, None)
    assert CODEC.decode(fix.value) == {**ORDER, "product": "Toffee"}
    assert (fix.target, fix.original_partition, fix.key, fix.replay_count) == ("orders", 2, b"k", 1)
    assert fix.headers == [("tenant", b"blue")] and fix.position == "orders.DLQ[0]@17"
    assert parse_fix(json.dumps(entry), 1, CODEC, PRODUCTS, "elsewhere").target == "elsewhere"


@pytest.mark.parametrize("edit, why", [
    ({"product": "Unobtainium"}, "unknown product"),
    ({"price": "-1.00"}, "price must be positive"),
    ({"price": "1.234"}, "two decimal places"),
    ({"price": 1.5}, "decimal string"),
    ({"price": "abc"}, "not a number"),
    ({"order_id": "order-1"}, "not a UUID"),
    ({"created_at": "yesterday"}, "created_at must be an integer"),
    ({"colour": "red"}, "unknown colour"),
])
def test_an_invalid_edit_is_refused_with_the_reason(edit, why):
    entry = exported()
    entry["order"] = {**entry["order"], "product": "Toffee", **edit}
    with pytest.raises(BadFix, match=why):
        parse_fix(json.dumps(entry), 1, CODEC, PRODUCTS, None)


def test_a_file_with_one_bad_line_is_refused_by_its_number_before_anything_is_read_out(tmp_path):
    good = exported()
    good["order"]["product"] = "Fudge"
    bad = json.loads(json.dumps(good))
    bad["order"]["price"] = "0"
    path = tmp_path / "edited.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(UsageError, match=r"line 4: the edited order is still invalid: price must be positive"):
        check_fixes(path, CODEC, PRODUCTS)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(UsageError, match="line 2: not JSON"):
        check_fixes(path, CODEC, PRODUCTS)
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(good) + "\n")
    assert check_fixes(path, CODEC, PRODUCTS) == 2
    assert [fix.line for fix in read_fixes(path, CODEC, PRODUCTS)] == [1, 3]


def test_a_missing_or_empty_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot read"):
        check_fixes(tmp_path / "absent.jsonl", CODEC, PRODUCTS)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UsageError, match="no dead letter"):
        check_fixes(tmp_path / "empty.jsonl", CODEC, PRODUCTS)
