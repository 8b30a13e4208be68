"""Edit presets loaded from config/presets.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.image_edit.presets import DEFAULT_PRESETS_PATH, Preset, PresetError, load_presets


def test_default_presets_file_loads_with_templates() -> None:
    presets = load_presets()
    assert DEFAULT_PRESETS_PATH.name == "presets.toml"
    assert {"enhance", "remove_background", "colorize", "grayscale", "style_anime", "upscale"} <= set(presets)
    enhance = presets["enhance"]
    assert isinstance(enhance, Preset) and enhance.name == "enhance"
    assert enhance.prompt and "画质" in enhance.prompt
    assert presets["custom"].prompt is None


def test_default_presets_read_once() -> None:
    assert load_presets() is load_presets()


def test_presets_are_read_only() -> None:
    presets = load_presets()
    with pytest.raises(TypeError):
        presets["x"] = presets["enhance"]  # type: ignore[index]


def test_templates_are_normalised_and_params_kept(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[edit_types.soft]\nprompt = "  柔和\\u3000光线\\n"\nparams = { negative_prompt = "blur", seed = 3 }\n',
        encoding="utf-8",
    )
    soft = load_presets(path)["soft"]
    assert soft.prompt == "柔和 光线"
    assert dict(soft.params) == {"negative_prompt": "blur", "seed": 3}


@pytest.mark.parametrize(
    "text",
    [
        "",  # no edit_types
        "[edit_types.Bad-Name]\nprompt='x'\n",
        "[edit_types.a]\nprompt=3\n",
        "[edit_types.a]\nprompt='   '\n",
        "[edit_types.a]\npromt='typo'\n",
        "[edit_types.a]\nparams={prompt='x'}\n",
        "[edit_types\nbroken",
    ],
)
def test_malformed_presets_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PresetError):
        load_presets(path)
