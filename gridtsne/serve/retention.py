"""Keeping --data within bounds: finished jobs and unused uploads expire, by age and by size.

A server runs for months; without this its uploads, job folders and shared
embedding cache would fill the disk. Every pass, in order:

1. finished jobs older than ``keep_days`` expire: their folder is removed and
   the job is forgotten, leaving a note so that a poll answers 410 and says why;
2. uploads older than ``keep_days`` that no queued or running job names go;
3. while --data holds more than ``max_data_bytes`` (or its disk is nearly
   full): the least recently finished job or the oldest unused upload,
   whichever is older, goes; first those older than ``GRACE_SECONDS``, then
   the least recently used vectors of the embedding cache, and only then the
   most recent jobs, so that the limit holds (a recent upload stays: its
   client is about to name it in a job).

Nothing a queued or running job needs is touched: its own folder, the uploads
it names, the job it continues from. A submit and a pass never interleave
(``lock``), so an upload checked by a submit is still there when its job runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
import time
import traceback
from pathlib import Path

from gridtsne import cache as embedding_cache
from gridtsne.serve.config import ServeConfig
from gridtsne.serve.jobs import Queue

#: Seconds between two passes while the server runs (also one after each finished job).
EVERY_SECONDS = 60.0
#: Passes are at least this far apart, however often they are woken.
MIN_SECONDS = 1.0
#: A job that finished, or an upload made, this recently is removed for room only when nothing
#: older is left: its client may have yet to fetch the result, or to name the upload in a job.
GRACE_SECONDS = 120.0
#: An upload still being received is left alone this long.
INCOMING_GRACE_SECONDS = 3600.0


def disk_bytes(folder: Path) -> int:
    """What a folder's files take on disk (their blocks), links not followed."""
    total = 0
    stack = [folder]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    else:
                        total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total


