#!/usr/bin/env python3
"""Readiness probe and bucket creation for scripts/s3 — stdlib only (no venv needed).

    s3_probe.py ENDPOINT [--bucket NAME] [--timeout S] [-q]

Sends a SigV4-signed ListBuckets (GET /) with the credentials in S3_ACCESS_KEY /
S3_SECRET_KEY (and S3_REGION); with --bucket, then creates that bucket (PUT /NAME;
"already yours" counts as success).

Exit status: 0 ready (and the bucket exists), 1 nothing answers, 2 something answers
but not as our S3 server with our credentials.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import http.client
import os
import sys
from urllib.parse import urlsplit

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signed_headers(method: str, host: str, path: str, access: str, secret: str, region: str) -> dict[str, str]:
    """AWS Signature Version 4 headers for a request with an empty body and no query."""
    now = dt.datetime.now(dt.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = {"host": host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": amz_date}
    names = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", names, EMPTY_SHA256]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret}".encode(), day), region), "s3"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={names}, Signature={signature}"
    )
    return headers


def request(endpoint: str, method: str, path: str, timeout: float) -> tuple[int, bytes]:
    parts = urlsplit(endpoint)
    host = parts.netloc
    access = os.environ.get("S3_ACCESS_KEY", "imagestream")
    secret = os.environ.get("S3_SECRET_KEY", "imagestream-secret")
    region = os.environ.get("S3_REGION", "us-east-1")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        headers = signed_headers(method, host, path, access, secret, region)
        headers["content-length"] = "0"
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("endpoint")
    ap.add_argument("--bucket")
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args()

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"s3_probe: {msg}", file=sys.stderr)

    try:
        status, body = request(args.endpoint, "GET", "/", args.timeout)
    except OSError as exc:
        say(f"{args.endpoint}: {exc}")
        return 1
    if status != 200 or b"ListAllMyBucketsResult" not in body:
        say(f"{args.endpoint}: ListBuckets answered {status}: {body[:300]!r}")
        return 2
    if args.bucket:
        try:
            status, body = request(args.endpoint, "PUT", f"/{args.bucket}", args.timeout)
        except OSError as exc:
            say(f"create bucket {args.bucket}: {exc}")
            return 1
        if status != 200 and b"BucketAlreadyOwnedByYou" not in body:
            say(f"create bucket {args.bucket}: {status}: {body[:300]!r}")
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
