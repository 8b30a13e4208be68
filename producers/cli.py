"""``imagestream`` — the command-line entry point.

    imagestream worker                 run a Faust worker (both pipelines + HTTP API)
    imagestream emulator               run the local DashScope emulator
    imagestream submit IMAGES...       submit an image-edit task (and wait for it)
    imagestream status TASK_ID         show a task
    imagestream watch TASK_ID          follow a task until it ends
    imagestream dims URL ...           the size of an image, for a session/resource/scene
    imagestream dims --batch FILE ...  the sizes of many images of one session/scene (JSON file, - = stdin)
    imagestream stats                  a worker's counters

Settings come from the environment (``IMAGESTREAM_*``, see config/settings.py);
``--api-url``, ``--bootstrap``, ``--token`` and ``--topic-prefix`` override them.

Exit codes of the client commands: 0 completed (or accepted / answered), 2 partial,
3 failed, 4 usage or input error (missing file, a 4xx from the API, unknown task),
5 timeout or unreachable (API or Kafka, or a 5xx), 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "build_parser",
    "exit_code_for_error",
    "exit_code_for_status",
    "main",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PARTIAL = 2
EXIT_FAILED = 3
EXIT_USAGE = 4
EXIT_UNAVAILABLE = 5


def exit_code_for_status(status: str) -> int:
    """Exit code for a task in state ``status``: 0 completed (and not finished yet),
    2 partial, 3 failed."""
    return {"partial": EXIT_PARTIAL, "failed": EXIT_FAILED}.get(status, EXIT_OK)


def exit_code_for_error(exc: BaseException) -> int:
    """Exit code for an error raised by a client command."""
    from producers.errors import ApiError, InvalidInput, TaskFailed, Timeout, Unreachable

    if isinstance(exc, TaskFailed):
        return exit_code_for_status(exc.task.status)
    if isinstance(exc, InvalidInput):
        return EXIT_USAGE
    if isinstance(exc, ApiError):
        return EXIT_USAGE if exc.is_client_error and exc.status != 429 else EXIT_UNAVAILABLE
    if isinstance(exc, (Timeout, Unreachable)):
        return EXIT_UNAVAILABLE
    return EXIT_ERROR


# --- worker and emulator (unchanged) ------------------------------------------------------
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


# --- client commands -----------------------------------------------------------------------
class _Output:
    """Where a command writes: the one JSON document / lines to ``out``, the rest to ``err``."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.json = bool(getattr(args, "json", False))
        self.out = out
        self.err = err

    def document(self, doc: Any) -> None:
        self.out.write(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
        self.out.flush()

    def line(self, doc: Any) -> None:
        self.out.write(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.out.flush()

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """Human commentary on stderr (never in --json mode)."""
        if not self.json:
            self.err.write(text + "\n")
            self.err.flush()


def _client_config(args: argparse.Namespace) -> Any:
    from producers.client import ClientConfig

    return ClientConfig.from_settings(
        api_url=getattr(args, "api_url", None),
        kafka_bootstrap=getattr(args, "bootstrap", None),
        api_token=getattr(args, "token", None),
        topic_prefix=getattr(args, "topic_prefix", None),
    )


def _summary(status: Any) -> str:
    cached = status.cached_images
    fresh = status.completed_images - cached
    line = (f"task {status.task_id} {status.status}: {status.completed_images}/{status.total_images} images "
            f"edited ({cached} cached, {fresh} fresh, {status.failed_images} failed)")
    if status.error is not None:
        line += f" — {status.error.code}: {status.error.message}"
    return line


def _result_line(result: Any, path: Any = None) -> str:
    if result.status == "completed":
        cache = result.cache_status or ("HIT" if result.from_cache else "MISS")
        where = f"→ {path}" if path is not None else (result.result_url or "")
        return f"  [{result.index}] {result.filename}  completed  {cache:<9} {where}"
    error = f"{result.error.code}: {result.error.message}" if result.error else "failed"
    return f"  [{result.index}] {result.filename}  failed     {error}"


def _print_status(output: _Output, status: Any, downloads: dict[int, str] | None = None) -> None:
    output.say(_summary(status))
    for result in sorted(status.results, key=lambda r: r.index):
        output.say(_result_line(result, (downloads or {}).get(result.index)))


async def _follow(client: Any, task_id: str, total: int | None, output: _Output, *,
                  timeout: float | None, json_lines: bool) -> Any:
    """Follow a task to its end with a progress display; returns the final status."""
    from producers.models import ImageResult
    from producers.progress import make_progress

    progress = make_progress(output.err, total or 0, quiet=output.json)
    ticker = asyncio.create_task(_tick(progress))
    final = None
    try:
        async for event in client.events(task_id, timeout=timeout):
            if isinstance(event, ImageResult):
                progress.result(event)
                if json_lines:
                    output.line({"event": "result", **event.to_dict()})
            else:
                progress.status(event)
                if json_lines:
                    output.line({"event": "status", **event.to_dict()})
                if event.is_terminal:
                    final = event
    finally:
        ticker.cancel()
        progress.close()
    assert final is not None
    return final


async def _tick(progress: Any, interval: float = 0.5) -> None:
    """Redraw a terminal progress bar now and then, so its clock moves between events."""
    redraw = getattr(progress, "redraw", None)
    if redraw is None:
        return
    while True:
        await asyncio.sleep(interval)
        redraw()


async def _cmd_submit(args: argparse.Namespace, output: _Output) -> int:
    from producers.client import ImageEditClient

    async with ImageEditClient(config=_client_config(args)) as client:
        task = await client.submit(args.images, args.edit_type, args.prompt, args.params, via=args.via)
        if not args.wait:
            if output.json:
                output.document(task.to_dict())
            else:
                output.note(f"task accepted: {task.total_images} image(s) via {task.via}")
                output.say(task.task_id)
            return EXIT_OK
        output.note(f"task {task.task_id} accepted: {task.total_images} image(s) via {task.via}")
        final = await _follow(client, task.task_id, task.total_images, output, timeout=args.timeout,
                              json_lines=False)
        downloads: dict[int, str] = {}
        if args.out:
            for result in sorted(final.results, key=lambda r: r.index):
                if result.ok:
                    downloads[result.index] = str(await client.download(result, args.out))
        if output.json:
            doc = final.to_dict()
            if args.out:
                doc["downloads"] = [{"index": i, "path": p} for i, p in sorted(downloads.items())]
            output.document(doc)
        else:
            _print_status(output, final, downloads)
        return exit_code_for_status(final.status)


async def _cmd_status(args: argparse.Namespace, output: _Output) -> int:
    from producers.client import ImageEditClient

    async with ImageEditClient(config=_client_config(args)) as client:
        status = await client.status(args.task_id)
    if output.json:
        output.document(status.to_dict())
    else:
        _print_status(output, status)
        if not status.is_terminal:
            output.say(f"  {status.progress:.0f}% done")
    return exit_code_for_status(status.status)


async def _cmd_watch(args: argparse.Namespace, output: _Output) -> int:
    from producers.client import ImageEditClient

    async with ImageEditClient(config=_client_config(args)) as client:
        final = await _follow(client, args.task_id, None, output, timeout=args.timeout, json_lines=output.json)
    if not output.json:
        _print_status(output, final)
    return exit_code_for_status(final.status)


def _read_batch(path: str) -> tuple[list[Any], dict[str, Any]]:
    """Items of a ``--batch`` file: a JSON list of ``{resource, url | data}``, or an
    object ``{session_id?, scene?, items: [...]}``."""
    from producers.errors import InvalidInput

    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}", code="file_not_found") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{path} is not JSON: {exc}", code="invalid_json") from None
    if isinstance(doc, dict) and isinstance(doc.get("items"), list):
        return doc["items"], doc
    if isinstance(doc, list):
        return doc, {}
    raise InvalidInput(f"{path}: expected a list of items or an object with items", code="invalid_parameter")


