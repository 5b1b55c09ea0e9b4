"""Registry mode against a real Schema Registry (Apicurio, started by the `schema_registry` fixture)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from decimal import Decimal

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from conftest import ROOT, a_valid_order, encode_order
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders_dlq.registry import Registry, RegistryOrderCodec, RegistrySettings

# The first test to use the registry builds it when it is not built yet: about 5 minutes with a
# cold Maven repository, beyond the suite's 300 s per test.
pytestmark = pytest.mark.timeout(1200)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_local_registry_serves_the_confluent_api(schema_registry):
    client = SchemaRegistryClient({"url": schema_registry})
    subject = unique("smoke") + "-value"
    schema = {"type": "record", "name": "Smoke", "fields": [{"name": "n", "type": "long"}]}
    schema_id = client.register_schema(subject, Schema(json.dumps(schema), "AVRO"))
    assert json.loads(client.get_schema(schema_id).schema_str) == schema
    assert subject in client.get_subjects()


def test_local_registry_cli_refuses_a_bad_port_in_one_sentence():
    result = subprocess.run([sys.executable, "-m", "orders_dlq.local_registry", "start", "--port", "70000"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr == "error: --port 70000 is not a usable TCP port.\n"


def registry_order_schema(extra_field: dict | None = None) -> dict:
    schema = json.loads((ROOT / "schemas" / "order.avsc").read_text())
    if extra_field:
        schema["fields"].append(extra_field)
    return schema


def schema_dir_with(tmp_path, name: str, order_schema: dict):
    """A schema directory whose order.avsc is `order_schema` (a producer or consumer of another version)."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "order.avsc").write_text(json.dumps(order_schema))
    (folder / "dead_letter.avsc").write_text((ROOT / "schemas" / "dead_letter.avsc").read_text())
    return folder


def dead_letters(pipeline, registry_url: str) -> list[dict]:
    """The DLQ: registry-mode dead letters read by confluent_kafka's AvroDeserializer, others by fastavro."""
    client = SchemaRegistryClient({"url": registry_url})
    subject = f"{pipeline.dlq_topic}-value"
    framed_id = client.get_latest_version(subject).schema_id if subject in client.get_subjects() else None
    deserializer = AvroDeserializer(client)
    schema = fastavro.parse_schema(json.loads((ROOT / "schemas" / "dead_letter.avsc").read_text()))
    letters = []
    for message in pipeline.read(pipeline.dlq_topic):
        value = message.value()
        if framed_id is not None and value[0] == 0 and int.from_bytes(value[1:5], "big") == framed_id:
            letter = deserializer(value, SerializationContext(pipeline.dlq_topic, MessageField.VALUE))
            letter["_framed"] = True
        else:
            letter = fastavro.schemaless_reader(io.BytesIO(value), schema)
            letter["_framed"] = False
        letters.append(letter)
    return letters


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.fixed_dictionaries({
    "order_id": st.uuids().map(str),
    "product": st.text(max_size=40),
    "price": st.integers(min_value=-(10**12) + 1, max_value=10**12 - 1).map(lambda c: Decimal(c).scaleb(-2)),
    "created_at": st.integers(min_value=-(2**63), max_value=2**63 - 1),
}))
def test_fast_registry_encoding_equals_the_avro_serializer(registry_codec_and_serializer, order):
    codec, serializer, context = registry_codec_and_serializer
    assert codec.encode(order) == serializer(order, context)
    # producer.py's path: the same order as fields, without the record dict.
    assert codec.encode_fields(order["order_id"], order["product"], order["price"], order["created_at"]) \
        == serializer(order, context)


@pytest.fixture(scope="module")
def registry_codec_and_serializer(schema_registry):
    topic = unique("encoder")
    client = SchemaRegistryClient({"url": schema_registry})
    serializer = AvroSerializer(client, json.dumps(registry_order_schema()))
    codec = RegistryOrderCodec(Registry(RegistrySettings(schema_registry)), topic)
    codec.register()
    assert codec.local.fast
    return codec, serializer, SerializationContext(topic, MessageField.VALUE)


