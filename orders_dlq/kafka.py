"""Kafka client configs and cluster checks that every script uses the same way."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from orders_dlq.errors import ToolFailure
from orders_dlq.logs import librdkafka_logger, log
from orders_dlq.settings import KafkaSettings

DEAD_LETTER_MAX_BYTES = 4 * 1024 * 1024
# Connection errors that mean "a broker answered but refused us", not "nothing is there".
REFUSAL_WORDS = ("SASL", "SSL", "handshake", "uthenticat", "certificate")


class ClientErrors:
    """An error_cb: librdkafka's cluster-level errors (broker down, refused, ...), each kind logged at
    most every 10 seconds unless `quiet`, the latest kept to explain a failure in one sentence."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.last: KafkaError | None = None
        self._logged_at: dict[str, float] = {}

    def __call__(self, error: KafkaError) -> None:
        if error.code() != KafkaError._ALL_BROKERS_DOWN:  # a summary: the error before it says why
            self.last = error
        now = time.monotonic()
        if not self.quiet and now - self._logged_at.get(error.name(), 0) >= 10:
            self._logged_at[error.name()] = now
            log.warning("kafka: %s", error.str())


# The clients of one script share one: a broker outage is one warning per kind every 10 s, not
# one per client.
SHARED_ERRORS = ClientErrors()


def common_client_config(errors: ClientErrors = SHARED_ERRORS) -> dict:
    return {"error_cb": errors, "logger": librdkafka_logger()}


def reliable_producer_config(settings: KafkaSettings, delivery_timeout: float, **extra) -> dict:
    """The producer settings every message of this toolkit is sent with."""
    return settings.client_config(**{
        # Idempotence: librdkafka's internal retries can neither duplicate nor reorder a message.
        "enable.idempotence": True,
        # A message counts as delivered only when every in-sync replica has it.
        "acks": "all",
        # Let messages share a request for a few ms instead of one request (or flush) per order.
        "linger.ms": 5,
        # One delivery attempt is bounded by this, instead of librdkafka's 5-minute default, so a
        # down cluster turns into a delivery error the retry policy and the DLQ can act on.
        "message.timeout.ms": int(delivery_timeout * 1000),
        # A dead letter wraps the original bytes plus their context, so it can be larger than the
        # largest order the broker accepted (1 MB by default); the DLQ topic allows as much.
        "message.max.bytes": DEAD_LETTER_MAX_BYTES + 64 * 1024,
        **common_client_config(),
        **extra,
    })


def settle(producer) -> None:
    """Wait until every queued message is acknowledged or has failed (its callback has run).

    Unlike one flush(timeout), this cannot give up with messages still queued; it still ends,
    because message.timeout.ms bounds every message.
    """
    while producer.flush(1.0):
        pass


def admin_client(settings: KafkaSettings) -> AdminClient:
    return AdminClient(settings.client_config(**common_client_config()))


def callback_free_admin_client(settings: KafkaSettings) -> AdminClient:
    """An admin client without Python callbacks, for one kept for a whole run. confluent-kafka runs an
    AdminClient's events on librdkafka's background thread, and an error or log callback reached
    there aborts the process (`CallState_get: Assertion cs != NULL`, seen once when a frozen broker
    came back). Its own errors go unsaid (log_level 0): callers take no answer as no answer."""
    return AdminClient(settings.client_config(**{"log_level": 0}))


def reachable(client, timeout: float) -> bool:
    """Whether a client (producer, consumer or admin) gets cluster metadata within the timeout."""
    try:
        client.list_topics(timeout=timeout)
        return True
    except KafkaException:
        return False


def fail_if_refused(client, settings: KafkaSettings, errors: ClientErrors = SHARED_ERRORS) -> None:
    """After a client got no metadata: one sentence (ToolFailure) when a broker answered but refused
    it (authentication, TLS, protocol), a configuration to fix, not an outage to wait out."""
    client.poll(0)  # serve the error events queued meanwhile (error_cb runs only from poll)
    last = errors.last
    if last is not None and any(word in last.str() for word in REFUSAL_WORDS):
        raise ToolFailure(f"Kafka at {settings.bootstrap_servers} refused the connection: {last.str()} "
                          "(check the -X / KAFKA_CLIENT_CONFIG security settings)")


def require_cluster(settings: KafkaSettings, timeout: float = 10.0) -> AdminClient:
    """An admin client for a cluster that answers, or one sentence saying it does not."""
    # Its errors are not logged: when the cluster does not answer, they make the one sentence.
    errors = ClientErrors(quiet=True)
    admin = AdminClient(settings.client_config(**common_client_config(errors)))
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException:
        fail_if_refused(admin, settings, errors)
        raise ToolFailure(
            f"cannot reach Kafka at {settings.bootstrap_servers} within {timeout:g}s "
            "(is the broker running? try `make kafka-up`, or set KAFKA_BOOTSTRAP_SERVERS)"
        ) from None
    errors.quiet = False  # it answered: from now on its errors are logged like any client's
    return admin