async def _cmd_dims_batch(args: argparse.Namespace, output: _Output) -> int:
    from producers.client import DimensionClient
    from producers.errors import InvalidInput

    items, doc = _read_batch(args.batch)
    session_id = args.session or doc.get("session_id")
    scene = args.scene if args.scene is not None else doc.get("scene")
    if not session_id or scene in (None, ""):
        raise InvalidInput("--session and --scene are needed (or session_id and scene in the file)",
                           code="missing_parameter")
    async with DimensionClient(config=_client_config(args)) as client:
        results = await client.lookup_many(str(session_id), scene, items,
                                           refresh=args.refresh or bool(doc.get("refresh")))
    if output.json:
        output.document({"items": [r.to_dict() for r in results]})
        return EXIT_OK
    for result in results:
        fmt = f" {result.format}" if result.format else ""
        line = f"{result.resource}\t{result.width}x{result.height}{fmt} (source: {result.source})"
        if result.error is not None:
            line += f" [{result.error.code}: {result.error.message}]"
        output.say(line)
    return EXIT_OK


async def _cmd_dims(args: argparse.Namespace, output: _Output) -> int:
    from producers.client import DimensionClient

    if args.batch is not None:
        return await _cmd_dims_batch(args, output)
    async with DimensionClient(config=_client_config(args)) as client:
        result = await client.get(args.session, args.resource, args.scene, args.url, refresh=args.refresh)
    if output.json:
        output.document(result.to_dict())
    else:
        extra = f", orientation {result.orientation}" if result.orientation not in (0, 1) else ""
        fmt = f" {result.format}" if result.format else ""
        output.say(f"{result.width}x{result.height}{fmt} (source: {result.source}{extra})")
        if result.error is not None:
            output.say(f"  last fetch failed: {result.error.code}: {result.error.message}")
    return EXIT_OK


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


