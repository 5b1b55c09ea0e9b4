"""Replay (redrive): send selected dead letters' original messages back to a topic, each exactly once.

The replayer reads the DLQ as consumer group `<dlq-topic>.replayer` (by default) from that group's
committed position to the end of the DLQ as it was when the run started, and works in batches.
Each batch is one Kafka transaction of a producer whose transactional.id is derived from the group:

    begin_transaction -> produce the originals -> send_offsets_to_transaction(DLQ offsets) -> commit

So the republished messages and the replayer's progress become visible together or not at all: a
replay killed at any point (even SIGKILL) sends nothing twice and skips nothing when it is rerun,
since the rerun fences its dead predecessor (same transactional.id), which aborts its open batch.

The group's position is a redrive cursor over the whole DLQ: a dead letter the selection does not
match is passed over and the cursor moves beyond it all the same. A later replay with another
selection in the same group does not see it again; use another --group (or --from-beginning) for
that, and --dry-run to preview a selection. Dead letters held by the loop guard, and those that
cannot be replayed (no original value), are passed over the same way and reported.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from orders_dlq import reading, transactions
from orders_dlq.codec import dead_letter_codec
from orders_dlq.dead_letter import (
    REPLAY_COUNT_HEADER,
    DeadLetter,
    DeadLetterCodec,
    without_error_context,
)
from orders_dlq.errors import ToolFailure, UsageError
from orders_dlq.kafka import admin_client, reader_config, reliable_producer_config
from orders_dlq.logs import log
from orders_dlq.marks import REPLAYED, Mark, mark_key, marks_topic, now_iso, read_marks, write_marks
from orders_dlq.monitor import describe, start_positions
from orders_dlq.runtime import Progress, StopFlag
from orders_dlq.selection import Selection, UnreadableRecord, error_time, read_dead_letter
from orders_dlq.settings import KafkaSettings

DEFAULT_MAX_REPLAYS = 3

REPLAY, HELD, UNREPLAYABLE, ALREADY_REPLAYED = "replay", "held", "unreplayable", "already_replayed"
ALREADY_HANDLED = "already_handled"  # resolved or discarded by an operator
# A group coordinator that is moving or loading: the question is answered later, not never.
COORDINATOR_NOT_READY = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                         KafkaError.COORDINATOR_NOT_AVAILABLE}


def replay_headers(dead_letter: DeadLetter) -> list[tuple[str, bytes | None]]:
    """The original headers without any error context, plus the new replay count."""
    replayed = (REPLAY_COUNT_HEADER, str(dead_letter.replay_count + 1).encode())
    return [*without_error_context(dead_letter.original_headers), replayed]


@dataclass
class ReplayOptions:
    selection: Selection
    group: str
    to_topic: str | None = None
    max_replays: int = DEFAULT_MAX_REPLAYS
    rate: float | None = None           # messages per second
    limit: int | None = None            # selected dead letters
    dry_run: bool = False
    force: bool = False                 # replay even what the marks say was replayed, resolved or discarded
    from_beginning: bool = False
    batch_size: int = 500
    commit_interval: float = 1.0
    delivery_timeout: float = 30.0
    idle_timeout: float = 60.0          # no DLQ message at all for this long: give up


@dataclass
class Decision:
    """What the replay does (or, dry run, would do) with one selected dead letter."""

    position: str
    action: str
    dead_letter: DeadLetter
    target: str | None = None
    why: str = ""

    def to_json(self) -> dict:
        return {"position": self.position, "action": self.action, "target": self.target,
                "why": self.why or None, "original_topic": self.dead_letter.original_topic,
                "order_id": self.dead_letter.order_id, "product": self.dead_letter.product,
                "error_stage": self.dead_letter.error_stage, "error_reason": self.dead_letter.error_reason,
                "replay_count": self.dead_letter.replay_count}

    def describe(self) -> str:
        what = f"replay -> {self.target}" if self.action == REPLAY else f"{self.action} ({self.why})"
        return describe(self.dead_letter, f"{self.position}  {what} ", error_time(self.dead_letter, None))


@dataclass
class ReplayResult:
    dry_run: bool
    group: str
    dlq_topic: str
    scanned: int = 0
    selected: int = 0
    replayed: int = 0          # confirmed: committed in a transaction together with the cursor
    would_replay: int = 0      # dry run only
    skipped: int = 0           # did not match the selection
    held: int = 0              # loop guard
    unreplayable: int = 0      # selected, but nothing to send (no original value)
    unreadable: int = 0        # not a dead letter at all
    already_replayed: int = 0  # selected, but the marks say it was replayed before (no --force)
    already_handled: int = 0   # selected, but marked resolved or discarded (no --force)
    targets: dict[str, int] = field(default_factory=dict)
    held_at: list[str] = field(default_factory=list)
    unreplayable_at: list[str] = field(default_factory=list)
    listing: list[Decision] = field(default_factory=list)
    reached_end: bool = False
    stopped_by: str | None = None
    elapsed_seconds: float = 0.0

    def to_json(self) -> dict:
        data = {name: getattr(self, name) for name in (
            "dry_run", "group", "dlq_topic", "scanned", "selected", "replayed", "would_replay", "skipped", "held",
            "unreplayable", "unreadable", "already_replayed", "already_handled", "targets", "held_at",
            "unreplayable_at", "reached_end", "stopped_by")}
        data["elapsed_seconds"] = round(self.elapsed_seconds, 3)
        if self.dry_run:
            data["listing"] = [decision.to_json() for decision in self.listing]
        return data

    def text(self) -> str:
        sent = f"would replay {self.would_replay}" if self.dry_run else f"replayed {self.replayed}"
        lines = [f"{'dry run: ' if self.dry_run else ''}scanned {self.scanned} message(s) of {self.dlq_topic} "
                 f"as group {self.group}: selected {self.selected}, {sent}, held {self.held} (loop guard), "
                 f"unreplayable {self.unreplayable}, already replayed {self.already_replayed}, "
                 f"resolved or discarded {self.already_handled}, "
                 f"skipped {self.skipped} (not selected)"
                 + (f", unreadable {self.unreadable}" if self.unreadable else "")]
        lines += [f"  {count:>7}  -> {topic}" for topic, count in sorted(self.targets.items())]
        if not self.reached_end:
            lines.append(f"stopped before the end of the DLQ ({self.stopped_by}); "
                         + ("run again to preview the rest" if self.dry_run else "run again to continue"))
        return "\n".join(lines)


class Replayer:
    def __init__(self, settings: KafkaSettings, options: ReplayOptions, stop: StopFlag | None = None,
                 on_decision: Callable[[Decision], None] | None = None):
        self.settings = settings
        self.options = options
        self.stop = stop if stop is not None else StopFlag()  # not `or`: an unset StopFlag is falsy
        self.on_decision = on_decision
        self.dlq_topic = settings.dlq_topic
        self.codec = DeadLetterCodec(dead_letter_codec())
        self.admin = admin_client(settings)
        self.target_partitions: dict[str, int] = {}
        self.result = ReplayResult(options.dry_run, options.group, settings.dlq_topic)
        self.consumer = Consumer(reader_config(settings, options.group))
        self.producer: Producer | None = None
        if not options.dry_run:
            self.producer = Producer(reliable_producer_config(settings, options.delivery_timeout, **{
                # Stable per group: a rerun fences a killed replayer and aborts its open batch at once.
                "transactional.id": transactional_id(options.group),
                "transaction.timeout.ms": 60000,
            }))
        # The open batch (one transaction).
        self.in_transaction = False
        self.batch_started = 0.0
        self.batch_messages = 0
        self.batch_offsets: dict[int, int] = {}
        self.batch_targets: dict[str, int] = {}
        self.batch_held: list[str] = []
        self.batch_unreplayable: list[str] = []
        self.batch_counts = dict.fromkeys(("scanned", "selected", "replayed", "would_replay", "skipped", "held",
                                           "unreplayable", "unreadable", "already_replayed",
                                           "already_handled"), 0)
        self.marks_topic = marks_topic(self.dlq_topic)
        self.marks: dict[bytes, Mark] = {}  # read from the marks topic at start, grown by this run
        self.delivery_errors = transactions.DeliveryErrors()
        self.pace_started: float | None = None
        self.paced = 0

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> ReplayResult:
        started = time.monotonic()
        try:
            if self.producer is not None:
                transactions.init_transactions(self.producer, "the replay")
            if self.options.to_topic:
                self._target_partitions(self.options.to_topic)
            self.marks = read_marks(self.settings, self.dlq_topic)
            self._loop(*self._bounds())
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            raise ToolFailure(f"the replay stopped on a Kafka error ({error.str() if error else exc}); nothing "
                              "of the open batch was sent and a rerun continues where this one stopped") from None
        finally:
            self.result.elapsed_seconds = time.monotonic() - started
            self.close()
        return self.result

    def close(self) -> None:
        if self.in_transaction and self.producer is not None:
            try:
                transactions.abort_transaction(self.producer, timeout=10)
            except KafkaException:
                pass  # a transaction never committed is aborted by its coordinator in the end
            self.in_transaction = False
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing the DLQ reader: %s", exc)

    def _committed(self, partitions: list[int], timeout: float = 30.0) -> list[TopicPartition]:
        """The group's committed offsets. Right after a broker starts, the coordinator of the group
        may still be elected or loading __consumer_offsets: librdkafka then answers at once with
        NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS instead of waiting, so ask again until it is ready."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.consumer.committed([TopicPartition(self.dlq_topic, p) for p in partitions],
                                               timeout=max(1.0, deadline - time.monotonic()))
            except KafkaException as exc:
                if exc.args[0].code() not in COORDINATOR_NOT_READY or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _bounds(self) -> tuple[dict[int, int], dict[int, int]]:
        """Where each DLQ partition starts (the group's cursor) and ends (its end right now)."""
        metadata = self.consumer.list_topics(self.dlq_topic, timeout=10).topics.get(self.dlq_topic)
        if metadata is None or metadata.error is not None:
            raise ToolFailure(f"topic {self.dlq_topic} does not exist: run `python setup_dlq.py` first")
        partitions = sorted(metadata.partitions)
        try:
            committed = {} if self.options.from_beginning else {
                tp.partition: tp.offset for tp in self._committed(partitions)}
            starts, ends = {}, {}
            for partition in partitions:
                low, high = self.consumer.get_watermark_offsets(TopicPartition(self.dlq_topic, partition),
                                                                timeout=10)
                start = committed.get(partition, -1)
                if start > high:
                    log.warning("group %s is at %s[%d]@%d, beyond its end %d (was the DLQ recreated? "
                                "--from-beginning starts over)", self.options.group, self.dlq_topic, partition,
                                start, high)
                starts[partition] = max(start, low)
                ends[partition] = high
        except KafkaException as exc:
            raise ToolFailure(f"cannot read the position of group {self.options.group} on {self.dlq_topic}: "
                              f"{exc.args[0].str()}") from None
        log.info("%s %s as group %s: %s", "previewing" if self.options.dry_run else "replaying", self.dlq_topic,
                 self.options.group,
                 ", ".join(f"[{p}] {starts[p]}..{ends[p]}" for p in partitions) or "no partitions")
        return starts, ends

    def _loop(self, starts: dict[int, int], ends: dict[int, int]) -> None:
        pending = {p for p in starts if starts[p] < ends[p]}
        total = sum(max(0, ends[p] - starts[p]) for p in starts)
        progress = Progress(total, "dry run" if self.options.dry_run else "replaying")
        if pending:
            self.consumer.assign([TopicPartition(self.dlq_topic, p, starts[p]) for p in sorted(pending)])
        last_message = time.monotonic()
        try:
            while pending and not self.result.stopped_by:
                if self.stop:
                    self.result.stopped_by = f"{self.stop.signal_name or 'stop'} received"
                    break
                messages = self.consumer.consume(self.options.batch_size, timeout=0.2)
                if messages:
                    last_message = time.monotonic()
                elif time.monotonic() - last_message > self.options.idle_timeout:
                    raise ToolFailure(f"no message from {self.dlq_topic} for {self.options.idle_timeout:g}s "
                                      f"although partition(s) {sorted(pending)} are not read to their end")
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.discard(message.partition())
                            continue
                        if error.fatal():
                            raise ToolFailure(f"reading {self.dlq_topic}: {error.str()}")
                        log.warning("reading %s: %s", self.dlq_topic, error.str())
                        continue
                    partition = message.partition()
                    if partition not in pending:
                        continue
                    if message.offset() >= ends[partition]:
                        pending.discard(partition)  # arrived after the start: the next replay's work
                        continue
                    self._handle(message)
                    progress.update(self.result.scanned + self.batch_counts["scanned"])
                    if self.stop or self.result.stopped_by or self._batch_due():
                        self._commit()
                    if self.stop or self.result.stopped_by:
                        break
                if self._batch_due(idle=not messages):
                    self._commit()
            self._commit()
            self.result.reached_end = not pending
        finally:
            progress.update(self.result.scanned, force=True)
            progress.close()

    # -- one dead letter --------------------------------------------------------------------------

    def _handle(self, message) -> None:
        partition, offset = message.partition(), message.offset()
        position = f"{self.dlq_topic}[{partition}]@{offset}"
        try:
            record = read_dead_letter(message, self.codec, self.dlq_topic)
        except UnreadableRecord as exc:  # any bytes can be in a DLQ: count them, go on
            log.warning("%s is not a dead letter (%s): passed over", position, str(exc)[:300])
            self._record(partition, offset, "unreadable")
            self.batch_unreplayable.append(position)
            return
        dead_letter = record.dead_letter
        if not self.options.selection.selects(record, self.marks):
            self._record(partition, offset, "skipped")
            return
        key = mark_key(dead_letter, self.dlq_topic, partition, offset)
        decision = self._decide(dead_letter, position, key)
        if decision.action == REPLAY and not self.options.dry_run:
            self._target_partitions(decision.target)
            self._pace()
            if self.stop:
                return  # neither sent nor passed: the next run starts with this one
            self._open_batch()
            self._send(dead_letter, decision.target)
            self._mark_replayed(key, partition, offset, decision.target)
        if decision.action == REPLAY:
            # A second copy of this dead letter, later in this run, is not sent.
            self.marks[key] = Mark(REPLAYED, now_iso(), self.options.group, target=decision.target)
            self._record(partition, offset, "would_replay" if self.options.dry_run else "replayed", selected=True)
            self.batch_targets[decision.target] = self.batch_targets.get(decision.target, 0) + 1
        elif decision.action == HELD:
            self._record(partition, offset, "held", selected=True)
            self.batch_held.append(position)
        elif decision.action == ALREADY_REPLAYED:
            self._record(partition, offset, "already_replayed", selected=True)
        elif decision.action == ALREADY_HANDLED:
            self._record(partition, offset, "already_handled", selected=True)
        else:
            self._record(partition, offset, "unreplayable", selected=True)
            self.batch_unreplayable.append(position)
        if self.options.dry_run:
            self.result.listing.append(decision)
        if self.on_decision:
            self.on_decision(decision)
        limit = self.options.limit
        if limit and self.result.selected + self.batch_counts["selected"] >= limit:
            self.result.stopped_by = f"--limit {limit} reached"

    def _record(self, partition: int, offset: int, outcome: str, selected: bool = False) -> None:
        """Count one DLQ message into the open batch; its offset moves the cursor when the batch commits."""
        self._open_batch()
        self.batch_offsets[partition] = offset + 1
        self.batch_messages += 1
        self.batch_counts["scanned"] += 1
        self.batch_counts["selected"] += selected
        self.batch_counts[outcome] += 1

    def _decide(self, dead_letter: DeadLetter, position: str, key: bytes) -> Decision:
        if dead_letter.original_value is None:
            return Decision(position, UNREPLAYABLE, dead_letter, why="no original value to send")
        mark = self.marks.get(key)
        if mark is not None and not self.options.force:
            by = f"{mark.status} by {mark.by or '?'} at {mark.at or '?'}" + (f" ({mark.note})" if mark.note else "")
            return Decision(position, ALREADY_REPLAYED if mark.status == REPLAYED else ALREADY_HANDLED, dead_letter,
                            why=f"{by}, says {self.marks_topic} (--force sends it all the same)")
        if dead_letter.replay_count >= self.options.max_replays:
            return Decision(position, HELD, dead_letter,
                            why=f"replayed {dead_letter.replay_count} time(s) already, --max-replays "
                                f"{self.options.max_replays}")
        return Decision(position, REPLAY, dead_letter, target=self.options.to_topic or dead_letter.original_topic)

    def _send(self, dead_letter: DeadLetter, topic: str) -> None:
        partitions = self._target_partitions(topic)
        extra = {}
        # Back where it came from: keeps the key's partition whatever partitioner the original producer used.
        if (topic == dead_letter.original_topic and dead_letter.original_partition is not None
                and 0 <= dead_letter.original_partition < partitions):
            extra["partition"] = dead_letter.original_partition
        if dead_letter.original_timestamp is not None and dead_letter.original_timestamp > 0:
            extra["timestamp"] = dead_letter.original_timestamp
        self._produce(topic, value=dead_letter.original_value, key=dead_letter.original_key,
                      headers=replay_headers(dead_letter), **extra)

    def _mark_replayed(self, key: bytes, partition: int, offset: int, target: str) -> None:
        """The mark, in the same transaction as the original it stands for: both or neither."""
        mark = Mark(REPLAYED, now_iso(), self.options.group, target=target)
        self._produce(self.marks_topic, key=key, value=mark.to_bytes(f"{self.dlq_topic}[{partition}]@{offset}"))

    def _produce(self, topic: str, **message) -> None:
        """Produce into the open transaction."""
        transactions.produce(self.producer, topic, on_delivery=self.delivery_errors, **message)

    def _pace(self) -> None:
        """--rate: send on a schedule (token pacing), so slow moments do not lower the rate."""
        rate = self.options.rate
        if not rate:
            return
        now = time.monotonic()
        if self.pace_started is None:
            self.pace_started = now
        due = self.pace_started + self.paced / rate
        if due > now and self.batch_messages and due - self.batch_started >= self.options.commit_interval:
            self._commit()  # do not keep what is already sent invisible while waiting
        while now < due and not self.stop:
            self.producer.poll(min(due - now, 0.2))
            now = time.monotonic()
        self.paced += 1

    def _target_partitions(self, topic: str) -> int:
        count = self.target_partitions.get(topic)
        if count is None:
            try:
                metadata = self.admin.list_topics(topic, timeout=10).topics.get(topic)
            except KafkaException as exc:
                raise ToolFailure(f"cannot look up the replay target {topic}: {exc.args[0].str()}") from None
            if metadata is None or metadata.error is not None or not metadata.partitions:
                raise ToolFailure(f"the replay target topic {topic} does not exist; nothing of this batch "
                                  "was sent (create it, or choose another with --to)")
            count = self.target_partitions[topic] = len(metadata.partitions)
        return count

    # -- batches ----------------------------------------------------------------------------------

    def _open_batch(self) -> None:
        if self.batch_messages:
            return
        self.batch_started = time.monotonic()
        if self.producer is not None and not self.in_transaction:
            self.producer.begin_transaction()
            self.in_transaction = True

    def _batch_due(self, idle: bool = False) -> bool:
        if not self.batch_messages:
            return False
        return (idle or self.batch_messages >= self.options.batch_size
                or time.monotonic() - self.batch_started >= self.options.commit_interval)

    def _commit(self) -> None:
        """Make the batch's messages and the cursor visible together, then count it as done."""
        if not self.batch_messages:
            return
        if self.producer is not None:
            offsets = [TopicPartition(self.dlq_topic, p, o) for p, o in sorted(self.batch_offsets.items())]
            try:
                self.producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(),
                                                          transactions.CALL_TIMEOUT)
                transactions.commit_transaction(self.producer, self.options.delivery_timeout + 30)
            except KafkaException as exc:
                self._fail(exc)
            self.in_transaction = False
            if self.delivery_errors:  # cannot happen after a successful commit; be loud if it does
                raise ToolFailure(f"a replayed message was not delivered: {self.delivery_errors.first}")
        for name, count in self.batch_counts.items():
            setattr(self.result, name, getattr(self.result, name) + count)
            self.batch_counts[name] = 0
        for topic, count in self.batch_targets.items():
            self.result.targets[topic] = self.result.targets.get(topic, 0) + count
        self.result.held_at += self.batch_held
        self.result.unreplayable_at += self.batch_unreplayable
        self.batch_targets, self.batch_held, self.batch_unreplayable = {}, [], []
        self.batch_offsets.clear()
        self.batch_messages = 0

    def _fail(self, exc: KafkaException) -> None:
        error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        reason = error.str() if error is not None else str(exc)
        if self.delivery_errors:
            reason = f"{reason}; first delivery error: {self.delivery_errors.first}"
        if error is not None and error.fatal():
            self.in_transaction = False
            raise ToolFailure(f"the replay was fenced or hit a fatal error ({reason}); another replay with "
                              f"group {self.options.group} may be running. Nothing of the last batch was sent; "
                              "a rerun continues where this one stopped") from None
        try:
            transactions.abort_transaction(self.producer, timeout=30)
        except KafkaException:
            pass  # the coordinator aborts it after transaction.timeout.ms
        self.in_transaction = False
        raise ToolFailure(f"the replay batch could not be committed ({reason}); nothing of it was sent and "
                          "a rerun continues where this one stopped") from None


