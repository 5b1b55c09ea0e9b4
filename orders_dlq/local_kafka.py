#!/usr/bin/env python3
"""Run a real Apache Kafka broker (KRaft, 1 or 3 nodes) locally without Docker.

Usage:
    python -m orders_dlq.local_kafka start [--brokers N] [--port P] [--data-dir D] [--fresh]
    python -m orders_dlq.local_kafka stop [--data-dir D] [--wipe]
    python -m orders_dlq.local_kafka status [--data-dir D]
    python -m orders_dlq.local_kafka fetch

The broker jars (version pinned in scripts/pom.xml) are resolved once with
Maven into <repo>/.kafka/lib; later starts need neither Maven nor a network.
Each node is a JVM running in the background with its pid file, properties,
console log (broker-N.log) and log4j log (server-N.log) in the data directory
(<repo>/.kafka/data by default), so `stop` and `status` work from any shell.

Importable (tests, bench, demo): see LocalKafka, broker_reachable, free_port, ensure_jars.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

MINIMUM_PYTHON = (3, 11)
if sys.version_info < MINIMUM_PYTHON:  # before anything that needs 3.11: one sentence, not a traceback
    sys.stderr.write("orders-dlq needs Python 3.11 or newer, but this is Python " + str(sys.version_info[0])
                     + "." + str(sys.version_info[1]) + ": install a newer Python and recreate the virtualenv "
                     "(see README.md).\n")
    raise SystemExit(2)

REPO_ROOT = Path(__file__).resolve().parent.parent
POM = REPO_ROOT / "scripts" / "pom.xml"
KAFKA_HOME = REPO_ROOT / ".kafka"  # git-ignored cache: jars and default data dir
LIB_DIR = KAFKA_HOME / "lib"
STAMP = LIB_DIR / ".kafka-local-stamp"
DEFAULT_DATA_DIR = KAFKA_HOME / "data"
DEFAULT_PORT = 9092
HOST = "127.0.0.1"  # every listener binds to loopback only
MAX_BROKERS = 5

JAVA_REQUIRED = ("Java 17+ is required to run the local Kafka broker: "
                 "install a JDK 17+ or use docker compose.")
MAVEN_REQUIRED = ("Maven (mvn) is required once to download the Kafka jars: "
                  "install Maven or use docker compose.")

# Per-broker JVM flags: small heaps so a 3-node cluster fits on a laptop/CI box.
JVM_FLAGS = ["-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
             "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true"]
# StorageTool is a short-lived tool: the C1 compiler alone starts faster.
TOOL_FLAGS = ["-Xmx256m", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"]


class KafkaLocalError(RuntimeError):
    """A failure explained by one sentence (printed as-is by the CLI)."""


def _say(msg: str) -> None:
    """Diagnostics go to stderr; stdout carries only the one status line."""
    print(f"kafka: {msg}", file=sys.stderr, flush=True)


def _show(path: Path) -> str:
    """A path for messages: relative to the working directory when below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------
# Networking helpers
# --------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """True if we could bind 127.0.0.1:port ourselves (nothing listens there).

    SO_REUSEADDR mirrors what the JVM does, so connections in TIME_WAIT left by
    a broker we just stopped do not count as "taken".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _split_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    out = []
    for item in bootstrap.split(","):
        host, _, port = item.strip().rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


def fetch_metadata(bootstrap: str, timeout: float = 5.0):
    """ClusterMetadata from the brokers at `bootstrap`, or None if none answers.

    A quick TCP probe first avoids spinning up a librdkafka client (and its
    connection-refused log spam) while the JVM is still booting.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    if not any(_tcp_open(h, p, min(timeout, 0.5)) for h, p in _split_bootstrap(bootstrap)):
        return None
    client = AdminClient({"bootstrap.servers": bootstrap,
                          "log_level": 0,  # silence librdkafka's stderr noise
                          "socket.connection.setup.timeout.ms": max(1000, int(timeout * 1000))})
    try:
        return client.list_topics(timeout=timeout)
    except KafkaException:
        return None


def broker_reachable(bootstrap: str, timeout: float = 5.0) -> bool:
    """True if a broker at `bootstrap` answers a metadata request in time."""
    return fetch_metadata(bootstrap, timeout) is not None


# --------------------------------------------------------------------------
# Java, Maven and the jar cache
# --------------------------------------------------------------------------

def kafka_version() -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    return match.group(1).strip() if match else "unknown"


def find_java() -> str:
    """Path of a Java 17+ `java` (JAVA_HOME first, then PATH)."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    candidates.append(shutil.which("java"))
    for java in filter(None, candidates):
        if not os.access(java, os.X_OK):
            continue
        try:
            out = subprocess.run([java, "-version"], capture_output=True, text=True,
                                 timeout=30).stderr
        except (OSError, subprocess.SubprocessError):
            continue
        match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
        if match:
            major = int(match.group(1))
            if major == 1 and match.group(2):  # "1.8.0_292" style
                major = int(match.group(2))
            if major >= 17:
                return java
    raise KafkaLocalError(JAVA_REQUIRED)


