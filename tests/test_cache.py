"""cache: a cache shared by several processes loses no vector; a damaged chunk only costs a recompute."""

import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from gridtsne import embed
from gridtsne.cache import COMPACT_ABOVE, EmbeddingCache, Record
from gridtsne.options import EmbedOptions
from gridtsne.workdir import Workdir

from .conftest import REPO

KEY = "model-0123456789abcdef"


def record(sha: str, value: float = 1.0) -> Record:
    return Record(f"/photos/{sha}.jpg", 10, 20, sha, 64, 48, np.full(4, value, np.float32))


def add_one_chunk_each(cache: EmbeddingCache, shas) -> None:
    for sha in shas:
        cache.add([record(sha)])


def test_a_compaction_keeps_chunks_another_process_wrote_after_it_loaded(tmp_path):
    compacting = EmbeddingCache(tmp_path, KEY)
    other = EmbeddingCache(tmp_path, KEY)
    other.add([record("written-by-the-other")])  # after `compacting` looked at the folder
    add_one_chunk_each(compacting, [f"own-{i}" for i in range(COMPACT_ABOVE + 1)])
    compacting.compact()
    reloaded = EmbeddingCache(tmp_path, KEY)
    assert "written-by-the-other" in reloaded.by_sha
    assert len(reloaded) == COMPACT_ABOVE + 2
    assert len(list((tmp_path / KEY).glob("*.npz"))) == 2  # the merged chunk and the other's


# Each worker adds ROUNDS x PER_ROUND records, one chunk each, and compacts after every round.
WORKER = """
import pathlib, sys, time
import numpy as np
from gridtsne.cache import EmbeddingCache, Record
root, key, tag, go, rounds, per_round = sys.argv[1:]
while not pathlib.Path(go).exists():
    time.sleep(0.001)
for r in range(int(rounds)):
    cache = EmbeddingCache(root, key)
    for i in range(int(per_round)):
        sha = f"{tag}-{r}-{i}"
        cache.add([Record(f"/photos/{sha}.jpg", 1, 2, sha, 16, 16, np.full(4, i, np.float32))])
    cache.compact()
"""


def test_two_processes_writing_and_compacting_one_cache_lose_no_vector(tmp_path):
    rounds, per_round = 4, COMPACT_ABOVE + 2
    go = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path), KEY, tag, str(go), str(rounds), str(per_round)],
            cwd=REPO,
            stderr=subprocess.PIPE,
        )
        for tag in ("a", "b")
    ]
    go.touch()  # both start at once
    for worker in workers:
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr.decode()
    cached = EmbeddingCache(tmp_path, KEY)
    wanted = {f"{tag}-{r}-{i}" for tag in "ab" for r in range(rounds) for i in range(per_round)}
    assert wanted - set(cached.by_sha) == set()


def test_a_reader_never_sees_a_chunk_vanish_while_a_compaction_runs(tmp_path, monkeypatch):
    writer = EmbeddingCache(tmp_path, KEY)
    add_one_chunk_each(writer, [f"x-{i}" for i in range(COMPACT_ABOVE + 1)])
    # A compaction started while a reader holds the folder waits its turn, here: it is skipped.
    monkeypatch.setattr(np, "load", _compact_during_load(writer, np.load))
    reader = EmbeddingCache(tmp_path, KEY)
    assert len(reader) == COMPACT_ABOVE + 1
    monkeypatch.undo()
    writer.compact()  # now nobody reads: it merges
    assert len(list((tmp_path / KEY).glob("*.npz"))) == 1
    assert len(EmbeddingCache(tmp_path, KEY)) == COMPACT_ABOVE + 1


def _compact_during_load(writer, load):
    def load_then_compact(*args, **kwargs):
        writer.compact()
        return load(*args, **kwargs)

    return load_then_compact


def npz_bytes(**columns) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **columns)
    return buffer.getvalue()


def good_columns(rows=2, dimension=4):
    return {
        "sha256": np.array([f"s{i}" for i in range(rows)]),
        "path": np.array([f"/p{i}.jpg" for i in range(rows)]),
        "bytes": np.ones(rows, np.int64),
        "mtime_ns": np.ones(rows, np.int64),
        "size": np.ones((rows, 2), np.int32),
        "vectors": np.ones((rows, dimension), np.float32),
    }


