"""The monitor end to end: Prometheus endpoints scraped for real, --follow in a pipe, the alert's exit
code and figures, and --since/--until across time zones."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import datetime

import pytest
from confluent_kafka import Producer
from conftest import Pipeline, wait_for
from prometheus_client.parser import text_string_to_metric_families

from orders_dlq.dead_letter import DeadLetter
from orders_dlq.dlq import DeadLetterProducer
from orders_dlq.settings import KafkaSettings

pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> dict:
    """{(sample name, frozenset of labels): value}, or {} while nothing answers yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return {}
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (sample, sample_labels), v in samples.items() if sample == name and wanted <= sample_labels)


def produce_and_aggregate(pipeline: Pipeline, count=200, bad=0.1, poison=0.05, seed=21) -> dict:
    pipeline.scripts.json("producer.py", "--count", count, "--bad-ratio", bad, "--poison-ratio", poison,
                          "--seed", seed)
    truth = pipeline.truth()
    pipeline.consume()
    return truth


# -- metrics ---------------------------------------------------------------------------------------

def test_consumer_serves_processed_dead_letters_and_lag_on_loopback(pipeline: Pipeline):
    pipeline.scripts.json("producer.py", "--count", 300, "--bad-ratio", 0.1, "--poison-ratio", 0.05, "--seed", 4)
    truth = pipeline.truth()
    failures = truth["failures"]
    assert failures["deserialize"] > 0 and failures["validate"] > 0
    port = free_port()
    consumer = pipeline.scripts.spawn("consumer_aggregation.py", "-g", pipeline.group, "--idle-timeout", 25,
                                      "--metrics-port", port)
    try:
        def settled():
            samples = scrape(port)
            done = (value(samples, "orders_dlq_orders_processed_total") == truth["count"]
                    and value(samples, "orders_dlq_dead_letters_total", stage="deserialize") == failures["deserialize"]
                    and value(samples, "orders_dlq_dead_letters_total", stage="validate") == failures["validate"]
                    and len([s for s in samples if s[0] == "orders_dlq_consumer_lag_messages"]) == pipeline.partitions
                    # The lag gauge is refreshed once a second: wait for the refresh after the last commit.
                    and value(samples, "orders_dlq_consumer_lag_messages", topic=pipeline.topic) == 0)
            return samples if done else None

        samples = wait_for(settled, 25, "the consumer's metrics to count every order and show no lag")
        assert value(samples, "orders_dlq_spool_messages") == 0
        # Every aggregated order observed once in the latency histogram.
        assert value(samples, "orders_dlq_order_latency_seconds_count") == truth["count"]
        assert value(samples, "orders_dlq_order_latency_seconds_bucket", le="+Inf") == truth["count"]
        reasons = {dict(labels)["reason"] for name, labels in samples if name == "orders_dlq_dead_letters_total"}
        assert "not a valid Avro order record" in reasons
        assert all(": " not in reason for reason in reasons)  # categories, not the per-message text
        assert not [name for name, _ in samples if name.startswith(("orders_dlq_monitor", "orders_dlq_orders_sent"))]
        with pytest.raises(OSError):  # loopback only
            socket.create_connection((outside_address(), port), timeout=1).close()
    finally:
        consumer.process.send_signal(signal.SIGTERM)
        assert consumer.wait(20) == 0, consumer.stderr()


