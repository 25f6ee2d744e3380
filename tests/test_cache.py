"""cache: a cache shared by several processes loses no vector; a damaged chunk only costs a recompute."""

import io
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
