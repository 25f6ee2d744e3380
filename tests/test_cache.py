"""cache: a cache shared by several processes loses no vector; a damaged chunk only costs a recompute."""

import io
import zipfile

import numpy as np
import pytest

from gridtsne import embed
from gridtsne.cache import EmbeddingCache, Record
from gridtsne.workdir import Workdir

KEY = "model-0123456789abcdef"


def record(sha: str, value: float = 1.0) -> Record:
    return Record(f"/photos/{sha}.jpg", 10, 20, sha, 64, 48, np.full(4, value, np.float32))


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
    (tmp_path / KEY / "chunk-damaged.npz").write_bytes(UNREADABLE[damage])
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
    first = embed.run(work, [colour_photos[0].parent], model=model, progress=False)
    (chunk,) = (tmp_path / "work" / "cache").glob("*/*.npz")
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    again = embed.run(work, [colour_photos[0].parent], model=model, progress=False)
    assert (again["embedded"], again["computed"]) == (first["embedded"], first["embedded"])
