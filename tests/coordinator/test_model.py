"""Op semantics against a plain in-memory model (hypothesis).

Interleaved inserts, upserts and deletes over shared keys, spread over many
batches and commits, must read back exactly like a dict that applies them in
token order. Runs the real bus, committer, Parquet files and query path.
"""

from __future__ import annotations

import itertools
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckmesh.catalog import commands
from duckmesh.ingest.validation import TableValidator, validate_records
from duckmesh.query.service import QueryRequest
from duckmesh.runtime import Runtime, coordinator_actors
from tests.fixtures import shared_committer

_names = itertools.count()

ops = st.lists(
    st.lists(
        st.tuples(
            st.sampled_from(["upsert", "upsert", "delete"]),
            st.integers(min_value=0, max_value=6),
            st.one_of(st.none(), st.integers(min_value=-5, max_value=5)),
        ),
        min_size=1,
        max_size=8,
    ),
    min_size=1,
    max_size=6,
)


def _publish(rt: Runtime, table: Any, batch: list[tuple[str, int, int | None]], tag: str) -> None:
    tv = TableValidator.for_table(table)
    raw = []
    for n, (op, key, value) in enumerate(batch):
        payload: dict[str, Any] = {"k": key}
        if op != "delete":
            payload["v"] = value
        raw.append({"idempotency_key": f"{tag}-{n}", "op": op, "payload": payload})
    records = validate_records(tv, raw, max_records=1000, max_record_bytes=10_000)
    results = rt.bus.publish("default", [records])
    assert not isinstance(results[0], Exception)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=ops, commit_every=st.integers(min_value=1, max_value=3))
async def test_keyed_table_matches_model(
    runtime: Runtime, batches: list[list[tuple[str, int, int | None]]], commit_every: int
) -> None:
    rt = runtime
    name = f"kv{next(_names)}"
    table = rt.db.call(
        lambda c: commands.create_table(
            c,
            "default",
            {
                "name": name,
                "columns": [
                    {"name": "k", "type": "INTEGER", "nullable": False},
                    {"name": "v", "type": "INTEGER"},
                ],
                "primary_key": ["k"],
            },
        )
    )
    # One consumer for all examples: a new one would wait out the old lease.
    committer = shared_committer(rt)
    model: dict[int, int | None] = {}
    for i, batch in enumerate(batches):
        _publish(rt, table, batch, f"{name}-{i}")
        for op, key, value in batch:
            if op == "delete":
                model.pop(key, None)
            else:
                model[key] = value
        if (i + 1) % commit_every == 0:
            while await trio.to_thread.run_sync(committer.commit_once) is not None:
                pass
    while await trio.to_thread.run_sync(committer.commit_once) is not None:
        pass
    result = await rt.queries.execute(
        "default", QueryRequest(sql=f"select k, v from {name} order by k")
    )
    assert result["rows"] == [[k, v] for k, v in sorted(model.items())]


async def test_append_only_keeps_every_record(runtime: Runtime) -> None:
    rt = runtime
    table = rt.db.call(
        lambda c: commands.create_table(
            c, "default", {"name": "log", "columns": [{"name": "id", "type": "BIGINT"}]}
        )
    )
    tv = TableValidator.for_table(table)
    for b in range(3):
        recs = validate_records(
            tv,
            [{"idempotency_key": f"{b}-{i}", "payload": {"id": i}} for i in range(5)],
            max_records=100,
            max_record_bytes=1000,
        )
        rt.bus.publish("default", [recs])
    committer = coordinator_actors(rt)[0].committer
    outcome = await trio.to_thread.run_sync(committer.commit_once)
    assert outcome is not None
    assert outcome.records == 15
    assert outcome.watermark == 15
    result = await rt.queries.execute("default", QueryRequest(sql="select count(*) from log"))
    assert result["rows"] == [[15]]
    assert result["max_visibility_token"] == 15
