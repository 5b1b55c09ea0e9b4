"""Kafka itself fails: a broker of three dies, the whole cluster is down, a drain is killed half way."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from conftest import (
    Pipeline,
    Running,
    Scripts,
    assert_dead_lettered_exactly_once,
    assert_pipeline_exact,
    assert_summary_matches_truth,
    wait_for,
)

from orders_dlq import local_kafka
from orders_dlq.codec import dead_letter_codec
from orders_dlq.dead_letter import DeadLetterCodec
from orders_dlq.spool import Spool

pytestmark = pytest.mark.integration


def spool_rows(path) -> tuple[int, int]:
    """(rows, rows a drain has started sending) in a spool file, read the way an operator could."""
    if not path.exists():
        return 0, 0
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*), COUNT(sending_since) FROM dead_letters").fetchone()


def written(pipeline: Pipeline) -> int:
    """Messages in the orders topic: the sum of its partitions' end offsets."""
    reader = Consumer({"bootstrap.servers": pipeline.bootstrap, "group.id": "watermarks"})
    try:
        return sum(reader.get_watermark_offsets(TopicPartition(pipeline.topic, p), timeout=10)[1]
                   for p in range(pipeline.partitions))
    except KafkaException:
        return 0
    finally:
        reader.close()


def consume_what_is_left(pipeline: Pipeline, guarantee: str, patience: float = 240.0) -> list[str]:
    """Restart the consumer (each run stops after 3 s without orders) until the group has committed
    every partition of the orders topic to its end; returns the runs' logs.

    A consumer that stops in the middle of a join (Kafka back a moment before its --idle-timeout
    ran out) leaves a member behind that the coordinator keeps until its session expires (10 s): a
    restart in that window is given only some partitions, and stops idle on them with the others
    uncommitted, not lost. The next run takes them."""
    end = written(pipeline)
    assert end > 0, "the orders topic's end offsets could not be read"
    deadline = time.monotonic() + patience
    logs: list[str] = []
    while True:
        run = pipeline.scripts.run("consumer_aggregation.py", "-g", pipeline.group, "--guarantee", guarantee,
                                   "--idle-timeout", 3, "--json", timeout=180)
        logs.append(run.stderr)
        if sum(max(offset, 0) for offset in pipeline.committed().values()) >= end:
            return logs
        if time.monotonic() > deadline:
            raise AssertionError(f"the group committed {pipeline.committed()} of {end} messages after "
                                 f"{len(logs)} runs:\n" + "\n".join(logs)[-4000:])


def assert_exact_once_the_rest_is_consumed(pipeline: Pipeline, guarantee: str, first_run: str, code) -> None:
    """consume_what_is_left, then the totals and the DLQ must be exact; on failure the committed
    offsets and every run's log are in the message."""
    restarts = consume_what_is_left(pipeline, guarantee)
    try:
        assert_pipeline_exact(pipeline, pipeline.truth(), guarantee)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- committed {pipeline.committed()}\n--- restarts:\n"
                             + "\n".join(restarts)[-3000:]
                             + f"\n--- first consumer (exit {code}):\n{first_run[-3000:]}") from None


def dlq_size(pipeline: Pipeline) -> int:
    return len(pipeline.read(pipeline.dlq_topic))


def dlq_high_watermarks(pipeline: Pipeline) -> int:
    """Messages written to the DLQ so far, from its high watermarks: cheap enough to poll while a
    drain runs (reading the topic took longer than a whole drain of 3,000)."""
    consumer = Consumer({"bootstrap.servers": pipeline.bootstrap, "group.id": "test-watermarks"})
    try:
        partitions = consumer.list_topics(pipeline.dlq_topic, timeout=10).topics[pipeline.dlq_topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(pipeline.dlq_topic, p), timeout=10)[1]
                   for p in partitions)
    finally:
        consumer.close()


# 16 s of orders at 2,500/s: the leader dies while the producer is still sending.
ORDERS = 40000


