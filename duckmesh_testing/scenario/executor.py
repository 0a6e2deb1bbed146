"""Run scenario actions against a real DuckMesh and check its guarantees after every step.

The :class:`Executor` keeps a model of what the system must hold:

- per table, the acknowledged logical writes with their tokens (append-only
  tables keep every write; keyed tables keep the newest op per key, deletes
  remove), so the expected answer at any watermark ``W`` is the model
  applied to the writes with token ``<= W``;
- every acknowledged idempotency key with its token and record;
- answers already seen, by (snapshot id, SQL);
- the highest watermark any answer on the latest snapshot showed (kept on the
  :class:`System`, since watermarks are per tenant).

After every step it checks the invariants (each failure raises
:class:`InvariantViolation` naming the guarantee):

(a) visibility: a mode-A query with ``min_visibility_token`` = the last
    acknowledged token, for every table, answers from a snapshot whose
    watermark is at least that token, with exactly the model's rows (a
    generous ``consistency_timeout_ms`` so restarts cannot cause a false
    failure). Every other answer (mode B, mode C) equals the model at its own
    watermark;
(b) idempotency: a retried key yields the original token and no second row;
    a reused key with another payload is refused; new records get the next
    tokens with no gap;
(c) snapshot reproducibility: remembered (snapshot id, SQL) pairs answer the
    same rows when asked again, past the API's result cache (some after every
    step, all at the end after one more compaction, expiry and GC pass);
(d) watermarks only rise: across answers on the latest snapshot and across
    ``GET /v1/snapshots`` (newer snapshots never have lower watermarks);
(e) at the end, ``duckmesh replay verify`` exits 0 (:meth:`Executor.verify_replay`).

Every executed action is appended to :attr:`Executor.actions`, so a failing
run can be saved (:meth:`Executor.save`) and rerun (:func:`replay`).
"""

from __future__ import annotations

import collections
import copy
import itertools
import json
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import pyarrow.parquet as pq

from duckmesh.storage.layout import TOKEN_COLUMN
from duckmesh_testing.scenario import actions as A
from duckmesh_testing.scenario.system import STORAGES, HarnessError, System

CONSISTENCY_TIMEOUT_MS = 30_000
ROW_LIMIT = 1_000_000
REMEMBER_MAX = 40
RECHECK_PER_STEP = 2
FAULT_DEATH_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 30.0
LOAD_REPLAY_S = 30.0  # a replay with background load checks it this long after the steps
HISTORY_QUERIES = 6  # per step: see Executor._check_history
STALL_DELAY_S = 3.0  # > the scenario lease (1.5 s): the stalled holder's lease runs out
OUTAGE_ROUNDS = 3  # s3_outage: ingest and query this many times while the store is away
OUTAGE_WAIT_MS = 300  # a token wait during an outage (commits cannot publish meanwhile)
# What a query may answer while the object store is unreachable, besides a
# right answer (docs/API.md); anything else is a violation.
OUTAGE_ERRORS = ("OBJECT_STORE_UNAVAILABLE",)
STORE_FULL_PUTS = 2  # object-store-full: this many puts fail with ENOSPC, then space is back
CLI_ATTEMPTS = 5  # repair and backfill lose a race with compaction now and then: run again

__all__ = ["Executor", "InvariantViolation", "Stats", "load_recording", "replay"]


class InvariantViolation(Exception):
    """A DuckMesh guarantee did not hold; ``guarantee`` names which one."""

    def __init__(self, guarantee: str, detail: str) -> None:
        super().__init__(detail)
        self.guarantee = guarantee
        self.detail = detail
        self.step: int | None = None
        self.action: Mapping[str, Any] | None = None

    def __str__(self) -> str:
        where = ""
        if self.step is not None and self.action is not None:
            where = f" [step {self.step}: {A.describe(self.action)}]"
        return f"{self.guarantee} violated: {self.detail}{where}"


@attrs.define
class Stats:
    """Counts over a run (one or many scenarios)."""

    scenarios: int = 0
    steps: int = 0
    acks: int = 0  # acknowledged records (new and duplicate)
    duplicates: int = 0
    kills: int = 0  # every fault injected: see ``kinds``
    fault_kills: int = 0
    api_restarts: int = 0
    kinds: collections.Counter[str] = attrs.field(factory=collections.Counter)
    max_write_to_visible_s: float = 0.0  # sending a write to an answer showing it
    compactions: int = 0
    token_gated_queries: int = 0
    mode_b_waits: int = 0
    snapshot_rechecks: int = 0
    violations: int = 0
    store_unavailable: int = 0  # queries answered OBJECT_STORE_UNAVAILABLE in an outage
    snapshots_expired: int = 0  # remembered snapshots found expired, as docs/API.md allows

    def summary(self, seed: int | None = None) -> str:
        tail = f" (seed {seed})" if seed is not None else ""
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.kinds.items()))
        return (
            f"{self.steps} steps, {self.acks} acks, {self.kills} kills [{kinds}], "
            f"{self.token_gated_queries} token-gated queries, "
            f"{self.duplicates} duplicates retried, "
            f"max write-to-visible {self.max_write_to_visible_s:.2f}s, "
            f"{self.violations} violations{tail}"
        )

    def killed(self, kind: str) -> None:
        self.kills += 1
        self.kinds[kind] += 1

    def details(self) -> str:
        return (
            f"{self.scenarios} scenarios, {self.duplicates} duplicate acks, "
            f"{self.fault_kills} kills at fault points, {self.api_restarts} API restarts, "
            f"{self.compactions} compactions, "
            f"{self.mode_b_waits} mode-B waits, {self.snapshot_rechecks} snapshot re-checks"
            f" ({self.snapshots_expired} found expired)"
        ) + (
            f", {self.store_unavailable} queries answered OBJECT_STORE_UNAVAILABLE"
            if self.store_unavailable
            else ""
        )


@attrs.define
class Write:
    token: int
    op: str
    payload: dict[str, Any]


@attrs.define
class TableModel:
    name: str
    columns: list[str]
    key: tuple[str, ...]
    writes: list[Write] = attrs.field(factory=list)
    after_snapshot: int = 0  # the latest snapshot when it was created: later ones hold it

    def sql(self, kind: str) -> str:
        if kind == "aggregate":
            return (
                "select count(*) as c, cast(sum(n) as bigint) as s, count(v) as cv"
                f" from {self.name}"
            )
        return f"select {', '.join(self.columns)} from {self.name} order by all"

    def rows_at(self, watermark: int) -> list[list[Any]]:
        visible = sorted((w for w in self.writes if w.token <= watermark), key=lambda w: w.token)
        if not self.key:
            return [self._row(w.payload) for w in visible]
        state: dict[tuple[Any, ...], list[Any]] = {}
        for w in visible:
            k = tuple(w.payload.get(c) for c in self.key)
            if w.op == "delete":
                state.pop(k, None)
            else:
                state[k] = self._row(w.payload)
        return list(state.values())

    def expected(self, kind: str, watermark: int) -> list[list[Any]]:
        rows = self.rows_at(watermark)
        if kind == "aggregate":
            ni = self.columns.index("n")
            vi = self.columns.index("v")
            ns = [r[ni] for r in rows if r[ni] is not None]
            return [[len(rows), sum(ns) if ns else None, sum(1 for r in rows if r[vi] is not None)]]
        return rows

    def _row(self, payload: Mapping[str, Any]) -> list[Any]:
        return [payload.get(c) for c in self.columns]

    def rows_with(self, tokens: set[int]) -> list[list[Any]]:
        """The rows of exactly the writes with these tokens (the rows a set of
        data files holds), keyed tables resolved as a query resolves them."""
        kept = TableModel(
            self.name, self.columns, self.key, [w for w in self.writes if w.token in tokens]
        )
        return kept.rows_at(max(tokens, default=0))


