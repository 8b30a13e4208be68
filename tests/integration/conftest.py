"""Fixtures of the integration tests (the session's broker, emulator and worker come
from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support import Emulator, emulator_config, emulator_reset

#: What the session emulator runs with (tests/conftest.py starts it with this latency).
SESSION_FAULTS = {"latency": "fixed:0.2", "rate_429": 0.0, "rate_500": 0.0, "rate_drop": 0.0,
                  "rate_inspection": 0.0, "rate_408": 0.0, "rate_503": 0.0, "account_error": None}


async def _restore(emulator: Emulator) -> None:
    await emulator_reset(emulator)
    await emulator_config(emulator, **SESSION_FAULTS)


@pytest.fixture
async def fresh_emulator(emulator: Emulator) -> AsyncIterator[Emulator]:
    """The session emulator with its counters reset: latency 0.2 s, no faults.

    Restored on exit too, so a test that changes latency or fault rates leaves none
    of it to the tests after it (in whatever order they run).
    """
    await _restore(emulator)
    yield emulator
    await _restore(emulator)
