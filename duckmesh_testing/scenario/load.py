"""Background load during scenarios (issue 19): volume, checked by the same model.

Several writer threads send 10- to ``max_records``-record requests, JSON
records and CSV bulk uploads (``POST /v1/ingest/{table}`` with ``text/csv``),
to an append-only table (``load_append``) and a keyed one (``load_keyed``)
while the hypothesis scenarios run their steps, kills and restarts. A writer
sends one request at a time and retries it with the same idempotency keys
until it is acknowledged (a kill or restart in between is expected), and now
and then sends an acknowledged request again on purpose (it must come back as
duplicates with the original token). Its model is exact because of that:

- append-only: writer ``w`` writes ids ``w * SPAN + 1, 2, ...`` in order, so
  every acknowledged id must be visible exactly once and nothing beyond the
  request in flight may be: per writer, ``count = count(distinct id)``, the
  ids contiguous from the first, and ``acked <= count <= sent``;
- keyed: writer ``w`` owns keys ``w * KEYS .. w * KEYS + KEYS - 1`` and applies
  upserts and deletes in order, so the visible rows of its keys must equal
  its state after one of its acknowledged requests since the query began, or
  after the request in flight.

:meth:`Load.check` runs those queries with ``min_visibility_token`` = the
highest acknowledged token (every acknowledgement is then covered), checks
the watermark never goes back and re-asks remembered (snapshot id, SQL)
answers, which must not change. Every fresh token range goes into the
system's ledger, which must end up gapless and without overlap
(:meth:`System.check_ledger`). A writer's own checks (receipt counts,
original tokens of retries) are kept and raised by the next :meth:`check`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
import httpx

from duckmesh_testing.scenario.system import System

SPAN = 10**9  # writer w's append-only ids are w * SPAN + 1, 2, ...
KEYS = 100  # keys per writer in the keyed table
APPEND, KEYED = "load_append", "load_keyed"
RETRY_PAUSE_S = 0.2
CONSISTENCY_TIMEOUT_MS = 60_000
REMEMBER = 10
HISTORY = 200  # keyed states kept per writer (a check spans far fewer requests)
Violation = tuple[str, str]  # (guarantee, detail)


@attrs.define
class Writer:
    number: int
    acked_ids: int = 0  # ids 1..acked_ids of this writer are acknowledged
    sent_ids: int = 0  # ... and 1..sent_ids were sent (acked + the request in flight)
    state: dict[int, int] = attrs.field(factory=dict)  # keyed: key -> v (acknowledged)
    pending: dict[int, int] | None = None  # keyed state if the request in flight commits
    version: int = 0  # keyed requests acknowledged
    started: float = attrs.field(factory=time.monotonic)
    spans: list[tuple[int, int]] = attrs.field(factory=list)  # append tokens acknowledged
    history: dict[int, dict[int, int]] = attrs.field(factory=dict)  # version -> state
    last: tuple[str, dict[str, Any], dict[str, str], int, int] | None = None  # for re-sends


@attrs.define
class LoadStats:
    requests: int = 0
    uploads: int = 0
    acks: int = 0
    duplicates: int = 0
    retries_after_errors: int = 0
    checks: int = 0


class Load:
    def __init__(
        self,
        system: System,
        *,
        writers: int,
        max_records: int = 1000,
        rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.system = system
        self.rate = rate  # records per second per writer (0: as fast as acknowledged)
        self.writers = [Writer(n + 1) for n in range(writers)]
        self.max_records = max_records
        self.seed = seed
        self.stats = LoadStats()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.violations: list[Violation] = []
        self.acked_top = 0  # highest token of any acknowledged load request
        self.unseen: list[tuple[int, float]] = []  # (top token, sent at) not yet seen visible
        self.remembered: list[tuple[int, str, list[list[Any]], int]] = []
        self.seen_at: dict[int, float] = {}  # snapshot id -> when an answer showed it
        self._recheck = 0
        self.after_snapshot = 0  # later snapshots hold the load's tables
        self.max_late = 0.0  # the longest from sending a load write to a check showing it

    def settings(self) -> dict[str, Any]:
        """The arguments that make the same load again (for a recording)."""
        return {
            "writers": len(self.writers),
            "max_records": self.max_records,
            "rate": self.rate,
            "seed": self.seed,
        }

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        http = self.system.http
        for name, first, key in ((APPEND, "id", []), (KEYED, "k", ["k"])):
            columns = [
                {"name": first, "type": "BIGINT", "nullable": False},
                {"name": "w", "type": "BIGINT"},
                {"name": "v", "type": "BIGINT"},
            ]
            r = http.post("/v1/tables", json={"name": name, "columns": columns, "primary_key": key})
            if r.status_code not in (201, 409):
                raise RuntimeError(f"creating {name} answered {r.status_code}: {r.text}")
        snaps = http.get("/v1/snapshots", params={"limit": 1}).json()["snapshots"]
        self.after_snapshot = snaps[0]["snapshot_id"] if snaps else 0
        for writer in self.writers:
            t = threading.Thread(target=self._run, args=(writer,), daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(120)

    # -- writers ---------------------------------------------------------------

    def _run(self, writer: Writer) -> None:
        rng = random.Random(self.seed * 1000 + writer.number)  # noqa: S311 (a seeded workload)
        client = self.system.new_client(timeout=60)
        try:
            while not self.stop_event.is_set():
                self._pace(writer)
                roll = rng.random()
                if roll < 0.05 and writer.last is not None:
                    self._resend(client, writer)
                elif roll < 0.45:
                    self._append(client, writer, rng, upload=False)
                elif roll < 0.6:
                    self._append(client, writer, rng, upload=True)
                else:
                    self._keyed(client, writer, rng)
        except Exception as exc:  # a harness bug: report it, do not hide it
            self._violated("load writer", f"writer {writer.number} crashed: {exc!r}")
        finally:
            client.close()

    def _pace(self, writer: Writer) -> None:
        """Hold the writer to ``rate``: a commit backlog would only slow every
        token-gated check down, not prove more."""
        if self.rate <= 0:
            return
        written = writer.acked_ids + writer.version * 150  # keyed requests average ~150
        due = writer.started + written / self.rate
        self.stop_event.wait(max(0.0, due - time.monotonic()))

    def _append(
        self, client: httpx.Client, writer: Writer, rng: random.Random, *, upload: bool
    ) -> None:
        n = rng.randint(10, self.max_records)
        first = writer.number * SPAN + writer.acked_ids + 1
        ids = range(first, first + n)
        with self.lock:
            writer.sent_ids = writer.acked_ids + n
        if upload:
            body = "id,w,v\n" + "".join(f"{i},{writer.number},{i % 997}\n" for i in ids)
            headers = {"Content-Type": "text/csv", "Idempotency-Key": f"w{writer.number}-u{first}"}
            request: dict[str, Any] = {"content": body.encode(), "headers": headers}
        else:
            records = [
                {
                    "idempotency_key": f"w{writer.number}-a{i}",
                    "op": "insert",
                    "payload": {"id": i, "w": writer.number, "v": i % 997},
                }
                for i in ids
            ]
            request = {"json": {"records": records}}
        top = self._send(client, writer, APPEND, request, n, upload=upload)
        with self.lock:
            writer.acked_ids += n
            writer.spans.append((top - n + 1, top))
            writer.last = (APPEND, request, {}, n, top)

    def _keyed(self, client: httpx.Client, writer: Writer, rng: random.Random) -> None:
        n = rng.randint(10, min(self.max_records, 300))
        state = dict(writer.state)
        records = []
        base = writer.number * KEYS
        for i in range(n):
            k = base + rng.randrange(KEYS)
            key = f"w{writer.number}-k{writer.version}-{i}"
            if rng.random() < 0.2:
                records.append({"idempotency_key": key, "op": "delete", "payload": {"k": k}})
                state.pop(k, None)
            else:
                v = rng.randrange(10**6)
                payload = {"k": k, "w": writer.number, "v": v}
                records.append({"idempotency_key": key, "op": "upsert", "payload": payload})
                state[k] = v
        with self.lock:
            writer.pending = state
        request: dict[str, Any] = {"json": {"records": records}}
        top = self._send(client, writer, KEYED, request, n, upload=False)
        with self.lock:
            writer.version += 1
            writer.state = state
            writer.pending = None
            writer.history[writer.version] = state
            writer.history.pop(writer.version - HISTORY, None)
            writer.last = (KEYED, request, {}, n, top)

    def _resend(self, client: httpx.Client, writer: Writer) -> None:
        """An acknowledged request again: all duplicates, the original token."""
        assert writer.last is not None
        table, request, _, n, top = writer.last
        r, _ = self._post(client, table, request)
        body = r.json()
        if (body.get("accepted_count"), body.get("duplicate_count")) != (0, n) or body.get(
            "max_visibility_token"
        ) != top:
            self._violated(
                "idempotency",
                f"writer {writer.number} re-sent an acknowledged request of {n} record(s) into"
                f" {table} (token {top}); the receipt says {body}",
            )
        with self.lock:
            self.stats.acks += n
            self.stats.duplicates += n

    def _post(
        self, client: httpx.Client, table: str, request: dict[str, Any]
    ) -> tuple[httpx.Response, bool]:
        """POST until an answer that is not an outage (transport error, 5xx,
        429); the answer and whether an attempt went unanswered before it."""
        outage = False
        while True:
            try:
                r = client.post(f"/v1/ingest/{table}", **request)
            except httpx.TransportError:
                r = None
            if r is not None and r.status_code < 500 and r.status_code != 429:
                return r, outage
            outage = True
            with self.lock:
                self.stats.retries_after_errors += 1
            time.sleep(RETRY_PAUSE_S)  # the API is restarting: try again shortly

    def _send(
        self,
        client: httpx.Client,
        writer: Writer,
        table: str,
        request: dict[str, Any],
        n: int,
        *,
        upload: bool,
    ) -> int:
        with self.lock:
            floor = self.acked_top  # every token acknowledged before this request
        sent = time.monotonic()
        r, outage = self._post(client, table, request)
        if r.status_code != 200:
            self._violated(
                "protocol",
                f"writer {writer.number}: ingest of {n} into {table} answered"
                f" {r.status_code}: {r.text[:500]}",
            )
            return 0
        body = r.json()
        got = (body.get("accepted_count"), body.get("duplicate_count"))
        # After an unanswered attempt the whole request may already be stored.
        if got != (n, 0) and not (outage and got == (0, n)):
            self._violated(
                "idempotency",
                f"writer {writer.number}: {n} new record(s) into {table}: the receipt says"
                f" {got[0]} accepted + {got[1]} duplicate(s)",
            )
        top = int(body["max_visibility_token"])
        if top - n + 1 <= floor:
            self._violated(
                "tokens are gapless and commit-ordered",
                f"writer {writer.number}: a request sent after token {floor} was acknowledged"
                f" got tokens {top - n + 1}..{top}",
            )
        with self.lock:
            self.system.ledger.append((top - n + 1, top))
            self.acked_top = max(self.acked_top, top)
            self.unseen.append((top, sent))
            self.stats.requests += 1
            self.stats.uploads += upload
            self.stats.acks += n
            self.stats.duplicates += got[1] or 0
        return top

    def _violated(self, guarantee: str, detail: str) -> None:
        with self.lock:
            self.violations.append((guarantee, detail))

    # -- the check ---------------------------------------------------------------

    def check(
        self, call: Callable[..., httpx.Response], watermark_seen: Callable[[int], None]
    ) -> list[Violation]:
        """Query both tables behind the highest acknowledged token and compare
        with the writers' models; the violations found (writers' ones first)."""
        with self.lock:
            found = list(self.violations)
            self.violations.clear()
            token = self.acked_top
            lower = {w.number: w.acked_ids for w in self.writers}
            since = {w.number: w.version for w in self.writers}
        if found:
            return found
        self.stats.checks += 1
        append = self._query(
            call,
            "select w, count(*), count(distinct id), min(id), max(id)"
            f" from {APPEND} group by w order by w",
            token,
        )
        keyed = self._query(call, f"select k, w, v from {KEYED} order by k", token)
        for answer in (append, keyed):
            if "error" in answer:
                return [("visibility", answer["error"])]
            watermark_seen(int(answer["max_visibility_token"]))
        with self.lock:
            upper = {w.number: w.sent_ids for w in self.writers}
            states = {
                w.number: [w.history.get(v, {}) for v in range(since[w.number], w.version + 1)]
                + ([w.pending] if w.pending is not None else [])
                for w in self.writers
            }
        found += self._check_append(append, lower, upper)
        found += self._check_keyed(keyed, states)
        found += self._recheck_one(call)
        return found

    def check_snapshot(
        self, call: Callable[..., httpx.Response], sid: int, watermark: int
    ) -> list[Violation]:
        """An older snapshot (not only the latest) must hold every acknowledged
        append-only id at or below its own watermark, each once."""
        with self.lock:
            lower = {
                w.number: sum(max(0, min(watermark, last) - first + 1) for first, last in w.spans)
                for w in self.writers
            }
            upper = {w.number: w.sent_ids for w in self.writers}
        sql = f"select w, count(*), count(distinct id), min(id), max(id) from {APPEND} group by w"
        r = call("POST", "/v1/query", json={"sql": sql, "snapshot_id": sid, "row_limit": 1000})
        if r.status_code == 404:
            return []  # expired meanwhile: nothing to hold
        if r.status_code != 200:
            return [("protocol", f"query on snapshot {sid} answered {r.status_code}: {r.text}")]
        return self._check_append(r.json(), lower, upper)

    def _query(self, call: Callable[..., httpx.Response], sql: str, token: int) -> dict[str, Any]:
        body = {
            "sql": sql,
            "min_visibility_token": token,
            "consistency_timeout_ms": CONSISTENCY_TIMEOUT_MS,
            "row_limit": 100_000,
        }
        r = call("POST", "/v1/query", json=body)
        if r.status_code != 200:
            return {"error": f"load query with token {token} answered {r.status_code}: {r.text}"}
        answer: dict[str, Any] = r.json()
        if answer["max_visibility_token"] < token:
            return {
                "error": f"load query with token {token} answered at watermark"
                f" {answer['max_visibility_token']}"
            }
        self.remembered.append((int(answer["snapshot_id"]), sql, answer["rows"], token))
        self.seen_at.setdefault(int(answer["snapshot_id"]), time.time())
        del self.remembered[:-REMEMBER]
        kept = {m[0] for m in self.remembered}
        self.seen_at = {sid: at for sid, at in self.seen_at.items() if sid in kept}
        now = time.monotonic()
        with self.lock:
            late = [
                now - sent for top, sent in self.unseen if top <= answer["max_visibility_token"]
            ]
            self.unseen = [(t, s) for t, s in self.unseen if t > answer["max_visibility_token"]]
        self.max_late = max([self.max_late, *late])
        return answer

    def _check_append(
        self, answer: dict[str, Any], lower: dict[int, int], upper: dict[int, int]
    ) -> list[Violation]:
        seen = {int(w): (c, d, lo, hi) for w, c, d, lo, hi in answer["rows"]}
        out: list[Violation] = []
        for w in lower:
            c, d, lo, hi = seen.get(w, (0, 0, None, None))
            where = f"{APPEND} (writer {w}, snapshot {answer['snapshot_id']})"
            if c != d:
                out.append(("idempotency (no duplicates)", f"{where}: {c} rows, {d} distinct ids"))
            elif c and (lo != w * SPAN + 1 or hi - lo + 1 != c):
                out.append(("visibility", f"{where}: {c} rows with ids {lo}..{hi}: a gap"))
            elif c < lower[w]:
                out.append(("visibility", f"{where}: {c} rows, {lower[w]} acknowledged"))
            elif c > upper[w]:
                out.append(("snapshot consistency", f"{where}: {c} rows, only {upper[w]} sent"))
        return out

    def _check_keyed(
        self, answer: dict[str, Any], states: dict[int, list[dict[int, int]]]
    ) -> list[Violation]:
        visible: dict[int, dict[int, int]] = {w: {} for w in states}
        for k, w, v in answer["rows"]:
            visible.setdefault(int(w), {})[int(k)] = v
        out: list[Violation] = []
        for w, candidates in states.items():
            if visible.get(w, {}) not in candidates:
                out.append(
                    (
                        "visibility",
                        f"{KEYED} (writer {w}, snapshot {answer['snapshot_id']}): the visible rows"
                        f" match none of the writer's {len(candidates)} acknowledged states since"
                        " the query began",
                    )
                )
        return out

    def _recheck_one(self, call: Callable[..., httpx.Response]) -> list[Violation]:
        if not self.remembered:
            return []
        sid, sql, rows, _ = self.remembered[self._recheck % len(self.remembered)]
        self._recheck += 1
        r = call("POST", "/v1/query", json={"sql": sql, "snapshot_id": sid, "row_limit": 100_000})
        if r.status_code == 404 and r.json().get("error_code") == "SNAPSHOT_NOT_FOUND":
            refused = self.system.expiry_refused(sid, self.seen_at.get(sid, time.time()))
            if refused is None:  # expired as docs/API.md allows: not asked again
                self.remembered = [m for m in self.remembered if m[0] != sid]
                return []
            return [("snapshot reproducibility", f"snapshot {sid} is gone although {refused}")]
        if r.status_code != 200 or r.json()["rows"] != rows:
            return [
                (
                    "snapshot reproducibility",
                    f"snapshot {sid} answered {sql!r} differently: {r.status_code} {r.text[:300]}",
                )
            ]
        return []
