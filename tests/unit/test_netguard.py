"""Address policy and URL checks of the dimension fetcher (no network)."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from streams.dimensions.netguard import (
    GuardedResolver,
    address_allowed,
    host_allowlisted,
    parse_ip_literal,
    redact_url,
    refusal_reason,
    validate_url,
)
from streams.errors import FetchError

LOOPBACK_ONLY = (ipaddress.ip_network("127.0.0.1/32"),)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("0xA9FEA9FE", "169.254.169.254"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ("::1", "::1"),
        ("8.8.8.8.", "8.8.8.8"),
    ],
)
def test_ip_literals_in_every_spelling(host: str, address: str) -> None:
    assert parse_ip_literal(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize("host", ["example.com", "deadbeef", "cafe.be", "1e100.net", "256.1.1.1.1", "0x.g"])
def test_names_are_not_literals(host: str) -> None:
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.255.0.9", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "169.254.1.1",
        "100.64.0.1", "100.127.255.254", "100.100.100.200", "0.0.0.0", "224.0.0.1", "239.255.255.250",
        "240.0.0.1", "255.255.255.255", "192.0.2.10", "198.18.0.1",
        "::", "::1", "fe80::1", "fc00::1", "fd12:3456::1", "fd00:ec2::254", "ff02::1",
        "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1",
        "64:ff9b::10.0.0.1", "2002:7f00:1::1", "2002:a9fe:a9fe::",
    ],
)
def test_refused_addresses(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert refusal_reason(ip) is not None
    assert not address_allowed(ip)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None
    assert address_allowed(ipaddress.ip_address(address))


def test_allowlist_networks_and_hosts() -> None:
    allow = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.20.0.0/16"), "images.internal", ".corp.example")
    assert address_allowed(ipaddress.ip_address("127.0.0.1"), allow)
    assert address_allowed(ipaddress.ip_address("::ffff:127.0.0.1"), allow)  # the same address, mapped
    assert address_allowed(ipaddress.ip_address("10.20.3.4"), allow)
    assert not address_allowed(ipaddress.ip_address("127.0.0.2"), allow)
    assert not address_allowed(ipaddress.ip_address("::1"), allow)
    assert host_allowlisted("Images.Internal.", allow)
    assert host_allowlisted("cdn.corp.example", allow)
    assert not host_allowlisted("corp.example.evil.com", allow)
    assert not host_allowlisted("images.internal.evil.com", allow)


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/a.png", "file:///etc/passwd", "gopher://example.com/", "http:///a", "http://",
     "example.com/a.png", "http://user@example.com/", "http://u:p@example.com/", "http://example.com@127.0.0.1/",
     "http://exa mple.com/", "http://example.com\\@127.0.0.1/", "http://example.com/a\nb", "http://999.1.1.1/",
     "http://example.com:99999/"],
)
def test_invalid_urls(url: str) -> None:
    with pytest.raises(FetchError) as info:
        validate_url(url)
    assert info.value.reason == "invalid_url", info.value


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/", "http://2130706433/", "http://0177.0.0.1/", "http://0x7f.1/", "http://[::ffff:127.0.0.1]/",
     "http://[::1]:8080/", "https://10.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
     "http://100.64.1.1/", "http://0.0.0.0/", "http://[::]/"],
)
def test_refused_literal_urls(url: str) -> None:
    with pytest.raises(FetchError) as info:
        validate_url(url)
    assert info.value.reason == "refused_address"


def test_valid_urls() -> None:
    assert validate_url("https://example.com/a.png?x=1").host == "example.com"
    assert validate_url("http://8.8.8.8:8080/a.png").port == 8080
    assert validate_url("http://127.0.0.1:5/a", LOOPBACK_ONLY).port == 5
    assert validate_url("http://2130706433/", LOOPBACK_ONLY)


def test_redact_url_hides_query_values_and_credentials() -> None:
    assert redact_url("https://u:secret@host.example/p/a.jpg?sig=abc&e=1#f") == "https://host.example/p/a.jpg?sig=***&e=***"
    assert redact_url("http://[::1]:81/x") == "http://[::1]:81/x"
    assert "abc" not in redact_url("http://h/x?token=abc")


class FixedResolver(AbstractResolver):
    """Answers every name with the same addresses (a stand-in DNS server)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                          proto=0, flags=0)
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_resolver_drops_refused_addresses() -> None:
    resolver = GuardedResolver((), FixedResolver("10.0.0.5", "93.184.216.34", "::1"))
    results = await resolver.resolve("mixed.example", 80)
    assert [r["host"] for r in results] == ["93.184.216.34"]


async def test_resolver_refuses_names_of_private_addresses() -> None:
    resolver = GuardedResolver((), FixedResolver("127.0.0.1", "169.254.169.254"))
    with pytest.raises(FetchError) as info:
        await resolver.resolve("rebind.example", 80)
    assert info.value.reason == "refused_address"


async def test_resolver_honours_allowlist() -> None:
    inner = FixedResolver("127.0.0.1")
    assert await GuardedResolver(LOOPBACK_ONLY, inner).resolve("localhost", 80)
    assert await GuardedResolver(("localhost",), inner).resolve("localhost", 80)


async def test_resolver_canonicalises_legacy_literals() -> None:
    inner = FixedResolver("8.8.8.8")
    with pytest.raises(FetchError):
        await GuardedResolver((), inner).resolve("0x7f.1", 80)
    results = await GuardedResolver(LOOPBACK_ONLY, inner).resolve("0x7f.1", 80)
    assert [r["host"] for r in results] == ["127.0.0.1"]
    assert inner.asked == []  # literals never reach DNS
