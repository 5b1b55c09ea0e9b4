"""The aggregation consumer: orders in, exact per-partition totals out, failures to the DLQ.

Units of work: a batch of messages is decoded, validated and aggregated into the state of its
input partition; failures become dead letters. Every `commit_interval` the work is committed:

- exactly-once: the dead letters, one changelog record per touched partition (its new state)
  and the consumed offsets go into one Kafka transaction (`send_offsets_to_transaction`), as
  Kafka Streams does. Either all of it becomes visible or none of it.
- at-least-once: the dead letters and changelog records are flushed and acknowledged first, then
  the offsets are committed. A crash in between re-reads some orders; the state's own
  `next_offset` then skips the ones already counted, but their dead letters may repeat.

If a commit fails (the DLQ is missing, the cluster refuses writes), the partitions roll back to
their last committed state and the consumer seeks back there: no offset ever moves past a dead
letter that was not confirmed. It retries with backoff and says so on stderr.

On every assignment the state of each new partition is restored from the compacted changelog
before any of its messages is processed, so restarts and scale-out never double count.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from typing import NamedTuple

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from orders_dlq import metrics, transactions
from orders_dlq.changelog import PartitionState, read_states, state_key
from orders_dlq.codec import DecodeError, order_codec
from orders_dlq.dead_letter import utc_now_iso
from orders_dlq.dlq import DeadLetterProducer
from orders_dlq.errors import ToolFailure
from orders_dlq.kafka import (
    admin_client,
    callback_free_admin_client,
    common_client_config,
    missing_topics,
    reliable_producer_config,
    settle,
)
from orders_dlq.logs import log
from orders_dlq.orders import CATALOGUE, InvalidOrder, validate
from orders_dlq.retry import RetryPolicy, is_retryable
from orders_dlq.runtime import StopFlag
from orders_dlq.settings import KafkaSettings
from orders_dlq.stats import Aggregate, LatencyReservoir, combine

EXACTLY_ONCE = "exactly-once"
AT_LEAST_ONCE = "at-least-once"
GUARANTEES = (EXACTLY_ONCE, AT_LEAST_ONCE)
# The retries of one message stop after this long even if attempts remain: well inside
# max.poll.interval.ms (5 minutes), so a consumer never loses its partitions while it waits.
MAX_RETRY_SECONDS = 60.0
# With --idle-timeout, how long an instance without partitions waits before it gives up: longer
# than a rebalance that waits for a dead member's session (10 s) to expire.
UNASSIGNED_GRACE_SECONDS = 30.0
# consume() taking longer than this (its own wait is 0.2 s) was held by a rebalance callback.
BLOCKED_CONSUME_SECONDS = 2.0
# A transactional producer that Kafka ended is replaced; this many times within the window, and
# the cause is no longer an outage but (most likely) another live instance with the same id.
MAX_RENEWALS = 3
# An abort still not done after this long is given up in favour of a new producer (see _abort_transaction).
ABORT_TIMEOUT_SECONDS = 60.0
# Errors that mean Kafka was out of reach: the producer is replaced before the unit is redone (see _on_lost).
UNREACHABLE = {KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
               KafkaError.REQUEST_TIMED_OUT, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR}
STALE = "Kafka was out of reach"
# A commit refused because the group rebalances: routine when instances join or leave.
REBALANCING = {KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS, KafkaError.UNKNOWN_MEMBER_ID}
RENEWAL_WINDOW_SECONDS = 300.0
# How long commits wait for the second round of an incremental rebalance (see _on_revoke); a few
# heartbeats, well inside transaction.timeout.ms.
HOLD_COMMITS_SECONDS = 5.0
# How long an assignment retries reading its partitions' committed offsets and states (see
# _starting_states): an outage longer than this during a join ends the run, well inside
# max.poll.interval.ms (300 s), past which the group would drop this member anyway.
ASSIGN_PATIENCE_SECONDS = 120.0
# An idle consumer asks this often whether its topic is still the one it started on: librdkafka
# only logs a deleted topic ("topic does not exist"), and the consumer would otherwise wait for
# orders for ever.
TOPIC_CHECK_SECONDS = 5.0
# Messages that come after this long without any are read only once the topic is known to be the
# same one (its id, one DescribeTopics round trip of about 1 ms): a topic deleted and created again
# quickly is fetched on from the old offsets by librdkafka, without a word, and its first orders
# would be skipped and the rest added to the old topic's totals. A steady flow never pays for it.
RESUME_CHECK_SECONDS = 1.0
# At-least-once's offset commit from the loop is asynchronous; its result (from on_commit) is
# one of these, or the KafkaError it failed with (compared by identity: a KafkaError compared with
# a str raises TypeError).
OFFSETS_SENT, OFFSETS_COMMITTED = "sent", "committed"
# An answer this late means the coordinator is in trouble: the commit is then made synchronously,
# as before the asynchronous one, with the loop waiting for it (and failing it, rolling back).
ASYNC_COMMIT_PATIENCE_SECONDS = 1.0


def topic_id(settings: KafkaSettings, topic: str) -> str | None:
    """The topic's id (it changes when a topic is deleted and created again), or None if unknown."""
    try:
        admin = admin_client(settings)  # kept alive until the answer is in: its futures die with it
        description = admin.describe_topics(TopicCollection([topic]), request_timeout=10)
        return str(description[topic].result(10).topic_id)
    except Exception:  # noqa: BLE001 - without it, only the check for a recreated topic is skipped
        return None


def require_co_partitioned(client, topic: str, state_topic: str) -> int:
    """The changelog must have as many partitions as the orders topic (partition p holds partition
    p's state, like a Kafka Streams changelog), or one sentence says how to fix it. Returns the
    changelog's partition count."""
    try:
        metadata = client.list_topics(timeout=10)
    except KafkaException as exc:
        raise ToolFailure(f"cannot read the metadata of {topic} and {state_topic}: {exc.args[0].str()}") from None
    counts = {name: len(metadata.topics[name].partitions) for name in (topic, state_topic)
              if name in metadata.topics and metadata.topics[name].error is None}
    if len(counts) == 2 and counts[topic] != counts[state_topic]:
        fix = ("run `python setup_dlq.py --apply` to add partitions to it" if counts[state_topic] < counts[topic]
               else "Kafka cannot remove partitions: give this group a changelog with as many (--state-topic)")
        raise ToolFailure(f"the changelog {state_topic} has {counts[state_topic]} partition(s) but {topic} has "
                          f"{counts[topic]}: partition p of the changelog must hold partition p's totals; {fix}")
    return counts.get(state_topic, 0)


