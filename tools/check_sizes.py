"""Size check: no function over 80 lines, no module over 500 (issue 11).

``python tools/check_sizes.py [PATH ...]`` (default ``duckmesh``) prints each
function or module over its bound and exits 1 when there is one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def oversized(paths: list[Path]) -> list[str]:
    problems = []
    for root in paths:
        for path in [root] if root.suffix == ".py" else sorted(root.rglob("*.py")):
            text = path.read_text()
            lines = len(text.splitlines())
            if lines > MAX_MODULE_LINES:
                problems.append(f"{path}: module of {lines} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        problems.append(f"{path}:{node.lineno}: {node.name} has {length} lines")
    return problems


def main(argv: list[str]) -> int:
    problems = oversized([Path(a) for a in argv] or [Path("duckmesh")])
    print("\n".join(problems) or "ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