def transactional_id(group: str) -> str:
    return f"{group}.replay"


def validate_options(options: ReplayOptions, dlq_topic: str) -> None:
    if options.to_topic == dlq_topic:
        raise UsageError(f"--to {dlq_topic} would replay the DLQ into itself")
    options.selection.validate()


# -- resolve and discard: marks written by an operator -----------------------------------------------

@dataclass
class MarkResult:
    """What `mark_selection` marked (or, dry run, would mark)."""

    dry_run: bool
    status: str
    dlq_topic: str
    scanned: int = 0
    marked: int = 0        # dry run: would be marked
    unreadable: int = 0
    listing: list[str] = field(default_factory=list)  # dry run only: the positions
    stopped_by: str | None = None
    elapsed_seconds: float = 0.0

    def to_json(self) -> dict:
        data = {name: getattr(self, name) for name in (
            "dry_run", "status", "dlq_topic", "scanned", "marked", "unreadable", "stopped_by")}
        data["elapsed_seconds"] = round(self.elapsed_seconds, 3)
        if self.dry_run:
            data["listing"] = self.listing
        return data

    def text(self) -> str:
        done = f"would mark {self.marked}" if self.dry_run else f"marked {self.marked}"
        line = (f"{'dry run: ' if self.dry_run else ''}scanned {self.scanned} message(s) of {self.dlq_topic}: "
                f"{done} dead letter(s) {self.status}"
                + (f", unreadable {self.unreadable}" if self.unreadable else ""))
        return line + (f"\nstopped before the end of the DLQ ({self.stopped_by})" if self.stopped_by else "")


