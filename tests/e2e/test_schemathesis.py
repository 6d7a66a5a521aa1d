"""Schemathesis against the gateway's own OpenAPI document (`GET /openapi.json`).

A real gateway (Granian) in front of the mock Ollama answers every generated case. Valid
bodies must be served (200), invalid ones refused with a 4xx, and every answer must have
a documented status, media type and, for JSON, body shape; never a 5xx.

The document is the gateway's, with three changes a schema cannot make for itself: the
`model` of every body (and the path) names a model the mock serves, since any other name
is the documented 403; and two rules that depend on the model or on more than a pattern
are kept by :func:`_within_what_the_backend_takes`. A request's choices stay within the
`MAX_CHOICES` setting (:func:`_within_the_choices`).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import pytest
import schemathesis
import sqlalchemy as sa
from schemathesis import Case
from schemathesis.engine import events
from schemathesis.schemas import BaseSchema

from nz_core.database import connect
from nz_core.schema import audit_log
from nz_proxy.openapi import openapi_document
from nz_proxy.settings import Settings
from tests.e2e.conftest import Deployment, unique

CHAT_MODEL: Final = "qwen3:8b"  # the mock's thinking model, so `think` is valid
EMBED_MODEL: Final = "all-minilm:latest"
MODELS: Final = {
    "ChatCompletionRequest": CHAT_MODEL,
    "CompletionRequest": CHAT_MODEL,
    "EmbeddingsRequest": EMBED_MODEL,
    "OllamaChatRequest": CHAT_MODEL,
    "OllamaGenerateRequest": CHAT_MODEL,
    "OllamaEmbedRequest": EMBED_MODEL,
    "OllamaEmbeddingsRequest": EMBED_MODEL,
}
INT64_MAX: Final = 2**63 - 1
MAX_CHOICES: Final = Settings().max_choices  # the gateway under test keeps the default
MAX_EXAMPLES: Final = 10  # per operation and generation mode, in the fuzzing phase
# The pattern `arguments` text must match; whether it decodes is only known by decoding.
ARGUMENTS: Final = re.compile(r"[ \t\n\r]*\{[\s\S]*\}[ \t\n\r]*")

CHECKS: Final = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    # The documented security holds (no key: 401), and undocumented methods get a 405
    # that names the allowed ones.
    "ignored_auth",
    "unsupported_method",
    "allow_header_conformance",
)


def _served_models_only(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name, model in MODELS.items():
        schemas[name]["properties"]["model"] = {"enum": [model]}
    for branch in schemas["OllamaShowRequest"]["anyOf"]:
        for name, spec in branch["properties"].items():
            if "pattern" in spec:  # the non-empty `model` or `name`
                branch["properties"][name] = {"enum": [CHAT_MODEL]}
    for parameter in document["paths"]["/v1/models/{model}"]["get"]["parameters"]:
        parameter["schema"] = {"enum": [CHAT_MODEL]}


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _within_what_the_backend_takes(value: object, dimensions: int) -> None:
    """Keep a valid body valid for the backend: `dimensions` at most the model's own
    (Ollama's 400 otherwise), and tool-call `arguments` text that decodes. Values a
    schema already calls invalid are left as they are."""
    if isinstance(value, list):
        for item in value:
            _within_what_the_backend_takes(item, dimensions)
        return
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        if (
            key == "dimensions"
            and isinstance(item, int | float)
            and not isinstance(item, bool)
            and dimensions < item <= INT64_MAX
            and float(item).is_integer()
        ):
            value[key] = dimensions
        elif (
            key == "arguments"
            and isinstance(item, str)
            and ARGUMENTS.fullmatch(item)
            and not _is_json_object(item)
        ):
            value[key] = "{}"
        else:
            _within_what_the_backend_takes(item, dimensions)


def _within_the_choices(body: object) -> None:
    """Keep a valid body's fan-out within ``MAX_CHOICES``: ``n`` times the prompts of a
    batch is a setting's bound, which no schema states."""
    if not isinstance(body, dict):
        return
    prompts = body.get("prompt")
    if isinstance(prompts, list) and all(isinstance(p, str) for p in prompts):
        body["prompt"] = prompts = prompts[:MAX_CHOICES]
    batch = len(prompts) if isinstance(prompts, list) and prompts else 1
    n = body.get("n")
    # JSON Schema's integers include 25.0, and so does the gateway.
    number = isinstance(n, int | float) and not isinstance(n, bool)
    if number and 1 <= n <= 128 and n == int(n) and batch * n > MAX_CHOICES:
        body["n"] = MAX_CHOICES // batch


@schemathesis.deserializer("application/x-ndjson")
def _ndjson(_ctx: schemathesis.DeserializationContext, response: schemathesis.Response) -> Any:
    """Every line must be JSON; the last one (the final frame) is held to the schema."""
    frames = [json.loads(line) for line in response.content.splitlines()]
    return frames[-1]


def _schema(url: str, key: str) -> BaseSchema:
    auth = {"Authorization": f"Bearer {key}"}
    document = httpx.get(url + "/openapi.json", timeout=30).raise_for_status().json()
    _served_models_only(document)
    shown = httpx.post(url + "/api/show", headers=auth, json={"model": EMBED_MODEL}, timeout=30)
    info = shown.raise_for_status().json()["model_info"]
    dimensions = next(v for k, v in info.items() if k.endswith(".embedding_length"))
    config = schemathesis.Config.from_dict(
        {
            "base-url": url,
            "headers": auth,
            "workers": 1,
            "request-timeout": 30,
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
            "phases": {
                "examples": {"enabled": False},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "checks": {
                "enabled": False,
                **{name: {"enabled": True} for name in CHECKS},
                # Stricter than schemathesis's defaults, which would pass a valid body
                # refused with a 403 or a 5xx.
                "positive_data_acceptance": {"enabled": True, "expected-statuses": ["200"]},
                "negative_data_rejection": {
                    "enabled": True,
                    "expected-statuses": ["400", "403", "404"],
                },
            },
            "output": {"sanitization": {"enabled": False}},
        }
    )
    schema = schemathesis.openapi.from_dict(document, config=config)

    @schema.hook
    def map_case(context: schemathesis.HookContext, case: Case) -> Case:
        _within_what_the_backend_takes(case.body, dimensions)
        _within_the_choices(case.body)
        # The two security schemes are alternatives: a request that presents both with
        # different keys is ambiguous and refused (SPEC §3), so a case carries one.
        if case.headers and "Authorization" in case.headers:
            case.headers.pop("x-api-key", None)
        return case

    return schema


@dataclass
class Run:
    cases: int = 0
    checked: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def _run(schema: BaseSchema) -> Run:
    """Coverage and fuzzing phases, through the engine `schemathesis run` uses; the
    failures as text. (Schemathesis's pytest loader for fixtures, `from_fixture`, reads
    `Node._nodeid`, which pytest 9 no longer has.)"""
    run = Run()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            run.cases += len(event.recorder.cases)
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    run.checked.add(check.name)
                    if check.failure_info is None:
                        continue
                    failure = check.failure_info.failure
                    interaction = event.recorder.interactions.get(case_id)
                    response = interaction.response if interaction is not None else None
                    answer = (
                        f"{response.status_code} {response.content[:300]!r}"
                        if response is not None
                        else "no response"
                    )
                    run.problems.append(
                        f"{event.label}: {failure.title}\n{failure.message}\n"
                        f"answered: {answer}\n{check.failure_info.code_sample}"
                    )
        elif isinstance(event, events.NonFatalError):
            run.problems.append(f"{event.label}: {event.info.error!r}")
        elif isinstance(event, events.FatalError):
            run.problems.append(f"fatal: {event.exception!r}")
    return run


# One storage mode is enough: the bodies and the answers do not depend on it.
@pytest.mark.parametrize("deployment", ["embedded"], indirect=True)
async def test_the_gateway_answers_as_its_openapi_document_says(deployment: Deployment) -> None:
    key = await deployment.key(allow_all=True)
    schema = _schema(deployment.url, key)
    run = await asyncio.to_thread(_run, schema)
    assert run.cases > 1000, run.cases  # every operation was exercised
    assert run.checked == set(CHECKS)  # and every check ran
    assert not run.problems, "\n\n".join(dict.fromkeys(run.problems))


async def test_the_document_is_served_without_a_key_and_never_audited(
    deployment: Deployment,
) -> None:
    probe, audited = unique("openapi"), unique("after")
    served = httpx.get(deployment.url + "/openapi.json", headers={"X-Request-ID": probe})
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/json"
    assert served.json() == openapi_document()
    again = httpx.get(deployment.url + "/openapi.json")
    assert again.content == served.content  # built once, then the same bytes
    assert httpx.head(deployment.url + "/openapi.json").content == b""
    assert httpx.post(deployment.url + "/openapi.json").status_code == 405
    # Rows are written in order: once the later (audited) 404 has its row, the
    # document's request would have had one too.
    assert httpx.get(deployment.url + "/nowhere", headers={"X-Request-ID": audited}).is_error
    found: set[str] = set()
    for _ in range(100):
        async with connect(deployment.engine) as conn:
            query = sa.select(audit_log.c.request_id).where(
                audit_log.c.request_id.in_([probe, audited])
            )
            found = set((await conn.execute(query)).scalars())
        if audited in found:
            break
        await asyncio.sleep(0.1)
    assert found == {audited}
    assert probe not in deployment.gateway.output()  # no request log line either
