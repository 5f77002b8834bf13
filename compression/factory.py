"""Resolve `package.module:factory` (or `path/to/file.py:factory`) references from the command line."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compression.errors import UsageError

__all__ = ["is_factory_ref", "load_callable", "make_module"]

_REF = re.compile(r"^(?P<module>[A-Za-z_][\w.]*|[^:]+\.py):(?P<attr>[A-Za-z_][\w.]*)$")


def is_factory_ref(text: str) -> bool:
    """True for `pkg.mod:name` and `file.py:name` (Windows drive letters aside, a colon means one)."""
    return bool(_REF.match(text))


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise UsageError(f"factory file not found: {path}")
    name = f"_slimserve_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_callable(ref: str, what: str) -> Callable[..., Any]:
    """The callable named by `ref`; any import problem becomes a one-line UsageError about `what`."""
    match = _REF.match(ref)
    if not match:
        raise UsageError(f"{what} {ref!r}: expected package.module:factory")
    module_name, attr = match["module"], match["attr"]
    try:
        if module_name.endswith(".py"):
            module = _import_file(Path(module_name))
        else:
            module = importlib.import_module(module_name)
    except UsageError:
        raise
    except ImportError as error:
        raise UsageError(f"{what} {ref!r}: cannot import {module_name!r} ({error})") from error
    except Exception as error:
        raise UsageError(f"{what} {ref!r}: importing {module_name!r} failed: "
                         f"{type(error).__name__}: {error}") from error
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UsageError(f"{what} {ref!r}: {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UsageError(f"{what} {ref!r}: {attr!r} is not callable")
    return target


def make_module(make: Callable[[], Any], ref: str, what: str) -> Any:
    """Call the factory `make` (loaded from `ref`) and check it returned an nn.Module; any failure
    becomes a one-line UsageError about `what`."""
    from torch import nn

    try:
        module = make()
    except Exception as error:
        text = str(error).strip()
        raise UsageError(f"{what} {ref} failed: {type(error).__name__}: "
                         f"{text.splitlines()[0] if text else ''}") from error
    if not isinstance(module, nn.Module):
        raise UsageError(f"{what} {ref} returned {type(module).__name__}, not an nn.Module")
    return module
