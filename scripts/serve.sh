#!/usr/bin/env bash
# Serves ./model_repository on :8001 (gRPC) / :8002 (metrics), after setting up ./.venv and building the
# default repository (digits) the first time. `scripts/serve.sh --rebuild [build flags]` rebuilds it,
# e.g. `scripts/serve.sh --rebuild --teacher minilm`. The server's SLIMSERVE_* variables apply.
set -euo pipefail
cd "$(dirname "$0")/.."

rebuild=0
if [ "${1-}" = "--rebuild" ]; then
    rebuild=1
    shift
elif [ $# -gt 0 ]; then
    echo "serve.sh: build flags go after --rebuild (scripts/serve.sh --rebuild $*)" >&2
    exit 2
fi

# Ports first: a busy port should cost a second, not a setup and a build that cannot be served.
host="${SLIMSERVE_HOST:-127.0.0.1}"
case "$host" in
    0.0.0.0) host=127.0.0.1 ;;
    ::|"[::]") host=::1 ;;
esac
host="${host#[}"
host="${host%]}"
for port in "${SLIMSERVE_GRPC_PORT:-8001}" "${SLIMSERVE_METRICS_PORT:-8002}"; do
    case "$port" in -1|0) continue ;; esac
    # bash connects to /dev/tcp/HOST/PORT itself: success means something already listens there.
    if timeout 2 bash -c "exec 3<>'/dev/tcp/$host/$port'" 2>/dev/null; then
        echo "serve.sh: port $port on $host is in use (another server running?); stop it or set SLIMSERVE_GRPC_PORT / SLIMSERVE_METRICS_PORT" >&2
        exit 1
    fi
done

if [ "$rebuild" = 1 ] || [ ! -x .venv/bin/python ]; then
    scripts/setup.sh
fi
if [ "$rebuild" = 1 ] || ! compgen -G "model_repository/*/manifest.json" >/dev/null; then
    .venv/bin/python -m compression.build "$@"
fi
exec .venv/bin/python -m server
