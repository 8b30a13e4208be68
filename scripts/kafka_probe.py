#!/usr/bin/env python3
"""Kafka readiness probe using only the Python standard library.

Sends a real Kafka MetadataRequest (v1) over a plain TCP socket and checks
that the response lists the expected broker node.  An open port is not
enough: in KRaft mode the broker only lists itself once it has caught up
with the metadata log and been unfenced, which is what clients need.

Used by ``scripts/kafka`` (no project venv needed), and usable from tests:

    python3 scripts/kafka_probe.py 127.0.0.1:9092             # one attempt
    python3 scripts/kafka_probe.py 127.0.0.1:9092 --wait 60   # poll until ready

Exit codes:
    0  ready: the broker answered and lists node ``--node-id``
    1  nothing reachable: connection refused / timed out / reset
    2  something answered, but not a ready broker (bad response, node missing)
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time

API_KEY_METADATA = 3
API_VERSION = 1  # v1: nullable topics array, brokers carry a rack, has controller_id

EXIT_READY = 0
EXIT_UNREACHABLE = 1
EXIT_NOT_READY = 2


class ProbeError(Exception):
    """The peer answered, but not with a usable Metadata response."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("connection closed by peer")
        buf += chunk
    return bytes(buf)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ProbeError("truncated Metadata response")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def int16(self) -> int:
        return self.take(">h")

    def int32(self) -> int:
        return self.take(">i")

    def nullable_string(self):
        length = self.int16()
        if length < 0:
            return None
        if self.pos + length > len(self.data):
            raise ProbeError("truncated string in Metadata response")
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8", "replace")


def encode_metadata_request(correlation_id: int, client_id: str = "imagestream-probe") -> bytes:
    cid = client_id.encode("utf-8")
    header = struct.pack(">hhih", API_KEY_METADATA, API_VERSION, correlation_id, len(cid)) + cid
    body = struct.pack(">i", 0)  # v1: empty topic array = no topics (we only need brokers)
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def decode_metadata_response(payload: bytes, correlation_id: int) -> dict:
    r = _Reader(payload)
    got = r.int32()
    if got != correlation_id:
        raise ProbeError(f"correlation id mismatch: sent {correlation_id}, got {got}")
    n_brokers = r.int32()
    if n_brokers < 0 or n_brokers > 10_000:
        raise ProbeError(f"implausible broker count {n_brokers}")
    brokers = []
    for _ in range(n_brokers):
        node_id = r.int32()
        host = r.nullable_string()
        port = r.int32()
        rack = r.nullable_string()
        brokers.append({"node_id": node_id, "host": host, "port": port, "rack": rack})
    controller_id = r.int32()
    return {"brokers": brokers, "controller_id": controller_id}


def fetch_metadata(host: str, port: int, timeout: float = 2.0) -> dict:
    """One Metadata round trip. Raises OSError if unreachable, ProbeError if the answer is bad."""
    correlation_id = int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(encode_metadata_request(correlation_id))
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if size <= 0 or size > 64 * 1024 * 1024:
            raise ProbeError(f"implausible response size {size}")
        return decode_metadata_response(_recv_exact(sock, size), correlation_id)


def probe(host: str, port: int, node_id: int = 1, timeout: float = 2.0):
    """Return (exit_code, message)."""
    try:
        md = fetch_metadata(host, port, timeout)
    except ProbeError as exc:
        return EXIT_NOT_READY, f"{host}:{port}: not a ready Kafka broker: {exc}"
    except (ConnectionResetError, BrokenPipeError) as exc:
        # Something accepted the connection and dropped it: a non-Kafka listener,
        # or a broker that is shutting down.
        return EXIT_NOT_READY, f"{host}:{port}: connection dropped: {exc}"
    except (OSError, struct.error) as exc:
        return EXIT_UNREACHABLE, f"{host}:{port}: unreachable: {exc}"
    ids = [b["node_id"] for b in md["brokers"]]
    if node_id not in ids:
        return EXIT_NOT_READY, f"{host}:{port}: answered, but broker node {node_id} not listed (brokers={ids})"
    return EXIT_READY, (
        f"{host}:{port}: ready; brokers="
        + ",".join(f"{b['node_id']}@{b['host']}:{b['port']}" for b in md["brokers"])
        + f" controller={md['controller_id']}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bootstrap", nargs="?", default="127.0.0.1:9092", help="host:port (default 127.0.0.1:9092)")
    ap.add_argument("--node-id", type=int, default=1, help="broker node id that must be listed (default 1)")
    ap.add_argument("--timeout", type=float, default=2.0, help="socket timeout per attempt, seconds")
    ap.add_argument("--wait", type=float, default=0.0, help="keep polling up to this many seconds")
    ap.add_argument("--interval", type=float, default=0.25, help="poll interval, seconds")
    ap.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    args = ap.parse_args(argv)

    host, _, port_s = args.bootstrap.rpartition(":")
    if not host or not port_s.isdigit():
        ap.error(f"bootstrap must be host:port, got {args.bootstrap!r}")
    port = int(port_s)

    deadline = time.monotonic() + max(args.wait, 0.0)
    while True:
        code, msg = probe(host, port, args.node_id, args.timeout)
        if code == EXIT_READY or time.monotonic() >= deadline:
            break
        time.sleep(args.interval)
    if not args.quiet:
        print(msg, file=sys.stdout if code == EXIT_READY else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
