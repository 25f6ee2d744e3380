"""``--cluster``: the per-photo work (embedding, tiles for render) on a Dask cluster.

The driver (the process the user started) stays in charge of everything that
is written: it finds the files, skips what the cache already holds by path,
size and time, sends the rest to the workers in chunks, and writes each
chunk's results into the same content-addressed cache as a local run, one
atomic cache chunk per result, as they arrive. So a driver killed mid-run
resumes from the cache as a local run does, a result that comes back twice
is harmless, and only the photos (and a ``--model`` file) need to be on a
filesystem shared with the workers, under the same absolute paths.

A worker runs pure per-chunk functions (``embed_chunk``, ``tile_chunk``) that
load the model once per process (``photo_model.model_for`` memoises it). A worker
that dies mid-chunk is replaced by the scheduler and the chunk is run again
elsewhere, up to the scheduler's ``allowed-failures``; the run then fails
with a message saying what is kept.

Addresses: ``local`` or ``local:N`` starts a ``LocalCluster`` of N worker
processes on this machine; anything else (``tcp://host:8786``) is the address
of a running ``dask scheduler``. Dask is imported only here, and only when
``--cluster`` is given: it is the optional extra ``gridtsne[dask]``.
"""

from __future__ import annotations

import atexit
import collections
import io
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from gridtsne import images as imagelib
from gridtsne import photo_model
from gridtsne.cache import EmbeddingCache
from gridtsne.errors import GridtsneError, Interrupted, OptionError, StageError
from gridtsne.options import DEFAULT_MODEL, EmbedOptions

LOCAL = "local"
#: Seconds to wait for a scheduler to answer, and for it to have a worker.
CONNECT_SECONDS = 10
#: How many times a chunk may take a worker down with it before the run gives up.
ALLOWED_FAILURES = 3
#: Chunks in flight per worker thread: enough that no worker waits for the driver.
CHUNKS_PER_THREAD = 2
#: Files per tile chunk (tiles are quick: bigger chunks keep the scheduler's share small).
TILES_PER_CHUNK = 64
INSTALL_HINT = "--cluster needs Dask: pip install -e '.[dask]'"

_clients: dict[str, object] = {}


def check_address(address: str) -> str:
    """``local``, ``local:N`` or a scheduler address (``tcp://host:8786``); raises ``OptionError``."""
    if address == LOCAL or address.startswith(LOCAL + ":"):
        workers = address.partition(":")[2]
        if workers and not (workers.isdigit() and int(workers) >= 1):
            raise OptionError("cluster", f"{address!r}: give local:N with N a whole number of workers")
        return address
    if "://" not in address and ":" not in address:
        raise OptionError(
            "cluster", f"{address!r} is neither local[:N] nor a scheduler address such as tcp://host:8786"
        )
    return address