def without_frames(error: BaseException) -> BaseException:
    """The error of a failed message, without its traceback and chained errors.

    For a message that is no valid order the reason is its content, not where it was raised; a
    processing error's traceback is dropped once its dead letter is written. A traceback's frames
    reach back to the caller's, whose locals hold the Failure that holds this error: a reference
    cycle per failed message, which only Python's cyclic collector frees. In a poison flood that
    was three frames, three tracebacks and a Message per dead letter, and 15 % of the consumer's
    CPU in collections (50,000 dead letters: 0.7 s of 4.5 s)."""
    error.__traceback__ = error.__context__ = error.__cause__ = None
    return error


class Failure(NamedTuple):
    """Why one message is dead-lettered: the order when it was decoded, the stage that failed, the
    error, and how many times processing was tried."""
    order: dict | None
    stage: str
    error: BaseException
    retries: int


class CommitFailed(Exception):
    """The unit of work could not be committed; it must be rolled back and redone."""


class OffsetsWentBack(Exception):
    """A fetched message lies below its partition's next offset: the log is not the one counted."""


class CommitJob:
    """The waits that end one unit of work (offsets into the transaction and its commit, or
    at-least-once's acknowledgements), run here or on a thread of their own; `after` runs on the
    loop's thread once they succeeded (at-least-once's offset commit: the consumer is only ever
    used by the loop, whose rebalance callbacks it must not wait for)."""

    def __init__(self, call: Callable[[], None], snapshots: dict[int, PartitionState],
                 after: Callable[[], None] | None = None, offsets: list[TopicPartition] | None = None):
        self.call = call
        self.after = after
        self.snapshots = snapshots  # each committed partition's state as this unit ends it
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.offsets = offsets  # at-least-once: what `after` commits, sent asynchronously by the loop
        self.offsets_state: str | KafkaError | None = None  # None: not sent; then OFFSETS_* or the error
        self.offsets_sent_at = 0.0

    def run(self) -> None:
        try:
            self.call()
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which rolls back or stops
            self.error = exc

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="commit", daemon=True)
        self.thread.start()

    def done(self) -> bool:
        return self.thread is None or not self.thread.is_alive()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()