def test_registry_round_trip_read_back_by_confluents_deserializer(pipeline, schema_registry):
    sent = pipeline.scripts.json("producer.py", "--schema-registry", schema_registry, "-c", 40, "--seed", 5)
    assert sent["sent"] == 40
    messages = pipeline.read(pipeline.topic)
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": schema_registry}))
    orders = [deserializer(m.value(), SerializationContext(pipeline.topic, MessageField.VALUE)) for m in messages]
    assert len(orders) == 40 and all(m.value()[0] == 0 for m in messages)
    assert {len({m.value()[1:5] for m in messages})} == {1}  # one schema id for all
    total = sum(order["price"] for order in orders)

    summary = pipeline.consume("--schema-registry", schema_registry)
    assert summary["processed"] == 40 and summary["dead_lettered"] == 0
    assert summary["overall"]["total"] == str(total)
    assert pipeline.read(pipeline.dlq_topic) == []


def test_framing_mismatches_are_dead_lettered_with_a_clear_reason(pipeline, schema_registry, scripts):
    scripts.run("producer.py", "--schema-registry", schema_registry, "-c", 2, "--seed", 1)
    schema_id = int.from_bytes(pipeline.read(pipeline.topic)[0].value()[1:5], "big")
    unknown_id = 987654
    pipeline.produce_raw([encode_order(a_valid_order()), bytes((0,)) + unknown_id.to_bytes(4, "big")
                          + encode_order(a_valid_order())])

    schemaless = pipeline.consume()
    assert schemaless["processed"] == 1 and schemaless["dead_lettered"] == 3
    pipeline.group += "-registry"
    registry = pipeline.consume("--schema-registry", schema_registry)
    assert registry["processed"] == 2 and registry["dead_lettered"] == 2

    letters = dead_letters(pipeline, schema_registry)
    running_schemaless = "but the consumer runs schemaless (start it with --schema-registry)"
    assert sorted((letter["_framed"], letter["error_reason"]) for letter in letters) == [
        (False, f"confluent-framed, schema id {schema_id}, {running_schemaless}"),
        (False, f"confluent-framed, schema id {schema_id}, {running_schemaless}"),
        (False, f"confluent-framed, schema id {unknown_id}, {running_schemaless}"),
        # The registry-mode consumer's dead letters are themselves in the Confluent wire format.
        (True, f"confluent-framed, schema id {unknown_id}, unknown to the schema registry at {schema_registry}"),
        (True, "schemaless Avro order without the Confluent framing, but the consumer runs in registry mode"),
    ]
    # The DLQ tool reads both framings of dead letters, and shows the order inside either framing.
    listed = [json.loads(line) for line in scripts.run("dlq_consumer.py", "--jsonl").stdout.splitlines()]
    assert len(listed) == 5 and all(letter["order_id"] for letter in listed)


def test_evolution_both_ways_without_dead_letters_and_an_incompatible_change_refused(pipeline, schema_registry,
                                                                                     scripts, tmp_path):
    set_up = scripts.run("setup_dlq.py", "--schema-registry", schema_registry, "--apply")
    assert f"{pipeline.topic}-value" in set_up.stdout and "BACKWARD" in set_up.stdout
    v2 = schema_dir_with(tmp_path, "v2", registry_order_schema(
        {"name": "channel", "type": "string", "default": "web"}))
    scripts.run("producer.py", "--schema-registry", schema_registry, "-c", 5, "--seed", 1)  # v1
    scripts.run("producer.py", "--schema-registry", schema_registry, "-c", 5, "--seed", 2,
                env={"SCHEMA_DIR": str(v2)})  # v2, with a field v1 does not know
    assert len({m.value()[1:5] for m in pipeline.read(pipeline.topic)}) == 2

    v1_consumer = pipeline.consume("--schema-registry", schema_registry)
    pipeline.group += "-v2"
    v2_consumer = pipeline.consume("--schema-registry", schema_registry, env={"SCHEMA_DIR": str(v2)})
    for summary in (v1_consumer, v2_consumer):
        assert summary["processed"] == 10 and summary["dead_lettered"] == 0
    assert v1_consumer["overall"] == v2_consumer["overall"]
    assert pipeline.read(pipeline.dlq_topic) == []

    required = schema_dir_with(tmp_path, "v3", registry_order_schema({"name": "region", "type": "string"}))
    refused = scripts.run("producer.py", "--schema-registry", schema_registry, "-c", 1,
                          env={"SCHEMA_DIR": str(required)}, expect=2)
    assert refused.stderr.startswith(f"error: the schema registry refuses this order schema for {pipeline.topic}-value")
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
