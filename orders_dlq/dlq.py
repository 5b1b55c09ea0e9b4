"""Sending dead letters: to the DLQ topic when Kafka takes them, to the durable spool when it cannot."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass, field

from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource

from orders_dlq import transactions
from orders_dlq.codec import dead_letter_codec
from orders_dlq.dead_letter import (
    ERROR_HEADER_PREFIXES,
    FORMAT_AVRO,
    FORMAT_HEADER,
    INT_MAX,
    MAX_TEXT,
    STAGES,
    DeadLetter,
    DeadLetterCodec,
    context_headers,
    dead_letter_of_message,
    error_text,
    fit_price,
    fit_text,
    fits_as_is,
    replay_count_of,
    utc_now_iso,
)
from orders_dlq.errors import NotKept, ToolFailure
from orders_dlq.foreign import with_order_fields
from orders_dlq.kafka import (
    DEAD_LETTER_MAX_BYTES,
    admin_client,
    read_to_end,
    reader_config,
    reliable_producer_config,
    settle,
)
from orders_dlq.logs import log
from orders_dlq.settings import KafkaSettings
from orders_dlq.spool import SPOOL_ID_HEADER, Spool, SpoolBusy

# Errors that say "this message can never be written to this topic as it is": retrying the same
# bytes cannot help, a smaller dead letter can. MSG_SIZE_TOO_LARGE is both librdkafka's own check
# against message.max.bytes (raised by produce()) and the broker's RECORD_TOO_LARGE: the topic's
# max.message.bytes, checked after compression; INVALID_RECORD a record the broker refuses as such.
TOO_LARGE_ERRORS = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE,
                    KafkaError.INVALID_RECORD, KafkaError.RECORD_LIST_TOO_LARGE}
# Errors no retry of any message can fix, only the operator: the run ends with one sentence.
PERMANENT_ERRORS = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, KafkaError.INVALID_REQUIRED_ACKS,
                    KafkaError.UNSUPPORTED_VERSION, KafkaError.POLICY_VIOLATION,
                    KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT, KafkaError.TOPIC_EXCEPTION,
                    KafkaError.UNSUPPORTED_COMPRESSION_TYPE}
# Room for the record batch header, the record's own framing and the varints around key, value
# and headers: a dead letter estimated within this margin of the limit is reduced.
BATCH_OVERHEAD_BYTES = 1024
# What a dead letter's context headers can add beyond its Avro value: the reason twice (2,000
# characters, each at most 10 bytes once escaped), the other fitted fields and their names.
CONTEXT_HEADERS_BOUND = 64 * 1024


_STAGES = frozenset(STAGES)


SPOOL_WARNING_SECONDS = 10.0


def message_size(key: bytes | None, value: bytes | None, headers: list) -> int:
    """The uncompressed bytes a message takes in a record batch, close enough to compare with a limit."""
    size = BATCH_OVERHEAD_BYTES + len(key or b"") + len(value or b"")
    for name, data in headers:
        size += len(name) + len(data or b"") + 8
    return size


def permanent_error_sentence(error: KafkaError, topic: str) -> str | None:
    """One sentence for a delivery error no retry can fix, or None when waiting may help."""
    if error.code() in PERMANENT_ERRORS:
        return (f"Kafka refuses every write to {topic}: {error.str()} "
                "(fix the topic's ACLs or settings; nothing past the last commit was lost)")
    return None


@dataclass
class SendResult:
    delivered: int = 0
    spooled: int = 0


@dataclass
class DrainResult:
    sent: int = 0
    already_in_kafka: int = 0
    remaining: int = 0
    # Rows kept for now, by why: another cluster's, a topic this cluster lacks, a delivery error.
    held: dict = field(default_factory=dict)

    def held_text(self) -> str:
        return "; ".join(f"{count} {why}" for why, count in self.held.items())


class DeadLetterProducer:
    """The one way this toolkit writes a dead letter, shared by the producer and the consumer.

    `send` is asynchronous (the consumer confirms a batch at its commit, the transactional
    consumer through its transaction); `send_confirmed` waits for the broker's acknowledgement
    and spools whatever Kafka did not take.
    """

    def __init__(self, settings: KafkaSettings, *, producer: Producer | None = None,
                 spool: Spool | None = None, delivery_timeout: float = 10.0, origin: str | None = None):
        self.settings = settings
        self.topic = settings.dlq_topic
        self.codec = DeadLetterCodec(dead_letter_codec())
        self.producer = producer or Producer(reliable_producer_config(settings, delivery_timeout))
        self.spool = spool
        self.delivery_timeout = delivery_timeout
        self._max_bytes: int | None = None  # the DLQ's limit, asked once (see max_bytes)
        self._last_refusal: str | None = None  # the broker's words when it last refused a dead letter
        self.reduced = 0  # dead letters written without (part of) their original message
        self.permanent_error: str | None = None  # set by a delivery error no retry can fix
        self.origin = origin  # who spools (recorded per row, so a run can count its own rows)
        # "envelope" or "original" (see orders_dlq/dead_letter.py); the writer's identity goes into
        # the original format's Connect task.id header.
        self.format = settings.dlq_format
        self.instance = origin or f"{socket.gethostname()}:{os.getpid()}"
        self.cluster_id: str | None = None  # the cluster this producer talks to, once it answered
        self._unpolled = 0  # messages produced since the last poll() (see _produce)
        self._reporting: tuple = (None, None)  # the last listener and its delivery callback
        self.spooled = 0  # dead letters this producer kept in the spool
        self._spool_warned_at: float | None = None  # when the last spool warning was logged

    def cluster(self, timeout: float = 10.0) -> tuple[str | None, set[str]]:
        """The cluster's id and its topics, from metadata (raises KafkaException when it does not answer)."""
        metadata = self.producer.list_topics(timeout=timeout)
        self.cluster_id = metadata.cluster_id or self.cluster_id
        return metadata.cluster_id, {name for name, topic in metadata.topics.items() if topic.error is None}

    def check_topic(self) -> None:
        """Ask the DLQ's limits now, at a script's start: a compacted DLQ stops the run here, with
        one sentence, before anything is consumed or sent (see _ask_limits)."""
        self._max_bytes = self._ask_limits()

    @property
    def max_bytes(self) -> int:
        """The largest dead letter the DLQ takes: its max.message.bytes, and never more than what
        this producer may send (message.max.bytes). Asked once; without an answer (Kafka down,
        no permission to describe configs) the producer's own limit is used and a refusal by the
        broker lowers it later (see _learn_from_delivery)."""
        if self._max_bytes is None:
            self._max_bytes = self._ask_limits()
        return self._max_bytes

    def _ask_limits(self) -> int:
        """The DLQ's max.message.bytes (capped by ours) from one describe_configs. The same answer
        says whether the DLQ is compacted: then Kafka refuses every dead letter without a key and
        keeps only the last one of each key, and this raises ToolFailure with one sentence."""
        limit, policy = DEAD_LETTER_MAX_BYTES, ""
        try:
            resource = ConfigResource(ConfigResource.Type.TOPIC, self.topic)
            admin = admin_client(self.settings)  # kept alive until the answer is in
            configs = admin.describe_configs([resource], request_timeout=5).get(resource).result(timeout=5)
            entry = configs.get("max.message.bytes")
            if entry is not None and entry.value:
                limit = min(limit, int(entry.value))
            policy = getattr(configs.get("cleanup.policy"), "value", None) or ""
        except Exception as exc:  # noqa: BLE001 - any failure here only means "use the default"
            log.debug("could not read max.message.bytes of %s (%s): using %d", self.topic, exc, limit)
        if "compact" in policy.split(","):
            raise ToolFailure(
                f"the DLQ topic {self.topic} is compacted (cleanup.policy={policy}): Kafka would refuse "
                "every dead letter without a key and keep only the last of each key; a DLQ must be "
                "cleanup.policy=delete (`python setup_dlq.py` shows the difference, `--apply --force` "
                "changes it)")
        return limit

    def encode(self, dead_letter: DeadLetter) -> tuple[bytes | None, bytes, list]:
        """Key (the original key, so a replay lands on the same partition), value, headers.

        Never raises because of what the dead letter holds: its fields are fitted to the schema,
        a dead letter larger than the DLQ takes is reduced (the original value left out, its size
        and SHA-256 kept), and if encoding still fails (a bug of ours) a minimal dead letter with
        the original bytes is written instead, and the failure logged loudly.
        """
        dead_letter = dead_letter.fitted()
        try:
            key, value, headers = self._encode_fitted(dead_letter)
        except ToolFailure:
            raise  # the DLQ takes no dead letter at all: a smaller one would not help
        except Exception as exc:  # noqa: BLE001 - the dead letter of last resort must always exist
            log.exception("could not encode the dead letter of %s (a bug): writing a minimal one",
                          dead_letter.original_topic)
            dead_letter = DeadLetter(
                error_reason=fit_text(f"{dead_letter.error_reason} [dead letter reduced to its minimum: "
                                      f"{type(exc).__name__}: {exc}]"),
                error_type=dead_letter.error_type, error_stage=dead_letter.error_stage,
                original_topic=dead_letter.original_topic, failed_by=dead_letter.failed_by,
                original_partition=dead_letter.original_partition,
                original_offset=dead_letter.original_offset,
                original_key=dead_letter.original_key, original_value=dead_letter.original_value)
            key, value, headers = self._encode_fitted(dead_letter)
        return key, value, headers

    def _encode_fitted(self, dead_letter: DeadLetter) -> tuple[bytes | None, bytes, list]:
        if self.format == "original" and dead_letter.original_value is not None and dead_letter.reduced is None:
            key, value, headers = self.codec.encode_original(dead_letter, self.instance)
            if message_size(key, value, headers) <= self.max_bytes:
                return key, value, headers
            log.warning("dead letter of %s[%s]@%s: the original message does not fit %s (%d bytes at most); "
                        "written as a reduced envelope instead", dead_letter.original_topic,
                        dead_letter.original_partition, dead_letter.original_offset, self.topic, self.max_bytes)
        for level in (0, 1, 2):
            if level:
                dead_letter = dead_letter.reduced_to_fit(level)
            key, value, headers = dead_letter.original_key, self.codec.encode(dead_letter), dead_letter.headers()
            # The Avro value already holds the original headers and the reason; the Kafka headers
            # repeat at most those plus the bounded context. Only a large one is measured exactly.
            if (2 * len(value) + len(key or b"") + CONTEXT_HEADERS_BOUND <= self.max_bytes
                    or message_size(key, value, headers) <= self.max_bytes):
                break
        else:
            # Only a DLQ that refused dead letters gets here: its limit, lowered below each refused
            # size (see _learn_from_delivery), is now below even a minimal dead letter. Whatever it
            # refuses (a size limit, a validation of its own), no dead letter can be written.
            raise ToolFailure(
                f"{self.topic} refuses even a dead letter reduced to {message_size(key, value, headers)} "
                f"bytes ({self._last_refusal or 'its max.message.bytes'}): check its max.message.bytes "
                "and cleanup.policy (`python setup_dlq.py` shows them); nothing past the last commit was lost")
        if level:
            self.reduced += 1
            log.warning("dead letter of %s[%s]@%s reduced to fit %s (%d bytes at most): original %s left out, "
                        "its size and SHA-256 kept in headers", dead_letter.original_topic,
                        dead_letter.original_partition, dead_letter.original_offset, self.topic,
                        self.max_bytes, dead_letter.reduced)
        return key, value, headers

    def send(self, dead_letter: DeadLetter, on_delivery=None) -> None:
        key, value, headers = self.encode(dead_letter)
        try:
            self._produce(self.topic, key, value, headers, self._delivery_callback(on_delivery))
        except KafkaException as exc:
            # librdkafka refuses at once what exceeds message.max.bytes: remember the limit, resend smaller.
            if exc.args[0].code() not in TOO_LARGE_ERRORS:
                raise
            self._max_bytes = min(self.max_bytes, message_size(key, value, headers) - 1)
            key, value, headers = self.encode(dead_letter)
            self._produce(self.topic, key, value, headers, self._delivery_callback(on_delivery))

    def send_failure(self, message, order: dict | None, stage: str, error: BaseException, retries: int,
                     failed_by: str, on_delivery=None, error_timestamp: str | None = None) -> str:
        """Dead-letter one consumed message that failed at `stage`; returns the reason written.

        The same message as send(dead_letter_of_message(...)) (a property test checks the bytes),
        written without building and fitting a DeadLetter when every field already fits as it is:
        a poison flood dead-letters every message, and those two steps were half of its cost.
        Anything unusual (original format, hostile text, a large message, headers that need
        cleaning) takes the general way. `error_timestamp`: when the dead letter is written (now
        by default; the consumer stamps a whole unit's dead letters with one time)."""
        reason = error_text(error)
        error_timestamp = error_timestamp or utc_now_iso()
        sent = self._send_plain_failure(message, order, stage, error, reason, retries, failed_by, on_delivery,
                                        error_timestamp)
        if not sent:
            dead_letter = dead_letter_of_message(
                message, order, stage, error, retries, failed_by, error_timestamp=error_timestamp,
                with_stacktrace=stage == "process" and self.format == "original")
            self.send(dead_letter, on_delivery)
        return reason

    def _send_plain_failure(self, message, order, stage, error, reason, retries, failed_by, on_delivery,
                            error_timestamp: str) -> bool:
        """send_failure()'s fast way; False (nothing sent) when the message needs the general one."""
        encoded = self.encode_plain_failure(message, order, stage, error, reason, retries, failed_by,
                                            error_timestamp)
        if encoded is None:
            return False
        key, value, headers = encoded
        try:
            self._produce(self.topic, key, value, headers, self._delivery_callback(on_delivery))
        except KafkaException as exc:
            if exc.args[0].code() not in TOO_LARGE_ERRORS:
                raise
            return False  # the general way learns the limit and reduces the dead letter
        return True

    def encode_plain_failure(self, message, order, stage, error, reason, retries, failed_by,
                             error_timestamp: str) -> tuple[bytes | None, bytes, list] | None:
        """Key, value and headers of the envelope dead letter of `message`, when every field fits the
        schema as it is (then fitted() would change nothing); None otherwise."""
        if self.format != "envelope" or not self.codec.fast:
            return None
        error_type = type(error).__name__
        topic = message.topic()
        if not (type(reason) is str and len(reason) <= MAX_TEXT and reason.isascii()
                and fits_as_is(error_type, 200) and fits_as_is(topic, 300) and fits_as_is(failed_by, 300)
                and fits_as_is(error_timestamp, 100) and stage in _STAGES
                and type(retries) is int and 0 <= retries <= INT_MAX):
            return None
        try:
            headers = message.headers()
        except Exception:  # noqa: BLE001 - unreadable headers: the general way says why
            return None
        if headers:
            for name, value in headers:
                if (not fits_as_is(name, 1000) or name.startswith(ERROR_HEADER_PREFIXES)
                        or not (value is None or type(value) is bytes)):
                    return None
        else:
            headers = []
        order_id = product = price = None
        if order:
            order_id, product, price = order.get("order_id"), order.get("product"), order.get("price")
            if not ((order_id is None or fits_as_is(order_id, 200)) and (product is None or fits_as_is(product, 200))
                    and (price is None or fit_price(price) is price)):
                return None
        partition, offset = message.partition(), message.offset()
        timestamp_type, timestamp = message.timestamp()
        key, value = message.key(), message.value()
        if not (type(partition) is int and 0 <= partition <= INT_MAX and type(offset) is int and offset >= 0
                and (key is None or type(key) is bytes) and (value is None or type(value) is bytes)):
            return None
        log_append_time = timestamp_type == TIMESTAMP_LOG_APPEND_TIME
        timestamp = timestamp if timestamp_type else None
        replay_count = replay_count_of(headers)
        encoded = self.codec.encode_fields(order_id, product, price, reason, error_type, stage, error_timestamp,
                                           retries, replay_count, topic, partition, offset, timestamp, key, value,
                                           headers, failed_by)
        # As _encode_fitted: the Kafka headers repeat at most the Avro value plus the bounded context.
        if 2 * len(encoded) + len(key or b"") + CONTEXT_HEADERS_BOUND > self.max_bytes:
            return None
        return key, encoded, context_headers(headers, reason, topic, failed_by, error_type, stage, error_timestamp,
                                             retries, replay_count, partition, offset, timestamp, (),
                                             log_append_time)

    def _delivery_callback(self, on_delivery):
        if on_delivery is None:
            return self._learn_from_delivery
        if self._reporting[0] is not on_delivery:  # one function per listener, not per dead letter

            def report(error, message):
                self._learn_from_delivery(error, message)
                on_delivery(error, message)
            self._reporting = (on_delivery, report)
        return self._reporting[1]

    def _learn_from_delivery(self, error, message) -> None:
        """A broker that refused a dead letter as too large (the topic's max.message.bytes is below
        what we assumed, or compression did not help) lowers the limit below that message, so the
        unit of work that is redone after the failure writes it reduced: no endless retry."""
        if error is None:
            return
        if error.code() in TOO_LARGE_ERRORS:
            try:
                size = message_size(message.key(), message.value(), message.headers() or [])
            except Exception:  # noqa: BLE001 - unreadable report: assume the largest we send
                size = self.max_bytes
            self._max_bytes = min(self.max_bytes, size - 1)
            self._last_refusal = error.str()
            log.warning("%s refused a dead letter of about %d bytes (%s): larger ones are now reduced",
                        self.topic, size, error.str())
        elif self.permanent_error is None:
            self.permanent_error = permanent_error_sentence(error, self.topic)

    def _produce(self, topic, key, value, headers, on_delivery) -> None:
        transactions.produce(self.producer, topic, value=value, key=key, headers=headers,
                             on_delivery=on_delivery, poll=False)
        # Delivery reports are served every POLL_EVERY messages, and in full by every flush (each
        # commit, each confirmed send): a poll() per dead letter was a twentieth of a flood's cost.
        self._unpolled += 1
        if self._unpolled >= transactions.POLL_EVERY:
            self._unpolled = 0
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
        """Commit dead letters to the local spool (used when the cluster cannot take them), with the
        cluster they belong to: they are drained into that cluster only."""
        if self.spool is None:
            raise ToolFailure(f"{len(dead_letters)} dead letter(s) could not be delivered and no spool is configured")
        if dead_letters:
            try:
                self.spool.add_many([(self.topic, *self.encode(d)) for d in dead_letters],
                                    cluster_id=self.cluster_id, bootstrap=self.settings.bootstrap_servers,
                                    origin=self.origin)
            except sqlite3.Error as exc:  # a full disk, a file made read-only or removed meanwhile
                ids = [d.order_id or "?" for d in dead_letters[:10]]
                raise NotKept(
                    f"{len(dead_letters)} dead letter(s) could not be delivered to {self.topic} nor kept in the "
                    f"spool {self.spool.path} ({exc}); send them again: order id(s) "
                    f"{', '.join(ids)}{' ...' if len(dead_letters) > 10 else ''}", str(exc)) from None
            self.spooled += len(dead_letters)
            # An outage spools a batch every few hundred ms: one warning at first, then one every
            # SPOOL_WARNING_SECONDS with the total so far, not a line per batch.
            warned_at = self._spool_warned_at
            if warned_at is None or time.monotonic() - warned_at >= SPOOL_WARNING_SECONDS:
                log.warning("%d dead letter(s) kept in the local spool %s%s; they are sent to %s when Kafka is "
                            "back (`python dlq_producer.py --flush-spool`)", self.spooled, self.spool.path,
                            "" if warned_at is None else " so far", self.topic)
                self._spool_warned_at = time.monotonic()
        return len(dead_letters)

    def drain_spool(self, timeout: float = 30.0, lock_wait: float = 3600.0) -> DrainResult:
        """Send this cluster's spooled dead letters in order, each exactly once, deleting what Kafka
        confirmed. A row that cannot go now (another cluster's, a missing topic, a refusal) is kept
        and counted in `held`: it never stops the drain of the others, nor the tool that drains."""
        if self.spool is None:
            return DrainResult()
        result = DrainResult()
        try:
            cluster_id, topics = self.cluster(timeout=min(timeout, 10.0))
        except KafkaException:
            result.remaining = self.spool.count()
            result.held["waiting for a reachable cluster"] = result.remaining
            return result
        with self.spool.drain_lock(lock_wait):
            rows = self.spool.pending(cluster_id=cluster_id, bootstrap=self.settings.bootstrap_servers)
            others = self.spool.count() - len(rows)
            if others:
                result.held["of another cluster"] = others
            absent = [row for row in rows if row.topic not in topics]
            for topic in sorted({row.topic for row in absent}):
                why = f"for {topic}, which does not exist on this cluster"
                result.held[why] = sum(row.topic == topic for row in absent)
            rows = [row for row in rows if row.topic in topics]
            interrupted = [row for row in rows if row.sending_since is not None]
            if interrupted:
                # A previous drain may have delivered these before it could delete them.
                since = min(row.sending_since for row in interrupted) - 60
                checked = {row.topic for row in interrupted}
                try:
                    present = self._spool_ids_in_kafka(checked, since, timeout)
                except ToolFailure as exc:
                    # Cannot tell which were sent: keep those topics' rows rather than risk a duplicate.
                    log.warning("%s", exc)
                    held = [row for row in rows if row.topic in checked]
                    result.held[f"not checkable now ({', '.join(sorted(checked))})"] = len(held)
                    rows = [row for row in rows if row.topic not in checked]
                    present = set()
                duplicates = [row.row_id for row in rows if row.spool_id in present]
                self.spool.delete(duplicates)
                result.already_in_kafka = len(duplicates)
                rows = [row for row in rows if row.spool_id not in present]
            self.spool.mark_sending([row.row_id for row in rows])
            delivered: list[int] = []
            refused: dict[str, int] = {}

            def confirm(row_id):
                def report(error, _message):
                    if error is None:
                        delivered.append(row_id)
                    else:
                        refused[error.str()] = refused.get(error.str(), 0) + 1
                return report

            for row in rows:
                key, value, headers = self.in_configured_format(row.key, row.value, row.headers)
                headers = [*headers, (SPOOL_ID_HEADER, row.spool_id.encode())]  # for exactly once
                self._produce(row.topic, key, value, headers, confirm(row.row_id))
            self.producer.flush(timeout)
            self.spool.delete(delivered)
            for why, count in refused.items():
                result.held[f"refused by Kafka ({why})"] = count
            result.sent = len(delivered)
            result.remaining = self.spool.count()
            return result

    def in_configured_format(self, key: bytes | None, value: bytes, headers: list) -> tuple[bytes | None, bytes, list]:
        """A spooled dead letter, written in the format this producer writes (a run with another
        --dlq-format may have spooled it): decoded and encoded again when the formats differ."""
        is_envelope = (FORMAT_HEADER, FORMAT_AVRO) in headers
        if is_envelope == (self.format == "envelope"):
            return key, value, headers
        try:
            return self.encode(with_order_fields(self.codec.decode_message(value, headers, key, self.topic)))
        except Exception as exc:  # noqa: BLE001 - a row we cannot convert still goes, as it was spooled
            log.warning("a spooled dead letter could not be converted to the %s format (%s): sent as spooled",
                        self.format, exc)
            return key, value, headers

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
    """At start-up, with the broker reachable: send what an earlier run had to spool. What cannot go
    now is reported in one line and kept; it never stops the tool that started."""
    if publisher.spool is None or publisher.spool.count() == 0:
        return DrainResult()
    started = time.monotonic()
    try:
        result = publisher.drain_spool(timeout, lock_wait=0)  # another process draining: leave it to it
    except SpoolBusy:
        log.info("spool: another process is draining %s; going on", publisher.spool.path)
        return DrainResult(remaining=publisher.spool.count())
    if result.sent or result.already_in_kafka:
        log.info("spool: sent %d dead letter(s) to Kafka (%d were already there), %d remain, in %.1fs",
                 result.sent, result.already_in_kafka, result.remaining, time.monotonic() - started)
    if result.held:
        log.warning("spool: %d dead letter(s) kept in %s: %s (see `python dlq_producer.py --spool-status`)",
                    sum(result.held.values()), publisher.spool.path, result.held_text())
    return result
