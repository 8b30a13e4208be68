"""Fixtures of the integration tests (the session's broker, emulator and worker come
from tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.support import Emulator, emulator_config, emulator_reset


@pytest.fixture
async def fresh_emulator(emulator: Emulator) -> Emulator:
    """The session emulator with its counters reset: latency 0.2 s, no faults."""
    await emulator_reset(emulator)
    await emulator_config(emulator, latency="fixed:0.2", rate_429=0.0, rate_500=0.0, rate_drop=0.0,
                          rate_inspection=0.0, rate_408=0.0, rate_503=0.0, account_error=None)
    return emulator
