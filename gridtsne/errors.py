"""The errors a user may see: each one a sentence that says what to do.

Pure functions over arrays raise ``ValueError``/``TypeError`` naming their own
parameter; the stage layer turns what a user can fix into one of these, and
each front end (the CLI, the HTTP service) words them in its own terms.
Anything else that escapes is a bug.
"""

from __future__ import annotations

import re
from collections.abc import Callable


class GridtsneError(Exception):
    """A problem the user can fix; ``str()`` says what to do."""


class StageError(GridtsneError):
    """A stage cannot run: a missing or damaged artifact, nothing to embed, a file in the way."""


class OptionError(GridtsneError, ValueError):
    """An option's value is refused.

    ``option`` is the option's name as the options dataclasses spell it
    (``tile``, ``pca_dims``). The message may name other options as
    ``{name}``; ``worded`` fills them in the caller's terms (``--subset`` on the
    command line, ``"subset"`` in JSON).
    """

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option
        self.template = message

    def worded(self, name_of: Callable[[str], str]) -> str:
        return re.sub(r"\{(\w+)\}", lambda match: name_of(match[1]), self.template)

    def __str__(self) -> str:
        return f"{self.option}: {self.worded(str)}"


class OptionMismatch(OptionError):
    """An option's value that is valid but does not suit this data (a grid too small for
    the images): found by a stage at work, so on the command line a failure (exit 1), not a
    usage error."""


class Interrupted(GridtsneError):
    """Ctrl-C, with a message saying how far the work got and what was kept."""
