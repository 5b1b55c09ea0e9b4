"""Shared fixtures: a real Kafka broker for the session, unique topics per test, scripts as subprocesses."""

from __future__ import annotations

import functools
import inspect
import io
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import fastavro
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from orders_dlq import local_kafka, local_registry

ROOT = Path(__file__).resolve().parent.parent

SCRIPT_TIMEOUT = 180


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    """Poll a condition until it returns something truthy, or fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """A reachable broker: KAFKA_BOOTSTRAP_SERVERS if set, else a local one on free ports for this session."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        if not local_kafka.broker_reachable(configured, 10):
            pytest.exit(f"KAFKA_BOOTSTRAP_SERVERS={configured} is set but no broker answers there", returncode=1)
        yield configured
        return
    # Under pytest-xdist (`make test` runs two workers) each worker has a broker of its own.
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    cluster = local_kafka.LocalKafka(ROOT / ".kafka" / f"test-broker{'-' + worker if worker else ''}", brokers=1,
                                     base_port=0)
    cluster.start(timeout=120, fresh=True)
    try:
        yield cluster.bootstrap
    finally:
        cluster.stop()


@pytest.fixture
def private_kafka(tmp_path):
    """A broker of this test's own, which the test may stop, kill and restart."""
    cluster = local_kafka.LocalKafka(tmp_path / "broker", brokers=1, base_port=0)
    cluster.start(timeout=120)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory):
    """The ccompat API URL of a real Schema Registry (Apicurio) of this session, on a free port.

    Started only when a test asks for it, one per xdist worker. Where it cannot be built or run
    (no Java or Maven, no network for the first build) its tests fail in CI (CI=true) and are
    skipped elsewhere, with the one-sentence reason.
    """
    configured = os.environ.get("TEST_SCHEMA_REGISTRY_URL")
    if configured:
        if not local_registry.registry_answers(configured, 10):
            pytest.exit(f"TEST_SCHEMA_REGISTRY_URL={configured} is set but no registry answers there", returncode=1)
        yield configured
        return
    try:
        registry = local_registry.start_on_free_port(tmp_path_factory.mktemp("schema-registry"))
    except local_registry.RegistryLocalError as err:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the local Schema Registry is required in CI: {err}")
        pytest.skip(f"no local Schema Registry: {err}")
    try:
        yield registry.url
    finally:
        registry.stop()


class Scripts:
    """Runs the top-level scripts as a user would: subprocesses with a deadline, in a scratch directory."""

    def __init__(self, bootstrap: str, cwd: Path, topic: str | None = None):
        self.bootstrap = bootstrap
        self.cwd = cwd
        self.topic = topic

    def env(self, extra: dict | None = None) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("KAFKA_", "ORDERS_", "DLQ_", "SCHEMA_REGISTRY_"))}
        env["KAFKA_BOOTSTRAP_SERVERS"] = self.bootstrap
        if self.topic:
            env["ORDERS_TOPIC"] = self.topic
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def command(self, script: str, *args) -> list[str]:
        return [sys.executable, str(ROOT / script), *map(str, args)]

    def run(self, script: str, *args, env: dict | None = None, timeout: float = SCRIPT_TIMEOUT,
            expect: int | None = 0) -> subprocess.CompletedProcess:
        result = subprocess.run(self.command(script, *args), cwd=self.cwd, env=self.env(env),
                                capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if expect is not None and result.returncode != expect:
            raise AssertionError(f"{script} {' '.join(map(str, args))} exited {result.returncode}, expected "
                                 f"{expect}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
        return result

    def json(self, script: str, *args, **kwargs):
        return json.loads(self.run(script, *args, "--json", **kwargs).stdout)

    def spawn(self, script: str, *args, name: str | None = None, env: dict | None = None) -> Running:
        name = name or f"{Path(script).stem}-{uuid.uuid4().hex[:6]}"
        return Running(self.command(script, *args), self.cwd, self.env(env), name)


class Running:
    """A script running in the background, its output going to files the test can read at any time."""

    def __init__(self, command: list[str], cwd: Path, env: dict, name: str):
        self.stdout_path = cwd / f"{name}.stdout"
        self.stderr_path = cwd / f"{name}.stderr"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err,
                                            stdin=subprocess.DEVNULL)

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> int:
        self.process.kill()
        return self.process.wait(timeout=30)

    def wait(self, timeout: float = SCRIPT_TIMEOUT) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"still running after {timeout}s\n--- stderr\n{self.stderr()[-3000:]}") from None


