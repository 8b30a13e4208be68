"""Fixtures shared by the dimension tests: local origins over real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from streams.dimensions.fetch import make_session
from tests.dimensions.origin import LOCAL, ConditionalServer


@pytest.fixture(scope="module")
async def origin() -> AsyncIterator[ConditionalServer]:
    """An origin that honours conditional requests and counts what it is asked."""
    srv = ConditionalServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture(scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A guarded fetch session allowed to reach 127.0.0.1."""
    async with make_session(LOCAL) as s:
        yield s
