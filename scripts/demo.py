#!/usr/bin/env python3
"""End-to-end demo: emulator (or the real DashScope), a worker, a real task.

Run by ``make demo`` after the Kafka broker is up.  It

1. starts the DashScope emulator, unless ``DASHSCOPE_API_KEY`` is set and
   ``DASHSCOPE_HTTP_BASE_URL`` is not (then the real service is used);
2. starts ``imagestream worker`` and waits for ``/healthz``;
3. submits 6 generated images with the prompt "提升画质，增强细节" over HTTP, follows
   the task to completion and saves the results in ``demo-out/``;
4. submits the same images again with extra whitespace in the prompt and shows
   that every result now comes from the cache;
5. asks for the dimensions of an image URL twice (placeholder, then the real size).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "demo-out"
PROMPT = "提升画质，增强细节"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Failed(Exception):
    """The demo cannot go on; the message says why."""


def wait_until(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise Failed(f"timed out after {timeout:.0f}s waiting for {what}")


def explain(api: str, worker_log: Path) -> None:
    """Why the demo failed: the worker's /healthz body and the last lines of its log."""
    try:
        code, body = http_json("GET", f"{api}/healthz")
        print(f"demo: /healthz answered {code}: {json.dumps(body)}", file=sys.stderr)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        print(f"demo: /healthz did not answer ({exc})", file=sys.stderr)
    try:
        tail = worker_log.read_text(errors="replace").splitlines()[-40:]
    except FileNotFoundError:
        tail = ["(no worker log)"]
    print(f"demo: the last lines of {worker_log}:", *tail, sep="\n  ", file=sys.stderr)


