"""One retry policy for the producer and the consumer: bounded attempts, capped exponential backoff, jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass

from confluent_kafka import KafkaError

from orders_dlq.codec import DecodeError
from orders_dlq.kafka import LEADERSHIP_IN_TRANSIT
from orders_dlq.orders import InvalidOrder
from orders_dlq.settings import non_negative, positive, setting

# Delivery errors that say "the cluster could not be reached in time", worth another attempt.
RETRYABLE_DELIVERY_ERRORS = LEADERSHIP_IN_TRANSIT | {
    KafkaError._MSG_TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError.REQUEST_TIMED_OUT,
}


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def backoff(self, failures: int, rng: random.Random = random) -> float:
        """Seconds to wait after the n-th failure: exponential, capped, +/- jitter."""
        base = self._step(failures - 1)
        return max(0.0, base * (1 + rng.uniform(-self.jitter, self.jitter)))

    def _step(self, n: int) -> float:
        # The exponent is capped too: past 64 doublings every step is max_backoff anyway.
        return min(self.max_backoff, self.initial_backoff * self.multiplier ** min(n, 64))

    def total_bound(self, attempt_timeout: float) -> float:
        """The longest time one message can spend in retries: every attempt plus every backoff."""
        backoffs = sum(self._step(n) for n in range(self.max_attempts - 1))
        return self.max_attempts * attempt_timeout + backoffs * (1 + self.jitter)


def is_retryable(error: BaseException | KafkaError) -> bool:
    """Fatal: the data itself is wrong (undecodable, invalid). Retryable: everything transient."""
    if isinstance(error, KafkaError):
        return error.code() in RETRYABLE_DELIVERY_ERRORS or error.retriable()
    return not isinstance(error, (DecodeError, InvalidOrder))


def add_retry_arguments(parser) -> None:
    group = parser.add_argument_group("retry policy")
    group.add_argument("--max-attempts", type=positive(int),
                       help="attempts before a message is dead-lettered (env MAX_ATTEMPTS, default 3)")
    group.add_argument("--retry-backoff-ms", type=non_negative(int),
                       help="first backoff, doubled per attempt (env RETRY_BACKOFF_MS, default 200)")
    group.add_argument("--retry-backoff-max-ms", type=non_negative(int),
                       help="backoff cap (env RETRY_BACKOFF_MAX_MS, default 5000)")


def retry_policy(args) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=setting(args, "max_attempts", "MAX_ATTEMPTS", 3, positive(int)),
        initial_backoff=setting(args, "retry_backoff_ms", "RETRY_BACKOFF_MS", 200, non_negative(int)) / 1000,
        max_backoff=setting(args, "retry_backoff_max_ms", "RETRY_BACKOFF_MAX_MS", 5000, non_negative(int)) / 1000,
    )
