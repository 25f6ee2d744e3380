"""The embedding cache: vectors by file content and model, saved batch by batch.

Embedding is the slow stage, so its results are kept as they are made: every
finished batch becomes one small ``.npz`` chunk, written atomically under a
unique name. A killed run loses at most the batch in flight, parallel shards
can write into one cache at once, and a renamed, moved or copied photo is found
again by its content hash. A (path, size, modification time) index lets a
rerun skip reading unchanged files at all, as git does.

Layout: ``<cache>/<model name>-<model key>/chunk-*.npz``; the key covers the
model's bytes and its preprocessing, so another model never sees these vectors.

Age: a chunk's records were last used when it was written, unless a later
``used-*.npy`` file (the content hashes an embed run found in the cache,
written once per run) or the ``used_ns`` column of a merged chunk says
later. ``prune`` drops the records least recently used, for
``gridtsne cache prune`` and the service's retention.

Sharing: adding a chunk needs no lock (a new file under a unique name). Loading
holds a shared ``flock`` on ``.lock`` in that folder and compacting an
exclusive one, so no chunk is merged away while a process reads the folder; and
a compaction or a prune removes only the chunks whose records it holds, never
one that another process wrote after it looked. A chunk that cannot be read (cut short,
damaged, not ours) counts as missing: its vectors are computed again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from gridtsne.workdir import StageError, atomic_write, open_lock_file

ENV_VAR = "GRIDTSNE_CACHE"
#: Merge chunks into one file after a complete run once there are more than this.
COMPACT_ABOVE = 16


@dataclass(frozen=True)
class Record:
    """One embedded file: where it was, what it was, what the model made of it."""

    path: str
    bytes: int
    mtime_ns: int
    sha256: str
    width: int
    height: int
    vector: np.ndarray


class EmbeddingCache:
    """Embeddings of one model, looked up by content hash or by unchanged file stat."""

    def __init__(self, root: str | os.PathLike, model_key: str):
        self.folder = Path(root) / model_key
        self.by_sha: dict[str, Record] = {}
        self.by_stat: dict[tuple[str, int, int], str] = {}
        # The chunks whose records are all in memory: the only ones compact() may remove.
        self.known_chunks: set[Path] = set()
        # The used-*.npy files read: a compaction folds them into its chunk's used_ns.
        self.known_logs: set[Path] = set()
        self.last_used: dict[str, int] = {}  # content hash -> nanoseconds since the epoch
        self.dimension: int | None = None  # of the vectors; a chunk of another length is not ours
        self._load()

    def __len__(self) -> int:
        return len(self.by_sha)

    def _chunks(self) -> list[Path]:
        return sorted(self.folder.glob("*.npz")) if self.folder.is_dir() else []

    def _logs(self) -> list[Path]:
        return sorted(self.folder.glob("used-*.npy")) if self.folder.is_dir() else []

    @contextlib.contextmanager
    def _locked(self, operation: int) -> Iterator[bool]:
        """Hold ``flock(operation)`` on the cache's lock file; yields whether it is held.

        Not held when the folder is missing or read-only, its lock file is a link,
        or (with LOCK_NB) another process holds it.
        """
        if not self.folder.is_dir():
            yield False
            return
        try:
            fd = open_lock_file(self.folder / ".lock")
        except StageError:
            yield False
            return
        try:
            try:
                fcntl.flock(fd, operation)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def _load(self) -> None:
        # Without the lock (a read-only cache) a chunk may be merged away meanwhile.
        with self._locked(fcntl.LOCK_SH):
            self._read_all()

    def _read_all(self) -> None:
        self.by_sha, self.by_stat, self.last_used = {}, {}, {}
        self.known_chunks, self.known_logs, self.dimension = set(), set(), None
        for chunk in self._chunks():
            columns = _read_chunk(chunk)
            if columns is None or self.dimension not in (None, columns["vectors"].shape[1]):
                continue  # merged away by another process, or unreadable: recomputed if needed
            self.dimension = columns["vectors"].shape[1]
            used = columns.get("used_ns")
            for i, sha in enumerate(columns["sha256"].tolist()):
                self._used(sha, int(used[i]) if used is not None else columns["written_ns"])
                record = Record(
                    str(columns["path"][i]),
                    int(columns["bytes"][i]),
                    int(columns["mtime_ns"][i]),
                    sha,
                    int(columns["size"][i][0]),
                    int(columns["size"][i][1]),
                    columns["vectors"][i],
                )
                self._remember(record)
            self.known_chunks.add(chunk)
        for log in self._logs():
            try:
                when = log.stat().st_mtime_ns
                digests = np.load(log, allow_pickle=False)
            except Exception:  # cut short or removed meanwhile: an age lost, no vector
                continue
            if digests.dtype == np.uint8 and digests.ndim == 2 and digests.shape[1] == 32:
                for digest in digests:
                    self._used(digest.tobytes().hex(), when)
                self.known_logs.add(log)

    def _used(self, sha: str, when: int) -> None:
        if when > self.last_used.get(sha, -1):
            self.last_used[sha] = when

    def _remember(self, record: Record) -> None:
        self.by_sha.setdefault(record.sha256, record)
        self.by_stat[(record.path, record.bytes, record.mtime_ns)] = record.sha256

    def sha_of_unchanged(self, path: str, size: int, mtime_ns: int) -> str | None:
        """The content hash of a file seen before with this size and time, if cached."""
        sha = self.by_stat.get((path, size, mtime_ns))
        return sha if sha in self.by_sha else None

    def note_used(self, shas: list[str]) -> None:
        """Record that a run used these cached vectors, so a prune by age keeps them.

        Best effort: a read-only or full cache keeps its old ages."""
        if not shas or not self.folder.is_dir():
            return
        digests = np.frombuffer(b"".join(bytes.fromhex(sha) for sha in shas), dtype=np.uint8).reshape(-1, 32)
        log = self.folder / f"used-{uuid.uuid4().hex}.npy"
        with contextlib.suppress(OSError):
            atomic_write(log, lambda handle: np.save(handle, digests))
            now = log.stat().st_mtime_ns
            for sha in shas:
                self._used(sha, now)
            self.known_logs.add(log)

    def add(self, records: list[Record]) -> None:
        """Save a batch of records as one new chunk, then remember them."""
        if not records:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        chunk = self.folder / f"chunk-{uuid.uuid4().hex}.npz"
        _write_chunk(chunk, records)
        now = time.time_ns()
        for record in records:
            self._remember(record)
            self._used(record.sha256, now)
        self.known_chunks.add(chunk)

    def compact(self) -> None:
        """Merge the many small chunks this process read or wrote into one, so that loading stays quick.

        Best effort: skipped while another process reads or compacts the cache,
        or when it cannot be written (every vector is saved already).
        """
        if len(self.known_chunks) + len(self.known_logs) <= COMPACT_ABOVE:
            return
        with self._locked(fcntl.LOCK_EX | fcntl.LOCK_NB) as locked:
            if locked:
                self._rewrite(set(self.by_sha))

    def _rewrite(self, keep: set[str]) -> None:
        """Replace the chunks and logs this process read or wrote by one chunk of the records
        whose hash is in ``keep``, their ages included. Call with the exclusive lock held."""
        # Every record's own stat is in by_stat, so one record per stat keeps everything.
        records = [
            replace(self.by_sha[sha], path=path, bytes=size, mtime_ns=mtime_ns)
            for (path, size, mtime_ns), sha in self.by_stat.items()
            if sha in keep and sha in self.by_sha
        ]
        merged = self.folder / f"merged-{uuid.uuid4().hex}.npz"
        if records:
            try:
                _write_chunk(merged, records, [self.last_used.get(r.sha256, 0) for r in records])
            except OSError:
                return
        for old in self.known_chunks | self.known_logs:
            with contextlib.suppress(OSError):
                old.unlink(missing_ok=True)
        self.known_chunks, self.known_logs = ({merged} if records else set()), set()
        self.by_sha = {sha: record for sha, record in self.by_sha.items() if sha in keep}
        self.by_stat = {stat: sha for stat, sha in self.by_stat.items() if sha in keep}
        self.last_used = {sha: when for sha, when in self.last_used.items() if sha in keep}

    def disk_bytes(self) -> int:
        """What the cache's files take on disk."""
        return sum(_file_bytes(path) for path in self._chunks() + self._logs())

    def prune(self, older_than_seconds: float | None = None, max_bytes: int | None = None) -> dict:
        """Drop the vectors not used for ``older_than_seconds``, then the least recently used
        until the cache takes at most ``max_bytes``; what was removed and kept.

        Safe while other runs embed into the same cache: it waits for the exclusive lock,
        reads the cache afresh under it, and removes only the files it read, so a chunk
        written meanwhile is kept whole. A vector pruned from under a running embed is
        still in that run's memory and its work directory; a later run computes it again."""
        before_bytes = self.disk_bytes()
        with self._locked(fcntl.LOCK_EX) as locked:
            if not locked:
                raise StageError(f"cannot lock {self.folder / '.lock'} to prune the cache: is it read-only?")
            self._read_all()  # afresh, under the lock
            ranked = sorted(self.by_sha, key=lambda sha: self.last_used.get(sha, 0), reverse=True)
            if older_than_seconds is not None:
                cutoff = time.time_ns() - int(older_than_seconds * 1e9)
                ranked = [sha for sha in ranked if self.last_used.get(sha, 0) >= cutoff]
            if max_bytes is not None and ranked:
                per_vector = max(1, before_bytes // max(1, len(self.by_sha)))
                ranked = ranked[: max(0, max_bytes // per_vector)]
            before = len(self.by_sha)
            if len(ranked) < before or len(self.known_chunks) + len(self.known_logs) > 1:
                self._rewrite(set(ranked))
        after_bytes = self.disk_bytes()
        return {"folder": str(self.folder), "removed": before - len(self.by_sha), "kept": len(self.by_sha),
                "freed_bytes": max(0, before_bytes - after_bytes), "bytes": after_bytes}  # fmt: skip


#: The columns of a chunk, all of one length: row i is one record.
COLUMNS = ("sha256", "path", "bytes", "mtime_ns", "size", "vectors")


def _file_bytes(path: Path) -> int:
    """Bytes a file takes on disk (its blocks), 0 when gone."""
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


def _read_chunk(path: Path) -> dict | None:
    """The columns of one chunk (with ``used_ns`` when it has them, and ``written_ns``, its
    file's time), or None when it is gone or not a whole, well-formed chunk."""
    try:
        written_ns = path.stat().st_mtime_ns
        with np.load(path, allow_pickle=False) as data:
            columns = {name: data[name] for name in COLUMNS}
            if "used_ns" in data.files:
                columns["used_ns"] = data["used_ns"]
    except Exception:  # cut short, damaged, merged away meanwhile: any of zipfile's, numpy's, the OS's errors
        return None
    if any(column.ndim == 0 for column in columns.values()):
        return None
    rows = len(columns["sha256"])
    well_formed = (
        all(len(column) == rows for column in columns.values())
        and columns["sha256"].dtype.kind == "U"
        and columns["path"].dtype.kind == "U"
        and columns["bytes"].dtype.kind in "iu"
        and columns["mtime_ns"].dtype.kind in "iu"
        and columns["size"].shape == (rows, 2)
        and columns["size"].dtype.kind in "iu"
        and columns["vectors"].ndim == 2
        and columns["vectors"].dtype.kind == "f"
        and bool(np.isfinite(columns["vectors"]).all())
        and ("used_ns" not in columns or columns["used_ns"].shape == (rows,))
    )
    return {**columns, "written_ns": written_ns} if well_formed else None


def _write_chunk(path: Path, records: list[Record], used_ns: list[int] | None = None) -> None:
    columns = {
        "sha256": np.array([r.sha256 for r in records]),
        "path": np.array([r.path for r in records]),
        "bytes": np.array([r.bytes for r in records], dtype=np.int64),
        "mtime_ns": np.array([r.mtime_ns for r in records], dtype=np.int64),
        "size": np.array([(r.width, r.height) for r in records], dtype=np.int32).reshape(-1, 2),
        "vectors": np.stack([r.vector for r in records]).astype(np.float32),
    }
    if used_ns is not None:
        columns["used_ns"] = np.array(used_ns, dtype=np.int64)
    atomic_write(path, lambda handle: np.savez(handle, **columns))


# The caches of a work directory, for `gridtsne cache` and the service's retention.

#: Units of --older-than, in seconds.
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: Units of --max-size, in bytes (decimal, as disks are sold and `df -H` shows them).
SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
              "t": 10**12, "tb": 10**12}  # fmt: skip


def parse_age(text: str) -> float:
    """Seconds in an age such as ``30d``, ``12h``, ``90m``, ``2w`` or ``45s``."""
    from gridtsne.errors import OptionError

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if not match:
        raise OptionError(
            "older_than", f"{text!r} is not an age: write a number and a unit, e.g. 30d, 12h, 90m"
        )
    return float(match[1]) * AGE_UNITS[match[2]]


def parse_size(text: str) -> int:
    """Bytes in a size such as ``5G``, ``500MB`` or ``0``."""
    from gridtsne.errors import OptionError

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?b?)\s*", text.lower())
    if not match:
        raise OptionError("max_size", f"{text!r} is not a size: write a number and a unit, e.g. 5G, 500M")
    return int(float(match[1]) * SIZE_UNITS[match[2]])


def model_caches(root: Path) -> list[EmbeddingCache]:
    """The embedding cache of each model found under ``root`` (one folder per model)."""
    root = Path(root)
    if not root.is_dir():
        return []
    folders = sorted(
        p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
    )
    return [EmbeddingCache(root, folder.name) for folder in folders]


def usage(root: Path) -> list[dict]:
    """Per model: vectors held, bytes on disk, and the oldest and newest use (seconds since the epoch)."""
    rows = []
    for cache in model_caches(root):
        used = list(cache.last_used.values())
        rows.append({
            "folder": str(cache.folder), "vectors": len(cache), "bytes": cache.disk_bytes(),
            "oldest_use": min(used) / 1e9 if used else None, "newest_use": max(used) / 1e9 if used else None,
        })  # fmt: skip
    return rows


def prune(root: Path, older_than_seconds: float | None = None, max_bytes: int | None = None) -> list[dict]:
    """Prune every model's cache under ``root``; ``max_bytes`` bounds them together, the most
    recently used model first (an old model's vectors go before a current one's)."""
    caches = sorted(model_caches(root), key=lambda c: max(c.last_used.values(), default=0), reverse=True)
    reports, budget = [], max_bytes
    for cache in caches:
        report = cache.prune(older_than_seconds, budget)
        if budget is not None:
            budget = max(0, budget - report["bytes"])
        reports.append(report)
    return reports
