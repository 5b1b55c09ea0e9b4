"""One logger for the whole toolkit, on stderr (stdout is for data), and librdkafka's beside it."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("orders_dlq")


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
