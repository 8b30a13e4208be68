"""Validation of edit requests (HTTP form) and TaskRequest events (Kafka)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import pytest

from config.settings import Settings
from streams.errors import InvalidRequest
from streams.image_edit.models import TaskRequest
from streams.image_edit.presets import Preset, load_presets
from streams.image_edit.validation import EditRequest, validate_edit_request, validate_task_request

SETTINGS = Settings(max_prompt_chars=40, max_images_per_task=3)
PRESETS = load_presets()


def _edit(edit_type: Any = "enhance", params: Any = None, n: int = 1, presets: Mapping[str, Preset] = PRESETS) -> EditRequest:
    return validate_edit_request(edit_type, params, n, SETTINGS, presets)


def _code(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(InvalidRequest) as err:
        fn(*args, **kwargs)
    assert err.value.status == 400
    return err.value.code


# --- validate_edit_request ------------------------------------------------------------
def test_preset_template_used_without_prompt() -> None:
    edit_type, prompt, params, _ = _edit(" Enhance ", None)
    assert edit_type == "enhance"
    assert prompt == PRESETS["enhance"].prompt
    assert params == {}
    assert _edit("enhance", '{"prompt": "  \\t"}')[1] == PRESETS["enhance"].prompt


def test_own_prompt_replaces_template_and_is_normalised() -> None:
    _, prompt, params, _ = _edit("enhance", '{"prompt": " 变亮\\u3000一点 ", "seed": 5}')
    assert prompt == "变亮 一点"
    assert params == {"seed": 5}


def test_params_as_mapping_and_canonical_forms() -> None:
    edit = _edit(
        "custom",
        {"prompt": "x", "negative_prompt": " blur\n", "size": "1024 x 768", "watermark": False,
         "prompt_extend": True, "n": 1, "strength": 0.5, "seed": None, "model": "qwen-image-edit-plus"},
    )
    assert edit.params == {"negative_prompt": "blur", "size": "1024*768", "watermark": False,
                           "prompt_extend": True, "n": 1, "strength": 0.5}
    assert edit.model == "qwen-image-edit-plus"


def test_preset_params_are_defaults_under_task_params() -> None:
    presets = {"soft": Preset(name="soft", prompt="soft", params={"seed": 1, "watermark": True})}
    assert _edit("soft", {"seed": 9}, presets=presets)[2] == {"seed": 9, "watermark": True}


@pytest.mark.parametrize("edit_type", ["nope", "", None, 3])
def test_unknown_edit_type(edit_type: Any) -> None:
    assert _code(_edit, edit_type) == "unknown_edit_type"


@pytest.mark.parametrize(
    "params",
    [
        "{not json",
        "[1, 2]",
        '"a string"',
        "NaN",
        '{"seed": "7"}',
        '{"seed": 1.5}',
        '{"seed": true}',
        '{"seed": -1}',
        '{"seed": 2147483648}',
        '{"watermark": "false"}',
        '{"watermark": 0}',
        '{"prompt_extend": null, "n": 0}',
        '{"n": 7}',
        '{"size": "big"}',
        '{"size": "0*10"}',
        '{"negative_prompt": 5}',
        '{"prompt": ["a"]}',
        '{"strength": NaN}',
        '{"strength": 100000000000000000000000000000}',  # beyond what the events' JSON carries
        '{"extra": {"deep": [18446744073709551616]}}',
        42,
        ["a"],
    ],
)
def test_invalid_edit_params(params: Any) -> None:
    assert _code(_edit, "enhance", params) == "invalid_edit_params"


def test_missing_prompt_for_type_without_template() -> None:
    assert _code(_edit, "custom", None) == "missing_prompt"
    assert _code(_edit, "custom", '{"prompt": " \\u3000 "}') == "missing_prompt"


def test_prompt_length_counts_characters_after_normalisation() -> None:
    forty = "画" * 40
    assert _edit("custom", {"prompt": forty})[1] == forty  # 120 bytes of UTF-8, 40 chars: fine
    spaced = "  " + "a \t\u3000" * 20  # 82 raw characters, 39 after normalisation
    assert _edit("custom", {"prompt": spaced})[1] == " ".join("a" * 20)
    assert _code(_edit, "custom", {"prompt": "画" * 41}) == "prompt_too_long"
    # negative_prompt: the model's own limit (500, the docs), not the prompt's.
    assert _edit("custom", {"prompt": "x", "negative_prompt": "y" * 500}).params["negative_prompt"] == "y" * 500
    assert _code(_edit, "custom", {"prompt": "x", "negative_prompt": "y" * 501}) == "prompt_too_long"


def test_template_longer_than_limit_is_refused() -> None:
    tight = Settings(max_prompt_chars=5)
    with pytest.raises(InvalidRequest) as err:
        validate_edit_request("enhance", None, 1, tight, PRESETS)
    assert err.value.code == "prompt_too_long"


def test_image_count_bounds() -> None:
    assert _code(_edit, "enhance", None, 0) == "no_images"
    assert _code(_edit, "enhance", None, 4) == "too_many_images"
    assert _edit("enhance", None, 3)[0] == "enhance"


# --- validate_task_request ------------------------------------------------------------
SHA = "ab" * 32
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


def _event(**fields: Any) -> bytes:
    doc: dict[str, Any] = {
        "task_id": "t-1",
        "edit_type": "enhance",
        "images": [{"filename": "a.png", "blob": SHA}],
    }
    doc.update(fields)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def test_valid_event_becomes_task_request() -> None:
    task = validate_task_request(
        _event(
            images=[
                {"filename": "a.png", "blob": SHA.upper()},
                {"filename": "b.png", "url": "https://example.com/b.png"},
                {"data": "data:image/png;base64," + PNG_B64[:8] + "\n" + PNG_B64[8:]},
            ],
            edit_params={"prompt": "x", "seed": 1},
            submitted_at=1700000000,
            reply_to="my-topic",
            unknown_field="ignored",
        )
    )
    assert isinstance(task, TaskRequest)
    assert task.task_id == "t-1" and task.edit_type == "enhance"
    assert [i.filename for i in task.images] == ["a.png", "b.png", "image-2"]
    assert task.images[0].blob == SHA and task.images[0].url is None and task.images[0].data is None
    assert task.images[1].url == "https://example.com/b.png"
    assert task.images[2].data == PNG_B64
    assert task.edit_params == {"prompt": "x", "seed": 1}
    assert task.submitted_at == 1700000000.0 and task.reply_to == "my-topic"


def test_minimal_event_defaults() -> None:
    task = validate_task_request(_event().decode())
    assert task.edit_params == {} and task.submitted_at == 0.0 and task.reply_to is None


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "malformed_json"),
        (b"{not json", "malformed_json"),
        (b"\xff\xfe garbage", "malformed_json"),
        (b'{"task_id": NaN}', "malformed_json"),
        (b"[" * 100000, "malformed_json"),
        (b"[1, 2]", "invalid_schema"),
        (b"null", "invalid_schema"),
        (b'"task"', "invalid_schema"),
    ],
)
def test_malformed_events(raw: bytes, code: str) -> None:
    assert _code(validate_task_request, raw) == code


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"task_id": ...}, "missing_task_id"),
        ({"task_id": ""}, "missing_task_id"),
        ({"task_id": 12}, "invalid_task_id"),
        ({"task_id": "a/b"}, "invalid_task_id"),
        ({"task_id": "x" * 129}, "invalid_task_id"),
        ({"task_id": "t\n1"}, "invalid_task_id"),
        ({"edit_type": ...}, "missing_edit_type"),
        ({"edit_type": ["enhance"]}, "invalid_schema"),
        ({"images": ...}, "no_images"),
        ({"images": []}, "no_images"),
        ({"images": {"blob": SHA}}, "invalid_schema"),
        ({"images": ["a.png"]}, "invalid_image_ref"),
        ({"images": [{"filename": "a"}]}, "invalid_image_ref"),
        ({"images": [{"blob": SHA, "url": "https://e.com/x.png"}]}, "invalid_image_ref"),
        ({"images": [{"blob": SHA, "data": PNG_B64, "url": "https://e.com/x"}]}, "invalid_image_ref"),
        ({"images": [{"blob": SHA, "filename": 7}]}, "invalid_image_ref"),
        ({"images": [{"blob": "abc"}]}, "invalid_sha256"),
        ({"images": [{"blob": "g" * 64}]}, "invalid_sha256"),
        ({"images": [{"blob": 12345}]}, "invalid_sha256"),
        ({"images": [{"data": "not base64!!"}]}, "invalid_base64"),
        ({"images": [{"data": "abc"}]}, "invalid_base64"),
        ({"images": [{"data": "data:image/png;base64,"}]}, "invalid_base64"),
        ({"images": [{"data": 5}]}, "invalid_base64"),
        ({"images": [{"url": "ftp://e.com/x.png"}]}, "invalid_url"),
        ({"images": [{"url": "/local/x.png"}]}, "invalid_url"),
        ({"images": [{"url": "https://"}]}, "invalid_url"),
        ({"images": [{"url": "http://[::1/x.png"}]}, "invalid_url"),
        ({"images": [{"url": "http://e.com:99999/x.png"}]}, "invalid_url"),
        ({"images": [{"url": "https://e.com/a b.png"}]}, "invalid_url"),
        ({"images": [{"url": "https://e.com/\nx.png"}]}, "invalid_url"),
        ({"edit_params": "seed=1"}, "invalid_edit_params"),
        ({"edit_params": [1]}, "invalid_edit_params"),
        ({"submitted_at": "yesterday"}, "invalid_schema"),
        ({"submitted_at": True}, "invalid_schema"),
        ({"reply_to": 5}, "invalid_schema"),
    ],
)
def test_invalid_events_have_specific_codes(fields: dict[str, Any], code: str) -> None:
    assert _code(validate_task_request, _event(**fields)) == code


def test_event_then_edit_validation_compose() -> None:
    task = validate_task_request(_event(images=[{"blob": SHA}] * 4))
    assert _code(_edit, task.edit_type, task.edit_params, len(task.images)) == "too_many_images"


def test_fuzzed_events_only_ever_raise_invalid_request() -> None:
    import random

    rng = random.Random(0)
    leaves: list[Any] = [None, True, 0, -1, 1.5, "", "x", SHA, [], {}, "http://[::1", "data:,", "====", 1e308]

    def value(depth: int = 0) -> Any:
        if depth < 2 and rng.random() < 0.3:
            keys = ["blob", "url", "data", "filename", "prompt", "seed"]
            return {rng.choice(keys): value(depth + 1) for _ in range(rng.randint(0, 3))}
        return rng.choice(leaves)

    fields = ["task_id", "edit_type", "images", "edit_params", "submitted_at", "reply_to"]
    accepted = 0
    for _ in range(3000):
        doc = {k: value() for k in rng.sample(fields, rng.randint(0, len(fields)))}
        if rng.random() < 0.5:
            doc["images"] = [value() for _ in range(rng.randint(0, 3))]
        try:
            validate_task_request(json.dumps(doc))
            accepted += 1
        except InvalidRequest:
            pass
        try:
            _edit(value(), value(), rng.randint(-1, 5))
        except InvalidRequest:
            pass
    assert accepted < 3000


# --- the model catalogue ------------------------------------------------------------------
def _message(fn: Any, *args: Any) -> tuple[str, str]:
    with pytest.raises(InvalidRequest) as err:
        fn(*args)
    return err.value.code, err.value.message


def test_model_defaults_to_the_setting_and_can_be_chosen_per_task() -> None:
    assert _edit("enhance").model == SETTINGS.model == "qwen-image-edit"
    assert _edit("enhance", {"model": " qwen-image-edit-max "}).model == "qwen-image-edit-max"
    assert _edit("enhance", {"model": "qwen-image-2.0-pro"}).model == "qwen-image-2.0-pro"
    assert "model" not in _edit("enhance", {"model": "qwen-image-edit-plus"}).params


def test_preset_may_name_a_model_and_the_task_overrides_it() -> None:
    presets = {"hq": Preset(name="hq", prompt="hq", model="qwen-image-edit-max")}
    assert _edit("hq", None, presets=presets).model == "qwen-image-edit-max"
    assert _edit("hq", {"model": "qwen-image-edit-plus"}, presets=presets).model == "qwen-image-edit-plus"


@pytest.mark.parametrize("model", ["qwen-image-edit-pro", "gpt-image-1", "QWEN-IMAGE-EDIT"])
def test_unknown_model(model: str) -> None:
    code, message = _message(_edit, "enhance", {"model": model})
    assert code == "unknown_model"
    assert model in message and "qwen-image-edit-plus" in message


@pytest.mark.parametrize(
    ("model", "params", "named"),
    [
        ("qwen-image-edit", {"n": 2}, "n=2"),
        ("qwen-image-edit", {"size": "1024*1024"}, "size"),
        ("qwen-image-edit", {"prompt_extend": False}, "prompt_extend"),
        ("qwen-image-edit-plus", {"n": 7}, "n"),
        ("qwen-image-edit-plus", {"size": "511*1024"}, "size"),
        ("qwen-image-edit-plus", {"size": "1024*2064"}, "size"),
        ("qwen-image-edit-plus", {"size": "1000*1024"}, "multiples of 16"),
        ("qwen-image-edit-max-2026-01-16", {"size": "4096*512"}, "size"),
        ("qwen-image-2.0", {"size": "256*256"}, "total pixels"),
        ("qwen-image-edit-plus", {"model": 5}, "model"),
    ],
)
def test_params_the_model_does_not_take_are_refused_by_name(model: str, params: dict[str, Any], named: str) -> None:
    code, message = _message(_edit, "enhance", {"model": model, **params})
    assert code == "invalid_edit_params"
    assert named in message


def test_params_the_model_takes_pass() -> None:
    edit = _edit("enhance", {"model": "qwen-image-edit-plus", "n": 6, "size": "512*2048", "prompt_extend": False})
    assert edit.params == {"n": 6, "size": "512*2048", "prompt_extend": False}
    # qwen-image-2.0 bounds the total pixels, not each side: a 2048*1536 output is fine.
    assert _edit("enhance", {"model": "qwen-image-2.0", "size": "2048*1536"}).params["size"] == "2048*1536"
    assert _edit("enhance", {"n": 1}).params == {"n": 1}  # n=1 is what qwen-image-edit makes anyway


# --- groups ---------------------------------------------------------------------------------
def test_groups_keep_their_order_and_come_from_events_too() -> None:
    from streams.image_edit.validation import validate_groups

    assert validate_groups(None, 3, 3) is None
    assert validate_groups("[[2, 0], [1]]", 3, 3) == [[2, 0], [1]]
    task = validate_task_request(_event(groups=[[0]]))
    assert task.groups == [[0]]
    with pytest.raises(InvalidRequest) as err:
        validate_task_request(_event(groups="[[0]]"))
    assert err.value.code == "invalid_groups"


@pytest.mark.parametrize("groups", [[], [[]], [[0, 1]], [[0, 3]], [[-1]], [[1, 1]], [[0.0]], [0]])
def test_bad_groups(groups: Any) -> None:
    from streams.image_edit.validation import validate_groups

    # [[0, 1]] on a model that takes one image per call
    assert _code(validate_groups, groups, 3, 1) == "invalid_groups"
