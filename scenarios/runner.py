"""Property-based scenario runner (issue 8): random workloads, crashes and restarts
against a real DuckMesh, with the consistency guarantees checked after every step.

    python -m scenarios.runner --budget SECONDS [--seed N] [--max-steps N]
                               [--load WRITERS [--load-max N] [--load-rate R]]
                               [--storage local|s3]

One :class:`~duckmesh_testing.scenario.System` (Postgres, an API process, a
coordinator process) is started for the whole run: starting processes per
example would be far too slow. Each hypothesis example gets its own fresh
tables (unique names) and its own model, so examples are independent of each
other; the rules below generate the steps as plain action dicts and hand them
to a :class:`~duckmesh_testing.scenario.Executor`, which runs them and checks the
invariants (see ``duckmesh_testing/scenario/executor.py``).

Examples run until the budget is used (rounds of examples, each round seeded
from ``--seed``; a scenario that is cut by the budget stops executing, which
hypothesis sees as a pass). On a violation hypothesis shrinks (within
``--shrink-budget`` seconds), the seed is printed and the executor's recording
of the final, shrunk run is written to ``reports/scenario-failure.json``;
``duckmesh scenario replay reports/scenario-failure.json`` reruns it.

With ``--load WRITERS`` background writers (``duckmesh_testing/scenario/load.py``)
send record and CSV-upload requests throughout, checked by the same executor
after every step; at the end every acknowledged token range must tile the
tenant's tokens (the ledger) and ``duckmesh replay verify`` must pass.

With ``--storage s3`` the data files live in a bucket of an S3-compatible
test server (moto, a subprocess) and the scenarios also take the object store
away (rule ``s3_outage``: connections refused, or the server SIGSTOPped, for
1 to 6 seconds) while writes and queries are in flight.

Exit status: 0 when every scenario held, 1 on a violation, 2 when the system
could not be started.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.control import current_build_context
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from duckmesh_testing.scenario import Executor, HarnessError, InvariantViolation, Stats, System
from duckmesh_testing.scenario import actions as A
from duckmesh_testing.scenario.load import Load
from duckmesh_testing.scenario.system import STORAGES, forwarded_env

ROOT = Path(__file__).resolve().parent.parent
FAILURE_FILE = ROOT / "reports" / "scenario-failure.json"
MAX_TABLES = 3
MAX_ADDED_COLUMNS = 3
KEY_SPACE = 8  # keyed tables: upserts and deletes over a small key space
EXAMPLES_PER_ROUND = 25
# What ``restart_or_kill`` does (a repeated kind is drawn more often).
KILLS = (
    "sigkill",
    "sigkill",
    "fault",
    "restart_api",
    "sigkill_api",
    "kill_server",
    "stall",
    "damage",
    "postgres",
    "damage_nobackup",
    "store_full",
)

# Text that survives JSON, Postgres and Parquet (no surrogates or control characters).
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=6)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "VARCHAR": TEXT,
    "BIGINT": st.integers(-(2**40), 2**40),
    "BOOLEAN": st.booleans(),
}


@attrs.define
class Run:
    """What the examples of one run share: the system, the counters, the clock."""

    system: System
    stats: Stats
    seed: int
    budget_s: float
    shrink_budget_s: float
    started: float = attrs.field(factory=time.monotonic)
    first_failure_at: float | None = None
    last_failure: dict[str, Any] | None = None
    scenario_numbers: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    round_seed: int = 0
    verbose: bool = False

    def echo(self, line: str) -> None:
        if self.verbose:
            print(f"  [{time.monotonic() - self.started:7.2f}s] {line}", flush=True)

    def expired(self) -> bool:
        now = time.monotonic()
        if self.first_failure_at is not None:
            return now > self.first_failure_at + self.shrink_budget_s
        return now > self.started + self.budget_s

    def failed(self, executor: Executor, error: BaseException) -> None:
        if self.first_failure_at is None:
            self.first_failure_at = time.monotonic()
        self.last_failure = executor.recording(
            self.seed,
            round_seed=self.round_seed,
            violation=f"{type(error).__name__}: {error}",
        )


RUN: Run | None = None


@attrs.define(repr=False)
class TableSpec:
    """Generator-side view of a table (independent of the system's answers)."""

    name: str
    keyed: bool
    columns: list[tuple[str, str]]  # nullable, generated columns: (name, type)
    sent: list[A.Record] = attrs.field(factory=list)  # every record sent (retry candidates)
    next_id: int = 1
    added: int = 0

    def __repr__(self) -> str:  # how hypothesis prints a drawn table
        return f"<table {self.name}>"


def _payload(draw: Callable[..., Any], table: TableSpec, key_value: int) -> dict[str, Any]:
    payload: dict[str, Any] = {"k" if table.keyed else "id": key_value}
    for name, type_ in table.columns:
        choice = draw(st.sampled_from(("value", "value", "null", "absent")))
        if choice == "value":
            payload[name] = draw(VALUES[type_])
        elif choice == "null":
            payload[name] = None
    return payload


class DuckMeshScenario(RuleBasedStateMachine):
    """One example: fresh tables, a fresh model, the shared system."""

    def __init__(self) -> None:
        super().__init__()
        assert RUN is not None, "scenarios.runner: the run is not set up"
        self.run = RUN
        self.number = next(self.run.scenario_numbers)
        self.final = current_build_context().is_final
        self.executor: Executor | None = None
        if self.final or not self.run.expired():
            self.run.system.ensure_running()
            self.run.system.sync_tokens()
            self.executor = Executor(self.run.system, stats=self.run.stats, echo=self.run.echo)
        self.tables: list[TableSpec] = []
        self.keys = itertools.count(1)

    # -- plumbing ------------------------------------------------------------

    def _do(self, action: A.Action) -> None:
        if self.executor is None:
            return
        if not self.final and self.run.expired():
            self.executor = None  # out of budget: the steps so far were all checked
            return
        try:
            self.executor.run(action)
        except BaseException as exc:
            self.run.failed(self.executor, exc)
            raise

    def teardown(self) -> None:
        if self.executor is None:
            return
        try:
            self.executor.finish()
        except BaseException as exc:
            self.run.failed(self.executor, exc)
            raise

    def _fresh(self, draw: Callable[..., Any], table: TableSpec) -> A.Record:
        key = f"s{self.number}-{next(self.keys)}"
        if table.keyed:
            op = draw(st.sampled_from(("upsert", "upsert", "insert", "delete")))
            k = draw(st.integers(0, KEY_SPACE - 1))
            payload = {"k": k} if op == "delete" else _payload(draw, table, k)
            return {"idempotency_key": key, "op": op, "payload": payload}
        payload = _payload(draw, table, table.next_id)
        table.next_id += 1
        return {"idempotency_key": key, "op": "insert", "payload": payload}

    def _batch(
        self, data: st.DataObject, table: TableSpec, *, retries: bool = True, max_size: int = 20
    ) -> list[A.Record]:
        size = data.draw(st.integers(1, max_size), label="batch size")
        out: list[A.Record] = []
        for _ in range(size):
            if retries and table.sent and data.draw(st.integers(0, 4), label="retry?") == 0:
                out.append(data.draw(st.sampled_from(table.sent), label="retried record"))
            else:
                out.append(self._fresh(data.draw, table))
        # Every caller sends the batch: its records become retry candidates.
        table.sent.extend(r for r in out if r not in table.sent)
        return out

    def _pick(self, data: st.DataObject) -> TableSpec:
        return data.draw(st.sampled_from(self.tables), label="table")

    # -- rules ----------------------------------------------------------------

    @initialize(keyed=st.booleans())
    def first_table(self, keyed: bool) -> None:
        self._create(keyed)

    # Rule names matter: hypothesis orders rules by argument count, then name, and its
    # simplest example repeats the first one. "ingest" first makes that example a
    # cheap, useful one (one table, many small writes), and a failure in it short.

    @precondition(lambda self: len(self.tables) < MAX_TABLES)
    @rule(keyed=st.booleans())
    def new_table(self, keyed: bool) -> None:
        self._create(keyed)

    def _create(self, keyed: bool) -> None:
        name = f"s{self.number}t{len(self.tables) + 1}"
        first = "k" if keyed else "id"
        table = TableSpec(name, keyed, [("v", "VARCHAR"), ("n", "BIGINT")])
        self.tables.append(table)
        columns: list[dict[str, Any]] = [
            {"name": first, "type": "INTEGER" if keyed else "BIGINT", "nullable": False},
            {"name": "v", "type": "VARCHAR"},
            {"name": "n", "type": "BIGINT"},
        ]
        self._do(A.create_table(name, columns, [first] if keyed else []))

    @precondition(lambda self: any(t.added < MAX_ADDED_COLUMNS for t in self.tables))
    @rule(data=st.data())
    def schema_add_column(self, data: st.DataObject) -> None:
        table = data.draw(
            st.sampled_from([t for t in self.tables if t.added < MAX_ADDED_COLUMNS]),
            label="table",
        )
        type_ = data.draw(st.sampled_from(sorted(VALUES)), label="type")
        table.added += 1
        name = f"x{table.added}"
        table.columns.append((name, type_))
        self._do(A.evolve_table(table.name, name, type_))

    @rule(data=st.data())
    def ingest(self, data: st.DataObject) -> None:
        table = self._pick(data)
        self._do(A.ingest(table.name, self._batch(data, table)))

    @rule(data=st.data())
    def ingest_wait(self, data: st.DataObject) -> None:
        table = self._pick(data)
        self._do(A.ingest_wait(table.name, self._batch(data, table)))

    @precondition(lambda self: any(t.sent for t in self.tables))
    @rule(data=st.data())
    def reuse_key_with_other_payload(self, data: st.DataObject) -> None:
        table = data.draw(st.sampled_from([t for t in self.tables if t.sent]), label="table")
        original = data.draw(st.sampled_from(table.sent), label="original")
        payload = dict(original["payload"])
        payload["n"] = (payload.get("n") or 0) + 1
        self._do(A.ingest_conflict(table.name, dict(original, payload=payload)))

    @rule(data=st.data(), kind=st.sampled_from(A.SQL_KINDS))
    def query_token(self, data: st.DataObject, kind: str) -> None:
        self._do(A.query_token(self._pick(data).name, kind))

    @rule(data=st.data())
    def query_latest(self, data: st.DataObject) -> None:
        self._do(A.query_latest(self._pick(data).name))

    @rule(pick=st.integers(0, 1000))
    def query_old_snapshot(self, pick: int) -> None:
        self._do(A.query_snapshot(pick))

    @rule(data=st.data())
    def run_compaction(self, data: st.DataObject) -> None:
        self._do(A.compact())

    @rule(data=st.data(), what=st.sampled_from(KILLS))
    def restart_or_kill(self, data: st.DataObject, what: str) -> None:
        table = self._pick(data)
        if what in ("restart_api", "sigkill_api", "kill_server"):
            inflight: list[A.Record] = []
            if data.draw(st.booleans(), label="write in flight?"):
                inflight = self._batch(data, table, retries=False, max_size=5)
            name = table.name if inflight else None
            if what == "kill_server":
                self._do(A.kill_server(name, inflight))
            else:
                signal = "kill" if what == "sigkill_api" else "term"
                self._do(A.restart_api(name, inflight, signal=signal))
            return
        if what == "postgres":
            self._do(A.kill_postgres())
            return
        if what in ("damage", "damage_nobackup"):
            self._do(A.damage_file(table.name, backup=what == "damage"))
            return
        if what == "store_full":
            records = self._batch(data, table, retries=False, max_size=5)
            self._do(A.store_full(table.name, records))
            return
        if what == "stall":
            records = self._batch(data, table, retries=False, max_size=5)
            self._do(A.stall_coordinator(table.name, records))
            return
        # A fault point needs at least one new record, or the armed coordinator has
        # nothing to commit and never reaches it.
        records = self._batch(data, table, retries=what == "sigkill", max_size=5)
        fault = None
        if what == "fault":
            fault = data.draw(st.sampled_from(A.FAULT_POINTS), label="fault point")
        self._do(A.kill_coordinator(fault, table.name, records))


class DuckMeshS3Scenario(DuckMeshScenario):
    """With S3 object storage (``--storage s3``): the same rules and object-store
    outages. A subclass, so that runs on local files draw exactly as before."""

    @rule(
        data=st.data(),
        how=st.sampled_from(A.OUTAGES),
        tenths=st.integers(10, 60),
    )
    def s3_outage(self, data: st.DataObject, how: str, tenths: int) -> None:
        table = self._pick(data)
        before = self._batch(data, table, retries=False, max_size=5)
        records = self._batch(data, table, retries=True, max_size=12)
        self._do(A.s3_outage(how, tenths / 10, table.name, before, records))


def _settings(max_steps: int, examples: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=max_steps,
        deadline=None,
        database=None,
        derandomize=False,  # the seed decides (hypothesis.seed below)
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
        report_multiple_bugs=False,
        print_blob=False,
        verbosity=Verbosity.normal,
    )


def run_rounds(run: Run, max_steps: int) -> BaseException | None:
    """Run rounds of examples until the budget is used; the error of a failure, if any."""
    for round_no in itertools.count():
        if run.expired():
            return None
        run.round_seed = (
            run.seed if round_no == 0 else random.Random(run.seed + round_no).getrandbits(64)
        )

        try:
            # hypothesis.seed marks the class; each round draws from its own seed.
            machine = DuckMeshS3Scenario if run.system.s3 is not None else DuckMeshScenario
            run_state_machine_as_test(
                hypothesis_seed(run.round_seed)(machine),
                settings=_settings(max_steps, EXAMPLES_PER_ROUND),
            )
        except Exception as exc:  # every failure is reported by the caller
            return exc
    return None


def main(argv: list[str] | None = None) -> int:
    global RUN
    p = argparse.ArgumentParser(
        prog="python -m scenarios.runner", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--budget", type=float, default=60.0, help="seconds of examples (default 60)")
    p.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    p.add_argument("--max-steps", type=int, default=25, help="steps per example (default 25)")
    p.add_argument(
        "--shrink-budget", type=float, default=60.0, help="seconds for shrinking a failure"
    )
    p.add_argument("--failure-file", type=Path, default=FAILURE_FILE, help="where a failure goes")
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the server processes (repeatable)",
    )
    p.add_argument(
        "--load",
        type=int,
        default=0,
        metavar="WRITERS",
        help="background writers during the scenarios (default 0: none)",
    )
    p.add_argument("--load-max", type=int, default=1000, help="most records per background request")
    p.add_argument(
        "--load-rate",
        type=float,
        default=100.0,
        help="records per second per background writer (default 100; 0: unpaced)",
    )
    p.add_argument(
        "--storage",
        choices=STORAGES,
        default="local",
        help="where data files live: local files (default) or a bucket on an S3 test server,"
        " which the scenarios then take away now and then",
    )
    p.add_argument("--keep", action="store_true", help="keep the system's logs and data")
    p.add_argument("--workdir", type=Path, help="directory for logs and data (kept)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every step")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    server_env = forwarded_env()
    for item in args.server_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("DUCKMESH_"):
            p.error(f"--server-env wants DUCKMESH_NAME=VALUE, got {item!r}")
        server_env[name] = value
    print(
        f"scenario runner: seed {seed}, budget {args.budget:g}s, {args.max_steps} steps per"
        f" example, {args.storage} storage, server env {server_env or '{}'}",
        flush=True,
    )
    system = System(
        server_env=server_env, keep=args.keep, workdir=args.workdir, storage=args.storage
    )
    stats = Stats()
    started = time.monotonic()
    try:
        system.start()
    except (HarnessError, OSError) as exc:
        print(f"scenario runner: could not start DuckMesh: {exc}", file=sys.stderr)
        system.stop(failed=True)
        return 2
    failed = True
    try:
        if args.load:
            system.load = Load(
                system,
                writers=args.load,
                max_records=args.load_max,
                rate=args.load_rate,
                seed=seed,
            )
            system.load.start()
        RUN = Run(system, stats, seed, args.budget, args.shrink_budget, verbose=args.verbose)
        error = run_rounds(RUN, args.max_steps)
        if error is None:
            try:
                finish_run(system, stats)
            except InvariantViolation as exc:
                error = exc
                RUN.last_failure = None
        if error is not None:
            report_failure(RUN, error, args.failure_file)
        else:
            failed = False
        elapsed = time.monotonic() - started
        merge_load(system, stats)
        print(f"scenario runner: {stats.summary(seed)}")
        if system.load is not None:
            print(f"  background load: {attrs.asdict(system.load.stats)}")
        logs = system.workdir if failed or args.keep else "-"
        print(f"  {stats.details()}; {elapsed:.1f}s; logs {logs}")
        return 1 if failed else 0
    finally:
        RUN = None
        if system.load is not None:
            system.load.stop_event.set()
        system.stop(failed=failed)


def finish_run(system: System, stats: Stats) -> None:
    """After the last scenario: the load stopped and checked once more, every
    token acknowledged exactly once (the ledger), and invariant (e)."""
    executor = Executor(system, stats=stats)
    stats.scenarios -= 1  # that executor runs no scenario
    system.ensure_running()
    load = system.load
    if load is not None:
        load.stop()
        executor.check_invariants()
    problem = system.check_ledger()
    if problem is not None:
        raise InvariantViolation("tokens are gapless and commit-ordered", problem)
    executor.verify_replay()


def merge_load(system: System, stats: Stats) -> None:
    load = system.load
    if load is None:
        return
    stats.acks += load.stats.acks
    stats.duplicates += load.stats.duplicates
    stats.max_write_to_visible_s = max(stats.max_write_to_visible_s, load.max_late)


def report_failure(run: Run, error: BaseException, path: Path) -> None:
    violation = _find_violation(error)
    print("", flush=True)
    for note in getattr(error, "__notes__", []):
        print(note)  # hypothesis' falsifying example, step by step
    if violation is not None:
        print(f"scenario runner: InvariantViolation: {violation}")
    else:
        print(f"scenario runner: FAILED with {type(error).__name__}: {error}")
        traceback.print_exception(error, file=sys.stdout)
    print(f"scenario runner: seed {run.seed} (round seed {run.round_seed})")
    if run.stats.violations == 0:
        run.stats.violations = 1
    if run.last_failure is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run.last_failure, indent=1, ensure_ascii=False))
        steps = len(run.last_failure["actions"])
        shown = os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd()) else path
        print(
            f"scenario runner: the shrunk failing run ({steps} steps) is in {path};"
            f" rerun it with: duckmesh scenario replay {shown}"
        )


def _find_violation(error: BaseException) -> InvariantViolation | None:
    if isinstance(error, InvariantViolation):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _find_violation(inner)
            if found is not None:
                return found
    if error.__cause__ is not None:
        return _find_violation(error.__cause__)
    return None


if __name__ == "__main__":
    sys.exit(main())