@pytest.mark.slow
def test_three_brokers_one_killed_while_producing_and_consuming_loses_nothing(tmp_path):
    cluster = local_kafka.LocalKafka(tmp_path / "cluster", brokers=3, base_port=0)
    cluster.start(timeout=180)
    try:
        scripts = Scripts(cluster.bootstrap, tmp_path)
        pipeline = Pipeline(cluster.bootstrap, scripts)
        pipeline.setup("--replication-factor", 3)
        consumer = scripts.spawn("consumer_aggregation.py", "-g", pipeline.group, "--instance-id", "solo",
                                 "--idle-timeout", 20, "--json", "--print-interval", 0)
        # The producer at its default flags: one delivery budget per order, never resent, must ride
        # out the election that follows the death of the leader it is writing to.
        producer = scripts.spawn("producer.py", "--count", ORDERS, "--rate", 2500, "--poison-ratio", 0.002,
                                 "--seed", 13, "--json")
        try:
            # The producer's progress (the topic's end offsets), not the consumer's: the leader must
            # die while orders are still being written.
            wait_for(lambda: written(pipeline) > 3000, 120, "progress")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- consumer\n{consumer.stderr()[-3000:]}\n"
                                 f"--- producer\n{producer.stderr()[-2000:]}") from None
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        leader = admin.list_topics(pipeline.topic, timeout=10).topics[pipeline.topic].partitions[0].leader
        cluster.kill_broker(leader - 1)  # node ids are 1-based
        assert producer.running(), ("the producer ended before the leader died: the failover was not tested\n"
                                    f"{producer.stdout()}{producer.stderr()[-2000:]}")

        assert producer.wait(240) == 0, producer.stderr()[-2000:]
        assert consumer.wait(240) == 0, consumer.stderr()[-2000:]
        sent = json.loads(producer.stdout())
        summary = json.loads(consumer.stdout())
        messages = pipeline.read(pipeline.topic)
        truth = pipeline.truth()
        letters = pipeline.dead_letters()
    finally:
        cluster.stop()
    assert sent["sent"] == ORDERS and sent["dead_lettered"] == sent["spooled"] == 0
    keys = [m.key() for m in messages]
    assert len(keys) == len(set(keys)) == ORDERS, "an order was lost or written twice"
    assert not {letter["_key"] for letter in letters if letter["error_stage"] == "produce"}, \
        "an order was dead-lettered by the producer although it reached the topic"
    assert_summary_matches_truth(summary, truth)
    assert_dead_lettered_exactly_once(letters, truth)


# Enough spooled dead letters that the drain is still running when the first ones are seen in the DLQ.
DRAINED = 8000


def test_drain_killed_half_way_then_rerun_delivers_each_dead_letter_once(private_kafka, private_pipeline, tmp_path):
    pipeline = private_pipeline
    scripts = pipeline.scripts
    spool = tmp_path / "spool.sqlite3"
    env = {"DLQ_SPOOL": str(spool)}
    private_kafka.stop()
    scripts.run("producer.py", "--count", DRAINED, "--delivery-timeout", 1, env=env, expect=1, timeout=120)
    assert spool_rows(spool) == (DRAINED, 0)
    private_kafka.start(timeout=120)

    drain = scripts.spawn("dlq_producer.py", "--flush-spool", env=env)
    wait_for(lambda: dlq_high_watermarks(pipeline) > 0 or not drain.running(), 60, "the drain to deliver something",
             interval=0.02)
    assert drain.running(), f"the drain ended before it could be killed: nothing was tested\n{drain.stderr()}"
    drain.kill()
    rows, marked = spool_rows(spool)
    delivered_before_kill = dlq_size(pipeline)
    assert rows > 0 and delivered_before_kill > 0, "the kill did not land half way through the drain"

    result = scripts.json("dlq_producer.py", "--flush-spool", env=env)

    assert result["remaining"] == 0 and spool_rows(spool) == (0, 0)
    assert result["sent"] + result["already_in_kafka"] == rows
    letters = pipeline.dead_letters()
    assert len(letters) == DRAINED, f"{len(letters)} dead letters (killed with {rows} rows left, {marked} marked, " \
                                 f"{delivered_before_kill} delivered)"
    assert len({letter["order_id"] for letter in letters}) == DRAINED
    assert all(letter["error_stage"] == "produce" and letter["retry_count"] == 1 for letter in letters)


