"""The ``IngestBus`` contract suite (SPEC §2.3): one parity suite for every backend.

Written against ``duckmesh.bus.protocol`` only — no SQL, no backend types —
so a future Kafka backend runs the very same checks. A backend's test module
subclasses ``IngestBusContract`` and overrides the ``make_bus`` fixture with a
factory of fresh, empty buses (every bus the factory makes in one test shares
the same storage, as separate processes would).

Lease tests use the backend's own clock: a short lease is observed to run out
by polling ``claim``/``requeue_expired`` in a bounded loop, never by sleeping
for a guessed duration.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import attrs
import pytest

from duckmesh.bus.protocol import (
    Batch,
    IngestBus,
    IngestRecord,
    LeaseLost,
    QuarantineEntry,
    Receipt,
    Receipts,
)
from duckmesh.errors import DuckMeshError

T = TypeVar("T")

SHORT_LEASE_S = 0.3
LONG_LEASE_S = 60.0
NO_BYTE_LIMIT = 1 << 30
POLL_TIMEOUT_S = 15.0
TABLE = "tbl_contract"


def rec(
    key: str,
    payload: dict[str, Any] | None = None,
    *,
    table: str = TABLE,
    op: str = "insert",
    event_time: dt.datetime | None = None,
) -> IngestRecord:
    """A record as the API would build it: canonical JSON and a hash of (op, time, payload)."""
    text = json.dumps(
        {"key": key} if payload is None else payload,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    stamp = event_time.isoformat() if event_time is not None else ""
    digest = hashlib.sha256(f"{op}\x00{stamp}\x00{text}".encode()).digest()
    return IngestRecord(
        table_id=table,
        idempotency_key=key,
        op=op,
        payload=text,
        payload_hash=digest,
        event_time=event_time,
        schema_version=1,
    )


def poll_until(fn: Callable[[], T | None], *, timeout: float = POLL_TIMEOUT_S) -> T:
    """Call ``fn`` until it returns something truthy; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)  # pacing between polls of a condition, not synchronisation


def ok(result: Receipts | DuckMeshError) -> list[Receipt]:
    assert not isinstance(result, DuckMeshError), f"request failed: {result!r}"
    return list(result)


def tokens(receipts: Receipts) -> list[int]:
    return [r.token for r in receipts]


def batch_tokens(batch: Batch) -> list[int]:
    return [r.token for r in batch.records]


