"""Integration tests for orders_dlq/local_kafka.py (real JVM brokers on private ports).

Every cluster here lives in a tmp dir on free ports, so these tests never touch
the default 127.0.0.1:9092 broker that the rest of the suite uses.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from orders_dlq import local_kafka

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Java 17+ is needed for the local Kafka broker", allow_module_level=True)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """Run the CLI as a user would; a hang fails the test via TimeoutExpired."""
    return subprocess.run([sys.executable, "-m", "orders_dlq.local_kafka", *args], capture_output=True,
                          text=True, timeout=timeout, env=env or _env(), cwd=REPO_ROOT)


def pid_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not local_kafka._pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


def wait_for(condition, timeout: float, what: str):
    """Poll `condition` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.2)


def topic_partitions(bootstrap: str, topic: str) -> dict:
    md = local_kafka.fetch_metadata(bootstrap, 5)
    meta = md.topics.get(topic) if md else None
    return meta.partitions if meta is not None and meta.error is None else {}


def create_topic(bootstrap: str, name: str, partitions: int = 3, replication: int = 1,
                 config: dict[str, str] | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, partitions, replication, config=config or {})],
                                  operation_timeout=30, request_timeout=30)
    futures[name].result(timeout=30)


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    errors = []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "message.timeout.ms": 20000})
    for value in values:
        producer.produce(topic, value, key=value,
                         on_delivery=lambda err, _msg: err and errors.append(err))
    assert producer.flush(30) == 0
    assert errors == []


