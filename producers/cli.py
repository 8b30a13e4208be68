"""``imagestream`` — the command-line entry point.

    imagestream worker      run a Faust worker (both pipelines + HTTP API)
    imagestream emulator    run the local DashScope emulator

Settings come from the environment (``IMAGESTREAM_*``, see config/settings.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _run_worker(args: argparse.Namespace) -> int:
    # Command-line flags are just another way to set the environment the one
    # settings object reads, so they must be in place before streams.app loads.
    if args.web_port is not None:
        os.environ["IMAGESTREAM_WEB_PORT"] = str(args.web_port)
    if args.data_dir is not None:
        os.environ["IMAGESTREAM_DATA_DIR"] = args.data_dir
    import faust

    from streams.app import app

    worker = faust.Worker(app, loglevel=args.loglevel)
    worker.execute_from_commandline()
    return 0  # pragma: no cover  (execute_from_commandline exits the process)


def _run_emulator(argv: Sequence[str]) -> int:
    from emulator.cli import main as emulator_main

    return emulator_main(list(argv))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagestream", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run a Faust worker with both pipelines and the HTTP API")
    worker.add_argument("-l", "--loglevel", default="info")
    worker.add_argument("--web-port", type=int, default=None, help="overrides IMAGESTREAM_WEB_PORT")
    worker.add_argument("--data-dir", default=None, help="overrides IMAGESTREAM_DATA_DIR")
    worker.set_defaults(func=_run_worker)

    sub.add_parser("emulator", help="run the local DashScope emulator (see --help)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "emulator":
        return _run_emulator(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
