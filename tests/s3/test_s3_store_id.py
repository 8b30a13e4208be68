"""The identity of an S3 blob store: written once under the prefix, the same for every
client of that prefix (even racing ones), different for another prefix."""

from __future__ import annotations

import asyncio
import uuid

from tests.s3.server import S3Server


async def test_racing_clients_read_one_store_id_per_prefix(s3_server: S3Server) -> None:
    prefix = f"store-id-{uuid.uuid4().hex[:8]}"
    stores = [s3_server.store(prefix) for _ in range(6)]
    other = s3_server.store(f"{prefix}-other")
    try:
        ids = await asyncio.gather(*(store.store_id() for store in stores))
        assert len(set(ids)) == 1 and len(ids[0]) == 32, ids
        assert await stores[0].store_id() == ids[0]  # read again: unchanged
        assert await other.store_id() != ids[0]
    finally:
        for store in [*stores, other]:
            await store.close()
