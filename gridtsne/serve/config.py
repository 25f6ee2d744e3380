"""What the server was started with, and where under --data it keeps things."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

#: Bytes one uploaded file may have (``--max-upload-mb``).
DEFAULT_MAX_UPLOAD_MB = 32
#: Files one upload request may carry (``--max-files``).
DEFAULT_MAX_FILES = 100
#: Jobs that may wait in the queue before a submit is answered 429 (``--queue-limit``).
DEFAULT_QUEUE_LIMIT = 100
#: Days a finished job's files and an unused upload are kept (``--keep-days``).
DEFAULT_KEEP_DAYS = 7.0
#: Most GB (10^9 bytes) that --data may hold before the oldest finished jobs go (``--max-data-gb``).
DEFAULT_MAX_DATA_GB = 10.0


def default_workers() -> int:
    """Jobs at once: each is one process using up to 2 cores for decoding and the model."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: The shortest token accepted.
MIN_TOKEN_CHARS = 16


def read_tokens(path: str) -> tuple[str, ...]:
    """The tokens of a token file: one per line; blank lines and lines starting with # are skipped.

    Raises ValueError naming the line of a token that is too short."""
    tokens = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            token = line.strip()
            if not token or token.startswith("#"):
                continue
            if len(token) < MIN_TOKEN_CHARS:
                raise ValueError(
                    f"the token on line {number} of {path} is shorter than {MIN_TOKEN_CHARS} characters"
                )
            tokens.append(token)
    if not tokens:
        raise ValueError(f"{path} holds no token")
    return tuple(tokens)


@dataclass(frozen=True)
class ServeConfig:
    """The server's settings; the folders are absolute and resolved."""

    root: Path
    data: Path
    workers: int = 1
    #: The tokens clients may send, one per client or team; empty: no token needed (loopback only).
    tokens: tuple[str, ...] = ()
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1024 * 1024
    max_files: int = DEFAULT_MAX_FILES
    keep_days: float = DEFAULT_KEEP_DAYS
    max_data_bytes: int = int(DEFAULT_MAX_DATA_GB * 1e9)
    #: Whether a worker process waits ready, its libraries loaded, for the next job (``--no-standby``).
    standby: bool = True

    @property
    def database(self) -> Path:
        return self.data / "jobs.sqlite"

    @property
    def inputs(self) -> Path:
        """Uploaded photos, one file per content hash."""
        return self.data / "inputs"

    @property
    def cache(self) -> Path:
        """The embedding cache shared by every job: a second job of the same photos embeds nothing."""
        return self.data / "cache"

    @property
    def jobs(self) -> Path:
        return self.data / "jobs"

    def job_folder(self, job_id: str) -> Path:
        return self.jobs / job_id

    def make_folders(self) -> None:
        for folder in (self.data, self.inputs, self.cache, self.jobs):
            folder.mkdir(parents=True, exist_ok=True)
