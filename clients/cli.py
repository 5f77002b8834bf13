"""`python -m clients`: the infer, compare, load, compress and job commands; failures are one line on stderr."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence, TextIO

from clients.address import AddressError, parse_target
from clients.client import Client
from clients.compare import run_compare
from clients.compress import run_compress, run_watch
from clients.errors import ClientError
from clients.infer import run_infer
from clients.load import DEFAULT_DURATION, DEFAULT_REQUESTS, format_load, run_load
from clients.metrics import default_metrics_url
from clients.routing import run_routing

__all__ = ["main", "build_parser"]

DEFAULT_URL = "127.0.0.1:8001"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be more than 0")
    return value


def _target(text: str) -> str:
    """`--url` with its ports filled in; a malformed one is a usage error that quotes it."""
    try:
        return str(parse_target(text))
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _param(text: str) -> tuple[str, str]:
    """`--param KEY=VALUE`."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. --param per_channel=true)")
    return key.strip(), value


def _weight(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        weight = float(value)
    except ValueError:
        weight = -1.0
    if not sep or not name or weight < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected VARIANT=WEIGHT with a weight of 0 or more")
    return name, weight


def _connection() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=DEFAULT_URL, type=_target,
                        help="gRPC address HOST[:PORT]; several replicas as HOST[:PORT],HOST[:PORT],... or "
                             "dns:///NAME[:PORT] (every address of the name, e.g. a headless Service), "
                             "balanced per request; port 8001 when left out (default %(default)s)")
    common.add_argument("--metrics-url", default=None,
                        help="Prometheus endpoint (default http://<first host of --url>:8002/metrics)")
    common.add_argument("--timeout", type=_positive_float, default=30.0,
                        help="seconds each call may take (default %(default)s)")
    return common


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, parents=[_connection()])
    common.add_argument("--model", required=True, help="model name in the server's repository")
    return common


def _token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", default=os.environ.get("SLIMSERVE_ADMIN_TOKEN") or None,
                        help="bearer token for compression calls: the server's --admin-token "
                             "(default $SLIMSERVE_ADMIN_TOKEN)")


