"""Import boundaries between the packages (SPEC §1), read from the source, and the serving image's contents."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = {"server", "compression", "clients", "protos", "modelrepo"}


def imported_roots(package: str) -> dict[str, set[str]]:
    """Top-level modules each file of `package` imports (absolute imports, lazy ones included)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        roots: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                roots |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = roots
    return found


@pytest.mark.parametrize("package, forbidden", [
    ("server", {"torch", "compression", "transformers", "torch_pruning"}),
    ("modelrepo", {"torch", "grpc", "server", "compression", "clients", "protos", "transformers"}),
    ("compression", {"server"}),
    ("clients", {"torch", "compression", "server"}),
])
def test_package_imports_stay_on_their_side(package: str, forbidden: set[str]) -> None:
    offenders = {f: sorted(roots & forbidden) for f, roots in imported_roots(package).items() if roots & forbidden}
    assert offenders == {}


def test_serving_image_copies_every_package_the_server_imports() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+)/ \1/$", dockerfile, flags=re.M))
    needed = set().union(*imported_roots("server").values()) & FIRST_PARTY
    assert needed <= copied, f"deploy/Dockerfile lacks COPY for {sorted(needed - copied)}"