def mark_selection(settings: KafkaSettings, selection: Selection, status: str, by: str, note: str,
                   dry_run: bool = False, limit: int | None = None, stop: StopFlag | None = None,
                   on_marked: Callable[[str, DeadLetter], None] | None = None) -> MarkResult:
    """Mark the selected dead letters `status` (resolved or discarded), from the selection's start
    to the DLQ's end as it is now. Copies of one dead letter share its mark and are marked once."""
    stop = stop if stop is not None else StopFlag()
    result = MarkResult(dry_run, status, settings.dlq_topic)
    started = time.monotonic()
    marks = read_marks(settings, settings.dlq_topic)
    codec = DeadLetterCodec(dead_letter_codec())
    reader = Consumer(reader_config(settings, f"dlq-marker-{uuid.uuid4()}"))

    def chosen():
        starts, ends = start_positions(reader, settings.dlq_topic, selection)
        progress = Progress(sum(ends[p] - starts[p] for p in starts), "dry run" if dry_run else "marking")
        try:
            for message in reading.read_range(reader, settings.dlq_topic, starts, ends, stop=lambda: bool(stop)):
                result.scanned += 1
                progress.update(result.scanned)
                try:
                    record = read_dead_letter(message, codec, settings.dlq_topic)
                except UnreadableRecord as exc:
                    result.unreadable += 1
                    log.warning("%s[%d]@%d is not a dead letter (%s): passed over", message.topic(),
                                message.partition(), message.offset(), str(exc)[:300])
                    continue
                if not selection.selects(record, marks):
                    continue
                key = mark_key(record.dead_letter, record.topic, record.partition, record.offset)
                if marks.get(key) is not None and marks[key].status == status:
                    continue  # a copy of one marked in this run, or marked so before
                mark = Mark(status, now_iso(), by, note)
                marks[key] = mark
                result.marked += 1
                if dry_run:
                    result.listing.append(record.position)
                if on_marked is not None:
                    on_marked(record.position, record.dead_letter)
                yield key, mark
                if limit and result.marked >= limit:
                    result.stopped_by = f"--limit {limit} reached"
                    return
            if stop:
                result.stopped_by = f"{stop.signal_name or 'stop'} received"
        finally:
            progress.close()

    try:
        if dry_run:
            for _ in chosen():
                pass
        else:
            write_marks(settings, settings.dlq_topic, chosen())
    finally:
        reader.close()
        result.elapsed_seconds = time.monotonic() - started
    return result