class Pipeline:
    """Unique topics and group for one test, created by setup_dlq.py, plus direct Kafka access."""

    def __init__(self, bootstrap: str, scripts: Scripts, partitions: int = 3):
        self.partitions = partitions
        self.bootstrap = bootstrap
        suffix = uuid.uuid4().hex[:10]
        self.topic = f"orders-{suffix}"
        self.dlq_topic = f"{self.topic}.DLQ"
        self.state_topic = f"{self.topic}.aggregates"
        self.group = f"aggregation-{suffix}"
        self.scripts = scripts
        scripts.topic = self.topic

    def setup(self, *extra):
        return self.scripts.run("setup_dlq.py", "--partitions", self.partitions, *extra)

    def produce_raw(self, values: list, key: bytes | None = b"k", headers=None) -> None:
        """Write arbitrary bytes to the orders topic, bypassing producer.py."""
        producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True})
        for value in values:
            producer.produce(self.topic, value=value, key=key, headers=headers)
        assert producer.flush(30) == 0

    def read(self, topic: str, timeout: float = 60) -> list:
        """Every committed message of a topic, from the beginning to the current end."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"test-reader-{uuid.uuid4()}",
                             "enable.auto.commit": False, "enable.partition.eof": True,
                             "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
        try:
            metadata = consumer.list_topics(topic, timeout=10).topics[topic]
            consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
            remaining = set(metadata.partitions)
            messages = []
            deadline = time.monotonic() + timeout
            while remaining:
                assert time.monotonic() < deadline, f"timed out reading {topic}"
                for message in consumer.consume(1000, timeout=0.5):
                    if message.error() is None:
                        messages.append(message)
                    elif message.error().code() == KafkaError._PARTITION_EOF:
                        remaining.discard(message.partition())
                    else:
                        raise AssertionError(message.error().str())
            return messages
        finally:
            consumer.close()

    def dead_letters(self) -> list[dict]:
        """The DLQ as decoded records, each with its Kafka headers, decoded by fastavro directly."""
        schema = fastavro.parse_schema(json.loads((ROOT / "schemas" / "dead_letter.avsc").read_text()))
        letters = []
        for message in self.read(self.dlq_topic):
            record = fastavro.schemaless_reader(io.BytesIO(message.value()), schema)
            record["_headers"] = dict(message.headers() or [])
            record["_key"] = message.key()
            letters.append(record)
        return letters

    def truth(self) -> dict:
        """Exact totals of the valid orders in the topic, computed independently of the toolkit."""
        return expected_totals(self.read(self.topic))

    def consume(self, *args, guarantee: str = "exactly-once", **kwargs) -> dict:
        return self.scripts.json("consumer_aggregation.py", "-g", self.group, "--guarantee", guarantee,
                                 "--idle-timeout", 3, *args, **kwargs)

    def committed(self) -> dict[int, int]:
        """The group's committed offset per partition (without joining the group)."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group})
        try:
            partitions = [TopicPartition(self.topic, p) for p in range(self.partitions)]
            return {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=30)}
        except KafkaException as exc:
            if not exc.args[0].retriable() and exc.args[0].code() != KafkaError.NOT_COORDINATOR:
                raise
            return {}  # the group coordinator is moving or loading: callers poll again
        finally:
            consumer.close()

    def report(self) -> dict:
        return self.scripts.json("consumer_aggregation.py", "-g", self.group, "--report")


def produce(bootstrap: str, topic: str, messages: list[tuple], **config) -> list[int]:
    """Write (key, value, headers) to partition 0 in order; return their offsets."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 0,
                         "message.max.bytes": 8 * 1024 * 1024, **config})
    offsets: list[int | None] = [None] * len(messages)
    errors = []
    for index, (key, value, headers) in enumerate(messages):
        def report(error, message, index=index):
            if error is not None:
                errors.append(error.str())
            else:
                offsets[index] = message.offset()
        producer.produce(topic, value=value, key=key, headers=headers, partition=0, on_delivery=report)
        producer.flush(30)
    assert not errors and None not in offsets, errors
    return offsets


def _order_schema_with_plain_string_id() -> dict:
    # fastavro would raise while *reading* a non-UUID string under logicalType uuid; the test
    # wants to see such an order and call it invalid, as the pipeline does.
    raw = json.loads((ROOT / "schemas" / "order.avsc").read_text())
    raw["fields"][0]["type"] = "string"
    return fastavro.parse_schema(raw)


ORDER_SCHEMA = _order_schema_with_plain_string_id()
PRODUCTS = {"Toffee", "Fudge", "Caramel", "Lollipop", "Marshmallow", "Nougat"}


def encode_order(order: dict) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, ORDER_SCHEMA, order)
    return buffer.getvalue()


def a_valid_order(price="12.34", product="Toffee", **fields) -> dict:
    """The one order builder of the tests: a valid order as the Avro record holds it (fields may be
    overridden, or made invalid)."""
    return {"order_id": str(uuid.uuid4()), "product": product, "price": Decimal(price),
            "created_at": datetime.now(UTC), **fields}


def classify(value: bytes | None):
    """(order, None) for a valid order, (None, 'deserialize'|'validate') otherwise: the test's own rules."""
    if not value:
        return None, "deserialize"
    stream = io.BytesIO(value)
    try:
        order = fastavro.schemaless_reader(stream, ORDER_SCHEMA)
    except Exception:
        return None, "deserialize"
    if stream.tell() != len(value):
        return None, "deserialize"
    try:
        valid_id = str(uuid.UUID(str(order["order_id"]))) == str(order["order_id"]).lower()
    except ValueError:
        valid_id = False
    if not valid_id or order["product"] not in PRODUCTS or not Decimal("0") < order["price"] <= Decimal("10000"):
        return None, "validate"
    return order, None


