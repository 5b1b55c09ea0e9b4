"""Producing orders under the retry policy: the delivery report, not produce(), decides success."""

from __future__ import annotations

import heapq
import itertools
import time

from confluent_kafka import KafkaError, Producer

from orders_dlq import metrics
from orders_dlq.cli import log
from orders_dlq.codec import AvroCodec, DecodeError
from orders_dlq.dead_letter import DeadLetter
from orders_dlq.retry import RetryPolicy, is_retryable

UNREACHABLE_ERRORS = {KafkaError._MSG_TIMED_OUT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT,
                      KafkaError._TIMED_OUT}


class OrderSender:
    """Sends encoded orders; a failed delivery is retried after a backoff, up to max_attempts.

    Each attempt is bounded by the producer's message.timeout.ms, so the whole life of an order
    is bounded by RetryPolicy.total_bound(). What still fails is kept as a produce-stage dead
    letter for the caller to hand to the DLQ (or the spool).

    Only failures need a Python callback: with `delivery.report.only.error` librdkafka reports
    just those, and an order is delivered once it has left librdkafka's queue without a report.
    """

    def __init__(self, config: dict, topic: str, policy: RetryPolicy, codec: AvroCodec, client_id: str):
        self.producer = Producer({
            **config,
            # Report failures only, through one callback: a Python call per successful order, or a
            # callback object per produce(), would cost more than sending the order.
            "delivery.report.only.error": True,
            "on_delivery": self._on_first_attempt,
        })
        self.topic = topic
        self.policy = policy
        self.codec = codec
        self.client_id = client_id
        self.attempts = 0  # produce() calls, retries included
        self.failed_attempts = 0
        self.retries = 0
        self._finished = False
        self.failed: list[DeadLetter] = []
        self.last_error: KafkaError | None = None
        self._due: list = []  # heap of (due time, sequence, key, value, attempts so far)
        self._sequence = itertools.count()

    def send(self, key: bytes, value: bytes) -> None:
        """Hand one order to librdkafka (and serve delivery reports); the report decides success."""
        self._produce(key, value)
        if self._due:
            self._produce_due_retries()

    def _produce(self, key, value, on_delivery=None) -> None:
        while True:
            try:
                # Without on_delivery the producer-wide callback (a first attempt) reports failures.
                self.producer.produce(self.topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                # librdkafka's queue is full: serve delivery reports until there is room.
                self.producer.poll(0.05)
                self._produce_due_retries()
        self.attempts += 1
        self.producer.poll(0)

    def _on_first_attempt(self, error, message) -> None:
        self._on_delivery(error, message, 1)

    def _on_delivery(self, error, message, attempt: int) -> None:
        if error is None:
            return  # only failures are reported (delivery.report.only.error)
        self.failed_attempts += 1
        self.last_error = error
        if attempt < self.policy.max_attempts and is_retryable(error):
            due = time.monotonic() + self.policy.backoff(attempt)
            heapq.heappush(self._due, (due, next(self._sequence), message.key(), message.value(), attempt))
            return
        self.failed.append(self._dead_letter(message, error, attempt))
        metrics.dead_letter_created("produce", self.failed[-1].error_reason)

    def _produce_due_retries(self) -> None:
        now = time.monotonic()
        while self._due and self._due[0][0] <= now:
            _, _, key, value, attempts = heapq.heappop(self._due)
            attempt = attempts + 1
            self.retries += 1
            metrics.DELIVERY_RETRIES.inc()  # only after a failure: rare
            # A retry (rare) carries its attempt number in a callback of its own.
            self._produce(key, value,
                          lambda error, message, attempt=attempt: self._on_delivery(error, message, attempt))

    def service(self, timeout: float = 0.0) -> None:
        """Serve delivery reports and send the retries that are due, for `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            # poll() returns as soon as it served one event: loop until the time is really up.
            self.producer.poll(max(0.0, min(deadline - time.monotonic(), 0.1)))
            self._produce_due_retries()
            if time.monotonic() >= deadline:
                return

    @property
    def delivered(self) -> int:
        """Orders acknowledged: every attempt that left librdkafka without a failure report.

        Exact once finish() returned; before that an estimate (librdkafka's queue length also
        counts events such as connection errors).
        """
        if self._finished:
            return self.attempts - self.failed_attempts
        return max(0, self.attempts - self.failed_attempts - len(self.producer))

    def pending(self) -> int:
        # len(producer): messages queued or in flight, plus delivery reports not yet served.
        return len(self.producer) + len(self._due)

    def finish(self, progress=None) -> None:
        """Wait until every order is delivered or has failed for good (bounded by the policy)."""
        while self.pending():
            self.service(0.05)
            if progress:
                progress()
        self._finished = True

    def _dead_letter(self, message, error: KafkaError, attempts: int) -> DeadLetter:
        try:
            order = self.codec.decode(message.value())
        except DecodeError:
            order = None  # a deliberately broken message (--poison-ratio) that also failed to deliver
        cause = "Kafka broker unavailable" if error.code() in UNREACHABLE_ERRORS else "delivery failed"
        log.debug("giving up on %s after %d attempt(s): %s", message.key(), attempts, error.str())
        return DeadLetter.for_order(
            order,
            error_reason=f"{cause} after {attempts} attempt(s): {error.str()}",
            error_type=f"KafkaError.{error.name()}",
            error_stage="produce",
            original_topic=self.topic,
            failed_by=self.client_id,
            retry_count=attempts,
            original_key=message.key(),
            original_value=message.value(),
        )

    @property
    def cluster_unreachable(self) -> bool:
        return self.last_error is not None and self.last_error.code() in UNREACHABLE_ERRORS
