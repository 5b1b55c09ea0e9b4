"""The SQLite dead-letter spool: order, exact bytes, durability across a killed process, the drain lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from orders_dlq import spool as spool_module
from orders_dlq.spool import SPOOL_ID_HEADER, Spool

ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 20


@pytest.fixture
def spool(tmp_path):
    spool = Spool(tmp_path / "nested" / "spool.sqlite3")
    yield spool
    spool.close()


def run_child(code: str, *args, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT, **kwargs)


def test_new_spool_is_empty_and_creates_parent_directories(tmp_path, spool):
    assert spool.path == tmp_path / "nested" / "spool.sqlite3"
    assert spool.path.exists()
    assert spool.count() == 0
    assert spool.pending() == []


def test_add_then_pending_in_insertion_order_with_exact_bytes(spool):
    first = spool.add("orders.DLQ", b"\x00\xffkey", b"\x00\xff\x00value",
                      [("a", b"\x00\xff"), ("none", None), ("empty", b""), ("a", b"dup")])
    second = spool.add("other.DLQ", None, b"", [])
    third = spool.add("orders.DLQ", b"k3", b"v3", [("x", b"y")])
    assert len({first, second, third}) == 3
    assert str(uuid.UUID(first)) == first
    rows = spool.pending()
    assert [row.spool_id for row in rows] == [first, second, third]
    assert [row.row_id for row in rows] == sorted(row.row_id for row in rows)
    one, two, three = rows
    assert (one.topic, one.key, one.value) == ("orders.DLQ", b"\x00\xffkey", b"\x00\xff\x00value")
    assert one.headers == [("a", b"\x00\xff"), ("none", None), ("empty", b""), ("a", b"dup")]
    assert (two.topic, two.key, two.value, two.headers) == ("other.DLQ", None, b"", [])
    assert three.headers == [("x", b"y")]
    assert all(row.sending_since is None for row in rows)
    assert spool.count() == 3


def test_pending_limit(spool):
    ids = [spool.add("t", None, bytes([i]), []) for i in range(5)]
    assert [row.spool_id for row in spool.pending(limit=2)] == ids[:2]
    assert [row.spool_id for row in spool.pending(limit=10)] == ids


def test_kafka_headers_append_the_spool_id(spool):
    spool_id = spool.add("t", None, b"v", [("h", None)])
    (row,) = spool.pending()
    assert row.kafka_headers() == [("h", None), (SPOOL_ID_HEADER, spool_id.encode())]
    assert SPOOL_ID_HEADER == "dlq.spool.id"
    assert row.headers == [("h", None)]  # kafka_headers() does not modify the row


def test_mark_sending_stamps_only_once(spool, monkeypatch):
    spool.add("t", None, b"a", [])
    spool.add("t", None, b"b", [])
    first, second = spool.pending()
    monkeypatch.setattr(spool_module.time, "time", lambda: 1000.0)
    spool.mark_sending([first.row_id])
    monkeypatch.setattr(spool_module.time, "time", lambda: 2000.0)
    spool.mark_sending([first.row_id, second.row_id])
    assert [row.sending_since for row in spool.pending()] == [1000.0, 2000.0]


def test_mark_sending_and_delete_of_nothing_or_unknown_rows(spool):
    spool.add("t", None, b"a", [])
    spool.mark_sending([])
    spool.delete([])
    spool.delete([987654])
    assert spool.count() == 1 and spool.pending()[0].sending_since is None


def test_delete(spool):
    ids = [spool.add("t", None, bytes([i]), []) for i in range(4)]
    rows = spool.pending()
    spool.delete([rows[0].row_id, rows[2].row_id])
    assert [row.spool_id for row in spool.pending()] == [ids[1], ids[3]]
    assert spool.count() == 2


def test_row_ids_are_not_reused_after_delete(spool):
    spool.add("t", None, b"a", [])
    (row,) = spool.pending()
    spool.delete([row.row_id])
    spool.add("t", None, b"b", [])
    assert spool.pending()[0].row_id > row.row_id


def test_data_survives_close_and_reopen(tmp_path):
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path)
    spool_id = spool.add("orders.DLQ", b"k", b"\x00\xff", [("h", None)])
    spool.mark_sending([spool.pending()[0].row_id])
    stamped = spool.pending()[0].sending_since
    spool.close()
    reopened = Spool(path)
    try:
        (row,) = reopened.pending()
        assert (row.spool_id, row.key, row.value, row.headers, row.sending_since) == \
               (spool_id, b"k", b"\x00\xff", [("h", None)], stamped)
    finally:
        reopened.close()


def test_add_is_durable_when_the_process_is_killed_right_after(tmp_path):
    path = tmp_path / "spool.sqlite3"
    result = run_child("""
        import os, signal, sys
        from orders_dlq.spool import Spool
        spool = Spool(sys.argv[1])
        spool_id = spool.add("orders.DLQ", b"key", b"\\x00value\\xff", [("h", b"\\x01"), ("n", None)])
        sys.stdout.write(spool_id + "\\n")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """, path)
    assert result.returncode == -signal.SIGKILL, result.stderr
    spool_id = result.stdout.strip()
    spool = Spool(path)
    try:
        (row,) = spool.pending()
        assert row.spool_id == spool_id
        assert (row.topic, row.key, row.value) == ("orders.DLQ", b"key", b"\x00value\xff")
        assert row.headers == [("h", b"\x01"), ("n", None)]
    finally:
        spool.close()


TRY_LOCK = """
    import sys
    from pathlib import Path
    from orders_dlq.spool import DrainLock, SpoolBusy
    try:
        with DrainLock(Path(sys.argv[1]), wait=0):
            print("acquired")
    except SpoolBusy:
        print("blocked")
