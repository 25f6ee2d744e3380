"""Stage 1, embed: one feature vector per image from a CNN run by onnxruntime.

Finds the photos and runs the per-photo work of ``photo_model.py`` over them:
here, or (``--cluster``) on Dask through ``cluster.py``, which uses
``photo_model.py`` too and never this module. Writes ``images.json`` (every
file looked at: embedded, or skipped with its reason), ``embeddings.npy``
(float32 N x D, row i = image i) and the ``embed.json`` manifest. Photos are
decoded on threads while the model runs, and every vector goes into the
content-addressed cache (``cache.py``) as its batch completes, so nothing is
computed twice and an interrupted run resumes.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gridtsne import images as imagelib
from gridtsne import photo_model
from gridtsne.cache import ENV_VAR as CACHE_ENV_VAR
from gridtsne.cache import EmbeddingCache
from gridtsne.errors import Interrupted, StageError
from gridtsne.options import EmbedOptions
from gridtsne.stage import Context, Plan, Stage
from gridtsne.workdir import EMBEDDINGS, IMAGES, Workdir, save_json, save_npy


def in_shard(path: Path, shard: tuple[int, int]) -> bool:
    """Whether ``path`` belongs to shard K of N: a stable hash of its name decides."""
    index, count = shard
    return int(hashlib.sha1(str(path).encode()).hexdigest(), 16) % count == index - 1


def default_cache_dir(workdir: Workdir) -> Path:
    """``$GRIDTSNE_CACHE`` to share one cache between work directories, else ``WORK/cache``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or workdir.file("cache"))


def _find(options: EmbedOptions) -> imagelib.Found:
    return imagelib.find_images(options.paths, options.ext, options.exclude, options.hidden)


class EmbedStage(Stage):
    """Every image under the paths -> ``images.json`` and ``embeddings.npy``."""

    name = "embed"
    options_type = EmbedOptions
    writes = (IMAGES, EMBEDDINGS)

    def plan(self, workdir: Workdir, options: EmbedOptions) -> Plan:
        model = photo_model.model_for(options)
        found = _find(options)
        parameters = {
            **options.freshness(),
            "paths": [os.path.abspath(p) for p in options.paths],
            "ext": sorted(options.ext),
            "model": model.describe(),
        }
        return Plan(parameters, {"files": imagelib.fingerprint(found.files)}, (model, found))

    def inputs(self, workdir: Workdir, options: EmbedOptions) -> dict:
        """Which files exist now, with their sizes and times."""
        return {"files": imagelib.fingerprint(_find(options).files)}

    def run(self, workdir, options=None, context=None, *, skip_if_fresh=False) -> dict:
        options = self.coerce(options)
        if options.shard is not None:
            return fill_cache(workdir, options, context or Context())
        return super().run(workdir, options, context, skip_if_fresh=skip_if_fresh)

    def compute(self, workdir: Workdir, options: EmbedOptions, context: Context, prepared) -> dict:
        model, found = prepared
        embedded, vectors, skipped, results = _embed_found(workdir, options, context, model, found)
        if not embedded:
            raise StageError(
                f"no image could be embedded from {', '.join(map(str, options.paths))}"
                + (
                    f" ({len(skipped)} skipped: {describe_skips(results['skipped_by_reason'])})"
                    if skipped
                    else ""
                )
            )
        save_npy(workdir.file(EMBEDDINGS), np.stack(vectors).astype(np.float32))
        left_out = {**found.left_out, "extensions": found.other_extensions} if found.left_out else {}
        save_json(workdir.file(IMAGES), {"images": embedded, "skipped": skipped, "left_out": left_out})
        return {
            **results,
            "dimension": len(vectors[0]),
            "left_out": sum(found.left_out.values()),
            "left_out_by_kind": found.left_out,
            "other_extensions": found.other_extensions,
        }

    def describe(self, summary: dict) -> str:
        shard = f" (shard {summary['shard']}, into the cache)" if "shard" in summary else ""
        reused = f" ({summary['reused']} from cache)" if summary["reused"] else ""
        skipped = (
            f", {summary['skipped']} skipped: {describe_skips(summary['skipped_by_reason'])}"
            if summary["skipped"]
            else ""
        )
        left_out = f", left out: {describe_left_out(summary)}" if summary.get("left_out") else ""
        return f"embed: {summary['embedded']} images embedded{shard}{reused}{skipped}{left_out}"


STAGE = EmbedStage()


def run(
    workdir: Workdir,
    options: EmbedOptions | dict | None = None,
    context: Context | None = None,
    *,
    skip_if_fresh: bool = False,
) -> dict:
    """Embed every image under ``options.paths`` into ``workdir``; returns a summary.

    With ``options.shard=(K, N)`` only the K-th of N slices is embedded, into the
    cache alone; a later run without a shard assembles every slice from it.
    """
    return STAGE.run(workdir, options, context, skip_if_fresh=skip_if_fresh)


def fill_cache(workdir: Workdir, options: EmbedOptions, context: Context) -> dict:
    """Embed the shard ``options.shard`` of the inputs into the cache alone: no artifact, no manifest."""
    started = time.perf_counter()
    embedded, _, _, results = _embed_found(
        workdir, options, context, photo_model.model_for(options), _find(options)
    )
    shard = f"{options.shard[0]}/{options.shard[1]}"
    return {"stage": "embed", "ran": True, "shard": shard, **results,
            "seconds": round(time.perf_counter() - started, 3)}  # fmt: skip