def _stamp_text() -> str:
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    return f"kafka {kafka_version()} pom-sha256 {digest}\n"


def jars_cached() -> bool:
    """True if .kafka/lib holds exactly what the current pom.xml pins."""
    try:
        return STAMP.read_text() == _stamp_text() and any(LIB_DIR.glob("kafka_2.13-*.jar"))
    except OSError:
        return False


def ensure_jars() -> tuple[Path, bool]:
    """Make sure the pinned jars are in .kafka/lib; returns (lib_dir, fetched).

    `fetched` is False on a cache hit: then Maven is not even looked up.
    """
    if jars_cached():
        return LIB_DIR, False
    mvn = shutil.which("mvn")
    if not mvn:
        raise KafkaLocalError(MAVEN_REQUIRED)
    KAFKA_HOME.mkdir(parents=True, exist_ok=True)
    partial = KAFKA_HOME / f"lib.partial-{os.getpid()}"
    log = KAFKA_HOME / "mvn.log"
    shutil.rmtree(partial, ignore_errors=True)
    _say(f"downloading the Kafka {kafka_version()} jars with Maven (once; log in {_show(log)})")
    cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
           f"-DoutputDirectory={partial}", "-DincludeScope=runtime"]
    with open(log, "wb") as out:
        try:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, timeout=900).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    if rc != 0 or not any(partial.glob("kafka_2.13-*.jar")):
        shutil.rmtree(partial, ignore_errors=True)
        raise KafkaLocalError(f"Maven could not download the Kafka {kafka_version()} jars "
                              f"(see {_show(log)}).")
    # Swap the complete directory in, so an interrupted download never looks cached.
    old = KAFKA_HOME / f"lib.old-{os.getpid()}"
    if LIB_DIR.exists():
        LIB_DIR.rename(old)
    partial.rename(LIB_DIR)
    shutil.rmtree(old, ignore_errors=True)
    STAMP.write_text(_stamp_text())
    return LIB_DIR, True


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    """True while `pid` runs; a finished child of ours is reaped here."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done != pid  # our child: waitpid is authoritative
    except ChildProcessError:
        pass  # not our child: started by another `local_kafka start`
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as dead once all its threads are gone (a SIGKILLed JVM's
    # main thread turns zombie while the others still exit and hold the ports).
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except (OSError, IndexError):
        return True
    return not (state == "Z" and threads <= 1)


def _pid_is_broker(pid: int, props: Path) -> bool:
    """Guard against pid reuse: the process must be our JVM for `props`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:  # gone on Linux; elsewhere there is no /proc: trust the pid
        return not sys.platform.startswith("linux")
    except OSError:
        return True
    return b"kafka.Kafka" in cmdline and str(props).encode() in cmdline


