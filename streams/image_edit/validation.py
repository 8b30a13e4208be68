"""Validation of submitted tasks, before anything is enqueued (DESIGN.md §6 step 1).

Every failure is an :class:`~streams.errors.InvalidRequest` whose ``code`` says what
is wrong, so a client (or a dead-letter reader) can act on it:

========================  ==========================================================
code                      meaning
========================  ==========================================================
``malformed_json``        the event is not UTF-8 JSON (or uses NaN/Infinity)
``invalid_schema``        not an object, or a field of the wrong type
``missing_task_id``       no ``task_id`` (or an empty one)
``invalid_task_id``       ``task_id`` with characters unsafe in keys and URLs
``missing_edit_type``     no ``edit_type``
``unknown_edit_type``     an ``edit_type`` with no preset
``unknown_model``         ``edit_params.model`` names a model the catalogue
                          (``config/models.toml``) does not list
``invalid_edit_params``   params not a JSON object, a param of the wrong type/range,
                          or one the chosen model does not take (the message names it)
``missing_prompt``        no prompt and the edit type has no template
``prompt_too_long``       prompt (or negative_prompt) longer than allowed, normalised
``no_images``             zero images
``too_many_images``       more than ``settings.max_images_per_task``
``invalid_image_ref``     an image entry that is not an object, or has none or
                          several of ``blob`` / ``url`` / ``data``
``invalid_sha256``        a ``blob`` that is not 64 hex digits
``invalid_base64``        ``data`` that is not standard base64 (a data-URI prefix and
                          line breaks are allowed and removed)
``invalid_url``           a ``url`` that is not absolute http(s)
``invalid_groups``        ``groups`` not a list of lists of image indexes, an empty
                          group, a group larger than the model takes (3), an index
                          out of range or twice in one group
========================  ==========================================================
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from faust.utils import json as faust_json

from config.catalogue import Catalogue, ModelSpec, load_catalogue
from config.settings import Settings
from streams.errors import InvalidRequest
from streams.image_edit.keys import canonical_params, normalize_prompt
from streams.image_edit.models import ImageRef, TaskRequest
from streams.image_edit.presets import Preset

__all__ = [
    "EditRequest",
    "validate_groups",
    "MAX_FILENAME_CHARS",
    "MAX_SEED",
    "MAX_TASK_ID_CHARS",
    "validate_edit_params",
    "validate_edit_request",
    "validate_task_request",
]

#: DashScope's seed range is [0, 2**31 - 1].
MAX_SEED = 2**31 - 1
#: Largest ``n`` (images per call) any qwen-image-edit model takes.
MAX_N = 6
MAX_TASK_ID_CHARS = 128
MAX_FILENAME_CHARS = 255

_TASK_ID = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_TASK_ID_CHARS - 1}}}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[*xX×]\s*(\d{1,5})\s*$")
_DATA_URI = re.compile(r"^data:[\w.+/-]*(;[\w.+=-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_UNSAFE_URL_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")


def _fail(code: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, code=code)


# --- edit params ----------------------------------------------------------------------
def _parse_params(raw: str | bytes | Mapping[str, Any] | None) -> dict[str, Any]:
    """``edit_params`` as a dict: JSON text, a mapping, or nothing."""
    if raw is None:
        return {}
    if isinstance(raw, (str, bytes)):
        if not raw.strip():
            return {}
        try:
            raw = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise _fail("invalid_edit_params", f"edit_params is not valid JSON: {exc}") from None
    if not isinstance(raw, Mapping):
        raise _fail("invalid_edit_params", "edit_params must be a JSON object")
    if not all(isinstance(name, str) for name in raw):
        raise _fail("invalid_edit_params", "edit_params keys must be strings")
    return dict(raw)


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail("invalid_edit_params", f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise _fail("invalid_edit_params", f"{name} must be in [{low}, {high}], got {value}")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail("invalid_edit_params", f"{name} must be true or false, got {value!r}")
    return value


def _check_size(name: str, value: Any) -> str:
    """``"1024*1024"`` (DashScope's form); ``"1024x1024"`` is accepted and rewritten."""
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None or int(match[1]) == 0 or int(match[2]) == 0:
        raise _fail("invalid_edit_params", f"{name} must look like '1024*1024', got {value!r}")
    return f"{int(match[1])}*{int(match[2])}"


_PARAM_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "seed": lambda n, v: _check_int(n, v, 0, MAX_SEED),
    "n": lambda n, v: _check_int(n, v, 1, MAX_N),
    "watermark": _check_bool,
    "prompt_extend": _check_bool,
    "size": _check_size,
}