def _watch_note() -> str:
    return ("Progress goes to stderr: on a terminal one line redrawn in place, else one line per change. "
            "The figures of the new variant go to stdout. Exit status 0 when the job succeeded, 1 when it "
            "failed, 130 on Ctrl-C (the job keeps running on the server: `python -m clients job ID` "
            "watches it again). With --timeout, a silence that long while watching is an error.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clients",
        description="Talk to a slimserve server over KServe v2 gRPC. A variant is a model version.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common()

    infer = commands.add_parser("infer", parents=[common], help="send one input, print the outputs",
                                description="Send one input and print the outputs and the variant that served it.")
    infer.add_argument("--variant", default="", help="variant to run (default: the model's routing policy)")
    source = infer.add_mutually_exclusive_group()
    source.add_argument("--input", type=Path, metavar="FILE.npy", help="send the array in this .npy file")
    source.add_argument("--npz", type=Path, metavar="FILE.npz", help="send one row of this .npz's x")
    source.add_argument("--random", action="store_true", help="send random data shaped from the metadata (default)")
    source.add_argument("--text", action="append", metavar="SENTENCE",
                        help="text models: send this string (repeat for a batch); the server tokenizes it")
    infer.add_argument("--row", type=int, default=0, help="row of the .npz to send (default %(default)s)")
    infer.add_argument("--seed", type=int, default=None, help="seed for --random")
    infer.set_defaults(run=_infer)

    compare = commands.add_parser(
        "compare", parents=[common], help="every variant on the same held-out data, side by side",
        description="Run held-out inputs through every variant and print quality, latency and memory per variant.",
    )
    compare.add_argument("--data", type=Path, default=None, metavar="FILE.npz|FILE.txt",
                         help="x (and optional labels y), or one sentence per line for text models; "
                              "default ./model_repository/<model>/heldout.txt or heldout.npz")
    compare.add_argument("--samples", type=_positive_int, default=None, help="use the first N rows (default all)")
    compare.add_argument("--batch", type=_positive_int, default=1, help="rows per request (default %(default)s)")
    compare.set_defaults(run=_compare)

    load = commands.add_parser("load", parents=[common], help="load test: throughput, errors, latency",
                               description="Send random requests from concurrent workers for --duration seconds, "
                                           "or until --requests were sent; given both, whichever comes first; "
                                           f"given neither, {DEFAULT_REQUESTS:,} requests or "
                                           f"{DEFAULT_DURATION:g} s, whichever comes first.")
    load.add_argument("--variant", default="", help="variant to load (default: the model's routing policy)")
    load.add_argument("--concurrency", type=_positive_int, default=4, help="concurrent workers (default %(default)s)")
    load.add_argument("--duration", type=_positive_float, default=None,
                      help=f"seconds to run (alone: no request cap; default {DEFAULT_DURATION:g} if --requests is not given either)")
    load.add_argument("--requests", type=_positive_int, default=None,
                      help=f"requests to send (alone: no time limit; default {DEFAULT_REQUESTS:,} if --duration is not given either)")
    load.add_argument("--batch", type=_positive_int, default=1, help="rows per request (default %(default)s)")
    load.add_argument("--data", type=Path, default=None, metavar="FILE.npz|FILE.txt",
                      help="send the rows of this file in turn (default: one random batch shaped from the metadata)")
    load.set_defaults(run=_load)

    compress = commands.add_parser(
        "compress", parents=[common], help="make a variant on the server (e.g. int8) and watch the job",
        description="Ask the server for a new variant of --model made from --parent with --recipe, then follow "
                    "the job. " + _watch_note(),
    )
    compress.add_argument("--recipe", required=True,
                          help="e.g. int8_dynamic, int8_static, distilled, pruned, shared, or a chain such as "
                               "distilled+int8_dynamic; the server says which it can make")
    compress.add_argument("--parent", default="", help="variant to compress (default: the server's, teacher)")
    compress.add_argument("--name", default=None,
                          help="name of the new variant (default <parent>-<recipe>, with -2, -3, ... if taken)")
    compress.add_argument("--param", action="append", type=_param, default=[], metavar="KEY=VALUE",
                          help="recipe parameter, repeatable (e.g. per_channel=true, epochs=30)")
    compress.add_argument("--data", default="", metavar="PATH",
                          help="training inputs as the server sees the path (default: the model folder's own)")
    compress.add_argument("--runner", default="", choices=("local", "kubernetes"),
                          help="where the job runs: a child process of the server (local, the default) or "
                               "a Kubernetes Job")
    compress.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    _token(compress)
    compress.set_defaults(run=_compress)

    routing = commands.add_parser(
        "routing", parents=[common], help="show or set a model's routing, with live quality per variant",
        description="Without --policy: print the model's routing, each variant's live agreement with the teacher "
                    "and p50 latency with 95%% intervals, and the latest changes of auto's choice. With --policy: "
                    "replace the routing first (it takes effect at once and is written to the manifest).")
    routing.add_argument("--policy", choices=("fixed", "split", "auto"), default=None, help="new policy")
    routing.add_argument("--variant", default="", help="fixed: the variant to serve")
    routing.add_argument("--weight", action="append", type=_weight, default=[], metavar="VARIANT=WEIGHT",
                         help="split: one arm (repeat)")
    routing.add_argument("--sticky-parameter", default="", help="split: request parameter that pins a caller")
    routing.add_argument("--max-drop", type=float, default=0.01,
                         help="auto: largest allowed drop of quality, live agreement >= 1 - this (default %(default)s)")
    routing.add_argument("--shadow", type=float, default=0.0, metavar="FRACTION",
                         help="share of requests mirrored to the teacher (and to auto's candidates)")
    routing.add_argument("--min-samples", type=_positive_int, default=None,
                         help="auto: compared rows before a variant's live interval decides (server default 200)")
    _token(routing)
    routing.set_defaults(run=_routing)

    job = commands.add_parser("job", parents=[_connection()], help="watch a compression job again",
                              description="Follow compression job ID to its end. " + _watch_note())
    job.add_argument("id", metavar="ID", help="the job id that `compress` printed")
    _token(job)
    job.set_defaults(run=_job)
    return parser


def _metrics_url(args: argparse.Namespace) -> str:
    return args.metrics_url or default_metrics_url(args.url)


def _infer(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return run_infer(client, args.model, args.variant, out, npy=args.input, npz=args.npz,
                     row=args.row if args.npz else None, seed=args.seed, texts=args.text)


def _compare(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return run_compare(client, args.model, args.data, args.samples, args.batch, _metrics_url(args), out)


def _load(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    duration, requests = args.duration, args.requests
    if duration is None and requests is None:
        duration, requests = DEFAULT_DURATION, DEFAULT_REQUESTS
    report = run_load(client, args.model, args.variant, args.concurrency, duration, requests,
                      args.batch, timeout=args.timeout, data=args.data)
    print(format_load(report), file=out)
    if report.requests and report.ok == 0:
        code, message = sorted(report.first_error.items())[0] if report.first_error else ("?", "")
        raise ClientError(f"all {report.requests} requests failed; first {code}: {message}")
    return 0


def _compress(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return run_compress(client, args.model, args.recipe, out, err, name=args.name, parent=args.parent,
                        params=dict(args.param), data=args.data, runner=args.runner, wait=not args.no_wait,
                        idle_timeout=args.timeout)


def _routing(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    settings = {"variant": args.variant, "weights": dict(args.weight), "sticky_parameter": args.sticky_parameter,
                "max_drop": args.max_drop, "shadow_fraction": args.shadow, "min_samples": args.min_samples or 0}
    return run_routing(client, args.model, out, args.policy, settings)


def _job(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return run_watch(client, args.id, out, err, idle_timeout=args.timeout)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Parse, run, and map every failure to exit status 1 with one line on stderr (2 for bad usage)."""
    out, err = out or sys.stdout, err or sys.stderr
    args = build_parser().parse_args(argv)
    run: Callable[[Client, argparse.Namespace, TextIO, TextIO], int] = args.run
    try:
        with Client(args.url, timeout=args.timeout, token=getattr(args, "token", None)) as client:
            client.check_live()
            return run(client, args, out, err)
    except ClientError as exc:
        print(f"error: {_one_line(str(exc))}", file=err)
    except KeyboardInterrupt:
        print("error: interrupted", file=err)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug of ours: still one line, with enough to report it
        print(f"error: unexpected {type(exc).__name__}: {_one_line(str(exc))}", file=err)
    return 1
