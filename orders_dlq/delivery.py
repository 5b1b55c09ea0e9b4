"""Producing orders: the delivery report, not produce(), decides success; a failure is handed on at once.

One delivery budget per order. librdkafka's idempotent producer retries an order internally, for
up to message.timeout.ms (`--delivery-timeout`), without ever duplicating or reordering it. When
the budget runs out the order is *not* sent again by us: a timed-out message may have been written
(the broker took it, its acknowledgement was lost in a leader election), and a second copy would
be counted twice. It becomes a `produce` dead letter whose reason says it may have been delivered.
So a broker failover shorter than the budget costs nothing, and nothing is ever counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from confluent_kafka import KafkaError, KafkaException, Producer

from orders_dlq import metrics, transactions
from orders_dlq.codec import AvroCodec, DecodeError
from orders_dlq.dead_letter import DeadLetter
from orders_dlq.errors import NotKept
from orders_dlq.logs import log

UNREACHABLE_ERRORS = {KafkaError._MSG_TIMED_OUT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT,
                      KafkaError._TIMED_OUT}
# The orders topic is not there (any more): librdkafka's words for it, and the broker's.
TOPIC_MISSING_ERRORS = {KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART,
                        KafkaError.UNKNOWN_TOPIC_ID}
# Failures are handed on (to the spool, durably) in batches of this many, or at every service()
# call: memory holds at most one batch, whatever the count and however long the outage.
FAILURE_BATCH = 500


class OrderSender:
    """Sends encoded orders; what fails for good is handed to `on_failures` as it fails.

    Only failures need a Python callback: with `delivery.report.only.error` librdkafka reports
    just those, and an order is delivered once it has left librdkafka's queue without a report.
    """

    def __init__(self, config: dict, topic: str, codec: AvroCodec, client_id: str,
                 on_failures: Callable[[list[DeadLetter]], None]):
        self.producer = Producer({
            **config,
            # Report failures only, through one callback: a Python call per successful order, or a
            # callback object per produce(), would cost more than sending the order.
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
        })
        self._produce = self.producer.produce  # looked up once: send() runs for every order
        self.topic = topic
        self.codec = codec
        self.client_id = client_id
        self.budget = config.get("message.timeout.ms", 300000) / 1000
        self.on_failures = on_failures
        self.attempts = 0  # produce() calls
        self.failed = 0  # orders that failed for good (and were handed on)
        self._finished = False
        self._failures: list[DeadLetter] = []  # not yet handed on: at most FAILURE_BATCH
        self.last_error: KafkaError | None = None
        # Failed orders `on_failures` could not keep either (NotKept: the spool's disk is full, say).
        # The first one halts sending; the orders still in librdkafka's queue then end, delivered
        # or failed, so the ids kept here are bounded by that queue, not by the outage.
        self.not_kept = 0
        self.not_kept_ids: list[str] = []
        self.not_kept_cause: str | None = None
        # produce()'s own refusal of an order, which halts sending too (see _refused).
        self.refusal: KafkaError | None = None
        # True once a failure could be neither delivered nor kept, or produce() refused an order:
        # sending more would lose more, or fail the same way. An attribute, not a property:
        # producer.py asks it once per order.
        self.halted = False

    def send(self, key: bytes, value: bytes) -> None:
        """Hand one order to librdkafka (and serve delivery reports); the report decides success."""
        self.attempts += 1
        try:
            try:
                self._produce(self.topic, value, key)
            except BufferError:
                # librdkafka's queue is full: wait for room, and hand failures reported meanwhile on at once.
                transactions.produce(self.producer, self.topic, value=value, key=key, full_wait=0.05,
                                     on_full=self._hand_on)
        except KafkaException as exc:
            self._refused(key, value, exc.args[0])
        # Delivery reports are failures only (see above): serving them every POLL_EVERY orders is
        # enough, and a poll() per order cost a tenth of the producer's time.
        if not self.attempts % transactions.POLL_EVERY:
            self.producer.poll(0)

    def _refused(self, key: bytes, value: bytes, error: KafkaError) -> None:
        """produce() itself refused the order (the topic was deleted: librdkafka knows it no longer
        exists; a fatal idempotence error): it fails like an undelivered one, and sending halts,
        since every next order would be refused the same way."""
        self.refusal = error
        self.halted = True
        self._failures.append(self._dead_letter(_Unsent(key, value), error))
        metrics.dead_letter_created("produce", self._failures[-1].error_reason)

    def _on_delivery(self, error, message) -> None:
        if error is None:
            return  # only failures are reported (delivery.report.only.error)
        self.last_error = error
        self._failures.append(self._dead_letter(message, error))
        metrics.dead_letter_created("produce", self._failures[-1].error_reason)
        # One poll() can serve a whole expired queue (100,000 reports): hand on as the batch fills,
        # from here, so that no more than FAILURE_BATCH failures are ever held in memory.
        if len(self._failures) >= FAILURE_BATCH:
            self._hand_on()

    def _hand_on(self) -> None:
        if self._failures:
            failures, self._failures = self._failures, []
            self.failed += len(failures)
            try:
                self.on_failures(failures)
            except NotKept as exc:
                # Not raised from here (this runs inside librdkafka's delivery callback, and the
                # orders still queued would end unaccounted for): counted, named, and sending halts.
                self.not_kept += len(failures)
                self.not_kept_ids += [d.order_id or "?" for d in failures]
                self.not_kept_cause = exc.cause
                self.halted = True

    def service(self, timeout: float = 0.0) -> None:
        """Serve delivery reports for `timeout` seconds and hand on what failed."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if remaining < 0.001:
                # poll() counts whole milliseconds: a shorter wait would be poll(0) in a loop, a
                # core spinning (at --rate 5000 the gap is 0.2 ms: producer.py used 86% of a core
                # and took it from the broker and the consumers on a small machine).
                time.sleep(remaining)
                break
            # poll() returns as soon as it served one event: loop until the time is really up.
            self.producer.poll(min(remaining, 0.1))
        self._hand_on()

    @property
    def delivered(self) -> int:
        """Orders acknowledged: every order that left librdkafka without a failure report.

        Exact once finish() returned; before that an estimate (librdkafka's queue length also
        counts events such as connection errors).
        """
        failed = self.failed + len(self._failures)
        if self._finished:
            return self.attempts - failed
        return max(0, self.attempts - failed - len(self.producer))

    def pending(self) -> int:
        # len(producer): messages queued or in flight, plus delivery reports not yet served.
        return len(self.producer)

    def finish(self, progress=None) -> None:
        """Wait until every order is delivered or has failed for good (each bounded by the budget)."""
        while self.pending():
            self.service(0.05)
            if progress:
                progress()
        self._hand_on()
        self._finished = True

    def _dead_letter(self, message, error: KafkaError) -> DeadLetter:
        try:
            order = self.codec.decode(message.value())
        except DecodeError:
            order = None  # a deliberately broken message (--poison-ratio) that also failed to deliver
        if error.code() == KafkaError._MSG_TIMED_OUT:
            # Expired in librdkafka's queue or waiting for an acknowledgement: the broker may have it.
            reason = (f"Kafka broker unavailable: not confirmed within the {self.budget:g}s delivery budget; "
                      f"it may have been written to {self.topic} anyway (a timeout does not tell)")
        elif error.code() in TOPIC_MISSING_ERRORS:
            reason = f"topic {self.topic} does not exist (deleted while orders were sent?): {error.str()}"
        elif error.code() in UNREACHABLE_ERRORS:
            reason = f"Kafka broker unavailable: {error.str()}"
        else:
            reason = f"delivery failed: {error.str()}"
        log.debug("giving up on %s: %s", message.key(), error.str())
        return DeadLetter.for_order(
            order,
            error_reason=reason,
            error_type=f"KafkaError.{error.name()}",
            error_stage="produce",
            original_topic=self.topic,
            failed_by=self.client_id,
            retry_count=1,
            original_key=message.key(),
            original_value=message.value(),
        )

    @property
    def cluster_unreachable(self) -> bool:
        return self.last_error is not None and self.last_error.code() in UNREACHABLE_ERRORS


class _Unsent(NamedTuple):
    """What _dead_letter reads of a message, for an order produce() refused: it never became one."""

    key_bytes: bytes
    value_bytes: bytes

    def key(self) -> bytes:
        return self.key_bytes

    def value(self) -> bytes:
        return self.value_bytes