def without(name):
    columns = good_columns()
    del columns[name]
    return columns


UNREADABLE = {
    "cut short": npz_bytes(**good_columns())[:300],
    "cut at the end": npz_bytes(**good_columns())[:-10],
    "empty": b"",
    "text": b"not a zip file at all",
    "a column missing": npz_bytes(**without("vectors")),
    "a column of one number": npz_bytes(**{**good_columns(), "bytes": np.int64(1)}),
    "ragged columns": npz_bytes(**{**good_columns(), "path": np.array(["/only-one.jpg"])}),
    "pickled objects": npz_bytes(**{**good_columns(), "sha256": np.array([object(), 1], dtype=object)}),
    "vectors not numbers": npz_bytes(**{**good_columns(), "vectors": np.array([["a"] * 4] * 2)}),
    "vectors not finite": npz_bytes(**{**good_columns(), "vectors": np.full((2, 4), np.nan, np.float32)}),
    "vectors of another length": npz_bytes(**good_columns(dimension=3)),
}


@pytest.mark.parametrize("damage", UNREADABLE, ids=list(UNREADABLE))
def test_an_unreadable_chunk_counts_as_missing(tmp_path, damage):
    cache = EmbeddingCache(tmp_path, KEY)
    cache.add([record("good")])
    # Named to be read last: the first chunk read sets the vector length the others must have.
    (tmp_path / KEY / "chunk-~damaged.npz").write_bytes(UNREADABLE[damage])
    reloaded = EmbeddingCache(tmp_path, KEY)
    assert set(reloaded.by_sha) == {"good"}
    reloaded.add([record("more")])
    assert set(EmbeddingCache(tmp_path, KEY).by_sha) == {"good", "more"}


def test_a_zip_member_damaged_inside_counts_as_missing(tmp_path):
    data = bytearray(npz_bytes(**good_columns()))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        member = archive.getinfo("vectors.npy")
    last_byte = member.header_offset + 30 + len(member.filename) + len(member.extra) + member.file_size - 1
    data[last_byte] ^= 0xFF  # a bit flip in the last vector: only the zip's CRC tells
    (tmp_path / KEY).mkdir()
    (tmp_path / KEY / "chunk-flipped.npz").write_bytes(bytes(data))
    assert len(EmbeddingCache(tmp_path, KEY)) == 0


def test_embed_recomputes_what_a_truncated_chunk_held(tmp_path, colour_photos, model):
    work = Workdir(tmp_path / "work")
    first = embed.run(work, EmbedOptions(paths=[colour_photos[0].parent]))
    (chunk,) = (tmp_path / "work" / "cache").glob("*/*.npz")
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    again = embed.run(work, EmbedOptions(paths=[colour_photos[0].parent]))
    assert (again["embedded"], again["computed"]) == (first["embedded"], first["embedded"])


# Pruning: `gridtsne cache prune` drops what no run used lately, and never what another run just wrote.


def age_everything(folder, days: float) -> None:
    """Make every file of a cache look ``days`` old (written and last used then)."""
    import os
    import time

    then = time.time() - days * 86400
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


def test_a_prune_by_age_keeps_what_a_run_used_lately(tmp_path):
    young, old = "a" * 64, "b" * 64
    cache = EmbeddingCache(tmp_path, KEY)
    cache.add([record(young), record(old)])
    age_everything(tmp_path / KEY, days=40)
    EmbeddingCache(tmp_path, KEY).note_used([young])  # a run found it in the cache today
    report = EmbeddingCache(tmp_path, KEY).prune(older_than_seconds=30 * 86400)
    assert (report["removed"], report["kept"]) == (1, 1)
    assert set(EmbeddingCache(tmp_path, KEY).by_sha) == {young}
    assert report["freed_bytes"] > 0