class IngestBusContract:
    """Base class: subclass it and override ``make_bus``."""

    @pytest.fixture
    def make_bus(self) -> Iterator[Callable[[], IngestBus]]:
        raise NotImplementedError("a backend's test class must override the make_bus fixture")

    @pytest.fixture
    def bus(self, make_bus: Callable[[], IngestBus]) -> IngestBus:
        return make_bus()

    def claim(
        self,
        bus: IngestBus,
        consumer: str,
        *,
        limit: int = 1000,
        max_bytes: int = NO_BYTE_LIMIT,
        lease_s: float = LONG_LEASE_S,
    ) -> Batch | None:
        return bus.claim(consumer, limit=limit, max_bytes=max_bytes, lease_s=lease_s)

    # -- publish: tokens -----------------------------------------------------

    def test_publish_returns_one_receipt_per_record_with_contiguous_tokens_from_one(
        self, bus: IngestBus
    ) -> None:
        assert bus.latest_token("acme") == 0
        first = bus.publish("acme", [[rec("a"), rec("b"), rec("c")], [rec("d")]])
        assert [ok(r) for r in first] == [
            [Receipt(1, False), Receipt(2, False), Receipt(3, False)],
            [Receipt(4, False)],
        ]
        second = bus.publish("acme", [[rec("e"), rec("f")]])
        assert ok(second[0]) == [Receipt(5, False), Receipt(6, False)]
        assert bus.latest_token("acme") == 6

    def test_tenants_have_independent_token_sequences(self, bus: IngestBus) -> None:
        assert tokens(ok(bus.publish("acme", [[rec("a"), rec("b")]])[0])) == [1, 2]
        # The same idempotency key in another tenant is another record.
        assert tokens(ok(bus.publish("beta", [[rec("a")]])[0])) == [1]
        assert tokens(ok(bus.publish("acme", [[rec("c")]])[0])) == [3]
        assert tokens(ok(bus.publish("beta", [[rec("b"), rec("c")]])[0])) == [2, 3]
        assert bus.latest_token("acme") == 3
        assert bus.latest_token("beta") == 3
        assert bus.latest_token("nobody") == 0

    def test_same_key_in_another_table_is_another_record(self, bus: IngestBus) -> None:
        out = bus.publish("acme", [[rec("k", table="t1"), rec("k", {"x": 1}, table="t2")]])
        assert ok(out[0]) == [Receipt(1, False), Receipt(2, False)]

    # -- publish: idempotency ------------------------------------------------

    def test_retry_with_same_payload_returns_original_token_and_consumes_none(
        self, bus: IngestBus
    ) -> None:
        ok(bus.publish("acme", [[rec("a"), rec("b")]])[0])
        assert ok(bus.publish("acme", [[rec("b")]])[0]) == [Receipt(2, True)]
        assert bus.latest_token("acme") == 2
        # A retry mixed with new records: old ones keep their token, new ones continue.
        mixed = ok(bus.publish("acme", [[rec("a"), rec("c"), rec("b"), rec("d")]])[0])
        assert mixed == [Receipt(1, True), Receipt(3, False), Receipt(2, True), Receipt(4, False)]
        assert bus.latest_token("acme") == 4

    def test_conflicting_key_fails_only_its_request_and_writes_nothing_of_it(
        self, bus: IngestBus
    ) -> None:
        ok(bus.publish("acme", [[rec("x", {"v": 1})]])[0])
        out = bus.publish(
            "acme",
            [
                [rec("y", {"v": "from the failed request"}), rec("x", {"v": 2})],
                [rec("z", {"v": 3})],
                [rec("x", {"v": 1})],
            ],
        )
        assert isinstance(out[0], DuckMeshError)
        assert out[0].error_code == "IDEMPOTENCY_CONFLICT"
        # The failed request consumed no token: the next request continues at 2.
        assert ok(out[1]) == [Receipt(2, False)]
        assert ok(out[2]) == [Receipt(1, True)]
        assert bus.latest_token("acme") == 2
        # "y" was never stored: its key is free for another payload.
        assert ok(bus.publish("acme", [[rec("y", {"v": 4})]])[0]) == [Receipt(3, False)]
        batch = self.claim(bus, "A")
        assert batch is not None
        assert [r.payload for r in batch.records] == ['{"v":1}', '{"v":3}', '{"v":4}']

    def test_duplicates_inside_one_request(self, bus: IngestBus) -> None:
        same = ok(bus.publish("acme", [[rec("a"), rec("a")]])[0])
        assert same == [Receipt(1, False), Receipt(1, True)]
        out = bus.publish("acme", [[rec("b"), rec("c", {"v": 1}), rec("c", {"v": 2})]])
        assert isinstance(out[0], DuckMeshError)
        assert out[0].error_code == "IDEMPOTENCY_CONFLICT"
        # Both uses are in the refused request: no token of it was ever committed.
        assert out[0].context == {
            "record_index": 2,
            "first_record_index": 1,
            "idempotency_key": "c",
        }
        assert bus.latest_token("acme") == 1
        assert ok(bus.publish("acme", [[rec("b")]])[0]) == [Receipt(2, False)]

    def test_duplicates_across_requests_of_one_call(self, bus: IngestBus) -> None:
        out = bus.publish(
            "acme",
            [[rec("a")], [rec("a")], [rec("b", {"v": 1})], [rec("b", {"v": 2}), rec("c")]],
        )
        assert ok(out[0]) == [Receipt(1, False)]
        assert ok(out[1]) == [Receipt(1, True)]
        assert ok(out[2]) == [Receipt(2, False)]
        assert isinstance(out[3], DuckMeshError)
        assert out[3].error_code == "IDEMPOTENCY_CONFLICT"
        assert bus.latest_token("acme") == 2

    # -- claim / ack -----------------------------------------------------------

    def test_claim_nothing_when_nothing_is_pending(self, bus: IngestBus) -> None:
        assert self.claim(bus, "A") is None
        ok(bus.publish("acme", [[rec("a")]])[0])
        batch = self.claim(bus, "A")
        assert batch is not None
        bus.ack(batch)
        assert self.claim(bus, "A") is None
        assert self.claim(bus, "B") is None

    def test_claim_returns_records_in_token_order_after_committed_position(
        self, bus: IngestBus
    ) -> None:
        ok(bus.publish("acme", [[rec("a", {"n": 1}), rec("b", {"n": 2}, table="other")]])[0])
        ok(bus.publish("acme", [[rec("c", {"n": 3}, op="upsert")]])[0])
        batch = self.claim(bus, "A")
        assert batch is not None
        assert batch.after_token == 0
        assert batch.consumer_id == "A"
        assert batch_tokens(batch) == [1, 2, 3]
        assert batch.last_token == 3
        assert [(r.table_id, r.op, r.payload) for r in batch.records] == [
            (TABLE, "insert", '{"n":1}'),
            ("other", "insert", '{"n":2}'),
            (TABLE, "upsert", '{"n":3}'),
        ]
        assert all(r.schema_version == 1 and r.event_time is None for r in batch.records)
        bus.ack(batch)
        ok(bus.publish("acme", [[rec("d", {"n": 4}), rec("e", {"n": 5})]])[0])
        nxt = self.claim(bus, "A")
        assert nxt is not None
        assert nxt.after_token == 3
        assert batch_tokens(nxt) == [4, 5]

    def test_records_round_trip_exactly(self, bus: IngestBus) -> None:
        """Awkward text survives storage byte for byte (keys, tables, payloads, times)."""
        awkward = "tab\there\nnew\rcr back\\slash \\N \\. \\x00 'q' \"dq\" é 漢字 🦆 \x0b\x0c"
        when = dt.datetime(
            2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-5))
        )
        records = [
            rec(awkward, {"text": awkward, "n": 1}, table="t\tab\\le", event_time=when),
            rec("\\N", {"text": "\\N"}, op="upsert"),
            rec("plain", {"nested": {"a": [1, 2.5, None, True]}, "text": "\n"}),
        ]
        assert tokens(ok(bus.publish("ten\tant é", [records])[0])) == [1, 2, 3]
        # A retry finds the very same keys, tables and hashes again.
        assert ok(bus.publish("ten\tant é", [records])[0]) == [
            Receipt(1, True),
            Receipt(2, True),
            Receipt(3, True),
        ]
        batch = self.claim(bus, "A")
        assert batch is not None
        got = [(r.table_id, r.op, r.payload, r.event_time) for r in batch.records]
        assert got == [(r.table_id, r.op, r.payload, r.event_time) for r in records]
        assert all(r.schema_version == 1 for r in batch.records)
        bus.ack(batch)
        assert bus.committed_token("ten\tant é") == 3

    def test_claim_respects_limit(self, bus: IngestBus) -> None:
        ok(bus.publish("acme", [[rec(f"k{i}") for i in range(10)]])[0])
        seen: list[list[int]] = []
        for _ in range(10):  # bounded
            batch = self.claim(bus, "A", limit=4)
            if batch is None:
                break
            seen.append(batch_tokens(batch))
            bus.ack(batch)
        assert seen == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]

    def test_claim_respects_max_bytes(self, bus: IngestBus) -> None:
        # Multi-byte text: the budget is in bytes (UTF-8), not characters.
        records = [rec(f"m{i}", {"text": "é" * (10 * (i + 1))}) for i in range(5)]
        ok(bus.publish("acme", [records])[0])
        sizes = [len(r.payload.encode()) for r in records]
        budget = sizes[0] + sizes[1] + sizes[2] - 1  # two fit, three do not
        batch = self.claim(bus, "A", max_bytes=budget)
        assert batch is not None
        assert batch_tokens(batch) == [1, 2]
        assert sum(len(r.payload.encode()) for r in batch.records) <= budget
        bus.ack(batch)
        # A record larger than the budget still goes, alone, so the scope makes progress.
        alone = self.claim(bus, "A", max_bytes=1)
        assert alone is not None
        assert batch_tokens(alone) == [3]

    def test_ack_advances_committed_token(self, bus: IngestBus) -> None:
        ok(bus.publish("acme", [[rec(f"k{i}") for i in range(5)]])[0])
        assert bus.committed_token("acme") == 0
        batch = self.claim(bus, "A", limit=3)
        assert batch is not None
        assert bus.committed_token("acme") == 0  # claiming commits nothing
        bus.ack(batch)
        assert bus.committed_token("acme") == 3
        rest = self.claim(bus, "A")
        assert rest is not None
        assert rest.after_token == 3
        assert batch_tokens(rest) == [4, 5]
        bus.ack(rest)
        assert bus.committed_token("acme") == 5
        assert bus.latest_token("acme") == 5

    # -- quarantine and lag ---------------------------------------------------

    def test_quarantine_sets_records_aside_once_with_their_reason(self, bus: IngestBus) -> None:
        ok(bus.publish("acme", [[rec("a"), rec("b"), rec("c")]])[0])
        assert bus.quarantined("acme") == (0, [])
        batch = self.claim(bus, "A")
        assert batch is not None
        bus.quarantine(batch, [QuarantineEntry(1, TABLE, "bad a"), QuarantineEntry(3, TABLE, "c")])
        bus.quarantine(batch, [QuarantineEntry(1, TABLE, "again")])  # the first reason stays
        count, recent = bus.quarantined("acme")
        assert count == 2
        assert [(q["token"], q["table_id"], q["reason"]) for q in recent] == [
            (3, TABLE, "c"),
            (1, TABLE, "bad a"),
        ]
        assert recent[1]["idempotency_key"] == "a"
        assert bus.quarantined("acme", recent=1)[1][0]["token"] == 3
        assert bus.quarantined("other") == (0, [])

    def test_prune_deletes_only_committed_rows_past_the_window(self, bus: IngestBus) -> None:
        ok(bus.publish("acme", [[rec("a"), rec("b"), rec("c"), rec("d")]])[0])
        batch = self.claim(bus, "A", limit=3)
        assert batch is not None
        assert batch_tokens(batch) == [1, 2, 3]
        bus.quarantine(batch, [QuarantineEntry(2, TABLE, "bad b")])
        bus.ack(batch)
        # Within the window nothing goes.
        assert bus.prune("acme", window_s=3600.0, chunk_tokens=2).deleted == 0
        assert bus.retained("acme").records == 4
        pruned = bus.prune("acme", window_s=0.0, chunk_tokens=2)
        assert (pruned.deleted, pruned.pruned_token) == (2, 3)
        # Kept: the quarantined record (its report still names its key) and
        # the uncommitted one.
        assert bus.retained("acme").records == 2
        assert bus.retained("acme").bytes > 0
        assert bus.quarantined("acme")[1][0]["idempotency_key"] == "b"
        # A pruned key is new again; an uncommitted one is still a duplicate.
        assert ok(bus.publish("acme", [[rec("a"), rec("d")]])[0]) == [
            Receipt(5, False),
            Receipt(4, True),
        ]
        nxt = self.claim(bus, "A")
        assert nxt is not None
        assert batch_tokens(nxt) == [4, 5]
        assert bus.prune("acme", window_s=0.0, chunk_tokens=2).deleted == 0
        assert bus.retained("other").records == 0

    def test_advance_tokens_voids_a_range_and_renumbers_pending_records(
        self, bus: IngestBus
    ) -> None:
        ok(bus.publish("acme", [[rec("a"), rec("b"), rec("c")]])[0])
        batch = self.claim(bus, "A", limit=2)
        assert batch is not None
        bus.ack(batch)
        jump = bus.advance_tokens("acme", 100)
        assert (jump.committed_token, jump.issued_token) == (2, 3)
        assert (bus.committed_token("acme"), bus.latest_token("acme")) == (102, 103)
        # The pending record keeps its key under its new token; tokens go on after it.
        assert ok(bus.publish("acme", [[rec("c"), rec("d")]])[0]) == [
            Receipt(103, True),
            Receipt(104, False),
        ]
        with pytest.raises(DuckMeshError):
            bus.advance_tokens("acme", 2)  # must exceed the 2 pending tokens (103, 104)
        nxt = self.claim(bus, "B")  # the old consumer's lease is gone: anyone may claim
        assert nxt is not None
        assert batch_tokens(nxt) == [103, 104]
        bus.ack(nxt)
        # Pruning steps over the void range and counts nothing in it.
        pruned = bus.prune("acme", window_s=0.0, chunk_tokens=2)
        assert (pruned.deleted, pruned.pruned_token) == (4, 104)
        assert bus.retained("acme").records == 0

    def test_lag_and_ingested_at_follow_the_committed_position(self, bus: IngestBus) -> None:
        ok(bus.publish("acme", [[rec(f"k{i}") for i in range(4)]])[0])
        ok(bus.publish("beta", [[rec("x")]])[0])
        assert bus.lag() == {"acme": (4, 0), "beta": (1, 0)}
        batch = self.claim(bus, "A", limit=3)
        assert batch is not None
        bus.ack(batch)
        assert bus.lag()[batch.scope] == (4 if batch.scope == "acme" else 1, batch.last_token)
        when = bus.ingested_at({"acme": 4, "beta": 1})
        assert set(when) == {"acme", "beta"}
        assert all(t.tzinfo is not None for t in when.values())
        assert bus.ingested_at({"acme": 99}) == {}

    # -- leases and fencing ---------------------------------------------------

    def test_live_lease_excludes_other_consumers(
        self, bus: IngestBus, make_bus: Callable[[], IngestBus]
    ) -> None:
        other = make_bus()
        ok(bus.publish("acme", [[rec("a"), rec("b")]])[0])
        held = self.claim(bus, "A")
        assert held is not None
        assert self.claim(other, "B") is None
        ok(bus.publish("acme", [[rec("c")]])[0])  # new records do not free the scope
        assert self.claim(other, "B") is None
        # B may take another scope, never the held one.
        ok(bus.publish("beta", [[rec("a")]])[0])
        elsewhere = self.claim(other, "B")
        assert elsewhere is not None
        assert elsewhere.scope != held.scope
        assert batch_tokens(elsewhere) == [1]
        assert self.claim(other, "C") is None
        bus.ack(held)
        assert bus.committed_token("acme") == 2

    def test_nack_gives_the_scope_back(
        self, bus: IngestBus, make_bus: Callable[[], IngestBus]
    ) -> None:
        other = make_bus()
        ok(bus.publish("acme", [[rec("a"), rec("b")]])[0])
        first = self.claim(bus, "A")
        assert first is not None
        bus.nack(first, "test: commit failed")
        assert bus.committed_token("acme") == 0
        second = self.claim(other, "B")
        assert second is not None
        assert second.scope == first.scope
        assert second.records == first.records
        assert second.fence > first.fence
        with pytest.raises(LeaseLost):
            bus.ack(first)
        other.ack(second)
        assert bus.committed_token("acme") == 2

    def test_extend_lease_keeps_the_scope_past_the_first_lease(
        self, bus: IngestBus, make_bus: Callable[[], IngestBus]
    ) -> None:
        other = make_bus()
        ok(bus.publish("acme", [[rec("a")]])[0])
        held = self.claim(bus, "A", lease_s=SHORT_LEASE_S)
        assert held is not None
        # A reference scope claimed later with the same short lease, never extended:
        # once another consumer can take it, the held scope's first lease is over too.
        ok(bus.publish("beta", [[rec("b")]])[0])
        reference = self.claim(bus, "R", lease_s=SHORT_LEASE_S)
        assert reference is not None
        assert reference.scope != held.scope
        bus.extend_lease(held, LONG_LEASE_S)
        taken = poll_until(lambda: self.claim(other, "B"))
        assert taken.scope == reference.scope
        other.ack(taken)
        assert self.claim(other, "B") is None  # the extended scope is still A's
        bus.ack(held)
        assert bus.committed_token("acme") == 1
        with pytest.raises(LeaseLost):
            bus.extend_lease(reference, LONG_LEASE_S)  # R lost its scope to B

    def test_requeue_expired_frees_only_expired_leases(
        self, bus: IngestBus, make_bus: Callable[[], IngestBus]
    ) -> None:
        other = make_bus()
        ok(bus.publish("acme", [[rec("a"), rec("b")]])[0])
        live = self.claim(bus, "A", lease_s=LONG_LEASE_S)
        assert live is not None
        assert bus.requeue_expired() == 0
        bus.nack(live, "test")
        short = self.claim(bus, "A", lease_s=SHORT_LEASE_S)
        assert short is not None
        assert poll_until(bus.requeue_expired) == 1
        assert bus.requeue_expired() == 0
        with pytest.raises(LeaseLost):
            bus.ack(short)
        again = self.claim(other, "B")
        assert again is not None
        assert again.records == short.records
        assert again.fence > short.fence
        other.ack(again)
        assert bus.committed_token("acme") == 2

    def test_release_gives_back_the_scopes_of_a_consumer(
        self, bus: IngestBus, make_bus: Callable[[], IngestBus]
    ) -> None:
        other = make_bus()
        ok(bus.publish("acme", [[rec("a"), rec("b")]])[0])
        held = self.claim(bus, "A")
        assert held is not None
        assert bus.release("nobody") == 0
        assert bus.release("A") == 1
        assert bus.release("A") == 0
        taken = self.claim(other, "B")
        assert taken is not None
        assert taken.scope == held.scope
        assert taken.records == held.records
        with pytest.raises(LeaseLost):
            bus.ack(held)
        other.ack(taken)
        assert bus.committed_token("acme") == 2

    def test_ack_with_a_stale_fence_raises_lease_lost(self, bus: IngestBus) -> None:
        ok(bus.publish("acme", [[rec("a"), rec("b")]])[0])
        batch = self.claim(bus, "A")
        assert batch is not None
        stale = attrs.evolve(batch, fence=batch.fence - 1)
        with pytest.raises(LeaseLost):
            bus.ack(stale)
        with pytest.raises(LeaseLost):
            bus.extend_lease(stale, LONG_LEASE_S)
        assert bus.committed_token("acme") == 0
        bus.ack(batch)
        assert bus.committed_token("acme") == 2

    def test_expired_lease_is_taken_over_and_the_late_ack_is_refused(
        self, bus: IngestBus, make_bus: Callable[[], IngestBus]
    ) -> None:
        other = make_bus()
        ok(bus.publish("acme", [[rec("a", {"v": 1}), rec("b", {"v": 2})]])[0])
        stalled = self.claim(bus, "A", lease_s=SHORT_LEASE_S)
        assert stalled is not None
        # A stops renewing. B polls (bounded) until the lease has run out.
        taken = poll_until(lambda: self.claim(other, "B"))
        assert taken.scope == stalled.scope
        assert taken.fence > stalled.fence
        assert taken.after_token == stalled.after_token
        assert taken.records == stalled.records  # the new holder redoes the same records
        with pytest.raises(LeaseLost):
            bus.ack(stalled)
        with pytest.raises(LeaseLost):
            bus.extend_lease(stalled, LONG_LEASE_S)
        assert bus.committed_token("acme") == 0
        other.ack(taken)
        assert bus.committed_token("acme") == 2
        # Even after B is done, A's old batch stays refused.
        with pytest.raises(LeaseLost):
            bus.ack(stalled)
