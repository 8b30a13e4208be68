"""Where the dimension fetcher may connect.

Image URLs come from users, so a fetch must not become a way into the private
network (SSRF).  Two checks, both needed:

* :func:`validate_url` -- before every request (the first and each redirect
  target): http/https only, a host, no userinfo, and when the host is an IP
  literal in any spelling the resolver would accept (``127.0.0.1``,
  ``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``[::ffff:127.0.0.1]``) the address
  is checked right there, so a refused address is never connected to.
* :class:`GuardedResolver` -- an :class:`aiohttp.abc.AbstractResolver` that
  resolves a host name and keeps only the addresses that pass.  The connector
  connects to exactly what the resolver returned, so there is no window between
  the check and the connection (no DNS rebinding).  :class:`GuardedConnector`
  is the TCPConnector that carries it.

An address is refused when it is loopback, private (RFC 1918, fc00::/7),
link-local, multicast, unspecified, reserved, shared (CGNAT 100.64/10), not
globally routable for any other reason, a cloud metadata address, or an IPv6
form that embeds such an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64,
6to4, Teredo) -- unless the address, or the host name it was reached by, is in
the allowlist (``Settings.fetch_allowlist``): networks match addresses; strings
match host names exactly, or as a suffix when they start with a dot
(``.example.com``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from streams.errors import FetchError

__all__ = [
    "Allowlist",
    "GuardedConnector",
    "GuardedResolver",
    "IPAddress",
    "address_allowed",
    "check_address",
    "host_allowlisted",
    "parse_ip_literal",
    "redact_url",
    "refusal_reason",
    "validate_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Allowlist = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network | str, ...]

ALLOWED_SCHEMES = frozenset({"http", "https"})

#: Cloud instance-metadata endpoints, named explicitly (they are also link-local,
#: private or CGNAT, so the general rules refuse them too).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, ...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


# ---------------------------------------------------------------------- addresses
def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """IPv4 in the forms inet_aton() accepts: 1..4 parts, decimal, octal or hex."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        try:
            if part[:2].lower() == "0x":
                numbers.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                numbers.append(int(part, 8))
            else:
                numbers.append(int(part, 10))
        except ValueError:
            return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for i, n in enumerate(head):
        value |= n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a URL host denotes, or None for a host name."""
    text = host.strip().removeprefix("[").removesuffix("]")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if text and all(c in "0123456789abcdefxABCDEFX." for c in text):
        return _legacy_ipv4(text.rstrip(".") if text.count(".") == 4 else text)
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # ::a.b.c.d (not :: or ::1)
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def refusal_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be reached (ignoring the allowlist), or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(int(ip))  # drop any %zone
        inner = _embedded_ipv4(ip)
        if inner is not None:  # judged by the IPv4 address it carries
            reason = refusal_reason(inner)
            return None if reason is None else f"embeds {inner}, {reason}"
    if ip in METADATA_ADDRESSES:
        return "cloud metadata address"
    for test, reason in (
        (ip.is_loopback, "loopback"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.version == 4 and ip in _CGNAT, "shared address space (CGNAT)"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not globally routable"),
    ):
        if test:
            return reason
    return None


def _networks(allowlist: Allowlist) -> Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return (entry for entry in allowlist if not isinstance(entry, str))


def address_allowed(ip: IPAddress, allowlist: Allowlist = ()) -> bool:
    """True when ``ip`` may be reached: not refused, or in an allowlisted network."""
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
        candidates.append(inner)
    for net in _networks(allowlist):
        if any(c.version == net.version and c in net for c in candidates):
            return True
    return refusal_reason(ip) is None


def _normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def host_allowlisted(host: str, allowlist: Allowlist = ()) -> bool:
    """True when the host name itself is allowlisted (every address it has is then allowed)."""
    name = _normal_host(host)
    for entry in allowlist:
        if isinstance(entry, str):
            entry = _normal_host(entry) if not entry.startswith(".") else entry.lower()
            if name == entry or (entry.startswith(".") and name.endswith(entry)):
                return True
    return False


def check_address(ip: IPAddress, host: str, allowlist: Allowlist = ()) -> None:
    """Raise ``FetchError('refused_address')`` unless ``ip`` (reached as ``host``) may be used."""
    if host_allowlisted(host, allowlist) or address_allowed(ip, allowlist):
        return
    raise FetchError("refused_address", f"refusing {host} ({ip}): {refusal_reason(ip)}")


# --------------------------------------------------------------------------- URLs
def validate_url(url: str | URL, allowlist: Allowlist = ()) -> URL:
    """Parse and check a URL to fetch; raise ``FetchError`` (invalid_url, refused_address)."""
    text = str(url)
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in text.strip()) or "\\" in text:
        raise FetchError("invalid_url", f"URL contains whitespace, control characters or backslashes: {redact_url(text)}")
    try:
        parsed = url if isinstance(url, URL) else URL(text.strip())
        host = parsed.raw_host
        port = parsed.port
    except (ValueError, TypeError) as exc:
        raise FetchError("invalid_url", f"unparseable URL ({exc.__class__.__name__})") from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise FetchError("invalid_url", f"scheme {parsed.scheme!r} is not http or https")
    if not host:
        raise FetchError("invalid_url", "URL has no host")
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise FetchError("invalid_url", f"URL carries credentials: {redact_url(parsed)}")
    if port is None or not 0 < port < 65536:
        raise FetchError("invalid_url", f"bad port in {redact_url(parsed)}")
    ip = parse_ip_literal(host)
    if ip is not None:
        check_address(ip, host, allowlist)
    elif host.replace(".", "").isdigit():  # digits that are no address: never a name
        raise FetchError("invalid_url", f"host {host!r} is neither an address nor a name")
    return parsed


def redact_url(url: str | URL) -> str:
    """``scheme://host[:port]/path?key=***`` -- no userinfo, query values, fragment.

    Signed image URLs carry credentials in their query; use this for every log line
    and error message.
    """
    try:
        parsed = url if isinstance(url, URL) else URL(str(url))
        host = parsed.raw_host or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parsed.explicit_port}" if parsed.explicit_port is not None else ""
        query = "&".join(f"{key}=***" for key in parsed.query)
        return f"{parsed.scheme}://{host}{port}{parsed.raw_path}" + (f"?{query}" if query else "")
    except (ValueError, TypeError):
        return "<unparseable URL>"


# ----------------------------------------------------------------------- resolver
class GuardedResolver(AbstractResolver):
    """Resolve, then keep only the addresses the fetcher may reach.

    Raises ``FetchError('refused_address')`` when none is left.  aiohttp does not
    call a resolver for canonical IP literals: :func:`validate_url` checks those.
    """

    def __init__(self, allowlist: Allowlist = (), resolver: AbstractResolver | None = None) -> None:
        self.allowlist = tuple(allowlist)
        self._inner = resolver if resolver is not None else ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        ip = parse_ip_literal(host)
        if ip is not None:  # legacy spellings reach here: answer with the canonical form
            check_address(ip, host, self.allowlist)
            return [
                ResolveResult(
                    hostname=host,
                    host=str(ip),
                    port=port,
                    family=socket.AF_INET if ip.version == 4 else socket.AF_INET6,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            ]
        results = await self._inner.resolve(host, port, family)
        if host_allowlisted(host, self.allowlist):
            return results
        kept = [r for r in results if address_allowed(ipaddress.ip_address(r["host"]), self.allowlist)]
        if not kept:
            refused = ", ".join(sorted({r["host"] for r in results}))
            raise FetchError("refused_address", f"refusing {host}: it resolves only to refused addresses ({refused})")
        return kept

    async def close(self) -> None:
        await self._inner.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector whose resolver is a :class:`GuardedResolver`."""

    def __init__(self, *, allowlist: Allowlist = (), resolver: AbstractResolver | None = None, **kwargs: Any) -> None:
        self.guard = GuardedResolver(allowlist, resolver)
        super().__init__(resolver=self.guard, **kwargs)
