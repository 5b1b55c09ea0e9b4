"""Settings resolved once, in one order: flag, then environment (and .env), then default."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from dotenv import find_dotenv, load_dotenv
from dotenv.parser import parse_stream

from orders_dlq.errors import UsageError

# Client properties whose values must never reach a log line or a summary.
SECRET_MARKERS = ("password", "secret", "token", "key.pem", "private.key", "sasl.jaas")


T = TypeVar("T")


@dataclass
class KafkaSettings:
    """Where to talk to Kafka, resolved once: flag, then environment (.env), then default."""

    bootstrap_servers: str
    topic: str
    dlq_topic: str
    client_overrides: dict[str, str] = field(default_factory=dict)
    # How dead letters are written (see orders_dlq/dead_letter.py): "envelope" (our Avro record) or
    # "original" (the original bytes as the value, the context in Spring's and Connect's headers).
    dlq_format: str = "envelope"

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
    dlq_format = setting(args, "dlq_format", "DLQ_FORMAT", "envelope", dlq_format_choice)
    return KafkaSettings(bootstrap, topic, dlq_topic, overrides, dlq_format)


DLQ_FORMATS = ("envelope", "original")


def dlq_format_choice(raw: str) -> str:
    """DLQ_FORMAT: one of DLQ_FORMATS (the flag's own choices are checked by argparse)."""
    if raw not in DLQ_FORMATS:
        raise ValueError(f"must be one of {', '.join(DLQ_FORMATS)}")
    return raw


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


def _finite_number(kind: type, name: str, accepts: Callable[[float], bool], rule: str):
    """An argparse/env parser for a finite number of `kind` that `accepts` (NaN never does)."""
    def parse(raw):
        value = kind(raw)
        if not accepts(value):
            raise ValueError(f"{rule}, got {raw}")
        if value == math.inf:
            raise ValueError(f"must be finite, got {raw}")
        return value
    parse.__name__ = f"{name} {kind.__name__}"
    return parse


def positive(kind: type):
    """A number > 0."""
    return _finite_number(kind, "positive", lambda value: value > 0, "must be greater than 0")


def non_negative(kind: type):
    """A number >= 0."""
    return _finite_number(kind, "non-negative", lambda value: value >= 0, "must not be negative")


def ratio(raw) -> float:
    """An argparse/env parser for a share between 0 and 1."""
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be between 0 and 1, got {raw}")
    return value
