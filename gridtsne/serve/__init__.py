"""``gridtsne serve``: the asynchronous visualization API over HTTP (docs/serve.md).

``app`` (FastAPI routes and the JSON envelope), ``jobs`` (the job store behind
the small ``Queue`` interface, SQLite by default), ``worker`` (the dispatcher
that runs each job in its own process, and that process's entry point),
``paths`` (what a request may name, checked before any file is opened).
Nothing here is imported by the stages: the service sits on top of them.
"""

from __future__ import annotations

from gridtsne.serve.config import ServeConfig

__all__ = ["ServeConfig"]