# A topic named in a tool's settings that no broker knows yet may be one a setup created a moment
# ago (each broker learns of a new topic on its own): it is asked for again this long.
MISSING_TOPIC_GRACE_SECONDS = 2.0

# A partition between two leaders, or a broker not answering yet: errors that pass by themselves
# while Kafka moves leadership or comes back. Each caller adds what else it may wait out: a topic
# not ready yet (require_topics), a reader's passing errors (reading.py), a delivery worth another
# attempt (retry.py).
LEADERSHIP_IN_TRANSIT = frozenset({KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION,
                                   KafkaError._TRANSPORT, KafkaError._TIMED_OUT})

# Topic errors in metadata that pass by themselves (a new topic before its leader is elected, a
# broker loading its logs after a restart). Metadata errors carry no retriable() flag of their own.
NOT_READY_TOPIC_ERRORS = LEADERSHIP_IN_TRANSIT | {
    KafkaError.REPLICA_NOT_AVAILABLE, KafkaError.BROKER_NOT_AVAILABLE, KafkaError.REQUEST_TIMED_OUT,
    KafkaError.KAFKA_STORAGE_ERROR}


def topic_problems(metadata, topics: list[str]) -> tuple[list[str], dict[str, KafkaError]]:
    """The topics missing from `metadata`, and the others' errors (e.g. no leader yet, not authorized)."""
    missing, errors = [], {}
    for topic in topics:
        found = metadata.topics.get(topic)
        if found is None or (found.error is not None and found.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
            missing.append(topic)
        elif found.error is not None:
            errors[topic] = found.error
    return missing, errors


def missing_topics(client, topics: list[str], timeout: float = 5.0) -> list[str]:
    """The topics a broker answered it does not know (deleted under a running tool); none when no
    broker answered: an outage is no deletion. One metadata request per topic, not one for the
    whole cluster: tools ask this every few seconds."""
    missing = []
    for topic in topics:
        try:
            metadata = client.list_topics(topic, timeout=timeout)
        except KafkaException:
            return []
        missing += topic_problems(metadata, [topic])[0]
    return missing


def require_topics(client, topics: list[str], timeout: float = 10.0) -> dict:
    """Partition counts of topics that must exist (auto-creation is off on purpose); any client will do.

    A topic that exists but is not ready (just created, or its broker still loading its logs after
    a restart) is waited for up to `timeout`; a refusal (not authorized) is said as it is."""
    started = time.monotonic()
    while True:
        # Each ask gets what is left of the wait (a second at least): a broker that stops answering
        # half-way must not stretch it to twice `timeout`.
        metadata = client.list_topics(timeout=max(1.0, timeout - (time.monotonic() - started)))
        missing, errors = topic_problems(metadata, topics)
        waited = time.monotonic() - started
        if missing and waited >= MISSING_TOPIC_GRACE_SECONDS:
            raise ToolFailure(f"topic {', '.join(missing)} does not exist: run `python setup_dlq.py` first")
        lasting = {t: e for t, e in errors.items() if e.code() not in NOT_READY_TOPIC_ERRORS or waited >= timeout}
        if lasting:
            topic, error = next(iter(lasting.items()))
            raise ToolFailure(f"topic {topic} cannot be used: {error.str()}")
        if not missing and not errors:
            return {t: len(metadata.topics[t].partitions) for t in topics}
        time.sleep(0.2)  # metadata is only ever pulled: ask again


def read_to_end(consumer: Consumer, partitions: list[TopicPartition], timeout: float,
                batch_size: int = 1000):
    """Yield every message from the given start offsets up to the end of each partition.

    The consumer must have enable.partition.eof set. With read_committed, the end is the last
    stable offset: an open transaction holds it back until it commits or aborts.
    """
    if not partitions:
        return
    consumer.assign(partitions)
    remaining = {(tp.topic, tp.partition) for tp in partitions}
    deadline = time.monotonic() + timeout
    while remaining:
        if time.monotonic() > deadline:
            names = ", ".join(f"{t}[{p}]" for t, p in sorted(remaining))
            raise ToolFailure(f"timed out after {timeout:g}s reading {names} to its end")
        # consume(n, timeout) waits for n messages or the whole timeout: on a small changelog that is
        # 0.5 s per call at every assignment. Take what is there; block only while nothing is.
        for message in consumer.consume(batch_size, timeout=0) or consumer.consume(1, timeout=0.5):
            error = message.error()
            if error is None:
                yield message
            elif error.code() == KafkaError._PARTITION_EOF:
                remaining.discard((message.topic(), message.partition()))
            else:
                raise ToolFailure(f"reading {message.topic()}: {error.str()}")


def reader_config(settings: KafkaSettings, group_id: str) -> dict:
    """A consumer that reads without joining or committing anything (it never disturbs a group)."""
    return settings.client_config(**{
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # Report the end of each partition so a reader knows when it has seen everything.
        "enable.partition.eof": True,
        # Never read what an aborted transaction wrote, nor an open one's records.
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        **common_client_config(),
    })