def consume(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
    finally:
        consumer.close()
    return got


@pytest.fixture(scope="module")
def jars():
    """Resolve the jars once (the only step that may need Maven and the network)."""
    lib, _fetched = local_kafka.ensure_jars()
    return lib


@pytest.fixture
def cluster_factory(tmp_path, jars):
    """Build private clusters in tmp dirs; whatever was started gets stopped."""
    made: list[local_kafka.LocalKafka] = []

    def make(brokers: int = 1, name: str = "kafka") -> local_kafka.LocalKafka:
        cluster = local_kafka.LocalKafka(tmp_path / name, brokers=brokers, base_port=0)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop(timeout=20)


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_round_trip_stop_and_restart_keeps_data(cluster_factory, tmp_path):
    kafka = cluster_factory().start(timeout=60)
    assert kafka.is_running()
    assert local_kafka.broker_reachable(kafka.bootstrap, 5)
    topic = f"orders-{uuid.uuid4().hex[:8]}"
    create_topic(kafka.bootstrap, topic)
    produce(kafka.bootstrap, topic, [b"a", b"b", b"c"])
    assert sorted(consume(kafka.bootstrap, topic, 3)) == [b"a", b"b", b"c"]

    # A missing topic must surface, never be created behind our back.
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    res = ConfigResource(ConfigResource.Type.BROKER, "1")
    broker_config = admin.describe_configs([res])[res].result(timeout=10)
    assert broker_config["auto.create.topics.enable"].value == "false"

    pid = kafka.pid(0)
    kafka.stop()
    assert pid_gone(pid), "stop() left the broker JVM running"
    assert not kafka.pid_file(0).exists()
    assert not kafka.is_running()
    assert not local_kafka.broker_reachable(kafka.bootstrap, 1)

    # Same data dir, same ports: topics and records survive a restart.
    again = local_kafka.LocalKafka(kafka.data_dir, brokers=1, base_port=0)
    assert again.bootstrap == kafka.bootstrap
    again.start(timeout=60)
    assert sorted(consume(again.bootstrap, topic, 3)) == [b"a", b"b", b"c"]
    again.stop()


@pytest.mark.timeout(120)
def test_cli_uses_jar_cache_without_maven_and_status_codes(jars, tmp_path):
    assert local_kafka.ensure_jars() == (local_kafka.LIB_DIR, False), "jar cache missed"
    # PATH holds java only: a start that needed Maven would fail.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(Path(local_kafka.find_java()).resolve())
    env = _env(PATH=str(bin_dir))
    data = tmp_path / "cli"
    port = str(local_kafka.free_port())

    status = run_cli("status", "--data-dir", str(data), env=env)
    assert status.returncode == 3, status
    assert status.stdout.startswith("kafka: not running")

    fetch = run_cli("fetch", env=env)
    assert fetch.returncode == 0, fetch
    assert "cached" in fetch.stdout

    try:
        start = run_cli("start", "--port", port, "--data-dir", str(data), env=env)
        assert start.returncode == 0, start
        assert start.stdout.startswith(f"kafka: running at 127.0.0.1:{port} (1 broker, pid ")
        assert "downloading" not in start.stderr

        status = run_cli("status", "--data-dir", str(data), env=env)
        assert status.returncode == 0, status
        assert status.stdout == start.stdout

        again = run_cli("start", "--data-dir", str(data), env=env)
        assert again.returncode == 0 and "already running" in again.stderr, again
    finally:
        stop = run_cli("stop", "--data-dir", str(data), env=env)
    assert stop.returncode == 0, stop
    pid = int(start.stdout.rsplit("pid ", 1)[1].rstrip(")\n"))
    assert pid_gone(pid)
    assert run_cli("status", "--data-dir", str(data), env=env).returncode == 3


@pytest.mark.timeout(60)
def test_cli_honours_kafka_bootstrap_servers(cluster_factory, tmp_path):
    kafka = cluster_factory().start(timeout=60)
    data = tmp_path / "unused"
    ok = run_cli("start", "--data-dir", str(data),
                 env=_env(KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap))
    assert ok.returncode == 0, ok
    assert ok.stdout.startswith("kafka: using KAFKA_BOOTSTRAP_SERVERS=")
    assert not data.exists(), "nothing may be started for an external broker"

    dead = f"127.0.0.1:{local_kafka.free_port()}"
    bad = run_cli("start", "--data-dir", str(data), env=_env(KAFKA_BOOTSTRAP_SERVERS=dead),
                  timeout=30)
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "no broker answers" in bad.stderr
    assert "Traceback" not in bad.stderr


def bind_any(sock: socket.socket) -> int:
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock.getsockname()[1]


def bind_with_free_neighbour(sock: socket.socket) -> int:
    """Listen on a port whose lower neighbour is free (other tests run brokers at the same time)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            below = probe.getsockname()[1]
        try:
            sock.bind(("127.0.0.1", below + 1))
        except OSError:
            continue
        sock.listen()
        return below + 1
    raise AssertionError("no two neighbouring free ports")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("taken", ["broker", "controller"])
def test_start_fails_fast_when_a_port_is_taken(jars, tmp_path, taken):
    with socket.socket() as blocker:
        port = bind_with_free_neighbour(blocker) if taken == "controller" else bind_any(blocker)
        base = port if taken == "broker" else port - 1
        began = time.monotonic()
        result = run_cli("start", "--port", str(base), "--data-dir", str(tmp_path / "k"),
                         timeout=30)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"Port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - began < 20
    assert not list((tmp_path / "k").glob("*.pid"))


@pytest.mark.timeout(30)
def test_missing_java_is_one_clear_sentence(tmp_path):
    env = _env(PATH=str(tmp_path))
    env.pop("JAVA_HOME", None)
    result = run_cli("start", "--data-dir", str(tmp_path / "k"), env=env)
    assert result.returncode == 1
    assert result.stderr == f"error: {local_kafka.JAVA_REQUIRED}\n"


@pytest.mark.timeout(30)
def test_usage_errors_exit_2():
    assert run_cli("start", "--brokers", "0").returncode == 2
    assert run_cli("bogus").returncode == 2


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_three_brokers_replication_and_node_faults(cluster_factory):
    kafka = cluster_factory(brokers=3)
    assert len(kafka.bootstrap.split(",")) == 3
    kafka.start(timeout=120)
    md = local_kafka.fetch_metadata(kafka.bootstrap, 10)
    assert sorted(md.brokers) == [1, 2, 3]

    topic = f"orders-rf3-{uuid.uuid4().hex[:8]}"
    create_topic(kafka.bootstrap, topic, partitions=3, replication=3,
                 config={"min.insync.replicas": "2"})
    # Brokers learn about a new topic asynchronously from the controller.
    partitions = wait_for(lambda: topic_partitions(kafka.bootstrap, topic), 30, f"{topic} in metadata")
    assert len(partitions) == 3
    assert all(len(p.replicas) == 3 for p in partitions.values())
    produce(kafka.bootstrap, topic, [b"1", b"2"])

    # A crash of one node: acks=all with min ISR 2 keeps working once the
    # controller moved leadership, and the node comes back with its data.
    pid = kafka.pid(2)
    kafka.kill_broker(2)
    assert pid_gone(pid) and not kafka.is_running()
    produce(kafka.bootstrap, topic, [b"3"])
    kafka.start_broker(2)
    assert kafka.is_running()

    # A graceful stop/start of another node.
    kafka.stop_broker(1)
    assert kafka.pid(1) is None
    kafka.start_broker(1)
    wait_for(lambda: sorted(local_kafka.fetch_metadata(kafka.bootstrap, 5).brokers) == [1, 2, 3],
             30, "all three brokers in metadata")
    assert sorted(consume(kafka.bootstrap, topic, 3)) == [b"1", b"2", b"3"]

    pids = list(kafka.pids().values())
    kafka.stop()
    assert all(pid_gone(p) for p in pids)


def test_start_when_kafka_bootstrap_servers_names_the_address_it_starts_on(jars, tmp_path):
    """`make kafka-up` with KAFKA_BOOTSTRAP_SERVERS=localhost:<port> exported and nothing there: start it."""
    data = tmp_path / "same-address"
    try:
        # --port P also takes P+1 (the controller), which free_port() does not check: another
        # broker of the suite, starting meanwhile, may hold it. Only then is another port tried.
        for _attempt in range(3):
            port = str(local_kafka.free_port())
            env = _env(KAFKA_BOOTSTRAP_SERVERS=f"localhost:{port}")
            start = run_cli("start", "--port", port, "--data-dir", str(data), env=env)
            if "already in use by another program" not in start.stderr:
                break
        assert start.returncode == 0, start
        assert start.stdout.startswith(f"kafka: running at 127.0.0.1:{port} (1 broker, pid "), start
        assert local_kafka.broker_reachable(f"localhost:{port}", 10)
    finally:
        stop = run_cli("stop", "--data-dir", str(data), env=_env())
    assert stop.returncode == 0, stop
