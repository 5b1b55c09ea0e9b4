"""Retry policy: capped exponential backoff with jitter, the total bound, what is worth retrying."""

from __future__ import annotations

import argparse
import random

import pytest
from confluent_kafka import KafkaError

from orders_dlq.codec import DecodeError
from orders_dlq.errors import UsageError
from orders_dlq.orders import InvalidOrder
from orders_dlq.retry import RetryPolicy, add_retry_arguments, is_retryable, retry_policy


class NoJitter:
    def uniform(self, low, high):
        return 0.0


class Extreme:
    def __init__(self, side):
        self.side = side

    def uniform(self, low, high):
        return high if self.side > 0 else low


def test_defaults():
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.initial_backoff, policy.max_backoff, policy.multiplier, policy.jitter) == \
           (3, 0.2, 5.0, 2.0, 0.2)


def test_backoff_grows_exponentially_then_caps():
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0)
    assert [round(policy.backoff(n, NoJitter()), 9) for n in range(1, 8)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_jitter_bounds_are_exact():
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=10.0, jitter=0.25)
    assert policy.backoff(1, Extreme(+1)) == pytest.approx(1.25)
    assert policy.backoff(1, Extreme(-1)) == pytest.approx(0.75)
    assert policy.backoff(10, Extreme(+1)) == pytest.approx(12.5)  # jitter applies on top of the cap


def test_jitter_stays_within_bounds_with_seeded_random():
    policy = RetryPolicy(initial_backoff=0.2, max_backoff=5.0, jitter=0.2)
    rng = random.Random(1234)
    for failures in range(1, 12):
        base = min(5.0, 0.2 * 2 ** (failures - 1))
        values = [policy.backoff(failures, rng) for _ in range(200)]
        assert all(base * 0.8 <= v <= base * 1.2 for v in values)
        assert len(set(values)) > 100  # it really is jittered
    assert [RetryPolicy().backoff(3, random.Random(9)) for _ in range(2)] == \
           [RetryPolicy().backoff(3, random.Random(9))] * 2


def test_zero_jitter_is_deterministic():
    policy = RetryPolicy(jitter=0.0)
    assert policy.backoff(2, random.Random(1)) == pytest.approx(0.4)


def test_backoff_never_negative():
    policy = RetryPolicy(initial_backoff=1.0, jitter=1.5)
    assert policy.backoff(1, Extreme(-1)) == 0.0


def test_zero_initial_backoff():
    assert RetryPolicy(initial_backoff=0.0).backoff(5, random.Random(0)) == 0.0


def test_total_bound_arithmetic():
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.5, max_backoff=2.0, multiplier=2.0, jitter=0.1)
    # attempts: 5 x 3s; backoffs between them: 0.5 + 1.0 + 2.0 + 2.0 = 5.5, plus 10 % jitter
    assert policy.total_bound(3.0) == pytest.approx(15.0 + 5.5 * 1.1)
    assert RetryPolicy(max_attempts=1).total_bound(7.0) == pytest.approx(7.0)
    assert RetryPolicy().total_bound(10.0) == pytest.approx(30.0 + (0.2 + 0.4) * 1.2)


def test_total_bound_covers_every_backoff_actually_taken():
    policy = RetryPolicy(max_attempts=8, initial_backoff=0.3, max_backoff=2.0, jitter=0.3)
    worst = sum(policy.backoff(n, Extreme(+1)) for n in range(1, policy.max_attempts))
    assert worst == pytest.approx(policy.total_bound(0.0))


def test_many_attempts_do_not_overflow():
    policy = RetryPolicy(max_attempts=2000)
    assert policy.backoff(1500, NoJitter()) == 5.0
    assert policy.total_bound(1.0) > 0


@pytest.mark.parametrize("error", [DecodeError("empty value"), InvalidOrder("unknown product: 'x'")])
def test_data_errors_are_not_retryable(error):
    assert is_retryable(error) is False


@pytest.mark.parametrize("error", [RuntimeError("boom"), ValueError("x"), KeyError("k"), OSError("disk")])
def test_other_exceptions_are_retryable(error):
    assert is_retryable(error) is True


@pytest.mark.parametrize("code", [KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT,
                                  KafkaError._ALL_BROKERS_DOWN, KafkaError.NOT_ENOUGH_REPLICAS,
                                  KafkaError.REQUEST_TIMED_OUT, KafkaError.LEADER_NOT_AVAILABLE,
                                  KafkaError.NOT_LEADER_FOR_PARTITION,
                                  KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND])
def test_transient_kafka_errors_are_retryable(code):
    error = KafkaError(code)
    assert error.retriable() is False  # a constructed KafkaError is not flagged; the code list decides
    assert is_retryable(error) is True


@pytest.mark.parametrize("code", [KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.MSG_SIZE_TOO_LARGE,
                                  KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.INVALID_RECORD])
def test_permanent_kafka_errors_are_not_retryable(code):
    error = KafkaError(code)
    assert error.retriable() is False
    assert is_retryable(error) is False


def test_librdkafka_retriable_flag_is_honoured():
    assert is_retryable(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, retriable=True)) is True


def parse(argv):
    parser = argparse.ArgumentParser()
    add_retry_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("MAX_ATTEMPTS", "RETRY_BACKOFF_MS", "RETRY_BACKOFF_MAX_MS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_retry_policy_defaults(clean_env):
    assert retry_policy(parse([])) == RetryPolicy(3, 0.2, 5.0)


def test_retry_policy_flags_beat_environment(clean_env):
    clean_env.setenv("MAX_ATTEMPTS", "9")
    clean_env.setenv("RETRY_BACKOFF_MS", "50")
    policy = retry_policy(parse(["--max-attempts", "4", "--retry-backoff-max-ms", "1500"]))
    assert (policy.max_attempts, policy.initial_backoff, policy.max_backoff) == (4, 0.05, 1.5)


def test_retry_policy_bad_environment(clean_env):
    clean_env.setenv("MAX_ATTEMPTS", "0")
    with pytest.raises(UsageError, match="^MAX_ATTEMPTS='0'"):
        retry_policy(parse([]))


def test_retry_flags_are_validated(clean_env, capsys):
    with pytest.raises(SystemExit):
        parse(["--retry-backoff-ms", "-1"])
    assert "--retry-backoff-ms" in capsys.readouterr().err
