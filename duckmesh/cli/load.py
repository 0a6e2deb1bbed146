"""``duckmesh load TABLE PATH...``: bulk-load files through ``POST /v1/ingest``.

A file is read as a stream and sent in chunks of ``--chunk-rows`` rows: CSV,
TSV, Parquet and Arrow as Arrow IPC streams (text columns are cast by the
server, as for a CSV upload), NDJSON as NDJSON lines. Each chunk's
``Idempotency-Key`` derives from the file's content (SHA-256; for stdin, the
chunk's own content) and the chunk number, so a rerun after a crash or
Ctrl-C sends the same keys and the server answers what it already holds as
duplicates. Retryable errors (429, 5xx, connection failures) are retried
with exponential backoff. Only the standard library talks HTTP.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import queue
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import IO, Any

import attrs

from duckmesh.cli.progress import ProgressBar
from duckmesh.config import Config

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".arrows": "arrow",
}
ARROW_TYPE = "application/vnd.apache.arrow.stream"
NDJSON_TYPE = "application/x-ndjson"
_RETRYABLE_STATUS = {429, 500, 502, 503, 504}


@attrs.frozen
class Chunk:
    number: int
    rows: int
    body: bytes
    content_type: str
    position: int  # bytes of the source read so far


@attrs.define
class Totals:
    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    max_token: int = 0
    chunks: int = 0
    bytes_read: int = 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("load", help="bulk-load CSV, TSV, NDJSON, Parquet or Arrow files")
    p.add_argument("table")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, or - for stdin")
    p.add_argument("--format", choices=sorted(set(FORMATS.values())))
    p.add_argument("--op", choices=["insert", "upsert", "delete"], default="insert")
    p.add_argument("--key-column", help="take each row's idempotency key from this column")
    p.add_argument("--event-time-column")
    p.add_argument("--chunk-rows", type=int, default=100_000)
    p.add_argument("--delimiter", help="CSV delimiter (default , or a tab for .tsv)")
    p.add_argument("--url", default=os.environ.get("DUCKMESH_URL"))
    p.add_argument("--api-key", default=os.environ.get("DUCKMESH_API_KEY"))
    p.add_argument("--retries", type=int, default=8)
    p.add_argument("--wait", action="store_true", help="return once every row is visible")


def _ipc(batches: list[Any]) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(sink, batches[0].schema, options=options) as writer:
        for batch in batches:
            writer.write_batch(batch)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def _regroup(batches: Iterator[Any], rows: int, fh: IO[bytes]) -> Iterator[Chunk]:
    """Record batches regrouped into IPC chunks of exactly ``rows`` rows (the
    last one smaller), so chunk boundaries do not depend on read sizes."""
    pending: list[Any] = []
    held = 0
    number = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - held, batch.num_rows)
            pending.append(batch.slice(0, take))
            batch, held = batch.slice(take), held + take
            if held == rows:
                yield Chunk(number, held, _ipc(pending), ARROW_TYPE, _tell(fh))
                number, pending, held = number + 1, [], 0
    if held:
        yield Chunk(number, held, _ipc(pending), ARROW_TYPE, _tell(fh))


def _tell(fh: IO[bytes]) -> int:
    try:
        return fh.tell()
    except (OSError, ValueError):
        return 0


def _csv_batches(fh: IO[bytes], delimiter: str) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    header_line = fh.readline().decode()
    header = next(csv.reader([header_line], delimiter=delimiter))
    reader = pa_csv.open_csv(
        fh,
        read_options=pa_csv.ReadOptions(column_names=header, block_size=8 << 20),
        parse_options=pa_csv.ParseOptions(delimiter=delimiter),
        convert_options=pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    yield from reader


def _ndjson_chunks(fh: IO[bytes], rows: int) -> Iterator[Chunk]:
    lines: list[bytes] = []
    number = 0
    for line in fh:
        if line.strip():
            lines.append(line if line.endswith(b"\n") else line + b"\n")
        if len(lines) == rows:
            yield Chunk(number, rows, b"".join(lines), NDJSON_TYPE, _tell(fh))
            number, lines = number + 1, []
    if lines:
        yield Chunk(number, len(lines), b"".join(lines), NDJSON_TYPE, _tell(fh))


def chunks(fh: IO[bytes], kind: str, rows: int, delimiter: str | None) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if kind in ("csv", "tsv"):
        sep = delimiter or ("\t" if kind == "tsv" else ",")
        return _regroup(_csv_batches(fh, sep), rows, fh)
    if kind == "ndjson":
        return _ndjson_chunks(fh, rows)
    if kind == "parquet":
        source = fh if fh.seekable() else io.BytesIO(fh.read())
        return _regroup(pq.ParquetFile(source).iter_batches(batch_size=rows), rows, fh)
    return _regroup(iter(pa.ipc.open_stream(fh)), rows, fh)


def prefetch(items: Iterator[Chunk], depth: int = 2) -> Iterator[Chunk]:
    """Read and encode the next chunks in a thread while one is being sent
    (pyarrow parses and compresses without holding the GIL)."""
    box: queue.Queue[Chunk | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        box.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            box.put(exc)

    worker = threading.Thread(target=produce, name="load-reader", daemon=True)
    worker.start()
    try:
        while (got := box.get()) is not None:
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()


def _file_digest(path: str) -> str | None:
    if path == "-":
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def chunk_key(file_digest: str | None, chunk: Chunk) -> str:
    """Resumable: the same file (or, on stdin, the same chunk) gives the same key."""
    base = file_digest or hashlib.sha256(chunk.body).hexdigest()
    return f"load-{base[:40]}-{chunk.number}"


class Client:
    def __init__(self, url: str, api_key: str, retries: int) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.retries = retries

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        """POST with retries of retryable failures; raises LoadFailed otherwise."""
        delay = 0.5
        written = False
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(  # noqa: S310 (http/https from the user)
                self.url + path,
                data=body,
                method="POST",
                headers={"Authorization": f"Bearer {self.api_key}", **headers},
            )
            try:
                with urllib.request.urlopen(request, timeout=600) as resp:  # noqa: S310
                    out: dict[str, Any] = json.load(resp)
                    out["written_before_retry"] = written
                    return out
            except urllib.error.HTTPError as exc:
                error = _error_body(exc)
                # 504 CONSISTENCY_TIMEOUT: written, not yet visible; the retry
                # waits again and sees the rows as duplicates of this attempt.
                written = written or error.get("error_code") == "CONSISTENCY_TIMEOUT"
                if exc.code not in _RETRYABLE_STATUS or attempt == self.retries:
                    raise LoadFailed(f"HTTP {exc.code}: {json.dumps(error)}") from None
                after = exc.headers.get("Retry-After")
                wait = float(after) if after and after.isdigit() else delay
            except (urllib.error.URLError, OSError) as exc:
                if attempt == self.retries:
                    raise LoadFailed(f"no answer from {self.url}: {exc}") from None
                wait = delay
            time.sleep(wait)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")


def _error_body(exc: urllib.error.HTTPError) -> Any:
    try:
        return json.load(exc)
    except ValueError:
        return {"status": exc.code}


class LoadFailed(Exception):
    pass


class Progress:
    """A progress bar on a terminal (cli/progress.py), one line per chunk otherwise."""

    def __init__(self, out: IO[str], total_bytes: int) -> None:
        self.out = out
        self.total = total_bytes
        self.tty = out.isatty()
        self.started = time.monotonic()
        self.bar: ProgressBar | None = None

    def show(self, name: str, totals: Totals, chunk: Chunk) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        mb_s = totals.bytes_read / elapsed / 1e6
        eta = ""
        if self.total and totals.bytes_read:
            left = max(self.total - totals.bytes_read, 0)
            eta = f", ETA {left / (totals.bytes_read / elapsed):.0f}s"
        line = (
            f"{name}: chunk {chunk.number}: {totals.rows} rows ({totals.duplicates} duplicates),"
            f" {mb_s:.1f} MB/s{eta}"
        )
        if self.bar is None:
            self.bar = ProgressBar(name, self.total, out=self.out, unit="bytes")
        self.bar.advance_to(totals.bytes_read, line=line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close(final_line=False)


def _open(path: str) -> IO[bytes]:
    return sys.stdin.buffer if path == "-" else open(path, "rb")


def _send(
    client: Client, table: str, args: argparse.Namespace, chunk: Chunk, key: str, wait: bool
) -> dict[str, Any]:
    params = {"op": args.op}
    headers = {"Content-Type": chunk.content_type}
    if args.key_column:
        params["key_column"] = args.key_column
    else:
        headers["Idempotency-Key"] = key
    if args.event_time_column:
        params["event_time_column"] = args.event_time_column
    if wait:
        params["wait_for_visibility"] = "true"
    query = urllib.parse.urlencode(params)
    return client.post(
        f"/v1/ingest/{urllib.parse.quote(table, safe='')}?{query}", chunk.body, headers
    )


def _load_one(
    client: Client, args: argparse.Namespace, path: str, totals: Totals, last_file: bool
) -> None:
    kind = args.format or FORMATS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise LoadFailed(f"{path}: cannot tell the format from the name; use --format")
    digest = _file_digest(path)
    size = os.path.getsize(path) if path != "-" else 0
    progress = Progress(sys.stdout, size)
    base = totals.bytes_read
    with _open(path) as fh:
        stream = prefetch(chunks(fh, kind, args.chunk_rows, args.delimiter))
        chunk = next(stream, None)
        while chunk is not None:
            following = next(stream, None)
            wait = args.wait and last_file and following is None
            receipt = _send(client, args.table, args, chunk, chunk_key(digest, chunk), wait)
            totals.rows += chunk.rows
            totals.chunks += 1
            if receipt["written_before_retry"]:  # our own earlier attempt wrote them
                totals.accepted += receipt["accepted_count"] + receipt["duplicate_count"]
            else:
                totals.accepted += receipt["accepted_count"]
                totals.duplicates += receipt["duplicate_count"]
            totals.max_token = max(totals.max_token, receipt["max_visibility_token"])
            totals.bytes_read = base + chunk.position
            progress.show(path, totals, chunk)
            chunk = following
    progress.close()


def cmd_load(args: argparse.Namespace, config: Config) -> int:
    if args.chunk_rows < 1:
        print("duckmesh load: --chunk-rows must be at least 1", file=sys.stderr)
        return 2
    scheme = "https" if config.tls_cert_file else "http"
    url = args.url or f"{scheme}://{config.http_host}:{config.http_port}"
    api_key = args.api_key or config.bootstrap_api_key
    if not api_key:
        print("duckmesh load: needs --api-key or DUCKMESH_API_KEY", file=sys.stderr)
        return 2
    client = Client(url, api_key, args.retries)
    totals = Totals()
    started = time.monotonic()
    try:
        for i, path in enumerate(args.paths):
            _load_one(client, args, path, totals, i == len(args.paths) - 1)
    except LoadFailed as exc:
        print(f"duckmesh load: {exc}", file=sys.stderr)
        _summary(totals, started, sys.stderr)
        return 1
    except OSError as exc:
        print(f"duckmesh load: {exc}", file=sys.stderr)
        return 1
    _summary(totals, started, sys.stdout)
    return 0


def _summary(totals: Totals, started: float, out: IO[str]) -> None:
    elapsed = time.monotonic() - started
    print(
        f"loaded {totals.rows} rows in {totals.chunks} chunk(s): {totals.accepted} new,"
        f" {totals.duplicates} duplicates; max token {totals.max_token}; {elapsed:.1f}s",
        file=out,
        flush=True,
    )
