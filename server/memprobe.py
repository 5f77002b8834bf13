"""Measures each variant's resident memory in a fresh process: `python -m server.memprobe FILE... [--threads N]
[--lone-threads N]`.

In the long-lived server, heap reuse between loads makes per-session RSS deltas meaningless (a variant
loaded after another can show 0 bytes). Here ONNX Runtime is primed first, then each file is loaded with
the server's own session options, warmed up and measured, and its session is kept, exactly as in the
server. Prints one JSON object {file: bytes} on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys

from server.runtime import Session, prime_onnxruntime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.memprobe", description=__doc__)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lone-threads", type=int, default=1, help="the server's --lone-run-threads")
    args = parser.parse_args(argv)
    prime_onnxruntime()
    sessions = []
    result: dict[str, int] = {}
    for file in args.files:
        try:
            session = Session(file, args.threads, lone_threads=args.lone_threads)  # type: ignore[arg-type]
        except Exception as exc:  # the server reports load errors itself; here just skip the figure
            print(f"memprobe: {file}: {exc}", file=sys.stderr)
            continue
        sessions.append(session)
        result[file] = session.stats.memory_bytes
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