def _check_text(name: str, value: Any, max_chars: int, *, code: str) -> str:
    """A prompt-like field: a string, normalised, at most ``max_chars`` characters."""
    if not isinstance(value, str):
        raise _fail("invalid_edit_params", f"{name} must be a string, got {type(value).__name__}")
    text = normalize_prompt(value)
    if len(text) > max_chars:
        raise _fail(code, f"{name} has {len(text)} characters after normalisation, more than {max_chars}")
    return text


def _check_for_model(clean: Mapping[str, Any], spec: ModelSpec) -> None:
    """Refuse params the model does not take, naming them (the service would refuse
    them, or silently ignore them while the cache key says they applied)."""
    n = clean.get("n")
    if n is not None and n > spec.n_max:
        raise _fail("invalid_edit_params",
                    f"n={n}: model {spec.name} makes at most {spec.n_max} image(s) per call")
    if "size" in clean:
        if not spec.size:
            raise _fail("invalid_edit_params", f"size: model {spec.name} does not take a size")
        width, height = (int(side) for side in clean["size"].split("*"))
        problem = spec.size_problem(width, height)
        if problem:
            raise _fail("invalid_edit_params", f"size for {spec.name}: {problem}")
    if "prompt_extend" in clean and not spec.prompt_extend:
        raise _fail("invalid_edit_params", f"prompt_extend: model {spec.name} does not take prompt_extend")


def validate_edit_params(
    params: Mapping[str, Any], *, max_chars: int, spec: ModelSpec | None = None
) -> dict[str, Any]:
    """Typed, canonical output params (no ``prompt``, no ``model``, no ``None``).

    Known params are type- and range-checked, and against ``spec`` (the chosen model's
    catalogue entry) when given; unknown params pass through unchanged (they are part
    of the cache key, see :mod:`streams.image_edit.keys`).
    """
    clean: dict[str, Any] = {}
    for name, value in params.items():
        if name in ("prompt", "model") or value is None:
            continue
        if name == "negative_prompt":
            limit = spec.negative_prompt_chars if spec is not None else max_chars
            text = _check_text(name, value, limit, code="prompt_too_long")
            if text:
                clean[name] = text
        elif name in _PARAM_CHECKS:
            clean[name] = _PARAM_CHECKS[name](name, value)
        else:
            clean[name] = value
    if spec is not None:
        _check_for_model(clean, spec)
    try:
        canonical_params(clean)
        faust_json.dumps(clean)  # what travels in the task's events (orjson: 64-bit ints only)
    except (TypeError, ValueError) as exc:
        raise _fail("invalid_edit_params", f"edit_params must be plain JSON values: {exc}") from None
    return clean


def _resolve_prompt(raw: Any, preset: Preset, max_chars: int) -> str:
    """The task's own prompt, else the preset's template."""
    prompt = "" if raw is None else _check_text("prompt", raw, max_chars, code="prompt_too_long")
    if not prompt:
        prompt = preset.prompt or ""
    if not prompt:
        raise _fail("missing_prompt", f"edit type {preset.name!r} has no template: a prompt is required")
    if len(prompt) > max_chars:
        raise _fail("prompt_too_long", f"prompt template of {preset.name!r} is longer than {max_chars}")
    return prompt


def _check_image_count(n_images: int, settings: Settings) -> None:
    if n_images < 1:
        raise _fail("no_images", "a task needs at least one image")
    if n_images > settings.max_images_per_task:
        raise _fail(
            "too_many_images",
            f"{n_images} images, more than the {settings.max_images_per_task} allowed per task",
        )


