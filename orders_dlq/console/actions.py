"""What the console changes: replay one dead letter (through the Replayer, exactly once) and mark one.

A replay from the console is the CLI's replay of a one-message selection, as consumer group
`<dlq>.console` (its own cursor and transactional.id, so it never moves the CLI replayer's cursor).
Before each run the console points that group's cursor at the dead letter (and every other DLQ
partition at its end), so the Replayer reads exactly one message instead of scanning the DLQ. The
original, its `replayed` mark and the cursor are committed in one transaction, as with
`dlq_replay.py`; the marks make a second replay of the same dead letter a refusal, unless forced.
"""

from __future__ import annotations

import getpass
import threading

from confluent_kafka import Consumer, TopicPartition

from orders_dlq.errors import ToolFailure
from orders_dlq.kafka import reader_config
from orders_dlq.marks import DISCARDED, RESOLVED, Mark, mark_key, now_iso, write_marks
from orders_dlq.replay import Decision, Replayer, ReplayOptions
from orders_dlq.selection import Selection
from orders_dlq.settings import KafkaSettings


def console_group(dlq_topic: str) -> str:
    return f"{dlq_topic}.console"


def who() -> str:
    try:
        return f"{getpass.getuser()} (dlq_console)"
    except (KeyError, OSError):
        return "dlq_console"


class Actions:
    """Replays and marks, one at a time (one console group, one transactional.id)."""

    def __init__(self, settings: KafkaSettings, max_replays: int, delivery_timeout: float = 30.0):
        self.settings = settings
        self.group = console_group(settings.dlq_topic)
        self.max_replays = max_replays
        self.delivery_timeout = delivery_timeout
        self.lock = threading.Lock()

    def _point_cursor_at(self, partition: int, offset: int, partitions: list[int]) -> None:
        """Commit the console group's cursor: `offset` in `partition`, the end everywhere else."""
        consumer = Consumer(reader_config(self.settings, self.group))
        try:
            positions = [TopicPartition(self.settings.dlq_topic, partition, offset)]
            for other in partitions:
                if other != partition:
                    _, high = consumer.get_watermark_offsets(TopicPartition(self.settings.dlq_topic, other),
                                                             timeout=10)
                    positions.append(TopicPartition(self.settings.dlq_topic, other, high))
            consumer.commit(offsets=positions, asynchronous=False)
        finally:
            consumer.close()

    def replay(self, partition: int, offset: int, partitions: list[int], dry_run: bool, force: bool) -> dict:
        """Replay (or preview) the dead letter at partition@offset; returns its decision and the counts."""
        options = ReplayOptions(
            selection=Selection(from_offsets=[(partition, offset)], to_offsets=[(partition, offset)]),
            group=self.group, max_replays=self.max_replays, limit=1, dry_run=dry_run, force=force,
            batch_size=1, delivery_timeout=self.delivery_timeout, idle_timeout=30.0)
        decisions: list[Decision] = []
        with self.lock:
            self._point_cursor_at(partition, offset, partitions)
            result = Replayer(self.settings, options, on_decision=decisions.append).run()
        if not decisions:
            raise ToolFailure(f"the replay did not reach {self.settings.dlq_topic}[{partition}]@{offset}")
        decision = decisions[0]
        return {"dry_run": dry_run, "action": decision.action, "target": decision.target, "why": decision.why,
                "position": decision.position, "replayed": result.replayed, "would_replay": result.would_replay,
                # Its first line: the rest speaks of running the CLI again, which means nothing here.
                "summary": result.text().splitlines()[0]}

    def mark(self, record_letter, partition: int, offset: int, status: str, note: str) -> tuple[bytes, Mark]:
        """Write a resolved or discarded mark for one dead letter; returns its key and mark once confirmed."""
        if status not in (RESOLVED, DISCARDED):
            raise ValueError(f"status must be {RESOLVED} or {DISCARDED}")
        key = mark_key(record_letter, self.settings.dlq_topic, partition, offset)
        mark = Mark(status, now_iso(), who(), note[:2000])
        write_marks(self.settings, self.settings.dlq_topic, [(key, mark)], self.delivery_timeout)
        return key, mark
