"""Image inputs of the client: loading, Kafka image refs, TaskRequest and multipart bodies."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
from pathlib import Path

import pytest

from producers.errors import InvalidInput
from producers.images import (
    ImageSource,
    build_form,
    build_task_request,
    edit_params,
    extension_for,
    is_url,
    kafka_image_ref,
    load_image,
    load_images,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40


def test_load_image_from_path_bytes_pair_and_url(tmp_path: Path) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    assert load_image(path) == ImageSource(filename="cat.png", data=PNG)
    assert load_image(str(path)) == ImageSource(filename="cat.png", data=PNG)
    assert load_image(PNG, 3) == ImageSource(filename="image-3.png", data=PNG)
    assert load_image(("named.bin", PNG)) == ImageSource(filename="named.bin", data=PNG)
    assert load_image("https://cdn.example.com/a/b%20c.jpg?x=1") == ImageSource(
        filename="b c.jpg", url="https://cdn.example.com/a/b%20c.jpg?x=1")
    assert load_image("http://example.com/", 2).filename == "image-2"


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda d: d / "missing.png", "file_not_found"),
        (lambda d: d, "not_a_file"),
        (lambda d: (d / "empty.png").write_bytes(b"") and d / "empty.png" or d / "empty.png", "empty_image"),
        (lambda d: 42, "invalid_image_input"),
        (lambda d: ("a.png", "not bytes"), "invalid_image_input"),
    ],
)
def test_load_image_errors_have_codes(tmp_path: Path, make, code: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput) as info:
        load_image(make(tmp_path))
    assert info.value.code == code
    assert isinstance(info.value, ValueError)


def test_load_images_takes_one_or_many_and_refuses_none(tmp_path: Path) -> None:
    assert len(load_images(PNG)) == 1
    assert len(load_images("https://example.com/x.png")) == 1
    assert [s.filename for s in load_images([PNG, ("b.png", PNG)])] == ["image-0.png", "b.png"]
    with pytest.raises(InvalidInput) as info:
        load_images([])
    assert info.value.code == "no_images"


def test_extension_and_url_detection() -> None:
    assert extension_for(PNG) == ".png"
    assert extension_for(b"\xff\xd8\xff\xe0") == ".jpg"
    assert extension_for(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == ".webp"
    assert extension_for(b"????", ".png") == ".png"
    assert is_url("HTTPS://x") and not is_url("ftp://x") and not is_url(b"http://x")


def test_edit_params_merges_prompt_and_parses_json() -> None:
    assert edit_params(None, None) == {}
    assert edit_params("p", {"seed": 7}) == {"seed": 7, "prompt": "p"}
    assert edit_params("new", '{"prompt": "old", "seed": 1}') == {"prompt": "new", "seed": 1}
    assert edit_params(None, "  ") == {}
    for bad in ('{"seed": ', "[1, 2]"):
        with pytest.raises(InvalidInput) as info:
            edit_params(None, bad)
        assert info.value.code == "invalid_edit_params"


def test_kafka_refs_url_inline_and_too_large() -> None:
    url = ImageSource(filename="u.png", url="https://example.com/u.png")
    assert kafka_image_ref(url, inline_limit=0) == {"filename": "u.png", "url": "https://example.com/u.png"}
    small = ImageSource(filename="s.png", data=PNG)
    ref = kafka_image_ref(small, inline_limit=len(PNG))
    assert ref == {"filename": "s.png", "data": base64.b64encode(PNG).decode()}
    with pytest.raises(InvalidInput) as info:
        kafka_image_ref(small, inline_limit=len(PNG) - 1)
    assert info.value.code == "upload_required"
    assert "POST /api/v1/blobs" in info.value.message
    uploaded = ImageSource(filename="b.png", blob="ab" * 32)
    assert kafka_image_ref(uploaded, inline_limit=0) == {"filename": "b.png", "blob": "ab" * 32}


def test_task_request_is_the_documented_json() -> None:
    sources = [ImageSource(filename="a.png", data=PNG), ImageSource(filename="b.png", url="http://h/b.png")]
    doc = build_task_request(task_id="t-1", edit_type="enhance", sources=sources,
                             params={"prompt": "p", "seed": 3}, inline_limit=1024, submitted_at=12.5)
    assert json.loads(json.dumps(doc)) == {
        "task_id": "t-1",
        "edit_type": "enhance",
        "edit_params": {"prompt": "p", "seed": 3},
        "images": [{"filename": "a.png", "data": base64.b64encode(PNG).decode()},
                   {"filename": "b.png", "url": "http://h/b.png"}],
        "submitted_at": 12.5,
    }
    with pytest.raises(InvalidInput):
        build_task_request(task_id="t", edit_type="enhance", sources=[], params={}, inline_limit=1)


async def _parts(form) -> list[tuple[str, str | None, bytes]]:  # type: ignore[no-untyped-def]
    writer = form()
    raw = await writer.as_bytes()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {writer.content_type}\r\n\r\n".encode() + raw)
    out = []
    for part in message.iter_parts():
        out.append((part.get_param("name", header="content-disposition"), part.get_filename(),
                    part.get_payload(decode=True)))
    return out


async def test_multipart_has_images_edit_type_and_params_json() -> None:
    sources = [ImageSource(filename="a.png", data=PNG), ImageSource(filename="图.png", data=b"\xff\xd8\xff" + b"1")]
    parts = await _parts(build_form(edit_type="enhance", sources=sources, params={"prompt": "提升画质", "seed": 7}))
    assert [(name, filename) for name, filename, _ in parts] == [
        ("images", "a.png"), ("images", "图.png"), ("edit_type", None), ("edit_params", None)]
    assert parts[0][2] == PNG
    assert parts[2][2] == b"enhance"
    assert json.loads(parts[3][2]) == {"prompt": "提升画质", "seed": 7}


async def test_multipart_without_params_and_refuses_urls() -> None:
    parts = await _parts(build_form(edit_type="grayscale", sources=[ImageSource("a.png", PNG)], params={}))
    assert [name for name, _, _ in parts] == ["images", "edit_type"]
    with pytest.raises(InvalidInput):
        build_form(edit_type="grayscale", sources=[ImageSource("u", url="http://h/u")], params={})
