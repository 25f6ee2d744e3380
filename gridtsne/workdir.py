"""The work directory: artifact paths, atomic writes, stage manifests, freshness, lock.

Every stage reads and writes plain files here so that any stage can be rerun
alone, inspected with numpy or jq, or driven by Make. A stage's manifest
(``<stage>.json``) records its parameters and the content hashes of what it
read and wrote; it is written last, so an interrupted stage never looks done.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gridtsne import __version__

IMAGES = "images.json"
EMBEDDINGS = "embeddings.npy"
COORDS = "coords.npy"
GRID = "grid.npy"

#: The stage that writes each artifact, for "run this first" messages.
WRITTEN_BY = {IMAGES: "embed", EMBEDDINGS: "embed", COORDS: "reduce", GRID: "assign"}

DEFAULT_DIRNAME = "gridtsne-work"
ENV_VAR = "GRIDTSNE_WORKDIR"


class StageError(Exception):
    """A problem the user can fix, such as a missing upstream artifact."""


class Interrupted(Exception):
    """Ctrl-C, with a message saying how far the work got and what was kept."""


def default_workdir(output: str | os.PathLike | None = None) -> Path:
    """Where to work when no ``-w`` is given.

    ``GRIDTSNE_WORKDIR`` wins; otherwise ``all`` works in a folder named after
    its output (``out.jpg`` -> ``out.gridtsne/``) so that two runs into
    different outputs never mix, and the single stages use ``./gridtsne-work``.
    """
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        return Path(from_env)
    if output is not None:
        return Path(output).with_suffix(".gridtsne")
    return Path(DEFAULT_DIRNAME)


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through a temporary file in the same folder, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def save_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


_hash_memo: dict[tuple[str, int, int], str] = {}


def file_hash(path: Path) -> str:
    """SHA-256 of a file's bytes, memoised on (path, size, mtime) within a process."""
    stat = os.stat(path)
    key = (str(Path(path).absolute()), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_memo:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _hash_memo[key] = digest.hexdigest()
    return _hash_memo[key]


def jsonable(data: Any) -> Any:
    """``data`` as it reads back from a manifest (tuples become lists, ...)."""
    return json.loads(json.dumps(data))


class Workdir:
    """One work directory and the artifacts in it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Workdir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    def manifest_path(self, stage: str) -> Path:
        return self.path / f"{stage}.json"

    def require(self, name: str) -> Path:
        """The path of an upstream artifact, or a message naming the stage to run."""
        path = self.file(name)
        if not path.is_file():
            stage = WRITTEN_BY[name]
            raise StageError(f"{path} is missing: run `gridtsne {stage} -w {self.path}` first")
        return path

    def load_array(self, name: str) -> np.ndarray:
        path = self.require(name)
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise StageError(
                f"{path} is unreadable ({error}): rerun `gridtsne {WRITTEN_BY[name]} -w {self.path}`"
            ) from None

    def load_images(self) -> dict:
        return load_json(self.require(IMAGES))

    def read_manifest(self, stage: str) -> dict | None:
        path = self.manifest_path(stage)
        try:
            return load_json(path)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def finish_stage(
        self,
        stage: str,
        params: dict,
        inputs: dict,
        outputs: dict[str, Path],
        started: float,
        results: dict,
    ) -> dict:
        """Write the manifest of a stage whose outputs are all in place; its summary."""
        manifest = {
            "stage": stage,
            "gridtsne_version": __version__,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.perf_counter() - started, 3),
            "params": params,
            "inputs": inputs,
            "outputs": {name: file_hash(path) for name, path in outputs.items()},
            "output_paths": {name: str(path) for name, path in outputs.items()},
            "results": results,
        }
        save_json(self.manifest_path(stage), manifest)
        return {"stage": stage, "ran": True, **results, "seconds": manifest["seconds"]}

    def fresh_summary(self, stage: str, params: dict, inputs: dict) -> dict | None:
        """The recorded summary of ``stage`` if it is fresh, else None."""
        if self.staleness(stage, params, inputs) is not None:
            return None
        return {"stage": stage, "ran": False, **self.read_manifest(stage)["results"]}

    def staleness(self, stage: str, params: dict, inputs: dict) -> str | None:
        """Why ``stage`` must run again, or None when it is fresh.

        Fresh means: its manifest exists, was made with these parameters from
        these inputs, and the outputs it wrote are still there, unchanged.
        """
        manifest = self.read_manifest(stage)
        if manifest is None:
            return "never run"
        for kind, label, wanted in (("params", "options", params), ("inputs", "inputs", inputs)):
            recorded = manifest.get(kind, {})
            wanted = jsonable(wanted)
            changed = sorted(k for k in set(wanted) | set(recorded) if wanted.get(k) != recorded.get(k))
            if changed:
                return f"{label} changed: " + ", ".join(changed)
        for name, recorded in manifest.get("outputs", {}).items():
            path = Path(manifest["output_paths"][name])
            if not path.is_file():
                return f"output missing: {path}"
            if file_hash(path) != recorded:
                return f"output modified: {path}"
        return None

    @contextlib.contextmanager
    def lock(self):
        """Keep two gridtsne processes from writing the same work directory."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = open_lock_file(self.path / ".lock")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StageError(
                    f"another gridtsne is working in {self.path}; wait for it to finish"
                ) from None
            try:
                yield self
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def open_lock_file(path: Path) -> int:
    """A file descriptor for ``flock`` on ``path``, created if need be, never truncated.

    A link there is refused rather than followed: the lock must not write to,
    or even create, a file elsewhere.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as error:
        if os.path.islink(path):
            raise StageError(
                f"{path} is a symbolic link, not gridtsne's lock file: remove the link"
            ) from None
        raise StageError(
            f"cannot open the lock file {path} ({error.strerror}): use a folder you can write to"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StageError(f"{path} is not a regular file, so not gridtsne's lock file: remove it")
    return fd