def resolve_model(raw: Any, preset: Preset, settings: Settings, catalogue: Catalogue) -> ModelSpec:
    """``edit_params.model``, else the preset's model, else ``IMAGESTREAM_MODEL``."""
    if raw is not None and (not isinstance(raw, str) or not raw.strip()):
        raise _fail("invalid_edit_params", f"model must be a model name, got {raw!r}")
    name = (raw.strip() if raw else None) or preset.model or settings.model
    try:
        return catalogue.model(name)
    except KeyError:
        known = ", ".join(sorted(catalogue.models))
        raise _fail("unknown_model", f"unknown model {name!r}; known: {known}") from None


class EditRequest(NamedTuple):
    """A checked edit: what is keyed and sent upstream for every image of the task."""

    edit_type: str
    prompt: str
    params: dict[str, Any]
    model: str


def validate_edit_request(
    edit_type: str | None,
    edit_params_raw: str | bytes | Mapping[str, Any] | None,
    n_images: int,
    settings: Settings,
    presets: Mapping[str, Preset],
    catalogue: Catalogue | None = None,
) -> EditRequest:
    """Check one edit before it is enqueued.

    ``edit_type`` is matched case-insensitively, trimmed.  The prompt is normalised
    (it is sent upstream exactly as it is keyed) and falls back to the preset's
    template; preset params are defaults under the task's own.  The model
    (``edit_params.model``) is looked up in the catalogue and every param checked
    against what that model takes.
    """
    catalogue = catalogue or load_catalogue()
    name = edit_type.strip().lower() if isinstance(edit_type, str) else ""
    preset = presets.get(name)
    if preset is None:
        known = ", ".join(sorted(presets))
        raise _fail("unknown_edit_type", f"unknown edit_type {edit_type!r}; known: {known}")
    raw = _parse_params(edit_params_raw)
    spec = resolve_model(raw.get("model"), preset, settings, catalogue)
    prompt = _resolve_prompt(raw.get("prompt"), preset, min(settings.max_prompt_chars, spec.prompt_chars))
    params = validate_edit_params({**preset.params, **raw}, max_chars=settings.max_prompt_chars, spec=spec)
    _check_image_count(n_images, settings)
    return EditRequest(name, prompt, params, spec.name)


