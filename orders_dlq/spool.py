"""A durable local spool (SQLite) for dead letters that Kafka could not take, drained exactly once.

Why: "stop Kafka and the orders go to the DLQ" cannot work naively, because the DLQ lives on
the same cluster. A dead letter that cannot be delivered is committed to this file first, and
the order is only reported as handled after that commit.

Draining without duplicates: every spooled message carries a unique `dlq.spool.id` header.
Before a drain sends a row it stamps the row with the time (`sending_since`). If a drain dies
after Kafka took a row but before the row was deleted, the next drain finds rows with a stamp,
reads the DLQ from that time on, and deletes the rows whose ids are already there instead of
sending them again.

Each row remembers the cluster it belongs to (the cluster id when it was known, and the bootstrap
servers as given) and is drained only into that cluster. The drain lock is SQLite's own file lock
(an exclusive transaction on a lock file), so the spool works the same on Windows, macOS and Linux.
"""

from __future__ import annotations

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
    cluster_id: str | None = None
    bootstrap: str | None = None
    spooled_at: float | None = None

    def kafka_headers(self) -> list[tuple[str, bytes | None]]:
        return self.headers + [(SPOOL_ID_HEADER, self.spool_id.encode())]


# Columns added after the first release; an older spool file gets them on open (NULL = unknown).
_LATER_COLUMNS = {"cluster_id": "TEXT", "bootstrap": "TEXT", "origin": "TEXT"}
_SELECT = ("SELECT row_id, spool_id, topic, key, value, headers, sending_since, cluster_id, bootstrap, spooled_at "
           "FROM dead_letters")


class SpoolBusy(Exception):
    """Another process holds the drain lock."""


def _use_write_ahead_log(db: sqlite3.Connection, patience: float) -> None:
    """WAL lets readers (pending, count) work beside a writer. Switching a new file to WAL needs a
    moment of exclusive access and SQLite answers "database is locked" at once instead of waiting
    for it, so tools opening a new spool together retry here until `patience` runs out."""
    deadline = time.monotonic() + patience
    pause = 0.001
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            # SQLITE_BUSY is "database is locked"; its extended codes (busy recovery, snapshot) too.
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