def _wait_dead(pid: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return not _pid_alive(pid)


def _terminate(pids: list[int], timeout: float) -> None:
    """SIGTERM (controlled shutdown), then SIGKILL whatever is left after `timeout`."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for pid in pids:
        if not _wait_dead(pid, deadline):
            _say(f"pid {pid} ignored SIGTERM for {timeout:.0f} s; sending SIGKILL")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_dead(pid, time.monotonic() + 10)


# --------------------------------------------------------------------------
# Configuration files
# --------------------------------------------------------------------------

LOG4J2 = """\
# Written by orders_dlq/local_kafka.py. One rolling file per node: server-<id>.log.
status = warn
name = kafka-local
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server-${sys:kafka.node.id}.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server-${sys:kafka.node.id}.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 10MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
# Chatty at INFO and rarely useful for this project.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
logger.logs.name = org.apache.kafka.storage.internals.log
logger.logs.level = WARN
logger.unified.name = kafka.log.UnifiedLog
logger.unified.level = WARN
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
"""


def broker_properties(node_id: int, ports: list[tuple[int, int]], log_dir: Path) -> str:
    """server.properties for one combined broker+controller node."""
    n = len(ports)
    broker_port, controller_port = ports[node_id - 1]
    voters = ",".join(f"{i + 1}@{HOST}:{c}" for i, (_, c) in enumerate(ports))
    rf = min(3, n)
    lines = [
        "# Written by orders_dlq/local_kafka.py on every start; edits are overwritten.",
        # KRaft combined mode: each JVM is both a broker and a controller (no
        # ZooKeeper, no separate controller processes). Fine for development;
        # production clusters run dedicated controllers.
        "process.roles=broker,controller",
        f"node.id={node_id}",
        # A static voter set listing every node: each node is a Raft voter, so a
        # 3-node cluster keeps a metadata quorum (2 of 3) when one node dies.
        f"controller.quorum.voters={voters}",
        "controller.listener.names=CONTROLLER",
        # Loopback only: nothing on the network can reach these brokers.
        f"listeners=PLAINTEXT://{HOST}:{broker_port},CONTROLLER://{HOST}:{controller_port}",
        f"advertised.listeners=PLAINTEXT://{HOST}:{broker_port}",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={log_dir}",
        # Never create topics implicitly: a typo in a topic name, or a missing
        # DLQ topic, must fail loudly instead of silently creating a new topic.
        "auto.create.topics.enable=false",
        "num.partitions=3",
        f"default.replication.factor={rf}",
        # Internal topics (consumer offsets, transaction state) cannot have more
        # replicas than brokers; with 3 nodes they are fully replicated.
        f"offsets.topic.replication.factor={rf}",
        f"transaction.state.log.replication.factor={rf}",
        # min ISR 2 of 3: a transaction commit survives one broker dying; with a
        # single node it must be 1 or transactions could never commit.
        f"transaction.state.log.min.isr={1 if n == 1 else 2}",
        f"share.coordinator.state.topic.replication.factor={rf}",
        f"share.coordinator.state.topic.min.isr={1 if n == 1 else 2}",
        # Consumers in a new group start at once instead of waiting 3 s for peers.
        "group.initial.rebalance.delay.ms=0",
        # Abort transactions of crashed producers quickly (default 10 s).
        "transaction.abort.timed.out.transaction.cleanup.interval.ms=2000",
        "log.retention.hours=168",
        "log.segment.bytes=104857600",
    ]
    return "\n".join(lines) + "\n"


def new_cluster_id() -> str:
    """A random cluster id in Kafka's Uuid format (22 chars of url-safe base64), never starting
    with '-': kafka-storage would read it as an option (Kafka's own Uuid.randomUuid avoids it too)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


# --------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------

class LocalKafka:
    """A local KRaft cluster of `brokers` combined nodes whose state lives in `data_dir`.

    Ports: node i (0-based; Kafka node.id = i + 1) listens on base_port + 2*i
    (clients) and base_port + 2*i + 1 (controller). base_port=0 picks free
    ports, remembered in data_dir/cluster.json so a restart reuses them.
    """

    def __init__(self, data_dir: Path | str | None = None, brokers: int = 1,
                 base_port: int | None = DEFAULT_PORT, config: dict[str, str] | None = None):
        if not 1 <= brokers <= MAX_BROKERS:
            raise KafkaLocalError(f"--brokers must be between 1 and {MAX_BROKERS}.")
        self.data_dir = Path(data_dir or DEFAULT_DATA_DIR).resolve()
        self.brokers = brokers
        # Extra/overriding broker settings, e.g. {"broker.session.timeout.ms": "4000"}
        # for faster failover in fault tests. Applied on every (re)start.
        self.config = dict(config or {})
        self._procs: dict[int, subprocess.Popen] = {}
        saved = self._load_state()
        same_shape = bool(saved) and len(saved.get("ports", [])) == brokers
        self._free_ports = base_port == 0  # re-picked by start(fresh=True)
        if base_port is None:  # CLI default: the ports this data dir used last time
            base_port = 0 if same_shape else DEFAULT_PORT
        if base_port == 0 and same_shape:
            self.ports = [tuple(p) for p in saved["ports"]]
        elif base_port == 0:
            self.ports = self._pick_free_ports()
        else:
            self.ports = [(base_port + 2 * i, base_port + 2 * i + 1) for i in range(brokers)]

    # ---- files -----------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """Comma-separated `127.0.0.1:port` list of all nodes (for bootstrap.servers)."""
        return ",".join(f"{HOST}:{b}" for b, _ in self.ports)

    def node_bootstrap(self, index: int) -> str:
        return f"{HOST}:{self.ports[index][0]}"

    def pid_file(self, index: int) -> Path:
        return self.data_dir / f"broker-{index + 1}.pid"

    def props_file(self, index: int) -> Path:
        return self.data_dir / f"broker-{index + 1}.properties"

    def console_log(self, index: int) -> Path:
        """JVM stdout/stderr (crashes, OOM); Kafka's own log is server_log()."""
        return self.data_dir / f"broker-{index + 1}.log"

    def server_log(self, index: int) -> Path:
        return self.data_dir / f"server-{index + 1}.log"

    def log_dir(self, index: int) -> Path:
        return self.data_dir / f"kraft-{index + 1}"

    @property
    def state_file(self) -> Path:
        return self.data_dir / "cluster.json"

    def _load_state(self) -> dict | None:
        try:
            return json.loads((self.data_dir / "cluster.json").read_text())
        except (OSError, ValueError):
            return None

    def _pick_free_ports(self) -> list[tuple[int, int]]:
        picked: set[int] = set()
        while len(picked) < 2 * self.brokers:
            picked.add(free_port())
        it = iter(sorted(picked))
        return [(next(it), next(it)) for _ in range(self.brokers)]

    # ---- state -----------------------------------------------------------

    def pid(self, index: int) -> int | None:
        """Pid of node `index` if its JVM is alive (stale pid files are removed)."""
        try:
            pid = int(self.pid_file(index).read_text().strip())
        except (OSError, ValueError):
            return None
        if _pid_alive(pid) and _pid_is_broker(pid, self.props_file(index)):
            return pid
        self.pid_file(index).unlink(missing_ok=True)
        return None

    def pids(self) -> dict[int, int]:
        """{index: pid} of the nodes whose JVM is alive."""
        return {i: p for i in range(self.brokers) if (p := self.pid(i)) is not None}

    def is_running(self) -> bool:
        """True if every node's JVM is alive (see broker_reachable for readiness)."""
        return len(self.pids()) == self.brokers

    def status_line(self) -> str:
        pids = self.pids()
        if not pids:
            return f"kafka: not running (data dir {_show(self.data_dir)})"
        noun = "broker" if self.brokers == 1 else "brokers"
        up = f"{len(pids)} of {self.brokers} {noun}" if len(pids) < self.brokers \
            else f"{self.brokers} {noun}"
        plural = "pid" if len(pids) == 1 else "pids"
        return (f"kafka: running at {self.bootstrap} ({up}, {plural} "
                f"{', '.join(str(p) for p in pids.values())})")

    # ---- start -----------------------------------------------------------

    def start(self, timeout: float = 60.0, fresh: bool = False) -> LocalKafka:
        """Start every node that is not running; return once all serve metadata.

        Raises KafkaLocalError (one sentence) if a port is taken, Java is
        missing, or a node dies or does not come up in `timeout` seconds; in
        that case the JVMs started by this call are killed again.
        """
        if fresh:
            self.stop()
            self.wipe()
            if self._free_ports:  # a new cluster: no reason to keep the old ports
                self.ports = self._pick_free_ports()
        java = find_java()
        lib, _ = ensure_jars()
        todo = [i for i in range(self.brokers) if self.pid(i) is None]
        if not todo:
            return self
        self._prepare(todo, java, lib)
        started = []
        try:
            for i in todo:
                self._launch(i, java, lib)
                started.append(i)
            self._wait_ready(todo, time.monotonic() + timeout)
        except BaseException:
            self._kill(started)
            raise
        return self

    def _prepare(self, todo: list[int], java: str, lib: Path) -> None:
        """Check ports, write config files and format never-used log dirs."""
        for i in todo:
            for port in self.ports[i]:
                if not port_is_free(port):
                    raise KafkaLocalError(
                        f"Port {port} on {HOST} is already in use by another program, so "
                        f"the local Kafka broker cannot start: stop that program or use --port.")
        state = self._load_state()
        if state and state.get("brokers") != self.brokers:
            raise KafkaLocalError(
                f"The data dir {_show(self.data_dir)} holds a {state.get('brokers')}-broker "
                f"cluster, not {self.brokers}: use --fresh or another --data-dir.")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cluster_id = (state or {}).get("cluster_id") or ""
        if not cluster_id or cluster_id.startswith("-"):  # an id saved by an earlier version could not format
            cluster_id = new_cluster_id()
        self.state_file.write_text(json.dumps(
            {"brokers": self.brokers, "ports": self.ports, "cluster_id": cluster_id,
             "kafka_version": kafka_version()}, indent=2) + "\n")
        (self.data_dir / "log4j2.properties").write_text(LOG4J2)
        for i in range(self.brokers):  # all nodes: the voter list names every port
            props = broker_properties(i + 1, self.ports, self.log_dir(i))
            props += "".join(f"{k}={v}\n" for k, v in self.config.items())
            self.props_file(i).write_text(props)
        unformatted = [i for i in todo if not (self.log_dir(i) / "meta.properties").exists()]
        self._format(unformatted, cluster_id, java, lib)

    def _format(self, indexes: list[int], cluster_id: str, java: str, lib: Path) -> None:
        """kafka-storage format: stamp each log dir with the cluster id (in parallel)."""
        procs = []
        for i in indexes:
            cmd = [java, *TOOL_FLAGS, "-cp", f"{lib}{os.sep}*",
                   f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                   f"-Dkafka.logs.dir={self.data_dir}", f"-Dkafka.node.id={i + 1}",
                   "kafka.tools.StorageTool", "format", "--ignore-formatted",
                   "--cluster-id", cluster_id, "--config", str(self.props_file(i))]
            procs.append((i, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL)))
        for i, proc in procs:
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                self.console_log(i).write_bytes(out)
                raise KafkaLocalError(f"Formatting the storage of Kafka node {i + 1} failed "
                                      f"(see {_show(self.console_log(i))}).")

    def _launch(self, index: int, java: str, lib: Path) -> None:
        cmd = [java, *JVM_FLAGS, "-cp", f"{lib}{os.sep}*",
               f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
               f"-Dkafka.logs.dir={self.data_dir}", f"-Dkafka.node.id={index + 1}",
               "kafka.Kafka", str(self.props_file(index))]
        with open(self.console_log(index), "ab") as out:
            # A new session: Ctrl+C in the terminal that ran `start` must not
            # reach the broker, which keeps running after this script exits.
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.data_dir,
                                    start_new_session=True)
        self._procs[index] = proc
        self.pid_file(index).write_text(f"{proc.pid}\n")

    def _wait_ready(self, indexes: list[int], deadline: float) -> None:
        """Poll until each node answers metadata itself and the cluster lists all nodes."""
        pending = list(indexes)
        while True:
            for i in indexes:
                proc = self._procs.get(i)
                if proc is not None and proc.poll() is not None:
                    raise KafkaLocalError(
                        f"Kafka node {i + 1} exited during start-up with code {proc.returncode}"
                        f"{self._last_error(i)} (see {_show(self.server_log(i))} and "
                        f"{_show(self.console_log(i))}).")
            pending = [i for i in pending if not self._node_serving(i)]
            if not pending:
                md = fetch_metadata(self.bootstrap, 2.0)
                if md is not None and len(md.brokers) >= self.brokers:
                    return
            if time.monotonic() >= deadline:
                i = (pending or indexes)[0]
                raise KafkaLocalError(
                    f"Kafka did not answer on {self.bootstrap} in time (node {i + 1} "
                    f"not ready{self._last_error(i)}; see {_show(self.server_log(i))}).")
            time.sleep(0.2)

    def _node_serving(self, index: int) -> bool:
        """True once node `index` itself answers a metadata request naming itself.

        A fresh client knows only the node's own port, so the answer comes from
        that node (the cluster may still list a just-killed node for ~9 s).
        """
        md = fetch_metadata(self.node_bootstrap(index), 1.0)
        if md is None or (index + 1) not in md.brokers:
            return False
        return getattr(md, "orig_broker_id", index + 1) in (index + 1, -1)

    def _last_error(self, index: int) -> str:
        """': <last ERROR line>' from the node's log, to make failures self-explaining."""
        for path in (self.server_log(index), self.console_log(index)):
            try:
                lines = path.read_text(errors="replace").splitlines()[-400:]
            except OSError:
                continue
            for line in reversed(lines):
                if " ERROR " in line or "Exception" in line or line.startswith("Error"):
                    text = re.sub(r"^\[[^\]]*\]\s*", "", line).strip()
                    return ": " + (text if len(text) <= 160 else text[:157] + "...")
        return ""

    # ---- stop ------------------------------------------------------------

    def stop(self, timeout: float = 30.0) -> list[int]:
        """Gracefully stop every node started from this data dir; returns the pids stopped."""
        pids = self.pids()
        _terminate(list(pids.values()), timeout)
        for i in pids:
            self._forget(i)
        return list(pids.values())

    def _forget(self, index: int) -> None:
        """Drop the pid file and our Popen handle of a node that has exited."""
        self.pid_file(index).unlink(missing_ok=True)
        proc = self._procs.pop(index, None)
        if proc is not None:
            proc.poll()  # records the exit (avoids a "still running" ResourceWarning)

    def _kill(self, indexes: list[int]) -> None:
        for i in indexes:
            proc = self._procs.pop(i, None)
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            self.pid_file(i).unlink(missing_ok=True)

    def wipe(self) -> None:
        """Delete the data dir (topics, offsets, logs); the cluster must be stopped."""
        if self.pids():
            raise KafkaLocalError("Refusing to wipe the data dir of a running cluster: stop it first.")
        if not self.data_dir.exists():
            return
        if not self.state_file.exists() and any(self.data_dir.iterdir()):
            raise KafkaLocalError(f"{_show(self.data_dir)} does not look like a local_kafka "
                                  f"data dir (no cluster.json), so it was not deleted.")
        shutil.rmtree(self.data_dir)

    # ---- single nodes (fault-injection tests) -----------------------------

    def kill_broker(self, index: int) -> None:
        """SIGKILL node `index` (0-based) like a crash: no controlled shutdown."""
        pid = self.pid(index)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            _wait_dead(pid, time.monotonic() + 30)
        self._forget(index)

    def stop_broker(self, index: int, timeout: float = 30.0) -> None:
        """Gracefully stop node `index` (0-based); its data stays for start_broker."""
        pid = self.pid(index)
        if pid is not None:
            _terminate([pid], timeout)
        self._forget(index)

    def start_broker(self, index: int, timeout: float = 60.0) -> None:
        """(Re)start node `index` with its existing data; returns once it serves metadata."""
        if self.pid(index) is not None:
            return
        java = find_java()
        lib, _ = ensure_jars()
        self._prepare([index], java, lib)
        try:
            self._launch(index, java, lib)
            self._wait_ready([index], time.monotonic() + timeout)
        except BaseException:
            self._kill([index])
            raise

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orders_dlq.local_kafka",
        description="Run a local Apache Kafka (KRaft) broker or 3-node cluster without Docker.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_dir_arg(p):
        p.add_argument("--data-dir", type=Path, default=None,
                       help="state, logs and pid files (default: <repo>/.kafka/data)")

    p = sub.add_parser("start", help="start the broker(s) in the background")
    p.add_argument("--brokers", type=int, default=None,
                   help="number of nodes, e.g. 1 or 3 (default: as last time, else 1)")
    p.add_argument("--port", type=int, default=None,
                   help=f"client port of the first node (default {DEFAULT_PORT}; "
                        "node i uses port+2i and port+2i+1 for its controller)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    p.add_argument("--fresh", action="store_true", help="wipe the data dir first")
    data_dir_arg(p)
    p = sub.add_parser("stop", help="stop the broker(s) started from the data dir")
    p.add_argument("--wipe", action="store_true", help="also delete the data dir")
    data_dir_arg(p)
    p = sub.add_parser("status", help="exit 0 if running, 3 if not")
    data_dir_arg(p)
    sub.add_parser("fetch", help="download the pinned Kafka jars (once)")
    return parser


def _cluster_from_dir(data_dir: Path | None) -> LocalKafka:
    """The cluster described by data_dir/cluster.json (1 broker on 9092 if none)."""
    probe = LocalKafka(data_dir, 1, DEFAULT_PORT)
    state = probe._load_state()
    if not state:
        return probe
    return LocalKafka(data_dir, int(state.get("brokers", 1)), 0)


LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def _names_local_address(bootstrap: str, port: int) -> bool:
    """True if every address in `bootstrap` is this machine's loopback at `port` (where we would start)."""
    addresses = _split_bootstrap(bootstrap)
    return bool(addresses) and all(host.lower() in LOOPBACK_NAMES and p == port for host, p in addresses)


def _cmd_start(args) -> int:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        if broker_reachable(external, 5.0):
            print(f"kafka: using KAFKA_BOOTSTRAP_SERVERS={external} (reachable; nothing started)")
            return 0
        if not _names_local_address(external, args.port or DEFAULT_PORT):
            raise KafkaLocalError(f"KAFKA_BOOTSTRAP_SERVERS={external} is set but no broker answers "
                                  f"there within 5 s: start that broker or unset the variable.")
        # It names the very address this command starts a broker on: start it there.
    brokers = args.brokers
    if brokers is None:  # default: the size of the cluster in the data dir, else 1
        brokers = _cluster_from_dir(args.data_dir).brokers
    if args.port is not None and not 1 <= args.port <= 65535 - 2 * brokers:
        raise KafkaLocalError(f"--port {args.port} is not a usable TCP port.")
    kafka = LocalKafka(args.data_dir, brokers, args.port)
    if not args.fresh and kafka.is_running():
        _say("already running")
        print(_cluster_from_dir(args.data_dir).status_line())  # the ports it really uses
        return 0
    began = time.monotonic()
    try:
        kafka.start(timeout=args.timeout, fresh=args.fresh)
    except KeyboardInterrupt:
        raise KafkaLocalError("Start interrupted; the brokers it launched were stopped.") from None
    _say(f"started in {time.monotonic() - began:.1f} s; Kafka logs in "
         f"{_show(kafka.data_dir)}/server-*.log")
    print(kafka.status_line())
    return 0


def _cmd_stop(args) -> int:
    kafka = _cluster_from_dir(args.data_dir)
    stopped = kafka.stop()
    if args.wipe:
        kafka.wipe()
    wiped = f"; deleted {_show(kafka.data_dir)}" if args.wipe else ""
    if stopped:
        print(f"kafka: stopped (pid{'s' if len(stopped) > 1 else ''} "
              f"{', '.join(map(str, stopped))}){wiped}")
    else:
        print(f"kafka: not running{wiped}")
    return 0


def _cmd_status(args) -> int:
    kafka = _cluster_from_dir(args.data_dir)
    print(kafka.status_line())
    if not kafka.pids():
        return 3
    if not broker_reachable(kafka.bootstrap, 3.0):
        _say(f"the JVM runs but {kafka.bootstrap} does not answer (starting up, or see "
             f"{_show(kafka.data_dir)}/server-*.log)")
        return 1
    return 0


def _cmd_fetch(_args) -> int:
    lib, fetched = ensure_jars()
    count = len(list(lib.glob("*.jar")))
    how = "downloaded" if fetched else "cached"
    print(f"kafka: jars for Kafka {kafka_version()} ready in {_show(lib)} ({count} jars, {how})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # usage errors: argparse exits with 2
    if getattr(args, "brokers", None) not in (None, *range(1, MAX_BROKERS + 1)):
        _parser().error(f"--brokers must be between 1 and {MAX_BROKERS}")
    handler = {"start": _cmd_start, "stop": _cmd_stop,
               "status": _cmd_status, "fetch": _cmd_fetch}[args.command]
    return run_command(handler, args, KafkaLocalError)


def run_command(handler, args, own_error: type[Exception]) -> int:
    """One subcommand of a local service's CLI (this one, local_registry's): the service's own
    errors and the machine's (an unwritable directory) end in one line and exit 1, Ctrl+C in 130."""
    try:
        return handler(args)
    except own_error as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # e.g. an unwritable --data-dir
        where = f": {err.filename}" if err.filename else ""
        print(f"error: {err.strerror or err}{where}.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
