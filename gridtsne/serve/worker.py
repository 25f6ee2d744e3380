"""Running jobs: the dispatcher (a thread in the server) and the worker process of one job.

Each job runs in its own process (``python -m gridtsne.serve.worker``), so that
cancelling it is stopping a process, a crash in one job harms no other, and
memory goes back to the system when the job ends. At most ``workers`` run at
once. A worker runs the same stages as ``gridtsne all`` in the job's own work
directory, with the embedding cache shared by all jobs under --data; after a
restart a re-queued job resumes through the stages' freshness and that cache.

While a worker's place is free, one more process waits as a standby with the
stages' libraries loaded (``STANDBY_IMPORTS``), and the next job is handed to
it: the job starts without the seconds of imports a fresh process pays.
"""

from __future__ import annotations

import importlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from gridtsne.serve.config import ServeConfig
from gridtsne.serve.jobs import FAILED, SUCCEEDED, Job, Queue, SqliteQueue

#: Rough share of a job's time per stage, for ``percent_completed``; within a stage it follows the
#: stage's own progress (photos embedded, t-SNE iterations, tiles made).
STAGE_WEIGHTS = {"embed": 50, "reduce": 25, "assign": 10, "render": 15}
#: Least seconds between two progress writes to the job database.
PROGRESS_SECONDS = 1.0
#: The picture's file name per format (the request's ``format``; auto is JPEG).
PICTURE_NAMES = {"auto": "mosaic.jpg", "jpeg": "mosaic.jpg", "png": "mosaic.png",
                 "webp": "mosaic.webp", "tiff": "mosaic.tiff"}  # fmt: skip
PAGE_NAME = "page.html"
#: How long a re-queued job waits for the work directory lock of a worker killed with the server.
LOCK_WAIT_SECONDS = 20
#: The file in a job's folder with the pid of its worker process while it runs.
WORKER_PID = "worker.pid"
#: A worker that could not record its job's end exits with this code.
NOT_RECORDED = 75
#: What the dispatcher records for a worker that exited with these codes.
EXIT_REASONS = {
    NOT_RECORDED: "the disk of the server's --data is full: the job's result could not be recorded",
    -signal.SIGKILL: "the worker process was killed (SIGKILL: out of memory, or stopped from outside)",
}
#: Workers run side by side on few cores: OpenMP threads (openTSNE's) that spin while they wait
#: take the cores from each other (a soak ran 6.75 times fewer jobs), so they sleep instead, unless
#: the server's environment sets OMP_WAIT_POLICY. It changes how threads wait, not what they compute.
WORKER_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}
#: The environment variable that tells a worker its server's pid.
SERVER_PID_VARIABLE = "GRIDTSNE_SERVER_PID"
#: What a standby worker loads before its job comes: the libraries the stages import when
#: they run (about 2.5 s of a fresh worker's start on two cores, scikit-learn's through openTSNE
#: most of it), not the model's weights, which a job whose photos are all cached never reads.
STANDBY_IMPORTS = (
    "gridtsne.pipeline", "gridtsne.export", "gridtsne.render", "onnxruntime", "openTSNE",
    "scipy.linalg", "scipy.ndimage", "scipy.optimize", "PIL.Image",
)  # fmt: skip
#: The argument that starts a worker as a standby (its job id comes later, on its stdin).
STANDBY = "--standby"
#: What a standby writes first into the log of the job it takes.
STANDBY_TOOK = "the standby, its libraries loaded, took this job"