def test_a_prune_by_size_keeps_the_most_recently_used(tmp_path):
    import os
    import time

    shas = [f"{i:064x}" for i in range(20)]
    cache = EmbeddingCache(tmp_path, KEY)
    for i, sha in enumerate(shas):  # sha i used i days ago
        cache.add([record(sha)])
        chunk = max((tmp_path / KEY).glob("*.npz"), key=os.path.getctime)
        os.utime(chunk, (time.time() - i * 86400,) * 2)
    everything = EmbeddingCache(tmp_path, KEY).disk_bytes()
    EmbeddingCache(tmp_path, KEY).prune(max_bytes=everything // 4)
    kept = set(EmbeddingCache(tmp_path, KEY).by_sha)
    assert 0 < len(kept) < 10
    assert kept == set(shas[: len(kept)])  # the newest ones
    assert EmbeddingCache(tmp_path, KEY).disk_bytes() <= everything // 4 * 1.5
    EmbeddingCache(tmp_path, KEY).prune(max_bytes=0)
    assert len(EmbeddingCache(tmp_path, KEY)) == 0


def test_a_prune_keeps_the_chunks_another_process_wrote_after_it_looked(tmp_path, monkeypatch):
    pruning = EmbeddingCache(tmp_path, KEY)
    pruning.add([record("a" * 64)])
    age_everything(tmp_path / KEY, days=40)
    other = EmbeddingCache(tmp_path, KEY)
    read_all = EmbeddingCache._read_all

    def read_then_another_writes(self):
        read_all(self)
        if self is pruning:
            other.add([record("c" * 64)])  # lands after the prune listed the folder

    monkeypatch.setattr(EmbeddingCache, "_read_all", read_then_another_writes)
    pruning.prune(max_bytes=0)
    monkeypatch.undo()
    assert set(EmbeddingCache(tmp_path, KEY).by_sha) == {"c" * 64}


PRUNER = """
import sys, time
from gridtsne.cache import prune
root, ready, stop = sys.argv[1:]
import pathlib
rounds = 0
while not pathlib.Path(stop).exists():
    prune(root, older_than_seconds=3600)
    rounds += 1
    pathlib.Path(ready).touch()
print(rounds)
"""


def test_pruning_over_and_over_during_an_embed_loses_no_vector(tmp_path, colour_photos):
    """A prune by age running again and again beside an embed into the same cache: the embed
    finishes whole and afterwards the cache holds every vector it made."""
    import time

    ready, stop = tmp_path / "ready", tmp_path / "stop"
    pruner = subprocess.Popen([sys.executable, "-c", PRUNER, str(tmp_path / "cache"), str(ready), str(stop)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        while not ready.exists() and pruner.poll() is None:
            time.sleep(0.01)
        work = Workdir(tmp_path / "work")
        first = embed.run(work, EmbedOptions(paths=[colour_photos[0].parent], cache=str(tmp_path / "cache"),
                                             batch_size=1))  # fmt: skip
    finally:
        stop.touch()
        rounds, errors = pruner.communicate(timeout=60)
    assert pruner.returncode == 0, errors.decode()
    assert int(rounds) > 1
    options = EmbedOptions(paths=[colour_photos[0].parent], cache=str(tmp_path / "cache"))
    again = embed.run(Workdir(tmp_path / "again"), options)
    assert first["embedded"] == len(colour_photos)
    assert (again["embedded"], again["computed"]) == (len(colour_photos), 0)
    assert np.array_equal(work.load_embeddings(), Workdir(tmp_path / "again").load_embeddings())


def test_cache_status_and_prune_report_what_they_hold_and_free(cli, tmp_path, colour_photos):
    work = tmp_path / "work"
    assert cli("all", colour_photos[0].parent, tmp_path / "out.jpg", "-w", work, "--tile", 16).exit_code == 0
    status = cli("cache", "status", "-w", work)
    assert f"{len(colour_photos)} vectors" in status.output and f"{len(colour_photos)} tiles" in status.output
    age_everything(work / "cache", days=40)
    age_everything(work / "thumbs", days=40)
    pruned = json.loads(cli("cache", "prune", "-w", work, "--older-than", "30d", "--json").output)
    assert pruned["embeddings"][0]["removed"] == len(colour_photos)
    assert pruned["tiles"]["removed"] == len(colour_photos) and pruned["tiles"]["freed_bytes"] > 0
    assert not list((work / "thumbs").rglob("*.tile"))
    bad = cli("cache", "prune", "-w", work, "--max-size", "five gigs")
    assert bad.exit_code == 2 and "'five gigs' is not a size" in bad.output
