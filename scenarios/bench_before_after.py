"""Before/after: run one benchmark in two source trees, alternately, and print ratios.

A refactor must not cost speed. On a noisy 2-core machine two runs minutes
apart are not comparable, so this runs the same benchmark module in the
"before" tree (a ``git worktree`` of the old commit) and in this tree,
``--rounds`` times each, alternating, and compares medians of every numeric
figure the two JSON reports share::

    git worktree add /tmp/before e3fe6fa
    python -m scenarios.bench_before_after --before /tmp/before \\
        bench_ingest -- --seconds 5 --batches 1,10,1000

Each run's environment puts its own tree first on ``PYTHONPATH``; extra
``--env KEY=VALUE`` pairs (repeatable) go to the "after" runs only (e.g.
``DUCKMESH_API_WORKERS=1`` to compare equal process layouts).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from duckmesh_testing.bench.harness import write_report

HERE = Path(__file__).resolve().parent.parent


def run_once(tree: Path, module: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One run in ``tree`` (its cwd, so its report lands in ``tree/reports``)."""
    started = time.time()
    subprocess.run(
        [sys.executable, "-m", f"scenarios.{module}", *args],
        cwd=tree,
        env=dict(os.environ, PYTHONPATH=str(tree), **env),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    fresh = [p for p in (tree / "reports").glob("*.json") if p.stat().st_mtime >= started]
    data: dict[str, Any] = json.loads(max(fresh, key=lambda p: p.stat().st_mtime).read_text())
    return data


def flatten(value: Any, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf as ``path.to.leaf``; list items keyed by their
    ``batch``/``name`` field when they have one, else by index."""
    out: dict[str, float] = {}
    if isinstance(value, bool):
        return out
    if isinstance(value, int | float):
        out[prefix] = float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in ("machine", "at"):
                out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            label = item.get("batch", item.get("name", index)) if isinstance(item, dict) else index
            out.update(flatten(item, f"{prefix}[{label}]"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="the old source tree")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the after runs")
    ap.add_argument("module", help="a benchmark in scenarios/, e.g. bench_ingest")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    ns = ap.parse_args()
    if ns.rounds < 1:
        ap.error("--rounds must be at least 1")
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    after_env = dict(pair.split("=", 1) for pair in ns.env)
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for _ in range(ns.rounds):
        runs["before"].append(flatten(run_once(ns.before.resolve(), ns.module, args, {})))
        runs["after"].append(flatten(run_once(HERE, ns.module, args, after_env)))
    shared = sorted(set.intersection(*(set(r) for r in runs["before"] + runs["after"])))
    rows = []
    print(f"\n{ns.module} {' '.join(args)}: medians of {ns.rounds} alternating run(s) per tree")
    print(f"{'figure':<48} {'before':>12} {'after':>12} {'after/before':>13}")
    for key in shared:
        before = statistics.median(r[key] for r in runs["before"])
        after = statistics.median(r[key] for r in runs["after"])
        ratio = after / before if before else None
        rows.append({"figure": key, "before": before, "after": after, "ratio": ratio})
        shown = f"{ratio:>13.2f}" if ratio is not None else f"{'-':>13}"
        print(f"{key:<48} {before:>12,.2f} {after:>12,.2f} {shown}")
    write_report(
        f"before_after_{ns.module}",
        {"before_tree": str(ns.before), "args": args, "after_env": after_env, "figures": rows},
        HERE / "reports",
    )


if __name__ == "__main__":
    main()