@attrs.define
class Remembered:
    table: str
    snapshot_id: int
    sql: str
    rows: list[list[Any]]
    watermark: int
    seen_at: float = attrs.field(factory=time.time)  # its snapshot was created no later
    gone: bool = False  # expired as allowed, or lists a file dropped for good: not asked again
    rechecks: int = 0  # times asked again (each with a row limit of its own)


def _canon(rows: Sequence[Sequence[Any]]) -> collections.Counter[str]:
    return collections.Counter(json.dumps(list(r), ensure_ascii=False) for r in rows)


def _error(r: httpx.Response) -> tuple[str, dict[str, Any]]:
    try:
        body = r.json()
    except ValueError:
        return "", {}
    if not isinstance(body, dict):
        return "", {}
    return str(body.get("error_code", "")), dict(body.get("context") or {})


class Executor:
    """Runs actions against a :class:`System`, keeping the model and checking invariants."""

    def __init__(
        self,
        system: System,
        *,
        stats: Stats | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.system = system
        self.stats = stats if stats is not None else Stats()
        self.echo = echo
        self.actions: list[A.Action] = []
        self.tables: dict[str, TableModel] = {}
        self.acked: dict[tuple[str, str], tuple[int, A.Record]] = {}
        self.last_token = 0
        self.remembered: list[Remembered] = []
        self._recheck_at = 0
        self._verified_snapshot = 0  # snapshots up to this one were checked (_check_history)
        self._unseen: list[tuple[int, float]] = []  # (token, sent at) not yet seen visible
        self._pinned: int | None = None  # the first remembered snapshot, pinned for the scenario
        self._lost_files: set[str] = set()  # keys dropped by a repair without a copy
        self.stats.scenarios += 1

    # -- driving -----------------------------------------------------------

    def run(self, action: A.Action) -> None:
        """Execute one action, record it, then check every invariant."""
        A.validate(action)
        self.actions.append(copy.deepcopy(action))
        step = len(self.actions)
        if self.echo is not None:
            self.echo(f"step {step}: {A.describe(action)}")
        self.stats.steps += 1
        try:
            getattr(self, "_do_" + action["do"])(action)
            self.check_invariants()
        except InvariantViolation as exc:
            exc.step, exc.action = step, action
            self.stats.violations += 1
            raise

    def finish(self) -> None:
        """End of a scenario: housekeeping once more, now (a compaction, then
        expiry and GC), then every remembered answer once more, so the files
        of the remembered snapshots are compacted out and collectable however
        the steps were timed, and a recording replays to the same end."""
        try:
            self._maintain("compaction")
            self._maintain("retention")
            for rem in list(self.remembered):
                self._requery(rem)
        except InvariantViolation:
            self.stats.violations += 1
            raise
        self._unpin()

    def verify_replay(self) -> None:
        """Invariant (e): the projections equal a replay of the event log."""
        code, output = self.system.replay_verify()
        if code != 0:
            self.stats.violations += 1
            raise InvariantViolation(
                "replay", f"duckmesh replay verify exited {code}:\n{output[-3000:]}"
            )

    def recording(self, seed: int | None = None, **extra: Any) -> dict[str, Any]:
        load = self.system.load
        return {
            "seed": seed,
            "system_env": dict(self.system.server_env),
            **({"storage": self.system.storage} if self.system.storage != "local" else {}),
            **({"load": load.settings()} if load is not None else {}),
            **extra,
            "actions": copy.deepcopy(self.actions),
        }

    def save(self, path: Path, seed: int | None = None, **extra: Any) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.recording(seed, **extra), indent=1, ensure_ascii=False))
        return path

    # -- invariants --------------------------------------------------------

    def check_invariants(self) -> None:
        self._check_alive()
        for table in self.tables.values():
            self._token_query(table, "rows")
        for _ in range(min(RECHECK_PER_STEP, len(self.remembered))):
            rem = self.remembered[self._recheck_at % len(self.remembered)]
            self._recheck_at += 1
            self._requery(rem)
        self._check_snapshot_list()
        if self.system.load is not None:
            self._check_load()

    def _check_load(self) -> None:
        load = self.system.load

        def seen(watermark: int) -> None:
            self._latest_watermark(watermark, "a query on the background load")

        found = load.check(self._call, seen)
        self.stats.token_gated_queries += 2
        if found:
            guarantee, detail = found[0]
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise InvariantViolation(guarantee, f"background load: {detail}{more}")

    def _check_alive(self) -> None:
        for proc in (self.system.api, self.system.coordinator, self.system.maintenance):
            if proc is not None and not proc.alive():
                raise InvariantViolation(
                    "liveness",
                    f"the {proc.role} process exited unexpectedly with code {proc.exit_code()}"
                    f" (log {proc.log_path}):\n{proc.log_tail()}",
                )

    def _latest_watermark(self, watermark: int, what: str) -> None:
        if watermark < self.system.max_watermark:
            raise InvariantViolation(
                "watermarks only rise",
                f"{what} showed watermark {watermark} after {self.system.max_watermark} was seen",
            )
        self.system.max_watermark = watermark

    def _check_snapshot_list(self) -> None:
        r = self._call("GET", "/v1/snapshots", params={"limit": 20})
        self._expect(r, 200, "GET /v1/snapshots")
        snaps = r.json()["snapshots"]
        for newer, older in itertools.pairwise(snaps):
            if newer["snapshot_id"] <= older["snapshot_id"] or (
                newer["max_visibility_token"] < older["max_visibility_token"]
            ):
                raise InvariantViolation(
                    "watermarks only rise",
                    f"snapshot {newer['snapshot_id']} has watermark"
                    f" {newer['max_visibility_token']}, older snapshot"
                    f" {older['snapshot_id']} has {older['max_visibility_token']}",
                )
        if snaps:
            self._latest_watermark(snaps[0]["max_visibility_token"], "GET /v1/snapshots")
        self._check_history(snaps)

    def _check_history(self, snaps: Sequence[Mapping[str, Any]]) -> None:
        """Every snapshot published since the last step, not only the latest,
        must hold exactly the acknowledged writes at or below its watermark
        (a commit published in parts would show a watermark without all of
        its rows). At most ``HISTORY_QUERIES`` queries a step, oldest first."""
        budget = HISTORY_QUERIES
        for snap in sorted(snaps, key=lambda s: int(s["snapshot_id"])):
            sid = int(snap["snapshot_id"])
            if sid <= self._verified_snapshot:
                continue
            tables = [t for t in self.tables.values() if t.after_snapshot < sid]
            load = self.system.load
            if len(tables) + (load is not None) > budget:
                return
            if load is not None and load.after_snapshot < sid:
                found = load.check_snapshot(self._call, sid, int(snap["max_visibility_token"]))
                if found:
                    raise InvariantViolation(found[0][0], f"background load: {found[0][1]}")
                budget -= 1
            for table in tables:
                sql = table.sql("aggregate")
                r = self._call(
                    "POST", "/v1/query", json={"sql": sql, "snapshot_id": sid, "row_limit": 10}
                )
                if _error(r)[0] == "SNAPSHOT_NOT_FOUND":
                    break  # expired meanwhile: nothing to hold
                self._expect(r, 200, f"query on snapshot {sid}")
                self._check_rows(table, "aggregate", r.json(), f"snapshot {sid} (history)")
            budget -= len(tables)
            self._verified_snapshot = sid

    def _check_rows(
        self, table: TableModel, kind: str, answer: Mapping[str, Any], what: str
    ) -> None:
        watermark = int(answer["max_visibility_token"])
        expected = table.expected(kind, watermark)
        got = answer["rows"]
        if kind == "aggregate":
            if got != expected:
                raise InvariantViolation(
                    "visibility",
                    f"{what} on {table.name} at snapshot {answer['snapshot_id']} (watermark"
                    f" {watermark}) answered {got}; the acknowledged writes give {expected}",
                )
            return
        want, have = _canon(expected), _canon(got)
        if want == have:
            return
        missing = list((want - have).elements())
        extra = list((have - want).elements())
        if not missing and table.key == ():
            guarantee = "idempotency (no duplicates)"
        elif missing:
            guarantee = "visibility"
        else:
            guarantee = "snapshot consistency"
        raise InvariantViolation(
            guarantee,
            f"{what} on {table.name} at snapshot {answer['snapshot_id']} (watermark"
            f" {watermark}, last acknowledged token {self.last_token}): "
            f"{len(missing)} acknowledged row(s) missing {missing[:5]}, "
            f"{len(extra)} unexpected row(s) {extra[:5]}",
        )

    def _remember(self, table: TableModel, sql: str, answer: Mapping[str, Any]) -> None:
        sid = answer.get("snapshot_id")
        if sid is None:
            return
        for rem in self.remembered:
            if rem.snapshot_id == sid and rem.sql == sql:
                self._same_answer(rem, answer)
                return
        rem = Remembered(table.name, int(sid), sql, answer["rows"], answer["max_visibility_token"])
        if self._pinned is None and table.rows_at(rem.watermark):
            # The first answer with rows (so its snapshot lists files GC could
            # take) is pinned and kept first, for the whole scenario.
            if self._pin(rem.snapshot_id):
                self.remembered.insert(0, rem)
            return  # (not pinned: it had expired already, as allowed)
        self.remembered.append(rem)
        if len(self.remembered) > REMEMBER_MAX:
            del self.remembered[1]  # keep the first (once pinned, the pinned) answer

    def _same_answer(self, rem: Remembered, answer: Mapping[str, Any]) -> None:
        if (
            answer["rows"] != rem.rows
            or answer["snapshot_id"] != rem.snapshot_id
            or answer["max_visibility_token"] != rem.watermark
        ):
            raise InvariantViolation(
                "snapshot reproducibility",
                f"snapshot {rem.snapshot_id} answered {rem.sql!r} with {answer['rows'][:5]}"
                f" (watermark {answer['max_visibility_token']}); earlier it answered"
                f" {rem.rows[:5]} (watermark {rem.watermark})",
            )

    def _requery(self, rem: Remembered) -> None:
        if rem.gone:
            return
        # A row limit of its own each time: the API's result cache (keyed by
        # it) cannot answer, so the snapshot's files are read again.
        rem.rechecks += 1
        r = self._call(
            "POST",
            "/v1/query",
            json={
                "sql": rem.sql,
                "snapshot_id": rem.snapshot_id,
                "row_limit": ROW_LIMIT - rem.rechecks,
            },
        )
        self.stats.snapshot_rechecks += 1
        code, _ = _error(r)
        if code == "DATA_FILE_CORRUPT" and self._lists_lost_file(rem):
            rem.gone = True  # docs/OPERATIONS.md: older snapshots listing a dropped file fail
            return
        if code == "DATA_FILE_CORRUPT":
            if self.system.snapshot_live(rem.snapshot_id):
                # Unexpired now, so it was when the file was read: GC must keep it.
                raise InvariantViolation(
                    "snapshot reproducibility",
                    f"snapshot {rem.snapshot_id} answered {rem.sql!r} before and is still"
                    f" retained, but a file it lists cannot be read any more: {r.text}",
                )
            code = "SNAPSHOT_NOT_FOUND"  # it expired (files collected) as the query ran
        if code == "SNAPSHOT_NOT_FOUND":
            refused = self.system.expiry_refused(rem.snapshot_id, rem.seen_at)
            if refused is not None:
                raise InvariantViolation(
                    "snapshot reproducibility",
                    f"snapshot {rem.snapshot_id} is gone although {refused}: {r.text}",
                )
            rem.gone = True  # expired under the documented rules
            self.stats.snapshots_expired += 1
            return
        self._expect(r, 200, f"query on snapshot {rem.snapshot_id}")
        self._same_answer(rem, r.json())

    def _token_query(self, table: TableModel, kind: str) -> None:
        sql = table.sql(kind)
        token = self.last_token
        r = self._call(
            "POST",
            "/v1/query",
            json={
                "sql": sql,
                "min_visibility_token": token,
                "consistency_timeout_ms": CONSISTENCY_TIMEOUT_MS,
                "row_limit": ROW_LIMIT,
            },
        )
        self.stats.token_gated_queries += 1
        code, ctx = _error(r)
        if code == "CONSISTENCY_TIMEOUT":
            raise InvariantViolation(
                "visibility",
                f"acknowledged writes up to token {token} were not visible within"
                f" {CONSISTENCY_TIMEOUT_MS} ms (current watermark"
                f" {ctx.get('current_watermark')})",
            )
        self._expect(r, 200, f"mode-A query on {table.name}")
        answer = r.json()
        watermark = int(answer["max_visibility_token"])
        if watermark < token:
            raise InvariantViolation(
                "visibility",
                f"a query on {table.name} with min_visibility_token={token} was answered from"
                f" snapshot {answer['snapshot_id']} whose watermark is {watermark} < {token}",
            )
        self._latest_watermark(watermark, f"mode-A query on {table.name}")
        self._check_rows(table, kind, answer, f"mode-A query (token {token})")
        self._seen_visible(watermark)
        self._remember(table, sql, answer)

    def _seen_visible(self, watermark: int) -> None:
        now = time.monotonic()
        for token, sent in self._unseen:
            if token <= watermark:
                late = now - sent
                self.stats.max_write_to_visible_s = max(self.stats.max_write_to_visible_s, late)
        self._unseen = [(t, s) for t, s in self._unseen if t > watermark]

    # -- HTTP --------------------------------------------------------------

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self.system.http.request(method, path, **kw)
        except httpx.TransportError as exc:
            api = self.system.api
            state = "" if api is None or api.alive() else f" (exited {api.exit_code()})"
            raise InvariantViolation(
                "liveness", f"the API{state} did not answer {method} {path}: {exc!r}"
            ) from exc

    def _expect(self, r: httpx.Response, status: int, what: str) -> None:
        if r.status_code != status and _error(r)[0] == "DATA_FILE_CORRUPT":
            raise InvariantViolation(
                "crash safety (files durable before they are published)",
                f"{what} answered HTTP {r.status_code}: {r.text}",
            )
        if r.status_code != status:
            raise InvariantViolation(
                "protocol", f"{what} answered HTTP {r.status_code} (expected {status}): {r.text}"
            )

    # -- model helpers -----------------------------------------------------

    def _table(self, name: str) -> TableModel:
        table = self.tables.get(name)
        if table is None:
            raise HarnessError(f"the scenario uses table {name!r} before creating it")
        return table

    def _split(
        self, table: TableModel, records: Sequence[A.Record]
    ) -> tuple[list[A.Record], list[A.Record]]:
        """(fresh records, records whose key was acknowledged or repeats in this request)."""
        fresh: list[A.Record] = []
        known: list[A.Record] = []
        seen: dict[str, A.Record] = {}
        for rec in records:
            key = rec["idempotency_key"]
            prior = self.acked.get((table.name, key))
            earlier = seen.get(key)
            if prior is not None or earlier is not None:
                original = prior[1] if prior is not None else earlier
                if original != rec:
                    raise HarnessError(
                        f"record {key!r} reuses a key with another payload; use ingest_conflict"
                    )
                known.append(rec)
            else:
                fresh.append(rec)
                seen[key] = rec
        return fresh, known

    def _receipt(
        self,
        table: TableModel,
        records: Sequence[A.Record],
        answer: Mapping[str, Any],
        *,
        waited: bool,
        lost_attempt: bool = False,
    ) -> None:
        """Check an ingest receipt and add its new writes to the model."""
        fresh, known = self._split(table, records)
        accepted, duplicates = answer["accepted_count"], answer["duplicate_count"]
        top = int(answer["max_visibility_token"])
        if (accepted, duplicates) != (len(fresh), len(known)) and not (
            # After a lost attempt the whole request may have been committed already.
            lost_attempt and accepted == 0 and duplicates == len(records)
        ):
            raise InvariantViolation(
                "idempotency",
                f"ingest of {len(records)} record(s) into {table.name}, {len(known)} of them"
                f" retries: expected {len(fresh)} accepted + {len(known)} duplicate(s), the"
                f" receipt says {accepted} + {duplicates}",
            )
        status = "visible" if waited else ("partial_duplicate" if duplicates else "accepted")
        if answer.get("status") != status:
            raise InvariantViolation(
                "protocol", f"ingest receipt status {answer.get('status')!r}, expected {status!r}"
            )
        issued = self.system.issued_token
        tokens: dict[str, int] = {}
        if fresh:
            first = top - len(fresh) + 1
            self.system.ledger.append((first, top))
            # Under background load other writers take tokens in between: then
            # only the order is checked here, the gaps by the ledger at the end.
            concurrent = self.system.load is not None
            if issued is not None and (first <= issued if concurrent else first != issued + 1):
                raise InvariantViolation(
                    "tokens are gapless and commit-ordered",
                    f"{len(fresh)} new record(s) got tokens {first}..{top}, but the last token"
                    f" issued to the tenant was {issued}",
                )
            self.system.issued_token = max(top, issued or 0)
            for offset, rec in enumerate(fresh):
                tokens[rec["idempotency_key"]] = first + offset
        for rec in known:
            key = rec["idempotency_key"]
            if key not in tokens:
                tokens[key] = self.acked[(table.name, key)][0]
        if not fresh:
            original = max(tokens.values())
            if top != original:
                raise InvariantViolation(
                    "idempotency",
                    f"a retry of {len(records)} record(s) into {table.name} returned token {top};"
                    f" the original writes have tokens up to {original}",
                )
        for rec in fresh:
            token = tokens[rec["idempotency_key"]]
            self.acked[(table.name, rec["idempotency_key"])] = (token, copy.deepcopy(rec))
            table.writes.append(
                Write(token, rec.get("op", "insert"), copy.deepcopy(rec["payload"]))
            )
        self.last_token = max(self.last_token, top)
        self.stats.acks += len(records)
        self.stats.duplicates += duplicates

    def _ingest(self, table: TableModel, records: Sequence[A.Record], *, wait: bool) -> None:
        body: dict[str, Any] = {"records": list(records)}
        sent = time.monotonic()
        if wait:
            body.update(wait_for_visibility=True, visibility_timeout_ms=CONSISTENCY_TIMEOUT_MS)
        r = self._call("POST", f"/v1/ingest/{table.name}", json=body)
        code, ctx = _error(r)
        if wait and code == "CONSISTENCY_TIMEOUT":
            raise InvariantViolation(
                "visibility",
                f"mode B: an ingest into {table.name} was not visible within"
                f" {CONSISTENCY_TIMEOUT_MS} ms (watermark {ctx.get('current_watermark')})",
            )
        self._expect(r, 200, f"ingest into {table.name}")
        answer = r.json()
        self._receipt(table, records, answer, waited=wait)
        self._unseen.append((int(answer["max_visibility_token"]), sent))
        if wait:
            self._mode_b(table, answer)

    def _mode_b(self, table: TableModel, receipt: Mapping[str, Any]) -> None:
        receipt_at = time.time()
        self.stats.mode_b_waits += 1
        top = int(receipt["max_visibility_token"])
        sid = receipt.get("visible_snapshot_id")
        if sid is None:
            raise InvariantViolation(
                "visibility", "mode B: the receipt says visible but names no snapshot"
            )
        sql = table.sql("rows")
        r = self._call(
            "POST", "/v1/query", json={"sql": sql, "snapshot_id": sid, "row_limit": ROW_LIMIT}
        )
        if _error(r)[0] == "SNAPSHOT_NOT_FOUND" and self._expiry_allowed(sid, receipt_at):
            return
        self._expect(r, 200, f"query on snapshot {sid}")
        answer = r.json()
        if answer["max_visibility_token"] < top:
            raise InvariantViolation(
                "visibility",
                f"mode B: the ingest into {table.name} (token {top}) was answered visible in"
                f" snapshot {sid}, whose watermark is {answer['max_visibility_token']}",
            )
        self._check_rows(table, "rows", answer, f"mode B (snapshot {sid} of the receipt)")
        self._remember(table, sql, answer)

    # -- actions -----------------------------------------------------------

    def _do_create_table(self, action: A.Action) -> None:
        body = {
            "name": action["table"],
            "columns": action["columns"],
            "primary_key": action["primary_key"],
        }
        r = self._call("POST", "/v1/tables", json=body)
        self._expect(r, 201, f"create table {action['table']}")
        snaps = self._call("GET", "/v1/snapshots", params={"limit": 1}).json()["snapshots"]
        self.tables[action["table"]] = TableModel(
            action["table"],
            [c["name"] for c in action["columns"]],
            tuple(action["primary_key"]),
            after_snapshot=snaps[0]["snapshot_id"] if snaps else 0,
        )

    def _do_evolve_table(self, action: A.Action) -> None:
        table = self._table(action["table"])
        r = self._call(
            "PATCH", f"/v1/tables/{table.name}", json={"add_columns": action["add_columns"]}
        )
        self._expect(r, 200, f"evolve table {table.name}")
        table.columns.extend(c["name"] for c in action["add_columns"])

    def _do_ingest(self, action: A.Action) -> None:
        self._ingest(self._table(action["table"]), action["records"], wait=bool(action.get("wait")))

    def _do_ingest_wait(self, action: A.Action) -> None:
        self._ingest(self._table(action["table"]), action["records"], wait=True)

    def _do_ingest_conflict(self, action: A.Action) -> None:
        table = self._table(action["table"])
        rec = action["record"]
        prior = self.acked.get((table.name, rec["idempotency_key"]))
        if prior is None or prior[1] == rec:
            raise HarnessError("ingest_conflict needs an acknowledged key and another payload")
        r = self._call("POST", f"/v1/ingest/{table.name}", json={"records": [rec]})
        code, ctx = _error(r)
        if r.status_code == 200:
            raise InvariantViolation(
                "idempotency",
                f"key {rec['idempotency_key']!r} reused with another payload was accepted"
                f" ({r.text}); it must be refused with IDEMPOTENCY_CONFLICT",
            )
        if r.status_code != 409 or code != "IDEMPOTENCY_CONFLICT":
            raise InvariantViolation(
                "protocol", f"a conflicting retry answered HTTP {r.status_code}: {r.text}"
            )
        if ctx.get("original_token") != prior[0]:
            raise InvariantViolation(
                "idempotency",
                f"IDEMPOTENCY_CONFLICT names original token {ctx.get('original_token')},"
                f" the write was acknowledged with token {prior[0]}",
            )

    def _do_query_token(self, action: A.Action) -> None:
        self._token_query(self._table(action["table"]), action.get("sql_kind", "rows"))

    def _do_query_latest(self, action: A.Action) -> None:
        table = self._table(action["table"])
        sql = table.sql("rows")
        r = self._call("POST", "/v1/query", json={"sql": sql, "row_limit": ROW_LIMIT})
        self._expect(r, 200, f"mode-C query on {table.name}")
        answer = r.json()
        self._latest_watermark(int(answer["max_visibility_token"]), "a mode-C query")
        self._check_rows(table, "rows", answer, "mode-C query")
        self._remember(table, sql, answer)

    def _do_query_snapshot(self, action: A.Action) -> None:
        if self.remembered:
            self._requery(self.remembered[action["pick"] % len(self.remembered)])

    def _rearm_coordinator(self, faults: str) -> None:
        """Stop the coordinator (SIGTERM, bounded) and start it again with the
        fault points ``faults`` armed (``DUCKMESH_FAULTS`` syntax)."""
        coordinator = self.system.coordinator
        assert coordinator is not None
        if coordinator.terminate(SHUTDOWN_TIMEOUT_S) is None:
            raise InvariantViolation(
                "graceful shutdown",
                f"the coordinator did not stop within {SHUTDOWN_TIMEOUT_S}s of SIGTERM",
            )
        self.system.start_coordinator({"DUCKMESH_ENABLE_FAULTS": "1", "DUCKMESH_FAULTS": faults})

    def _do_kill_coordinator(self, action: A.Action) -> None:
        coordinator = self.system.coordinator
        assert coordinator is not None
        records = action["records"]
        fault = action.get("fault")
        if fault is None:
            if records:
                self._ingest(self._table(action["table"]), records, wait=False)
            coordinator.kill()  # a random moment: a commit may be in flight
        else:
            table = self._table(action["table"])
            self._rearm_coordinator(f"{fault}=kill")
            self._ingest(table, records, wait=False)
            code = coordinator.wait_exit(FAULT_DEATH_TIMEOUT_S)
            if code is None:
                coordinator.kill()
                raise InvariantViolation(
                    "crash safety",
                    f"a coordinator armed to die at {fault} never got there within"
                    f" {FAULT_DEATH_TIMEOUT_S}s although records were waiting to be committed",
                )
            if code != -9:
                raise InvariantViolation(
                    "crash safety",
                    f"a coordinator armed to die at {fault} exited with {code}, not SIGKILL:\n"
                    f"{coordinator.log_tail()}",
                )
            self.stats.fault_kills += 1
        self.stats.killed("coordinator-fault" if fault else "coordinator-sigkill")
        self.system.start_coordinator()

    def _do_compact(self, action: A.Action) -> None:
        self._maintain("compaction")

    def _maintain(self, job: str) -> None:
        """``POST /v1/{job}/run`` (``compaction`` or ``retention``: expiry and
        GC) for the tenant in the API, racing the maintenance process's
        passes; a publish that went first makes it run again."""
        for _ in range(5):
            r = self._call("POST", f"/v1/{job}/run")
            if _error(r)[0] != "CONCURRENCY_CONFLICT":
                break
        self._expect(r, 200, f"POST /v1/{job}/run")
        if r.json().get("status") != "completed":
            raise InvariantViolation("protocol", f"{job} answered {r.text}")
        if job == "compaction":
            self.stats.compactions += 1

    def _do_kill_postgres(self, action: A.Action) -> None:
        if not self.system.owns_postgres:
            return  # DUCKMESH_TEST_DSN: a Postgres the harness must not kill
        self.system.kill_postgres()
        self.stats.killed("postgres-sigkill")

    def _do_damage_file(self, action: A.Action) -> None:
        """Truncate one of the table's data files: only that table may fail
        (``DATA_FILE_CORRUPT``); ``duckmesh repair`` from the copy makes it whole.
        With ``"backup": false`` no copy is kept (:meth:`_damage_without_backup`)."""
        table = self._table(action["table"])
        if self.system.s3 is not None:
            return  # the files are objects in a bucket: not covered (docs/CONSISTENCY.md)
        r = self._call("GET", "/v1/snapshots", params={"limit": 1})
        self._expect(r, 200, "GET /v1/snapshots")
        sid = r.json()["snapshots"][0]["snapshot_id"]
        r = self._call("GET", f"/v1/snapshots/{sid}")
        self._expect(r, 200, f"GET /v1/snapshots/{sid}")
        files = [
            f["path"] for t in r.json()["tables"] if t["name"] == table.name for f in t["files"]
        ]
        if not files:
            return  # nothing written yet: nothing to damage
        if action.get("backup") is False:
            spare = sorted(set(files) - self._pinned_files())
            if spare:  # the pinned snapshot must keep answering: never drop its files
                self._damage_without_backup(table, spare[len(self.actions) % len(spare)], files)
                return
        key = files[len(self.actions) % len(files)]
        path = self.system.object_path(key)
        backup = self.system.workdir / "backup"
        (backup / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, backup / key)
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size // 2)
        self.stats.killed("data-file-truncated")
        self._only_damaged_table_fails(table)
        code, output = self.system.repair(table.name, backup)
        if code != 0:
            raise InvariantViolation(
                "integrity", f"duckmesh repair {table.name} from the copy exited {code}: {output}"
            )
        if path.exists() and path.stat().st_size != size:
            # Compaction took the file out of the latest snapshot before it was
            # damaged, so repair (which checks the latest) left it: older
            # snapshots still list it. The runbook's step 1: copy it back.
            shutil.copy2(backup / key, path)

    def _do_s3_outage(self, action: A.Action) -> None:
        """The object store is unreachable for ``seconds``: writes must still be
        acknowledged (the bus is Postgres) and queries answer right or with a
        documented error; afterwards the step's checks require every
        acknowledged write visible (the commits retried with backoff)."""
        table = self._table(action["table"])
        records = action["records"]
        if action["before"]:
            self._ingest(table, action["before"], wait=False)
        s3 = self.system.s3
        if s3 is None:  # local files: nothing to take away
            if records:
                self._ingest(table, records, wait=False)
            return
        if action["before"]:
            # Committed, and read by nobody yet: the API's cache does not have it.
            top = self.last_token
            if not _poll(
                lambda: self.system.visible_watermark() >= top, CONSISTENCY_TIMEOUT_MS / 1000
            ):
                raise InvariantViolation(
                    "visibility",
                    f"token {top} was not committed within {CONSISTENCY_TIMEOUT_MS} ms",
                )
        cut, restore = s3.pause, s3.resume
        if action["how"] == "refuse":
            cut, restore = s3.relay.down, s3.relay.up
        restored = threading.Event()
        once = threading.Lock()

        def end() -> None:
            with once:
                if not restored.is_set():
                    restore()
                    restored.set()

        def refusing() -> bool:
            return action["how"] == "refuse" and not restored.is_set()

        # The outage ends on time even while a call of ours hangs in it.
        timer = threading.Timer(float(action["seconds"]), end)
        cut()
        timer.start()
        try:
            # Writes over the first half of the outage, then queries, which
            # may hang in the store client's retries past its end.
            step = -(-len(records) // OUTAGE_ROUNDS) if records else 0
            pause = float(action["seconds"]) / OUTAGE_ROUNDS / 2
            for round_no in range(OUTAGE_ROUNDS):
                chunk = records[round_no * step : (round_no + 1) * step]
                if chunk:
                    self._ingest(table, chunk, wait=False)
                self._outage_token_query(table)
                if round_no == 0:
                    self._outage_ready(refusing)
                restored.wait(pause)
            for other in list(self.tables.values()):
                self._outage_query(other)
            timer.join()
        finally:
            timer.cancel()
            end()
        self.stats.killed("s3-outage")

    def _outage_ready(self, refusing: Callable[[], bool]) -> None:
        """``GET /v1/ready`` stays 200 (the load balancer keeps sending ingest)
        and, if connections were refused all along, says the store is
        unavailable (docs/OPERATIONS.md); a hung store may not be noticed
        within the probe's timeout."""
        r = self._call("GET", "/v1/ready")
        body = r.json() if r.status_code == 200 else {}
        store = body.get("checks", {}).get("object_store")
        # Asked after the answer: the outage began before the request.
        if r.status_code != 200 or (store != "unavailable" and refusing()):
            raise InvariantViolation(
                "clear errors during an object-store outage",
                f"GET /v1/ready answered HTTP {r.status_code} with the object store {store!r}"
                f" while it refused connections; expected 200 and unavailable: {r.text[:500]}",
            )

    def _outage_answer(self, r: httpx.Response, what: str, *also: str) -> dict[str, Any] | None:
        """A 200's body, None for a documented outage error, else a violation."""
        if r.status_code == 200:
            body: dict[str, Any] = r.json()
            return body
        code, _ = _error(r)
        if code in OUTAGE_ERRORS and r.status_code == 503:
            self.stats.store_unavailable += 1
            return None
        if code in also:
            return None
        raise InvariantViolation(
            "clear errors during an object-store outage",
            f"{what} answered HTTP {r.status_code} while the object store was unreachable;"
            f" only {', '.join(OUTAGE_ERRORS + also)} may: {r.text[:800]}",
        )

    def _outage_query(self, table: TableModel) -> None:
        sql = table.sql("rows")
        r = self._call("POST", "/v1/query", json={"sql": sql, "row_limit": ROW_LIMIT})
        answer = self._outage_answer(r, f"a mode-C query on {table.name}")
        if answer is not None:
            self._latest_watermark(int(answer["max_visibility_token"]), "a mode-C query")
            self._check_rows(table, "rows", answer, "mode-C query during an outage")
            self._remember(table, sql, answer)

    def _outage_token_query(self, table: TableModel) -> None:
        token = self.last_token
        body = {
            "sql": table.sql("aggregate"),
            "min_visibility_token": token,
            "consistency_timeout_ms": OUTAGE_WAIT_MS,
        }
        r = self._call("POST", "/v1/query", json=body)
        self.stats.token_gated_queries += 1
        what = f"a mode-A query on {table.name} (token {token})"
        answer = self._outage_answer(r, what, "CONSISTENCY_TIMEOUT")
        if answer is None:
            return
        watermark = int(answer["max_visibility_token"])
        if watermark < token:
            raise InvariantViolation(
                "visibility", f"{what} was answered from watermark {watermark} < {token}"
            )
        self._latest_watermark(watermark, what)
        self._check_rows(table, "aggregate", answer, f"{what} during an outage")

    def _do_restart_api(self, action: A.Action) -> None:

        api = self.system.api
        assert api is not None
        how = action.get("signal", "term")

        def stop() -> None:
            if how == "kill":
                api.kill()
            elif api.terminate(SHUTDOWN_TIMEOUT_S) is None:
                raise InvariantViolation(
                    "graceful shutdown",
                    f"the API did not stop within {SHUTDOWN_TIMEOUT_S}s of SIGTERM",
                )

        self._interrupt_write(action, stop)
        self.stats.api_restarts += 1
        self.stats.killed("api-sigkill" if how == "kill" else "api-sigterm")

    def _do_kill_server(self, action: A.Action) -> None:
        api, coordinator = self.system.api, self.system.coordinator
        assert api is not None
        assert coordinator is not None

        def stop() -> None:
            api.kill()
            coordinator.kill()
            self.system.start_coordinator()

        self._interrupt_write(action, stop)
        self.stats.killed("server-sigkill")

    def _interrupt_write(self, action: A.Action, stop: Callable[[], None]) -> None:
        """``stop`` the API while ``records`` (if any) are being ingested, start it
        again, and retry that request with the same keys as a client must."""
        records = action["records"]
        table = self._table(action["table"]) if records else None
        outcome: dict[str, Any] = {}
        sender: threading.Thread | None = None
        if table is not None:
            client = self.system.new_client(timeout=30)

            def send() -> None:
                try:
                    outcome["response"] = client.post(
                        f"/v1/ingest/{table.name}", json={"records": records}
                    )
                except httpx.HTTPError as exc:
                    outcome["error"] = exc
                finally:
                    client.close()

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            time.sleep(0.005)  # a random moment of the request, not a synchronisation
        # Idle keep-alive connections would hold the graceful shutdown for its full timeout.
        self.system.http.close()
        stop()
        if sender is not None:
            sender.join(60)
        self.system.start_api()
        if table is None:
            return
        first = outcome.get("response")
        first_ok = first is not None and first.status_code == 200
        if first is not None and not first_ok and first.status_code < 500:
            raise InvariantViolation(
                "protocol", f"the in-flight ingest answered HTTP {first.status_code}: {first.text}"
            )
        # The client's duty after an unanswered write: retry with the same keys.
        r = self._call("POST", f"/v1/ingest/{table.name}", json={"records": records})
        self._expect(r, 200, f"retry of the in-flight ingest into {table.name}")
        answer = r.json()
        if first_ok:
            assert first is not None
            self._receipt(table, records, first.json(), waited=False)
            self._receipt(table, records, answer, waited=False)
        else:
            self._receipt(table, records, answer, waited=False, lost_attempt=True)

    def _do_stall_coordinator(self, action: A.Action) -> None:
        """SIGSTOP the coordinator in the middle of a commit until its lease is
        gone and a second coordinator has committed the same records, then
        SIGCONT it: its stale publish must be refused (fencing), which it logs
        as an abandoned batch. Armed to die right after publishing, a stale
        coordinator that got through dies instead, and that is a violation."""
        coordinator = self.system.coordinator
        assert coordinator is not None
        table = self._table(action["table"])
        faults = (
            f"coordinator.before_publish_commit=delay:1:{STALL_DELAY_S},"
            "coordinator.after_publish_commit=kill"
        )
        self._rearm_coordinator(faults)
        before = self.system.db_now()
        self._ingest(table, action["records"], wait=False)
        top = self.last_token
        since = self.system.event_position()
        _await(
            lambda: self.system.claimed_since(before),
            FAULT_DEATH_TIMEOUT_S,
            "the coordinator to claim",
        )
        coordinator.pause()
        second = self.system.second_coordinator()
        second.start()
        try:

            def taken_over() -> bool:
                if not second.alive():
                    raise HarnessError(f"the second coordinator exited:\n{second.log_tail()}")
                return self.system.visible_watermark() >= top

            if not _poll(taken_over, FAULT_DEATH_TIMEOUT_S):
                raise InvariantViolation(
                    "crash safety",
                    f"no coordinator committed token {top} within {FAULT_DEATH_TIMEOUT_S}s"
                    " while the one holding the lease was stalled",
                )
        finally:
            coordinator.resume()
        try:
            self._stale_publish_refused(coordinator, since)
        finally:
            coordinator.kill()
            second.kill()
            self.system.start_coordinator()
        self.stats.killed("coordinator-stall")

    def _stale_publish_refused(self, coordinator: Any, since: int) -> None:
        def settled() -> bool:
            return not coordinator.alive() or "batch abandoned" in coordinator.log_since_start()

        _poll(settled, FAULT_DEATH_TIMEOUT_S)
        stale = self.system.stale_publications(since)
        if stale:
            raise InvariantViolation(
                "fencing",
                "a coordinator that lost its lease (SIGSTOPped while another committed)"
                f" published anyway: {stale}",
            )

    # -- storage housekeeping, a full store, a file lost for good -------------

    def _pin(self, snapshot_id: int) -> bool:
        """Pin the scenario's first remembered snapshot: it must answer the same
        all along, whatever expiry and GC do. False if it already expired (as
        allowed: then the next remembered answer is pinned instead)."""
        r = self._call(
            "POST",
            "/v1/snapshots/pin",
            json={"snapshot_id": snapshot_id, "pinned": True, "reason": "scenario runner"},
        )
        if _error(r)[0] == "SNAPSHOT_NOT_FOUND" and self._expiry_allowed(snapshot_id, time.time()):
            return False
        self._expect(r, 200, f"pin snapshot {snapshot_id}")
        self._pinned = snapshot_id
        self.system.pinned.add(snapshot_id)
        return True

    def _unpin(self) -> None:
        if self._pinned is None:
            return
        r = self._call(
            "POST", "/v1/snapshots/pin", json={"snapshot_id": self._pinned, "pinned": False}
        )
        self._expect(r, 200, f"unpin snapshot {self._pinned}")
        self.system.pinned.discard(self._pinned)
        self._pinned = None

    def _expiry_allowed(self, snapshot_id: int, seen_at: float) -> bool:
        """A snapshot answered 404: allowed when docs/API.md's expiry rules allow
        it, else a violation (raised)."""
        refused = self.system.expiry_refused(snapshot_id, seen_at)
        if refused is not None:
            raise InvariantViolation(
                "snapshot reproducibility", f"snapshot {snapshot_id} is gone although {refused}"
            )
        self.stats.snapshots_expired += 1
        return True

    def _snapshot_files(self, snapshot_id: int, table: str | None = None) -> set[str]:
        r = self._call("GET", f"/v1/snapshots/{snapshot_id}")
        if r.status_code != 200:
            return set()
        return {
            f["path"]
            for t in r.json()["tables"]
            if table is None or t["name"] == table
            for f in t["files"]
        }

    def _pinned_files(self) -> set[str]:
        return set() if self._pinned is None else self._snapshot_files(self._pinned)

    def _lists_lost_file(self, rem: Remembered) -> bool:
        return bool(self._lost_files & self._snapshot_files(rem.snapshot_id, rem.table))

    def _damage_without_backup(self, table: TableModel, key: str, files: Sequence[str]) -> None:
        """Truncate ``key`` with no copy kept. Only its table may fail; ``duckmesh
        repair`` (no backup) must drop exactly that file, so the table holds
        exactly the rows of its other files (no silent extra loss), and
        ``duckmesh backfill`` (from the bus, which keeps every record within the
        idempotency window) must bring the table back to the whole model."""
        held = {k: _file_tokens(self.system.object_path(k)) for k in files}
        lost = held[key]
        path = self.system.object_path(key)
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
        self._lost_files.add(key)
        self.stats.killed("data-file-lost")
        self._only_damaged_table_fails(table)
        summary = self._cli_json(table, "repair", self.system.repair_without_backup)
        removed = set(summary.get("removed", []))
        if removed - {key}:
            raise InvariantViolation(
                "integrity",
                f"duckmesh repair {table.name} dropped {sorted(removed - {key})}, only {key}"
                f" was damaged: {summary}",
            )
        kept: set[int] = set().union(*(t for k, t in held.items() if k != key))
        if key in removed:
            if summary.get("records_removed") != len(lost):
                raise InvariantViolation(
                    "integrity",
                    f"duckmesh repair {table.name} says {summary.get('records_removed')} rows"
                    f" removed, the dropped file held {len(lost)}",
                )
        else:
            kept |= lost  # compaction had merged it away first: nothing lost
        self._check_repaired(table, kept, "after duckmesh repair without a copy")
        self._cli_json(table, "backfill", self.system.backfill)
        # The snapshots published meanwhile lack the dropped rows on purpose
        # (checked above); the history check resumes after the backfill.
        r = self._call("GET", "/v1/snapshots", params={"limit": 1})
        self._expect(r, 200, "GET /v1/snapshots")
        self._verified_snapshot = max(
            self._verified_snapshot, int(r.json()["snapshots"][0]["snapshot_id"])
        )

    def _only_damaged_table_fails(self, table: TableModel) -> None:
        for other in self.tables.values():
            sql = other.sql("rows")
            r = self._call("POST", "/v1/query", json={"sql": sql, "row_limit": ROW_LIMIT})
            if other is table and _error(r)[0] == "DATA_FILE_CORRUPT":
                continue  # the damaged table may say so, and only it
            self._expect(r, 200, f"query on {other.name} with a file of {table.name} damaged")
            self._check_rows(other, "rows", r.json(), "a query while a file is damaged")

    def _check_repaired(self, table: TableModel, tokens: set[int], what: str) -> None:
        sql = table.sql("rows")
        r = self._call(
            "POST",
            "/v1/query",
            json={
                "sql": sql,
                "min_visibility_token": self.last_token,
                "consistency_timeout_ms": CONSISTENCY_TIMEOUT_MS,
                "row_limit": ROW_LIMIT,
            },
        )
        self._expect(r, 200, f"query on {table.name} {what}")
        want, have = _canon(table.rows_with(tokens)), _canon(r.json()["rows"])
        if want != have:
            raise InvariantViolation(
                "integrity",
                f"{table.name} {what}: {sum((want - have).values())} row(s) of intact files"
                f" missing {list((want - have).elements())[:5]}, {sum((have - want).values())}"
                f" unexpected {list((have - want).elements())[:5]}",
            )

    def _cli_json(
        self, table: TableModel, what: str, command: Callable[[str], tuple[int, str]]
    ) -> dict[str, Any]:
        """Run ``duckmesh repair|backfill TABLE --json``; again after a lost race
        with compaction (``CONCURRENCY_CONFLICT``, as docs/OPERATIONS.md says)."""
        for _ in range(CLI_ATTEMPTS):
            code, output = command(table.name)
            if code == 0:
                start = output.find("{")
                parsed: dict[str, Any] = json.loads(output[start : output.rindex("}") + 1])
                return parsed
            if "CONCURRENCY_CONFLICT" not in output and "concurrency" not in output.lower():
                break
        raise InvariantViolation(
            "integrity", f"duckmesh {what} {table.name} exited {code}: {output[-2000:]}"
        )

    def _do_store_full(self, action: A.Action) -> None:
        """The object store is full: the coordinator's puts fail with ENOSPC
        (``coordinator.store_put=enospc``) until space is back. The commit must
        fail with nothing published, the tenant back off and retry; invariant
        (a) then demands every acknowledged write."""
        coordinator = self.system.coordinator
        assert coordinator is not None
        table = self._table(action["table"])
        faults = f"coordinator.store_put=enospc:{STORE_FULL_PUTS}"
        self._rearm_coordinator(faults)
        self._ingest(table, action["records"], wait=False)
        _await(
            lambda: "commit failed; the tenant backs off" in coordinator.log_since_start(),
            FAULT_DEATH_TIMEOUT_S,
            "the coordinator to meet the full object store",
        )
        self.stats.killed("object-store-full")


def _file_tokens(path: Path) -> set[int]:
    """The tokens of the rows a data file holds."""
    column = pq.read_table(path, columns=[TOKEN_COLUMN]).column(TOKEN_COLUMN)
    return {int(t) for t in column.to_pylist()}


def _poll(condition: Callable[[], bool], timeout: float, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


def _await(condition: Callable[[], bool], timeout: float, what: str) -> None:
    if not _poll(condition, timeout):
        raise HarnessError(f"timed out after {timeout}s waiting for {what}")


def load_recording(path: Path) -> dict[str, Any]:
    """Read a recording written by :meth:`Executor.save` (shape checked)."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("actions"), list):
        raise ValueError(f"{path}: not a scenario recording (no 'actions' list)")
    for action in data["actions"]:
        A.validate(action)
    env = data.get("system_env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ValueError(f"{path}: 'system_env' must map names to strings")
    if data.get("storage", "local") not in STORAGES:
        raise ValueError(f"{path}: 'storage' must be one of {STORAGES}")
    load = data.get("load")
    known = {"writers", "max_records", "rate", "seed"}
    if load is not None and (not isinstance(load, dict) or not set(load) <= known):
        raise ValueError(f"{path}: 'load' must be an object with keys among {sorted(known)}")
    return data


def replay(
    recording: Mapping[str, Any],
    *,
    echo: Callable[[str], None] | None = None,
    server_env: Mapping[str, str] | None = None,
    keep: bool = False,
    workdir: Path | None = None,
) -> Stats:
    """Rerun a recording's actions on a fresh :class:`System`; raise on a violation.

    The recording's ``system_env`` (for example a deliberately broken barrier)
    applies to the server processes, overridden by ``server_env``.
    """
    env = dict(recording.get("system_env") or {})
    env.update(server_env or {})
    storage = str(recording.get("storage", "local"))
    system = System(server_env=env, keep=keep, workdir=workdir, storage=storage)
    failed = True
    try:
        system.start()
        if recording.get("load"):
            from duckmesh_testing.scenario.load import Load

            # The same background load (its timing is not replayable, its seed is).
            system.load = Load(system, **recording["load"])
            system.load.start()
        executor = Executor(system, echo=echo)
        for action in recording["actions"]:
            executor.run(action)
        if system.load is not None:
            # The load's timing is not recorded: keep checking while it runs.
            deadline = time.monotonic() + LOAD_REPLAY_S
            while time.monotonic() < deadline:
                executor.check_invariants()
        executor.finish()
        executor.verify_replay()
        failed = False
        return executor.stats
    finally:
        if failed and echo is not None:
            echo(f"logs kept in {system.workdir}")
        if system.load is not None:
            system.load.stop_event.set()
        system.stop(failed=failed)
