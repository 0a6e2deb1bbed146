"""End to end through real HTTP: create, ingest, query with the token."""

from tests.fixtures import ORDERS, LiveServer


async def test_ingest_then_query_with_token(server: LiveServer) -> None:
    await server.create_table(ORDERS)
    r = await server.ingest(
        "orders",
        [
            {"idempotency_key": "a", "op": "upsert", "payload": {"order_id": 1, "status": "new"}},
            {"idempotency_key": "b", "op": "upsert", "payload": {"order_id": 2, "status": "new"}},
        ],
    )
    assert r.status_code == 200, r.text
    receipt = r.json()
    assert receipt["accepted_count"] == 2
    assert receipt["max_visibility_token"] == 2
    q = await server.query(
        "select order_id, status from orders order by 1",
        min_visibility_token=receipt["max_visibility_token"],
    )
    assert q.status_code == 200, q.text
    body = q.json()
    assert body["rows"] == [[1, "new"], [2, "new"]]
    assert body["max_visibility_token"] >= 2
