#!/usr/bin/env python3
"""Replay dead letters: send the selected originals back to their topic, each exactly once, resumably.

Selects dead letters by reason, stage, product, original topic, time or DLQ offset, and sends each
one's original key, value, headers (and timestamp) back to its original topic, or to --to TOPIC,
with a dlq.replay.count header. A message that has already been replayed --max-replays times stays
in the DLQ and is reported ("held") instead of going round forever.

Progress is the consumer group's position on the DLQ (-g, default <dlq-topic>.replayer), committed
in the same Kafka transaction as the republished messages: an interrupted replay (Ctrl+C, crash,
SIGKILL) continues where it stopped when run again, and sends nothing twice. That position is a
cursor: dead letters the selection passes over are behind it afterwards too, so a later replay in
the same group with another selection will not see them (use another -g, or --from-beginning).
Preview a selection with --dry-run, which sends and commits nothing.

A message replayed to its original topic goes to its original partition (whatever partitioner its
producer used). Replays are written in transactions: consumers of the target must read with
isolation.level=read_committed (consumer_aggregation.py does) not to see a batch a crash aborted.
A replay ends by itself at the end of the DLQ as it was when it started.

Every replayed dead letter is marked `replayed` in the marks topic <dlq>.status, in the same
transaction; one marked replayed, resolved or discarded is not sent again without --force.
--resolve (with --note, --by) and --discard mark the selected open dead letters instead of
sending them, so that statistics and alerts stop counting them; --dry-run lists them first.
--from-file FILE sends the orders of a `dlq_consumer.py --export` file after editing, each checked
against the order schema and rules first (one bad line refuses the file, naming the line), with a
dlq.replay.of header naming its dead letter, and marks those dead letters replayed, exactly once.
"""

from __future__ import annotations

import orders_dlq.python_version  # noqa: F401  first: below Python 3.11, one sentence and exit 2

# isort: split

import getpass
import json
from pathlib import Path

from orders_dlq import cli
from orders_dlq.errors import EXIT_FAILURE, EXIT_OK, UsageError
from orders_dlq.kafka import require_cluster, require_topics
from orders_dlq.logs import log
from orders_dlq.marks import DISCARDED, OPEN, RESOLVED
from orders_dlq.orders import CATALOGUE
from orders_dlq.registry import add_registry_argument, show_original_orders
from orders_dlq.replay import (
    DEFAULT_MAX_REPLAYS,
    Decision,
    Replayer,
    ReplayOptions,
    mark_selection,
    replay_from_file,
    validate_options,
)
from orders_dlq.runtime import StopFlag
from orders_dlq.selection import add_selection_arguments, selection_from_args
from orders_dlq.settings import kafka_settings, positive, setting

EXAMPLE = ('python dlq_replay.py --reason "unknown product" --dry-run     # then again without --dry-run\n'
           '  python dlq_replay.py --stage deserialize --resolve --note "old producer, gone" --dry-run\n'
           '  python dlq_replay.py --from-file fix.jsonl   # edited from dlq_consumer.py --export fix.jsonl')


def build_parser():
    parser = cli.build_parser(__doc__, EXAMPLE)
    add_selection_arguments(parser, offsets=True, status_default=None)
    what = parser.add_argument_group("instead of replaying").add_mutually_exclusive_group()
    what.add_argument("--resolve", action="store_true",
                      help="mark the selected dead letters resolved (default --status open) instead of sending them")
    what.add_argument("--discard", action="store_true",
                      help="mark the selected dead letters discarded on purpose (default --status open)")
    what.add_argument("--from-file", metavar="FILE.jsonl", type=Path,
                      help="send the edited orders of a dlq_consumer.py --export file (the selection flags do "
                           "not apply); a line that fails the order schema or rules refuses the whole file")
    marking = parser.add_argument_group("marks")
    marking.add_argument("--note", default="", help="with --resolve/--discard: why, kept with the mark")
    marking.add_argument("--by", help="with --resolve/--discard: who (default: the operating system user)")
    marking.add_argument("--products",
                         help="with --from-file: comma-separated products an edited order may name (env PRODUCTS, "
                              "default: the catalogue)")
    replay = parser.add_argument_group("replay")
    replay.add_argument("--to", dest="to_topic", metavar="TOPIC",
                        help="send every selected message to this topic instead of its original topic")
    replay.add_argument("--dry-run", action="store_true",
                        help="list what would be sent, one line per selected dead letter; send and commit nothing")
    replay.add_argument("--force", action="store_true",
                        help="also send dead letters the marks topic (<dlq>.status) says were replayed, resolved "
                             "or discarded (a replay selects --status all by default and passes those over)")
    replay.add_argument("--max-replays", type=positive(int),
                        help="loop guard: a message already replayed this many times is held, not sent "
                             f"(env REPLAY_MAX_REPLAYS, default {DEFAULT_MAX_REPLAYS})")
    replay.add_argument("--rate", type=positive(float), metavar="PER-SECOND",
                        help="send at most this many messages per second (env REPLAY_RATE, default unlimited)")
    replay.add_argument("-c", "--count", "--limit", dest="limit", metavar="N", type=positive(int),
                        help="stop after this many selected dead letters (a rerun continues after them; "
                             "--limit is the older name)")
    replay.add_argument("-g", "--group",
                        help="consumer group holding the replay's progress (env REPLAY_GROUP, "
                             "default <dlq-topic>.replayer)")
    replay.add_argument("--from-beginning", action="store_true",
                        help="start at the beginning of the DLQ instead of the group's position (not to "
                             "resume an interrupted replay: that is what a plain rerun does)")
    replay.add_argument("--batch-size", type=positive(int),
                        help="dead letters per transaction at most (default 500)")
    replay.add_argument("--commit-interval-ms", type=positive(int),
                        help="commit a batch at least this often (default 1000)")
    replay.add_argument("--delivery-timeout", type=positive(float),
                        help="seconds a replayed message may take to be acknowledged (env DELIVERY_TIMEOUT, "
                             "default 30)")
    parser.add_argument("--json", action="store_true",
                        help="print only a JSON summary (with --dry-run it includes the listing)")
    add_registry_argument(parser, shows_orders=True)
    return parser


