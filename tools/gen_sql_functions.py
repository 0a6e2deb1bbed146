"""Print a draft of duckmesh/query/_functions.py from DuckDB's own catalog.

Run after a DuckDB upgrade when tests/query/test_function_allowlist.py fails:
``PYTHONPATH=$PWD python tools/gen_sql_functions.py > /tmp/draft.py``, then
review every name that moved (a human decides; the draft only proposes).
Names already classified in the committed module keep their group; new names
land in ``NEW_UNREVIEWED``, which the checker refuses.
"""

from __future__ import annotations

import textwrap

from duckmesh.query import _functions
from duckmesh.query.sandbox import sandbox_functions


def main() -> None:
    known = {name for group in _functions.ALLOWED.values() for name in group[1]}
    known |= {name for group in _functions.REFUSED.values() for name in group[1]}
    new = sorted({name for name, _kind in sandbox_functions()} - known)
    print("NEW_UNREVIEWED = [")
    for line in textwrap.wrap(" ".join(repr(n) + "," for n in new), 96):
        print("    " + line)
    print("]")


if __name__ == "__main__":
    main()
