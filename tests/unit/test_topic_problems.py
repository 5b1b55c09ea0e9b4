"""Which topics a tool may not use yet, and why: missing, not ready (it passes), or refused (it does not)."""

from __future__ import annotations

from confluent_kafka import KafkaError
from confluent_kafka.admin import ClusterMetadata, TopicMetadata

from orders_dlq.kafka import NOT_READY_TOPIC_ERRORS, topic_problems


def metadata_with(**errors) -> ClusterMetadata:
    metadata = ClusterMetadata()
    for name, code in errors.items():
        topic = TopicMetadata()
        topic.topic = name
        topic.error = None if code is None else KafkaError(code)
        metadata.topics[name] = topic
    return metadata


def test_unknown_and_absent_topics_are_missing_and_other_errors_are_kept_with_their_code():
    metadata = metadata_with(orders=None, dlq=KafkaError.UNKNOWN_TOPIC_OR_PART,
                             state=KafkaError.LEADER_NOT_AVAILABLE, secret=KafkaError.TOPIC_AUTHORIZATION_FAILED)
    missing, errors = topic_problems(metadata, ["orders", "dlq", "state", "secret", "absent"])
    assert missing == ["dlq", "absent"]
    assert {topic: error.code() for topic, error in errors.items()} == {
        "state": KafkaError.LEADER_NOT_AVAILABLE, "secret": KafkaError.TOPIC_AUTHORIZATION_FAILED}


def test_a_refusal_is_never_taken_for_a_topic_that_is_not_ready_yet():
    assert KafkaError.LEADER_NOT_AVAILABLE in NOT_READY_TOPIC_ERRORS
    for refusal in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.TOPIC_EXCEPTION,
                    KafkaError.UNKNOWN_TOPIC_OR_PART):
        assert refusal not in NOT_READY_TOPIC_ERRORS
