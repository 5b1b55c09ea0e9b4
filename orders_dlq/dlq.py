"""Sending dead letters: to the DLQ topic when Kafka takes them, to the durable spool when it cannot."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from orders_dlq.cli import KafkaSettings, ToolFailure, log
from orders_dlq.codec import dead_letter_codec
from orders_dlq.dead_letter import DeadLetter, DeadLetterCodec
from orders_dlq.kafka import read_to_end, reader_config, reliable_producer_config, settle
from orders_dlq.spool import SPOOL_ID_HEADER, Spool


@dataclass
class SendResult:
    delivered: int = 0
    spooled: int = 0


@dataclass
class DrainResult:
    sent: int = 0
    already_in_kafka: int = 0
    remaining: int = 0


class DeadLetterProducer:
    """The one way this toolkit writes a dead letter, shared by the producer and the consumer.

    `send` is asynchronous (the consumer confirms a batch at its commit, the transactional
    consumer through its transaction); `send_confirmed` waits for the broker's acknowledgement
    and spools whatever Kafka did not take.
    """

    def __init__(self, settings: KafkaSettings, *, producer: Producer | None = None,
                 spool: Spool | None = None, delivery_timeout: float = 10.0):
        self.settings = settings
        self.topic = settings.dlq_topic
        self.codec = DeadLetterCodec(dead_letter_codec())
        self.producer = producer or Producer(reliable_producer_config(settings, delivery_timeout))
        self.spool = spool
        self.delivery_timeout = delivery_timeout

    def encode(self, dead_letter: DeadLetter) -> tuple[bytes | None, bytes, list]:
        """Key (the original key, so a replay lands on the same partition), value, headers."""
        return dead_letter.original_key, self.codec.encode(dead_letter), dead_letter.headers()

    def send(self, dead_letter: DeadLetter, on_delivery=None) -> None:
        key, value, headers = self.encode(dead_letter)
        self._produce(self.topic, key, value, headers, on_delivery)

    def _produce(self, topic, key, value, headers, on_delivery) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:
                # The local queue is full: serve delivery reports to make room, then try again.
                self.producer.poll(0.1)
        self.producer.poll(0)

    def send_confirmed(self, dead_letters: list[DeadLetter]) -> SendResult:
        """Deliver and wait for the acknowledgements; what fails is spooled (or an error without a spool)."""
        failed: list[tuple[DeadLetter, str]] = []
        result = SendResult()

        def confirm(dead_letter):
            def on_delivery(error, _message):
                if error is None:
                    result.delivered += 1
                else:
                    failed.append((dead_letter, error.str()))
            return on_delivery

        for dead_letter in dead_letters:
            self.send(dead_letter, confirm(dead_letter))
        # Every message ends, delivered or failed, within message.timeout.ms: wait for all of them,
        # so each dead letter has its own outcome before any is spooled.
        settle(self.producer)
        if failed:
            log.warning("%d dead letter(s) could not be delivered to %s (%s)", len(failed), self.topic, failed[0][1])
            result.spooled = self.spool_all([d for d, _ in failed])
        return result

    def spool_all(self, dead_letters: list[DeadLetter]) -> int:
        """Commit dead letters to the local spool (used when the cluster cannot take them)."""
        if self.spool is None:
            raise ToolFailure(f"{len(dead_letters)} dead letter(s) could not be delivered and no spool is configured")
        for dead_letter in dead_letters:
            self.spool.add(self.topic, *self.encode(dead_letter))
        if dead_letters:
            log.warning("%d dead letter(s) kept in the local spool %s; they are sent to %s when Kafka is back "
                        "(`python dlq_producer.py --flush-spool`)", len(dead_letters), self.spool.path, self.topic)
        return len(dead_letters)

    def drain_spool(self, timeout: float = 30.0) -> DrainResult:
        """Send the spool to Kafka in order, each message exactly once, deleting what Kafka confirmed."""
        if self.spool is None:
            return DrainResult()
        with self.spool.drain_lock():
            rows = self.spool.pending()
            if not rows:
                return DrainResult()
            result = DrainResult()
            interrupted = [row for row in rows if row.sending_since is not None]
            if interrupted:
                # A previous drain may have delivered these before it could delete them.
                since = min(row.sending_since for row in interrupted) - 60
                present = self._spool_ids_in_kafka({row.topic for row in interrupted}, since, timeout)
                duplicates = [row.row_id for row in rows if row.spool_id in present]
                self.spool.delete(duplicates)
                result.already_in_kafka = len(duplicates)
                rows = [row for row in rows if row.spool_id not in present]
            self.spool.mark_sending([row.row_id for row in rows])
            delivered: list[int] = []

            def confirm(row_id):
                return lambda error, _message: error is None and delivered.append(row_id)

            for row in rows:
                self._produce(row.topic, row.key, row.value, row.kafka_headers(), confirm(row.row_id))
            self.producer.flush(timeout)
            self.spool.delete(delivered)
            result.sent = len(delivered)
            result.remaining = self.spool.count()
            return result

    def _spool_ids_in_kafka(self, topics: set[str], since: float, timeout: float) -> set[str]:
        consumer = Consumer(reader_config(self.settings, f"dlq-spool-check-{uuid.uuid4()}"))
        try:
            start = []
            for topic in topics:
                metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
                wanted = [TopicPartition(topic, p, int(since * 1000)) for p in metadata.partitions]
                start += consumer.offsets_for_times(wanted, timeout=timeout)
            found = set()
            for message in read_to_end(consumer, start, timeout):
                for name, value in message.headers() or []:
                    if name == SPOOL_ID_HEADER and value is not None:
                        found.add(value.decode())
            return found
        except KafkaException as exc:
            raise ToolFailure(f"could not check {', '.join(sorted(topics))} for spooled messages: {exc}") from None
        finally:
            consumer.close()

    def close(self, timeout: float = 10.0) -> int:
        """Flush what is queued; returns how many messages were still undelivered."""
        return self.producer.flush(timeout)


def drain_if_pending(publisher: DeadLetterProducer, timeout: float = 30.0) -> DrainResult:
    """At start-up, with the broker reachable: send what an earlier run had to spool."""
    if publisher.spool is None or publisher.spool.count() == 0:
        return DrainResult()
    started = time.monotonic()
    result = publisher.drain_spool(timeout)
    log.info("spool: sent %d dead letter(s) to Kafka (%d were already there), %d remain, in %.1fs",
             result.sent, result.already_in_kafka, result.remaining, time.monotonic() - started)
    return result