def test_spool_drains_by_itself_when_a_tool_next_starts_with_the_broker_up(private_kafka, private_pipeline, tmp_path):
    pipeline = private_pipeline
    scripts = pipeline.scripts
    private_kafka.stop()
    down = json.loads(scripts.run("producer.py", "--count", 12, "--delivery-timeout", 1, "--json",
                                  expect=1, timeout=90).stdout)
    assert down["spooled"] == 12
    private_kafka.start(timeout=120)

    up = scripts.json("producer.py", "--count", 5)

    assert up["sent"] == 5
    letters = pipeline.dead_letters()
    assert len(letters) == 12 and {letter["error_stage"] for letter in letters} == {"produce"}
    assert spool_rows(tmp_path / "dlq-spool.sqlite3") == (0, 0)
    summary = pipeline.consume()
    assert summary["processed"] == 5
    assert_summary_matches_truth(summary, pipeline.truth())


def test_a_long_outage_spools_every_order_as_it_fails_and_the_counts_add_up(private_kafka, private_pipeline, tmp_path):
    """More orders than librdkafka's queue holds, the broker down all along: the producer used to end in
    a RecursionError with nothing spooled. Each order must end sent, dead-lettered or spooled."""
    pipeline = private_pipeline
    scripts = pipeline.scripts
    spool = tmp_path / "spool.sqlite3"
    private_kafka.stop()

    # A small queue so that it fills many times over: every produce() then waits for room.
    result = scripts.run("producer.py", "--count", 30000, "--delivery-timeout", 1,
                         "-X", "queue.buffering.max.messages=2000", "--json",
                         env={"DLQ_SPOOL": str(spool)}, expect=1, timeout=180)

    summary = json.loads(result.stdout)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert summary["produced"] == 30000
    assert summary["sent"] + summary["dead_lettered"] + summary["spooled"] == 30000
    assert summary["spooled"] == 30000 == spool_rows(spool)[0]


# Runs a command with a cap on the size of any file it writes (RLIMIT_FSIZE): past it a write fails
# with EFBIG, as on a full disk (Python ignores the SIGXFSZ that comes with it).
WITH_FILE_SIZE_LIMIT = ("import os, resource, sys; limit = int(sys.argv[1]); "
                        "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
                        "os.execv(sys.argv[2], sys.argv[2:])")


