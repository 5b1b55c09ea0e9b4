"""Registry mode against a real Schema Registry (Apicurio, started by the `schema_registry` fixture)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from conftest import ROOT


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
