"""Smoke test of the benchmark: bench/run.py --tiny runs every case against the session's broker.

A benchmark is not a test: nothing here looks at a timing, only that every case ran and the
JSON report is complete.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_tiny_bench_runs_every_case_and_writes_json(kafka_bootstrap, schema_registry, tmp_path):
    out = tmp_path / "results.json"
    # The session's broker and registry: the bench starts neither.
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "SCHEMA_REGISTRY_URL": schema_registry}
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--tiny", "--json-out", str(out)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr[-4000:]}"

    report = json.loads(out.read_text())
    assert report["machine"]["cores"] >= 1
    assert report["machine"]["broker_version"]
    assert report["machine"]["broker"] == "KAFKA_BOOTSTRAP_SERVERS"  # used the session's broker, started none
    cases = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--list"], capture_output=True,
                           text=True, timeout=60, check=True).stdout.split()
    assert cases and set(report["cases"]) == set(cases)
    for name, case in report["cases"].items():
        assert not case.get("errors"), (name, case.get("errors"))
        if name == "memory_1m":
            assert case["skipped"]  # --tiny never runs the 1M case
        elif name == "restore":  # once per changelog size, each found the latest state (or it is an error)
            assert sorted(run["partitions"] for run in case["runs"]) == [6, 24]
            assert all(run["commits_per_partition"] > 0 for run in case["runs"])
        else:
            assert len(case["runs"]) == 1, name
    assert {t["status"] for t in report["targets"]} <= {"PASS", "MISS", "n/a"}
    assert len(report["targets"]) >= 8
    assert "target" in result.stdout and "limit_produce" in result.stdout
