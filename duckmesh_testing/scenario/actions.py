"""Scenario steps as plain JSON-able dicts.

A scenario is a list of actions; each is a dict with a ``"do"`` key naming the
step and the step's inputs (never its expected outputs: the executor derives
those from its model). Because they are plain data, a failing run can be
written to a file and rerun exactly (``duckmesh scenario replay FILE``).

Steps:

- ``{"do": "create_table", "table": name, "columns": [...], "primary_key": [...]}``
- ``{"do": "evolve_table", "table": name, "add_columns": [{"name", "type"}]}`` (nullable)
- ``{"do": "ingest", "table": name, "records": [...], "wait": false}``; records are
  ingest records (``idempotency_key``, ``op``, ``payload``). Reusing a key with the
  same record is a retry; ``"wait": true`` is mode B.
- ``{"do": "ingest_wait", ...}``: the same as ``ingest`` with ``"wait": true``.
- ``{"do": "ingest_conflict", "table": name, "record": {...}}``: an earlier key with
  a different payload; must be refused with ``IDEMPOTENCY_CONFLICT``.
- ``{"do": "query_token", "table": name, "sql_kind": "rows"|"aggregate"}``: mode A
  with the last acknowledged token.
- ``{"do": "query_latest", "table": name}``: mode C (no token).
- ``{"do": "query_snapshot", "pick": n}``: rerun remembered answer ``n`` (modulo how
  many are remembered) on its snapshot id.
- ``{"do": "kill_coordinator", "fault": null|point, "table": name|null, "records": [...]}``:
  with ``fault`` null, ingest ``records`` (if any) then SIGKILL the coordinator at
  once; with a fault point, restart the coordinator with that point armed as
  ``kill``, ingest ``records`` so it has something to commit, and wait for it to
  die there. Either way a fresh coordinator is started afterwards.
- ``{"do": "restart_api", "table": name|null, "records": [...]}``: SIGTERM the API
  while ``records`` (if any) are being ingested, start it again and retry that
  request with the same idempotency keys until it is acknowledged.
  ``"signal": "kill"`` SIGKILLs it instead (default ``"term"``: a bounded graceful stop).
- ``{"do": "kill_server", "table": name|null, "records": [...]}``: SIGKILL the API and
  the coordinator together while ``records`` are in flight, start both, retry.
- ``{"do": "stall_coordinator", "table": name, "records": [...]}``: SIGSTOP the
  coordinator in the middle of committing ``records`` until its lease runs out and a
  second coordinator commits them, then SIGCONT it: its stale publish must be fenced.
- ``{"do": "kill_postgres"}``: SIGKILL the catalog's Postgres and start it again (crash
  recovery) as its supervisor would; DuckMesh must reconnect and lose nothing.
- ``{"do": "damage_file", "table": name}``: truncate one of the table's Parquet
  files (kept aside first); the table may answer ``DATA_FILE_CORRUPT``, no other
  table may fail; then ``duckmesh repair TABLE --from-backup`` puts it back.
- ``{"do": "s3_outage", "how": "refuse"|"hang", "seconds": s, "table": name,
  "before": [...], "records": [...]}``: with S3 object storage, ``before`` is
  ingested and committed (a file the API has not downloaded yet), then the
  store is unreachable for ``s`` seconds (``refuse``: the relay in front of it
  refuses and cuts connections; ``hang``: the server is SIGSTOPped, requests
  hang) while ``records`` are ingested (they must be acknowledged) and the
  tables queried (answers must be right or ``OBJECT_STORE_UNAVAILABLE``; a
  short token wait may also answer ``CONSISTENCY_TIMEOUT``); then every
  acknowledged write must become visible. With local files only the records
  are ingested.
  With ``"backup": false`` no copy is kept: ``duckmesh repair TABLE`` must drop
  exactly that file (the table then holds exactly its other files' rows), and
  ``duckmesh backfill TABLE`` must rebuild it from the bus to the whole model.
- ``{"do": "store_full", "table": name, "records": [...]}``: restart the coordinator
  with ``coordinator.store_put=enospc`` armed (the object store is full: its next
  puts fail with ENOSPC), ingest ``records``; it must back off, publish nothing
  half-done, and commit them once space is back.
- ``{"do": "compact"}``: run compaction for the tenant now (``POST
  /v1/compaction/run``); answers, old and new, must not change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from duckmesh.supervisors.faults import COMMIT_FAULT_POINTS

Action = dict[str, Any]
Record = dict[str, Any]

# ``kill_coordinator`` may die at any point of the commit path.
FAULT_POINTS: tuple[str, ...] = COMMIT_FAULT_POINTS

KINDS: tuple[str, ...] = (
    "create_table",
    "evolve_table",
    "ingest",
    "ingest_wait",
    "ingest_conflict",
    "query_token",
    "query_latest",
    "query_snapshot",
    "kill_coordinator",
    "restart_api",
    "kill_server",
    "stall_coordinator",
    "damage_file",
    "kill_postgres",
    "compact",
    "s3_outage",
    "store_full",
)
SIGNALS = ("term", "kill")
OUTAGES = ("refuse", "hang")
MAX_OUTAGE_S = 10.0

SQL_KINDS = ("rows", "aggregate")


class BadAction(ValueError):
    """An action dict that is not a valid scenario step."""


def create_table(
    table: str, columns: Sequence[Mapping[str, Any]], primary_key: Sequence[str] = ()
) -> Action:
    return {
        "do": "create_table",
        "table": table,
        "columns": [dict(c) for c in columns],
        "primary_key": list(primary_key),
    }


def evolve_table(table: str, name: str, type_: str) -> Action:
    return {"do": "evolve_table", "table": table, "add_columns": [{"name": name, "type": type_}]}


def ingest(table: str, records: Sequence[Record], *, wait: bool = False) -> Action:
    return {"do": "ingest", "table": table, "records": [dict(r) for r in records], "wait": wait}


def ingest_wait(table: str, records: Sequence[Record]) -> Action:
    return {"do": "ingest_wait", "table": table, "records": [dict(r) for r in records]}


def ingest_conflict(table: str, record: Record) -> Action:
    return {"do": "ingest_conflict", "table": table, "record": dict(record)}


def query_token(table: str, sql_kind: str = "rows") -> Action:
    return {"do": "query_token", "table": table, "sql_kind": sql_kind}


def query_latest(table: str) -> Action:
    return {"do": "query_latest", "table": table}


def query_snapshot(pick: int) -> Action:
    return {"do": "query_snapshot", "pick": pick}


def kill_coordinator(
    fault: str | None = None, table: str | None = None, records: Sequence[Record] = ()
) -> Action:
    return {
        "do": "kill_coordinator",
        "fault": fault,
        "table": table,
        "records": [dict(r) for r in records],
    }


def restart_api(
    table: str | None = None, records: Sequence[Record] = (), *, signal: str = "term"
) -> Action:
    action = {"do": "restart_api", "table": table, "records": [dict(r) for r in records]}
    return action | ({"signal": signal} if signal != "term" else {})


def kill_server(table: str | None = None, records: Sequence[Record] = ()) -> Action:
    return {"do": "kill_server", "table": table, "records": [dict(r) for r in records]}


def stall_coordinator(table: str, records: Sequence[Record]) -> Action:
    return {"do": "stall_coordinator", "table": table, "records": [dict(r) for r in records]}


def damage_file(table: str, *, backup: bool = True) -> Action:
    action: Action = {"do": "damage_file", "table": table}
    return action | ({"backup": False} if not backup else {})


def store_full(table: str, records: Sequence[Record]) -> Action:
    return {"do": "store_full", "table": table, "records": [dict(r) for r in records]}


def kill_postgres() -> Action:
    return {"do": "kill_postgres"}


def compact() -> Action:
    return {"do": "compact"}


def s3_outage(
    how: str, seconds: float, table: str, before: Sequence[Record], records: Sequence[Record]
) -> Action:
    return {
        "do": "s3_outage",
        "how": how,
        "seconds": seconds,
        "table": table,
        "before": [dict(r) for r in before],
        "records": [dict(r) for r in records],
    }


def _need(action: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in action:
        raise BadAction(f"{action.get('do')}: missing {key!r} in {action!r}")
    value = action[key]
    if not isinstance(value, kind):
        raise BadAction(f"{action.get('do')}: {key!r} has the wrong type in {action!r}")
    return value


def _records(action: Mapping[str, Any]) -> None:
    for rec in _need(action, "records", list):
        if not isinstance(rec, dict) or not isinstance(rec.get("idempotency_key"), str):
            raise BadAction(f"{action['do']}: bad record {rec!r}")
        if not isinstance(rec.get("payload"), dict):
            raise BadAction(f"{action['do']}: record without a payload object {rec!r}")


def validate(action: Any) -> Action:
    """Check the shape of one action; return it (a dict) or raise :class:`BadAction`."""
    if not isinstance(action, dict):
        raise BadAction(f"an action must be an object, got {action!r}")
    kind = action.get("do")
    if kind not in KINDS:
        raise BadAction(f"unknown action {kind!r}; expected one of {', '.join(KINDS)}")
    if kind in ("create_table", "evolve_table", "ingest", "ingest_wait", "ingest_conflict"):
        _need(action, "table", str)
    if kind in ("query_token", "query_latest", "damage_file", "s3_outage"):
        _need(action, "table", str)
    if kind == "create_table":
        _need(action, "columns", list)
        _need(action, "primary_key", list)
    elif kind == "evolve_table":
        _need(action, "add_columns", list)
    elif kind in ("ingest", "ingest_wait"):
        _records(action)
        if kind == "ingest" and not isinstance(action.get("wait", False), bool):
            raise BadAction(f"ingest: 'wait' must be a boolean in {action!r}")
    elif kind == "ingest_conflict":
        _need(action, "record", dict)
    elif kind == "query_token":
        if action.get("sql_kind", "rows") not in SQL_KINDS:
            raise BadAction(f"query_token: sql_kind must be one of {SQL_KINDS}")
    elif kind == "query_snapshot":
        _need(action, "pick", int)
    elif kind == "s3_outage":
        _records(action)
        _records({"do": kind, "records": _need(action, "before", list)})
        if action.get("how") not in OUTAGES:
            raise BadAction(f"s3_outage: how must be one of {OUTAGES} in {action!r}")
        seconds = _need(action, "seconds", (int, float))
        if not 0 < seconds <= MAX_OUTAGE_S:
            raise BadAction(f"s3_outage: seconds must be in (0, {MAX_OUTAGE_S}] in {action!r}")
    elif kind == "damage_file" and not isinstance(action.get("backup", True), bool):
        raise BadAction(f"damage_file: 'backup' must be a boolean in {action!r}")
    elif kind == "store_full":
        _need(action, "table", str)
        _records(action)
        if not action["records"]:
            raise BadAction("store_full: needs records for the coordinator to put")
    elif kind in ("kill_coordinator", "restart_api", "kill_server", "stall_coordinator"):
        _records(action)
        if kind == "stall_coordinator" and not action["records"]:
            raise BadAction("stall_coordinator: needs records for the coordinator to commit")
        if action.get("signal", "term") not in SIGNALS:
            raise BadAction(f"{kind}: signal must be one of {SIGNALS}")
        if action["records"] and not isinstance(action.get("table"), str):
            raise BadAction(f"{kind}: records need a table in {action!r}")
        if kind == "kill_coordinator":
            fault = action.get("fault")
            if fault is not None and fault not in FAULT_POINTS:
                raise BadAction(f"kill_coordinator: unknown fault point {fault!r}")
            if fault is not None and not action["records"]:
                raise BadAction("kill_coordinator: a fault point needs records to commit")
    return action


def describe(action: Mapping[str, Any]) -> str:
    """One line for the step log."""
    kind = action.get("do")
    table = action.get("table")
    records = action.get("records") or []
    if kind == "create_table":
        key = action.get("primary_key") or []
        return f"create_table {table} ({'key ' + ','.join(key) if key else 'append-only'})"
    if kind == "evolve_table":
        cols = ", ".join(f"{c['name']} {c['type']}" for c in action.get("add_columns", []))
        return f"evolve_table {table} add {cols}"
    if kind in ("ingest", "ingest_wait"):
        wait = kind == "ingest_wait" or bool(action.get("wait"))
        ops: dict[str, int] = {}
        for r in records:
            op = r.get("op", "insert")
            ops[op] = ops.get(op, 0) + 1
        summary = ", ".join(f"{n} {op}" for op, n in sorted(ops.items()))
        return f"{kind} {table}: {len(records)} record(s) ({summary}){' wait' if wait else ''}"
    if kind == "ingest_conflict":
        return f"ingest_conflict {table}: key {action['record'].get('idempotency_key')!r}"
    if kind == "query_token":
        return f"query_token {table} ({action.get('sql_kind', 'rows')})"
    if kind == "query_latest":
        return f"query_latest {table}"
    if kind == "query_snapshot":
        return f"query_snapshot #{action.get('pick')}"
    if kind == "kill_coordinator":
        where = action.get("fault") or "SIGKILL now"
        return f"kill_coordinator ({where}) after {len(records)} record(s) to {table}"
    if kind == "restart_api":
        how = "SIGKILL" if action.get("signal") == "kill" else "SIGTERM"
        return f"restart_api ({how}) with {len(records)} record(s) in flight to {table}"
    if kind == "kill_server":
        return f"kill_server (SIGKILL API and coordinator) with {len(records)} record(s) to {table}"
    if kind == "stall_coordinator":
        return f"stall_coordinator (SIGSTOP past its lease) committing {len(records)} to {table}"
    if kind == "compact":
        return "compact (POST /v1/compaction/run)"
    if kind == "kill_postgres":
        return "kill_postgres (SIGKILL the catalog's Postgres, crash recovery)"
    if kind == "damage_file" and action.get("backup") is False:
        return f"damage_file {table} (truncate a Parquet file, no copy: repair drops it, backfill)"
    if kind == "damage_file":
        return f"damage_file {table} (truncate a Parquet file, then duckmesh repair)"
    if kind == "s3_outage":
        return (
            f"s3_outage ({action.get('how')}, {action.get('seconds')}s) after"
            f" {len(action.get('before') or [])} record(s), while {len(records)} go to {table}"
        )
    if kind == "store_full":
        return f"store_full (ENOSPC on the object store) committing {len(records)} to {table}"
    return repr(dict(action))
