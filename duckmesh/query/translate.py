"""Natural language to SQL (``POST /v1/query/translate``) through a pluggable provider.

Why it exists: the spec's console and shell let a user ask a question in
words; a language model writes the SQL over the tenant's schema. The server
never runs what comes back: the SQL is returned to the caller, and only
after it passed the same SQL checker as every query (one read-only,
sandbox-safe SELECT), so a provider cannot make the server do anything a
query could not.

A provider is anything with ``async translate(question, schema_text) ->
str``; ``OpenAICompatible`` speaks the ``/chat/completions`` API that
OpenAI, vLLM, llama.cpp, Ollama and others offer, configured by
``DUCKMESH_TRANSLATE_URL`` / ``_MODEL`` / ``_API_KEY``. It uses the standard
library (in a thread), so the server needs no HTTP client library.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs
import trio

from duckmesh.config import Config
from duckmesh.errors import DuckMeshError
from duckmesh.query._sqlcheck import check_sql

__all__ = ["OpenAICompatible", "Translator", "provider_from_config", "schema_text", "translate"]

MAX_QUESTION_CHARS = 4000
MAX_ANSWER_BYTES = 1 << 20
_FENCE = re.compile(r"```(?:sql)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
SYSTEM_PROMPT = (
    "You translate questions into one DuckDB SQL SELECT statement over the tables below. "
    "Use only these tables and columns. Answer with the SQL only, no explanation."
)


class Translator(Protocol):
    """A natural-language-to-SQL provider."""

    @property
    def name(self) -> str: ...

    @property
    def model(self) -> str: ...

    async def translate(self, question: str, schema: str) -> str:
        """The provider's answer (SQL, possibly in a Markdown code fence)."""
        ...


@attrs.frozen
class OpenAICompatible:
    """``POST {url}/chat/completions`` of an OpenAI-compatible API."""

    url: str
    model: str
    api_key: str = attrs.field(default="", repr=False)
    timeout_s: float = 30.0
    name: str = "openai-compatible"

    async def translate(self, question: str, schema: str) -> str:
        body = {
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": f"{SYSTEM_PROMPT}\n\n{schema}"},
                {"role": "user", "content": question},
            ],
        }
        answer = await trio.to_thread.run_sync(self._post, json.dumps(body).encode())
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise _upstream("the provider's answer has no choices[0].message.content")
        return content

    def _post(self, data: bytes) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(  # noqa: S310 - the operator's configured http(s) URL
            f"{self.url}/chat/completions", data=data, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310
                raw = resp.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as exc:
            exc.close()  # its body holds the connection
            raise _upstream(f"the provider answered HTTP {exc.code}", status=exc.code) from None
        except (OSError, ValueError) as exc:
            raise _upstream(f"the provider could not be reached: {exc}") from None
        if len(raw) > MAX_ANSWER_BYTES:
            raise _upstream("the provider's answer is larger than 1 MiB")
        try:
            return json.loads(raw)
        except ValueError:
            raise _upstream("the provider's answer is not JSON") from None


def _upstream(message: str, **context: Any) -> DuckMeshError:
    return DuckMeshError("UPSTREAM_FAILED", f"translation failed: {message}", **context)


def provider_from_config(config: Config) -> Translator | None:
    """The configured provider; None while ``DUCKMESH_TRANSLATE_URL`` is empty."""
    if not config.translate_url:
        return None
    return OpenAICompatible(
        url=config.translate_url,
        model=config.translate_model,
        api_key=config.translate_api_key,
        timeout_s=config.translate_timeout_ms / 1000.0,
    )


def schema_text(tables: Sequence[Mapping[str, Any]]) -> str:
    """The tables as CREATE TABLE statements, the form models know best."""
    out = []
    for table in tables:
        columns = ", ".join(f'"{c["name"]}" {c["type"]}' for c in table["columns"])
        key = table.get("primary_key") or []
        if key:
            columns += ", PRIMARY KEY (" + ", ".join(f'"{k}"' for k in key) + ")"
        out.append(f'CREATE TABLE "{table["name"]}" ({columns});')
    return "\n".join(out) or "-- (no tables yet)"


def extract_sql(answer: str) -> str:
    """The SQL of an answer: the first code fence's content, or the whole text."""
    fenced = _FENCE.search(answer)
    sql = (fenced.group(1) if fenced else answer).strip()
    return sql.rstrip(";").strip()


async def translate(
    provider: Translator, question: str, tables: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Ask ``provider``; return its SQL once the SQL checker accepts it."""
    if not question.strip() or len(question) > MAX_QUESTION_CHARS:
        raise DuckMeshError(
            "VALIDATION_FAILED",
            f"question must be 1 to {MAX_QUESTION_CHARS} characters",
            field="question",
        )
    sql = extract_sql(await provider.translate(question, schema_text(tables)))
    if not sql:
        raise _upstream("the provider answered no SQL")
    try:
        await trio.to_thread.run_sync(check_sql, sql)
    except DuckMeshError as exc:
        raise DuckMeshError(
            "SQL_REJECTED",
            f"the provider's SQL did not pass the SQL checker ({exc.error_code}: {exc.message});"
            " it was not run",
            sql=sql,
            reason=exc.error_code,
        ) from None
    return {"sql": sql, "provider": provider.name, "model": provider.model}