def outside_address() -> str:
    """An address of this machine that is not loopback (or a documentation address if it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = sock.getsockname()[0]
        except OSError:
            address = "192.0.2.1"
    return "192.0.2.1" if address.startswith("127.") else address


def test_producer_serves_produced_and_sent_counts(pipeline: Pipeline):
    port = free_port()
    producer = pipeline.scripts.spawn("producer.py", "--count", 100000, "--rate", 300, "--metrics-port", port,
                                      "--json")
    try:
        samples = wait_for(lambda: (lambda s: s if value(s, "orders_dlq_orders_sent_total") >= 50 else None)(
            scrape(port)), 20, "the producer's sent counter to reach 50")
        assert value(samples, "orders_dlq_orders_produced_total") >= value(samples, "orders_dlq_orders_sent_total")
        assert value(samples, "orders_dlq_spool_messages") == 0
    finally:
        producer.process.send_signal(signal.SIGTERM)
        producer.wait(20)
    summary = json.loads(producer.stdout())
    assert summary["sent"] >= 50 and summary["sent"] == summary["produced"]


def test_metrics_host_serves_on_another_interface(pipeline: Pipeline):
    """--metrics-host lets a Prometheus that is not on loopback (a container) scrape the endpoint."""
    address = outside_address()
    if address == "192.0.2.1":
        pytest.skip("this machine has no address besides loopback")
    port = free_port()
    producer = pipeline.scripts.spawn("producer.py", "--count", 100000, "--rate", 200, "--metrics-port", port,
                                      "--metrics-host", address, "--json")

    def scrape_outside():
        try:
            with urllib.request.urlopen(f"http://{address}:{port}/metrics", timeout=2) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
    try:
        text = wait_for(scrape_outside, 20, f"metrics on {address}:{port}")
        assert "orders_dlq_orders_sent_total" in text
    finally:
        producer.process.send_signal(signal.SIGTERM)
        producer.wait(20)


def test_monitor_serves_what_it_sees_and_stops_on_sigterm(pipeline: Pipeline):
    truth = produce_and_aggregate(pipeline)
    port = free_port()
    monitor = pipeline.scripts.spawn("dlq_consumer.py", "--follow", "--refresh", 0.5, "--duration", 25,
                                     "--metrics-port", port)
    try:
        def settled():
            samples = scrape(port)
            done = (value(samples, "orders_dlq_monitor_dead_letters", stage="deserialize")
                    == truth["failures"]["deserialize"]
                    and value(samples, "orders_dlq_monitor_dead_letters", stage="validate")
                    == truth["failures"]["validate"]
                    and value(samples, "orders_dlq_monitor_orders_topic_messages") == 200)
            return samples if done else None

        samples = wait_for(settled, 20, "the monitor's metrics")
        dead = sum(truth["failures"].values())
        assert value(samples, "orders_dlq_monitor_dead_letter_ratio") == pytest.approx(dead / 200)
        assert not [s for s in samples if "per_minute" in s[0] or s[0].endswith("_share")], "precomputed rate"
        assert 0 <= value(samples, "orders_dlq_monitor_newest_dead_letter_age_seconds") < 60
    finally:
        monitor.process.send_signal(signal.SIGTERM)
        assert monitor.wait(20) == 0, monitor.stderr()


# -- --follow ----------------------------------------------------------------------------------------

def test_follow_in_a_pipe_prints_plain_lines_and_ends_after_duration(pipeline: Pipeline):
    truth = produce_and_aggregate(pipeline, count=100, seed=8)
    dead = sum(truth["failures"].values())

    result = pipeline.scripts.run("dlq_consumer.py", "--follow", "--refresh", 1, "--duration", 2.5, timeout=30)

    assert not ANSI.search(result.stdout) and not ANSI.search(result.stderr)
    lines = result.stdout.splitlines()
    letters = [line for line in lines if re.match(r"\[\d+@\d+\] \S+Z (validate|deserialize): ", line)]
    assert len(letters) == dead
    status = [line for line in lines if re.match(r"\d\d:\d\d:\d\dZ dead letters ", line)]
    assert len(status) >= 2  # at the end of the backlog, then at least the last refresh
    assert all(f"dead letters {dead} " in line and f"of 100 orders ({dead} dead letters)" in line for line in status)
    assert f"dead letters: {dead}" in lines  # the final statistics


def test_follow_shows_a_new_dead_letter_and_stops_at_limit(pipeline: Pipeline):
    monitor = pipeline.scripts.spawn("dlq_consumer.py", "--follow", "--refresh", 0.5, "--limit", 1,
                                     "--duration", 25)
    wait_for(lambda: "dead letters 0 " in monitor.stdout(), 15, "the first status line")
    order_id = json.loads(pipeline.scripts.run("dlq_producer.py", "--send-example", "--json").stdout)["order_id"]

    assert monitor.wait(20) == 0, monitor.stderr()
    output = monitor.stdout()
    assert re.search(rf"^\[\d+@0\] \S+Z produce: Max retries exceeded .* order {order_id} ", output, re.M)
    assert not ANSI.search(output)


# -- --alert-threshold --------------------------------------------------------------------------------

def test_alert_threshold_exits_3_above_and_0_below_with_the_real_figures(pipeline: Pipeline):
    truth = produce_and_aggregate(pipeline, count=200, bad=0.15, poison=0.05, seed=13)
    dead = len(pipeline.dead_letters())
    assert dead == sum(truth["failures"].values()) > 0
    share = dead / 200
    below, above = round(share - 0.01, 4), round(share + 0.01, 4)

    alert = pipeline.scripts.run("dlq_consumer.py", "--json", "--alert-threshold", below, expect=3)

    expected = (f"ALERT: dead-letter rate {share * 100:.1f}% exceeds threshold {below * 100:.1f}% "
                f"({dead} of 200 orders)")
    assert [line for line in alert.stderr.splitlines() if line.startswith("ALERT")] == [expected]
    summary = json.loads(alert.stdout)
    assert (summary["total"], summary["orders_total"], summary["share_of_orders"]) == (dead, 200, share)
    assert summary["share_is_approximate"] is False

    quiet = pipeline.scripts.run("dlq_consumer.py", "--alert-threshold", above, expect=0)
    assert "ALERT" not in quiet.stderr
    assert f"share of orders: {share * 100:.1f}% of 200 orders ({dead} dead letters)" in quiet.stdout

    follow = pipeline.scripts.run("dlq_consumer.py", "--follow", "--refresh", 1, "--duration", 25,
                                  "--alert-threshold", below, expect=3, timeout=30)
    assert expected in follow.stderr.splitlines()
    assert not ANSI.search(follow.stdout)


# -- --since / --until / --original-topic --------------------------------------------------------------

def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_since_and_until_compare_real_times_in_any_zone(pipeline: Pipeline):
    settings = KafkaSettings(pipeline.bootstrap, pipeline.topic, pipeline.dlq_topic)
    stamps = {"early": "2026-01-10T08:30:00+00:00", "middle": "2026-01-10T09:30:00+00:00",
              "late": "2026-01-10T10:30:00+00:00"}
    letters = [DeadLetter(error_reason="unknown product: 'X'", error_type="InvalidOrder", error_stage="validate",
                          original_topic=pipeline.topic, failed_by="test", error_timestamp=stamp, order_id=name)
               for name, stamp in stamps.items()]
    letters.append(DeadLetter(error_reason="unknown product: 'Y'", error_type="InvalidOrder",
                              error_stage="validate", original_topic="other-orders", failed_by="test",
                              error_timestamp=stamps["middle"], order_id="elsewhere"))
    publisher = DeadLetterProducer(settings)
    assert publisher.send_confirmed(letters).delivered == 4
    # A Spring Kafka dead letter: no error time of its own, the DLQ message's time (09:45 UTC) counts.
    spring = Producer({"bootstrap.servers": pipeline.bootstrap})
    spring.produce(pipeline.dlq_topic, value=b"original", key=b"spring",
                   timestamp=int(at("2026-01-10T09:45:00+00:00").timestamp() * 1000),
                   headers=[("kafka_dlt-original-topic", pipeline.topic.encode()),
                            ("kafka_dlt-exception-message", b"listener failed")])
    assert spring.flush(30) == 0

    def selected(*args, env=None) -> set[str]:
        lines = pipeline.scripts.run("dlq_consumer.py", "--jsonl", *args, env=env).stdout.splitlines()
        return {json.loads(line)["order_id"] or json.loads(line)["original_key"] for line in lines}

    spring_key = b"spring".hex()
    after_nine = {"middle", "late", "elsewhere", spring_key}
    assert selected("--since", "2026-01-10T09:00:00Z") == after_nine
    # The same instant written with another offset: compared as times, not as text.
    assert selected("--since", "2026-01-10T10:00:00+01:00") == after_nine
    assert selected("--since", "2026-01-10T03:00-06:00") == after_nine
    # Without a zone the flag is local time: 14:30 in UTC+05:30 is 09:00 UTC.
    assert selected("--since", "2026-01-10T14:30", env={"TZ": "IST-5:30"}) == after_nine
    # 09:00 UTC to 09:40 UTC: the Spring dead letter (09:45) is just outside, by its message time.
    assert selected("--since", "2026-01-10T09:00Z", "--until", "2026-01-10T11:40+02:00") == {"middle", "elsewhere"}
    assert selected("--since", "2026-01-10T09:00Z", "--until", "2026-01-10T11:50+02:00") == \
        {"middle", "elsewhere", spring_key}
    assert selected("--until", "2026-01-10T09:30Z") == {"early"}
    assert selected("--since", "2026-01-10T09:00Z", "--original-topic", pipeline.topic) == \
        {"middle", "late", spring_key}
    assert selected("--original-topic", "other-orders") == {"elsewhere"}

    backwards = pipeline.scripts.run("dlq_consumer.py", "--since", "2026-01-10T10:00Z", "--until",
                                     "2026-01-10T11:00+02:00", expect=2)
    assert "--since must be before --until" in backwards.stderr
    assert "needs --follow" in pipeline.scripts.run("dlq_consumer.py", "--duration", 1, expect=2).stderr



@pytest.fixture
def dlq_of_3000(pipeline: Pipeline) -> Pipeline:
    pipeline.produce_raw([b"\x00not an order %d" % n for n in range(3000)])
    summary = pipeline.consume("--guarantee", "at-least-once")
    assert summary["dead_lettered"] == 3000
    return pipeline


def test_a_reader_that_goes_away_ends_the_listing_at_once_not_message_by_message(dlq_of_3000: Pipeline):
    """`dlq_consumer.py --jsonl | head -1`: the closed pipe is the tool's output failing, not 3,000
    records that cannot be read; it stops quietly instead of warning once per remaining message."""
    pipeline = dlq_of_3000
    process = subprocess.Popen(pipeline.scripts.command("dlq_consumer.py", "--jsonl"), cwd=pipeline.scripts.cwd,
                               env=pipeline.scripts.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.readline()
    process.stdout.close()
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert json.loads(first)["error_stage"] == "deserialize"
    text = stderr.decode()
    assert "is not a dead letter" not in text and "Traceback" not in text, text[-2000:]


def test_output_to_a_full_disk_is_one_sentence_not_a_warning_per_dead_letter(dlq_of_3000: Pipeline):
    """The listing's own output cannot be written (RLIMIT_FSIZE, as a full disk): exit 1, one
    sentence, and no dead letter reported unreadable because of it."""
    pipeline = dlq_of_3000
    limited = [sys.executable, "-c", "import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, "
               "(4096, 4096)); os.execv(sys.argv[1], sys.argv[1:])",
               *pipeline.scripts.command("dlq_consumer.py", "--jsonl")]
    with open(pipeline.scripts.cwd / "listing.jsonl", "wb") as out:
        result = subprocess.run(limited, cwd=pipeline.scripts.cwd, env=pipeline.scripts.env(), stdout=out,
                                stderr=subprocess.PIPE, timeout=120)
    stderr = result.stderr.decode()
    errors = [line for line in stderr.splitlines() if line.startswith("error")]
    assert result.returncode == 1 and len(errors) == 1 and "no room left to write" in errors[0], stderr[-2000:]
    assert "is not a dead letter" not in stderr and "Traceback" not in stderr, stderr[-2000:]