def require_dask() -> None:
    """Fail in one line, before any work, when the extra is not installed."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise StageError(INSTALL_HINT) from None


def client_for(address: str):
    """A connected ``distributed.Client``, one per address per process (``all`` reuses it)."""
    if address in _clients:
        return _clients[address]
    require_dask()
    import dask
    import distributed

    check_address(address)
    if address.startswith(LOCAL):
        workers = int(address.partition(":")[2] or max(1, (os.cpu_count() or 2) // 2))
        with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
            cluster = distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
        client = distributed.Client(cluster)
    else:
        try:
            client = distributed.Client(address, timeout=CONNECT_SECONDS)
        except (OSError, TimeoutError, ValueError) as error:
            raise StageError(
                f"cannot reach the Dask scheduler at {address} ({_first_line(error)}): "
                "start one with `dask scheduler`, or check the address and the firewall"
            ) from None
        try:
            client.wait_for_workers(1, timeout=CONNECT_SECONDS)
        except (TimeoutError, OSError):
            client.close()
            raise StageError(
                f"the Dask scheduler at {address} has no workers: start some with `dask worker {address}`"
            ) from None
    _clients[address] = client
    return client


def shutdown() -> None:
    """Close every client (and the local clusters) this process started."""
    while _clients:
        _, client = _clients.popitem()
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()


atexit.register(shutdown)


def _first_line(error: BaseException) -> str:
    return (str(error) or type(error).__name__).splitlines()[0]


def _missing_here(paths: Sequence[str]) -> list[str]:
    """Run on each worker: which of ``paths`` it cannot see (and whether it can run gridtsne)."""
    return [path for path in paths if not os.path.exists(path)]


def check_workers(client, address: str, samples: Sequence[str]) -> None:
    """Before any work: every worker can import gridtsne and sees the sample paths."""
    try:
        missing = client.run(_missing_here, list(samples))
    except (ImportError, ModuleNotFoundError) as error:
        raise StageError(
            f"the workers of {address} cannot run gridtsne ({_first_line(error)}): "
            "install gridtsne[dask] where they run"
        ) from None
    for worker, paths in sorted(missing.items()):
        if paths:
            raise StageError(
                f"the Dask worker {worker} cannot see {paths[0]}: the photos (and --model) must be on a "
                "filesystem shared with every worker, under the same absolute path"
            )


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _in_order(client, function: Callable, chunks: Iterator[tuple], describe: Callable[[tuple], str]):
    """Submit ``function(*chunk)`` for each chunk, a bounded number in flight; yield (chunk, result)
    in the order the chunks were given. A chunk that took down too many workers ends the run."""
    import distributed

    threads = sum(client.nthreads().values()) or 1
    window = max(2, CHUNKS_PER_THREAD * threads)
    pending: collections.deque = collections.deque()
    try:
        for chunk in chunks:
            pending.append((chunk, client.submit(function, *chunk, pure=False)))
            if len(pending) >= window:
                yield _result(pending.popleft(), describe, distributed)
        while pending:
            yield _result(pending.popleft(), describe, distributed)
    finally:
        client.cancel([future for _, future in pending])


def _result(chunk_future, describe, distributed):
    chunk, future = chunk_future
    try:
        return chunk, future.result()
    except distributed.KilledWorker:
        raise StageError(
            f"{describe(chunk)} took down {ALLOWED_FAILURES} Dask workers in turn (out of memory, or "
            "killed): what finished is kept in the cache; rerun to continue"
        ) from None


# Embedding -----------------------------------------------------------------------------------------


class _NoCache:
    """A worker consults no cache: the driver sent only what its cache lacks."""

    by_sha: dict = {}

    def sha_of_unchanged(self, path: str, size: int, mtime_ns: int) -> None:
        return None


def embed_chunk(paths: list[str], options: dict, jobs: int) -> list[tuple]:
    """Run on a worker: identify, decode and embed ``paths``; for each, in order,
    (bytes, mtime_ns, sha256, (width, height), vector or None, skip reason)."""
    try:
        chosen = EmbedOptions.from_dict(options)
        model = photo_model.model_for(chosen)
    except GridtsneError as error:  # our error types need not survive pickling: say it in words
        raise StageError(f"on a Dask worker: {error}") from None
    prepare = lambda path: photo_model.prepare(path, _NoCache(), model.prep, chosen.max_pixels)  # noqa: E731
    results = []
    for batch in photo_model.prepared_batches([Path(p) for p in paths], prepare, chosen.batch_size, jobs):
        fresh = [item for item in batch if item.array is not None]
        vectors = iter(photo_model.embed_arrays(model, [item.array for item in fresh]) if fresh else [])
        for item in batch:
            vector = next(vectors) if item.array is not None else None
            results.append((item.bytes, item.mtime_ns, item.sha256, item.size, vector, item.reason))
    return results


def embed_files(files: list[Path], cache: EmbeddingCache, options: EmbedOptions, context) -> list:
    """The embed stage's per-photo work on the cluster ``context.cluster``: the same items
    (``photo_model.Item``), in the same order, as a local run. A run that finds everything in
    the cache does not even connect."""
    outcome: list[photo_model.Item | None] = [None] * len(files)
    to_send, visible = [], []
    for index, path in enumerate(files):
        try:
            stat = path.stat()
        except OSError:
            to_send.append(index)  # the worker says why, in the words a local run uses
            continue
        sha = cache.sha_of_unchanged(str(path), stat.st_size, stat.st_mtime_ns)
        if sha is None:
            to_send.append(index)
            visible.append(index)
        else:
            outcome[index] = photo_model.Item(path, stat.st_size, stat.st_mtime_ns, sha)
    shipped = options.to_dict()
    for name in ("model", "preprocess"):
        if shipped[name] not in (None, DEFAULT_MODEL):
            shipped[name] = os.path.abspath(shipped[name])
    client = client_for(context.cluster) if to_send else None
    if to_send:
        samples = [os.path.abspath(files[i]) for i in visible[:1]]
        samples += [
            shipped[name] for name in ("model", "preprocess") if shipped[name] not in (None, DEFAULT_MODEL)
        ]
        check_workers(client, context.cluster, samples)
    chunks = (
        ([os.path.abspath(files[i]) for i in indices], shipped, context.jobs, indices)
        for indices in _chunks(to_send, options.batch_size)
    )
    computed = 0
    bar = tqdm(total=len(files), unit="img", desc="embed", disable=None if context.progress else True,
               file=sys.stderr, initial=len(files) - len(to_send))  # fmt: skip
    try:
        describe = lambda chunk: f"the chunk of {len(chunk[0])} from {chunk[0][0]}"  # noqa: E731
        results = _in_order(client, _embed_remote, chunks, describe) if to_send else ()
        for chunk, returned in results:
            computed += _take(chunk[3], returned, files, cache, outcome)
            bar.update(len(chunk[3]))
            context.on_progress("embed", bar.n / max(1, len(files)))
    except KeyboardInterrupt:
        raise Interrupted(
            f"embed interrupted; the {computed} embeddings made so far are saved in the cache: "
            "run the same command again to continue"
        ) from None
    finally:
        bar.close()
    return outcome


def _embed_remote(paths, options, jobs, indices):
    return embed_chunk(paths, options, jobs)


def _take(indices, returned, files, cache: EmbeddingCache, outcome: list) -> int:
    """Put one chunk's results into the cache (one atomic chunk) and into ``outcome``."""
    records, computed = [], 0
    for index, (size, mtime_ns, sha, pixels, vector, reason) in zip(indices, returned, strict=True):
        item = photo_model.Item(files[index], size, mtime_ns, sha, tuple(pixels), reason=reason)
        outcome[index] = item
        if reason:
            continue
        known = cache.by_sha.get(sha)
        if known is None:  # new content: keep the vector the worker made
            records.append(photo_model.cache_record(item, np.asarray(vector, dtype=np.float32)))
            item.computed, computed = True, computed + 1
        elif cache.sha_of_unchanged(str(item.path), size, mtime_ns) is None:
            records.append(photo_model.cache_record(item, known.vector, known))  # known content, a new name
    cache.add(records)
    return computed