def http_json(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def multipart(fields: dict[str, str], files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for filename, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{filename}"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def sample_images(n: int, tag: str = "") -> list[tuple[str, bytes]]:
    """``n`` PNGs; ``tag`` is drawn into them (another tag: other pictures, cache misses)."""
    from PIL import Image, ImageDraw

    images = []
    for i in range(n):
        img = Image.new("RGB", (640, 480), (40 + 30 * i, 80, 160 - 20 * i))
        draw = ImageDraw.Draw(img)
        for k in range(12):
            draw.ellipse((20 + 45 * k, 60 + 10 * i, 90 + 45 * k, 200 + 15 * k), outline=(250, 220 - 15 * k, 40), width=4)
        draw.text((30, 420), f"imagestream demo #{i} {tag}".rstrip(), fill=(255, 255, 255))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        images.append((f"sample-{i}.png", buf.getvalue()))
    return images


def run_task(api: str, files: list[tuple[str, bytes]], prompt: str) -> dict:
    body, ctype = multipart({"edit_type": "enhance", "edit_params": json.dumps({"prompt": prompt})}, files)
    status, accepted = http_json("POST", f"{api}/api/v1/image-edit/submit", body, {"Content-Type": ctype})
    if status != 202:
        raise Failed(f"submit answered {status}: {accepted}")
    task_id = accepted["task_id"]
    print(f"  submitted task {task_id} ({accepted['total_images']} images)")
    last = -1

    def done() -> dict | None:
        nonlocal last
        code, doc = http_json("GET", f"{api}/api/v1/image-edit/task/{task_id}")
        if code != 200:
            return None
        if doc["completed_images"] + doc["failed_images"] != last:
            last = doc["completed_images"] + doc["failed_images"]
            print(f"  {doc['status']:<10} {doc['progress']:5.1f}%  ({doc['completed_images']} done, "
                  f"{doc['failed_images']} failed)")
        return doc if doc["status"] in ("completed", "partial", "failed") else None

    return wait_until(done, 180, f"task {task_id}")


def main() -> int:
    procs: list[subprocess.Popen[bytes]] = []
    logs = REPO / "demo-out" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("IMAGESTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    env.setdefault("IMAGESTREAM_DATA_DIR", str(REPO / "data" / "demo"))
    env.setdefault("IMAGESTREAM_FETCH_ALLOWLIST", "127.0.0.1")
    use_real = bool(env.get("DASHSCOPE_API_KEY")) and not env.get("DASHSCOPE_HTTP_BASE_URL")
    py = sys.executable
    api = ""

    def spawn(name: str, args: list[str]) -> None:
        log = open(logs / f"{name}.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen([py, "-m", "producers.cli", *args], env=env, cwd=REPO, stdout=log,
                                      stderr=subprocess.STDOUT))

    try:
        if use_real:
            print("== using the real DashScope service (DASHSCOPE_API_KEY set, no base-URL override)")
        else:
            port = free_port()
            env["DASHSCOPE_HTTP_BASE_URL"] = f"http://127.0.0.1:{port}/api/v1"
            env["DASHSCOPE_API_KEY"] = env.get("DASHSCOPE_API_KEY") or "sk-emulator"
            # Unlimited: imagestream has no cluster-wide account-budget scheduler yet, so a
            # worker against the emulator's default per-model limits (2 requests/s) meets 429s.
            spawn("emulator", ["emulator", "--port", str(port), "--latency", "lognormal:0.8,0.4",
                               "--unlimited", "--api-key", env["DASHSCOPE_API_KEY"]])
            wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/_emulator/stats", timeout=2),
                       30, "emulator")
            print(f"== DashScope emulator on http://127.0.0.1:{port} (lognormal latency, median 0.8 s)")
        web_port = free_port()
        env["IMAGESTREAM_WEB_PORT"] = str(web_port)
        api = f"http://127.0.0.1:{web_port}"  # IMAGESTREAM_API_URL unset: result links follow the port
        spawn("worker", ["worker", "-l", "info"])
        started = time.monotonic()

        def worker_ready() -> bool:
            if procs[-1].poll() is not None:
                raise Failed(f"the worker exited with code {procs[-1].returncode}")
            return http_json("GET", f"{api}/healthz")[0] == 200

        wait_until(worker_ready, 180, "the worker's /healthz")
        print(f"== worker ready at {api} in {time.monotonic() - started:.1f}s (log: {logs / 'worker.log'})")

        # Against the emulator every run edits new pictures, so task 1 always shows the
        # upstream calls (the worker's cache in data/demo outlives the run); against the
        # real service the same pictures, so a rerun is answered from the cache, unpaid.
        files = sample_images(6, "" if use_real else time.strftime("%Y-%m-%d %H:%M:%S"))
        print(f"== task 1: 6 images, edit_type=enhance, prompt {PROMPT!r}")
        t0 = time.monotonic()
        first = run_task(api, files, PROMPT)
        print(f"  -> {first['status']} in {time.monotonic() - t0:.2f}s")
        OUT.mkdir(exist_ok=True)
        for result in first["results"]:
            if result["status"] == "completed":
                target = OUT / f"edited-{result['filename']}"
                with urllib.request.urlopen(result["result_url"], timeout=30) as resp:
                    target.write_bytes(resp.read())
                print(f"  [{result['index']}] {result['filename']}: {result['status']}, "
                      f"from_cache={result['from_cache']} -> {target.relative_to(REPO)}")
            else:
                print(f"  [{result['index']}] {result['filename']}: failed {result.get('error')}")

        messy = f" \u3000 {PROMPT}  \t\r\n"
        print(f"== task 2: the same images, prompt with extra whitespace {messy!r}")
        t0 = time.monotonic()
        second = run_task(api, files, messy)
        hits = sum(1 for r in second["results"] if r["from_cache"])
        print(f"  -> {second['status']} in {time.monotonic() - t0:.2f}s, {hits}/{len(second['results'])} from cache")
        if not use_real:
            with urllib.request.urlopen(env["DASHSCOPE_HTTP_BASE_URL"].rsplit("/api/", 1)[0] + "/_emulator/stats") as r:
                stats = json.loads(r.read())
            print(f"  emulator: {stats.get('total_requests')} upstream calls in all, max {stats.get('max_in_flight')} "
                  f"in flight (at most 3 per partition; the images' cache keys spread them over partitions)")
        if first["status"] == "completed" and hits == len(second["results"]):
            return 0
        raise Failed(f"task 1 ended {first['status']}, task 2 had {hits}/{len(second['results'])} from the cache")
    except Failed as exc:
        print(f"demo: FAILED: {exc}", file=sys.stderr)
        if api:
            explain(api, logs / "worker.log")
        return 1
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
