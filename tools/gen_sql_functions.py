"""Print a draft of duckmesh/query/_functions.py from DuckDB's own catalog.

Run after a DuckDB upgrade when tests/query/test_function_allowlist.py fails:
``PYTHONPATH=$PWD python tools/gen_sql_functions.py > /tmp/draft.py``, then
review every name that moved (a human decides; the draft only proposes).
Names already classified in the committed module keep their group; new names
land in ``NEW_UNREVIEWED``, which the checker refuses.
"""

from __future__ import annotations

import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from duckmesh.query import _functions
from duckmesh.query.sandbox import QueryLimits, SnapshotDatabase

TABLE_KINDS = frozenset({"table", "table_macro", "pragma"})


def main() -> None:
    with tempfile.TemporaryDirectory() as tenant_dir:
        database = SnapshotDatabase([], allowed_dir=tenant_dir, limits=QueryLimits())
        catalog = database.function_catalog()
        database.close()
    scalars = _functions.ALLOWED_FUNCTIONS | set(_functions.REFUSED_FUNCTIONS)
    tables = _functions.ALLOWED_TABLE_FUNCTIONS | set(_functions.REFUSED_TABLE_FUNCTION_REASONS)
    new = sorted(
        f"{name} ({kind})"
        for name, kind in catalog
        if name not in (tables if kind in TABLE_KINDS else scalars)
    )
    print("NEW_UNREVIEWED = [")
    for line in textwrap.wrap(" ".join(repr(n) + "," for n in new), 96):
        print("    " + line)
    print("]")


if __name__ == "__main__":
    main()