def _embed_found(
    workdir: Workdir, options: EmbedOptions, context: Context, model: photo_model.Model, found
) -> tuple:
    """Embed the files found (those of ``options.shard`` only, if set) through the cache:
    the images.json entries, their vectors, the skipped files, and the counts."""
    cache = EmbeddingCache(options.cache or default_cache_dir(workdir), model.cache_key)
    files = [path for path in found.files if options.shard is None or in_shard(path, options.shard)]
    if not context.cluster:
        model.load()  # a missing provider or a model that does not fit: said before any work
    if context.cluster:  # the same items, made on a Dask cluster (imported only then)
        from gridtsne import cluster

        outcome = cluster.embed_files(files, cache, options, context)
    else:
        outcome = _embed_files(files, cache, model, options.batch_size, context.jobs, options.max_pixels,
                               context.progress, lambda done: context.on_progress("embed", done))  # fmt: skip
    embedded, vectors = [], []
    skipped = [{"path": str(path), "reason": reason} for path, reason in found.skipped]
    for item in outcome:
        if item.reason:
            skipped.append({"path": str(item.path), "reason": item.reason})
            continue
        record = cache.by_sha[item.sha256]
        embedded.append({"path": str(item.path), "bytes": item.bytes, "sha256": item.sha256,
                         "width": record.width, "height": record.height})  # fmt: skip
        vectors.append(record.vector)
    computed = sum(item.computed for item in outcome)
    results = {
        "embedded": len(embedded),
        "computed": computed,
        "reused": len(embedded) - computed,
        "skipped": len(skipped),
        "skipped_by_reason": dict(collections.Counter(imagelib.reason_kind(s["reason"]) for s in skipped)),
    }
    cache.note_used([item.sha256 for item in outcome if not item.reason and not item.computed])
    if options.shard is None and embedded:
        cache.compact()
    return embedded, vectors, skipped, results


def _embed_files(
    files: list[Path],
    cache: EmbeddingCache,
    model: photo_model.Model,
    batch_size: int,
    jobs: int,
    max_pixels: int,
    progress: bool,
    on_progress=lambda fraction: None,
) -> list[photo_model.Item]:
    """Run the model over every file not yet cached, saving each batch as it completes."""
    outcome: list[photo_model.Item] = []
    computed = 0
    batches = photo_model.prepared_batches(
        files, lambda path: photo_model.prepare(path, cache, model.prep, max_pixels), batch_size, jobs
    )
    bar = tqdm(
        total=len(files), unit="img", desc="embed", disable=None if progress else True, file=sys.stderr
    )
    try:
        with contextlib.closing(batches):
            for batch in batches:
                fresh = [item for item in batch if item.array is not None]
                vectors = photo_model.embed_arrays(model, [item.array for item in fresh]) if fresh else []
                records = [
                    photo_model.cache_record(item, vector)
                    for item, vector in zip(fresh, vectors, strict=True)
                ]
                # Known content under a new name or time: index it, so the next run need not read it.
                records += [
                    photo_model.cache_record(
                        item, cache.by_sha[item.sha256].vector, cache.by_sha[item.sha256]
                    )
                    for item in batch
                    if item.array is None
                    and not item.reason
                    and cache.sha_of_unchanged(str(item.path), item.bytes, item.mtime_ns) is None
                ]
                cache.add(records)
                for item in fresh:
                    item.array, item.computed = None, True
                computed += len(fresh)
                outcome.extend(batch)
                bar.update(len(batch))
                on_progress(len(outcome) / len(files))
    except KeyboardInterrupt:
        raise Interrupted(
            f"embed interrupted after {len(outcome)} of {len(files)} files; the {computed} embeddings "
            "made so far are saved in the cache: run the same command again to continue"
        ) from None
    finally:
        bar.close()
    return outcome


def describe_left_out(summary: dict) -> str:
    """``"30 not an image extension (.txt 10, .json 8, ...), 2 hidden files"``: what a walk left
    out, so that every file in a folder is accounted for."""
    extensions = sorted(summary.get("other_extensions", {}).items(), key=lambda item: (-item[1], item[0]))
    shown = ", ".join(f"{suffix} {count}" for suffix, count in extensions[:5])
    more = ", ..." if len(extensions) > 5 else ""
    parts = []
    for kind, count in sorted(summary["left_out_by_kind"].items(), key=lambda item: (-item[1], item[0])):
        detail = f" ({shown}{more})" if kind == "not an image extension" and shown else ""
        plural = "s" if count != 1 and kind.startswith("hidden") else ""
        parts.append(f"{count} {kind}{plural}{detail}")
    return ", ".join(parts)


def describe_skips(by_reason: dict[str, int]) -> str:
    """``{"not an image": 2, "truncated": 1}`` -> ``"2 not an image, 1 truncated"``."""
    ordered = sorted(by_reason.items(), key=lambda kind_count: (-kind_count[1], kind_count[0]))
    return ", ".join(f"{count} {kind}" for kind, count in ordered)
