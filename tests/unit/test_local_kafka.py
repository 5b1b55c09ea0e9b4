"""The local broker runner's pure parts."""

from __future__ import annotations

import base64

from orders_dlq.local_kafka import new_cluster_id


def test_cluster_ids_are_kafka_uuids_that_never_look_like_an_option():
    # One id in 64 would start with '-' if drawn freely, and kafka-storage format would read it
    # as an option and fail: 5,000 draws would see about 80 of them.
    for _ in range(5000):
        cluster_id = new_cluster_id()
        assert len(cluster_id) == 22 and not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
