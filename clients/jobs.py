"""Compression jobs as plain typed values: the job's progress, the new variant's figures, default variant names."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

__all__ = ["JOB_STATES", "NAME_RULE", "JobStatus", "VariantFigures", "default_variant_name", "job_status",
           "variant_figures"]

JOB_STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED")  # the order a job goes through; the last two end it
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+.-]{0,63}$")  # the server's rule for variant names
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_+.-]+")


@dataclass(frozen=True)
class VariantFigures:
    """One variant as the manifest records it: size, quality on held-out data, build-time latency, recipe."""

    name: str
    kind: str = ""
    parent: str = ""
    sha256: str = ""
    bytes: int = 0
    parameters: int = 0
    macs: int = 0
    quality: dict[str, float] = field(default_factory=dict)
    p50_ms_batch1: float = 0.0
    recipe: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobStatus:
    """One snapshot of a job; `result` is set once it SUCCEEDED."""

    id: str
    model: str
    variant: str
    state: str
    step: str = ""
    percent: float = 0.0
    quality: dict[str, float] = field(default_factory=dict)  # reached so far
    message: str = ""  # why it FAILED
    recipe: str = ""
    parent: str = ""
    started_unix: float = 0.0
    finished_unix: float = 0.0
    result: VariantFigures | None = None

    @property
    def done(self) -> bool:
        return self.state in ("SUCCEEDED", "FAILED")

    def progress_key(self) -> tuple[Any, ...]:
        """What a watcher shows; two snapshots with the same key are the same update."""
        return (self.state, self.step, round(self.percent, 1), tuple(sorted(self.quality.items())), self.message)


def _recipe(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {"recipe_json": text}
    return value if isinstance(value, dict) else {"recipe": value}


def variant_figures(info: Any) -> VariantFigures:
    """A `slimserve.v1.VariantInfo` message as `VariantFigures`."""
    return VariantFigures(
        name=info.name, kind=info.kind, parent=info.parent, sha256=info.sha256, bytes=int(info.bytes),
        parameters=int(info.parameters), macs=int(info.macs), quality=dict(info.quality),
        p50_ms_batch1=float(info.p50_ms_batch1), recipe=_recipe(info.recipe_json),
    )


def job_status(job: Any) -> JobStatus:
    """A `slimserve.v1.Job` message as `JobStatus` (state by name)."""
    state = JOB_STATES[job.state] if 0 <= job.state < len(JOB_STATES) else f"STATE_{job.state}"
    return JobStatus(
        id=job.id, model=job.model, variant=job.variant, state=state, step=job.step, percent=float(job.percent),
        quality=dict(job.quality), message=job.message, recipe=job.recipe, parent=job.parent,
        started_unix=float(job.started_unix), finished_unix=float(job.finished_unix),
        result=variant_figures(job.result) if job.HasField("result") else None,
    )


def default_variant_name(parent: str, recipe: str, taken: Iterable[str] = ()) -> str:
    """`<parent>-<recipe>` within the server's name rule, e.g. `teacher-distilled+int8_dynamic`; when
    that is `taken`, the first free `-2`, `-3`, ... after it."""
    base = _NOT_IN_NAME.sub("-", f"{parent or 'teacher'}-{recipe}").lstrip("_+.-")[:60] or "variant"
    taken = set(taken)
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name