class Spool:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we write explicit transactions; FULL sync makes a commit survive power loss.
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        _use_write_ahead_log(self.db, patience=30)
        self.db.execute("PRAGMA synchronous=FULL")
        # Two tools may open a new spool at the same moment: every tool that writes dead letters
        # opens it at start (the consumer and producer.py started together, say). The check for
        # missing columns and the ALTERs must be one write transaction, or both see a column missing
        # and the second ALTER fails ("duplicate column").
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS dead_letters ("
                " row_id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " spool_id TEXT NOT NULL UNIQUE,"
                " topic TEXT NOT NULL,"
                " key BLOB, value BLOB NOT NULL, headers TEXT NOT NULL,"
                " spooled_at REAL NOT NULL,"
                " sending_since REAL)"
            )
            present = {row[1] for row in self.db.execute("PRAGMA table_info(dead_letters)")}
            for name, kind in _LATER_COLUMNS.items():
                if name not in present:
                    self.db.execute(f"ALTER TABLE dead_letters ADD COLUMN {name} {kind}")
            self.db.execute("COMMIT")
        except BaseException:
            self._roll_back()
            raise

    def add(self, topic: str, key: bytes | None, value: bytes, headers: list, *, cluster_id: str | None = None,
            bootstrap: str | None = None, origin: str | None = None) -> str:
        """Commit one message durably; returns its spool id."""
        return self.add_many([(topic, key, value, headers)], cluster_id=cluster_id, bootstrap=bootstrap,
                             origin=origin)[0]

    def add_many(self, messages: list[tuple], *, cluster_id: str | None = None, bootstrap: str | None = None,
                 origin: str | None = None) -> list[str]:
        """Commit (topic, key, value, headers) messages durably in one transaction; returns their spool ids."""
        now = time.time()
        rows = []
        for topic, key, value, headers in messages:
            encoded_headers = json.dumps([[k, None if v is None else v.hex()] for k, v in headers])
            rows.append((str(uuid.uuid4()), topic, key, value, encoded_headers, now, cluster_id, bootstrap, origin))
        self._update_many("INSERT INTO dead_letters (spool_id, topic, key, value, headers, spooled_at, cluster_id, "
                          "bootstrap, origin) VALUES (?,?,?,?,?,?,?,?,?)", rows)
        return [row[0] for row in rows]

    def pending(self, limit: int | None = None, cluster_id: str | None = None,
                bootstrap: str | None = None) -> list[SpooledMessage]:
        """Rows in spool order; with cluster_id, only those of that cluster (a row whose cluster was not
        known when it was spooled belongs to the cluster named by the same bootstrap servers)."""
        sql, params = _SELECT, []
        if cluster_id is not None:
            sql += " WHERE cluster_id = ? OR (cluster_id IS NULL AND (bootstrap IS NULL OR bootstrap = ?))"
            params = [cluster_id, bootstrap]
        sql += " ORDER BY row_id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [SpooledMessage(row_id, spool_id, topic, key, value,
                               [(k, None if v is None else bytes.fromhex(v)) for k, v in json.loads(headers)],
                               sending_since, cluster, servers, spooled_at)
                for row_id, spool_id, topic, key, value, headers, sending_since, cluster, servers, spooled_at
                in self.db.execute(sql, params)]

    def count(self, origin: str | None = None) -> int:
        if origin is not None:
            return self.db.execute("SELECT COUNT(*) FROM dead_letters WHERE origin = ?", (origin,)).fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]

    def summary(self) -> list[dict]:
        """What waits, per cluster and topic: count and the oldest and newest spool times."""
        rows = self.db.execute(
            "SELECT cluster_id, bootstrap, topic, COUNT(*), MIN(spooled_at), MAX(spooled_at) FROM dead_letters "
            "GROUP BY cluster_id, bootstrap, topic ORDER BY MIN(row_id)").fetchall()
        return [{"cluster_id": cluster, "bootstrap": servers, "topic": topic, "count": count,
                 "oldest": oldest, "newest": newest}
                for cluster, servers, topic, count, oldest, newest in rows]

    def discard(self, topic: str | None = None, cluster: str | None = None,
                older_than: float | None = None) -> int:
        """Delete rows on purpose: those matching every given condition (all rows when none is given).
        `cluster` matches the cluster id or the bootstrap servers; `older_than` is in seconds."""
        conditions, params = [], []
        if topic is not None:
            conditions.append("topic = ?")
            params.append(topic)
        if cluster is not None:
            conditions.append("(cluster_id = ? OR bootstrap = ?)")
            params += [cluster, cluster]
        if older_than is not None:
            conditions.append("spooled_at < ?")
            params.append(time.time() - older_than)
        where = " WHERE " + " AND ".join(conditions) if conditions else ""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            deleted = self.db.execute("DELETE FROM dead_letters" + where, params).rowcount
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return deleted

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
            self._roll_back()
            raise

    def _roll_back(self) -> None:
        """Undo the open transaction, if SQLite has not already: after some errors (a full disk, an
        I/O error) it rolls back by itself, and a ROLLBACK then fails with "no transaction is
        active", which must not replace the error that says what went wrong."""
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the error being raised is the one that matters

    def drain_lock(self, wait: float = 3600.0) -> DrainLock:
        """An exclusive lock so two tools never drain the same spool at once."""
        return DrainLock(self.path.with_name(self.path.name + ".lock"), wait)

    def close(self) -> None:
        self.db.close()


class DrainLock:
    """An exclusive SQLite transaction on a lock file of its own: portable, and released by the
    operating system when the process dies, like a file lock."""

    def __init__(self, path: Path, wait: float = 3600.0):
        self.path = path
        self.wait = wait
        self.db: sqlite3.Connection | None = None

    def __enter__(self) -> DrainLock:
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=self.wait)
        try:
            self.db.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError as exc:
            self.db.close()
            raise SpoolBusy(f"the spool {self.path.name[:-5]} is being drained by another process ({exc})") from None
        return self

    def __exit__(self, *exc) -> None:
        self.db.execute("ROLLBACK")
        self.db.close()
