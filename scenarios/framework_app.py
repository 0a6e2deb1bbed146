"""The framework's own ceiling: a bare Quart-Trio app that reads the same POST
bodies as DuckMesh's ingest route and answers a constant (no auth, no
validation, no database). Served by Hypercorn with N worker processes:

    python -m hypercorn -k trio -w 2 -b 127.0.0.1:8099 scenarios.framework_app:app
"""

from __future__ import annotations

import json

from quart import request
from quart_trio import QuartTrio

app = QuartTrio("framework-ceiling")
ANSWER = json.dumps({"accepted_count": 1, "duplicate_count": 0, "max_visibility_token": 1})


@app.post("/v1/ingest/<table>")
async def ingest(table: str) -> tuple[str, int, dict[str, str]]:
    await request.get_data()
    return ANSWER, 200, {"Content-Type": "application/json"}
