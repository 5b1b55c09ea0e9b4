"""A durable local spool (SQLite) for dead letters that Kafka could not take, drained exactly once.

Why: "stop Kafka and the orders go to the DLQ" cannot work naively, because the DLQ lives on
the same cluster. A dead letter that cannot be delivered is committed to this file first, and
the order is only reported as handled after that commit.

Draining without duplicates: every spooled message carries a unique `dlq.spool.id` header.
Before a drain sends a row it stamps the row with the time (`sending_since`). If a drain dies
after Kafka took a row but before the row was deleted, the next drain finds rows with a stamp,
reads the DLQ from that time on, and deletes the rows whose ids are already there instead of
sending them again.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SPOOL_ID_HEADER = "dlq.spool.id"
DEFAULT_SPOOL_PATH = "dlq-spool.sqlite3"


@dataclass
class SpooledMessage:
    row_id: int
    spool_id: str
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes | None]]
    sending_since: float | None

    def kafka_headers(self) -> list[tuple[str, bytes | None]]:
        return self.headers + [(SPOOL_ID_HEADER, self.spool_id.encode())]


class Spool:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we write explicit transactions; FULL sync makes a commit survive power loss.
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS dead_letters ("
            " row_id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " spool_id TEXT NOT NULL UNIQUE,"
            " topic TEXT NOT NULL,"
            " key BLOB, value BLOB NOT NULL, headers TEXT NOT NULL,"
            " spooled_at REAL NOT NULL,"
            " sending_since REAL)"
        )

    def add(self, topic: str, key: bytes | None, value: bytes, headers: list) -> str:
        """Commit one message durably; returns its spool id."""
        spool_id = str(uuid.uuid4())
        encoded_headers = json.dumps([[k, None if v is None else v.hex()] for k, v in headers])
        self.db.execute(
            "INSERT INTO dead_letters (spool_id, topic, key, value, headers, spooled_at) VALUES (?,?,?,?,?,?)",
            (spool_id, topic, key, value, encoded_headers, time.time()),
        )
        return spool_id

    def pending(self, limit: int | None = None) -> list[SpooledMessage]:
        sql = "SELECT row_id, spool_id, topic, key, value, headers, sending_since FROM dead_letters ORDER BY row_id"
        rows = self.db.execute(sql + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
        return [SpooledMessage(row_id, spool_id, topic, key, value,
                               [(k, None if v is None else bytes.fromhex(v)) for k, v in json.loads(headers)],
                               sending_since)
                for row_id, spool_id, topic, key, value, headers, sending_since in rows]

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]

    def mark_sending(self, row_ids: list[int]) -> None:
        self._update_many("UPDATE dead_letters SET sending_since = COALESCE(sending_since, ?) WHERE row_id = ?",
                          [(time.time(), row_id) for row_id in row_ids])

    def delete(self, row_ids: list[int]) -> None:
        self._update_many("DELETE FROM dead_letters WHERE row_id = ?", [(row_id,) for row_id in row_ids])

    def _update_many(self, sql: str, params: list[tuple]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany(sql, params)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def drain_lock(self):
        """An exclusive lock so two tools never drain the same spool at once."""
        return _FileLock(self.path.with_name(self.path.name + ".lock"))

    def close(self) -> None:
        self.db.close()


class _FileLock:
    def __init__(self, path: Path):
        self.path = path
        self.handle = None

    def __enter__(self):
        self.handle = open(self.path, "w")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
