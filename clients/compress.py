"""The `compress` and `job` commands: start or re-attach to a compression job, show its progress, print its figures."""

from __future__ import annotations

import json
import shutil
import time
from typing import TYPE_CHECKING, Any, Mapping, TextIO

from clients.errors import ClientError
from clients.jobs import JobStatus, VariantFigures

if TYPE_CHECKING:
    from clients.client import Client

__all__ = ["ProgressView", "format_figures", "format_progress", "run_compress", "run_watch"]

BAR_WIDTH = 20


def _quality(quality: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(quality.items()))


def _elapsed(status: JobStatus, now: float) -> float:
    end = status.finished_unix if status.done and status.finished_unix else now
    return max(0.0, end - status.started_unix) if status.started_unix else 0.0


def format_progress(status: JobStatus, elapsed: float, bar: bool = False) -> str:
    """One line: state, percent (as a bar too when `bar`), stage, quality so far, elapsed seconds."""
    percent = f"{status.percent:5.1f}%"
    if bar:
        filled = int(round(BAR_WIDTH * min(100.0, max(0.0, status.percent)) / 100))
        percent = f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {percent}"
    parts = [f"{status.state:<9} {percent}", status.step or "-"]
    if status.quality:
        parts.append(f"quality {_quality(status.quality)}")
    parts.append(f"{elapsed:.1f} s")
    return "  ".join(parts)


class ProgressView:
    """Draws job updates on `stream`: on a terminal one line redrawn in place, else one plain line per change."""

    def __init__(self, stream: TextIO, tty: bool | None = None, width: int | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.width = width  # of the terminal; None: asked at each redraw (it may be resized)
        self._last: tuple | None = None
        self._drawn = False

    def update(self, status: JobStatus) -> None:
        key = status.progress_key()
        if key == self._last and not self.tty:
            return  # the server repeats an unchanged job every few seconds; the terminal redraws the clock
        self._last = key
        line = format_progress(status, _elapsed(status, time.time()), bar=self.tty)
        if self.tty:
            width = self.width or shutil.get_terminal_size((100, 24)).columns
            self.stream.write("\r\x1b[K" + line[: max(10, width - 1)])
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the line being redrawn, if any, so what follows starts on a line of its own."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def _settings(recipe: Mapping[str, Any], limit: int = 240) -> str:
    """The recipe's plain settings (its own and its `params`' numbers, words and flags) as `k=v` words."""
    found = {**{k: v for k, v in recipe.items() if k not in ("kind", "parent", "params")},
             **(recipe.get("params") if isinstance(recipe.get("params"), dict) else {})}
    words = [f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in sorted(found.items())
             if isinstance(v, (str, int, float, bool)) and len(str(v)) <= 40]
    text = " ".join(words) or "-"
    return text if len(text) <= limit else text[: limit - 3].rsplit(" ", 1)[0] + " ..."


def format_figures(status: JobStatus, figures: VariantFigures) -> str:
    """The new variant's manifest figures as `key: value` lines."""
    rows = [
        ("variant", f"{status.model}/{figures.name}"),
        ("recipe", status.recipe or str(figures.recipe.get("kind", figures.kind))),
        ("parent", figures.parent or status.parent),
        ("settings", _settings(figures.recipe)),
        ("bytes", str(figures.bytes)),
        ("parameters", str(figures.parameters)),
        ("quality", _quality(figures.quality) or "-"),
        ("p50_ms_batch1", f"{figures.p50_ms_batch1:.3f}"),
        ("sha256", figures.sha256),
        ("job", f"{status.id} in {_elapsed(status, time.time()):.1f} s"),
    ]
    return "\n".join(f"{k + ':':<15}{v}" for k, v in rows)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _header(job: JobStatus) -> str:
    return f"job {job.id}: making {job.model}/{job.variant} from {job.parent or 'teacher'} with {job.recipe}"


def run_watch(client: Client, job_id: str, out: TextIO, err: TextIO, idle_timeout: float | None = None,
              tty: bool | None = None) -> int:
    """Follow job `job_id` to its end: 0 when it SUCCEEDED (figures on `out`), 1 when it FAILED, 130 on Ctrl-C
    (the job keeps running on the server)."""
    view = ProgressView(err, tty)
    last: JobStatus | None = None
    try:
        for status in client.watch_job(job_id, idle_timeout=idle_timeout):
            if last is None:
                print(_header(status), file=err)
            view.update(status)
            last = status
    except KeyboardInterrupt:
        view.close()
        print(f"interrupted: job {job_id} keeps running on the server; watch it again with "
              f"`python -m clients job {job_id} --url {client.url}`", file=err)
        return 130
    except ClientError as exc:
        if last is None:
            raise
        view.close()
        raise ClientError(f"{exc}; job {job_id} may still be running: watch it again with "
                          f"`python -m clients job {job_id} --url {client.url}`") from None
    finally:
        view.close()
    if last is None or not last.done:
        raise ClientError(f"the server stopped streaming job {job_id} before it ended; "
                          f"watch it again with `python -m clients job {job_id} --url {client.url}`")
    if last.state == "FAILED":
        print(f"error: job {job_id} ({last.model}/{last.variant}) failed: {_one_line(last.message) or 'no reason given'}",
              file=err)
        return 1
    if last.result is None:
        raise ClientError(f"job {job_id} {last.state.lower()} without the new variant's figures")
    print(format_figures(last, last.result), file=out)
    return 0


def run_compress(client: Client, model: str, recipe: str, out: TextIO, err: TextIO, name: str | None = None,
                 parent: str = "", params: Mapping[str, str] | None = None, data: str = "", runner: str = "",
                 wait: bool = True, idle_timeout: float | None = None, tty: bool | None = None) -> int:
    """Start the job; then follow it (see `run_watch`), or with `wait` False print its id and return."""
    job = client.compress(model, recipe, name=name, parent=parent, params=params, data=data, runner=runner)
    if not wait:
        print(_header(job), file=err)
        print(job.id, file=out)
        print(f"watch it with `python -m clients job {job.id} --url {client.url}`", file=err)
        return 0
    return run_watch(client, job.id, out, err, idle_timeout=idle_timeout, tty=tty)