SELECTION_DESTS = ("reason", "stage", "product", "original_topic", "key", "order_id", "header", "grep", "status",
                   "since", "until", "from_time", "from_offset", "to_offset")


def who(args) -> str:
    if args.by:
        return args.by
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment (a container without one)
        return "unknown"


def main(argv=None) -> int:
    args = cli.parse_args(build_parser(), argv)
    if (args.note or args.by) and not (args.resolve or args.discard):
        raise UsageError("--note and --by go with --resolve or --discard")
    if args.from_file and any(getattr(args, name) for name in SELECTION_DESTS):
        raise UsageError("--from-file replays the lines of its file: the selection flags do not apply")
    settings = kafka_settings(args)
    marking = RESOLVED if args.resolve else DISCARDED if args.discard else None
    selection = selection_from_args(args, status=OPEN if marking else None)
    stop = StopFlag()
    if marking:
        require_topics(require_cluster(settings), [settings.dlq_topic])
        stop.install()

        def listed(position, dead_letter):
            if args.dry_run and not args.json:
                print(f"{position}  {dead_letter.error_stage}: {dead_letter.error_reason}  "
                      f"order {dead_letter.order_id or '-'}", flush=True)

        result = mark_selection(settings, selection, marking, who(args), args.note, args.dry_run, args.limit,
                                stop, listed)
        print(json.dumps(result.to_json()) if args.json else result.text())
        return EXIT_FAILURE if stop else EXIT_OK
    group = setting(args, "group", "REPLAY_GROUP", f"{settings.dlq_topic}.replayer")
    options = ReplayOptions(
        selection=selection,
        group=group,
        to_topic=args.to_topic,
        max_replays=setting(args, "max_replays", "REPLAY_MAX_REPLAYS", DEFAULT_MAX_REPLAYS, positive(int)),
        rate=setting(args, "rate", "REPLAY_RATE", None, positive(float)),
        limit=args.limit,
        dry_run=args.dry_run,
        force=args.force,
        from_beginning=args.from_beginning,
        batch_size=args.batch_size or 500,
        commit_interval=(args.commit_interval_ms or 1000) / 1000,
        delivery_timeout=setting(args, "delivery_timeout", "DELIVERY_TIMEOUT", 30.0, positive(float)),
    )
    validate_options(options, settings.dlq_topic)
    admin = require_cluster(settings)
    require_topics(admin, [settings.dlq_topic])
    stop.install()
    if args.from_file:
        products = setting(args, "products", "PRODUCTS", ",".join(CATALOGUE))
        products = frozenset(p.strip() for p in products.split(",") if p.strip())
        result = replay_from_file(settings, args.from_file, options, products, stop)
        print(json.dumps(result.to_json()) if args.json else result.text())
        return EXIT_FAILURE if stop else EXIT_OK

    def report(decision: Decision) -> None:
        if args.dry_run and not args.json:
            print(decision.describe(), flush=True)
        elif not args.dry_run and decision.action != "replay":
            log.warning("%s", decision.describe())

    replayer = Replayer(settings, options, stop=stop, on_decision=report)
    show_original_orders(args, replayer, settings.topic)
    result = replayer.run()
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(result.text())
    if result.held:
        log.warning("%d dead letter(s) held by the loop guard (--max-replays %d): they stay in %s",
                    result.held, options.max_replays, settings.dlq_topic)
    return EXIT_FAILURE if stop else EXIT_OK


if __name__ == "__main__":
    cli.run(main)
