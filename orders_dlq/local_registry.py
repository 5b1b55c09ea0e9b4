#!/usr/bin/env python3
"""Run a real Schema Registry (Apicurio Registry 2.4.2, in memory) locally without Docker.

Usage:
    python -m orders_dlq.local_registry start [--port P] [--state-dir D]
    python -m orders_dlq.local_registry stop [--state-dir D]
    python -m orders_dlq.local_registry status [--state-dir D]
    python -m orders_dlq.local_registry build

The registry is built once with Maven from the project's own files in registry/ (a wrapper
project around Apicurio's app, see registry/pom.xml). Its Maven downloads and the built jar are
kept in a per-user cache (~/.cache/orders-dlq/schema-registry, or $XDG_CACHE_HOME), apart from
~/.m2 (the build installs a stand-in artifact under Apicurio's coordinates, which must not leak
into other builds), and shared by every clone of the project: a fresh clone reuses the jar built
from the same registry/ files. Later starts need neither Maven nor a network. It serves the
Confluent-compatible API at <url>/apis/ccompat/v7, which is what confluent_kafka's
SchemaRegistryClient is given (see registry_api_url()). Storage is in memory: a restart forgets
every schema, which suits development and tests.

Importable (tests, demo): see LocalRegistry, ensure_built, registry_answers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from orders_dlq.local_kafka import (
    HOST,
    KafkaLocalError,
    _pid_alive,
    _show,
    _terminate,
    find_java,
    free_port,
    port_is_free,
    run_command,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = REPO_ROOT / "registry"
SETTINGS = BUILD_DIR / "settings.xml"
BUILT_JAR = BUILD_DIR / "app" / "target" / "local-schema-registry-1-runner.jar"
HOME = REPO_ROOT / ".registry"  # git-ignored: build log, run state
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orders-dlq" / "schema-registry"
MAVEN_REPO = CACHE / "m2"
BUILD_LOG = HOME / "build.log"
DEFAULT_STATE_DIR = HOME / "run"
DEFAULT_PORT = 8081
# The Confluent-compatible API of Apicurio lives under this path of the server.
CCOMPAT_PATH = "/apis/ccompat/v7"

JAVA_REQUIRED = "Java 17+ is required to run the local Schema Registry: install a JDK 17+ or use docker compose."
MAVEN_REQUIRED = ("Maven (mvn) is required once to build the local Schema Registry: "
                  "install Maven or use docker compose.")

# One JVM with a modest heap: in-memory storage of a few schemas needs little.
JVM_FLAGS = ["-Xms64m", "-Xmx256m", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true"]


class RegistryLocalError(RuntimeError):
    """A failure explained by one sentence (printed as-is by the CLI)."""


def _say(msg: str) -> None:
    print(f"schema-registry: {msg}", file=sys.stderr, flush=True)


def registry_api_url(server_url: str) -> str:
    """The URL a Confluent client is given for a server: its ccompat API root."""
    return server_url.rstrip("/") + CCOMPAT_PATH


def registry_answers(api_url: str, timeout: float = 2.0) -> bool:
    """True if GET <api_url>/subjects answers 200 (the registry serves requests)."""
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/subjects", timeout=timeout) as reply:
            return reply.status == 200
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------

def _build_inputs() -> list[Path]:
    return sorted(p for p in BUILD_DIR.rglob("*") if p.is_file() and "target" not in p.relative_to(BUILD_DIR).parts)


def _stamp_text() -> str:
    digest = hashlib.sha256()
    for path in _build_inputs():
        digest.update(str(path.relative_to(BUILD_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return f"registry-build-sha256 {digest.hexdigest()}\n"


def runner() -> Path:
    """The registry built from the current registry/ files: a directory named by their hash holding
    the runner jar and the lib/ directory its manifest's class path points into."""
    return CACHE / f"registry-{_stamp_text().split()[-1][:16]}" / BUILT_JAR.name


def is_built() -> bool:
    """True if the build for the current registry/ files is in the cache."""
    return runner().is_file()


def ensure_built() -> bool:
    """Build the registry with Maven unless already built; returns True if it built now."""
    if is_built():
        return False
    mvn = shutil.which("mvn")
    if not mvn:
        raise RegistryLocalError(MAVEN_REQUIRED)
    HOME.mkdir(parents=True, exist_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    _say(f"building Apicurio Registry with Maven (once, a few minutes; log in {_show(BUILD_LOG)})")
    # `install` puts the stand-in build-step module into the build's own repository (CACHE/m2),
    # where the Quarkus packaging of the app module then finds it.
    cmd = [mvn, "-B", "-s", str(SETTINGS), f"-Dmaven.repo.local={MAVEN_REPO}", "-f", str(BUILD_DIR / "pom.xml"),
           "install"]
    with open(BUILD_LOG, "wb") as out:
        try:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                timeout=1800).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    if rc != 0 or not BUILT_JAR.is_file():
        raise RegistryLocalError(f"Maven could not build the local Schema Registry (see {_show(BUILD_LOG)}).")
    # Copied, then renamed: an interrupted copy never looks built.
    partial = runner().parent.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(BUILT_JAR.parent / "lib", partial / "lib")
    shutil.copyfile(BUILT_JAR, partial / BUILT_JAR.name)
    shutil.rmtree(runner().parent, ignore_errors=True)
    partial.replace(runner().parent)
    return True


def _java() -> str:
    try:
        return find_java()
    except KafkaLocalError:
        raise RegistryLocalError(JAVA_REQUIRED) from None


# --------------------------------------------------------------------------
# Process
# --------------------------------------------------------------------------

