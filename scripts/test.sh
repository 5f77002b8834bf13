#!/usr/bin/env bash
# Set up from scratch if needed, lint, then run the whole test suite.
# Two pytest sessions: tests/internal imports slimserve's generated `inference` protos, the rest use
# tritonclient's copy; protobuf refuses both copies in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Lint gate: pyflakes, pycodestyle errors, import order, bugbear (pyproject.toml [tool.ruff]).
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest tests/internal "$@"
exec .venv/bin/python -m pytest tests --ignore=tests/internal "$@"