# -- fix and replay: edited orders from a file -----------------------------------------------------

LINEAGE_HEADER = "dlq.replay.of"  # topic[partition]@offset of the dead letter a replayed message fixes


@dataclass
class FileReplayResult:
    dry_run: bool
    file: str
    lines: int = 0
    replayed: int = 0        # dry run: would be replayed
    already_replayed: int = 0
    already_handled: int = 0
    held: int = 0
    targets: dict[str, int] = field(default_factory=dict)
    refused_at: list[str] = field(default_factory=list)  # positions not sent (marked, held)
    stopped_by: str | None = None
    elapsed_seconds: float = 0.0

    def to_json(self) -> dict:
        data = {name: getattr(self, name) for name in (
            "dry_run", "file", "lines", "replayed", "already_replayed", "already_handled", "held", "targets",
            "refused_at", "stopped_by")}
        data["elapsed_seconds"] = round(self.elapsed_seconds, 3)
        return data

    def text(self) -> str:
        sent = f"would replay {self.replayed}" if self.dry_run else f"replayed {self.replayed}"
        lines = [f"{'dry run: ' if self.dry_run else ''}{self.lines} edited order(s) in {self.file}: {sent}, "
                 f"already replayed {self.already_replayed}, resolved or discarded {self.already_handled}, "
                 f"held {self.held} (loop guard)"]
        lines += [f"  {count:>7}  -> {topic}" for topic, count in sorted(self.targets.items())]
        if self.stopped_by:
            lines.append(f"stopped before the end of the file ({self.stopped_by}); run again to continue")
        return "\n".join(lines)


