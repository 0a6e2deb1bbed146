"""Configuration: environment variables and an optional TOML file, parsed once.

``load_config`` turns ``DUCKMESH_*`` variables (and ``DUCKMESH_CONFIG_FILE``, a
TOML file whose keys are the same names in lower case without the prefix) into
one frozen :class:`Config`. Environment wins over the file. Any bad value
raises :class:`ConfigError` whose message names the variable, so ``duckmesh``
can exit with one clear line. Every knob has a safe default, documented in
``docs/CONFIGURATION.md``.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

ROLES = ("all", "api", "coordinator", "maintenance")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the variable."""


def _int(lo: int, hi: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer") from None
        if not lo <= value <= hi:
            raise ConfigError(f"{name}={value} is outside {lo}..{hi}")
        return value

    return parse


def _bool(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use 1/0, true/false)")


def _str(name: str, raw: str) -> str:
    return raw


def _http_url(name: str, raw: str) -> str:
    if raw and not (raw.startswith(("http://", "https://")) and len(raw) > len("https://")):
        raise ConfigError(f"{name}={raw!r} must be empty or an http:// or https:// URL")
    return raw.rstrip("/")


def _choice(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        if raw not in choices:
            raise ConfigError(f"{name}={raw!r} must be one of {', '.join(choices)}")
        return raw

    return parse


# Words of the placeholders in ops/ templates and docs (compared case-insensitively).
PLACEHOLDER_WORDS = (
    "replace_me",
    "replace-me",
    "changeme",
    "change_me",
    "change-me",
    "placeholder",
    "your_key",
    "your-key",
    "example",
    "secret",
)


def _bootstrap_key(name: str, raw: str) -> str:
    if not raw:
        return raw
    if len(raw) < 32:
        raise ConfigError(f"{name} must be at least 32 characters")
    low = raw.lower()
    if any(word in low for word in PLACEHOLDER_WORDS):
        raise ConfigError(f"{name} is a placeholder; set at least 32 random characters")
    # A random key of 32+ characters has many distinct characters and no
    # character filling a third of it; "aaaa...", "0000..." or "abab..." do not.
    if len(set(raw)) < 8 or max(raw.count(c) for c in set(raw)) * 3 > len(raw):
        raise ConfigError(f"{name} is too weak; use at least 32 random characters")
    return raw


UNSAFE_BREAKS = (
    "skip_barrier",  # queries do not wait for the token (duckmesh/query/barrier.py)
    "token_order",  # receipts name a token below their last record's (bus/record_batches.py)
    "publish_before_durable",  # a commit publishes files never put at their key (committer)
    "no_fencing",  # a coordinator that lost its lease still publishes (bus ack, committer)
    "skip_idempotency",  # idempotency keys are not recorded: retries are new (bus insert)
    "split_publish",  # a commit's files are published in two transactions (committer)
    "expire_pinned",  # snapshot expiry ignores pins (maintenance/gc.py ``_expire``)
    "gc_live_files",  # GC takes files only retained snapshots list (maintenance/gc.py ``_collect``)
)


def _unsafe_break(name: str, raw: str) -> str:
    if raw and raw not in UNSAFE_BREAKS:
        raise ConfigError(f"{name}={raw!r} must be empty or one of {', '.join(UNSAFE_BREAKS)}")
    return raw


def _object_store_url(name: str, raw: str) -> str:
    if raw == "":
        return raw
    if raw.startswith("file:///"):
        return raw
    if raw.startswith("s3://") and raw[len("s3://") :].split("/", 1)[0]:
        return raw.rstrip("/")
    raise ConfigError(f"{name}={raw!r} must be file:///path or s3://bucket[/prefix]")


def _endpoint_url(name: str, raw: str) -> str:
    if raw and not raw.startswith(("http://", "https://")):
        raise ConfigError(f"{name}={raw!r} must start with http:// or https://")
    return raw.rstrip("/")


@attrs.frozen
class Config:
    """Effective configuration. Field docs live in docs/CONFIGURATION.md."""

    data_dir: Path = Path("duckmesh-data")
    catalog_dsn: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    tls_cert_file: str = ""
    tls_key_file: str = ""
    bootstrap_api_key: str = ""
    role: str = "all"
    api_workers: int = 0  # API worker processes of `serve` (role all); 0 = CPUs available
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"
    # database
    db_pool_size: int = 8
    db_pool_timeout_ms: int = 10_000  # a checkout waiting longer answers OVERLOADED
    # ingest
    group_commit_window_ms: int = 0
    max_request_bytes: int = 16 * 1024 * 1024
    max_records_per_request: int = 10_000
    max_record_bytes: int = 1024 * 1024
    max_upload_bytes: int = 1 << 30  # one CSV/NDJSON/Arrow/Parquet upload, compressed or not
    upload_spool_bytes: int = 8 << 20  # an upload body larger than this goes to a temp file
    max_pending_records: int = 5_000_000
    ingest_rate_limit: int = 0  # records/s per tenant; 0 = unlimited
    tenant_storage_quota_bytes: int = 0  # live data-file bytes per tenant; 0 = unlimited
    # commit
    coordinators: int = 1
    flush_interval_ms: int = 200
    commit_linger_ms: int = 50
    commit_busy_interval_ms: int = 80  # while busy, commits start at most this often (ADR 0015)
    batch_max_records: int = 100_000
    batch_max_bytes: int = 64 * 1024 * 1024
    lease_ms: int = 10_000
    commit_backoff_ms: int = 500
    commit_backoff_max_ms: int = 30_000
    # query
    query_memory_limit_mb: int = 512
    query_threads: int = 2
    query_timeout_ms: int = 30_000
    query_row_limit: int = 10_000
    query_max_row_limit: int = 1_000_000
    query_concurrency: int = 8
    query_max_sql_bytes: int = 64 * 1024
    tenant_query_concurrency: int = 4  # at most query_concurrency (clamped)
    tenant_query_queue: int = 16
    tenant_query_rate: int = 0  # queries/s per tenant; 0 = unlimited
    consistency_timeout_ms: int = 5_000
    max_consistency_timeout_ms: int = 60_000
    snapshot_cache_size: int = 8
    query_stream_readahead_mb: int = 8  # streamed results: read ahead before the headers
    query_max_databases: int = 4096  # tenant databases kept warm (least recent closed first)
    query_shared_engine: bool = True  # one DuckDB instance for every tenant (ADR 0018)
    query_result_cache_bytes: int = 16 * 1024 * 1024  # 0 = no result cache
    # maintenance
    maintenance_interval_ms: int = 60_000
    compaction_interval_ms: int = 5_000
    compaction_min_files: int = 8
    compaction_target_bytes: int = 128 * 1024 * 1024
    compaction_memory_mb: int = 128  # DuckDB memory of one merge; beyond it the sort spills
    snapshot_retain_count: int = 100
    snapshot_retain_ms: int = 24 * 3600 * 1000
    gc_safety_window_ms: int = 3600 * 1000
    # object storage (ADR 0019): "" = file objects/ under the data dir
    object_store_url: str = ""  # file:///path or s3://bucket/prefix
    s3_endpoint_url: str = ""  # MinIO and other S3-compatible servers; "" = AWS
    s3_region: str = ""  # "" = the AWS SDK's default (AWS_REGION, profile)
    s3_path_style: bool = True  # path-style addressing (False: virtual-hosted)
    object_cache_dir: str = ""  # "" = cache/ under the data dir
    object_cache_bytes: int = 0  # 0 = a quarter of the cache disk's size
    # committed bus rows older than this are pruned: idempotency holds within it
    idempotency_window_ms: int = 7 * 24 * 3600 * 1000
    # the collector checkpoints the catalog once this many events were appended since the last
    catalog_checkpoint_events: int = 10_000
    # newest maintenance_run rows (compactions, collector runs) the catalog keeps per tenant
    maintenance_runs_kept: int = 1_000
    # lifecycle and self-healing (ADR 0017)
    shutdown_grace_ms: int = 5_000  # running queries get this long after a stop signal
    min_free_disk_bytes: int = 256 * 1024 * 1024  # below: ingest answers 507 DISK_LOW
    integrity_interval_ms: int = 3_600_000  # the integrity actor's pass; 0 = off
    integrity_bytes_per_s: int = 64 * 1024 * 1024  # its read rate limit
    # natural language -> SQL (POST /v1/query/translate); off while the URL is empty
    translate_url: str = ""  # an OpenAI-compatible API base, e.g. http://host:11434/v1
    translate_model: str = ""
    translate_api_key: str = ""
    translate_timeout_ms: int = 30_000
    # testing / chaos
    enable_faults: bool = False
    faults: str = ""
    # TEST ONLY: deliberately break one guarantee ("skip_barrier") so the scenario
    # runner can prove it notices; refused unless enable_faults is on.
    unsafe_break: str = ""

    def redacted(self) -> dict[str, Any]:
        """Every field, secrets replaced, for ``duckmesh config show``."""
        out: dict[str, Any] = {}
        for field in attrs.fields(Config):
            value = getattr(self, field.name)
            if field.name in ("bootstrap_api_key", "translate_api_key") and value:
                value = "<redacted>"
            elif field.name == "catalog_dsn" and value:
                value = redact_dsn(value)
            out[field.name] = str(value) if isinstance(value, Path) else value
        return out


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "data_dir": _str,
    "catalog_dsn": _str,
    "http_host": _str,
    "http_port": _int(1, 65535),
    "tls_cert_file": _str,
    "tls_key_file": _str,
    "bootstrap_api_key": _bootstrap_key,
    "role": _choice(*ROLES),
    "api_workers": _int(0, 1024),
    "log_format": _choice("auto", "json", "console"),
    "log_level": _choice("debug", "info", "warning", "error"),
    "db_pool_size": _int(2, 256),
    "db_pool_timeout_ms": _int(100, 600_000),
    "group_commit_window_ms": _int(0, 1000),
    "max_request_bytes": _int(1024, 1 << 30),
    "max_records_per_request": _int(1, 1_000_000),
    "max_record_bytes": _int(64, 64 << 20),
    "max_upload_bytes": _int(1024, 1 << 40),
    "upload_spool_bytes": _int(1, 1 << 30),
    "max_pending_records": _int(1, 1 << 40),
    "ingest_rate_limit": _int(0, 1 << 30),
    "tenant_storage_quota_bytes": _int(0, 1 << 60),
    "coordinators": _int(1, 64),
    "flush_interval_ms": _int(10, 60_000),
    "commit_linger_ms": _int(0, 10_000),
    "commit_busy_interval_ms": _int(0, 10_000),
    "batch_max_records": _int(1, 10_000_000),
    "batch_max_bytes": _int(1024, 1 << 34),
    "lease_ms": _int(500, 3_600_000),
    "commit_backoff_ms": _int(10, 600_000),
    "commit_backoff_max_ms": _int(10, 3_600_000),
    "query_memory_limit_mb": _int(16, 1 << 20),
    "query_threads": _int(1, 256),
    "query_timeout_ms": _int(10, 3_600_000),
    "query_row_limit": _int(1, 100_000_000),
    "query_max_row_limit": _int(1, 100_000_000),
    "query_concurrency": _int(1, 1024),
    "query_max_sql_bytes": _int(1024, 1 << 20),
    "tenant_query_concurrency": _int(1, 1024),
    "tenant_query_queue": _int(0, 100_000),
    "tenant_query_rate": _int(0, 1_000_000),
    "consistency_timeout_ms": _int(0, 3_600_000),
    "max_consistency_timeout_ms": _int(0, 3_600_000),
    "snapshot_cache_size": _int(1, 100_000),
    "query_stream_readahead_mb": _int(0, 1024),
    "query_max_databases": _int(1, 1_000_000),
    "query_shared_engine": _bool,
    "query_result_cache_bytes": _int(0, 1 << 40),
    "maintenance_interval_ms": _int(100, 86_400_000),
    "compaction_interval_ms": _int(100, 86_400_000),
    "compaction_min_files": _int(2, 100_000),
    "compaction_target_bytes": _int(1024, 1 << 40),
    "compaction_memory_mb": _int(16, 1 << 20),
    "snapshot_retain_count": _int(1, 1_000_000_000),
    "snapshot_retain_ms": _int(0, 3_153_600_000_000),  # up to 100 years
    "gc_safety_window_ms": _int(0, 3_153_600_000_000),  # up to 100 years
    "object_store_url": _object_store_url,
    "s3_endpoint_url": _endpoint_url,
    "s3_region": _str,
    "s3_path_style": _bool,
    "object_cache_dir": _str,
    "object_cache_bytes": _int(0, 1 << 50),
    "idempotency_window_ms": _int(1000, 3_153_600_000_000),  # 1 s .. 100 years
    "catalog_checkpoint_events": _int(1, 1_000_000_000),
    "maintenance_runs_kept": _int(1, 1_000_000),
    "shutdown_grace_ms": _int(0, 600_000),
    "min_free_disk_bytes": _int(0, 1 << 50),
    "integrity_interval_ms": _int(0, 86_400_000 * 30),
    "integrity_bytes_per_s": _int(1024, 1 << 40),
    "translate_url": _http_url,
    "translate_model": _str,
    "translate_api_key": _str,
    "translate_timeout_ms": _int(100, 600_000),
    "enable_faults": _bool,
    "faults": _str,
    "unsafe_break": _unsafe_break,
}


def env_name(field: str) -> str:
    return "DUCKMESH_" + field.upper()


# ``DUCKMESH_*`` variables that are not settings of :class:`Config` but are read
# elsewhere (the config file itself, the test suite's Postgres, the client
# variables of the docs and scripts). Any other unknown ``DUCKMESH_*`` name is a
# configuration error, like an unknown TOML key: a typo must not pass silently.
NON_CONFIG_ENV = (
    "DUCKMESH_CONFIG_FILE",
    "DUCKMESH_TEST_DSN",
    "DUCKMESH_URL",
    "DUCKMESH_API_KEY",
)


def _check_env_names(env: Mapping[str, str]) -> None:
    known = {env_name(field) for field in _PARSERS} | set(NON_CONFIG_ENV)
    for name in sorted(env):
        if name.startswith("DUCKMESH_") and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{name}: unknown variable{hint}")


def parse_flag(field: str, flag: str, raw: str) -> Any:
    """A command-line flag's value through the setting's own parser (the error names the flag)."""
    parsed = _PARSERS[field](flag, raw)
    return Path(parsed) if field == "data_dir" else parsed


def _check_faults(config: Config) -> None:
    """Parse the fault spec now, so a bad one is one line at start, not a traceback later."""
    from duckmesh.supervisors.faults import FaultPoints

    try:
        FaultPoints.from_spec(config.faults, enabled=config.enable_faults)
    except ValueError as exc:
        raise ConfigError(f"DUCKMESH_FAULTS={config.faults!r}: {exc}") from None


def to_toml(values: Mapping[str, Any]) -> str:
    """Flat ``key = value`` TOML for ``config show`` (str, int and bool values)."""
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        else:
            # A JSON string is a TOML basic string, except DEL which TOML wants escaped.
            text = json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def redact_dsn(dsn: str) -> str:
    """Hide a password in a libpq URI or key/value DSN."""
    if "://" in dsn and "@" in dsn:
        scheme, rest = dsn.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else dsn
    parts = []
    for part in dsn.split():
        key = part.split("=", 1)[0]
        parts.append(f"{key}=***" if key == "password" else part)
    return " ".join(parts)


def _check_tls(config: Config) -> None:
    """TLS needs both files or neither, and both must be readable now (not at
    the first connection, where a bad file would only show in a client)."""
    if bool(config.tls_cert_file) != bool(config.tls_key_file):
        raise ConfigError(
            "DUCKMESH_TLS_CERT_FILE and DUCKMESH_TLS_KEY_FILE must be set together (or neither)"
        )
    for field in ("tls_cert_file", "tls_key_file"):
        path = getattr(config, field)
        if not path:
            continue
        try:
            with open(path, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(f"{env_name(field)}={path!r} cannot be read: {reason}") from None


def api_worker_count(config: Config) -> int:
    """``DUCKMESH_API_WORKERS``, or the CPUs this process may run on (at least 1)."""
    if config.api_workers:
        return config.api_workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def load_config(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """Build the configuration: defaults < TOML file < environment < overrides."""
    env = os.environ if environ is None else environ
    _check_env_names(env)
    raw: dict[str, tuple[str, str]] = {}  # field -> (source name, raw text)
    file_name = env.get("DUCKMESH_CONFIG_FILE", "")
    if file_name:
        try:
            with open(file_name, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"DUCKMESH_CONFIG_FILE={file_name!r}: {exc}") from None
        for key, value in data.items():
            if key not in _PARSERS:
                raise ConfigError(f"DUCKMESH_CONFIG_FILE: unknown key {key!r}")
            text = str(value).lower() if isinstance(value, bool) else str(value)
            raw[key] = (f"{file_name}:{key}", text)
    for field in _PARSERS:
        name = env_name(field)
        if name in env:
            raw[field] = (name, env[name])
    values: dict[str, Any] = {}
    for field, (source, text) in raw.items():
        parsed = _PARSERS[field](source, text)
        values[field] = Path(parsed) if field == "data_dir" else parsed
    values.update(overrides or {})
    config = Config(**values)
    if config.query_row_limit > config.query_max_row_limit:
        raise ConfigError("DUCKMESH_QUERY_ROW_LIMIT exceeds DUCKMESH_QUERY_MAX_ROW_LIMIT")
    if config.consistency_timeout_ms > config.max_consistency_timeout_ms:
        raise ConfigError(
            "DUCKMESH_CONSISTENCY_TIMEOUT_MS exceeds DUCKMESH_MAX_CONSISTENCY_TIMEOUT_MS"
        )
    _check_tls(config)
    _check_faults(config)
    if config.unsafe_break and not config.enable_faults:
        raise ConfigError(
            f"DUCKMESH_UNSAFE_BREAK={config.unsafe_break!r} breaks a consistency guarantee"
            " on purpose (tests only); it is refused unless DUCKMESH_ENABLE_FAULTS=1"
        )
    return config
