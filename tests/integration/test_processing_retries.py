"""The `process` stage: an unexpected processing error is retried with backoff, then dead-lettered.

The engine runs in-process against the real broker; only its processing step is replaced, by one
that fails the way a flaky downstream service would.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import pytest
from conftest import Pipeline, assert_dead_lettered_exactly_once, assert_summary_matches_truth

from orders_dlq.aggregation import OrderAggregator
from orders_dlq.retry import RetryPolicy
from orders_dlq.settings import KafkaSettings

pytestmark = pytest.mark.integration


class FlakyPricingAggregator(OrderAggregator):
    """Fudge orders fail `failures` times each (a pricing service timing out) before they succeed."""

    def __init__(self, *args, failures: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.failures = failures
        self.attempts: Counter = Counter()

    def process_order(self, aggregate, order):
        if order["product"] == "Fudge":
            self.attempts[order["order_id"]] += 1
            if self.attempts[order["order_id"]] <= self.failures:
                raise TimeoutError("pricing service did not answer")
        super().process_order(aggregate, order)


def run_engine(pipeline: Pipeline, failures: int, guarantee: str,
               dlq_format: str = "envelope") -> FlakyPricingAggregator:
    settings = KafkaSettings(pipeline.bootstrap, pipeline.topic, pipeline.dlq_topic, dlq_format=dlq_format)
    engine = FlakyPricingAggregator(settings, group=pipeline.group, state_topic=pipeline.state_topic,
                                    guarantee=guarantee, failures=failures,
                                    retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05))
    engine.run(idle_timeout=3)
    return engine


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_transient_processing_errors_are_retried_and_nothing_is_dead_lettered(pipeline: Pipeline, guarantee):
    pipeline.scripts.json("producer.py", "--count", 300, "--seed", 17)

    engine = run_engine(pipeline, failures=2, guarantee=guarantee)

    fudge = [order_id for order_id, attempts in engine.attempts.items()]
    assert fudge and all(engine.attempts[order_id] == 3 for order_id in fudge)
    assert_summary_matches_truth(pipeline.report(), pipeline.truth())
    assert pipeline.dead_letters() == []


def test_persistent_processing_errors_go_to_the_dlq_after_max_attempts(pipeline: Pipeline):
    pipeline.scripts.json("producer.py", "--count", 300, "--seed", 19)
    truth = pipeline.truth()

    engine = run_engine(pipeline, failures=1000, guarantee="exactly-once")

    letters = pipeline.dead_letters()
    fudge_count = truth["products"]["Fudge"]["count"]
    assert len(letters) == fudge_count == len(engine.attempts)
    for letter in letters:
        assert letter["product"] == "Fudge"
        assert letter["error_stage"] == "process" and letter["error_type"] == "TimeoutError"
        assert letter["error_reason"] == "pricing service did not answer"
        assert letter["retry_count"] == 3 == engine.attempts[letter["order_id"]]
    report = pipeline.report()
    assert "Fudge" not in report["products"]
    assert report["overall"]["count"] == truth["count"] - fudge_count
    assert report["dead_lettered"] == fudge_count


def test_in_the_original_format_a_processing_failure_carries_its_python_traceback(pipeline: Pipeline):
    pipeline.scripts.json("producer.py", "--count", 100, "--seed", 19)
    orders = {m.offset(): m.value() for m in pipeline.read(pipeline.topic) if m.partition() == 0}

    run_engine(pipeline, failures=1000, guarantee="exactly-once", dlq_format="original")

    letters = pipeline.read(pipeline.dlq_topic)
    assert letters
    for message in letters:
        headers = dict(message.headers())
        # The value is the original order, unchanged; the context is in Spring's and Connect's headers.
        if headers["kafka_dlt-original-partition"] == (0).to_bytes(4, "big"):
            assert message.value() == orders[int.from_bytes(headers["kafka_dlt-original-offset"], "big")]
        for name in ("kafka_dlt-exception-stacktrace", "__connect.errors.exception.stacktrace"):
            trace = headers[name].decode()
            assert trace.startswith("Traceback (most recent call last):"), trace
            assert "in process_order" in trace and trace.rstrip().endswith(
                "TimeoutError: pricing service did not answer")


class BuggyDecoder:
    """A decoder with a bug of ours: it raises TypeError on every Caramel order it reads."""

    def __init__(self, codec):
        self.codec = codec

    def decode(self, value):
        order = self.codec.decode(value)
        if order["product"] == "Caramel":
            raise TypeError("unsupported operand type(s) for +: 'Decimal' and 'str'")
        return order


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_a_bug_of_ours_outside_processing_is_dead_lettered_as_process_and_the_run_goes_on(
        pipeline: Pipeline, guarantee, caplog):
    pipeline.scripts.json("producer.py", "--count", 300, "--seed", 23)
    truth = pipeline.truth()
    settings = KafkaSettings(pipeline.bootstrap, pipeline.topic, pipeline.dlq_topic)
    engine = OrderAggregator(settings, group=pipeline.group, state_topic=pipeline.state_topic, guarantee=guarantee,
                             retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05))
    engine.codec = BuggyDecoder(engine.codec)

    engine.run(idle_timeout=3)

    caramel = truth["products"]["Caramel"]["count"]
    letters = pipeline.dead_letters()
    assert caramel and len(letters) == caramel
    assert {(letter["error_stage"], letter["error_type"]) for letter in letters} == {("process", "TypeError")}
    assert all(letter["original_value"] for letter in letters)
    report = pipeline.report()
    assert "Caramel" not in report["products"]
    assert report["overall"]["count"] == truth["count"] - caramel
    assert sum("BUG: handling" in record.getMessage() for record in caplog.records) == caramel


# The aggregator's transaction.timeout.ms (15 s), the test broker's check for expired
# transactions (2 s), and a margin.
TRANSACTION_OUTLIVED_SECONDS = 20


class SlowOnceAggregator(OrderAggregator):
    """One order takes longer than transaction.timeout.ms (15 s) to process: a slow downstream call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = 0

    def process_order(self, aggregate, order):
        self.seen += 1
        if self.seen == 150:
            # Longer than the timeout plus the coordinator's check for expired transactions (every
            # 2 s on the test broker, 10 s by default).
            time.sleep(TRANSACTION_OUTLIVED_SECONDS)
        super().process_order(aggregate, order)