def replay_from_file(settings: KafkaSettings, path, options: ReplayOptions, products: frozenset[str],
                     stop: StopFlag | None = None) -> FileReplayResult:
    """Send the edited orders of an export, each marked replayed in the same transaction as its send.

    The whole file is checked before anything is sent. A rerun (after a crash, or by mistake) sends
    nothing twice: what a committed transaction sent is marked replayed and is passed over (unless
    --force). transactional.id is one per DLQ, so a second run at the same time fences the first.
    """
    from orders_dlq.codec import order_codec  # noqa: PLC0415 - only this command encodes orders
    from orders_dlq.fixes import check_fixes, read_fixes  # noqa: PLC0415

    stop = stop if stop is not None else StopFlag()
    started = time.monotonic()
    codec = order_codec()
    result = FileReplayResult(options.dry_run, str(path))
    result.lines = check_fixes(path, codec, products)
    marks = read_marks(settings, settings.dlq_topic)
    admin = admin_client(settings)
    partitions: dict[str, int] = {}
    producer = None
    errors = transactions.DeliveryErrors()
    if not options.dry_run:
        producer = Producer(reliable_producer_config(settings, options.delivery_timeout, **{
            # One per DLQ: a second from-file replay fences this one (and aborts its open batch).
            "transactional.id": f"{settings.dlq_topic}.replay-from-file",
            "transaction.timeout.ms": 60000,
        }))
        transactions.init_transactions(producer, "the replay")
    in_transaction, batch, batch_targets = False, 0, {}

    def commit():
        nonlocal in_transaction, batch, batch_targets
        if in_transaction:
            try:
                transactions.commit_transaction(producer, options.delivery_timeout + 30)
            except KafkaException as exc:
                try:
                    transactions.abort_transaction(producer, timeout=30)
                except KafkaException:
                    pass  # the coordinator aborts it after transaction.timeout.ms
                raise ToolFailure(f"the replay batch could not be committed ({exc.args[0].str()}"
                                  + (f"; {errors.first}" if errors else "")
                                  + "); nothing of it was sent and a rerun continues where this one stopped") from None
            in_transaction = False
        result.replayed += batch
        for topic, count in batch_targets.items():
            result.targets[topic] = result.targets.get(topic, 0) + count
        batch, batch_targets = 0, {}

    try:
        for fix in read_fixes(path, codec, products, options.to_topic):
            if stop:
                result.stopped_by = f"{stop.signal_name or 'stop'} received"
                break
            mark = marks.get(fix.mark_key)
            if mark is not None and not options.force:
                if mark.status == REPLAYED:
                    result.already_replayed += 1
                else:
                    result.already_handled += 1
                result.refused_at.append(fix.position)
                log.warning("line %d (%s) not sent: %s by %s at %s (--force sends it all the same)", fix.line,
                            fix.position, mark.status, mark.by or "?", mark.at or "?")
                continue
            replays = fix.replay_count
            if replays >= options.max_replays:
                result.held += 1
                result.refused_at.append(fix.position)
                log.warning("line %d (%s) held: replayed %d time(s) already, --max-replays %d", fix.line,
                            fix.position, replays, options.max_replays)
                continue
            count = partitions.get(fix.target)
            if count is None:
                metadata = admin.list_topics(fix.target, timeout=10).topics.get(fix.target)
                if metadata is None or metadata.error is not None or not metadata.partitions:
                    raise ToolFailure(f"the replay target topic {fix.target} (line {fix.line}) does not exist; "
                                      "nothing of this batch was sent (create it, or choose another with --to)")
                count = partitions[fix.target] = len(metadata.partitions)
            marks[fix.mark_key] = Mark(REPLAYED, now_iso(), options.group, target=fix.target)
            batch += 1
            batch_targets[fix.target] = batch_targets.get(fix.target, 0) + 1
            if producer is None:
                continue
            if not in_transaction:
                producer.begin_transaction()
                in_transaction = True
            extra = {}
            if fix.original_partition is not None and 0 <= fix.original_partition < count:
                extra["partition"] = fix.original_partition  # the key's partition, as a plain replay does
            if fix.original_timestamp is not None and fix.original_timestamp > 0:
                extra["timestamp"] = fix.original_timestamp
            headers = [*without_error_context(fix.headers), (REPLAY_COUNT_HEADER, str(replays + 1).encode()),
                       (LINEAGE_HEADER, fix.position.encode())]
            transactions.produce(producer, fix.target, key=fix.key, value=fix.value, headers=headers,
                                 on_delivery=errors, **extra)
            transactions.produce(producer, marks_topic(settings.dlq_topic), key=fix.mark_key,
                                 value=marks[fix.mark_key].to_bytes(fix.position), on_delivery=errors)
            if batch >= options.batch_size:
                commit()
        commit()
    except KafkaException as exc:
        raise ToolFailure(f"the replay stopped on a Kafka error ({exc.args[0].str()}); nothing of the open batch "
                          "was sent and a rerun continues where this one stopped") from None
    finally:
        if in_transaction:
            try:
                transactions.abort_transaction(producer, timeout=10)
            except KafkaException:
                pass  # a transaction never committed is aborted by its coordinator in the end
        result.elapsed_seconds = time.monotonic() - started
    return result
