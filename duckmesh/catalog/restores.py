"""Restores from backup as the catalog records them (``restore_gap``, ADR 0016).

``duckmesh restore`` (``maintenance.restore``) makes the snapshot ids and
tokens a lost range may have used void and renumbers the records pending at
the backup; ``current_token`` applies that to a token a client holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from duckmesh.db import Conn
from duckmesh.errors import DuckMeshError


@attrs.frozen
class RestoreGap:
    """One restore of a tenant, as ``restore_gap`` holds it."""

    restored_at: str
    backup_snapshot_id: int
    committed_token: int
    issued_token: int
    snapshot_gap: int
    token_gap: int


def restore_gaps(conn: Conn, tenant: str) -> list[RestoreGap]:
    rows = conn.execute(
        "SELECT restored_at, backup_snapshot_id, committed_token, issued_token, snapshot_gap,"
        " token_gap FROM restore_gap WHERE tenant_id = %s ORDER BY position",
        (tenant,),
    ).fetchall()
    return [RestoreGap(r[0].isoformat(), *(int(v) for v in r[1:])) for r in rows]


def current_token(token: int, gaps: Sequence[RestoreGap]) -> int:
    """The token a receipt's ``token`` stands for now: renumbered if its record
    was pending at a restored backup; ``VISIBILITY_TOKEN_INVALID`` when it was
    issued after the backup (its write was lost)."""
    for gap in gaps:
        if gap.issued_token < token <= gap.issued_token + gap.token_gap:
            raise DuckMeshError(
                "VISIBILITY_TOKEN_INVALID",
                f"token {token} belongs to writes lost when the catalog was restored from a"
                f" backup at {gap.restored_at} (tokens {gap.issued_token + 1}.."
                f"{gap.issued_token + gap.token_gap} are void); write again and use the new"
                " receipt",
                token=token,
                void_from=gap.issued_token + 1,
                void_to=gap.issued_token + gap.token_gap,
                backup_snapshot_id=gap.backup_snapshot_id,
                restored_at=gap.restored_at,
            )
        if gap.committed_token < token <= gap.issued_token:
            token += gap.token_gap
    return token
