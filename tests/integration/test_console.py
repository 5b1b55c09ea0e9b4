"""dlq_console.py over HTTP against the real broker: paging by offset, seeking by time, the token,
--read-only, and the operator mistakes that must end in one sentence."""

from __future__ import annotations

import json
import socket
import urllib.request
from datetime import UTC, datetime

import pytest
from conftest import Pipeline

from tests.integration.console_support import encoded, our_dead_letter, start_console, write_dlq

pytestmark = pytest.mark.integration


def test_paging_by_offset_returns_every_dead_letter_once_in_order(pipeline: Pipeline):
    partitions = pipeline.partitions
    letters = [encoded(our_dead_letter(pipeline.topic, i % 2, i, f"reason {i % 3}: x", "Toffee"), i % partitions)
               for i in range(90)]
    write_dlq(pipeline.bootstrap, pipeline.dlq_topic, letters)
    console = start_console(pipeline.scripts)
    try:
        seen, cursor, pages = [], {}, 0
        while True:
            status, page = console.request("/api/list?size=25" + "".join(f"&{k}={v}" for k, v in cursor.items()))
            assert status == 200, page
            pages += 1
            seen += [(row["partition"], row["offset"]) for row in page["rows"]]
            if page["next"] is None:
                break
            cursor = page["next"]
        expected = sorted((p, o) for p in range(partitions) for o in range(30))
        assert seen == expected
        assert pages == 4
        status, page = console.request("/api/list?status=all&reason=reason%202&size=500")
        assert status == 200 and len(page["rows"]) == 30
        assert all(row["reason"] == "reason 2: x" for row in page["rows"])
        # A cursor in the middle of partition 1 starts there.
        status, page = console.request("/api/list?partition=1&offset=28&size=10")
        assert [(row["partition"], row["offset"]) for row in page["rows"]] == [(1, 28), (1, 29), (2, 0)] + \
            [(2, o) for o in range(1, 8)]
    finally:
        console.stop()


def test_since_seeks_by_time_and_a_bad_filter_is_one_sentence(pipeline: Pipeline):
    old = our_dead_letter(pipeline.topic, 0, 1, "old: x", "Toffee")
    old.error_timestamp = "2020-01-01T00:00:00+00:00"
    write_dlq(pipeline.bootstrap, pipeline.dlq_topic, [encoded(old, 0)])
    boundary = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    write_dlq(pipeline.bootstrap, pipeline.dlq_topic,
              [encoded(our_dead_letter(pipeline.topic, 0, 2, "new: x", "Fudge"), 0)])
    console = start_console(pipeline.scripts)
    try:
        status, page = console.request(f"/api/list?since={boundary}")
        assert status == 200
        assert [row["reason"] for row in page["rows"]] == ["new: x"]
        status, body = console.request("/api/list?since=yesterday")
        assert status == 400 and body["error"].startswith("since: 'yesterday' is not an ISO-8601 time")
        status, body = console.request("/api/list?stage=nonsense")
        assert status == 400 and "stage must be one of" in body["error"]
    finally:
        console.stop()


def test_wrong_token_gets_403_and_read_only_changes_nothing(pipeline: Pipeline):
    write_dlq(pipeline.bootstrap, pipeline.dlq_topic,
              [encoded(our_dead_letter(pipeline.topic, 0, 7, "unknown product: 'X'", "X"), 0)])
    console = start_console(pipeline.scripts, "--read-only")
    try:
        status, body = console.request("/api/overview", token="an-old-token")
        assert status == 403 and body["error"].startswith("This console needs the access token")
        status, body = console.request("/api/replay", {"partition": 0, "offset": 0, "dry_run": False},
                                       headers={"X-Requested-By": "dlq-console"})
        assert status == 403 and "--read-only" in body["error"]
        status, body = console.request("/api/resolve", {"partition": 0, "offset": 0},
                                       headers={"X-Requested-By": "dlq-console"})
        assert status == 403
        assert pipeline.read(pipeline.topic) == []
        assert pipeline.read(f"{pipeline.dlq_topic}.status") == []
        status, overview = console.request("/api/overview")
        assert status == 200 and overview["read_only"] is True
    finally:
        console.stop()


def test_unreachable_broker_and_busy_port_end_in_one_sentence(pipeline: Pipeline):
    result = pipeline.scripts.run("dlq_console.py", "-b", "127.0.0.1:1", expect=1)
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: cannot reach Kafka at 127.0.0.1:1")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = pipeline.scripts.run("dlq_console.py", "--port", port, expect=1)
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr
    for port in ("-1", "70000"):
        result = pipeline.scripts.run("dlq_console.py", "--port", port, expect=2)
        assert result.stderr.startswith("error: argument --port: invalid port value")


def test_find_by_order_id_and_export_in_the_cli_format(pipeline: Pipeline):
    letters = [our_dead_letter(pipeline.topic, 0, i, "unknown product: 'X'", "X") for i in range(5)]
    write_dlq(pipeline.bootstrap, pipeline.dlq_topic, [encoded(letter, 0) for letter in letters]
              + [(0, b"junk", b"\xff\x00", [])])
    console = start_console(pipeline.scripts)
    try:
        status, page = console.request(f"/api/list?order_id={letters[3].order_id}")
        assert status == 200 and [row["offset"] for row in page["rows"]] == [3]
        request = urllib.request.Request(f"{console.base}/api/export?status=all&grep=unknown",
                                         headers={"Cookie": f"dlq_console_token={console.token}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            lines = [json.loads(line) for line in response.read().splitlines()]
        assert [line["dlq_offset"] for line in lines] == [0, 1, 2, 3, 4]
        assert [line["order"]["order_id"] for line in lines] == [letter.order_id for letter in letters]
        assert {line["status"] for line in lines} == {"open"}
        # The CLI reads the console's export back: a check of every line, nothing sent.
        path = pipeline.scripts.cwd / "export.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        result = pipeline.scripts.run("dlq_replay.py", "--from-file", path, "--products", "X", "--dry-run")
        assert "would replay 5" in result.stdout
    finally:
        console.stop()


def test_a_registry_framed_original_is_shown_as_its_order(pipeline: Pipeline):
    letter = our_dead_letter(pipeline.topic, 0, 3, "not a valid Avro order record: framed", "Toffee")
    order_id = letter.order_id
    letter.error_stage, letter.order_id, letter.product, letter.price = "deserialize", None, None, None
    letter.original_value = b"\x00" + (7).to_bytes(4, "big") + letter.original_value  # Confluent wire format
    write_dlq(pipeline.bootstrap, pipeline.dlq_topic, [encoded(letter, 0)])
    console = start_console(pipeline.scripts)
    try:
        status, detail = console.request("/api/letter/0/0")
        assert status == 200, detail
        assert detail["order"]["order_id"] == order_id and detail["order"]["product"] == "Toffee"
        assert detail["hex"][0].startswith("00000000  00 00 00 00 07")
        status, page = console.request("/api/list")
        assert [row["order_id"] for row in page["rows"]] == [order_id]
    finally:
        console.stop()
