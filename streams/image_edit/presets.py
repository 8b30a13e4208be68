"""Edit presets: each ``edit_type`` with its default prompt template (DESIGN.md §5).

The presets live in ``config/presets.toml`` (shipped as package data) and are read
once per process by :func:`load_presets` (later calls return the same mapping).
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import config
from streams.image_edit.keys import normalize_prompt

__all__ = ["DEFAULT_PRESETS_PATH", "Preset", "PresetError", "load_presets", "parse_presets"]

#: ``config/presets.toml`` next to the settings module.
DEFAULT_PRESETS_PATH = Path(config.__file__).resolve().parent / "presets.toml"

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_KNOWN_KEYS = frozenset({"prompt", "description", "params", "model"})


class PresetError(ValueError):
    """The presets file is malformed (raised at start, naming the entry)."""


@dataclass(frozen=True, slots=True)
class Preset:
    """One edit type: an optional prompt template and default params."""

    name: str
    #: Normalised prompt template, ``None`` when the task must bring its own prompt.
    prompt: str | None = None
    description: str = ""
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: The model tasks of this type use unless they name one (``edit_params.model``).
    model: str | None = None


def _parse_one(name: str, entry: object) -> Preset:
    if not _NAME.match(name):
        raise PresetError(f"edit type name {name!r}: use lower-case letters, digits and '_'")
    if not isinstance(entry, dict):
        raise PresetError(f"edit_types.{name} must be a table")
    unknown = set(entry) - _KNOWN_KEYS
    if unknown:
        raise PresetError(f"edit_types.{name}: unknown keys {sorted(unknown)}")
    prompt = entry.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or not normalize_prompt(prompt)):
        raise PresetError(f"edit_types.{name}.prompt must be a non-empty string")
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise PresetError(f"edit_types.{name}.description must be a string")
    params = entry.get("params", {})
    if not isinstance(params, dict) or "prompt" in params or "model" in params:
        raise PresetError(f"edit_types.{name}.params must be a table without 'prompt' and 'model'")
    model = entry.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise PresetError(f"edit_types.{name}.model must be a model name")
    return Preset(
        name=name,
        prompt=normalize_prompt(prompt) if prompt is not None else None,
        description=description,
        params=MappingProxyType(dict(params)),
        model=model.strip() if model else None,
    )


def parse_presets(document: Mapping[str, Any]) -> Mapping[str, Preset]:
    """Presets from a parsed TOML document (``{"edit_types": {name: {...}}}``)."""
    types = document.get("edit_types")
    if not isinstance(types, dict) or not types:
        raise PresetError("presets need a non-empty [edit_types] table")
    return MappingProxyType({name: _parse_one(name, entry) for name, entry in types.items()})


def _read(source: Path) -> Mapping[str, Preset]:
    try:
        with source.open("rb") as fh:
            document = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"{source}: {exc}") from None
    return parse_presets(document)


@functools.lru_cache(maxsize=1)
def _default_presets() -> Mapping[str, Preset]:
    return _read(DEFAULT_PRESETS_PATH)


def load_presets(path: str | Path | None = None) -> Mapping[str, Preset]:
    """Read the presets file as a read-only mapping of edit type → :class:`Preset`.

    Without ``path`` the shipped ``config/presets.toml`` is read once per process
    and the same mapping returned on every call (cheap on a hot path); an explicit
    ``path`` is read each time.
    """
    if path is None:
        return _default_presets()
    return _read(Path(path))
