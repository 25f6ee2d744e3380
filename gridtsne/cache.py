"""The embedding cache: vectors by file content and model, saved batch by batch.

Embedding is the slow stage, so its results are kept as they are made: every
finished batch becomes one small ``.npz`` chunk, written atomically under a
unique name. A killed run loses at most the batch in flight, parallel shards
can write into one cache at once, and a renamed, moved or copied photo is found
again by its content hash. A (path, size, modification time) index lets a
rerun skip reading unchanged files at all, as git does.

Layout: ``<cache>/<model name>-<model key>/chunk-*.npz``; the key covers the
model's bytes and its preprocessing, so another model never sees these vectors.

Sharing: adding a chunk needs no lock (a new file under a unique name). Loading
holds a shared ``flock`` on ``.lock`` in that folder and compacting an
exclusive one, so no chunk is merged away while a process reads the folder; and
a compaction removes only the chunks whose records it holds, never one that
another process wrote after it looked. A chunk that cannot be read (cut short,
damaged, not ours) counts as missing: its vectors are computed again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
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
        self.dimension: int | None = None  # of the vectors; a chunk of another length is not ours
        self._load()

    def __len__(self) -> int:
        return len(self.by_sha)

    def _chunks(self) -> list[Path]:
        return sorted(self.folder.glob("*.npz")) if self.folder.is_dir() else []

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
            for chunk in self._chunks():
                columns = _read_chunk(chunk)
                if columns is None or self.dimension not in (None, columns["vectors"].shape[1]):
                    continue  # merged away by another process, or unreadable: recomputed if needed
                self.dimension = columns["vectors"].shape[1]
                for i, sha in enumerate(columns["sha256"].tolist()):
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

    def _remember(self, record: Record) -> None:
        self.by_sha.setdefault(record.sha256, record)
        self.by_stat[(record.path, record.bytes, record.mtime_ns)] = record.sha256

    def sha_of_unchanged(self, path: str, size: int, mtime_ns: int) -> str | None:
        """The content hash of a file seen before with this size and time, if cached."""
        sha = self.by_stat.get((path, size, mtime_ns))
        return sha if sha in self.by_sha else None

    def add(self, records: list[Record]) -> None:
        """Save a batch of records as one new chunk, then remember them."""
        if not records:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        chunk = self.folder / f"chunk-{uuid.uuid4().hex}.npz"
        _write_chunk(chunk, records)
        for record in records:
            self._remember(record)
        self.known_chunks.add(chunk)

    def compact(self) -> None:
        """Merge the many small chunks this process read or wrote into one, so that loading stays quick.

        Best effort: skipped while another process reads or compacts the cache,
        or when it cannot be written (every vector is saved already).
        """
        if len(self.known_chunks) <= COMPACT_ABOVE:
            return
        with self._locked(fcntl.LOCK_EX | fcntl.LOCK_NB) as locked:
            if not locked:
                return
            # Every record's own stat is in by_stat, so one record per stat keeps everything.
            records = [
                replace(self.by_sha[sha], path=path, bytes=size, mtime_ns=mtime_ns)
                for (path, size, mtime_ns), sha in self.by_stat.items()
                if sha in self.by_sha
            ]
            merged = self.folder / f"merged-{uuid.uuid4().hex}.npz"
            try:
                _write_chunk(merged, records)
            except OSError:
                return
            for chunk in self.known_chunks:
                with contextlib.suppress(OSError):
                    chunk.unlink(missing_ok=True)
            self.known_chunks = {merged}


#: The columns of a chunk, all of one length: row i is one record.
COLUMNS = ("sha256", "path", "bytes", "mtime_ns", "size", "vectors")


def _read_chunk(path: Path) -> dict[str, np.ndarray] | None:
    """The columns of one chunk, or None when it is gone or not a whole, well-formed chunk."""
    try:
        with np.load(path, allow_pickle=False) as data:
            columns = {name: data[name] for name in COLUMNS}
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
    )
    return columns if well_formed else None


def _write_chunk(path: Path, records: list[Record]) -> None:
    columns = {
        "sha256": np.array([r.sha256 for r in records]),
        "path": np.array([r.path for r in records]),
        "bytes": np.array([r.bytes for r in records], dtype=np.int64),
        "mtime_ns": np.array([r.mtime_ns for r in records], dtype=np.int64),
        "size": np.array([(r.width, r.height) for r in records], dtype=np.int32).reshape(-1, 2),
        "vectors": np.stack([r.vector for r in records]).astype(np.float32),
    }
    atomic_write(path, lambda handle: np.savez(handle, **columns))
