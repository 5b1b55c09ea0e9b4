"""Instances join and leave a 12-partition group while orders flow: incremental rebalancing
(cooperative, or the KIP-848 protocol) moves only the partitions that change owner, and the totals
stay exact."""

from __future__ import annotations

import json
import re
import signal

import pytest
from conftest import Pipeline, Scripts, assert_pipeline_exact, wait_for

pytestmark = pytest.mark.integration

CONSUMER_ARGS = ("--commit-interval-ms", 50, "--print-interval", 0)
KEPT = re.compile(r"revoked .*; keeping (\d+) partition\(s\)")


def assigned_count(stderr: str) -> int:
    return stderr.count("assigned ")


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("guarantee", "protocol"), [
    ("exactly-once", ()),
    ("at-least-once", ()),
    # KIP-848 (GA in Kafka 4): the broker computes each member's target assignment and every
    # member reconciles on its own; the rebalance callbacks add and remove partitions.
    ("exactly-once", ("-X", "group.protocol=consumer")),
], ids=["exactly-once", "at-least-once", "exactly-once-kip848"])
def test_instances_join_and_leave_while_orders_flow_and_totals_stay_exact(kafka_bootstrap, tmp_path, guarantee,
                                                                         protocol):
    scripts = Scripts(kafka_bootstrap, tmp_path)
    pipeline = Pipeline(kafka_bootstrap, scripts, partitions=12)
    pipeline.setup()
    # Orders flow until the joins and the leave below are done, then the producer is stopped.
    producer = scripts.spawn("producer.py", "--count", 200000, "--rate", 1500, "--bad-ratio", 0.01,
                             "--poison-ratio", 0.005, "--seed", 11, "--json", name="producer")

    def instance(name: str):
        return scripts.spawn("consumer_aggregation.py", "-g", pipeline.group, "--instance-id", name,
                             "--guarantee", guarantee, "--idle-timeout", 6, *CONSUMER_ARGS, *protocol, name=name)

    first = instance("a")
    wait_for(lambda: "assigned " in first.stderr() or not first.running(), 60, "the first instance's partitions")
    second = instance("b")
    wait_for(lambda: "assigned " in second.stderr() or not second.running(), 60, "b to join")
    third = instance("c")
    wait_for(lambda: "assigned " in third.stderr() or not third.running(), 60, "c to join")
    # b leaves cleanly (SIGTERM: it commits, then leaves the group); its partitions move to a and c.
    second.process.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0, second.stderr()[-3000:]
    wait_for(lambda: assigned_count(first.stderr()) + assigned_count(third.stderr()) >= 4
             or not (first.running() and third.running()), 60, "b's partitions to move to a and c")

    assert producer.running(), "the orders stopped flowing before the joins and the leave were done"
    producer.process.send_signal(signal.SIGTERM)  # it stops sending, delivers what it sent, and ends
    assert producer.wait(60) == 1, producer.stderr()[-2000:]  # 1: stopped before its --count
    sent = json.loads(producer.stdout())
    assert sent["sent"] == sent["produced"] > 3000 and sent["dead_lettered"] == sent["spooled"] == 0
    for survivor in (first, third):
        assert survivor.wait(180) == 0, survivor.stderr()[-3000:]

    truth = pipeline.truth()
    assert_pipeline_exact(pipeline, truth, guarantee)

    # Incremental: when b and c joined, a gave up some partitions and kept processing the others,
    # instead of revoking all twelve and restoring them again (its last revoke, at exit, keeps none).
    kept = [int(n) for n in KEPT.findall(first.stderr())]
    assert len(kept) >= 2 and all(n > 0 for n in kept[:-1]), first.stderr()[-3000:]
