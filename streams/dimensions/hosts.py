"""Per-host request headers and concurrency caps of the dimension fetcher.

Some image hosts refuse unknown User-Agents or want a Referer (hotlink protection);
a fragile origin wants fewer connections than an object store.  Both come from one
TOML file, ``IMAGESTREAM_DIMENSION_HEADERS_FILE``::

    [default]                          # every host (optional)
    headers = { "User-Agent" = "Mozilla/5.0 (compatible; myapp/2.1)" }

    [hosts."img.example.com"]          # exactly this host
    headers = { Referer = "https://www.example.com/" }
    concurrency = 4                    # at most 4 fetches at once to it

    [hosts."*.cdn.example.net"]        # any subdomain (not the bare domain)
    headers = { "X-Api-Key" = "..." }  # values are never logged

A host's headers are the default headers overlaid by those of the most specific
pattern that matches it (an exact name beats any wildcard; a longer wildcard beats
a shorter one); only that pattern's ``concurrency`` applies.  Without a file every
host gets :data:`DEFAULT_HEADERS` and no cap below ``IMAGESTREAM_DIMENSION_PER_HOST``.

:class:`HostPolicy` is pure data plus :meth:`HostPolicy.gate`, one semaphore per
capped pattern (hosts matching the same pattern share it, as they usually share an
origin).
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.settings import SettingsError

__all__ = ["DEFAULT_HEADERS", "HostPolicy", "HostRule", "load_policy", "parse_policy"]

#: Sent to every host unless the file says otherwise.  Browser-compatible in form
#: (hosts that refuse unknown agents mostly check for a ``Mozilla/`` prefix), honest
#: about who asks.
DEFAULT_HEADERS: Mapping[str, str] = {
    "User-Agent": "Mozilla/5.0 (compatible; imagestream/0.1; image-dimensions)",
    "Accept": "image/avif,image/webp,image/*,*/*;q=0.5",
}
#: Headers the fetcher decides itself (byte offsets and connection handling).
RESERVED = frozenset({"host", "range", "if-range", "if-none-match", "if-modified-since", "accept-encoding",
                      "content-length", "transfer-encoding", "connection"})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_PATTERN = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class HostRule:
    """One ``[hosts."pattern"]`` table."""

    pattern: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    concurrency: int | None = None

    def matches(self, host: str) -> bool:
        if self.pattern.startswith("*."):
            return host.endswith(self.pattern[1:])
        return host == self.pattern

    @property
    def specificity(self) -> tuple[int, int]:
        return (0 if self.pattern.startswith("*.") else 1, len(self.pattern))


@dataclass
class HostPolicy:
    """What the fetcher sends to, and how often it may ask, each host."""

    default_headers: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_HEADERS), repr=False)
    rules: tuple[HostRule, ...] = ()
    _gates: dict[str, asyncio.Semaphore] = field(default_factory=dict, repr=False)
    _memo: dict[str, HostRule | None] = field(default_factory=dict, repr=False)

    def rule_for(self, host: str) -> HostRule | None:
        """The most specific rule matching ``host`` (a lower-cased name), or None."""
        host = host.lower().rstrip(".")
        if host in self._memo:
            return self._memo[host]
        found = [r for r in self.rules if r.matches(host)]
        rule = max(found, key=lambda r: r.specificity) if found else None
        if len(self._memo) > 10_000:
            self._memo.clear()
        self._memo[host] = rule
        return rule

    def headers_for(self, host: str) -> dict[str, str]:
        rule = self.rule_for(host)
        return {**self.default_headers, **(rule.headers if rule is not None else {})}

    def gate(self, host: str) -> asyncio.Semaphore | None:
        """The semaphore capping fetches to ``host``, or None when it has no cap."""
        rule = self.rule_for(host)
        if rule is None or rule.concurrency is None:
            return None
        gate = self._gates.get(rule.pattern)
        if gate is None:
            gate = self._gates[rule.pattern] = asyncio.Semaphore(rule.concurrency)
        return gate


def _headers(obj: Any, where: str) -> dict[str, str]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise SettingsError(f"{where}.headers must be a table of strings")
    out: dict[str, str] = {}
    for name, value in obj.items():
        if not isinstance(value, str) or not _TOKEN.match(name):
            raise SettingsError(f"{where}.headers.{name!r}: header names are tokens, values strings")
        if name.lower() in RESERVED:
            raise SettingsError(f"{where}.headers.{name!r} is set by the fetcher itself")
        if "\r" in value or "\n" in value:
            raise SettingsError(f"{where}.headers.{name!r} contains a line break")
        out[name] = value
    return out


def parse_policy(document: Mapping[str, Any], *, source: str = "headers file") -> HostPolicy:
    """A :class:`HostPolicy` from a parsed TOML document; :class:`SettingsError` naming
    the offending entry otherwise."""
    unknown = set(document) - {"default", "hosts"}
    if unknown:
        raise SettingsError(f"{source}: unknown tables {sorted(unknown)} (expected [default] and [hosts.\"...\"])")
    default = document.get("default") or {}
    if not isinstance(default, dict) or set(default) - {"headers"}:
        raise SettingsError(f"{source}: [default] takes only headers")
    # Header names are case-insensitive: a file's User-Agent replaces ours whatever its case.
    merged = {k: v for k, v in DEFAULT_HEADERS.items()}
    for name, value in _headers(default.get("headers"), f"{source} [default]").items():
        for known in [k for k in merged if k.lower() == name.lower()]:
            del merged[known]
        merged[name] = value
    rules: list[HostRule] = []
    hosts = document.get("hosts") or {}
    if not isinstance(hosts, dict):
        raise SettingsError(f"{source}: hosts must be tables [hosts.\"pattern\"]")
    for pattern, body in hosts.items():
        where = f"{source} [hosts.{pattern!r}]"
        key = pattern.strip().lower().rstrip(".")
        if not _PATTERN.match(key):
            raise SettingsError(f"{where}: a host name, or *.domain for its subdomains")
        if not isinstance(body, dict) or set(body) - {"headers", "concurrency"}:
            raise SettingsError(f"{where}: takes headers and concurrency only")
        concurrency = body.get("concurrency")
        if concurrency is not None and (not isinstance(concurrency, int) or isinstance(concurrency, bool)
                                        or concurrency < 1):
            raise SettingsError(f"{where}: concurrency must be an integer >= 1")
        rules.append(HostRule(pattern=key, headers=_headers(body.get("headers"), where), concurrency=concurrency))
    return HostPolicy(default_headers=merged, rules=tuple(rules))


def load_policy(path: Path | None) -> HostPolicy:
    """The policy of ``IMAGESTREAM_DIMENSION_HEADERS_FILE`` (None: the defaults)."""
    if path is None:
        return HostPolicy()
    try:
        with open(path, "rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise SettingsError(f"IMAGESTREAM_DIMENSION_HEADERS_FILE={path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"IMAGESTREAM_DIMENSION_HEADERS_FILE={path}: not TOML ({exc})") from None
    return parse_policy(document, source=str(path))
