"""``POST /v1/query/translate``: a question in words -> SQL over the tenant's
schema, from the configured provider (``query.translate``); never run here.

The provider is the one installed on the app (``install_translator``: any
``Translator``), else the OpenAI-compatible one of ``DUCKMESH_TRANSLATE_*``;
with neither the route answers 404 NOT_CONFIGURED.
"""

from __future__ import annotations

from quart import Blueprint, Quart, Response, current_app

from duckmesh.api.context import api, require
from duckmesh.api.http import Principal, json_body, json_response
from duckmesh.api.routes.query import describe_schema
from duckmesh.errors import DuckMeshError
from duckmesh.query.translate import Translator, provider_from_config, translate

bp = Blueprint("translate", __name__)
_EXTENSION = "duckmesh.translator"


def install_translator(app: Quart, translator: Translator) -> None:
    """Use ``translator`` instead of the configured provider (a plug-in point)."""
    app.extensions[_EXTENSION] = translator


def _translator() -> Translator:
    if _EXTENSION not in current_app.extensions:
        current_app.extensions[_EXTENSION] = provider_from_config(api().rt.config)
    translator: Translator | None = current_app.extensions[_EXTENSION]
    if translator is None:
        raise DuckMeshError(
            "NOT_CONFIGURED",
            "translation is not configured on this server: set DUCKMESH_TRANSLATE_URL "
            "(an OpenAI-compatible API) and DUCKMESH_TRANSLATE_MODEL",
            setting="DUCKMESH_TRANSLATE_URL",
        )
    return translator


@bp.post("/v1/query/translate")
@require("query_reader")
async def translate_question(p: Principal) -> Response:
    translator = _translator()
    body = await json_body()
    question = body.get("question") if isinstance(body, dict) else None
    if not isinstance(question, str):
        raise DuckMeshError(
            "VALIDATION_FAILED", 'the body must be {"question": "..."}', field="question"
        )
    schema = await describe_schema(api().rt.db, p.tenant_id)
    answer = await translate(translator, question, schema["tables"])
    return json_response({**answer, "snapshot_id": schema["snapshot_id"]})