async def _cmd_stats(args: argparse.Namespace, output: _Output) -> int:
    from producers.client import ImageEditClient

    async with ImageEditClient(config=_client_config(args)) as client:
        doc = await client.stats()
    if output.json:
        output.document(doc)
        return EXIT_OK
    tasks, images = doc.get("tasks", {}), doc.get("images", {})
    cache, upstream, dims = doc.get("cache", {}), doc.get("upstream", {}), doc.get("dimensions", {})
    finished = tasks.get("finished") or {}
    output.say(f"tasks       submitted {tasks.get('submitted', 0):g} · finished "
               + (", ".join(f"{k} {v:g}" for k, v in sorted(finished.items())) or "0")
               + f" · completion {_pct(tasks.get('completion_rate'))}")
    output.say(f"images      completed {images.get('completed', 0):g} · failed {images.get('failed', 0):g}"
               f" · from cache {images.get('from_cache', 0):g}")
    output.say(f"cache       hit rate {_pct(cache.get('hit_rate'))} · upstream calls saved "
               f"{cache.get('upstream_calls_saved', 0):g}")
    in_flight = upstream.get("in_flight") or {}
    output.say(f"upstream    calls {upstream.get('calls', 0):g} · retries {upstream.get('retries', 0):g}"
               f" · 429s {upstream.get('rate_limited_429', 0):g} · in flight "
               + (", ".join(f"p{p}={v:g}" for p, v in sorted(in_flight.items())) or "0"))
    failures = dims.get("fetch_failures_by_reason") or {}
    output.say(f"dimensions  requests {dims.get('requests', 0):g} · cache hits {dims.get('cache_hits', 0):g}"
               f" · fetches {dims.get('fetches', 0):g} · fetch failures "
               + (", ".join(f"{k} {v:g}" for k, v in sorted(failures.items())) or "0"))
    return EXIT_OK


_COMMANDS = {
    "submit": _cmd_submit,
    "status": _cmd_status,
    "watch": _cmd_watch,
    "dims": _cmd_dims,
    "stats": _cmd_stats,
}


def _run_client_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from producers.errors import ImagestreamClientError

    output = _Output(args, out or sys.stdout, err or sys.stderr)
    # aiokafka logs connection failures itself; the client turns them into one error.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(_COMMANDS[args.command](args, output))
    except ImagestreamClientError as exc:
        code = exit_code_for_error(exc)
        if output.json:
            output.document({"error": exc.to_dict(), "exit_code": code})
        output.err.write(f"imagestream {args.command}: {exc.code}: {exc.message}\n")
        output.err.flush()
        return code
    except KeyboardInterrupt:
        output.err.write("\ninterrupted\n")
        return 130


