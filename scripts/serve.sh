#!/usr/bin/env bash
# The main job: set up, build the default model repository (digits), then serve it on :8001 / :8002.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -m compression.build "$@"
exec .venv/bin/python -m server
