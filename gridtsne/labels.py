"""Labels of photos (``render --labels``): read them, and match them to the photos of a layout.

Labels come as a CSV file of ``path,label`` rows (a header row ``path,label`` is
optional; paths absolute or relative to the CSV's folder), or inline as a list of
``(path, label)`` pairs (the service's form). A photo and a labelled path are the
same when their resolved paths are (links of their folders followed), so
``./a/../b.jpg`` labels ``b.jpg``. Every error names the file and the line (or
the item of an inline list): a user with 10,000 rows must find the bad one.
A labelled path that is no photo of the layout is not an error (the CSV may
cover more photos than one map); the caller reports how many, with examples.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Control characters (C0, DEL, C1) become spaces: a label is one line of text.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class LabelsError(ValueError):
    """A labels file or list that cannot be used; ``str()`` names the file and line."""


@dataclass(frozen=True)
class Label:
    """One labelled path: as resolved, its label, and where it was given (for messages)."""

    path: str
    label: str
    where: str


def clean_label(text: str) -> str:
    """A label as shown: control characters as spaces, outer spaces dropped."""
    return CONTROL.sub(" ", text).strip()


def read_csv(path: str | os.PathLike) -> list[Label]:
    """The rows of a labels CSV file, paths resolved against its folder; LabelsError if unusable."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise LabelsError(f"{name}: cannot read the labels file: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise LabelsError(f"{name}, line {line}: not UTF-8 text; save the labels as UTF-8 CSV") from None
    base = os.path.dirname(os.path.abspath(name))
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[str, str, str]] = []
    first = True
    try:
        for row in reader:
            where = f"{name}, line {reader.line_num}"
            if not row or all(not cell.strip() for cell in row):
                continue
            if first and [cell.strip().lower() for cell in row] == ["path", "label"]:
                first = False
                continue
            first = False
            if len(row) != 2:
                raise LabelsError(f"{where}: {len(row)} columns; each row is path,label")
            rows.append((row[0], row[1], where))
    except csv.Error as error:
        raise LabelsError(f"{name}, line {reader.line_num}: not CSV: {error}") from None
    return checked(rows, base)


def from_pairs(pairs: Iterable[Sequence[str]], base: str | None = None) -> list[Label]:
    """Inline labels, ``(path, label)`` pairs; relative paths against ``base`` (the working folder)."""
    rows = [(path, label, f"labels item {index}") for index, (path, label) in enumerate(pairs, start=1)]
    return checked(rows, base or os.getcwd())


def checked(rows: list[tuple[str, str, str]], base: str) -> list[Label]:
    """Rows -> labels: no empty path or label, no path given twice with two labels."""
    labels: list[Label] = []
    seen: dict[str, Label] = {}
    resolve = _Resolver(base)
    for given, text, where in rows:
        if not given.strip():
            raise LabelsError(f"{where}: the path is empty")
        label = clean_label(text)
        if not label:
            raise LabelsError(f"{where}: the label of {given!r} is empty")
        entry = Label(resolve(given), label, where)
        before = seen.get(entry.path)
        if before is None:
            seen[entry.path] = entry
            labels.append(entry)
        elif before.label != label:
            raise LabelsError(
                f"{where}: {given!r} is labelled {label!r} here and {before.label!r} on {before.where}"
            )
    return labels


class _Resolver:
    """A path -> its resolved form: its folder's links followed (each folder resolved once, since
    a collection has many photos and few folders), its own name kept."""

    def __init__(self, base: str):
        self.base = base
        self.folders: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        full = os.path.abspath(os.path.join(self.base, os.path.expanduser(path)))
        folder, name = os.path.split(full)
        if folder not in self.folders:
            self.folders[folder] = os.path.realpath(folder)
        return os.path.join(self.folders[folder], name)


def match(labels: list[Label], photo_paths: Sequence[str]) -> tuple[list[str], list[Label]]:
    """Each photo's label ("" for none), and the labels whose path is no photo of ``photo_paths``."""
    by_path = {entry.path: entry.label for entry in labels}
    resolve = _Resolver(os.getcwd())
    resolved = [resolve(path) for path in photo_paths]
    used = set(resolved)
    return [by_path.get(path, "") for path in resolved], [e for e in labels if e.path not in used]


def table(per_photo: Sequence[str]) -> tuple[list[str], list[int]]:
    """The labels in use, most common first (then by name), and each photo's index into them
    plus one (0: no label) - the compact form the web page reads."""
    counts: dict[str, int] = {}
    for label in per_photo:
        if label:
            counts[label] = counts.get(label, 0) + 1
    names = sorted(counts, key=lambda label: (-counts[label], label))
    index = {label: i + 1 for i, label in enumerate(names)}
    return names, [index.get(label, 0) for label in per_photo]
