"""The worker's consumer fetch wait and producer batch size come from Settings."""

from __future__ import annotations

import pytest

from config.settings import Settings, SettingsError
from streams.app import app, settings
from streams.transport import ConsumerThread, Transport


async def test_the_worker_consumer_fetches_with_our_wait() -> None:
    assert isinstance(app.transport, Transport)
    thread = app.consumer._new_consumer_thread()
    assert isinstance(thread, ConsumerThread)
    consumer = thread._create_worker_consumer(app.transport)
    # What AIOKafkaConsumer.start() hands its Fetcher (Faust would say 1500).
    assert consumer._fetch_max_wait_ms == round(settings.consumer_fetch_wait * 1000) == 20


def test_producer_batches_hold_a_few_snapshots() -> None:
    assert app.conf.producer_max_batch_size == settings.producer_batch_bytes == 512 * 1024


@pytest.mark.parametrize(
    "env",
    [
        {"IMAGESTREAM_CONSUMER_FETCH_WAIT": "0"},
        {"IMAGESTREAM_CONSUMER_FETCH_WAIT": "2"},
        {"IMAGESTREAM_PRODUCER_BATCH_BYTES": "1024"},
        {"IMAGESTREAM_PRODUCER_BATCH_BYTES": "2000000"},
    ],
)
def test_out_of_range_values_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(env)
