"""The model catalogue (``config/models.toml``): what each DashScope edit model takes,
how fast the account may call it and what a generated image costs, per region.

Pure and dependency-free (no Faust): the worker's validation and cost accounting, the
client library and the emulator read the same file through :func:`load_catalogue`.

    >>> catalogue = load_catalogue()
    >>> catalogue.model("qwen-image-edit-plus").n_max
    6
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEFAULT_CATALOGUE_PATH",
    "Catalogue",
    "CatalogueError",
    "ModelSpec",
    "Region",
    "load_catalogue",
    "parse_catalogue",
]

DEFAULT_CATALOGUE_PATH = Path(__file__).resolve().parent / "models.toml"

_MODEL_KEYS = frozenset({
    "snapshot_of", "max_images", "n_max", "size", "size_min", "size_max", "size_multiple",
    "size_total", "prompt_extend", "negative_prompt_chars", "prompt_chars", "rate", "rate_per",
    "price", "unconfirmed",
})


class CatalogueError(ValueError):
    """``models.toml`` is malformed (raised at start, naming the entry)."""


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    currency: str
    base_url: str
    key: str = ""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model (or dated snapshot) as the public docs describe it."""

    name: str
    max_images: int = 3
    n_max: int = 1
    size: bool = False
    size_min: int = 512
    size_max: int = 2048
    size_multiple: int = 1
    size_total: bool = False
    prompt_extend: bool = False
    negative_prompt_chars: int = 500
    prompt_chars: int = 800
    #: Requests per :attr:`rate_per` seconds for the whole account.
    rate: float = 2.0
    rate_per: float = 1.0
    price: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    unconfirmed: frozenset[str] = frozenset()
    snapshot_of: str | None = None

    @property
    def requests_per_second(self) -> float:
        return self.rate / self.rate_per

    def price_in(self, region: str) -> float:
        """Price of one generated image in ``region`` (0.0 when the catalogue has none)."""
        return float(self.price.get(region, 0.0))

    def size_problem(self, width: int, height: int) -> str | None:
        """Why ``width*height`` is not a size this model takes, or ``None``."""
        low, high, step = self.size_min, self.size_max, self.size_multiple
        if self.size_total:
            if not low * low <= width * height <= high * high:
                return f"total pixels must be within [{low}*{low}, {high}*{high}], got {width}*{height}"
        elif not (low <= width <= high and low <= height <= high):
            return f"width and height must be within [{low}, {high}], got {width}*{height}"
        if step > 1 and (width % step or height % step):
            return f"width and height must be multiples of {step}, got {width}*{height}"
        return None


@dataclass(frozen=True)
class Catalogue:
    models: Mapping[str, ModelSpec]
    regions: Mapping[str, Region]
    read_on: str = ""

    def model(self, name: str) -> ModelSpec:
        """The spec of ``name``; ``KeyError`` for a model the catalogue does not list."""
        return self.models[name]

    def region(self, name: str) -> Region:
        return self.regions[name]


def _model(name: str, entry: Mapping[str, Any], raw: Mapping[str, Any], depth: int = 0) -> ModelSpec:
    if not isinstance(entry, dict):
        raise CatalogueError(f"models.{name} must be a table")
    unknown = set(entry) - _MODEL_KEYS
    if unknown:
        raise CatalogueError(f"models.{name}: unknown keys {sorted(unknown)}")
    merged: dict[str, Any] = {}
    base = entry.get("snapshot_of")
    if base is not None:
        if base not in raw or depth > 3:
            raise CatalogueError(f"models.{name}.snapshot_of names no model: {base!r}")
        merged.update({k: v for k, v in raw[base].items() if k != "snapshot_of"})
    merged.update(entry)
    price = merged.pop("price", {})
    if not isinstance(price, dict) or not all(isinstance(v, int | float) and v >= 0 for v in price.values()):
        raise CatalogueError(f"models.{name}.price must map regions to non-negative numbers")
    unconfirmed = frozenset(merged.pop("unconfirmed", ()))
    try:
        spec = ModelSpec(name=name, price=MappingProxyType(dict(price)), unconfirmed=unconfirmed, **merged)
    except TypeError as exc:
        raise CatalogueError(f"models.{name}: {exc}") from None
    if not 1 <= spec.max_images <= 3 or not 1 <= spec.n_max <= 6:
        raise CatalogueError(f"models.{name}: max_images must be 1-3 and n_max 1-6")
    if spec.rate <= 0 or spec.rate_per <= 0:
        raise CatalogueError(f"models.{name}: rate and rate_per must be > 0")
    return spec


def parse_catalogue(document: Mapping[str, Any], *, read_on: str = "") -> Catalogue:
    """A :class:`Catalogue` from a parsed TOML document."""
    raw_models = document.get("models")
    raw_regions = document.get("regions")
    if not isinstance(raw_models, dict) or not raw_models:
        raise CatalogueError("the catalogue needs a non-empty [models] table")
    if not isinstance(raw_regions, dict) or not raw_regions:
        raise CatalogueError("the catalogue needs a non-empty [regions] table")
    regions = {}
    for name, entry in raw_regions.items():
        try:
            regions[name] = Region(name=name, **entry)
        except TypeError as exc:
            raise CatalogueError(f"regions.{name}: {exc}") from None
    models = {name: _model(name, entry, raw_models) for name, entry in raw_models.items()}
    for spec in models.values():
        missing = set(regions) - set(spec.price)
        if missing:
            raise CatalogueError(f"models.{spec.name}.price has no price for {sorted(missing)}")
    return Catalogue(models=MappingProxyType(models), regions=MappingProxyType(regions), read_on=read_on)


@functools.lru_cache(maxsize=4)
def _load(path: Path) -> Catalogue:
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{path}: {exc}") from None
    return parse_catalogue(document)


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """The catalogue at ``path`` (default: the shipped ``config/models.toml``), read once."""
    return _load(Path(path) if path is not None else DEFAULT_CATALOGUE_PATH)