class OrderAggregator:
    def __init__(self, settings: KafkaSettings, *, group: str, state_topic: str, guarantee: str,
                 retry: RetryPolicy, instance_id: str | None = None, products=CATALOGUE, commit_interval: float = 0.1,
                 batch_size: int = 1000, delivery_timeout: float = 10.0, stop: StopFlag | None = None,
                 latency: LatencyReservoir | None = None):
        self.settings = settings
        self.topic = settings.topic
        self.group = group
        self.state_topic = state_topic
        self.exactly_once = guarantee == EXACTLY_ONCE
        self.retry = retry
        self.products = frozenset(products)
        self.commit_interval = commit_interval
        self.batch_size = batch_size
        self.stop = stop if stop is not None else StopFlag()
        self.latency = latency  # creation -> aggregation in ms, when asked for (--latency)
        # With --latency, how long each commit held the loop: an order that arrives meanwhile waits.
        self.commit_times = LatencyReservoir() if latency is not None else None
        self.observe_latency = metrics.serving()  # the Prometheus histogram, when metrics are served
        self.codec = order_codec()
        self.states: dict[int, PartitionState] = {}
        self.committed: dict[int, PartitionState] = {}  # each partition's state at its last commit
        self.dirty: set[int] = set()
        self.delivery_errors = transactions.DeliveryErrors()  # at-least-once: refused writes of the unit
        self.run_processed = 0
        self.run_dead_lettered = 0
        self.commit_failures = 0
        self.reseek = False  # set when kept partitions were rolled back during a rebalance
        # The commit running on its own thread while the loop goes on, and the failures of the
        # unit not yet dead-lettered (they are sent when its commit begins, see _send_held).
        self.committing: CommitJob | None = None
        self.held: list[tuple[PartitionState, object, Failure]] = []
        self.hold_commits_until = 0.0  # monotonic time; see _on_revoke
        self.failed = False  # set when the run stops on a fatal error
        # Why the run stopped early: the orders topic was deleted, or another log is under its name.
        self.topic_changed: str | None = None
        self.topic_checked_at = 0.0
        self._admin: AdminClient | None = None  # asks the orders topic's id (see RESUME_CHECK_SECONDS)

        # No static membership (group.instance.id): with it, librdkafka fenced the instance for good
        # when the group coordinator's broker died (tested on a 3-broker cluster). A restarted
        # instance rejoins as a new member; the dead one is dropped after session.timeout.ms.
        consumer_config = {
            "group.id": group,
            # Offsets move only when our commit says the work behind them is done.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # Never aggregate what an aborted (or still open) transaction wrote.
            "isolation.level": "read_committed",
            # A killed instance's partitions move to the survivors after 10 s, not the 45 s default.
            "session.timeout.ms": 10000,
            # A member learns that the group rebalances from its next heartbeat: every second, not
            # every 3 s (the default), since an incremental rebalance takes two rounds of it.
            "heartbeat.interval.ms": 500,
            # Incremental rebalancing (KIP-429): a joining or leaving instance moves only the
            # partitions that change owner; the others keep being processed (and committed)
            # through the rebalance instead of every instance stopping, committing and restoring all.
            "partition.assignment.strategy": "cooperative-sticky",
            # The results of at-least-once's asynchronous offset commits (see _offsets_settled).
            "on_commit": self._on_offsets_committed,
            **common_client_config(),
        }
        consumer_config = settings.client_config(**consumer_config)
        # -X may choose another strategy, or the KIP-848 protocol (group.protocol=consumer), which
        # is incremental by design: the rebalance callbacks must then add and remove, not replace.
        kip848 = consumer_config.get("group.protocol") == "consumer"
        # The classic cooperative protocol gives partitions up in one round and hands them out
        # in a second; KIP-848 reconciles each member with the broker's target on its own.
        self.two_rounds = not kip848 and "cooperative" in str(consumer_config.get("partition.assignment.strategy", ""))
        self.incremental = kip848 or self.two_rounds
        if kip848:
            # The KIP-848 protocol refuses the classic group settings: the broker owns them.
            for key in ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"):
                if key not in settings.client_overrides:
                    consumer_config.pop(key, None)
        self.consumer = Consumer(consumer_config)
        producer_extra = {}
        if self.exactly_once:
            producer_extra = {
                # A named instance keeps its id across restarts: the new one fences its dead
                # predecessor and aborts whatever transaction it left open, at once.
                "transactional.id": f"{group}-{instance_id or uuid.uuid4()}",
                # An instance that dies and never comes back blocks readers of its partitions
                # (read_committed) until the coordinator aborts its transaction after this.
                "transaction.timeout.ms": 15000,
            }
        self.instance_id = instance_id
        self.producer_config = reliable_producer_config(settings, delivery_timeout, **{
            # Every callback of this producer acts on failures only (DeliveryErrors, the DLQ
            # writer's size and permission checks): a Python call per delivered changelog record or
            # dead letter would cost more than writing it. flush() still waits for every message.
            "delivery.report.only.error": True,
            # Right after a commit, the coordinator is still writing the last transaction's markers
            # and answers the next AddPartitionsToTxn/AddOffsetsToTxn with CONCURRENT_TRANSACTIONS;
            # librdkafka retries after retry.backoff.ms, and at the 100 ms default those waits were a
            # large part of the commit's tail, and so of every order's latency (send_offsets p99 130-180
            # ms in two runs, 30-40 ms at 10; other stalls remain). The backoff still doubles per
            # retry up to retry.backoff.max.ms (1 s) in an outage.
            "retry.backoff.ms": 10,
            **producer_extra})
        self.producer = Producer(self.producer_config)
        self.dead_letters = DeadLetterProducer(settings, producer=self.producer)
        self.renewals: list[float] = []  # when the transactional producer had to be replaced
        self.topic_id = topic_id(settings, self.topic)
        self.state_partitions = require_co_partitioned(self.consumer, self.topic, self.state_topic)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, max_messages: int | None = None, idle_timeout: float | None = None,
            on_batch: Callable[[OrderAggregator], None] | None = None) -> Aggregate:
        if self.exactly_once:
            transactions.init_transactions(self.producer, "the aggregation", "use --guarantee at-least-once on "
                                                                            "brokers without transactions")
            self.producer.begin_transaction()
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        last_commit = self.last_activity = time.monotonic()
        finishing = 0.0  # how long ending the last commit held the loop (see --latency's commit_ms)
        try:
            while True:
                while not self.stop:
                    if self.committing is not None and (self.committing.done() or len(self.held) >= self.batch_size):
                        began = time.monotonic()
                        self._finish_commit(from_loop=True)
                        finishing = time.monotonic() - began
                    if self.committing is None and len(self.held) >= self.batch_size:
                        self._send_held(in_rebalance=False)  # a flood: a batch at a time, memory bounded
                    budget = self.batch_size
                    if max_messages is not None:
                        handled = self.run_processed + self.run_dead_lettered + len(self.held)
                        budget = min(budget, max_messages - handled)
                        if budget <= 0:
                            break
                    # consume(n, timeout) waits until it has n messages or the timeout passed: take what
                    # is there at once, and block (0.2 s at most) only for the first message when none is.
                    asked = time.monotonic()
                    messages = self.consumer.consume(budget, timeout=0) or self.consumer.consume(1, timeout=0.2)
                    if time.monotonic() - asked > BLOCKED_CONSUME_SECONDS:
                        # consume() ran a rebalance callback that waited out Kafka (a commit in
                        # flight, a producer replacement): not idleness. Kafka is back and the group
                        # is handing out partitions; an --idle-timeout run that stopped now would
                        # leave, in the middle of its join, a member holding partitions that nobody
                        # processes until its session expires (seen after outages of 30 and 200 s).
                        self.last_activity = time.monotonic()
                    if self.reseek:
                        # A commit failed inside an incremental rebalance: the partitions kept were
                        # rolled back, so what was fetched for them before belongs to the undone unit.
                        self.reseek = False
                        self._seek_to_committed()
                        messages = []
                    now = time.monotonic()
                    if messages:
                        if now - self.last_activity >= RESUME_CHECK_SECONDS and self.states:
                            self.topic_changed = self._orders_topic_changed()
                            if self.topic_changed:
                                break  # the batch is not read: it may be another topic's
                        self.last_activity = now
                        try:
                            for message in messages:
                                self._handle(message)
                        except (KafkaException, BufferError) as exc:
                            # A dead letter could not even be queued (the transaction failed under
                            # it): undo the unit, the rest of the batch included, and redo it later.
                            self._rollback(exc, in_rebalance=False)
                        except OffsetsWentBack as exc:
                            self.topic_changed = str(exc)  # the rest of the batch is the same other log
                            break
                    elif idle_timeout is not None and self._idle_for(now, idle_timeout):
                        break
                    elif self._quiet_and_topic_changed(now):
                        break
                    if now - last_commit >= self.commit_interval and self.committing is None:
                        pending = bool(self.dirty)
                        began = time.monotonic()
                        self._commit_in_background()
                        last_commit = time.monotonic()
                        if pending and self.commit_times is not None:
                            # What a commit cycle kept the loop from consuming: starting this one (the
                            # states written), and ending the one before (its held dead letters sent).
                            self.commit_times.add((last_commit - began + finishing) * 1000)
                        finishing = 0.0
                    if on_batch:
                        on_batch(self)
                self.hold_commits_until = 0.0  # the last commit is not put off (see _on_revoke)
                if self.topic_changed:
                    # Usually nothing is pending: the idle loop committed it before asking. A commit
                    # that fails now rolls back what its deleted messages added; stop either way.
                    self.commit()
                    break
                if self.commit() or self.stop or self.failed or self.commit_failures > 1:
                    break
                # The last commit failed (a transaction Kafka ended while the run stood idle, a
                # broker that went away): its unit was rolled back and is redone before stopping,
                # once. Failing again ends the run with that unit uncommitted, not lost: the next
                # run redoes it from the committed offsets.
                log.info("the last commit failed: redoing its unit before stopping")
            return self.totals()
        finally:
            self.close()

    def _idle_for(self, now: float, idle_timeout: float) -> bool:
        """Idle time counts while partitions are assigned; without any (joining, or a rebalance
        waiting for a dead member's session to expire) the consumer waits a while longer first."""
        idle = now - self.last_activity
        if self.states:
            if idle >= idle_timeout:
                log.info("no new orders for %gs: stopping", idle_timeout)
                return True
        elif idle >= max(idle_timeout, UNASSIGNED_GRACE_SECONDS):
            log.info("no partitions assigned for %gs: stopping", idle)
            return True
        return False

    def _quiet_and_topic_changed(self, now: float) -> bool:
        """Quiet for TOPIC_CHECK_SECONDS: asks, that often, whether the orders topic is still there."""
        if now - self.last_activity < TOPIC_CHECK_SECONDS or now - self.topic_checked_at < TOPIC_CHECK_SECONDS:
            return False
        self.topic_checked_at = now
        self.topic_changed = self._orders_topic_changed()
        return self.topic_changed is not None

    def _orders_topic_changed(self) -> str | None:
        """Why the orders topic is not the one this run started on (deleted, or deleted and created
        again: another topic id), in one sentence; None when it is, or when no broker answered (an
        outage is no deletion)."""
        if self._admin is None:
            self._admin = callback_free_admin_client(self.settings)  # kept: a new one would connect each time
        try:
            found = self._admin.describe_topics(TopicCollection([self.topic]), request_timeout=2)[self.topic].result(3)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return (f"{self.topic} was deleted while it was being consumed: stopped; the totals committed "
                        f"before are kept in {self.state_topic}, and a topic created again under this name is "
                        "counted afresh")
            return None
        if self.topic_id and str(found.topic_id) != self.topic_id:
            return (f"{self.topic} was deleted and created again while it was being consumed (topic id "
                    f"{self.topic_id}, now {found.topic_id}): stopped, nothing of the new topic counted; run the "
                    "consumer again, it counts the new topic afresh from its first offset")
        return None

    def _went_back_sentence(self, message, state: PartitionState) -> str:
        recreated = self._orders_topic_changed()
        if recreated:
            return recreated
        return (f"{self.topic}[{message.partition()}] went back from offset {state.next_offset} to {message.offset()} "
                "while it was being consumed (its log was truncated: an unclean leader election, or a broker that "
                f"lost its data): stopped, nothing counted past offset {state.next_offset}; to count what the "
                "partition holds now, reset the group's offsets (kafka-consumer-groups --reset-offsets) and run "
                "again")

    def totals(self) -> Aggregate:
        """The combined aggregate of the partitions this instance owns (including earlier runs)."""
        return combine(self.states.values())

    def close(self) -> None:
        if self.failed and self.committing is not None:
            self.committing.wait()  # ends within its timeouts; nothing more is committed after it
            self.committing = None
        try:
            self.consumer.close()  # revokes: the revoke callback commits what is pending
        except (KafkaException, RuntimeError, ToolFailure) as exc:
            log.warning("closing the consumer: %s", exc)
        self.producer.flush(10)

    # -- one message ------------------------------------------------------------------------------

    def _handle(self, message) -> None:
        error = message.error()
        if error is not None:
            if error.fatal() or error.code() == KafkaError._FATAL:
                self._fail(f"the consumer hit a fatal error and stops, nothing committed past it: {error.str()}")
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error.str())
            return
        partition = message.partition()
        state = self.states.get(partition)
        if state is None:
            return  # not ours any more
        if message.offset() < state.next_offset:
            # Never met in a healthy run: a partition is assigned, and sought back after a rollback,
            # exactly at its state's next offset. Offsets that go back mean the log under them is
            # another one: counting these as seen before would drop new orders without a word.
            raise OffsetsWentBack(self._went_back_sentence(message, state))
        # The one boundary per message: whatever its key, value and headers hold, it ends in the
        # aggregate or in exactly one dead letter. Decode and validate failures are the message's
        # fault; anything else raised here is a bug of ours, dead-lettered as `process` and logged
        # loudly, never allowed to stop the partition. Kafka errors from *sending* the dead letter
        # are not caught: they fail the unit of work, which is rolled back and redone.
        try:
            failure = self._evaluate(state, message)
        except Exception as exc:  # noqa: BLE001 - see above
            log.exception("BUG: handling %s[%d]@%d raised %s; dead-lettering it as stage process",
                          message.topic(), partition, message.offset(), type(exc).__name__)
            failure = Failure(None, "process", exc, 0)
        if failure is not None:
            self.held.append((state, message, failure))  # dead-lettered when the unit's commit begins
        state.next_offset = message.offset() + 1
        self.dirty.add(partition)

    def _evaluate(self, state: PartitionState, message) -> Failure | None:
        """Decode, validate and process one message: None when aggregated, else why it failed."""
        order = None
        try:
            order = self.codec.decode(message.value())
            validate(order, self.products)
        except DecodeError as exc:
            return Failure(None, "deserialize", without_frames(exc), 0)
        except InvalidOrder as exc:
            return Failure(order, "validate", without_frames(exc), 0)
        return self._process(state, message, order)

    def process_order(self, aggregate: Aggregate, order: dict) -> None:
        """The processing step for one valid order. It must change nothing when it raises."""
        aggregate.add_order(order["product"], order["price"])

    def _process(self, state: PartitionState, message, order: dict) -> Failure | None:
        """Process one valid order; an unexpected error is retried, then dead-lettered."""
        give_up_at = None
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                self.process_order(state.aggregate, order)
                self.run_processed += 1
                if self.latency is not None:
                    self.latency.add((time.time_ns() // 1000 - order["created_at"]) / 1000)
                if self.observe_latency:
                    metrics.ORDER_LATENCY.observe((time.time_ns() // 1000 - order["created_at"]) / 1e6)
                return None
            except Exception as exc:  # noqa: BLE001 - any processing failure is routed, never fatal
                delay = self.retry.backoff(attempt)
                give_up_at = give_up_at or time.monotonic() + MAX_RETRY_SECONDS
                if (attempt == self.retry.max_attempts or not is_retryable(exc)
                        or time.monotonic() + delay > give_up_at):
                    return Failure(order, "process", exc, attempt)
                log.warning("processing %s[%d]@%d failed (%s: %s), attempt %d of %d; retrying in %.2fs",
                            message.topic(), message.partition(), message.offset(), type(exc).__name__, exc,
                            attempt, self.retry.max_attempts, delay)
                time.sleep(delay)
        return None

    def _send_dead_letter(self, state: PartitionState, message, failure: Failure,
                          error_timestamp: str | None = None) -> None:
        try:
            reason = self.dead_letters.send_failure(message, failure.order, failure.stage, failure.error,
                                                    failure.retries, self.group,
                                                    None if self.exactly_once else self.delivery_errors,
                                                    error_timestamp)
        finally:
            # A processing error keeps its traceback until here (the original format writes it as
            # the stack trace header); written, or its unit undone, it would only keep a cycle.
            without_frames(failure.error)
        log.debug("dead letter %s[%s]@%s (%s): %s", message.topic(), message.partition(), message.offset(),
                  failure.stage, reason)
        state.aggregate.dead_lettered += 1
        self.run_dead_lettered += 1
        metrics.dead_letter_created(failure.stage, reason)

    # -- commit and rollback ----------------------------------------------------------------------

    def commit(self, in_rebalance: bool = False) -> bool:
        """Commit the current unit of work and wait for it; on failure roll back and return False."""
        if not self._finish_commit(in_rebalance):
            return False
        job = self._begin_commit(in_rebalance)
        if job is None or job is False:
            return job is None
        job.run()
        return self._end_commit(job, in_rebalance)

    def _commit_in_background(self) -> None:
        """From the loop: the commit's waits (exactly-once: the round trips to the coordinators;
        at-least-once: the acknowledgements of the unit's dead letters and states; a p50 of 10-20
        ms with a tail past 100 ms) run on a thread while the loop goes on aggregating. The
        failures met meanwhile are held for the next unit (see _send_held): nothing can be
        produced while a transaction commits, and an acknowledgement wait must cover its own unit
        only. One commit at a time."""
        job = self._begin_commit(False)
        if job:
            self.committing = job
            job.start()

    def _begin_commit(self, in_rebalance: bool) -> CommitJob | None | bool:
        """The unit's commit, ready to run; None: nothing to commit now; False: it failed already
        (rolled back)."""
        if not self.dirty:
            return None
        if not in_rebalance and time.monotonic() < self.hold_commits_until:
            return None  # a rebalance is under way: see _on_revoke
        if not self._send_held(in_rebalance):
            return False
        partitions = sorted(self.dirty)
        offsets = [TopicPartition(self.topic, p, self.states[p].next_offset) for p in partitions]
        records = []
        for partition in partitions:
            state = self.states[partition]
            state.topic_id = self.topic_id
            state.unit_start = self.committed[partition].next_offset
            records.append((partition, state.encode()))
        snapshots = {p: PartitionState.decode(value) for p, value in records}
        self.dirty.clear()  # from here on, what the loop does is the next unit's work

        def write_states(producer):
            # Partition p's state goes to the changelog's partition p: a restore reads only the
            # partitions it was assigned, and an open transaction holds back only those.
            for partition, value in records:
                transactions.produce(producer, self.state_topic, partition=partition,
                                     key=state_key(self.group, self.topic, partition), value=value,
                                     on_delivery=None if self.exactly_once else self.delivery_errors)

        if self.exactly_once:
            producer, metadata = self.producer, self.consumer.consumer_group_metadata()
            try:
                write_states(producer)  # into the open transaction, before it can end
            except (KafkaException, BufferError) as exc:
                self.dirty.update(snapshots)
                self._rollback(exc, in_rebalance)
                return False

            def call():
                producer.send_offsets_to_transaction(offsets, metadata, transactions.CALL_TIMEOUT)
                transactions.commit_transaction(producer)
            return CommitJob(call, snapshots)

        def acknowledged():
            # The dead letters first: a state (with its next_offset) must never reach the
            # changelog before the dead letters of the orders it covers are confirmed.
            self._settle_deliveries()
            write_states(self.producer)
            self._settle_deliveries()

        return CommitJob(acknowledged, snapshots,
                         after=lambda: self.consumer.commit(offsets=offsets, asynchronous=False), offsets=offsets)

    def _end_commit(self, job: CommitJob, in_rebalance: bool) -> bool:
        if job.error is None and job.after is not None and job.offsets_state is not OFFSETS_COMMITTED:
            try:
                job.after()
            except (KafkaException, CommitFailed, BufferError) as exc:
                job.error = exc
        if job.error is not None:
            if not isinstance(job.error, KafkaException | CommitFailed | BufferError):
                raise job.error
            # Everything since the last commit is undone: this unit, and what followed it.
            self.dirty.update(job.snapshots)
            self._rollback(job.error, in_rebalance)  # drops the held failures too: read again
            if in_rebalance and self.incremental:
                self.reseek = bool(self.committed)  # no seek inside a rebalance: the loop seeks
            return False
        if self.exactly_once:
            self.producer.begin_transaction()
        for partition, snapshot in job.snapshots.items():
            self.committed[partition] = snapshot
        if self.commit_failures:
            log.info("commits succeed again: processing resumed")
            self.commit_failures = 0
        return True

    def _finish_commit(self, in_rebalance: bool = False, from_loop: bool = False) -> bool:
        """Wait for the commit in flight, if any, and act on its outcome. False when it failed:
        rolled back. From the loop, at-least-once's offset commit is not waited for (see
        _offsets_settled)."""
        job = self.committing
        if job is None:
            return True
        job.wait()
        if from_loop and not self._offsets_settled(job):
            return True  # at-least-once: the unit's offset commit is on its way; the loop goes on
        self.committing = None
        return self._end_commit(job, in_rebalance)

    def _send_held(self, in_rebalance: bool) -> bool:
        """Dead-letter the failures held so far, into the open unit (its transaction, or the
        deliveries its commit waits for). False when one could not even be queued: rolled back.

        Failures are held until the unit's commit begins, not sent one by one as met: a message
        produced alone into an idle producer costs 30-50 us (waking librdkafka's broker thread,
        code cold in the caches) against 8-11 us in a burst, and 1 % poison among good orders
        cost exactly-once 0.4-0.5 s of CPU per 200,000 messages sent alone."""
        if not self.held:
            return True
        held, self.held = self.held, []
        written_at = utc_now_iso()  # one time for the batch: they are written together
        try:
            for state, message, failure in held:
                self._send_dead_letter(state, message, failure, written_at)
        except (KafkaException, BufferError) as exc:
            self._rollback(exc, in_rebalance)
            return False
        return True

    def _offsets_settled(self, job: CommitJob) -> bool:
        """At-least-once, from the loop: commit the unit's offsets without waiting for the group
        coordinator (a synchronous commit held the loop p50 12 ms, p99 54 ms every 100 ms, and the
        orders arriving meanwhile waited). True once there is nothing more to wait for: the
        result came (on_commit, served by the loop's consume()), or the loop cannot go on without
        it (a full batch of held dead letters, or no answer within ASYNC_COMMIT_PATIENCE_SECONDS),
        and then _end_commit commits synchronously.

        The unit stays `committing` until then, so the next unit cannot begin: its states name
        this unit's end as their start, which must be the committed offset by the time they are
        written (see _honour_operator)."""
        if job.after is None or job.offsets is None or job.error is not None:
            return True
        if job.offsets_state is None:
            try:
                self.consumer.commit(offsets=job.offsets, asynchronous=True)
            except KafkaException as exc:
                job.error = exc
                return True
            job.offsets_state, job.offsets_sent_at = OFFSETS_SENT, time.monotonic()
            return False
        if job.offsets_state is OFFSETS_SENT:
            return (len(self.held) >= self.batch_size
                    or time.monotonic() - job.offsets_sent_at > ASYNC_COMMIT_PATIENCE_SECONDS)
        if isinstance(job.offsets_state, KafkaError):
            job.error = KafkaException(job.offsets_state)
        return True

    def _on_offsets_committed(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """on_commit: the result of the asynchronous offset commit in flight, if it is that one
        (a later synchronous commit of the same unit makes it moot)."""
        job = self.committing
        if job is None or job.offsets is None or job.offsets_state is not OFFSETS_SENT:
            return
        if {(tp.partition, tp.offset) for tp in partitions if tp.topic == self.topic} != \
                {(tp.partition, tp.offset) for tp in job.offsets}:
            return
        failed = error or next((tp.error for tp in partitions if tp.error is not None), None)
        job.offsets_state = failed or OFFSETS_COMMITTED

    def _settle_deliveries(self) -> None:
        """At-least-once: wait until every message sent so far is acknowledged or has failed.

        Each message is bounded by message.timeout.ms, so this ends; nothing of a unit is left
        queued to be delivered behind the back of its rollback.
        """
        settle(self.producer)
        if self.delivery_errors:
            raise CommitFailed(self.delivery_errors.first)

    def _abort_transaction(self, timeout: float = ABORT_TIMEOUT_SECONDS) -> None:
        """Abort the open transaction, then begin the next one.

        A producer that cannot abort (fenced, or an abort that keeps timing out, as seen after the
        broker came back from an outage longer than transaction.timeout.ms) is replaced: a new
        producer with the same transactional.id makes the coordinator abort whatever was left open."""
        try:
            transactions.abort_transaction(self.producer, timeout)
        except KafkaException as exc:
            error = exc.args[0]
            if not error.fatal():
                log.warning("the transaction could not be aborted within %gs (%s): replacing the producer, "
                            "which aborts it", timeout, error.str())
            self._renew_producer(error)
            return
        self.producer.begin_transaction()

    def _renew_producer(self, error: KafkaError | str) -> None:
        """Replace a transactional producer that Kafka ended (or that cannot abort), then begin a
        transaction on the new one.

        A transaction left open longer than transaction.timeout.ms (the broker unreachable for that
        long in the middle of a unit, or a long burst of retries) is aborted by the coordinator,
        and the producer that owned it gets a fatal "fenced" error. That is not another instance:
        with the same transactional.id, a new producer takes over (init_transactions bumps the
        epoch) and the unit since the last commit, already rolled back, is redone. Only when this
        keeps happening is another live instance with the same --instance-id the likely cause.
        """
        now = time.monotonic()
        fenced = isinstance(error, KafkaError) and error.fatal()
        if fenced:  # only fencing counts: replacing a producer after an outage is routine
            self.renewals = [t for t in self.renewals if now - t < RENEWAL_WINDOW_SECONDS] + [now]
        if len(self.renewals) > MAX_RENEWALS:
            cause = (f"another instance with --instance-id {self.instance_id} is probably running"
                     if self.instance_id else "Kafka keeps ending its transactions")
            self._fail(f"the transactional producer had to be replaced {len(self.renewals)} times within "
                       f"{RENEWAL_WINDOW_SECONDS:g}s ({error.str()}): {cause}")
        if not fenced:
            log.info("a new transactional producer takes over (%s); the open transaction is aborted by it",
                     error if isinstance(error, str) else error.str())
        if fenced:
            log.warning("Kafka ended the open transaction (%s), most likely because it was unreachable for longer "
                        "than transaction.timeout.ms: a new transactional producer redoes the work since the last "
                        "commit", error.str())
        self.producer = Producer(self.producer_config)
        self.dead_letters.producer = self.producer
        try:
            transactions.retried(self.producer.init_transactions, "starting a new transactional producer")
        except KafkaException as exc:
            self._fail(f"cannot start a new transactional producer to replace the last one: {exc.args[0].str()}")
        self.producer.begin_transaction()

    def _fail(self, reason: str):
        """Stop for good: nothing of the open unit is committed, not even by the revoke on close."""
        self.failed = True
        self.dirty.clear()
        raise ToolFailure(reason)

    def _rollback(self, exc: Exception, in_rebalance: bool) -> None:
        """Undo the unit of work: abort, restore each partition's last committed state, seek back."""
        error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
        if self.dead_letters.permanent_error is not None:
            # The DLQ refuses every write for a reason only an operator can fix (ACLs, a policy):
            # retrying would stall every partition for ever. Stop, with nothing committed past it.
            self._drop_uncommitted(seek=False)
            self._fail(self.dead_letters.permanent_error)
        fatal = error if isinstance(error, KafkaError) and error.fatal() and self.exactly_once else None
        if fatal is None and self.exactly_once and isinstance(error, KafkaError) and error.code() in UNREACHABLE:
            fatal = STALE  # see _on_lost: a coordinator that timed out is not asked again by this producer
        if isinstance(error, KafkaError) and error.fatal() and not self.exactly_once:
            self._fail(f"this consumer hit a fatal error: {error.str()}")
        reason = error.str() if isinstance(error, KafkaError) else str(exc)
        rebalancing = isinstance(error, KafkaError) and error.code() in REBALANCING
        if rebalancing and not in_rebalance:
            # The group moved to a new generation under this unit (another instance joined or
            # left): redo it at once, and commit again once this instance has its new assignment.
            self.hold_commits_until = time.monotonic() + HOLD_COMMITS_SECONDS
        positions = self._positions()
        self._drop_uncommitted(seek=not in_rebalance, renew=fatal)
        self.commit_failures += 1
        if in_rebalance:
            log.warning("commit failed while partitions move (%s): the next owner redoes the work", reason)
            return
        delay = 0.0 if rebalancing else self.retry.backoff(min(self.commit_failures, 10))
        deadline = time.monotonic() + delay
        # A topic this consumer writes, deleted under it, fails every retry until it is created
        # again; librdkafka's words for it ("Unknown topic", "Message timed out") do not say which
        # or why. Asked at each failure: an outage answers nothing, and the ask comes out of the wait.
        missing = missing_topics(self.consumer, [self.dead_letters.topic, self.state_topic], timeout=2)
        if missing:
            reason = (f"topic {', '.join(missing)} does not exist: it was deleted; `python setup_dlq.py` creates it "
                      "again and the consumer goes on by itself")
        log.warning("commit failed (%s): holding at %s, nothing skipped; retrying in %.1fs",
                    reason, positions, delay)
        while not self.stop and time.monotonic() < deadline:
            time.sleep(0.05)

    def _positions(self) -> str:
        """Where the unit's partitions stand (all owned ones if it failed before touching any)."""
        return ", ".join(f"{self.topic}[{p}]@{self.committed[p].next_offset}"
                         for p in sorted(self.dirty or self.committed))

    def _drop_uncommitted(self, seek: bool, renew: KafkaError | str | None = None) -> None:
        if self.exactly_once:
            if renew is not None:
                self._renew_producer(renew)  # a fenced producer cannot even abort: replace it
            else:
                self._abort_transaction()
        else:
            settle(self.producer)  # the abandoned unit's messages end before it is redone
        self.delivery_errors.clear()
        self.held.clear()  # failures of the undone unit: their messages are read again
        for partition in self.dirty:
            snapshot = self.committed[partition]
            undone = self.states[partition].aggregate
            self.run_processed -= undone.processed - snapshot.aggregate.processed
            self.run_dead_lettered -= undone.dead_lettered - snapshot.aggregate.dead_lettered
            self.states[partition] = snapshot.copy()
        if seek:
            self._seek_to_committed()
            # What was rolled back is work to redo, not idleness: without this, a unit that took
            # longer than --idle-timeout (a stall, an outage) would end the run before its redo.
            # Only at the first failure of a streak: commits that keep failing still let an
            # --idle-timeout run end (its uncommitted work is rolled back, nothing is lost).
            if not self.commit_failures:
                self.last_activity = time.monotonic()
        self.dirty.clear()

    def _seek_to_committed(self) -> None:
        # Every owned partition, not only the touched ones: a batch abandoned half way may hold
        # messages of partitions it had not reached yet.
        for partition, snapshot in self.committed.items():
            self.consumer.seek(TopicPartition(self.topic, partition, snapshot.next_offset))

    # -- rebalancing ------------------------------------------------------------------------------

    def _on_assign(self, consumer, partitions) -> None:
        self._finish_commit(in_rebalance=True)
        self.hold_commits_until = 0.0  # the rebalance is over: this generation's commits are valid
        if not partitions and self.incremental:
            return  # an incremental rebalance that gave this instance nothing new
        # Partitions added to the orders topic while running need their changelog partitions too.
        if any(tp.partition >= self.state_partitions for tp in partitions):
            try:
                self.state_partitions = require_co_partitioned(consumer, self.topic, self.state_topic)
            except ToolFailure as exc:
                self._fail(str(exc))
        states, restored = self._starting_states(consumer, partitions)
        for tp in partitions:
            state = states[tp.partition]
            self.states[tp.partition] = state
            self.committed[tp.partition] = state.copy()
            tp.offset = state.next_offset
        if self.incremental:
            consumer.incremental_assign(partitions)  # added to the partitions kept through the rebalance
        else:
            consumer.assign(partitions)
        self.last_activity = time.monotonic()  # joining the group does not count as idle time
        log.info("assigned %s (restored %d from %s)",
                 ", ".join(f"{self.topic}[{tp.partition}]@{tp.offset}" for tp in partitions),
                 len(restored), self.state_topic)

    def _starting_states(self, consumer, partitions) -> tuple[dict[int, PartitionState], dict]:
        """Each assigned partition's state to start from: committed offsets, changelog states and,
        for a partition never committed, its first offset. These reads run inside the assignment
        callback, right when Kafka may be coming back from an outage (a broker that froze, or one
        that has not yet loaded its partitions: "Unknown partition"); they are retried until
        ASSIGN_PATIENCE_SECONDS pass, then the run stops with one sentence and nothing committed
        for these partitions, which a restart takes over."""
        began_at = time.monotonic()
        deadline = began_at + ASSIGN_PATIENCE_SECONDS
        failures = 0
        while True:
            try:
                began = time.monotonic()
                committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=60)}
                fetched = time.monotonic()
                restored = self._restore(committed)
                log.debug("assignment: committed offsets in %.3fs, states restored in %.3fs", fetched - began,
                          time.monotonic() - fetched)
                states = {}
                for tp in partitions:
                    state = self._honour_operator(tp, restored.get(tp.partition), committed.get(tp.partition, -1))
                    if state is None:
                        start = committed.get(tp.partition, -1)
                        if start < 0:
                            start = consumer.get_watermark_offsets(tp, timeout=10)[0]
                        state = PartitionState(start)
                    states[tp.partition] = state
                return states, restored
            except KafkaException as exc:
                error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                reason = error.str() if error is not None else str(exc)
                failures += 1
                delay = self.retry.backoff(min(failures, 10))
                if self.stop or (error is not None and error.fatal()) or time.monotonic() + delay > deadline:
                    names = ", ".join(f"{self.topic}[{tp.partition}]" for tp in partitions)
                    what = "stopped, as asked, while" if self.stop else "could not finish"
                    self._fail(f"{what} taking over {names}: reading where they stand failed for "
                               f"{time.monotonic() - began_at:.0f}s ({reason}); nothing was processed for them, "
                               "and a restart takes them over")
                log.warning("reading where the assigned partitions stand failed (%s); retrying in %.1fs",
                            reason, delay)
                time.sleep(delay)
                # The client learns a partition's new leader from metadata, which it refreshes by
                # itself only for partitions it already fetches: not for these, being assigned.
                with contextlib.suppress(KafkaException):
                    consumer.list_topics(self.topic, timeout=10)

    def _honour_operator(self, tp: TopicPartition, state: PartitionState | None,
                         committed: int) -> PartitionState | None:
        """The restored state, unless an operator changed the ground under it; then say so in one line.

        - The orders topic was deleted and created again (another topic id): its offsets start
          over, so the old totals describe messages that are gone. That partition starts afresh.
        - The group's offset was reset below what the state has counted (kafka-consumer-groups
          --reset-offsets): the operator asks for those messages to be processed again. The
          partition's totals start afresh at the reset point, so nothing is counted twice.
        """
        if state is None:
            return None
        where = f"{self.topic}[{tp.partition}]"
        if state.topic_id and self.topic_id and state.topic_id != self.topic_id:
            start = self.consumer.get_watermark_offsets(tp, timeout=10)[0]
            log.warning("%s: the topic was deleted and created again since its totals were written (topic id %s, "
                        "now %s): starting its totals afresh from offset %d", where, state.topic_id,
                        self.topic_id, start)
            return PartitionState(start)
        reset = 0 <= committed < state.next_offset and (self.exactly_once or committed != state.unit_start)
        if reset:
            log.warning("%s: the group's offset was reset from %d to %d: re-counting from %d with fresh totals "
                        "for this partition", where, state.next_offset, committed, committed)
            return None
        return state

    def _restore(self, committed: dict[int, int], timeout: float = 120.0) -> dict[int, PartitionState]:
        """Changelog states of the given partitions, at least as new as their committed offsets.

        Every commit writes a partition's state together with (exactly-once) or before
        (at-least-once) its offset, so a state older than the committed offset only means the
        changelog is not readable that far yet: read_committed stops at the first transaction
        still open on the changelog (another instance's current commit, or a dead instance's,
        which the coordinator aborts after transaction.timeout.ms). Wait for it.
        """
        deadline = time.monotonic() + timeout
        # A partition the group has committed but whose state is not at its changelog partition's
        # tail was written before co-partitioning: looked for once in the whole changelog.
        scan_for = {p for p, offset in committed.items() if offset >= 0}
        while True:
            restored = read_states(self.settings, self.state_topic, self.group, self.topic, set(committed),
                                   co_partitioned=True, scan_for=scan_for)
            scan_for = set()
            behind = sorted(p for p, offset in committed.items()
                            if offset >= 0 and (p not in restored or restored[p].next_offset < offset))
            if not behind:
                return restored
            if time.monotonic() > deadline:
                raise ToolFailure(f"the changelog {self.state_topic} has no state for {self.topic} partition(s) "
                                  f"{behind} as recent as the group's committed offsets; refusing to count twice")
            log.info("waiting for %s to show the latest state of partition(s) %s (a transaction is still open)",
                     self.state_topic, behind)
            time.sleep(0.5)

    def _on_revoke(self, consumer, partitions) -> None:
        # Finish the unit of work while we still own these partitions; the next owner restores it.
        # The unit covers every dirty partition, the ones kept through an incremental rebalance too.
        committed = self.failed or self.commit(in_rebalance=True)
        for tp in partitions:
            self.states.pop(tp.partition, None)
            self.committed.pop(tp.partition, None)
        if partitions:
            log.info("revoked %s; keeping %d partition(s)",
                     ", ".join(f"{self.topic}[{tp.partition}]" for tp in partitions), len(self.states))
        if self.two_rounds and partitions:
            # After giving partitions up, the member joins the group again at once (the second
            # round of an incremental rebalance), which ends the generation our commits carry: a
            # transactional offset commit sent meanwhile fails with ILLEGAL_GENERATION and the whole
            # unit is redone. The kept partitions go on being processed; their commit waits for the
            # new assignment (_on_assign), or HOLD_COMMITS_SECONDS at most.
            self.hold_commits_until = time.monotonic() + HOLD_COMMITS_SECONDS
        if self.incremental:
            # The kept partitions were rolled back with the rest of the failed unit, but their
            # fetch positions were not (no seek inside a rebalance): the loop seeks them first.
            self.reseek = not committed and bool(self.committed)

    def _on_lost(self, consumer, partitions) -> None:
        log.warning("partitions lost (session expired): discarding uncommitted work")
        self._finish_commit(in_rebalance=True)
        # Kafka was out of reach for longer than the session: the producer's cached coordinators may
        # be gone, and librdkafka can then block in send_offsets_to_transaction past its timeout
        # (confluentinc/librdkafka#5511, #5456). A new producer starts with a fresh cache.
        self._drop_uncommitted(seek=False, renew=STALE if self.exactly_once else None)
        self._on_revoke(consumer, partitions)
