#!/usr/bin/env bash
# Set up from scratch if needed, then run the whole test suite.
# Two pytest sessions: tests/internal imports slimserve's generated `inference` protos, the rest use
# tritonclient's copy; protobuf refuses both copies in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -m pytest tests/internal "$@"
exec .venv/bin/python -m pytest tests --ignore=tests/internal "$@"