class Retention:
    """Runs the passes; ``lock`` is held by a pass and by each submit."""

    def __init__(self, config: ServeConfig, queue: Queue, log=print):
        self.config, self.queue, self.log = config, queue, log
        self.lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="gridtsne-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Run a pass soon: a job finished, or one hit a full disk."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopping:
            try:
                self.run()
            except Exception as error:  # a locked database, a full disk: try again, never die
                if not isinstance(error, OSError | sqlite3.Error):
                    traceback.print_exc()
            self._wake.wait(EVERY_SECONDS)
            self._wake.clear()
            time.sleep(MIN_SECONDS)

    def expires_at(self, finished_at: float) -> float:
        """When a job that finished at ``finished_at`` expires by age (sooner if --data fills up)."""
        return finished_at + self.config.keep_days * 86400

    def run(self, now: float | None = None) -> dict:
        """One pass; what it removed and freed."""
        now = time.time() if now is None else now
        with self.lock:
            return self._run(now)

    def _run(self, now: float) -> dict:
        config = self.config
        live = self.queue.unfinished()
        live_inputs = {Path(path).name for job in live for path in job.request.get("paths", [])
                       if Path(path).parent == config.inputs}  # fmt: skip
        needed_jobs = {job.id for job in live} | {job.request.get("continue_from") for job in live}
        report = {"jobs": 0, "uploads": 0, "vectors": 0, "freed_bytes": 0}
        keep_seconds = config.keep_days * 86400

        finished = [job for job in self.queue.finished() if job.id not in needed_jobs]
        for job in [job for job in finished if job.updated_at < now - keep_seconds]:
            self._expire_job(job.id, f"kept {config.keep_days:g} days (--keep-days)", report)
        finished = [job for job in finished if job.updated_at >= now - keep_seconds]

        uploads = self._uploads(live_inputs)
        for path in [path for path, when in uploads if when < now - keep_seconds]:
            self._remove_upload(path, report)
        uploads = [(path, when) for path, when in uploads if when >= now - keep_seconds]
        self._remove_stale_incoming(now)

        used = disk_bytes(config.data)
        limit = self.limit(used)
        if used > limit:
            # Oldest first, jobs and uploads together; first those a client has had time to fetch
            # or name, then cached vectors, and only then the most recent: the limit is a bound.
            grace = now - GRACE_SECONDS
            candidates = sorted(
                [(job.updated_at, "job", job.id) for job in finished]
                + [(when, "upload", path) for path, when in uploads]
            )
            settled = [item for item in candidates if item[0] < grace]
            # A recent upload stays: its client is about to name it in a job (uploads are small).
            recent = [item for item in candidates if item[0] >= grace and item[1] == "job"]
            used = self._remove_oldest(settled, used, limit, report)
            if used > limit:
                cache_bytes = disk_bytes(config.cache)
                budget = max(0, cache_bytes - (used - limit))
                for pruned in embedding_cache.prune(config.cache, max_bytes=budget):
                    report["vectors"] += pruned["removed"]
                    report["freed_bytes"] += pruned["freed_bytes"]
                    used -= pruned["freed_bytes"]
            used = self._remove_oldest(recent, used, limit, report)
        if report["jobs"] or report["uploads"] or report["vectors"]:
            self.log(
                f"gridtsne serve: retention removed {report['jobs']} job(s), {report['uploads']} upload(s), "
                f"{report['vectors']} cached vector(s); freed {report['freed_bytes'] / 1e6:.1f} MB"
            )
        return report

    def _remove_oldest(self, candidates: list, used: int, limit: int, report: dict) -> int:
        """Remove jobs and uploads, oldest first, until ``used`` is within ``limit``; the new ``used``."""
        for _, kind, what in candidates:
            if used <= limit:
                break
            before = report["freed_bytes"]
            if kind == "job":
                self._expire_job(what, "--data was full (--max-data-gb, or its disk)", report)
            else:
                self._remove_upload(what, report)
            used -= report["freed_bytes"] - before
        return used

    def make_room(self, needed: int) -> None:
        """Before a write of ``needed`` bytes: if the disk would keep less than its reserve free,
        prune now rather than answer 507 and wait for the next pass."""
        try:
            disk = shutil.disk_usage(self.config.data)
        except OSError:
            return
        if disk.free - needed < self.reserve(disk.total):
            # A pass that fails (a locked database, a disk too full even for it) leaves the
            # write itself to find out, and be answered 507, never a 500.
            with contextlib.suppress(OSError, sqlite3.Error):
                self.run()

    @staticmethod
    def reserve(total: int) -> int:
        """Bytes the disk of --data keeps free: a tenth, at most 1 GB."""
        return min(10**9, total // 10)

    def limit(self, used: int) -> int:
        """Bytes --data may hold: --max-data-gb, or less when its disk would keep under a tenth
        (at most 1 GB) free: a disk smaller than the limit, or shared with others."""
        try:
            disk = shutil.disk_usage(self.config.data)
        except OSError:
            return self.config.max_data_bytes
        return min(self.config.max_data_bytes, max(0, used + disk.free - self.reserve(disk.total)))

    def _expire_job(self, job_id: str, why: str, report: dict) -> None:
        folder = self.config.job_folder(job_id)
        size = disk_bytes(folder)
        try:
            expired = self.queue.expire(job_id, why)
        except sqlite3.OperationalError as error:
            if "full" not in str(error):
                raise
            # The database cannot even note the expiry on a full disk: the finished job's files go
            # first to make room (a poll between the two finds the job without its files).
            shutil.rmtree(folder, ignore_errors=True)
            expired = self.queue.expire(job_id, why)
        if expired:
            shutil.rmtree(folder, ignore_errors=True)
            report["jobs"] += 1
            report["freed_bytes"] += size

    def _uploads(self, live_inputs: set[str]) -> list[tuple[Path, float]]:
        """The uploads no live job names, with their time of upload, oldest first."""
        found = []
        with contextlib.suppress(OSError), os.scandir(self.config.inputs) as entries:
            for entry in entries:
                if entry.name.startswith(".") or entry.name in live_inputs:
                    continue
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False):
                        found.append((Path(entry.path), entry.stat(follow_symlinks=False).st_mtime))
        return sorted(found, key=lambda item: item[1])

    def _remove_upload(self, path: Path, report: dict) -> None:
        with contextlib.suppress(OSError):
            size = path.stat().st_blocks * 512
            path.unlink()
            report["uploads"] += 1
            report["freed_bytes"] += size

    def _remove_stale_incoming(self, now: float) -> None:
        """Parts of uploads a crash left behind."""
        for path in (self.config.inputs / ".incoming").glob("*"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < now - INCOMING_GRACE_SECONDS:
                    path.unlink()
