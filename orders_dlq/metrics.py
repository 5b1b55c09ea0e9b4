"""Prometheus metrics of the scripts: --metrics-port PORT (env METRICS_PORT), --metrics-host (env METRICS_HOST).

0 or absent means off: nothing listens. On, each script serves http://HOST:PORT/metrics, HOST being
127.0.0.1 unless --metrics-host says otherwise (0.0.0.0 lets a Prometheus in a container scrape it;
the endpoint has no authentication, so expose it only where that is fine). The values live in the
process, so counters start at zero with every run; Prometheus' rate() and increase() handle that.
Names follow Prometheus' conventions: counters end in `_total`, units are in the name (`_seconds`,
`_messages`), a fraction is a `_ratio`, and no rate is precomputed (use rate() on the counters).
ops/ holds a Grafana dashboard and alert rules built on these names; README.md documents each one.

Names (all prefixed `orders_dlq_`):

consumer_aggregation.py
  orders_dlq_orders_processed_total                   orders aggregated (counted once per consume batch)
  orders_dlq_dead_letters_total{stage,reason}         dead letters created (stage deserialize, validate,
                                                      process); also producer.py (stage produce)
  orders_dlq_consumer_lag_messages{topic,partition}   high watermark (last stable offset: the consumer
                                                      reads read_committed) minus the committed offset,
                                                      per owned partition, updated at most once a second
  orders_dlq_spool_messages                           dead letters waiting in the local spool (also producer.py)
  orders_dlq_order_latency_seconds                    histogram: an order's creation to its aggregation

producer.py
  orders_dlq_orders_produced_total                    orders handed to the Kafka client (first attempts)
  orders_dlq_orders_sent_total                        orders the broker acknowledged
  orders_dlq_dead_letters_total{stage="produce",reason}
  orders_dlq_spool_messages

dlq_consumer.py (the monitor; the values are those of its selection: --stage, --reason, ...)
  orders_dlq_monitor_dead_letters{stage,reason}       dead letters in the DLQ now (a gauge rebuilt from the
                                                      topic at every start, so a restart never counts the
                                                      backlog again; for the rate of new dead letters use
                                                      rate(orders_dlq_dead_letters_total[5m]))
  orders_dlq_monitor_orders_topic_messages            messages in the orders topic (sum of high minus
                                                      low watermarks: an approximation, see monitor.py)
  orders_dlq_monitor_dead_letter_ratio                dead letters / orders (absent until known)
  orders_dlq_monitor_oldest_dead_letter_age_seconds   age of the oldest dead letter still in the DLQ
  orders_dlq_monitor_newest_dead_letter_age_seconds   and of the newest

Label cardinality is bounded: `reason` is the reason's category (the text before ': ', as
dead_letter.reason_category, so "price must be positive: -3.00" is "price must be positive"), cut to
80 characters, and after MAX_REASONS distinct categories any new one is counted as "other".

Cost: counters are updated per batch (or per throttled sync of a running total), never per order;
dead letters are counted where they are created, since they are rare.
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaException, TopicPartition
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from orders_dlq.dead_letter import reason_category
from orders_dlq.errors import UsageError
from orders_dlq.logs import log
from orders_dlq.settings import setting

PREFIX = "orders_dlq_"
MAX_REASONS = 50
MAX_REASON_LENGTH = 80
OTHER_REASON = "other"

# Created unregistered: updating them costs the same either way, and each script's endpoint shows
# only the metrics of its role (serve() registers them), not zeros of the others'.
ORDERS_PROCESSED = Counter(PREFIX + "orders_processed", "Orders aggregated by the consumer", registry=None)
DEAD_LETTERS = Counter(PREFIX + "dead_letters", "Dead letters created, by stage and reason category",
                       ["stage", "reason"], registry=None)
ORDERS_PRODUCED = Counter(PREFIX + "orders_produced", "Orders handed to the Kafka client (first attempts)",
                          registry=None)
ORDERS_SENT = Counter(PREFIX + "orders_sent", "Orders acknowledged by the broker", registry=None)
SPOOL_SIZE = Gauge(PREFIX + "spool_messages", "Dead letters waiting in the local spool", registry=None)
CONSUMER_LAG = Gauge(PREFIX + "consumer_lag_messages", "High watermark minus committed offset",
                     ["topic", "partition"], registry=None)
# Creation (the order's created_at) to aggregation, per order. Buckets around the 50 ms target;
# observing costs about a microsecond per order, paid only while metrics are served.
ORDER_LATENCY = Histogram(PREFIX + "order_latency_seconds", "Seconds from an order's creation to its aggregation",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
                          registry=None)
# A gauge, not a counter: the monitor reads the whole DLQ at every start, and a counter would
# count that backlog again each time (rate() would see it as new dead letters).
MONITOR_SEEN = Gauge(PREFIX + "monitor_dead_letters",
                     "Dead letters in the DLQ of the monitor's --status (default: open), by stage and reason category",
                     ["stage", "reason"], registry=None)
# Every dead letter the monitor's other criteria select, by its mark: open, replayed, resolved, discarded.
MONITOR_BY_STATUS = Gauge(PREFIX + "monitor_dead_letters_by_status", "Dead letters in the DLQ, by status",
                          ["status"], registry=None)


class MonitorGauges(Collector):
    """The monitor's gauges, from its last refresh; a value not known yet (no dead letter, no orders
    topic) is left out rather than shown as 0."""

    # update()'s keyword -> (exported name, help). A keyword absent here (the monitor's own
    # per-minute rate) is not exported: Prometheus computes rates from the counters.
    EXPORTED = {
        "monitor_orders_topic_messages": ("monitor_orders_topic_messages",
                                          "Messages in the orders topic (sum of high minus low watermarks)"),
        "monitor_dead_letter_share": ("monitor_dead_letter_ratio",
                                      "Dead letters divided by orders (an estimate from offsets)"),
        "monitor_oldest_dead_letter_age_seconds": ("monitor_oldest_dead_letter_age_seconds",
                                                   "Seconds since the oldest dead letter still in the DLQ failed"),
        "monitor_newest_dead_letter_age_seconds": ("monitor_newest_dead_letter_age_seconds",
                                                   "Seconds since the newest dead letter failed"),
    }

    def __init__(self):
        self.values: dict[str, float] = {}

    def update(self, **values: float | None) -> None:
        self.values = {name: value for name, value in values.items() if value is not None}  # one swap: thread-safe

    def collect(self):
        values = self.values
        for keyword, (name, text) in self.EXPORTED.items():
            if keyword in values:
                yield GaugeMetricFamily(PREFIX + name, text, value=values[keyword])


MONITOR_GAUGES = MonitorGauges()

PRODUCER = (ORDERS_PRODUCED, ORDERS_SENT, DEAD_LETTERS, SPOOL_SIZE)
CONSUMER = (ORDERS_PROCESSED, DEAD_LETTERS, CONSUMER_LAG, SPOOL_SIZE, ORDER_LATENCY)
MONITOR = (MONITOR_SEEN, MONITOR_BY_STATUS, MONITOR_GAUGES)

_reasons: set[str] = set()
_serving = False  # set by serve(): counting is skipped in a process that exposes no metrics


def reason_label(reason: str | None) -> str:
    """A bounded label value for a reason: its category, or "other" once MAX_REASONS are in use."""
    category = reason_category(reason or "unknown").strip()[:MAX_REASON_LENGTH] or "unknown"
    if category in _reasons:
        return category
    if len(_reasons) >= MAX_REASONS:
        return OTHER_REASON
    _reasons.add(category)
    return category


def serving() -> bool:
    """Whether this process serves metrics (per-order observations are skipped when it does not)."""
    return _serving


def dead_letter_created(stage: str, reason: str) -> None:
    """Count one dead letter where it is made (nothing to do when metrics are off)."""
    if _serving:
        DEAD_LETTERS.labels(stage, reason_label(reason)).inc()


# -- serving -------------------------------------------------------------------------------------

def _port(raw) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a TCP port between 0 and 65535, got {raw}")
    return value


_port.__name__ = "port"


def add_metrics_argument(parser) -> None:
    parser.add_argument("--metrics-port", type=_port, metavar="PORT",
                        help="serve Prometheus metrics on http://HOST:PORT/metrics (env METRICS_PORT; "
                             "0 = off, the default)")
    parser.add_argument("--metrics-host", metavar="HOST",
                        help="address the metrics endpoint binds to (env METRICS_HOST, default 127.0.0.1; "
                             "0.0.0.0 for a Prometheus in a container)")


def serve(args, collectors) -> int:
    """Serve `collectors` (PRODUCER, CONSUMER or MONITOR) if --metrics-port / METRICS_PORT asks for it.

    Returns the port, 0 when off.
    """
    port = setting(args, "metrics_port", "METRICS_PORT", 0, _port)
    host = setting(args, "metrics_host", "METRICS_HOST", "127.0.0.1")
    if not port:
        return 0
    disable_created_metrics()  # no *_created series: one sample per counter
    for collector in collectors:
        REGISTRY.register(collector)
    try:
        start_http_server(port, addr=host)
    except (OSError, ValueError) as exc:  # taken port, or an address this machine does not have
        raise UsageError(f"cannot serve metrics on {host}:{port} (--metrics-host/--metrics-port): "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    global _serving
    _serving = True
    log.info("metrics on http://%s:%d/metrics", host, port)
    return port


# -- keeping counters in step with running totals --------------------------------------------------

class RunningTotal:
    """Moves a counter along a running total kept elsewhere (e.g. OrderSender.delivered): inc by the delta."""

    def __init__(self, counter):
        self.counter = counter
        self.last = 0

    def sync(self, total: int) -> None:
        if total > self.last:
            self.counter.inc(total - self.last)
        self.last = max(self.last, total)


class Throttle:
    """True at most once per `interval` seconds (the first call included)."""

    def __init__(self, interval: float, clock=time.monotonic):
        self.interval = interval
        self.clock = clock
        self.next = float("-inf")

    def __call__(self) -> bool:
        now = self.clock()
        if now < self.next:
            return False
        self.next = now + self.interval
        return True


class ConsumerMetrics:
    """consumer_aggregation.py's on_batch hook: processed orders per batch, lag at most once a second."""

    def __init__(self, lag_interval: float = 1.0, then=None):
        self.then = then  # another on_batch hook (the running-average printer)
        self.processed = RunningTotal(ORDERS_PROCESSED)
        self.lag_due = Throttle(lag_interval)
        self.lag_partitions: set[tuple[str, str]] = set()

    def __call__(self, aggregator) -> None:
        self.processed.sync(aggregator.run_processed)
        if self.lag_due():
            self.update_lag(aggregator)
        if self.then is not None:
            self.then(aggregator)

    def update_lag(self, aggregator) -> None:
        current = set()
        for partition, state in list(aggregator.committed.items()):
            try:
                # Cached: the high watermark the last fetch brought, no request to the broker.
                _low, high = aggregator.consumer.get_watermark_offsets(
                    TopicPartition(aggregator.topic, partition), cached=True)
            except KafkaException:
                continue
            if high is None or high < 0:
                continue  # nothing fetched yet
            labels = (aggregator.topic, str(partition))
            CONSUMER_LAG.labels(*labels).set(max(0, high - state.next_offset))
            current.add(labels)
        for labels in self.lag_partitions - current:
            try:
                CONSUMER_LAG.remove(*labels)
            except KeyError:
                pass
        self.lag_partitions = current


class ProducerMetrics:
    """producer.py: produced and sent orders, synced from its running totals at most every `interval` s."""

    def __init__(self, interval: float = 0.5):
        self.produced = RunningTotal(ORDERS_PRODUCED)
        self.sent = RunningTotal(ORDERS_SENT)
        self.due = Throttle(interval)

    def update(self, produced: int, sent: int, force: bool = False) -> None:
        if force or self.due():
            self.produced.sync(produced)
            self.sent.sync(sent)
