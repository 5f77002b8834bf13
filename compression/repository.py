"""Write a model folder into a repository all at once: build it in a staging dir, then swap it in."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["staged_model_dir"]


def _fsync_dir(path: Path) -> None:
    """Make renames inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staged_model_dir(root: Path, name: str) -> Iterator[Path]:
    """Yield an empty staging folder `<root>/.<name>.partial-<pid>`; on a clean exit swap it in
    as `<root>/<name>`, on any exception (Ctrl-C included) delete it and leave `<root>` as it was
    (removed again if this call created it).

    Staging beside the target keeps both on one file system, so the swap is two renames: the old
    folder goes aside, the new one comes in, the old one is deleted. A reader never sees a folder
    mixing two builds; between the two renames the model is briefly absent rather than torn.
    """
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    staging = root / f".{name}.partial-{os.getpid()}"
    aside = root / f".{name}.old-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)  # a leftover of an earlier run with our pid
    staging.mkdir()
    try:
        yield staging
        _fsync_dir(staging)
        if target.exists():
            os.rename(target, aside)
        try:
            os.rename(staging, target)
        except BaseException:
            if aside.exists() and not target.exists():
                os.rename(aside, target)  # put the previous build back
            raise
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                root.rmdir()  # a repository root this build made, if still empty
        raise
    shutil.rmtree(aside, ignore_errors=True)
