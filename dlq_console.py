#!/usr/bin/env python3
"""Work the DLQ in a browser: overview, list with the CLI's filters, each dead letter in detail, replay, resolve.

Serves a local web page (http://127.0.0.1:8765 by default) and prints its address with an access
token, once, like Jupyter: open that address, the token becomes a cookie. Every page and action
needs it; --read-only removes the actions (replay, resolve, export). The overview follows the DLQ
in the background with bounded memory; the list seeks by offset, so a DLQ of millions shows its
first page at once. Replays go through the same exactly-once replayer as dlq_replay.py, as group
<dlq-topic>.console, after a dry-run preview. Ends on Ctrl+C/SIGTERM or after --duration seconds.
"""

from __future__ import annotations

import orders_dlq.python_version  # noqa: F401  first: below Python 3.11, one sentence and exit 2

# isort: split

import contextlib
import socket
import threading

from orders_dlq import cli
from orders_dlq.errors import EXIT_OK, ToolFailure
from orders_dlq.kafka import require_cluster, require_topics
from orders_dlq.logs import log
from orders_dlq.marks import marks_topic
from orders_dlq.registry import add_registry_argument, registry_settings
from orders_dlq.replay import DEFAULT_MAX_REPLAYS
from orders_dlq.runtime import StopFlag
from orders_dlq.settings import kafka_settings, positive, setting

EXAMPLE = "python dlq_console.py --port 8765      # then open the printed http://127.0.0.1:8765/?token=... address"


def port_number(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be between 0 and 65535, got {raw}")
    return value


port_number.__name__ = "port"  # argparse names the type in its error


def build_parser():
    parser = cli.build_parser(__doc__.splitlines()[0], EXAMPLE)
    web = parser.add_argument_group("web")
    web.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1: this machine only)")
    web.add_argument("--port", type=port_number, default=8765,
                     help="port to listen on (default 8765; 0 picks a free one)")
    web.add_argument("--read-only", action="store_true",
                     help="show everything, change nothing: no replay, resolve or export")
    web.add_argument("--duration", type=positive(float), metavar="SECONDS",
                     help="stop serving after this many seconds (default: until Ctrl+C)")
    parser.add_argument("-g", "--group",
                        help="consumer group whose lag on the orders topic the overview shows "
                             "(env CONSUMER_GROUP, default order-aggregation-consumers)")
    parser.add_argument("--spool", help="spool file whose waiting dead letters the overview shows "
                                        "(env DLQ_SPOOL, default dlq-spool.sqlite3)")
    add_registry_argument(parser, shows_orders=True)
    parser.add_argument("--max-replays", type=positive(int),
                        help="loop guard of replays (env REPLAY_MAX_REPLAYS, "
                             f"default {DEFAULT_MAX_REPLAYS}), as in dlq_replay.py")
    return parser


def listen(host: str, port: int) -> socket.socket:
    """Bind before anything is served, so a port in use is one sentence, not a server's traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ToolFailure(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


def main(argv=None) -> int:
    args = cli.parse_args(build_parser(), argv)
    settings = kafka_settings(args)
    # Imported here: --help and usage errors stay fast and need no web stack.
    import uvicorn

    from orders_dlq.console.app import Console, ConsoleConfig, build_app

    config = ConsoleConfig(
        settings=settings,
        read_only=args.read_only,
        consumer_group=setting(args, "group", "CONSUMER_GROUP", "order-aggregation-consumers"),
        spool_path=setting(args, "spool", "DLQ_SPOOL", "dlq-spool.sqlite3"),
        max_replays=setting(args, "max_replays", "REPLAY_MAX_REPLAYS", DEFAULT_MAX_REPLAYS, positive(int)),
        registry=registry_settings(args),
    )
    admin = require_cluster(settings)
    require_topics(admin, [settings.dlq_topic])
    if marks_topic(settings.dlq_topic) not in admin.list_topics(timeout=10).topics:
        log.warning("%s does not exist: every dead letter shows as open and resolving is refused "
                    "(run `python setup_dlq.py` to create it)", marks_topic(settings.dlq_topic))
    sock = listen(args.host, args.port)
    console = Console(config)
    stop = StopFlag().install()

    class ConsoleServer(uvicorn.Server):
        """uvicorn, stopped by our StopFlag like every script (exit 0), not by re-raising the signal."""

        @contextlib.contextmanager
        def capture_signals(self):
            yield

        async def on_tick(self, counter: int) -> bool:
            if stop:
                self.should_exit = True
            return await super().on_tick(counter)

    server = ConsoleServer(uvicorn.Config(build_app(console), log_level="warning", access_log=False, lifespan="on"))
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"dlq_console: {settings.dlq_topic} at http://{shown}:{port}/?token={console.token}"
          + ("  (read-only)" if args.read_only else ""), flush=True)
    if args.duration:
        timer = threading.Timer(args.duration, lambda: setattr(server, "should_exit", True))
        timer.daemon = True
        timer.start()
    server.run(sockets=[sock])
    return EXIT_OK


if __name__ == "__main__":
    cli.run(main)
