"""Producing and Kafka transactions, written once for the aggregator, the replayer and the DLQ writer.

- `produce()` never fails because librdkafka's local queue is full (BufferError): it serves
  delivery reports until there is room. A loop, not a recursion: an outage of any length only
  makes it turn longer.
- `DeliveryErrors` collects what the broker refused; a unit of work is committed only without any.
- One retry policy for the transactional calls: a *retriable* error (a request timed out, the
  coordinator moved) is retried until a deadline, because the call goes on in the background
  and the same call picks its result up; an abortable or fatal error is the caller's to handle.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import KafkaException, Producer

from orders_dlq.errors import ToolFailure
from orders_dlq.logs import log

# produce() calls between two polls for delivery reports, where a poll per message is not needed
# (reports of failures only, or a flush to come); far below the queue (100,000 messages).
POLL_EVERY = 64
# Each transactional call waits this long for the coordinator before it is tried again.
CALL_TIMEOUT = 30.0


def produce(producer: Producer, topic: str, *, full_wait: float = 0.1,
            on_full: Callable[[], None] | None = None, poll: bool = True, **message) -> None:
    """producer.produce(topic, **message), waiting for room while the local queue is full, then
    poll(0) for delivery reports unless the caller serves them itself (`poll`=False).

    `on_full` runs after each wait (the order producer hands its failures on there)."""
    while True:
        try:
            producer.produce(topic, **message)
            break
        except BufferError:
            # queue.buffering.max.messages reached: delivery reports free room as messages are
            # acknowledged or expire (each within message.timeout.ms), so this ends.
            producer.poll(full_wait)
            if on_full is not None:
                on_full()
    if poll:
        producer.poll(0)


class DeliveryErrors:
    """A delivery callback that keeps what the broker refused, as "topic: error" sentences."""

    def __init__(self):
        self.errors: list[str] = []

    def __call__(self, error, message) -> None:
        if error is not None:
            self.errors.append(f"{message.topic()}: {error.str()}")

    def __bool__(self) -> bool:
        return bool(self.errors)

    @property
    def first(self) -> str | None:
        return self.errors[0] if self.errors else None

    def clear(self) -> None:
        self.errors.clear()


def init_transactions(producer: Producer, what: str, hint: str = "") -> None:
    """Register the transactional.id with its coordinator (fencing any older producer with the same
    id and aborting what it left open), or end the run in one sentence."""
    try:
        producer.init_transactions(CALL_TIMEOUT)
    except KafkaException as exc:
        raise ToolFailure(f"cannot start a Kafka transaction for {what} ({exc.args[0].str()})"
                          + (f"; {hint}" if hint else "")) from None


def retried(call: Callable[[float], None], what: str, timeout: float = 120.0) -> None:
    """A transactional call, made again while its error is retriable, until `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            call(CALL_TIMEOUT)
            return
        except KafkaException as exc:
            error = exc.args[0]
            if not error.retriable() or time.monotonic() > deadline:
                raise
            log.warning("%s: %s; trying again", what, error.str())


def commit_transaction(producer: Producer, timeout: float = 120.0) -> None:
    """Commit the open transaction: its messages and consumed offsets become visible together."""
    retried(producer.commit_transaction, "committing the transaction", timeout)


def abort_transaction(producer: Producer, timeout: float = 120.0) -> None:
    """Abort the open transaction: read_committed readers never see its messages.

    Any error but a fatal one is tried again (an abort must happen before the next transaction
    can begin) until `timeout`; a fatal error (the producer was fenced) is raised at once, since
    no abort can succeed on that producer any more."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            producer.abort_transaction(CALL_TIMEOUT)
            return
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal() or time.monotonic() > deadline:
                raise
            log.warning("aborting the transaction: %s; trying again", error.str())
            time.sleep(1)
