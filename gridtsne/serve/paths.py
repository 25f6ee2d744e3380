"""What a request may name: photos under --root and uploads under --data, and nothing else.

Every check on the words of a path (``..``, absolute, NUL, backslashes,
percent-encoding, control characters) is made before any file is touched;
only then is the path resolved, and a symlink that leads out of the root is
refused. Ids are checked against their exact shape, so that no id from a
request is used as a file name unchecked.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path, PurePosixPath

JOB_ID = re.compile(r"[0-9a-f]{32}")
INPUT_ID = re.compile(r"[0-9a-f]{64}")
#: Longest path a request may name, in characters.
MAX_PATH_CHARS = 4096


class PathRefused(ValueError):
    """A path a request may not name; ``str()`` says why."""


def check_words(given: object) -> PurePosixPath:
    """The relative POSIX path ``given`` names, or PathRefused, without touching the disk."""
    if not isinstance(given, str):
        raise PathRefused(f"{given!r} is not a string")
    if not given or len(given) > MAX_PATH_CHARS:
        raise PathRefused("a path must have 1 to 4096 characters")
    if any(ord(char) < 32 or ord(char) == 127 for char in given):
        raise PathRefused(f"{given!r} holds a control character (NUL, newline, ...)")
    if "\\" in given:
        raise PathRefused(f"{given!r} holds a backslash: separate folders with /")
    if urllib.parse.unquote(given) != given:
        raise PathRefused(f"{given!r} is percent-encoded: name the file as it is spelt on disk")
    if given.startswith(("/", "~")):
        raise PathRefused(f"{given!r} is absolute: name it relative to the server's root")
    path = PurePosixPath(given)
    if ".." in path.parts:
        raise PathRefused(f"{given!r} climbs out with '..'")
    return path


def resolve_under(root: Path, given: object) -> Path:
    """``given`` (relative to ``root``) as an existing path that stays inside ``root``."""
    relative = check_words(given)
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise PathRefused(f"{given!r} leads out of the root (a symbolic link)")
    if not path.exists():
        raise PathRefused(f"{given!r}: no such file or folder under the root")
    return path


def inside(folder: Path, path: Path) -> bool:
    """Whether ``path``, links resolved, lies in ``folder`` (already resolved)."""
    try:
        return path.resolve().is_relative_to(folder)
    except (OSError, RuntimeError):  # a link loop
        return False