# --- groups (multi-image calls) ---------------------------------------------------------
def validate_groups(raw: Any, n_images: int, max_per_call: int) -> list[list[int]] | None:
    """``groups`` as a list of lists of 0-based image indexes (order kept), or ``None``
    (each image its own call).  JSON text (the multipart field) or a list."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise _fail("invalid_groups", f"groups is not valid JSON: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise _fail("invalid_groups", "groups must be a non-empty list of lists of image indexes")
    groups: list[list[int]] = []
    for position, group in enumerate(raw):
        where = f"groups[{position}]"
        if not isinstance(group, list) or not group:
            raise _fail("invalid_groups", f"{where} must be a non-empty list of image indexes")
        if len(group) > max_per_call:
            raise _fail("invalid_groups", f"{where} has {len(group)} images; one call takes at most {max_per_call}")
        for index in group:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n_images:
                raise _fail("invalid_groups", f"{where}: {index!r} is not an image index in [0, {n_images - 1}]")
        if len(set(group)) != len(group):
            raise _fail("invalid_groups", f"{where} names one image twice")
        groups.append(list(group))
    return groups


# --- TaskRequest events ---------------------------------------------------------------
def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load_json(raw: bytes | str) -> Any:
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise _fail("malformed_json", f"event is not valid JSON: {exc}") from None


def _task_id(doc: Mapping[str, Any]) -> str:
    value = doc.get("task_id")
    if value is None or value == "":
        raise _fail("missing_task_id", "task_id is required")
    if not isinstance(value, str) or not _TASK_ID.match(value):
        raise _fail(
            "invalid_task_id",
            f"task_id must be 1-{MAX_TASK_ID_CHARS} characters of A-Z a-z 0-9 . _ : - "
            f"(starting alphanumeric), got {value!r}",
        )
    return value


def _edit_type(doc: Mapping[str, Any]) -> str:
    value = doc.get("edit_type")
    if value is None or value == "":
        raise _fail("missing_edit_type", "edit_type is required")
    if not isinstance(value, str):
        raise _fail("invalid_schema", "edit_type must be a string")
    return value


def _blob(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise _fail("invalid_sha256", f"{where}.blob must be 64 hex digits (sha256), got {value!r}")
    return value.lower()


def _url(value: Any, where: str) -> str:
    if isinstance(value, str) and not _UNSAFE_URL_CHARS.search(value):
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a bad port
            if parts.scheme.lower() in ("http", "https") and parts.hostname:
                return value
        except ValueError:  # e.g. an unclosed IPv6 bracket, a bad port
            pass
    raise _fail("invalid_url", f"{where}.url must be an absolute http(s) URL, got {value!r}")


def _data(value: Any, where: str) -> str:
    """Standard base64, returned without data-URI prefix and whitespace."""
    if not isinstance(value, str):
        raise _fail("invalid_base64", f"{where}.data must be a base64 string")
    text = _WHITESPACE.sub("", _DATA_URI.sub("", value.strip(), count=1))
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _fail("invalid_base64", f"{where}.data is not valid base64: {exc}") from None
    if not decoded:
        raise _fail("invalid_base64", f"{where}.data is empty")
    return text


_SOURCES: dict[str, Callable[[Any, str], str]] = {"blob": _blob, "url": _url, "data": _data}


def _filename(value: Any, index: int, where: str) -> str:
    if value is None or value == "":
        return f"image-{index}"
    if not isinstance(value, str) or len(value) > MAX_FILENAME_CHARS:
        raise _fail("invalid_image_ref", f"{where}.filename must be a string of at most {MAX_FILENAME_CHARS}")
    return value


def _image_ref(entry: Any, index: int) -> ImageRef:
    where = f"images[{index}]"
    if not isinstance(entry, Mapping):
        raise _fail("invalid_image_ref", f"{where} must be an object")
    given = [name for name in _SOURCES if entry.get(name) not in (None, "")]
    if len(given) != 1:
        found = ", ".join(given) or "none"
        raise _fail("invalid_image_ref", f"{where} needs exactly one of blob, url, data (found: {found})")
    source = given[0]
    refs: dict[str, str | None] = dict.fromkeys(_SOURCES)
    refs[source] = _SOURCES[source](entry[source], where)
    return ImageRef(
        filename=_filename(entry.get("filename"), index, where),
        blob=refs["blob"],
        url=refs["url"],
        data=refs["data"],
    )


def _images(doc: Mapping[str, Any]) -> list[ImageRef]:
    value = doc.get("images")
    if value is None or value == []:
        raise _fail("no_images", "a task needs at least one image")
    if not isinstance(value, list):
        raise _fail("invalid_schema", "images must be a list")
    return [_image_ref(entry, index) for index, entry in enumerate(value)]


def _optional_fields(doc: Mapping[str, Any]) -> dict[str, Any]:
    params = doc.get("edit_params")
    if params is not None and not isinstance(params, dict):
        raise _fail("invalid_edit_params", "edit_params must be an object")
    submitted = doc.get("submitted_at", 0.0)
    if submitted is None:
        submitted = 0.0
    if isinstance(submitted, bool) or not isinstance(submitted, (int, float)) or not math.isfinite(submitted):
        raise _fail("invalid_schema", "submitted_at must be a number (epoch seconds)")
    reply_to = doc.get("reply_to")
    if reply_to is not None and not isinstance(reply_to, str):
        raise _fail("invalid_schema", "reply_to must be a string")
    groups = doc.get("groups")
    if groups is not None and not isinstance(groups, list):
        raise _fail("invalid_groups", "groups must be a list of lists of image indexes")
    return {"edit_params": dict(params or {}), "submitted_at": float(submitted), "reply_to": reply_to or None,
            "groups": groups}


def validate_task_request(raw: bytes | str) -> TaskRequest:
    """Parse and check a ``TaskRequest`` event taken straight off Kafka.

    Never raises anything but :class:`~streams.errors.InvalidRequest`.  Checks the
    shape only; the edit itself (type, prompt, params, image count against the
    settings) is checked by :func:`validate_edit_request`.  Unknown top-level fields
    are ignored (forward compatibility).
    """
    doc = _load_json(raw)
    if not isinstance(doc, dict):
        raise _fail("invalid_schema", f"a task must be a JSON object, got {type(doc).__name__}")
    return TaskRequest(
        task_id=_task_id(doc),
        edit_type=_edit_type(doc),
        images=_images(doc),
        **_optional_fields(doc),
    )