def test_a_spool_that_fills_up_in_an_outage_stops_the_producer_with_every_order_accounted_for(
        private_kafka, private_pipeline, tmp_path):
    """Kafka goes down and the spool's disk fills up while producer.py runs: it must stop sending
    (each further order would be lost), let the orders already queued end, and account for every
    order it made: in Kafka, in the spool, or named as not kept; one sentence, exit 1, the spool's
    own error in it (not a secondary "cannot rollback")."""
    pipeline = private_pipeline
    spool_path = tmp_path / "small-disk.sqlite3"
    command = [sys.executable, "-c", WITH_FILE_SIZE_LIMIT, str(256 * 1024),
               *pipeline.scripts.command("producer.py", "--count", 20000, "--rate", 500, "--delivery-timeout", 2,
                                         "--spool", spool_path, "--json")]
    producer = Running(command, pipeline.scripts.cwd, pipeline.scripts.env(), "producer")
    try:
        wait_for(lambda: written(pipeline) > 500, 60, "progress")
        private_kafka.stop()
        code = producer.process.wait(180)
    finally:
        if producer.running():
            producer.kill()
    private_kafka.start(timeout=120)
    stderr = producer.stderr()
    errors = [line for line in stderr.splitlines() if line.startswith("error")]
    assert code == 1 and "Traceback" not in stderr and len(errors) == 1, stderr[-3000:]
    assert "nor kept in the spool" in errors[0] and "no transaction is active" not in errors[0], errors[0]
    summary = json.loads(producer.stdout().splitlines()[-1])
    not_kept = summary.pop("not_kept_order_ids")
    assert 0 < summary["not_kept"] == len(not_kept) == len(set(not_kept)), summary
    assert summary["produced"] < 20000, "the producer went on sending orders it could not keep"
    assert summary["produced"] == summary["sent"] + summary["dead_lettered"] + summary["spooled"] + summary["not_kept"]
    spool = Spool(spool_path)
    try:
        codec = DeadLetterCodec(dead_letter_codec())
        spooled = {codec.decode_message(row.value, row.headers).order_id for row in spool.pending()}
    finally:
        spool.close()
    assert len(spooled) == summary["spooled"] and not spooled & set(not_kept)
    in_kafka = {message.key().decode() for message in pipeline.read(pipeline.topic)}
    assert len(in_kafka) >= summary["sent"]
    # Every order is somewhere (one that timed out may be in Kafka as well: a timeout does not tell).
    assert len(in_kafka | spooled | set(not_kept)) == summary["produced"]


def test_a_spooled_row_that_cannot_be_drained_is_reported_and_kept_but_never_blocks(pipeline, scripts, tmp_path):
    """A row for a topic this cluster lacks (after a drain attempt), and a row of another cluster."""
    from orders_dlq.spool import Spool
    spool_path = tmp_path / "dlq-spool.sqlite3"
    spool = Spool(spool_path)
    spool.add("nosuch.DLQ", b"k", b"v", [])
    spool.mark_sending([row.row_id for row in spool.pending()])
    spool.add(pipeline.dlq_topic, b"k2", b"v2", [], cluster_id="another-cluster-id", bootstrap="elsewhere:9092")
    spool.close()

    for script, args in (("producer.py", ["--count", 3]), ("consumer_aggregation.py", ["-g", pipeline.group,
                                                                                      "--idle-timeout", 2])):
        result = scripts.run(script, *args)
        kept = [line for line in result.stderr.splitlines() if "kept in" in line]
        assert len(kept) == 1, result.stderr
        assert "for nosuch.DLQ, which does not exist on this cluster" in kept[0]
        assert "1 of another cluster" in kept[0]
    assert spool_rows(spool_path)[0] == 2

    status = scripts.json("dlq_producer.py", "--spool-status")
    assert sorted((row["topic"], row["cluster_id"], row["count"]) for row in status) == [
        ("nosuch.DLQ", None, 1), (pipeline.dlq_topic, "another-cluster-id", 1)]
    assert scripts.json("dlq_producer.py", "--discard", "--for-topic", "nosuch.DLQ") == {
        "discarded": 1, "remaining": 1}
    assert scripts.json("dlq_producer.py", "--discard", "--cluster", "another-cluster-id") == {
        "discarded": 1, "remaining": 0}
    assert pipeline.dead_letters() == []  # nothing went to a cluster it did not belong to


