"""A commit that fails while the loop went on: the unit in flight and everything after it are redone.

The commit's waits run on a thread while the loop keeps aggregating; the failures it meets
meanwhile are held, to be dead-lettered after it. When that commit fails, the held failures
belong to work that is rolled back with it: the redo dead-letters them (exactly once under
exactly-once), and the totals must come out exact. The broker is real; only the commit's outcome is
decided by the test, the way a coordinator timing out would decide it.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError, KafkaException
from conftest import Pipeline, assert_pipeline_exact

from orders_dlq.aggregation import OrderAggregator
from orders_dlq.retry import RetryPolicy
from orders_dlq.settings import KafkaSettings

pytestmark = pytest.mark.integration


class CommitFailsWhileHoldingAggregator(OrderAggregator):
    """Commits number `fail_at` fail on their thread, once the loop holds failures behind them."""

    def __init__(self, *args, fail_at: set[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_at = fail_at
        self.commits = 0
        self.held_when_failed: list[int] = []

    def _commit_in_background(self) -> None:
        job = self._begin_commit(False)
        if not job:
            return
        self.commits += 1
        if self.commits in self.fail_at:
            job.call = self._failing_after_failures_are_held
        self.committing = job
        job.start()

    def _failing_after_failures_are_held(self) -> None:
        deadline = time.monotonic() + 10
        while not self.held and time.monotonic() < deadline:
            time.sleep(0.002)
        self.held_when_failed.append(len(self.held))
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "injected: the commit timed out"))


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_a_commit_that_fails_while_failures_are_held_redoes_them_and_the_totals_stay_exact(
        pipeline: Pipeline, guarantee, caplog):
    pipeline.scripts.json("producer.py", "--count", 4000, "--bad-ratio", 0.2, "--poison-ratio", 0.1,
                          "--seed", 61)
    settings = KafkaSettings(pipeline.bootstrap, pipeline.topic, pipeline.dlq_topic)
    engine = CommitFailsWhileHoldingAggregator(
        settings, group=pipeline.group, state_topic=pipeline.state_topic, guarantee=guarantee,
        batch_size=50, commit_interval=0.02, fail_at={2, 5},
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.02))

    totals = engine.run(idle_timeout=3)

    # The premise: both failures fell while the loop held failures behind the commit in flight.
    assert len(engine.held_when_failed) == 2 and all(engine.held_when_failed), engine.held_when_failed
    assert sum("injected: the commit timed out" in r.getMessage() for r in caplog.records) == 2
    truth = pipeline.truth()
    assert totals.processed == truth["count"]
    # Exactly-once: each failed message dead-lettered once. At-least-once: the rolled-back unit's
    # dead letters were already acknowledged, so the redo may repeat them; none may be missing.
    assert_pipeline_exact(pipeline, truth, guarantee)
