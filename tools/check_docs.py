"""Docs check (tox -e docs): the docs stay true to the code.

Fails when a relative link in README.md or docs/ points nowhere, when a
configuration field has no entry in docs/CONFIGURATION.md, or when a route of
the OpenAPI document is missing from docs/API.md.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from duckmesh.config import Config, env_name  # noqa: E402

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def main() -> int:
    problems: list[str] = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in LINK.findall(doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                problems.append(f"{doc.relative_to(ROOT)}: broken link {target}")
    config_doc = (ROOT / "docs" / "CONFIGURATION.md").read_text()
    for field in attrs.fields(Config):
        if env_name(field.name) not in config_doc:
            problems.append(f"docs/CONFIGURATION.md: {env_name(field.name)} is not documented")
    api_doc = (ROOT / "docs" / "API.md").read_text()
    spec = json.loads((ROOT / "duckmesh" / "api" / "openapi.json").read_text())
    for path, ops in spec.get("paths", {}).items():
        for method in ops:
            if f"{method.upper()} {path}" not in api_doc:
                problems.append(f"docs/API.md: {method.upper()} {path} is not documented")
    for p in problems:
        print(p)
    print(f"docs check: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