@pytest.mark.slow
@pytest.mark.timeout(600)  # about 2 minutes; a stuck consumer must fail below with its log, not here
def test_exactly_once_consumer_rides_out_a_broker_outage_longer_than_its_transaction_timeout(
        private_kafka, private_pipeline):
    """The broker stops for 30 s under an exactly-once consumer in the middle of its work: the open
    transaction outlives transaction.timeout.ms (15 s) and Kafka ends it. The consumer used to stop,
    blaming "another instance with the same --instance-id"; it must ride it out, and a restart
    must give exact totals."""
    pipeline = private_pipeline
    scripts = pipeline.scripts
    consumer = scripts.spawn("consumer_aggregation.py", "-g", pipeline.group, "--idle-timeout", 40, "--json",
                             "--print-interval", 0)
    producer = scripts.spawn("producer.py", "--count", 5000, "--rate", 200, "--bad-ratio", 0.01, "--seed", 31,
                             "--delivery-timeout", 180, "--json")
    try:
        wait_for(lambda: sum(max(o, 0) for o in pipeline.committed().values()) > 800, 90, "progress")
        private_kafka.stop()
        outage_ends = time.monotonic() + 30
        # The outage itself: a scenario length, not a synchronisation.
        wait_for(lambda: time.monotonic() > outage_ends or not consumer.running(), 60, "the outage to last")
        assert consumer.running(), f"the consumer stopped during the outage\n{consumer.stderr()[-3000:]}"
        private_kafka.start(timeout=120)
        assert producer.wait(300) == 0, producer.stderr()[-3000:]
        assert consumer.wait(240) == 0, consumer.stderr()[-8000:]
    finally:
        for process in (producer, consumer):
            if process.running():
                process.kill()
    stderr = consumer.stderr()
    # Whether Kafka ended the open transaction or it could still be aborted depends on timing;
    # either way no misleading cause is given (the deterministic case is in test_processing_retries).
    assert "another instance" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert_exact_once_the_rest_is_consumed(pipeline, "exactly-once", stderr, 0)


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 4 minutes
def test_exactly_once_consumer_under_a_200_second_outage_ends_truthfully_or_rides_it_out(
        private_kafka, private_pipeline):
    """Kafka gone for 200 s under an exactly-once consumer (default anonymous instance): the consumer
    may ride it out or stop, but only with a true sentence and a clean exit; a restart is exact."""
    pipeline = private_pipeline
    scripts = pipeline.scripts
    consumer = scripts.spawn("consumer_aggregation.py", "-g", pipeline.group, "--idle-timeout", 20, "--json",
                             "--print-interval", 0)
    producer = scripts.spawn("producer.py", "--count", 3000, "--rate", 200, "--seed", 37,
                             "--delivery-timeout", 400, "--json")
    try:
        try:
            wait_for(lambda: sum(max(o, 0) for o in pipeline.committed().values()) > 500, 90, "progress")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{consumer.stderr()[-2000:]}\n{producer.stderr()[-2000:]}") from None
        private_kafka.stop()
        outage_ends = time.monotonic() + 200
        # The outage itself: a scenario length, not a synchronisation.
        wait_for(lambda: time.monotonic() > outage_ends, 260, "the outage to last")
        private_kafka.start(timeout=120)
        assert producer.wait(300) == 0, producer.stderr()[-3000:]
        code = consumer.wait(300)
    finally:
        for process in (producer, consumer):
            if process.running():
                process.kill()
    stderr = consumer.stderr()
    assert code in (0, 1) and "Traceback" not in stderr and "another instance" not in stderr, stderr[-3000:]
    if code == 1:
        assert len([line for line in stderr.splitlines() if line.startswith("error")]) == 1, stderr[-3000:]
    assert_exact_once_the_rest_is_consumed(pipeline, "exactly-once", stderr, code)


