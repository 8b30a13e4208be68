"""The model catalogue (config/models.toml) and its loader."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from config.catalogue import DEFAULT_CATALOGUE_PATH, CatalogueError, load_catalogue, parse_catalogue

CATALOGUE = load_catalogue()


def test_every_model_the_issue_names_is_listed_with_a_price_per_region() -> None:
    for name in ("qwen-image-edit", "qwen-image-edit-plus", "qwen-image-edit-plus-2025-12-15",
                 "qwen-image-edit-max", "qwen-image-edit-max-2026-01-16", "qwen-image-2.0",
                 "qwen-image-2.0-pro"):
        spec = CATALOGUE.model(name)
        assert set(spec.price) == set(CATALOGUE.regions) == {"cn-beijing", "ap-southeast-1"}
        assert 1 <= spec.max_images <= 3


def test_documented_limits() -> None:
    assert CATALOGUE.model("qwen-image-edit").n_max == 1
    assert not CATALOGUE.model("qwen-image-edit").size
    assert CATALOGUE.model("qwen-image-edit-plus").requests_per_second == 2
    assert CATALOGUE.model("qwen-image-edit-max").requests_per_second == pytest.approx(2 / 60)
    assert CATALOGUE.model("qwen-image-edit-plus").negative_prompt_chars == 500


def test_snapshots_repeat_their_model_and_keep_their_own_name() -> None:
    snap = CATALOGUE.model("qwen-image-edit-max-2026-01-16")
    base = CATALOGUE.model("qwen-image-edit-max")
    assert snap.name != base.name
    assert (snap.n_max, snap.rate_per, dict(snap.price)) == (base.n_max, base.rate_per, dict(base.price))


def test_what_no_stored_copy_confirms_is_marked() -> None:
    # No stored copy shows Alibaba's own price list: every price must say so.
    assert all("price" in spec.unconfirmed for spec in CATALOGUE.models.values())
    text = DEFAULT_CATALOGUE_PATH.read_text()
    assert "2026-12-03" in text and "UNCONFIRMED" in text


def test_size_rules() -> None:
    plus = CATALOGUE.model("qwen-image-edit-plus")
    assert plus.size_problem(1024, 1536) is None
    assert "multiples of 16" in (plus.size_problem(1000, 1024) or "")
    assert "[512, 2048]" in (plus.size_problem(2064, 1024) or "")


@pytest.mark.parametrize(
    "text",
    [
        '[regions.x]\ncurrency="CNY"\nbase_url="u"\n',  # no models
        '[regions.x]\ncurrency="CNY"\nbase_url="u"\n[models.m]\nprice={x=1}\nbogus=1\n',
        '[regions.x]\ncurrency="CNY"\nbase_url="u"\n[models.m]\nprice={}\n',  # no price for x
        '[regions.x]\ncurrency="CNY"\nbase_url="u"\n[models.m]\nsnapshot_of="n"\nprice={x=1}\n',
        '[regions.x]\ncurrency="CNY"\nbase_url="u"\n[models.m]\nn_max=9\nprice={x=1}\n',
    ],
)
def test_malformed_catalogues_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(CatalogueError):
        parse_catalogue(tomllib.loads(text))
