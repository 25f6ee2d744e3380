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
import re
import stat
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gridtsne import __version__
from gridtsne.errors import StageError

IMAGES = "images.json"
EMBEDDINGS = "embeddings.npy"
COORDS = "coords.npy"
GRID = "grid.npy"
#: What the next update of the map starts from: each row's key and place (``gridtsne.stable``).
REDUCE_STATE = "reduce-state.npz"
ASSIGN_STATE = "assign-state.npz"

#: What every manifest holds, as JSON objects; one without them is damaged.
MANIFEST_KEYS = ("options", "params", "inputs", "outputs", "output_paths", "results")

#: The stage that writes each artifact, for "run this first" messages.
WRITTEN_BY = {IMAGES: "embed", EMBEDDINGS: "embed", COORDS: "reduce", GRID: "assign"}

#: The files gridtsne wrote outside the work directory (mosaics, exports), with their hashes.
WRITTEN = "written.json"

DEFAULT_DIRNAME = "gridtsne-work"
ENV_VAR = "GRIDTSNE_WORKDIR"


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
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:  # a read-only or full folder
        raise OSError(error.errno, error.strerror or str(error), str(path.parent)) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(error, OSError) and error.filename in (None, tmp_name):
            # Name the file the user knows (a full disk while writing coords.npy), not the temporary one.
            raise OSError(error.errno, error.strerror or str(error), str(path)) from None
        raise


def save_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


def save_state(path: Path, meta: dict, **arrays: np.ndarray) -> None:
    """Arrays and a JSON-able ``meta`` in one .npz, written atomically: one file, so that a
    run killed halfway leaves the previous state or the new one, never a mix."""
    meta_text = np.array(json.dumps(meta, sort_keys=True))
    atomic_write(path, lambda handle: np.savez(handle, meta=meta_text, **arrays))


