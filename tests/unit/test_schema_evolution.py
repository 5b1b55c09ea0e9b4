"""Schemaless evolution (versioned order schemas) and the recognition of the other mode's framing."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from io import BytesIO

import fastavro
import pytest
from conftest import ROOT

from orders_dlq.codec import DecodeError, OrderCodec, confluent_header, split_confluent_frame

V1 = json.loads((ROOT / "schemas" / "order.avsc").read_text())
V2 = {**V1, "fields": [*V1["fields"], {"name": "channel", "type": "string", "default": "web"}]}
ORDER = {"order_id": "3f1c2a8e-4b5d-4c6e-8f70-123456789abc", "product": "Fudge", "price": Decimal("3.50"),
         "created_at": 1_700_000_000_000_000}


def schema_dir(tmp_path, current: dict, **versions: dict):
    folder = tmp_path / "schemas"
    folder.mkdir()
    shutil.copy(ROOT / "schemas" / "dead_letter.avsc", folder)
    (folder / "order.avsc").write_text(json.dumps(current))
    for name, schema in versions.items():
        (folder / f"order.{name}.avsc").write_text(json.dumps(schema))
    return folder


def written_with(schema: dict, record: dict) -> bytes:
    out = BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def test_a_v2_reader_reads_v1_bytes_through_the_older_version(tmp_path):
    codec = OrderCodec(schema_dir(tmp_path, V2, v1=V1, v2=V2))
    assert codec.decode(written_with(V1, ORDER)) == {**ORDER, "channel": "web"}
    assert codec.decode(written_with(V2, {**ORDER, "channel": "app"})) == {**ORDER, "channel": "app"}


def test_a_v1_reader_reads_v2_bytes_when_v2_is_in_its_schema_set(tmp_path):
    codec = OrderCodec(schema_dir(tmp_path, V1, v1=V1, v2=V2))
    assert codec.decode(written_with(V2, {**ORDER, "channel": "app"})) == ORDER


def test_without_the_version_the_old_error_remains(tmp_path):
    codec = OrderCodec(schema_dir(tmp_path, V2))
    with pytest.raises(DecodeError, match="not a valid Avro order record: EOFError"):
        codec.decode(written_with(V1, ORDER))


def test_a_version_is_accepted_only_if_it_consumes_every_byte(tmp_path):
    codec = OrderCodec(schema_dir(tmp_path, V1, v2=V2))
    with pytest.raises(DecodeError, match="unexpected bytes after the Avro record"):
        codec.decode(written_with(V1, ORDER) + b"\x02x\x00")


def test_a_confluent_framed_order_read_schemaless_says_so():
    codec = OrderCodec()
    framed = confluent_header(42) + codec.encode(ORDER)
    assert split_confluent_frame(framed) == (42, codec.encode(ORDER))
    with pytest.raises(DecodeError) as error:
        codec.decode(framed)
    assert str(error.value) == ("confluent-framed, schema id 42, but the consumer runs schemaless "
                                "(start it with --schema-registry)")


def test_poison_that_starts_with_a_zero_byte_is_not_called_framed():
    with pytest.raises(DecodeError) as error:
        OrderCodec().decode(b"\x00POISON\x01\x02")
    assert "confluent-framed" not in str(error.value)