class LocalRegistry:
    """One registry JVM on 127.0.0.1, its pid, port and log kept in `state_dir`."""

    def __init__(self, state_dir: Path | str | None = None, port: int | None = None):
        self.state_dir = Path(state_dir) if state_dir else DEFAULT_STATE_DIR
        saved = self._load_state()
        self.port = port or (saved or {}).get("port") or DEFAULT_PORT

    @property
    def server_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """What clients are given (SCHEMA_REGISTRY_URL, --schema-registry): the ccompat API root."""
        return registry_api_url(self.server_url)

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "registry.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "registry.log"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "registry.json"

    def _load_state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    def pid(self) -> int | None:
        """The registry JVM's pid if it runs (a stale pid file, or a reused pid, is not it)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return pid if not sys.platform.startswith("linux") else None
        except OSError:
            return pid
        return pid if b"-runner.jar" in cmdline else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def status_line(self) -> str:
        pid = self.pid()
        if pid is None:
            return "schema-registry: not running"
        return f"schema-registry: running at {self.url} (pid {pid})"

    def start(self, timeout: float = 180.0) -> LocalRegistry:
        """Build if needed, launch, and wait until the ccompat API answers."""
        if self.is_running():
            return self
        java = _java()
        ensure_built()
        if not port_is_free(self.port):
            raise RegistryLocalError(f"port {self.port} on {HOST} is taken: stop what listens there "
                                     f"or pass another --port.")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [java, *JVM_FLAGS, f"-Dquarkus.http.host={HOST}", f"-Dquarkus.http.port={self.port}",
               "-jar", str(runner())]
        with open(self.log_file, "wb") as log:
            process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       cwd=self.state_dir, start_new_session=True)
        self.pid_file.write_text(f"{process.pid}\n")
        self.state_file.write_text(json.dumps({"port": self.port}) + "\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if registry_answers(self.url, timeout=1.0):
                return self
            if process.poll() is not None:
                raise RegistryLocalError(f"the Schema Registry exited during start-up ({self._last_error()}).")
            time.sleep(0.2)
        self.stop()
        raise RegistryLocalError(f"the Schema Registry did not answer on {self.url} within {timeout:.0f} s "
                                 f"(see {_show(self.log_file)}).")

    def _last_error(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return f"no log at {_show(self.log_file)}"
        for line in reversed(lines):
            if "ERROR" in line or "Exception" in line:
                return line.strip()[:300]
        return f"see {_show(self.log_file)}"

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop the JVM (SIGTERM, then SIGKILL); returns the pid it stopped, if any."""
        pid = self.pid()
        if pid is not None:
            _terminate([pid], timeout)
        self.pid_file.unlink(missing_ok=True)
        return pid

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_on_free_port(state_dir: Path, timeout: float = 180.0) -> LocalRegistry:
    """A registry of its own (tests): a port the OS says is free now."""
    return LocalRegistry(state_dir, free_port()).start(timeout)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orders_dlq.local_registry",
        description="Run a local Schema Registry (Apicurio Registry 2.4.2, in-memory, Confluent-compatible "
                    "API) on 127.0.0.1 without Docker.",
        epilog="example: python -m orders_dlq.local_registry start --port 8081")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def state_dir_arg(p):
        p.add_argument("--state-dir", type=Path, default=None,
                       help="pid file, port and log (default: <repo>/.registry/run)")

    p = sub.add_parser("start", help="build once if needed, then start the registry in the background")
    p.add_argument("--port", type=int, default=None, help=f"HTTP port (default {DEFAULT_PORT})")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for it (default 180)")
    state_dir_arg(p)
    p = sub.add_parser("stop", help="stop the registry started from the state dir")
    state_dir_arg(p)
    p = sub.add_parser("status", help="exit 0 if it runs and answers, 3 if not running")
    state_dir_arg(p)
    sub.add_parser("build", help="build the registry with Maven (once)")
    return parser


def _cmd_start(args) -> int:
    if args.port is not None and not 1 <= args.port <= 65535:
        raise RegistryLocalError(f"--port {args.port} is not a usable TCP port.")
    registry = LocalRegistry(args.state_dir, args.port or DEFAULT_PORT)
    if registry.is_running():
        registry = LocalRegistry(args.state_dir)  # the port it really uses
        _say("already running")
        print(registry.status_line())
        return 0
    if not port_is_free(registry.port) and registry_answers(registry.url, 3.0):
        # E.g. the docker compose service: the same registry on the same port, nothing to start.
        print(f"schema-registry: already answering at {registry.url} (not started here; nothing to do)")
        return 0
    began = time.monotonic()
    try:
        registry.start(timeout=args.timeout)
    except KeyboardInterrupt:
        registry.stop()
        raise RegistryLocalError("Start interrupted; the registry it launched was stopped.") from None
    _say(f"started in {time.monotonic() - began:.1f} s; log in {_show(registry.log_file)}")
    print(registry.status_line())
    return 0


def _cmd_stop(args) -> int:
    stopped = LocalRegistry(args.state_dir).stop()
    print(f"schema-registry: stopped (pid {stopped})" if stopped else "schema-registry: not running")
    return 0


def _cmd_status(args) -> int:
    registry = LocalRegistry(args.state_dir)
    print(registry.status_line())
    if not registry.is_running():
        return 3
    if not registry_answers(registry.url, 3.0):
        _say(f"the JVM runs but {registry.url} does not answer (starting up, or see {_show(registry.log_file)})")
        return 1
    return 0


def _cmd_build(_args) -> int:
    built = ensure_built()
    print(f"schema-registry: {'built' if built else 'already built'}: {_show(runner())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # usage errors: argparse exits with 2
    handler = {"start": _cmd_start, "stop": _cmd_stop, "status": _cmd_status, "build": _cmd_build}[args.command]
    return run_command(handler, args, RegistryLocalError)


if __name__ == "__main__":
    sys.exit(main())
