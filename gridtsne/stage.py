"""The stage contract: what a stage declares, and the frame every stage runs in.

A stage names itself, its options type, the artifacts it reads and the ones
it writes, and computes its outputs from its inputs. ``Stage.run`` does the
rest once for all of them: it checks freshness (skipping a fresh stage, as
Make would), calls ``compute``, writes the manifest last and returns the
summary. A new stage gets freshness, manifests and summaries by declaring
what it reads and writes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from gridtsne.memory import release_freed_memory
from gridtsne.options import StageOptions
from gridtsne.workdir import Workdir, file_hash


def default_jobs() -> int:
    """Threads that decode photos: up to 4, as decoding beyond that waits on the model or the disk."""
    return min(4, os.cpu_count() or 1)


@dataclass
class Context:
    """How a run is carried out, as opposed to what it makes (that is the options).

    ``progress``: progress bars on stderr; ``jobs``: threads decoding photos;
    ``on_progress(stage, fraction)``: how far a stage's work has got, from 0 to 1,
    called every few seconds at most (the service's ``percent_completed``);
    ``on_message``: where a stage's remarks go; ``stdout``: where a render to
    "-" writes; ``cluster``: a Dask scheduler's address, or ``local[:N]``, to run
    the per-photo work of embed and render on (``cluster.py``), None for here.
    """

    progress: bool = False
    jobs: int = field(default_factory=default_jobs)
    on_message: Callable[[str], None] = lambda text: None
    on_progress: Callable[[str, float], None] = lambda stage, fraction: None
    stdout: BinaryIO | None = None
    cluster: str | None = None

    def __post_init__(self) -> None:
        if self.jobs is None:
            self.jobs = default_jobs()
        if self.stdout is None:
            self.stdout = sys.stdout.buffer


@dataclass
class Plan:
    """What freshness compares (``parameters``, ``inputs``), and what ``compute`` may reuse."""

    parameters: dict
    inputs: dict
    prepared: Any = None


class Stage:
    """One stage: subclasses set the class attributes and implement ``compute``."""

    name: ClassVar[str]
    options_type: ClassVar[type[StageOptions]]
    #: Work-directory artifacts read; their content hashes are the stage's inputs.
    reads: ClassVar[tuple[str, ...]] = ()
    #: Work-directory artifacts written.
    writes: ClassVar[tuple[str, ...]] = ()

    def plan(self, workdir: Workdir, options: StageOptions) -> Plan:
        return Plan({**options.freshness(), **self.code_parameters(options)}, self.inputs(workdir, options))

    def code_parameters(self, options: StageOptions) -> dict:
        """Settings of the stage's code that decide what it makes but are no option: when an
        upgrade changes them, what it made before is stale."""
        return {}

    def inputs(self, workdir: Workdir, options: StageOptions) -> dict:
        """The fingerprint of what the stage reads: a change makes it stale."""
        return {name: file_hash(workdir.require(name)) for name in self.reads}

    def outputs(self, workdir: Workdir, options: StageOptions, results: dict) -> dict[str, Path]:
        """The files written, whose hashes the manifest records."""
        return {name: workdir.file(name) for name in self.writes}

    def may_skip(self, options: StageOptions) -> bool:
        """Whether a fresh stage may be skipped (a render to a pipe may not: its bytes are gone)."""
        return True

    def compute(self, workdir: Workdir, options: StageOptions, context: Context, prepared: Any) -> dict:
        """Do the work and write ``writes``; return the results to record and report."""
        raise NotImplementedError

    def describe(self, summary: dict) -> str:
        """One line for stderr about a summary of this stage that ran."""
        return self.name

    def run(
        self,
        workdir: Workdir,
        options: StageOptions | dict | None = None,
        context: Context | None = None,
        *,
        skip_if_fresh: bool = False,
    ) -> dict:
        """Run the stage in ``workdir`` unless it is fresh and ``skip_if_fresh``; its summary."""
        options = self.coerce(options)
        started = time.perf_counter()
        plan = self.plan(workdir, options)
        if skip_if_fresh and self.may_skip(options):
            summary = workdir.fresh_summary(self.name, plan.parameters, plan.inputs)
            if summary is not None:
                return summary
        results = self.compute(workdir, options, context or Context(), plan.prepared)
        release_freed_memory()
        outputs = self.outputs(workdir, options, results)
        return workdir.finish_stage(
            self.name, plan.parameters, plan.inputs, outputs, started, results, options=options.to_dict()
        )

    def coerce(self, options: StageOptions | dict | None) -> StageOptions:
        if options is None:
            return self.options_type()
        if isinstance(options, dict):
            return self.options_type.from_dict(options)
        if not isinstance(options, self.options_type):
            raise TypeError(f"{self.name} takes {self.options_type.__name__}, not {type(options).__name__}")
        return options

    def staleness(self, workdir: Workdir) -> str | None:
        """Why the stage's recorded run is stale now, or None when it is fresh.

        Judged against the options it was last run with, so that ``status``
        needs no options of its own.
        """
        manifest = workdir.read_manifest(self.name)
        if manifest is None:
            return "never run"
        options = self.options_type.from_dict(manifest["options"])
        params = {**manifest["params"], **self.code_parameters(options)}
        return workdir.staleness(self.name, params, self.inputs(workdir, options))