@pytest.mark.slow
@pytest.mark.timeout(600)
# At-least-once: its offset commit is asynchronous, with a synchronous fallback after 1 s without an
# answer, the path a frozen coordinator takes. (Exactly-once passed it too, in 80 s, and its
# transaction-timeout path is covered by the 30 s outage above: CI time went to other cases.)
@pytest.mark.parametrize("guarantee", ["at-least-once"])
def test_a_frozen_broker_that_comes_back_loses_nothing_and_counts_nothing_twice(
        private_kafka, private_pipeline, guarantee):
    """A broker that hangs instead of dying (a long GC or VM pause, SIGSTOP here): its connections stay
    open and requests get no answer, for longer than the session and transaction timeouts. When it
    answers again, the producer and the consumer finish without a traceback and the totals are exact."""
    pipeline = private_pipeline
    scripts = pipeline.scripts
    consumer = scripts.spawn("consumer_aggregation.py", "-g", pipeline.group, "--guarantee", guarantee,
                             "--idle-timeout", 15, "--json", "--print-interval", 0)
    producer = scripts.spawn("producer.py", "--count", 4000, "--rate", 250, "--bad-ratio", 0.01,
                             "--poison-ratio", 0.01, "--seed", 41, "--delivery-timeout", 120, "--json")
    broker = private_kafka.pid(0)
    frozen = False
    try:
        wait_for(lambda: sum(max(o, 0) for o in pipeline.committed().values()) > 600, 90, "progress")
        os.kill(broker, signal.SIGSTOP)
        frozen = True
        thaw_at = time.monotonic() + 25
        # The freeze itself: a scenario length, not a synchronisation.
        wait_for(lambda: time.monotonic() > thaw_at, 40, "the freeze to last")
        os.kill(broker, signal.SIGCONT)
        frozen = False
        assert producer.wait(300) == 0, producer.stderr()[-3000:]
        code = consumer.wait(300)
    finally:
        if frozen:
            os.kill(broker, signal.SIGCONT)
        for process in (producer, consumer):
            if process.running():
                process.kill()
    stderr = consumer.stderr()
    assert "Traceback" not in stderr and "Traceback" not in producer.stderr(), stderr[-3000:]
    assert code in (0, 1), stderr[-3000:]
    if code == 1:
        assert len([line for line in stderr.splitlines() if line.startswith("error")]) == 1, stderr[-3000:]
    assert_exact_once_the_rest_is_consumed(pipeline, guarantee, stderr, code)


@pytest.mark.slow
def test_an_assignment_whose_changelog_partition_has_no_leader_waits_for_it_then_counts_exactly(tmp_path):
    """The consumer joins while a broker that alone holds a changelog partition is down (a restart,
    a crash): reading that partition's state inside the assignment fails. The assignment retries
    and says so, instead of a traceback out of consume(); once the broker is back the run is exact."""
    cluster = local_kafka.LocalKafka(tmp_path / "cluster", brokers=3, base_port=0)
    cluster.start(timeout=180)
    consumer = None
    try:
        scripts = Scripts(cluster.bootstrap, tmp_path)
        pipeline = Pipeline(cluster.bootstrap, scripts)
        pipeline.setup("--replication-factor", 1)  # one replica: that partition has no leader while its broker is down
        scripts.run("producer.py", "--count", 600, "--bad-ratio", 0.02, "--seed", 43)
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        holder = admin.list_topics(pipeline.state_topic, timeout=10).topics[pipeline.state_topic].partitions[0].leader
        cluster.stop_broker(holder - 1)  # node ids are 1-based
        consumer = scripts.spawn("consumer_aggregation.py", "-g", pipeline.group, "--idle-timeout", 5, "--json",
                                 "--print-interval", 0)
        wait_for(lambda: "reading where the assigned partitions stand failed" in consumer.stderr()
                 or not consumer.running(), 120, "the assignment to meet the missing leader")
        assert consumer.running(), consumer.stderr()[-3000:]
        cluster.start_broker(holder - 1, timeout=120)
        assert consumer.wait(240) == 0, consumer.stderr()[-3000:]
        summary = json.loads(consumer.stdout())
        truth = pipeline.truth()
        letters = pipeline.dead_letters()
    finally:
        if consumer is not None and consumer.running():
            consumer.kill()
        cluster.stop()
    assert "Traceback" not in consumer.stderr(), consumer.stderr()[-3000:]
    assert_summary_matches_truth(summary, truth)
    assert_dead_lettered_exactly_once(letters, truth)
