"""The job store: each visualization is one row, behind the small ``Queue`` interface.

``SqliteQueue`` (stdlib ``sqlite3`` in WAL mode, one file under --data) is the
embedded default: the server, its dispatcher thread and the worker processes
all open the same file, and a crash loses at most the step in flight. A
broker (Redis, RabbitMQ, a cloud queue) can replace it by implementing the
same methods; nothing else in the service touches SQL.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
UNFINISHED = (QUEUED, RUNNING)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)


class QueueFull(Exception):
    """Too many jobs wait already; ``retry_after`` is a guess in seconds."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"{waiting} jobs are waiting already: retry in {retry_after} s")
        self.retry_after = retry_after


class KeyReused(Exception):
    """An Idempotency-Key sent again with another request body."""


@dataclass
class Job:
    id: str
    state: str
    request: dict
    created_at: float
    updated_at: float
    stage: str | None = None
    percent: float = 0.0
    error: str | None = None
    results: dict | None = None
    attempts: int = 0


class Queue(Protocol):
    """What the service needs of a job store. States go queued -> running -> succeeded | failed,
    and queued | running -> cancelled; ``requeue_unfinished`` sends running ones back to queued."""

    def submit(self, request: dict, idempotency_key: str | None, limit: int) -> tuple[Job, bool]:
        """A new queued job, or (with a key seen before) the job it made; True when new."""

    def get(self, job_id: str) -> Job | None: ...

    def page(self, page: int, per_page: int) -> tuple[list[Job], int]:
        """One page of jobs, newest first, and how many there are."""

    def claim(self) -> Job | None:
        """The oldest queued job, now running; None when none waits."""

    def progress(self, job_id: str, stage: str, percent: float) -> None: ...

    def finish(self, job_id: str, state: str, error: str | None = None, results: dict | None = None) -> bool:
        """Record the end of a running job; False when it is no longer running (cancelled)."""

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job; the job as it was before."""

    def delete(self, job_id: str) -> None: ...

    def requeue_unfinished(self) -> int:
        """After a restart: running jobs go back to the queue; how many."""

    def unfinished(self) -> list[Job]:
        """The queued and running jobs: what retention must never touch."""

    def finished(self) -> list[Job]:
        """The finished jobs, the least recently finished first."""

    def expire(self, job_id: str, why: str) -> bool:
        """Forget a finished job, leaving a note of when and why; False when it is not finished."""

    def expired(self, job_id: str) -> dict | None:
        """The note an expired job left: its last state, when it expired and why."""


def request_digest(request: dict) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


class SqliteQueue:
    """The Queue in one SQLite file (WAL), safe to share between threads and processes."""

    def __init__(self, database: Path):
        self.database = Path(database)
        self._local = threading.local()
        self._raw().executescript(
            """
            CREATE TABLE IF NOT EXISTS jobs (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT UNIQUE NOT NULL,
                state TEXT NOT NULL,
                request TEXT NOT NULL,
                digest TEXT NOT NULL,
                idempotency_key TEXT UNIQUE,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                stage TEXT,
                percent REAL NOT NULL DEFAULT 0,
                error TEXT,
                results TEXT,
                attempts INTEGER NOT NULL DEFAULT 0
            );
            CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
            CREATE TABLE IF NOT EXISTS expired (
                id TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                finished_at REAL NOT NULL,
                expired_at REAL NOT NULL,
                why TEXT NOT NULL
            );
            """
        )

    def _raw(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections are not shared between threads)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.database, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def _connection(self, write: bool = True) -> _Transaction:
        return _Transaction(self._raw(), "BEGIN IMMEDIATE" if write else "BEGIN")

    @staticmethod
    def _job(row: sqlite3.Row | None) -> Job | None:
        if row is None:
            return None
        return Job(
            id=row["id"], state=row["state"], request=json.loads(row["request"]),
            created_at=row["created_at"], updated_at=row["updated_at"], stage=row["stage"],
            percent=row["percent"], error=row["error"],
            results=json.loads(row["results"]) if row["results"] else None, attempts=row["attempts"],
        )  # fmt: skip

    def submit(self, request: dict, idempotency_key: str | None, limit: int) -> tuple[Job, bool]:
        digest = request_digest(request)
        # IMMEDIATE: a read that then writes would fail at once ("database is locked", not after
        # the busy timeout) whenever another process wrote in between, as WAL mode works.
        with self._connection() as db:
            if idempotency_key is not None:
                row = db.execute(
                    "SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    if row["digest"] != digest:
                        raise KeyReused(idempotency_key)
                    return self._job(row), False
            waiting = db.execute("SELECT count(*) FROM jobs WHERE state = ?", (QUEUED,)).fetchone()[0]
            if waiting >= limit:
                raise QueueFull(waiting, retry_after=max(5, min(300, 5 * waiting)))
            now = time.time()
            job_id = uuid.uuid4().hex
            db.execute(
                "INSERT INTO jobs (id, state, request, digest, idempotency_key, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, QUEUED, json.dumps(request), digest, idempotency_key, now, now),
            )
            return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()), True

    def get(self, job_id: str) -> Job | None:
        with self._connection(write=False) as db:
            return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def page(self, page: int, per_page: int) -> tuple[list[Job], int]:
        with self._connection() as db:
            total = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
            rows = db.execute(
                "SELECT * FROM jobs ORDER BY seq DESC LIMIT ? OFFSET ?", (per_page, (page - 1) * per_page)
            ).fetchall()
        return [self._job(row) for row in rows], total

    def claim(self) -> Job | None:
        with self._connection() as db:
            row = db.execute(
                "UPDATE jobs SET state = ?, updated_at = ?, attempts = attempts + 1 WHERE seq = "
                "(SELECT seq FROM jobs WHERE state = ? ORDER BY seq LIMIT 1) RETURNING *",
                (RUNNING, time.time(), QUEUED),
            ).fetchone()
            return self._job(row)

    def progress(self, job_id: str, stage: str, percent: float) -> None:
        with self._connection() as db:
            db.execute(
                "UPDATE jobs SET stage = ?, percent = ?, updated_at = ? WHERE id = ? AND state = ?",
                (stage, percent, time.time(), job_id, RUNNING),
            )

    def finish(self, job_id: str, state: str, error: str | None = None, results: dict | None = None) -> bool:
        with self._connection() as db:
            changed = db.execute(
                "UPDATE jobs SET state = ?, error = ?, results = ?, updated_at = ?, "
                "percent = CASE WHEN ? = 'succeeded' THEN 100 ELSE percent END, "
                "stage = CASE WHEN ? = 'succeeded' THEN NULL ELSE stage END "
                "WHERE id = ? AND state = ?",
                (state, error, json.dumps(results) if results is not None else None, time.time(),
                 state, state, job_id, RUNNING),
            ).rowcount  # fmt: skip
        return changed == 1

    def cancel(self, job_id: str) -> Job | None:
        with self._connection() as db:
            before = self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
            if before is not None and before.state in UNFINISHED:
                db.execute(
                    "UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                    (CANCELLED, "cancelled by a DELETE request", time.time(), job_id),
                )
            return before

    def delete(self, job_id: str) -> None:
        with self._connection() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def requeue_unfinished(self) -> int:
        with self._connection() as db:
            return db.execute(
                "UPDATE jobs SET state = ?, updated_at = ? WHERE state = ?", (QUEUED, time.time(), RUNNING)
            ).rowcount

    def unfinished(self) -> list[Job]:
        with self._connection(write=False) as db:
            rows = db.execute("SELECT * FROM jobs WHERE state IN (?, ?) ORDER BY seq", UNFINISHED).fetchall()
        return [self._job(row) for row in rows]

    def finished(self) -> list[Job]:
        with self._connection(write=False) as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE state IN (?, ?, ?) ORDER BY updated_at, seq", FINISHED
            ).fetchall()
        return [self._job(row) for row in rows]

    def expire(self, job_id: str, why: str) -> bool:
        with self._connection() as db:
            row = db.execute(
                "DELETE FROM jobs WHERE id = ? AND state IN (?, ?, ?) RETURNING state, updated_at",
                (job_id, *FINISHED),
            ).fetchone()
            if row is None:
                return False
            db.execute(
                "INSERT OR REPLACE INTO expired (id, state, finished_at, expired_at, why) "
                "VALUES (?, ?, ?, ?, ?)",
                (job_id, row["state"], row["updated_at"], time.time(), why),
            )
            return True

    def expired(self, job_id: str) -> dict | None:
        with self._connection(write=False) as db:
            row = db.execute("SELECT * FROM expired WHERE id = ?", (job_id,)).fetchone()
        return dict(row) if row is not None else None

    def waiting(self) -> int:
        with self._connection(write=False) as db:
            return db.execute("SELECT count(*) FROM jobs WHERE state = ?", (QUEUED,)).fetchone()[0]


class _Transaction:
    """``with`` a connection: one IMMEDIATE transaction, committed or rolled back."""

    def __init__(self, db: sqlite3.Connection, begin: str):
        self.db, self.begin = db, begin

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute(self.begin)
        return self.db

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if kind is not None:
            self.db.execute("ROLLBACK")
            return
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error:  # a full disk: left open, the transaction would hold the lock for good
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
