"""The observability kit in ops/ uses only metrics the scripts export, and README.md documents every one."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from orders_dlq import metrics
from orders_dlq.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent.parent
NAME = re.compile(r"\borders_dlq_[a-z0-9_]+")


def exported() -> dict[str, str]:
    """{name on the wire: type} of everything producer.py, consumer_aggregation.py and dlq_consumer.py serve."""
    names = {}
    for collector in {*metrics.PRODUCER, *metrics.CONSUMER, *metrics.MONITOR}:
        if isinstance(collector, metrics.MonitorGauges):
            for name, _help in collector.EXPORTED.values():
                names[metrics.PREFIX + name] = "gauge"
        elif isinstance(collector, Counter):
            names[collector._name + "_total"] = "counter"
        elif isinstance(collector, Histogram):
            names[collector._name] = "histogram"
            for series in ("_bucket", "_sum", "_count"):  # what a histogram puts on the wire
                names[collector._name + series] = "histogram series"
        elif isinstance(collector, Gauge):
            names[collector._name] = "gauge"
        else:
            raise AssertionError(f"unknown collector {collector!r}")
    return names


def used_by_ops() -> set[str]:
    used = set()
    for target in json.loads((ROOT / "ops" / "grafana" / "orders-dlq-dashboard.json").read_text())["panels"]:
        for query in target["targets"]:
            used.update(NAME.findall(query["expr"]))
    for line in (ROOT / "ops" / "prometheus" / "alerts.yml").read_text().splitlines():
        if line.strip().startswith("expr:"):
            used.update(NAME.findall(line))
    return used


def test_every_metric_the_dashboard_and_alerts_use_is_exported():
    used = used_by_ops()
    assert used, "no metric found in ops/"
    assert used <= set(exported()), f"not exported: {sorted(used - set(exported()))}"


def test_the_alerts_cover_dlq_rate_oldest_dead_letter_and_spool():
    used = used_by_ops()
    for name in ("orders_dlq_dead_letters_total", "orders_dlq_monitor_oldest_dead_letter_age_seconds",
                 "orders_dlq_spool_messages"):
        assert name in used, name


def test_every_exported_metric_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name, kind in exported().items() if kind != "histogram series" and f"`{name}" not in readme]
    assert not missing, f"README.md does not document {missing}"


def test_names_follow_prometheus_conventions():
    for name, kind in exported().items():
        assert name.startswith("orders_dlq_"), name
        assert (kind == "counter") == name.endswith("_total"), f"{name}: only counters end in _total"
        assert not re.search(r"per_(second|minute|hour)|_rate\b|_share\b|_size\b", name), \
            f"{name}: a precomputed rate or a name without a unit"
    # The monitor rebuilds its view from the whole DLQ at every start: a counter would count the
    # backlog again after each restart, so what it reads is a gauge.
    assert exported()["orders_dlq_monitor_dead_letters"] == "gauge"


def test_metrics_host_that_cannot_be_bound_is_a_usage_error(monkeypatch):
    import argparse
    import socket

    import pytest


    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.delenv("METRICS_HOST", raising=False)
    args = argparse.Namespace(metrics_port=port, metrics_host="192.0.2.1")  # TEST-NET: not this machine's
    with pytest.raises(UsageError, match=r"cannot serve metrics on 192\.0\.2\.1:\d+ \(--metrics-host"):
        metrics.serve(args, ())
