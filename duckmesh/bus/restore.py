"""After a restore: move a tenant's token counter past the lost range.

The tokens a lost range may have issued (after the backup's counter) are
made void by advancing the counter by ``gap``. Records still pending at the
backup (above the committed position) are renumbered by the same ``gap``, so
the tokens stay gapless from the committed position (the claim walks them
without holes) and the committed position moves by ``gap`` too; the catalog
watermark moves with it in the restore snapshot (ADR 0016). The scope's
lease is dropped and its fence bumped: nothing from before the restore can
ack.
"""

from __future__ import annotations

from duckmesh.bus.protocol import TokenJump
from duckmesh.db import Conn
from duckmesh.errors import DuckMeshError


def advance_tokens(conn: Conn, tenant_id: str, last: int, gap: int) -> TokenJump:
    """With the tenant's counter row locked at ``last``: renumber and advance."""
    row = conn.execute(
        "SELECT acked_token FROM bus_scope WHERE scope = %s FOR UPDATE", (tenant_id,)
    ).fetchone()
    acked = int(row[0]) if row else 0
    if gap <= last - acked:
        raise DuckMeshError(
            "VALIDATION_FAILED",
            f"token gap {gap} must exceed the {last - acked} tokens pending at the backup",
            token_gap=gap,
            pending=last - acked,
        )
    args = {"t": tenant_id, "acked": acked, "gap": gap}
    conn.execute(
        "UPDATE bus_record SET token = token + %(gap)s WHERE tenant_id = %(t)s"
        " AND token > %(acked)s",
        args,
    )
    conn.execute(
        "UPDATE bus_batch SET first_token = first_token + %(gap)s,"
        " last_token = last_token + %(gap)s WHERE tenant_id = %(t)s AND first_token > %(acked)s",
        args,
    )
    conn.execute(
        "UPDATE bus_row_key SET token = token + %(gap)s WHERE tenant_id = %(t)s"
        " AND token > %(acked)s",
        args,
    )
    conn.execute(
        "UPDATE bus_upload SET first_token = first_token + %(gap)s,"
        " last_token = last_token + %(gap)s WHERE tenant_id = %(t)s AND first_token > %(acked)s",
        args,
    )
    conn.execute(
        "UPDATE bus_token_counter SET last_token = last_token + %(gap)s WHERE tenant_id = %(t)s",
        args,
    )
    conn.execute(
        "UPDATE bus_scope SET acked_token = acked_token + %(gap)s, owner = NULL,"
        " lease_until = NULL, fence = fence + 1 WHERE scope = %(t)s",
        args,
    )
    return TokenJump(committed_token=acked, issued_token=last)
