"""What every script shares: options, .env layering, client configs, logging, exit codes, stop flag."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException
from dotenv import find_dotenv, load_dotenv
from dotenv.parser import parse_stream

log = logging.getLogger("orders_dlq")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# Client properties whose values must never reach a log line or a summary.
SECRET_MARKERS = ("password", "secret", "token", "key.pem", "private.key", "sasl.jaas")


class UsageError(Exception):
    """The operator asked for something impossible: bad flag, bad .env value, missing schema. Exit 2."""


class ToolFailure(Exception):
    """The run could not do its job: unreachable broker, missing topic, fenced. Exit 1."""


T = TypeVar("T")


@dataclass
class KafkaSettings:
    """Where to talk to Kafka, resolved once: flag, then environment (.env), then default."""

    bootstrap_servers: str
    topic: str
    dlq_topic: str
    client_overrides: dict[str, str] = field(default_factory=dict)

    def client_config(self, **settings) -> dict:
        """A librdkafka config: our settings, then the operator's -X overrides (they win)."""
        config = {"bootstrap.servers": self.bootstrap_servers, **settings}
        config.update(self.client_overrides)
        return config


def redact(config: dict) -> dict:
    """A copy of a client config that is safe to print."""
    return {
        key: ("***" if any(marker in key for marker in SECRET_MARKERS) else value)
        for key, value in config.items()
        if not callable(value) and not isinstance(value, logging.Logger)
    }


class ArgumentParser(argparse.ArgumentParser):
    """argparse that ends a usage error in one sentence and exit code 2, without the usage dump."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(description: str, example: str) -> ArgumentParser:
    """The options every script takes: -b, -t, --dlq-topic, -X, -v."""
    parser = ArgumentParser(
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kafka = parser.add_argument_group("Kafka")
    kafka.add_argument("-b", "--bootstrap-servers", metavar="HOST:PORT",
                       help="brokers (env KAFKA_BOOTSTRAP_SERVERS, default localhost:9092)")
    kafka.add_argument("-t", "--topic", help="orders topic (env ORDERS_TOPIC, default orders)")
    kafka.add_argument("--dlq-topic", help="dead letter topic (env DLQ_TOPIC, default <topic>.DLQ)")
    kafka.add_argument("-X", dest="client_overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="any librdkafka client property, e.g. -X security.protocol=SASL_SSL "
                            "(env KAFKA_CLIENT_CONFIG: comma-separated KEY=VALUE pairs); repeatable")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line after loading .env, so the environment layer is complete."""
    load_env_file()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return args


def load_env_file() -> None:
    """Load the nearest .env; a line python-dotenv cannot parse is a usage error, not a skipped warning."""
    path = find_dotenv(usecwd=True)
    if not path:
        return
    with open(path, encoding="utf-8") as stream:
        bad = [binding.original.line for binding in parse_stream(stream) if binding.error]
    if bad:
        # Never echo the line itself: it may hold a password.
        raise UsageError(f"{path} line {bad[0]} is not of the form KEY=VALUE (an unclosed quote?)")
    load_dotenv(path, override=False)


def setting(args, name: str, env: str, default: T, parse: Callable[[str], T] = str) -> T:
    """Flag beats environment beats default; a bad environment value is a usage error."""
    value = getattr(args, name, None)
    if value is not None:
        return value
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        return parse(raw)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{env}={raw!r} (from the environment or .env) is not valid: {exc}") from None