# --- parser --------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with a configurable exit code for usage errors (4: argparse's own 2
    means "partial" here).  ``worker`` keeps argparse's 2."""

    usage_exit_code = EXIT_USAGE

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(self.usage_exit_code, f"{self.prog}: error: {message}\n")


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _connection_options() -> argparse.ArgumentParser:
    """Options every client command takes (before or after the command name)."""
    common = _Parser(add_help=False)
    group = common.add_argument_group("connection (default: IMAGESTREAM_* environment)")
    group.add_argument("--api-url", default=argparse.SUPPRESS, metavar="URL",
                       help="HTTP API base URL (IMAGESTREAM_API_URL)")
    group.add_argument("--bootstrap", default=argparse.SUPPRESS, metavar="HOSTS",
                       help="Kafka bootstrap servers (IMAGESTREAM_KAFKA_BOOTSTRAP); '' to not use Kafka")
    group.add_argument("--token", default=argparse.SUPPRESS, help="API bearer token (IMAGESTREAM_API_TOKEN)")
    group.add_argument("--topic-prefix", default=argparse.SUPPRESS, metavar="PREFIX",
                       help="topic name prefix (IMAGESTREAM_TOPIC_PREFIX)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _connection_options()
    parser = _Parser(prog="imagestream", description=__doc__.split("\n\n")[0], parents=[common],
                     epilog="exit codes: 0 completed, 2 partial, 3 failed, 4 usage/input error, "
                            "5 timeout/unreachable")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    worker = sub.add_parser("worker", help="run a Faust worker with both pipelines and the HTTP API")
    worker.usage_exit_code = 2  # type: ignore[attr-defined]
    worker.add_argument("-l", "--loglevel", default="info")
    worker.add_argument("--web-port", type=int, default=None, help="overrides IMAGESTREAM_WEB_PORT")
    worker.add_argument("--data-dir", default=None, help="overrides IMAGESTREAM_DATA_DIR")
    worker.set_defaults(func=_run_worker)

    sub.add_parser("emulator", help="run the local DashScope emulator (see --help)", add_help=False)

    submit = sub.add_parser("submit", parents=[common], help="submit an image-edit task",
                            description="Submit 1..N images and one edit; by default wait for the task "
                                        "with a progress display and print the outcome.")
    submit.add_argument("images", nargs="+", metavar="IMAGE", help="image files or http(s) URLs")
    submit.add_argument("--edit-type", "-e", required=True,
                        help="enhance, remove_background, colorize, grayscale, style_anime, upscale, restore, custom")
    submit.add_argument("--prompt", "-p", default=None, help="the edit prompt (default: the edit type's template)")
    submit.add_argument("--params", default=None, metavar="JSON",
                        help='other edit params as a JSON object, e.g. \'{"seed": 7}\'')
    submit.add_argument("--via", choices=("http", "kafka"), default="http",
                        help="upload over HTTP (default) or publish to Kafka (URLs and small images only)")
    submit.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="wait for the task to end (default) or print its id at once")
    submit.add_argument("--out", "-o", default=None, metavar="DIR", help="download the result images here")
    submit.add_argument("--timeout", type=_positive, default=600.0, metavar="SECONDS",
                        help="how long to wait for the task (default 600)")
    submit.add_argument("--json", action="store_true", help="print one JSON document")
    submit.set_defaults(func=_run_client_command)

    status = sub.add_parser("status", parents=[common], help="show a task's status")
    status.add_argument("task_id", metavar="TASK_ID")
    status.add_argument("--json", action="store_true", help="print the TaskStatus JSON")
    status.set_defaults(func=_run_client_command)

    watch = sub.add_parser("watch", parents=[common], help="follow a task until it ends")
    watch.add_argument("task_id", metavar="TASK_ID")
    watch.add_argument("--timeout", type=_positive, default=600.0, metavar="SECONDS")
    watch.add_argument("--json", action="store_true",
                       help='JSON lines: {"event": "result", ...ImageResult} and {"event": "status", ...TaskStatus}')
    watch.set_defaults(func=_run_client_command)

    dims = sub.add_parser("dims", parents=[common], help="the size of an image for a session/resource/scene")
    dims.add_argument("url", metavar="URL", nargs="?")
    dims.add_argument("--batch", metavar="FILE", default=None,
                      help='many images at once: a JSON list of {"resource", "url" | "data"} '
                           '(or {"session_id", "scene", "items": [...]}); - reads stdin')
    dims.add_argument("--session", default=None, metavar="SESSION_ID")
    dims.add_argument("--resource", default=None)
    dims.add_argument("--scene", default=None)
    dims.add_argument("--refresh", action="store_true", help="fetch again even if the size is known")
    dims.add_argument("--json", action="store_true", help="print the DimensionResult JSON")
    dims.set_defaults(func=_run_client_command, check=lambda a: _check_dims(dims, a))

    stats = sub.add_parser("stats", parents=[common], help="a worker's counters (GET /api/v1/stats)")
    stats.add_argument("--json", action="store_true", help="print the stats JSON document")
    stats.set_defaults(func=_run_client_command)
    return parser


def _check_dims(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What argparse cannot say: a URL with its key, or --batch FILE (not both)."""
    if args.batch is not None and args.url is not None:
        parser.error("give a URL or --batch FILE, not both")
    if args.batch is None and (args.url is None or not args.session or not args.resource or args.scene is None):
        parser.error("URL needs --session, --resource and --scene (or use --batch FILE)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "emulator":
        return _run_emulator(argv[1:])
    parser = build_parser()
    if argv and argv[0] == "worker":
        parser.usage_exit_code = 2  # type: ignore[attr-defined]  # as before the client commands existed
    args = parser.parse_args(argv)
    if getattr(args, "check", None) is not None:
        args.check(args)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