def one_unit_engine(engine_class: type[OrderAggregator], pipeline: Pipeline) -> OrderAggregator:
    """An exactly-once engine whose unit of work is the whole topic (commit interval 60 s): a stall
    always falls inside the open transaction that holds its dead letters. (With 100 ms units it may
    fall while a commit is in flight on its thread, when no transaction is open and none can time out.)
    Failures are dead-lettered when the unit's commit begins, or a batch at a time once batch_size are
    held: a batch of 10 opens the transaction with the first ten bad orders, long before the stall."""
    settings = KafkaSettings(pipeline.bootstrap, pipeline.topic, pipeline.dlq_topic)
    return engine_class(settings, group=pipeline.group, state_topic=pipeline.state_topic,
                        guarantee="exactly-once", batch_size=10, commit_interval=60.0,
                        retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05))


def test_a_transaction_that_outlives_its_timeout_is_redone_by_a_new_producer_not_blamed_on_another_instance(
        pipeline: Pipeline, caplog):
    pipeline.scripts.json("producer.py", "--count", 400, "--bad-ratio", 0.3, "--seed", 47)
    engine = one_unit_engine(SlowOnceAggregator, pipeline)

    engine.run(idle_timeout=3)

    messages = [record.getMessage() for record in caplog.records]
    assert any("Kafka ended the open transaction" in m for m in messages), messages[-20:]
    assert not any("another instance" in m for m in messages)
    truth = pipeline.truth()
    assert_summary_matches_truth(pipeline.report(), truth)
    assert_dead_lettered_exactly_once(pipeline.dead_letters(), truth)


class StallsWhenIdleAggregator(OrderAggregator):
    """The run stands idle for longer than its transaction may stay open, right before it stops:
    the unit of work is all done, yet Kafka has already ended the transaction that holds it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stalled = False

    def _idle_for(self, now, idle_timeout):
        idle = super()._idle_for(now, idle_timeout)
        if idle and not self.stalled:
            self.stalled = True
            time.sleep(TRANSACTION_OUTLIVED_SECONDS)
        return idle


def test_a_last_commit_that_finds_its_transaction_ended_redoes_the_unit_before_the_run_stops(
        pipeline: Pipeline, caplog):
    caplog.set_level(logging.INFO, logger="orders_dlq")  # the redo is said at INFO
    pipeline.scripts.json("producer.py", "--count", 300, "--bad-ratio", 0.3, "--seed", 53)
    engine = one_unit_engine(StallsWhenIdleAggregator, pipeline)  # everything is in the transaction that ends

    totals = engine.run(idle_timeout=2)

    messages = [record.getMessage() for record in caplog.records]
    assert engine.stalled
    assert any("Kafka ended the open transaction" in m for m in messages), messages[-20:]
    assert any("the last commit failed: redoing its unit" in m for m in messages), messages[-20:]
    truth = pipeline.truth()
    # What the run returns is what it committed: the redone unit, not the rolled-back one.
    assert totals.processed == truth["count"]
    assert_summary_matches_truth(pipeline.report(), truth)
    assert_dead_lettered_exactly_once(pipeline.dead_letters(), truth)