class Dispatcher:
    """Starts a worker process for each queued job, up to ``config.workers`` at once."""

    def __init__(self, config: ServeConfig, queue: Queue, poll_seconds: float = 0.2, on_finished=None):
        self.config, self.queue, self.poll_seconds = config, queue, poll_seconds
        self.on_finished = on_finished or (lambda: None)
        self.running: dict[str, subprocess.Popen] = {}
        #: The standby worker and the token on its command line, or None.
        self.standby: tuple[subprocess.Popen, str] | None = None
        self._standby_broken = False  # one exited unused: start no more, rather than in a loop
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="gridtsne-dispatcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        full = False
        while not self._stopping:
            try:
                self.tick()
                full = False
            except Exception as error:  # a full disk, a locked database: try again, never die
                if not disk_full(error):
                    traceback.print_exc()
                elif not full:  # said once, not every tick, until it is over
                    print("gridtsne serve: the disk of --data is full; waiting for room", flush=True)
                    full = True
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def tick(self) -> None:
        with self._lock:
            for job_id, process in list(self.running.items()):
                code = process.poll()
                if code is None:
                    continue
                if code != 0:  # a crash, or killed from outside: its job must not stay "running"
                    why = EXIT_REASONS.get(code, f"the worker process stopped (exit code {code})")
                    self.queue.finish(job_id, FAILED, why)  # raises on a full disk: tried again next tick
                del self.running[job_id]
                (self.config.job_folder(job_id) / WORKER_PID).unlink(missing_ok=True)
                self.on_finished()
            self._check_standby()
            while not self._stopping and len(self.running) < self.config.workers:
                job = self.queue.claim()
                if job is None:
                    break
                self.running[job.id] = self._spawn(job)
            if (
                self.config.standby and self.standby is None and not self._standby_broken
                and not self._stopping and len(self.running) < self.config.workers
            ):  # fmt: skip
                # Only while a worker's place is free: its imports take a core from no running job
                # when one worker runs at a time, and the next job may start at once.
                token = secrets.token_hex(8)
                standby = self._start([STANDBY, *self._folders(), token], subprocess.DEVNULL, subprocess.PIPE)
                self.standby = (standby, token)

    def _folders(self) -> list[str]:
        return [str(self.config.root), str(self.config.data)]

    def _start(self, arguments: list[str], output, stdin=subprocess.DEVNULL) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "gridtsne.serve.worker", *arguments],
            stdin=stdin,
            stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops everything it started
            env={**WORKER_ENVIRONMENT, **os.environ, SERVER_PID_VARIABLE: str(os.getpid())},
        )  # fmt: skip

    def _check_standby(self) -> None:
        if self.standby is not None and self.standby[0].poll() is not None:
            code = self.standby[0].returncode
            self.standby, self._standby_broken = None, True
            print(f"gridtsne serve: the standby worker exited (code {code}); jobs start fresh processes",
                  flush=True)  # fmt: skip

    def _spawn(self, job: Job) -> subprocess.Popen:
        """The job's worker: the standby, told the job's id, or else a fresh process. The job
        folder keeps its pid and what its command line holds (the job's id or the standby's
        token), which ``stop_leftover_workers`` checks before killing it after a restart."""
        folder = self.config.job_folder(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        process, marker = self._hand_to_standby(job.id) if self.standby is not None else (None, None)
        if process is None:
            with open(folder / "worker.log", "ab") as log:
                process, marker = self._start([*self._folders(), job.id], log), job.id
        (folder / WORKER_PID).write_text(f"{process.pid}\n{marker}\n")
        return process

    def _hand_to_standby(self, job_id: str) -> tuple[subprocess.Popen | None, str | None]:
        (process, token), self.standby = self.standby, None
        try:
            process.stdin.write(f"{job_id}\n".encode())
            process.stdin.close()
        except OSError:  # it died since the last look: the job starts a fresh process
            _kill(process)
            self._standby_broken = True
            return None, None
        return process, token

    def stop_job(self, job_id: str) -> bool:
        """Stop the process of a job (cancelled); whether one was running."""
        with self._lock:
            process = self.running.pop(job_id, None)
        if process is None:
            return False
        _kill(process)
        return True

    def stop(self) -> None:
        """Stop every worker (the server is shutting down); their jobs are re-queued at the next start."""
        self._stopping = True
        self._wake.set()
        with self._lock:
            for process in self.running.values():
                _kill(process)
            self.running.clear()
            if self.standby is not None:
                self.standby[0].stdin.close()
                _kill(self.standby[0])
                self.standby = None


def stop_leftover_workers(config: ServeConfig, wait_seconds: float = 10.0) -> int:
    """Kill the worker processes a server killed with SIGKILL left running; how many.

    A worker exits by itself when it sees its server gone, but only between
    two steps of Python: one deep in a long computation would hold its job's
    work directory while the restarted server runs the job again. Each
    worker's pid is in its job folder; it is killed only if that process is
    still a gridtsne worker for that job (pids are reused): its command line
    holds the job's id, or the token of the standby that took the job."""
    stopped = []
    for pid_file in config.jobs.glob(f"*/{WORKER_PID}"):
        try:
            pid, *marker = pid_file.read_text().split()
            pid = int(pid)
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
            continue
        marker = marker[0] if marker else pid_file.parent.name
        if b"gridtsne.serve.worker" in command and marker.encode() in command:
            try:
                os.killpg(pid, signal.SIGKILL)
                stopped.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
        pid_file.unlink(missing_ok=True)
    deadline = time.monotonic() + wait_seconds
    while stopped and time.monotonic() < deadline:  # gone once its new parent has reaped it
        stopped = [pid for pid in stopped if Path(f"/proc/{pid}/cmdline").is_file() and _alive(pid)]
        time.sleep(0.05)
    return len(stopped)


def _alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


# The worker process.


def _watch_parent() -> None:
    """Exit when the server dies (even by SIGKILL), so that a restart never finds two workers.

    The server's pid comes in ``SERVER_PID_VARIABLE``: a worker whose server died while
    starting it already has another parent, and must not take that one for its server."""
    parent = int(os.environ.get(SERVER_PID_VARIABLE) or os.getppid())
    if os.getppid() != parent:
        os._exit(3)

    def watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


#: How a client names an uploaded photo: ``input:`` and its id.
INPUT_PREFIX = "input:"


def _shown(path: str, config: ServeConfig) -> str:
    """A photo's name as the client knows it: relative to the root, or the id of an upload."""
    real = Path(path).resolve()
    if real.is_relative_to(config.inputs):
        return f"{INPUT_PREFIX}{real.name}"
    if real.is_relative_to(config.root):
        return real.relative_to(config.root).as_posix()
    return real.name


def _server_labels(labels, config: ServeConfig):
    """Inline labels with the paths as the client names photos (relative to the root, or
    ``input:ID``) -> the same with the paths of this server, to match the photos with."""
    if labels is None:
        return None
    return tuple(
        (str(config.inputs / path[len(INPUT_PREFIX) :]) if path.startswith(INPUT_PREFIX)
         else str(config.root / path), label)
        for path, label in labels
    )  # fmt: skip


def run_job(config: ServeConfig, queue: Queue, job: Job) -> dict:
    """Run the stages of ``job`` in its folder; the results to record. Raises what the stages raise."""
    from gridtsne import export, images, pipeline, render
    from gridtsne.options import PipelineOptions
    from gridtsne.stage import Context
    from gridtsne.workdir import Workdir, atomic_write

    folder = config.job_folder(job.id)
    request = job.request
    options = dict(request["options"])
    picture = folder / PICTURE_NAMES[options.get("format", "auto")]
    settings = PipelineOptions.from_flat(
        {**options, "paths": request["paths"], "output": str(picture), "cache": str(config.cache)}
    )
    # A link inside a photo folder that leads out of the root is never read: leave its files out.
    found = images.find_images(settings.embed.paths, settings.embed.ext, hidden=settings.embed.hidden)
    allowed = (config.root, config.inputs)
    outside = [str(path) for path in found.files if not any(map(path.resolve().is_relative_to, allowed))]
    page_labels = _server_labels(settings.render.labels, config)  # the page's; the picture has none
    settings = PipelineOptions(
        embed=settings.embed.replace(exclude=tuple(outside)),
        reduce=settings.reduce, assign=settings.assign, render=settings.render.replace(labels=None),
    )  # fmt: skip
    work = Workdir(folder / "work")
    continued = _continue_from(config, request.get("continue_from"), work)
    progress = Progress(queue, job.id)
    context = Context(progress=False, jobs=2, on_progress=progress.within)

    def stage_done(summary: dict) -> None:
        names = list(STAGE_WEIGHTS)
        following = names.index(summary["stage"]) + 1
        progress.within(names[following] if following < len(names) else "render", 0.0, force=True)

    progress.within("embed", 0.0, force=True)
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            lock = work.lock()
            lock.__enter__()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    try:
        summaries = pipeline.run_all(work, settings, context, on_stage_done=stage_done)
        table = export.positions(work)
        for row in table:
            row["path"] = _shown(row["path"], config)
        for name in ("csv", "json"):
            text = export.FORMATS_BY_NAME[name](table)
            atomic_write(folder / f"positions.{name}", lambda handle, text=text: handle.write(text.encode()))
        if request.get("web_page"):
            render.STAGE.run(
                work,
                settings.render.replace(output=str(folder / PAGE_NAME), format="html", labels=page_labels),
                context,
            )
    finally:
        lock.__exit__(None, None, None)
    by_stage = {summary["stage"]: summary for summary in summaries}
    embedded, grid = by_stage["embed"], by_stage["assign"]
    layout = {"mode": grid.get("mode", "fresh"), "from": continued}
    if grid.get("mode") == "update":
        layout.update(
            {
                name: grid.get(name)
                for name in (
                    "kept_cell",
                    "moved",
                    "moved_median_cells",
                    "moved_largest_cells",
                    "new",
                    "removed",
                )
            }
        )
    elif grid.get("why"):
        layout["why"] = grid["why"]
    from PIL import Image

    with Image.open(picture) as image:
        width, height = image.size
    listing = work.load_images()
    return {
        "picture": picture.name,
        "width": width,
        "height": height,
        "rows": grid.get("rows"),
        "cols": grid.get("cols"),
        "images": len(listing["images"]),
        "skipped": [
            {"path": _shown(entry["path"], config), "reason": entry["reason"]} for entry in listing["skipped"]
        ],  # fmt: skip
        "embeddings_computed": embedded.get("computed"),
        "embeddings_reused": embedded.get("reused"),
        "web_page": bool(request.get("web_page")),
        "layout": layout,
    }


class Progress:
    """Turns a stage's own progress into the job's ``stage`` and ``percent_completed``, written
    to the database at most every ``PROGRESS_SECONDS`` (and never backwards)."""

    def __init__(self, queue: Queue, job_id: str):
        self.queue, self.job_id = queue, job_id
        self.written_at, self.percent = 0.0, -1.0

    def within(self, stage: str, fraction: float, force: bool = False) -> None:
        names = list(STAGE_WEIGHTS)
        before = sum(STAGE_WEIGHTS[name] for name in names[: names.index(stage)])
        percent = min(99.0, before + STAGE_WEIGHTS[stage] * min(1.0, max(0.0, fraction)))
        now = time.monotonic()
        if percent < self.percent or (not force and now - self.written_at < PROGRESS_SECONDS):
            return
        self.queue.progress(self.job_id, stage, percent)
        self.written_at, self.percent = now, percent


def _continue_from(config: ServeConfig, job_id: str | None, work) -> str | None:
    """Give a job's work directory the map of the earlier job it continues (its stages then
    update that map); the earlier job's id, or None when there is none or its files are gone."""
    from gridtsne.workdir import ASSIGN_STATE, REDUCE_STATE

    if job_id is None:
        return None
    earlier = config.job_folder(job_id) / "work"
    states = [earlier / name for name in (REDUCE_STATE, ASSIGN_STATE)]
    if not all(state.is_file() and not state.is_symlink() for state in states):
        return None  # deleted since: the job lays its map out afresh and says why
    work.path.mkdir(parents=True, exist_ok=True)
    for state in states:
        shutil.copyfile(state, work.file(state.name))
    return job_id


def standby(root: str, data: str) -> int:
    """A worker started before its job: load the stages' libraries, then wait for a job's id on
    stdin and run it as ``main`` does, its output into the job's log. Exits when stdin closes
    without one (the server stopped) or the server dies."""
    _watch_parent()
    for name in STANDBY_IMPORTS:
        importlib.import_module(name)
    job_id = sys.stdin.readline().strip()
    if not job_id:
        return 0
    folder = ServeConfig(root=Path(root), data=Path(data)).job_folder(job_id)
    log = os.open(folder / "worker.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, sys.stdout.fileno())
    os.dup2(log, sys.stderr.fileno())
    os.close(log)
    print(f"gridtsne worker {os.getpid()}: {STANDBY_TOOK}", flush=True)
    return work(root, data, job_id)


def main(argv: list[str]) -> int:
    if argv[:1] == [STANDBY]:
        return standby(*argv[1:3])
    _watch_parent()
    return work(*argv)


def work(root: str, data: str, job_id: str) -> int:
    """Run the job and record how it ended; the worker's exit code."""
    from gridtsne.errors import GridtsneError, OptionError

    config = ServeConfig(root=Path(root), data=Path(data))
    queue = SqliteQueue(config.database)
    job = queue.get(job_id)
    if job is None:
        return 0
    try:
        results = run_job(config, queue, job)
    except OptionError as error:  # a grid too small for the photos found, ...
        outcome = (FAILED, f"{error.option}: {error.worded(lambda name: repr(name))}", None)
    except GridtsneError as error:
        outcome = (FAILED, str(error), None)
    except MemoryError:
        outcome = (FAILED, "out of memory: try a smaller tile or fewer photos", None)
    except Exception as error:
        if disk_full(error, config.data):
            outcome = (FAILED, f"the disk of the server's --data is full ({error}): the job stopped; "
                       "retry it later, when the server's retention has made room", None)  # fmt: skip
        else:
            traceback.print_exc()  # into the job's worker.log
            outcome = (FAILED, f"unexpected {type(error).__name__}: {error} (a bug in gridtsne)", None)
    else:
        outcome = (SUCCEEDED, None, results)
    try:
        queue.finish(job_id, outcome[0], outcome[1], results=outcome[2])
    except Exception as error:  # the database cannot be written: the dispatcher says why
        if not disk_full(error):
            raise
        return NOT_RECORDED
    return 0


#: Below this many free bytes on the disk of --data, a write that failed is taken for a full disk.
NEARLY_FULL_BYTES = 1 << 20


def disk_full(error: BaseException, folder: Path | None = None) -> bool:
    """Whether an error is a full disk or quota, as the OS or SQLite reports it; or, with
    ``folder``, any OSError while its disk is nearly full (numpy reports a short write as
    "10240 requested and 5088 written", without an errno)."""
    import errno
    import sqlite3

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(error, sqlite3.OperationalError) and "disk is full" in str(error):
        return True
    if isinstance(error, OSError) and folder is not None:
        try:
            return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
        except OSError:
            return False
    return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