"""


def test_drain_lock_file_name(spool):
    lock = spool.drain_lock()
    assert lock.path == spool.path.with_name("spool.sqlite3.lock")


def test_drain_lock_excludes_another_process(spool):
    lock_path = spool.path.with_name(spool.path.name + ".lock")
    with spool.drain_lock():
        assert run_child(TRY_LOCK, lock_path).stdout.strip() == "blocked"
    assert run_child(TRY_LOCK, lock_path).stdout.strip() == "acquired"


def test_drain_lock_held_by_another_process_blocks_us(spool):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys
        from orders_dlq.spool import Spool
        spool = Spool(sys.argv[1])
        with spool.drain_lock():
            print("locked", flush=True)
            sys.stdin.readline()
        print("released", flush=True)
    """), str(spool.path)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(spool_module.SpoolBusy):
            with spool.drain_lock(wait=0.2):
                pass
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "released"
        with spool.drain_lock(wait=0):
            pass  # free now
        assert child.wait(timeout=CHILD_TIMEOUT) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_drain_lock_is_released_on_exception(spool):
    lock_path = spool.path.with_name(spool.path.name + ".lock")
    with pytest.raises(RuntimeError):
        with spool.drain_lock():
            raise RuntimeError("drain failed")
    assert run_child(TRY_LOCK, lock_path).stdout.strip() == "acquired"


def test_no_script_needs_a_posix_only_module(tmp_path):
    """Windows has no fcntl: every script and the spool must import and work without it."""
    result = run_child("""
        import importlib.util, sys
        sys.modules["fcntl"] = None  # an import of fcntl now raises ImportError, as on Windows
        from pathlib import Path
        root = Path.cwd()
        for script in ("producer.py", "consumer_aggregation.py", "dlq_producer.py", "dlq_consumer.py",
                       "dlq_replay.py", "setup_dlq.py"):
            spec = importlib.util.spec_from_file_location(script[:-3], root / script)
            module = sys.modules[script[:-3]] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        from orders_dlq.spool import Spool
        spool = Spool(sys.argv[1])
        spool.add("orders.DLQ", b"k", b"v", [])
        with spool.drain_lock():
            rows = spool.pending()
        spool.delete([row.row_id for row in rows])
        print("ok", spool.count())
    """, tmp_path / "spool.sqlite3", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok 0"


def _open_and_add_after(barrier, path: str, results) -> None:
    barrier.wait(timeout=CHILD_TIMEOUT)
    try:
        spool = Spool(path)
        spool.add("orders.DLQ", None, b"v", [], origin="race")
        spool.close()
        results.put("ok")
    except Exception as exc:  # reported to the test, which shows it
        results.put(f"{type(exc).__name__}: {exc}")


def test_tools_opening_a_new_spool_at_the_same_moment_all_get_it(tmp_path):
    """The consumer and producer.py spool at once when Kafka goes down: a spool file that none of them
    has created yet must open for all of them (a race here once stopped a consumer in CI with
    "duplicate column name")."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    openers, rounds = 6, 8
    for round_number in range(rounds):
        path = str(tmp_path / f"spool-{round_number}.sqlite3")
        barrier, results = context.Barrier(openers), context.Queue()
        children = [context.Process(target=_open_and_add_after, args=(barrier, path, results))
                    for _ in range(openers)]
        for child in children:
            child.start()
        outcomes = [results.get(timeout=CHILD_TIMEOUT) for _ in children]
        for child in children:
            child.join(timeout=CHILD_TIMEOUT)
        assert outcomes == ["ok"] * openers, f"round {round_number}: {outcomes}"
        spool = Spool(path)
        try:
            assert spool.count(origin="race") == openers
        finally:
            spool.close()


def test_a_spool_that_can_no_longer_be_written_is_one_sentence_naming_the_orders(tmp_path):
    """Kafka down and the spool unwritable (a full disk, a file made read-only): the tool stops with
    a sentence that says what was not kept, never a traceback (cli.run prints a ToolFailure)."""
    from decimal import Decimal

    from confluent_kafka import Producer

    from orders_dlq.dead_letter import DeadLetter
    from orders_dlq.dlq import DeadLetterProducer
    from orders_dlq.errors import ToolFailure
    from orders_dlq.settings import KafkaSettings

    spool = Spool(tmp_path / "spool.sqlite3")
    spool.db.execute("PRAGMA query_only = 1")  # every write now fails as on a read-only file
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1", topic="orders", dlq_topic="orders.DLQ")
    producer = Producer({"bootstrap.servers": "127.0.0.1:1"})  # never reached: nothing is sent here
    publisher = DeadLetterProducer(settings, producer=producer, spool=spool)
    letters = [DeadLetter(order_id=f"order-{n}", product="Toffee", price=Decimal("1.00"), error_reason="down",
                          error_type="KafkaError", error_stage="produce", retry_count=3, original_topic="orders",
                          failed_by="producer.py") for n in range(12)]
    with pytest.raises(ToolFailure) as failure:
        publisher.spool_all(letters)
    sentence = str(failure.value)
    assert "12 dead letter(s)" in sentence and str(spool.path) in sentence and "readonly" in sentence
    assert "order-0" in sentence and "order-9" in sentence and "order-10" not in sentence
    spool.db.execute("PRAGMA query_only = 0")
    assert spool.count() == 0
    spool.close()