def load_state(path: Path) -> tuple[dict, dict[str, np.ndarray]] | None:
    """``save_state``'s meta and arrays, or None when the file is missing or damaged (the
    stage then starts afresh, as before there was a state)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, AttributeError):
        return None
    return (meta, arrays) if isinstance(meta, dict) else None


class NotRegularFile(OSError):
    """A FIFO, socket or device where a file was expected; ``mode`` says which."""

    def __init__(self, path: str | os.PathLike, mode: int):
        super().__init__(f"{path} is not a regular file")
        self.mode = mode


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a regular file's bytes, read in blocks so that memory stays small.

    Anything else is refused (``NotRegularFile``) before a byte is read: opening
    without blocking means a FIFO put in a file's place cannot stall the run.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, mode)
        return hashlib.file_digest(handle, "sha256").hexdigest()


_hash_memo: dict[tuple[str, int, int], str] = {}


def file_hash(path: Path) -> str:
    """``sha256_file`` memoised on (path, size, mtime) within a process, for artifacts
    that freshness checks hash again and again (photos are not memoised: there are too many)."""
    stat = os.stat(path)
    key = (str(Path(path).absolute()), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_memo:
        _hash_memo[key] = sha256_file(path)
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
            stage = WRITTEN_BY.get(name, "the stage that writes it")
            raise StageError(f"{path} is missing: run `gridtsne {stage} -w {self.path}` first")
        return path

    def load_array(self, name: str) -> np.ndarray:
        path = self.require(name)
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise self._damaged(name, f"unreadable: {error}") from None
        if not isinstance(array, np.ndarray):  # an .npz archive under an .npy name
            array.close()
            raise self._damaged(name, "not a .npy array")
        return array

    def load_images(self) -> dict:
        """``images.json``, checked: an ``images`` list of entries with a ``path`` each."""
        path = self.require(IMAGES)
        try:
            listing = load_json(path)
        except (OSError, ValueError) as error:
            raise self._damaged(IMAGES, f"not JSON: {error}") from None
        entries = listing.get("images") if isinstance(listing, dict) else None
        if not isinstance(entries, list) or not all(
            isinstance(entry, dict) and isinstance(entry.get("path"), str) for entry in entries
        ):
            raise self._damaged(IMAGES, "it has no list of images with a path each")
        listing.setdefault("skipped", [])
        return listing

    def load_embeddings(self) -> np.ndarray:
        """``embeddings.npy``, checked: N x D finite real numbers, N >= 1."""
        vectors = self.load_array(EMBEDDINGS)
        if vectors.ndim != 2 or len(vectors) == 0 or vectors.shape[1] == 0:
            raise self._damaged(EMBEDDINGS, f"it holds an array of shape {vectors.shape}, not N x D")
        if not (np.issubdtype(vectors.dtype, np.floating) or np.issubdtype(vectors.dtype, np.integer)):
            raise self._damaged(EMBEDDINGS, f"it holds {vectors.dtype} values, not numbers")
        if not np.isfinite(vectors).all():
            raise self._damaged(EMBEDDINGS, "it holds NaN or infinite values")
        return vectors

    def load_coords(self, n_points: int) -> np.ndarray:
        """``coords.npy``, checked: ``n_points`` x 2 finite numbers."""
        coords = self.load_array(COORDS)
        if coords.shape != (n_points, 2) or not np.issubdtype(coords.dtype, np.floating):
            raise self._damaged(COORDS, f"it holds a {coords.dtype} array of shape {coords.shape} "
                                        f"for {n_points} images")  # fmt: skip
        if not np.isfinite(coords).all():
            raise self._damaged(COORDS, "it holds NaN or infinite values")
        return coords

    def load_grid(self, n_images: int, n_cells: int) -> np.ndarray:
        """``grid.npy``, checked: one whole-number cell per image, each cell used once, -1 for none."""
        cells = self.load_array(GRID)
        if cells.shape != (n_images,) or not np.issubdtype(cells.dtype, np.integer):
            raise self._damaged(GRID, f"it holds a {cells.dtype} array of shape {cells.shape} "
                                      f"for {n_images} images")  # fmt: skip
        placed = cells[cells != -1]
        if placed.size and (placed.min() < 0 or placed.max() >= n_cells):
            raise self._damaged(GRID, f"it names cells outside the grid of {n_cells} cells")
        if len(np.unique(placed)) != len(placed):
            raise self._damaged(GRID, "it puts two images in one cell")
        return cells

    def _damaged(self, name: str, why: str) -> StageError:
        stage = WRITTEN_BY.get(name, "the stage that writes it")
        return StageError(f"{self.file(name)} is damaged ({why}): rerun `gridtsne {stage} -w {self.path}`")

    def read_manifest(self, stage: str) -> dict | None:
        """The stage's manifest, or None when there is none or it is damaged (the stage then reruns)."""
        try:
            manifest = load_json(self.manifest_path(stage))
        except (OSError, ValueError):  # missing, unreadable, not JSON, not UTF-8
            return None
        if not isinstance(manifest, dict) or not all(
            isinstance(manifest.get(key), dict) for key in MANIFEST_KEYS
        ):
            return None
        return manifest

    def finish_stage(
        self,
        stage: str,
        params: dict,
        inputs: dict,
        outputs: dict[str, Path],
        started: float,
        results: dict,
        options: dict | None = None,
    ) -> dict:
        """Write the manifest of a stage whose outputs are all in place; its summary.

        Outputs inside the work directory are recorded by their name in it, so
        a work directory still checks as fresh when it is moved, copied or
        named by another relative path.
        """
        manifest = {
            "stage": stage,
            "gridtsne_version": __version__,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.perf_counter() - started, 3),
            "options": options if options is not None else {},
            "params": params,
            "inputs": inputs,
            "outputs": {name: file_hash(path) for name, path in outputs.items()},
            "output_paths": {name: self._recorded(path) for name, path in outputs.items()},
            "results": results,
        }
        save_json(self.manifest_path(stage), manifest)
        return {"stage": stage, "ran": True, **results, "seconds": manifest["seconds"]}

    def _recorded(self, path: Path) -> str:
        absolute, root = Path(path).absolute(), self.path.absolute()
        return str(absolute.relative_to(root)) if absolute.is_relative_to(root) else str(absolute)

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
            return "never run" if not self.manifest_path(stage).exists() else "its manifest is damaged"
        for kind, label, wanted in (("params", "options", params), ("inputs", "inputs", inputs)):
            recorded = manifest[kind]
            wanted = jsonable(wanted)
            changed = sorted(k for k in set(wanted) | set(recorded) if wanted.get(k) != recorded.get(k))
            if changed:
                return f"{label} changed: " + ", ".join(changed)
        for name, recorded in manifest["outputs"].items():
            path = self.path / manifest["output_paths"].get(name, name)  # absolute paths stay absolute
            if not path.is_file():
                return f"output missing: {path}"
            if file_hash(path) != recorded:
                return f"output modified: {path}"
        return None

    def may_write(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Refuse to write over a file that gridtsne did not write from this work directory.

        A file it wrote and that is unchanged since may be replaced (a rerun);
        anything else (a photo a shell glob put where the output goes, a file
        of the user's, a symbolic link) only with ``overwrite``. A folder never.
        """
        path = Path(path).absolute()
        if path.is_dir():
            raise StageError(f"{path} is a folder: name a file to write")
        if not os.path.lexists(path) or overwrite:
            return
        recorded = self._written().get(str(path))
        if (
            recorded is not None
            and not path.is_symlink()
            and path.is_file()
            and sha256_file(path) == recorded
        ):
            return
        raise StageError(
            f"{path} already exists and gridtsne did not write it (or it changed since): "
            "name another file, move it away, or add --overwrite"
        )

    def remember_written(self, paths: list[Path]) -> None:
        """Record files just written outside the work directory, so that a rerun may replace them."""
        record = self._written()
        record.update({str(Path(p).absolute()): file_hash(Path(p)) for p in paths})  # the manifest's too
        save_json(self.file(WRITTEN), record)

    def _written(self) -> dict[str, str]:
        try:
            record = load_json(self.file(WRITTEN))
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _remove_stale_temporaries(self) -> None:
        """Delete the temporaries that a run killed while writing left (an embeddings.npy's
        is 0.5 GB at 100,000 photos). Only with the lock held: then no gridtsne is writing here."""
        for path in self.path.iterdir():
            if STALE_TEMPORARY.fullmatch(path.name) and path.is_file() and not path.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

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
                self._remove_stale_temporaries()
                yield self
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


#: ``atomic_write``'s temporary for an artifact or manifest: ".NAME.XXXXXXXX.tmp".
STALE_TEMPORARY = re.compile(r"\.[\w.-]+\.(npy|npz|json)\.[a-z0-9_]{8}\.tmp")


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