def expected_totals(messages) -> dict:
    counts = {"count": 0, "total": Decimal("0.00")}
    products: dict[str, dict] = {}
    failures = {"deserialize": 0, "validate": 0}
    for message in messages:
        order, failure = classify(message.value())
        if failure:
            failures[failure] += 1
            continue
        for bucket in (counts, products.setdefault(order["product"], {"count": 0, "total": Decimal("0.00")})):
            bucket["count"] += 1
            bucket["total"] += order["price"]
    return {"count": counts["count"], "total": str(counts["total"]), "failures": failures,
            "products": {name: {"count": v["count"], "total": str(v["total"])} for name, v in products.items()}}


def assert_summary_matches_truth(summary: dict, truth: dict) -> None:
    assert summary["overall"]["count"] == truth["count"]
    assert summary["overall"]["total"] == truth["total"]
    assert set(summary["products"]) == set(truth["products"])
    for name, expected in truth["products"].items():
        got = summary["products"][name]
        assert (got["count"], got["total"]) == (expected["count"], expected["total"]), name
        average = (Decimal(expected["total"]) / expected["count"]).quantize(Decimal("0.01"))
        assert got["average"] == str(average), name


def assert_dead_lettered_exactly_once(letters: list[dict], truth: dict) -> None:
    """Every failed message of the orders topic is in the DLQ once: no position twice, none missing."""
    positions = [(letter["original_partition"], letter["original_offset"]) for letter in letters]
    assert len(positions) == len(set(positions)), "a message was dead-lettered twice"
    assert len(positions) == sum(truth["failures"].values())


def assert_pipeline_exact(pipeline, truth: dict, guarantee: str) -> None:
    """After instances came, went or died: the totals are exactly the orders sent, and every failed
    message is in the DLQ, once (exactly-once) or at least once (at-least-once may repeat one
    after a commit that failed or never came)."""
    report = pipeline.report()
    assert_summary_matches_truth(report, truth)
    assert report["processed"] == truth["count"]
    letters = pipeline.dead_letters()
    if guarantee == "exactly-once":
        assert report["dead_lettered"] == sum(truth["failures"].values())
        assert_dead_lettered_exactly_once(letters, truth)
    else:
        positions = {(letter["original_partition"], letter["original_offset"]) for letter in letters}
        assert len(positions) == sum(truth["failures"].values())


@pytest.fixture
def scripts(kafka_bootstrap, tmp_path) -> Scripts:
    return Scripts(kafka_bootstrap, tmp_path)


@pytest.fixture
def pipeline(kafka_bootstrap, scripts) -> Pipeline:
    pipeline = Pipeline(kafka_bootstrap, scripts)
    pipeline.setup()
    return pipeline


@pytest.fixture
def private_pipeline(private_kafka, tmp_path) -> Pipeline:
    """A pipeline (topics created) on this test's own broker, which the test may stop and restart."""
    pipeline = Pipeline(private_kafka.bootstrap, Scripts(private_kafka.bootstrap, tmp_path))
    pipeline.setup()
    return pipeline


@pytest.fixture
def admin(kafka_bootstrap) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


# Fixtures that start brokers of their own (to stop, kill or size them), whatever the session uses.
PRIVATE_BROKER_FIXTURES = {"private_kafka", "three_brokers", "cluster_factory", "jars"}


@functools.cache
def private_broker_unavailable() -> str | None:
    """Why this machine cannot start a private broker, when only an external one was given; else None."""
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return None  # the session starts its own broker anyway: a missing Java must fail loudly
    try:
        local_kafka.find_java()
    except local_kafka.KafkaLocalError:
        return "needs a private Kafka broker, and Java 17+ is not installed (KAFKA_BOOTSTRAP_SERVERS is external)"
    if not local_kafka.jars_cached() and not shutil.which("mvn"):
        return ("needs a private Kafka broker, and Maven is not installed to fetch its jars "
                "(KAFKA_BOOTSTRAP_SERVERS is external)")
    return None


def starts_private_broker(item) -> bool:
    if PRIVATE_BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    try:
        return "LocalKafka(" in inspect.getsource(item.function)
    except (AttributeError, OSError, TypeError):
        return False


def pytest_collection_modifyitems(items):
    """Everything under tests/integration needs the broker: mark it so `-m "not integration"` works.

    With an external broker only (KAFKA_BOOTSTRAP_SERVERS set, no Java or Maven), the tests that
    must start brokers of their own are skipped with a one-line reason instead of failing.
    """
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
            if starts_private_broker(item) and (reason := private_broker_unavailable()):
                item.add_marker(pytest.mark.skip(reason=reason))
