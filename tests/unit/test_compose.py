"""docker-compose.yml and orders_dlq/local_kafka.py run the broker with the same settings."""

from __future__ import annotations

import re
from pathlib import Path

from orders_dlq import local_kafka, local_registry

ROOT = Path(__file__).resolve().parent.parent.parent

COMPOSE = (ROOT / "docker-compose.yml").read_text()
# Set per node or per network: these legitimately differ between a container and local JVMs.
PER_NODE = {"process.roles", "node.id", "controller.quorum.voters", "controller.listener.names", "listeners",
            "advertised.listeners", "inter.broker.listener.name", "listener.security.protocol.map", "log.dirs"}


def compose_properties() -> dict[str, str]:
    """Broker properties from the compose file's uncommented KAFKA_* variables (the image's naming rule)."""
    found = {}
    for name, value in re.findall(r"^\s+KAFKA_([A-Z0-9_]+):\s*\"?([^\"#\n]*?)\"?\s*(?:#.*)?$", COMPOSE, re.M):
        if name != "HEAP_OPTS":
            found[name.lower().replace("_", ".")] = value.strip()
    return found


def local_properties() -> dict[str, str]:
    text = local_kafka.broker_properties(1, [(9092, 9093)], Path("data"))
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_same_broker_settings():
    compose, local = compose_properties(), local_properties()
    shared = {key: value for key, value in local.items() if key not in PER_NODE}
    assert {key: compose.get(key) for key in shared} == shared
    assert set(compose) - PER_NODE <= set(shared), "the compose file sets what the local broker does not"


def test_two_listeners_host_and_in_network():
    compose = compose_properties()
    assert compose["advertised.listeners"] == "HOST://127.0.0.1:9092,DOCKER://kafka:29092"
    assert '"127.0.0.1:9092:9092"' in COMPOSE  # only the host listener is published, on loopback
    assert "# kafka-ui:" in COMPOSE and "KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS: kafka:29092" in COMPOSE


def test_schema_registry_service_matches_the_local_one():
    """The compose registry is the one local_registry builds (same version), published on loopback 8081."""
    service = COMPOSE.split("\n  schema-registry:\n", 1)[1].split("\n\n", 1)[0]
    version = re.search(r"<apicurio.version>([^<]+)<", (ROOT / "registry" / "pom.xml").read_text()).group(1)
    assert f"image: apicurio/apicurio-registry-mem:{version}" in service
    assert '"127.0.0.1:8081:8080"' in service
    assert local_registry.DEFAULT_PORT == 8081
