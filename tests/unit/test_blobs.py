"""Blob store: the local backend, the interface, choosing a backend from settings.

The S3 backend against a real S3-compatible server is in tests/s3/.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from config import Settings, SettingsError
from streams.blobs import (
    BlobNotFound,
    BlobStore,
    BlobStream,
    BlobTooLarge,
    LocalBlobStore,
    is_sha256,
    make_blob_store,
    sniff_mime,
)
from streams.errors import ImagestreamError

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
MISSING = "0" * 64


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


# --- names ----------------------------------------------------------------------------
def test_is_sha256() -> None:
    assert is_sha256(sha(b"x"))
    assert not is_sha256(sha(b"x").upper())
    assert not is_sha256(sha(b"x")[:-1])
    assert not is_sha256("../" + sha(b"x")[3:])
    assert not is_sha256("")


def test_sniff_mime() -> None:
    assert sniff_mime(PNG[:16]) == "image/png"
    assert sniff_mime(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniff_mime(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert sniff_mime(b"hello") == "application/octet-stream"


def test_local_store_is_a_blob_store(store: LocalBlobStore) -> None:
    assert isinstance(store, BlobStore)


# --- put / get ------------------------------------------------------------------------
async def test_put_returns_sha_and_get_round_trips(store: LocalBlobStore) -> None:
    digest = await store.put(PNG)
    assert digest == sha(PNG)
    assert await store.get(digest) == PNG
    assert await store.exists(digest)
    # two-level fan-out: root/ab/cdef…
    assert store.path(digest) == store.root / digest[:2] / digest[2:]
    assert files_under(store.root) == [store.path(digest)]


async def test_put_with_known_sha(store: LocalBlobStore) -> None:
    assert await store.put(PNG, sha(PNG)) == sha(PNG)
    assert await store.get(sha(PNG)) == PNG


async def test_put_is_idempotent_and_never_rewrites(store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = await store.put(PNG)
    before = os.stat(store.path(digest))

    def no_write(*args: object, **kwargs: object) -> None:
        raise AssertionError("an existing blob must not be written again")

    monkeypatch.setattr("streams.blobs.tempfile.mkstemp", no_write)
    monkeypatch.setattr("streams.blobs.os.replace", no_write)
    assert await store.put(PNG) == digest
    assert await store.put(PNG, digest) == digest
    after = os.stat(store.path(digest))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


async def test_concurrent_puts_of_the_same_bytes_leave_one_blob(store: LocalBlobStore) -> None:
    digests = await asyncio.gather(*(store.put(PNG) for _ in range(16)))
    assert set(digests) == {sha(PNG)}
    assert files_under(store.root) == [store.path(sha(PNG))]  # no temp files left behind
    assert await store.get(sha(PNG)) == PNG


async def test_a_failed_write_leaves_nothing_under_a_valid_name(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("streams.blobs.os.fsync", crash)
    with pytest.raises(OSError, match="No space"):
        await store.put(PNG)
    assert not await store.exists(sha(PNG))
    assert files_under(store.root) == []  # the temp file is gone too
    monkeypatch.undo()
    assert await store.put(PNG) == sha(PNG)  # and a later write succeeds
    assert await store.get(sha(PNG)) == PNG


async def test_writes_go_through_a_temp_file_renamed_into_place(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: object) -> None:
        # at rename time the full bytes are in the temp file and nothing is at the name
        assert Path(src).read_bytes() == PNG
        assert not Path(str(dst)).exists()
        seen.append((Path(src).name, Path(str(dst)).name))
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr("streams.blobs.os.replace", spy)
    await store.put(PNG)
    assert len(seen) == 1 and seen[0][0].startswith(".tmp-") and seen[0][1] == sha(PNG)[2:]


# --- not found, bad names, limits -----------------------------------------------------
async def test_missing_blob(store: LocalBlobStore) -> None:
    assert not await store.exists(MISSING)
    with pytest.raises(BlobNotFound) as info:
        await store.get(MISSING)
    err = info.value
    assert isinstance(err, FileNotFoundError)  # callers written for the old store still work
    assert isinstance(err, ImagestreamError) and err.code == "blob_not_found" and err.status == 404
    with pytest.raises(BlobNotFound):
        await store.open_stream(MISSING)


@pytest.mark.parametrize("bad", ["", "abc", "A" * 64, "../" + MISSING[3:], MISSING + "0", "g" * 64])
async def test_bad_names_are_refused(store: LocalBlobStore, bad: str) -> None:
    with pytest.raises(ValueError, match="not a sha256"):
        await store.get(bad)
    with pytest.raises(ValueError, match="not a sha256"):
        await store.exists(bad)
    with pytest.raises(ValueError, match="not a sha256"):
        await store.open_stream(bad)
    with pytest.raises(ValueError, match="not a sha256"):
        await store.put(PNG, bad or "x")
    assert files_under(store.root) == []


async def test_size_limit(tmp_path: Path) -> None:
    small = LocalBlobStore(tmp_path, max_bytes=100)
    assert await small.put(b"a" * 100) == sha(b"a" * 100)
    with pytest.raises(BlobTooLarge) as info:
        await small.put(b"a" * 101)
    assert info.value.status == 413
    assert not await small.exists(sha(b"a" * 101))


# --- streaming ------------------------------------------------------------------------
async def test_open_stream_yields_chunks(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path, chunk_size=1000)
    digest = await store.put(PNG)
    async with await store.open_stream(digest) as stream:
        assert isinstance(stream, BlobStream)
        assert stream.size == len(PNG)
        chunks = [chunk async for chunk in stream]
    assert b"".join(chunks) == PNG
    assert [len(c) for c in chunks[:-1]] == [1000] * (len(chunks) - 1)
    size, it = await store.open_stream(digest)  # also unpacks as (size, chunks)
    assert size == len(PNG) and b"".join([c async for c in it]) == PNG


async def test_open_stream_closed_early_releases_the_file(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path, chunk_size=10)
    digest = await store.put(PNG)
    fds_before = len(os.listdir("/proc/self/fd"))
    stream = await store.open_stream(digest)
    assert len(os.listdir("/proc/self/fd")) == fds_before + 1
    async for _ in stream:
        break
    await stream.aclose()
    assert len(os.listdir("/proc/self/fd")) == fds_before


async def test_local_store_has_no_presigned_urls(store: LocalBlobStore) -> None:
    digest = await store.put(PNG)
    assert await store.presigned_url(digest, 60) is None
    await store.close()


# --- settings and the factory ---------------------------------------------------------
def test_default_is_one_folder_per_host_whatever_the_data_dir(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path / "home")}
    a = make_blob_store(Settings.from_env({**env, "IMAGESTREAM_DATA_DIR": str(tmp_path / "a")}))
    b = make_blob_store(Settings.from_env({**env, "IMAGESTREAM_DATA_DIR": str(tmp_path / "b")}))
    assert isinstance(a, LocalBlobStore) and isinstance(b, LocalBlobStore)
    assert a.root == b.root == tmp_path / "home" / ".local" / "share" / "imagestream" / "blobs"
    xdg = make_blob_store(Settings.from_env({**env, "XDG_DATA_HOME": str(tmp_path / "xdg")}))
    assert isinstance(xdg, LocalBlobStore) and xdg.root == tmp_path / "xdg" / "imagestream" / "blobs"


async def test_store_id_is_written_once_and_read_by_every_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = tmp_path / "shared"
    # Eight processes race for the first write: all read back one id.
    code = ("import sys; from pathlib import Path; from streams.blobs import LocalBlobStore; "
            "print(LocalBlobStore(Path(sys.argv[1])).store_id_sync())")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True)
             for _ in range(8)]
    ids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(ids) == 1 and len(ids.pop()) == 32
    same = await LocalBlobStore(root).store_id()
    other = await LocalBlobStore(tmp_path / "other").store_id()
    assert same == (root / "store-id").read_text().strip()
    assert other != same
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]


def test_file_url(tmp_path: Path) -> None:
    store = make_blob_store(Settings(blob_url=f"file://{tmp_path}/elsewhere", blob_max_bytes=5))
    assert isinstance(store, LocalBlobStore) and store.root == tmp_path / "elsewhere" and store.max_bytes == 5


def test_s3_url() -> None:
    from streams.blobstore_s3 import S3BlobStore, parse_s3_url

    settings = Settings.from_env(
        {
            "IMAGESTREAM_BLOB_URL": "s3://images/prod/blobs/",
            "IMAGESTREAM_S3_ENDPOINT": "http://127.0.0.1:9000",
            "IMAGESTREAM_S3_ACCESS_KEY": "AKIA-TEST",
            "IMAGESTREAM_S3_SECRET_KEY": "very-secret",
        }
    )
    store = make_blob_store(settings)
    assert isinstance(store, S3BlobStore) and isinstance(store, BlobStore)
    assert (store.bucket, store.prefix) == ("images", "prod/blobs/")
    assert store.key(MISSING) == f"prod/blobs/00/{MISSING[2:]}"
    assert "very-secret" not in repr(store) + store.location + repr(settings)
    assert "AKIA-TEST" not in repr(settings)
    assert parse_s3_url("s3://b") == ("b", "")
    with pytest.raises(ValueError):
        parse_s3_url("s3:///prefix")
    with pytest.raises(ValueError):
        store.key("nope")


def test_blob_settings_from_env() -> None:
    settings = Settings.from_env({"IMAGESTREAM_BLOB_PRESIGN": "yes", "IMAGESTREAM_BLOB_PRESIGN_TTL": "90",
                                  "IMAGESTREAM_S3_REGION": "eu-central-1", "IMAGESTREAM_BLOB_MAX_BYTES": "1024"})
    assert settings.blob_presign is True and settings.blob_presign_ttl == 90.0
    assert settings.s3_region == "eu-central-1" and settings.blob_max_bytes == 1024
    assert settings.blob_url is None and Settings.from_env({}).blob_presign is False


@pytest.mark.parametrize(
    "env",
    [
        {"IMAGESTREAM_BLOB_URL": "ftp://x/y"},
        {"IMAGESTREAM_BLOB_URL": "s3://"},
        {"IMAGESTREAM_BLOB_PRESIGN": "maybe"},
        {"IMAGESTREAM_BLOB_PRESIGN_TTL": "0"},
        {"IMAGESTREAM_BLOB_PRESIGN_TTL": "700000"},
        {"IMAGESTREAM_BLOB_MAX_BYTES": "0"},
    ],
)
def test_bad_blob_settings(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(env)
