"""The command-line layer every script shares: its parser, and one sentence and an exit code per failure."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException

from orders_dlq.errors import EXIT_FAILURE, EXIT_USAGE, ToolFailure, UsageError
from orders_dlq.logs import setup_logging
from orders_dlq.settings import load_env_file


class ArgumentParser(argparse.ArgumentParser):
    """argparse that ends a usage error in one sentence and exit code 2, without the usage dump."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


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


def add_dlq_format_argument(parser: argparse.ArgumentParser) -> None:
    """--dlq-format, for the scripts that write dead letters."""
    parser.add_argument("--dlq-format", choices=("envelope", "original"),
                        help="how dead letters are written (env DLQ_FORMAT, default envelope): envelope = our "
                             "Avro DeadLetter record; original = the original message's bytes unchanged, the "
                             "context in Spring's kafka_dlt-* and Connect's __connect.errors.* headers, e.g. "
                             "--dlq-format original")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line after loading .env, so the environment layer is complete."""
    load_env_file()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return args


# A full disk, a file-size limit, a full quota.
NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


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
    except OSError as exc:
        if exc.errno not in NO_ROOM:
            raise
        # The disk under our output (or a file we write) is full: one sentence, and no second
        # failure when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"error: no room left to write ({exc.strerror}): free space on the disk that holds the output "
              "or the file being written", file=sys.stderr)
        code = EXIT_FAILURE
    sys.exit(code)
