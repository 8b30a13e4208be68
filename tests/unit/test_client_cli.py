"""The ``imagestream`` client commands without a broker: parsing, exit codes, progress."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from producers import cli
from producers.errors import ApiError, InvalidInput, TaskFailed, TaskNotFound, Timeout, Unreachable
from producers.models import ImageResult, TaskStatus
from producers.progress import BarProgress, LineProgress, make_progress, render_bar
from tests.support import free_port


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return cli.build_parser().parse_args(list(argv))


def test_submit_arguments_and_defaults() -> None:
    args = parse("submit", "a.png", "https://h/b.jpg", "--edit-type", "enhance", "--prompt", "提升画质")
    assert args.command == "submit" and args.images == ["a.png", "https://h/b.jpg"]
    assert (args.edit_type, args.prompt, args.params, args.via) == ("enhance", "提升画质", None, "http")
    assert args.wait is True and args.out is None and args.json is False and args.timeout == 600.0
    args = parse("submit", "a.png", "-e", "grayscale", "--params", '{"seed": 7}', "--via", "kafka",
                 "--no-wait", "--out", "dir", "--json", "--timeout", "5")
    assert (args.params, args.via, args.wait, args.out, args.json, args.timeout) == (
        '{"seed": 7}', "kafka", False, "dir", True, 5.0)


def test_connection_options_before_or_after_the_command() -> None:
    before = parse("--api-url", "http://a:1", "--bootstrap", "k:9", "--token", "t", "--topic-prefix", "p.",
                   "status", "T")
    after = parse("status", "T", "--api-url", "http://a:1", "--bootstrap", "k:9", "--token", "t",
                  "--topic-prefix", "p.")
    for args in (before, after):
        assert (args.api_url, args.bootstrap, args.token, args.topic_prefix) == ("http://a:1", "k:9", "t", "p.")
    plain = parse("status", "T")
    assert not hasattr(plain, "api_url")  # unset: the settings (environment) decide


def test_other_commands_parse() -> None:
    assert parse("watch", "T", "--json").json is True
    dims = parse("dims", "http://h/x.png", "--session", "s", "--resource", "r", "--scene", "1", "--refresh")
    assert (dims.url, dims.session, dims.resource, dims.scene, dims.refresh) == ("http://h/x.png", "s", "r", "1", True)
    assert parse("stats").json is False
    worker = parse("worker", "-l", "warning", "--web-port", "7000")
    assert (worker.loglevel, worker.web_port, worker.data_dir) == ("warning", 7000, None)


@pytest.mark.parametrize(
    "argv",
    [["submit", "a.png"], ["submit", "--edit-type", "enhance"], ["status"], ["dims", "u", "--session", "s"],
     ["submit", "a.png", "-e", "x", "--via", "carrier-pigeon"], ["submit", "a.png", "-e", "x", "--timeout", "0"],
     ["frobnicate"], []],
)
def test_usage_errors_exit_4(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == cli.EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


def test_worker_usage_errors_keep_argparse_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["worker", "--no-such-flag"])
    assert info.value.code == 2


def test_exit_codes_for_task_states() -> None:
    assert [cli.exit_code_for_status(s) for s in ("completed", "partial", "failed", "processing", "pending")] == [
        0, 2, 3, 0, 0]


def test_exit_codes_for_errors() -> None:
    failed = TaskStatus(task_id="t", status="failed", total_images=1, failed_images=1)
    partial = TaskStatus(task_id="t", status="partial", total_images=2, completed_images=1, failed_images=1)
    cases = [
        (InvalidInput("no such file", code="file_not_found"), 4),
        (ApiError("unknown edit_type", status=400, code="unknown_edit_type"), 4),
        (ApiError("too big", status=413, code="image_too_large"), 4),
        (TaskNotFound("t"), 4),
        (ApiError("slow down", status=429, code="rate_limited"), 5),
        (ApiError("joining", status=503, code="not_ready"), 5),
        (ApiError("bug", status=500, code="internal_error"), 5),
        (Timeout("late"), 5),
        (Unreachable("down", service="kafka"), 5),
        (TaskFailed(failed), 3),
        (TaskFailed(partial), 2),
        (RuntimeError("?"), 1),
    ]
    assert [cli.exit_code_for_error(exc) for exc, _ in cases] == [code for _, code in cases]


def test_missing_file_exits_4_before_any_network(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    code = cli.main(["submit", str(tmp_path / "nope.png"), "-e", "enhance", "--api-url", dead, "--bootstrap", ""])
    assert code == cli.EXIT_USAGE
    assert "file_not_found" in capsys.readouterr().err


def test_bad_params_json_exits_4_with_a_json_error_document(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    code = cli.main(["submit", str(image), "-e", "enhance", "--params", "{oops", "--json", "--bootstrap", ""])
    doc = json.loads(capsys.readouterr().out)
    assert code == 4
    assert doc["exit_code"] == 4 and doc["error"]["code"] == "invalid_edit_params"
    assert doc["error"]["message"].startswith("params are not valid JSON")


def test_unreachable_api_exits_5(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["status", "some-task", "--api-url", dead]) == cli.EXIT_UNAVAILABLE
    assert "unreachable" in capsys.readouterr().err
    assert cli.main(["stats", "--api-url", dead, "--json"]) == cli.EXIT_UNAVAILABLE
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "unreachable"


def test_large_image_over_kafka_is_uploaded_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "big.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200_000)
    dead_api = f"http://127.0.0.1:{free_port()}"
    dead_kafka = f"127.0.0.1:{free_port()}"
    # Too large to go inline: the client uploads it through the API first, which is down.
    code = cli.main(["submit", str(image), "-e", "enhance", "--via", "kafka", "--bootstrap", dead_kafka,
                     "--api-url", dead_api])
    assert code == cli.EXIT_UNAVAILABLE
    assert "unreachable" in capsys.readouterr().err


def test_module_entry_point_runs_and_does_not_load_the_app() -> None:
    probe = ("import sys, producers, producers.cli, producers.sync; "
             "print(any(m.startswith('streams') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
    result = subprocess.run([sys.executable, "-m", "producers.cli", "submit", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "--edit-type" in result.stdout


# --- progress ------------------------------------------------------------------------------
def result(index: int, *, cached: bool = False, failed: bool = False) -> ImageResult:
    return ImageResult(task_id="t", index=index, filename=f"i{index}.png",
                       status="failed" if failed else "completed", from_cache=cached,
                       cache_status=None if failed else ("HIT" if cached else "MISS"), duration_ms=12.0,
                       result_url=None if failed else f"http://h/{index}")


def test_render_bar() -> None:
    line = render_bar(5, 10, cached=3, fresh=1, failed=1, elapsed=1.25, width=10)
    assert line == "[█████░░░░░] 5/10 images · 3 cached · 1 fresh · 1 failed · 1.2s"
    assert render_bar(0, 0, cached=0, fresh=0, failed=0, elapsed=0, width=4).startswith("[████]")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_lines_elsewhere() -> None:
    assert isinstance(make_progress(Tty(), 3), BarProgress)
    assert isinstance(make_progress(io.StringIO(), 3), LineProgress)

    tty = Tty()
    bar = make_progress(tty, 3)
    for r in (result(0, cached=True), result(0, cached=True), result(1), result(2, failed=True)):
        bar.result(r)
    bar.close()
    text = tty.getvalue()
    assert text.count("\r") == 5 and text.endswith("\n")  # drawn at start, 3 new results, close
    assert "3/3 images · 1 cached · 1 fresh · 1 failed" in text

    plain = io.StringIO()
    lines = make_progress(plain, 2)
    lines.result(result(0, cached=True))
    lines.result(result(0, cached=True))  # a duplicate is not counted twice
    lines.result(result(1, failed=True))
    assert plain.getvalue().splitlines() == ["[1/2] i0.png completed (cache HIT, 12 ms)",
                                             "[2/2] i1.png failed (no reason given)"]
    assert make_progress(plain, 2, quiet=True).__class__.__name__ == "NullProgress"


@pytest.mark.parametrize("argv", [["dims", "--batch", "f.json", "http://h/x.png"], ["dims", "--session", "s"],
                                  ["dims", "http://h/x.png", "--session", "s", "--resource", "r"]])
def test_dims_needs_a_url_with_its_key_or_a_batch(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == cli.EXIT_USAGE and "usage:" in capsys.readouterr().err


def test_dims_batch_parses() -> None:
    args = parse("dims", "--batch", "-", "--session", "s", "--scene", "2")
    assert (args.batch, args.url, args.session, args.scene) == ("-", None, "s", "2")
