"""Per-model blocks after account-state errors (pure, clock passed in)."""

from __future__ import annotations

from streams.image_edit.blocks import BlockEvent, ModelBlocks


def test_block_probe_once_per_interval_and_lift() -> None:
    blocks = ModelBlocks(probe_interval=30)
    assert blocks.block("m", "account_in_arrears", "pay", now=100.0) is True
    assert blocks.block("m", "account_in_arrears", "pay", now=101.0) is False  # same block, refreshed
    assert blocks.get("m").since == 100.0  # type: ignore[union-attr]
    assert not blocks.claim_probe("m", 120.0)  # no request before the interval is over
    assert blocks.claim_probe("m", 131.0)
    assert not blocks.claim_probe("m", 131.5)  # one probe at a time
    assert blocks.get("other") is None and not blocks.claim_probe("other", 500.0)
    assert blocks.lift("m", 140.0) and blocks.get("m") is None and not blocks.lift("m", 141.0)


def test_events_from_other_workers_apply_unless_stale() -> None:
    blocks = ModelBlocks()
    event = BlockEvent(model="m", blocked=True, at=10.0, code="model_not_purchased", message="buy", since=9.0)
    blocks.apply(BlockEvent.loads(event.dumps()), now=11.0)
    assert blocks.get("m").code == "model_not_purchased"  # type: ignore[union-attr]
    blocks.apply(BlockEvent(model="m", blocked=False, at=20.0), now=21.0)
    assert blocks.get("m") is None
    blocks.apply(event, now=22.0)  # an older block arriving late does not come back
    assert blocks.get("m") is None