# Tiles ---------------------------------------------------------------------------------------------


def tile_chunk(paths: list[str], tile_px: int, fit: str) -> list[tuple]:
    """Run on a worker: for each path, (content sha256, tile as PNG bytes, stamp) or (None, None, reason)."""
    from gridtsne import tiles

    maker = tiles.Tiles(None, tile_px, fit)
    results = []
    for path in paths:
        try:
            stat = os.stat(path)
            sha = imagelib.content_hash(Path(path))
            tile = maker.tile({"path": path})
            buffer = io.BytesIO()
            tile.save(buffer, format="PNG", compress_level=tiles.CACHE_COMPRESS_LEVEL)
            results.append((sha, buffer.getvalue(), [path, stat.st_size, stat.st_mtime_ns]))
        except imagelib.UnreadableImage as error:
            results.append((None, None, str(error)))
        except OSError as error:
            results.append((None, None, f"unreadable: {error.strerror or error}"))
    return results


def tiles_in_order(maker, entries: list[dict], order: list[int], jobs: int, address: str) -> Iterator[tuple]:
    """``tiles.in_order`` on the cluster: what the tile cache has is read here, the rest made on
    the workers and stored in the cache here. Yields (index, tile or None, reason) in ``order``,
    holding at most one window of tiles (a few per worker thread) at a time."""
    client = client_for(address)
    if order:
        check_workers(client, address, [os.path.abspath(entries[order[0]]["path"])])
    threads = sum(client.nthreads().values()) or 1
    window = max(2, CHUNKS_PER_THREAD * threads) * TILES_PER_CHUNK
    for part in _chunks(order, window):
        ready: dict[int, tuple] = {}
        for index in part:
            tile = maker.cached_tile(entries[index])
            if tile is not None:
                ready[index] = (tile, None)
        to_make = [index for index in part if index not in ready]
        chunks = (
            ([os.path.abspath(entries[i]["path"]) for i in indices], maker.tile_px, maker.fit, indices)
            for indices in _chunks(to_make, TILES_PER_CHUNK)
        )
        describe = lambda chunk: f"the tiles of {chunk[0][0]} and on"  # noqa: E731
        for chunk, returned in _in_order(client, _tiles_remote, chunks, describe):
            for index, (sha, png, stamp_or_reason) in zip(chunk[3], returned, strict=True):
                if sha is None:
                    ready[index] = (None, stamp_or_reason)
                    continue
                with Image.open(io.BytesIO(png)) as image:
                    tile = image.convert("RGB")
                maker.store_made(sha, tile, stamp_or_reason)
                ready[index] = (tile, None)
        for index in part:
            yield (index, *ready.pop(index))


def _tiles_remote(paths, tile_px, fit, indices):
    return tile_chunk(paths, tile_px, fit)
