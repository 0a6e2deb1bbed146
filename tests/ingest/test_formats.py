"""Upload bodies: spooled past the in-memory threshold into a private file,
bounded before and after decompression, decoded, and refused by media type."""

from __future__ import annotations

import gzip
import os
import stat
from collections.abc import AsyncIterator

import pytest

from duckmesh.errors import DuckMeshError
from duckmesh.ingest import formats


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_a_large_body_is_spooled_to_a_private_file() -> None:
    data = b"x" * 50_000
    out = await formats.spool(_chunks(data), limit=1 << 20, in_memory=4096)
    try:
        assert out._rolled  # type: ignore[attr-defined]  # on disk, not in memory
        mode = stat.S_IMODE(os.fstat(out.fileno()).st_mode)
        assert mode == 0o600
        assert out.read() == data
    finally:
        out.close()


async def test_a_small_body_stays_in_memory() -> None:
    out = await formats.spool(_chunks(b"abc"), limit=1 << 20, in_memory=4096)
    try:
        assert not out._rolled  # type: ignore[attr-defined]
        assert out.read() == b"abc"
    finally:
        out.close()


async def test_limits_before_and_after_decompression() -> None:
    with pytest.raises(DuckMeshError) as err:
        await formats.spool(_chunks(b"x" * 5000), limit=4096, in_memory=1024)
    assert err.value.error_code == "PAYLOAD_TOO_LARGE"
    bomb = gzip.compress(b"\0" * 1_000_000)
    body = await formats.spool(_chunks(bomb), limit=100_000, in_memory=1024)
    with pytest.raises(DuckMeshError) as err:
        formats.decompress(body, "gzip", limit=100_000, in_memory=1024)
    assert err.value.error_code == "PAYLOAD_TOO_LARGE"
    garbage = await formats.spool(_chunks(b"not gzip"), limit=100_000, in_memory=1024)
    with pytest.raises(DuckMeshError) as err:
        formats.decompress(garbage, "gzip", limit=100_000, in_memory=1024)
    assert err.value.error_code == "BAD_REQUEST"


@pytest.mark.parametrize(
    ("header", "kind"),
    [
        (None, formats.JSON),
        ("application/json; charset=utf-8", formats.JSON),
        ("Text/CSV; header=present", formats.CSV),
        ("application/vnd.apache.parquet", formats.PARQUET),
    ],
)
def test_media_types(header: str | None, kind: str) -> None:
    assert formats.media_type(header) == kind


@pytest.mark.parametrize("header", ["text/plain", "application/x-www-form-urlencoded", "a/b"])
def test_other_media_types_are_refused(header: str) -> None:
    with pytest.raises(DuckMeshError) as err:
        formats.media_type(header)
    assert err.value.error_code == "UNSUPPORTED_MEDIA_TYPE"
    assert err.value.http_status == 415
