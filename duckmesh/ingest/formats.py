"""Upload bodies: media types, bounded spooling, decompression, parsing to Arrow.

A body is received chunk by chunk into a ``SpooledTemporaryFile``: in
memory up to a threshold, then in a private temporary file (``tempfile``
creates it with mode 0600, as ``duckmesh.files.FILE_MODE``). Neither the
compressed nor the decompressed size may pass the upload limit (413).
"""

from __future__ import annotations

import gzip
import tempfile
from collections.abc import AsyncIterable
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from duckmesh.errors import DuckMeshError

JSON = "application/json"
NDJSON = "application/x-ndjson"
CSV = "text/csv"
ARROW = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"
UPLOAD_TYPES = (NDJSON, CSV, ARROW, PARQUET)
ENCODINGS = ("identity", "gzip", "zstd")
_COPY_CHUNK = 1 << 20


def media_type(header: str | None) -> str:
    """The bare media type of a Content-Type header; a missing one is JSON."""
    if not header:
        return JSON
    kind = header.split(";", 1)[0].strip().lower()
    if kind != JSON and kind not in UPLOAD_TYPES:
        raise DuckMeshError(
            "UNSUPPORTED_MEDIA_TYPE",
            f"Content-Type {kind!r} is not accepted; use one of {[JSON, *UPLOAD_TYPES]}",
            content_type=kind,
            accepted=[JSON, *UPLOAD_TYPES],
        )
    return kind


def content_encoding(header: str | None) -> str:
    kind = (header or "identity").strip().lower()
    if kind not in ENCODINGS:
        raise DuckMeshError(
            "UNSUPPORTED_MEDIA_TYPE",
            f"Content-Encoding {kind!r} is not accepted; use gzip, zstd or none",
            content_encoding=kind,
        )
    return kind


def too_large(limit: int) -> DuckMeshError:
    return DuckMeshError(
        "PAYLOAD_TOO_LARGE", f"an upload may hold at most {limit} bytes", limit=limit
    )


async def spool(chunks: AsyncIterable[bytes], *, limit: int, in_memory: int) -> IO[bytes]:
    """The body, at most ``limit`` bytes, in memory up to ``in_memory`` bytes."""
    out: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=in_memory)  # noqa: SIM115
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                out.close()
                # Read the rest and drop it: answering before the body is in
                # leaves some clients waiting (see api/http.receive_body).
                async for _ in chunks:
                    pass
                raise too_large(limit)
            out.write(chunk)
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out


def decompress(body: IO[bytes], encoding: str, *, limit: int, in_memory: int) -> IO[bytes]:
    """The decoded body (closing ``body`` when it is replaced); bounded by ``limit``."""
    if encoding == "identity":
        return body
    out: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=in_memory)  # noqa: SIM115
    source: Any = (
        gzip.GzipFile(fileobj=body, mode="rb")
        if encoding == "gzip"
        else pa.CompressedInputStream(pa.PythonFile(body, mode="r"), "zstd")
    )
    size = 0
    try:
        while chunk := source.read(_COPY_CHUNK):
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            out.write(chunk)
    except (OSError, EOFError, pa.ArrowException) as exc:
        out.close()
        raise DuckMeshError(
            "BAD_REQUEST", f"the {encoding} body cannot be decoded: {exc}", encoding=encoding
        ) from None
    except BaseException:
        out.close()
        raise
    finally:
        body.close()
    out.seek(0)
    return out


def _bad(kind: str, exc: Exception) -> DuckMeshError:
    return DuckMeshError("BAD_REQUEST", f"the {kind} body cannot be read: {exc}", format=kind)


def parse(body: IO[bytes], kind: str, *, delimiter: str, null_string: str) -> pa.Table:
    """The upload as an Arrow table with the body's own column types (CSV
    columns are all text; casting to the table's types is validation's job)."""
    try:
        if kind == CSV:
            return _read_csv(body, delimiter, null_string)
        if kind == NDJSON:
            return pa_json.read_json(body, read_options=pa_json.ReadOptions(block_size=8 << 20))
        if kind == ARROW:
            return pa.ipc.open_stream(pa.PythonFile(body, mode="r")).read_all()
        return pq.read_table(pa.PythonFile(body, mode="r"))
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise _bad(kind, exc) from None


def _read_csv(body: IO[bytes], delimiter: str, null_string: str) -> pa.Table:
    header = pa_csv.open_csv(
        body,
        parse_options=pa_csv.ParseOptions(delimiter=delimiter),
        convert_options=pa_csv.ConvertOptions(column_types={}),
    ).schema.names
    body.seek(0)
    return pa_csv.read_csv(
        body,
        parse_options=pa_csv.ParseOptions(delimiter=delimiter),
        convert_options=pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            null_values=[null_string],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
