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


# --- commits never skip an unfinished event -------------------------------------------
from types import SimpleNamespace  # noqa: E402

from faust.types import TP  # noqa: E402

from streams.transport import commit_bound, oldest_unacked  # noqa: E402


def test_commit_stops_below_the_oldest_event_still_running() -> None:
    # Offset 5 still runs; 6 and 7 were acked first.  Faust's own rule committed 8.
    assert commit_bound([6, 7], 5) == (None, [6, 7])
    # 3 and 4 done, 5 running, 6 done: commit 5 (everything below it), keep 6 for later.
    assert commit_bound([4, 3, 6], 5) == (5, [6])
    assert commit_bound([], 5) == (None, [])


def test_oldest_unacked_counts_this_generation_of_this_partition_only() -> None:
    tp, other = TP("jobs", 0), TP("jobs", 1)
    messages = [
        SimpleNamespace(tp=tp, offset=9, acked=False, generation_id=2),
        SimpleNamespace(tp=tp, offset=4, acked=True, generation_id=2),
        SimpleNamespace(tp=tp, offset=2, acked=False, generation_id=1),  # left from an older assignment
        SimpleNamespace(tp=other, offset=1, acked=False, generation_id=2),
        SimpleNamespace(tp=tp, offset=7, acked=False, generation_id=2),
    ]
    assert oldest_unacked(messages, tp, 2) == 7
    assert oldest_unacked(messages, other, 2) == 1
    assert oldest_unacked(messages, TP("jobs", 3), 2) is None
