"""``imagestream emulator``: run the local DashScope emulator.

Point the SDK (or a worker) at it with
``DASHSCOPE_HTTP_BASE_URL=http://HOST:PORT/api/v1`` and ``DASHSCOPE_API_KEY=sk-emulator``.

Options (each may also come from an environment variable; a command-line flag wins):

=====================  ==================================  ==============================
flag                   env                                 meaning
=====================  ==================================  ==============================
``--host``             ``IMAGESTREAM_EMULATOR_HOST``        bind address (127.0.0.1)
``--port``             ``IMAGESTREAM_EMULATOR_PORT``        port (8089; 0 = any free port)
``--latency``          ``IMAGESTREAM_EMULATOR_LATENCY``     ``none``, ``fixed:0.5`` or
                                                           ``lognormal:MEDIAN,SIGMA``
``--rate-429``         ``IMAGESTREAM_EMULATOR_RATE_429``    share of calls answered 429
``--weights-429``      ``IMAGESTREAM_EMULATOR_WEIGHTS_429`` ``RATE,BURST,QUOTA`` weights of
                                                           the three 429 messages
                                                           (0.85,0.1,0.05)
``--rate-500``         ``IMAGESTREAM_EMULATOR_RATE_500``    share answered 500 InternalError
``--rate-inspection``  ``IMAGESTREAM_EMULATOR_RATE_INSPECTION``  share answered 400
                                                           DataInspectionFailed
``--rate-drop``        ``IMAGESTREAM_EMULATOR_RATE_DROP``   share whose connection is closed
                                                           without a response
``--seed``             ``IMAGESTREAM_EMULATOR_SEED``        seed of the fault RNG
``--api-key``          ``IMAGESTREAM_EMULATOR_API_KEY``     accepted key(s), comma separated
                                                           (sk-emulator)
``--result-ttl``       ``IMAGESTREAM_EMULATOR_RESULT_TTL``  seconds result URLs stay valid
                                                           (86400)
``--account-rps``      ``IMAGESTREAM_EMULATOR_ACCOUNT_RPS`` emulated account limit,
                                                           requests/second (off)
``--public-url``       ``IMAGESTREAM_EMULATOR_PUBLIC_URL``  base of result URLs (default:
                                                           the host the call came in on)
=====================  ==================================  ==============================

The API keys and result URL signatures are never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence

from aiohttp import web

from emulator.app import DEFAULT_API_KEY, EmulatorConfig, SafeAccessLogger, create_app
from emulator.faults import FaultConfig, FaultConfigError, Latency

__all__ = ["build_parser", "config_from_args", "main"]

ENV_PREFIX = "IMAGESTREAM_EMULATOR_"

log = logging.getLogger("imagestream.emulator")


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; defaults come from ``IMAGESTREAM_EMULATOR_*`` in ``environ``."""
    env = os.environ if environ is None else environ

    def default(name: str, fallback: str | None) -> str | None:
        value = env.get(ENV_PREFIX + name)
        return value if value not in (None, "") else fallback

    parser = argparse.ArgumentParser(
        prog="imagestream emulator",
        description="Local DashScope (qwen-image-edit) emulator with fault injection.",
    )
    parser.add_argument("--host", default=default("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=default("PORT", "8089"))
    parser.add_argument(
        "--latency",
        default=default("LATENCY", "none"),
        help="none | fixed:SECONDS | lognormal:MEDIAN,SIGMA",
    )
    parser.add_argument("--rate-429", type=float, default=default("RATE_429", "0"))
    parser.add_argument(
        "--weights-429",
        default=default("WEIGHTS_429", "0.85,0.1,0.05"),
        help="weights of 'rate limit exceeded', 'increased too quickly', 'quota exceeded'",
    )
    parser.add_argument("--rate-500", type=float, default=default("RATE_500", "0"))
    parser.add_argument("--rate-inspection", type=float, default=default("RATE_INSPECTION", "0"))
    parser.add_argument("--rate-drop", type=float, default=default("RATE_DROP", "0"))
    parser.add_argument("--rate-408", type=float, default=default("RATE_408", "0"))
    parser.add_argument("--rate-503", type=float, default=default("RATE_503", "0"))
    parser.add_argument("--seed", type=int, default=default("SEED", None))
    parser.add_argument(
        "--api-key",
        default=default("API_KEY", DEFAULT_API_KEY),
        help="accepted API key(s), comma separated",
    )
    parser.add_argument("--result-ttl", type=float, default=default("RESULT_TTL", "86400"))
    parser.add_argument("--account-rps", type=float, default=default("ACCOUNT_RPS", None),
                        help="one requests/second limit for every model instead of the catalogue's")
    parser.add_argument("--unlimited", action="store_true",
                        default=default("UNLIMITED", "") in ("1", "true", "yes", "on"),
                        help="no account rate limits (on by default: the catalogue's per-model limits, "
                             "summed over all keys, as the real service applies them)")
    parser.add_argument("--output-size", choices=("1mp", "input"), default=default("OUTPUT_SIZE", "1mp"),
                        help="1mp: ~1024*1024 keeping the last input's aspect (the real default); "
                             "input: the last input's own size")
    parser.add_argument("--public-url", default=default("PUBLIC_URL", None))
    parser.add_argument("--log-level", default=default("LOG_LEVEL", "INFO"))
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Turn parsed arguments into an :class:`EmulatorConfig` (raises ValueError)."""
    weights = tuple(float(part) for part in str(args.weights_429).split(","))
    if len(weights) != 3:
        raise FaultConfigError("--weights-429 needs three comma-separated numbers")
    faults = FaultConfig(
        latency=Latency.parse(args.latency),
        rate_429=args.rate_429,
        rate_500=args.rate_500,
        rate_inspection=args.rate_inspection,
        rate_drop=args.rate_drop,
        rate_408=args.rate_408,
        rate_503=args.rate_503,
        weights_429=weights,  # type: ignore[arg-type]
    )
    keys = tuple(key.strip() for key in str(args.api_key).split(",") if key.strip())
    return EmulatorConfig(
        api_keys=keys,
        faults=faults,
        seed=args.seed,
        result_ttl=args.result_ttl,
        account_rps=args.account_rps,
        account_limits=not args.unlimited,
        output_size=args.output_size,
        public_url=args.public_url,
    )


async def _serve(config: EmulatorConfig, host: str, port: int) -> None:
    runner = web.AppRunner(create_app(config), access_log_class=SafeAccessLogger)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
        faults = config.faults
        log.info(
            "DashScope emulator at http://%s:%s/api/v1 (latency %s, 429 %.2f, 500 %.2f, "
            "inspection %.2f, drop %.2f, account rps %s, %d API key(s))",
            shown,
            bound_port,
            faults.latency,
            faults.rate_429,
            faults.rate_500,
            faults.rate_inspection,
            faults.rate_drop,
            config.account_rps or "off",
            len(config.api_keys),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("DashScope emulator stopping")
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Run the emulator until interrupted. Returns a process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=str(args.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"imagestream emulator: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(config, args.host, args.port))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        where = f"{args.host}:{args.port}"
        print(f"imagestream emulator: cannot listen on {where}: {exc}", file=sys.stderr)
        return 1
    return 0


def _entry(argv: Sequence[str] | None = None) -> None:  # pragma: no cover
    raise SystemExit(main(list(argv) if argv is not None else None))


if __name__ == "__main__":  # pragma: no cover
    _entry()