def kafka_settings(args) -> KafkaSettings:
    """Resolve the connection options shared by every script."""
    bootstrap = setting(args, "bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
    topic = setting(args, "topic", "ORDERS_TOPIC", "orders")
    dlq_topic = setting(args, "dlq_topic", "DLQ_TOPIC", f"{topic}.DLQ")
    for name, value in (("-b/--bootstrap-servers (KAFKA_BOOTSTRAP_SERVERS)", bootstrap),
                        ("-t/--topic (ORDERS_TOPIC)", topic), ("--dlq-topic (DLQ_TOPIC)", dlq_topic)):
        if not value or any(ch.isspace() for ch in value):
            raise UsageError(f"{name} {value!r} is empty or contains spaces")
    if topic == dlq_topic:
        raise UsageError(f"--dlq-topic (DLQ_TOPIC) must differ from -t/--topic (ORDERS_TOPIC): both are {topic!r}")
    env_pairs = os.environ.get("KAFKA_CLIENT_CONFIG", "").split(",")
    overrides = parse_client_overrides([pair for pair in env_pairs if pair.strip()], "KAFKA_CLIENT_CONFIG")
    overrides.update(parse_client_overrides(args.client_overrides, "-X"))
    return KafkaSettings(bootstrap, topic, dlq_topic, overrides)


def state_topic_setting(args, settings: KafkaSettings) -> str:
    """--state-topic / STATE_TOPIC: a topic of its own, never the orders topic or the DLQ."""
    name = setting(args, "state_topic", "STATE_TOPIC", f"{settings.topic}.aggregates")
    if not name or any(ch.isspace() for ch in name):
        raise UsageError(f"--state-topic (STATE_TOPIC) {name!r} is empty or contains spaces")
    if name in (settings.topic, settings.dlq_topic):
        raise UsageError(f"--state-topic (STATE_TOPIC) must differ from the orders and DLQ topics, got {name!r}")
    return name


def parse_client_overrides(pairs: list[str], origin: str) -> dict[str, str]:
    """KEY=VALUE strings into a dict, refusing anything without a key and an '='."""
    overrides = {}
    for number, pair in enumerate(pairs, 1):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            # Never echo what was given: it may be (part of) a password.
            where = f"item {number} of {origin} (comma-separated; use -X for values with commas)" \
                if origin != "-X" else f"-X number {number}"
            raise UsageError(f"{where} is not of the form KEY=VALUE")
        overrides[key.strip()] = value
    return overrides


def positive(kind: type):
    """An argparse/env parser for a number > 0."""
    def parse(raw):
        value = kind(raw)
        if not value > 0:  # also refuses NaN
            raise ValueError(f"must be greater than 0, got {raw}")
        if value == math.inf:
            raise ValueError(f"must be finite, got {raw}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def non_negative(kind: type):
    """An argparse/env parser for a number >= 0."""
    def parse(raw):
        value = kind(raw)
        if not value >= 0:  # also refuses NaN
            raise ValueError(f"must not be negative, got {raw}")
        if value == math.inf:
            raise ValueError(f"must be finite, got {raw}")
        return value
    parse.__name__ = f"non-negative {kind.__name__}"
    return parse


def ratio(raw) -> float:
    """An argparse/env parser for a share between 0 and 1."""
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be between 0 and 1, got {raw}")
    return value


class LogFormatter(logging.Formatter):
    def format(self, record):
        return f"{self.formatTime(record, '%H:%M:%S')} {record.levelname.lower():7} {record.getMessage()}"


def setup_logging(verbose: bool) -> None:
    """One logger, one format, on stderr (stdout is for data)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def librdkafka_logger() -> logging.Logger:
    """librdkafka's own log lines: kept at debug, since error_cb reports what matters once."""
    rdkafka = logging.getLogger("orders_dlq.librdkafka")
    rdkafka.setLevel(logging.DEBUG if log.level <= logging.DEBUG else logging.CRITICAL)
    return rdkafka


class StopFlag:
    """SIGINT/SIGTERM ask the loop to finish its work and stop; a second Ctrl+C kills at once."""

    def __init__(self):
        self.requested = False
        self.signal_name = ""

    def install(self) -> StopFlag:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, _frame):
        if self.requested and signum == signal.SIGINT:
            log.warning("second interrupt: exiting immediately")
            os._exit(130)
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.info("%s received: finishing in-flight work, then stopping (Ctrl+C again to kill)", self.signal_name)

    def __bool__(self):
        return self.requested


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run a script's main and turn our exceptions into one sentence and an exit code."""
    try:
        code = main(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except ToolFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_FAILURE
    except KafkaException as exc:
        error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if error is None or error.code() != KafkaError._INVALID_ARG:
            raise
        # librdkafka refused a client property when a client was created: the operator's -X settings.
        print(f"error: a Kafka client setting (-X or KAFKA_CLIENT_CONFIG) is not valid: {error.str()}",
              file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # Whoever read our stdout went away (`| head`): stop quietly, without a traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_FAILURE
    sys.exit(code)


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal; redrawn at most 10 times a second."""

    def __init__(self, total: int | None, label: str):
        self.total = total
        self.label = label
        self.enabled = sys.stderr.isatty()
        self.started = self._last = time.monotonic()

    def update(self, done: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        rate = done / max(now - self.started, 1e-9)
        if self.total:
            filled = int(30 * done / self.total)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}"
        else:
            bar = f"{done}"
        sys.stderr.write(f"\r{self.label} {bar} {rate:,.0f}/s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
