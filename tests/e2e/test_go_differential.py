"""The parser differential, closed (SPEC §3 "parser differential", §4.9).

Ollama binds request bodies with Go's ``encoding/json``: keys match struct tags
case-insensitively with Unicode simple folding (U+017F, the long s, is ``s``; U+212A,
the Kelvin sign, is ``k``), the last matching key wins, map keys (``options``, tool
arguments) match exactly, and whatever follows the first JSON value is ignored. A
gateway that checks one reading of a body and forwards bytes that Ollama reads another
way lets a tenant smuggle a model, a completion cap, a keep-alive or a context size past
its checks.

Each example here means one request (an endpoint, a model the tenant may or may not use,
a completion cap, ``num_ctx``, ``keep_alive``, ``stream``), spells it as a hostile client
would (random case and fold variants of keys, duplicate keys exact and folded with other
values, decoy fields nested in messages, options, tools and formats, escapes, number
spellings, trailing data), sends it through a real gateway to a real mock Ollama, and
decodes what the mock received with Ollama's own request types, compiled from Go
(``tests/differential/godecode``). What Go reads must be what the test meant and the
gateway checked; a request the gateway refuses must reach nobody.

The expectations live in one function each (:func:`expected_cap`,
:func:`expected_keep_alive_ns`, :func:`expected_num_ctx`, :func:`expected_stream`,
:func:`expected_status`), so a policy change (the residency clamp of §4.12) touches one
place.
"""

from __future__ import annotations

import base64
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nz_core import admin
from nz_mock_ollama.catalogue import model_from_name
from nz_proxy.settings import Settings
from tests.differential.godecode import GoDecoder, GoReading, build
from tests.e2e.conftest import Deployment

# The gateways under test run with the default settings (gateway_env does not set the cap),
# and the test keys' budget is far from spent: a request that names no cap gets the
# default, unclipped.
DEFAULT_CAP: Final = Settings().budget_default_completion_cap
BUDGET: Final = 10**15
FOREVER_NS: Final = 2**63 - 1  # Ollama's Duration for any negative keep_alive
SMUGGLED: Final = "qwen2.5:7b"  # installed in the mock, never allowed to the test tenant
TENANT_MODELS: Final = ("llama3.2", "acme/coder:1b", "all-minilm")
CHAT_ALLOWED: Final = ("llama3.2", "llama3.2:latest", "acme/coder:1b")
CHAT_DENIED: Final = ("qwen2.5:7b", "mistral", "qwen3:8b", "mistral:latest")
EMBED_ALLOWED: Final = ("all-minilm", "all-minilm:latest")
EMBED_DENIED: Final = ("nomic-embed-text", "nomic-embed-text:latest")


# -- endpoints -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    path: str
    upstream: str
    kind: Literal["chat", "generate", "embed", "show"]

    @property
    def openai(self) -> bool:
        return self.path.startswith("/v1/")

    @property
    def generates(self) -> bool:
        """A completion is capped (and reserved) only where one is generated."""
        return self.kind in ("chat", "generate")

    @property
    def streams(self) -> bool:
        """Whether Ollama's request type for the upstream path has a ``stream`` field."""
        return self.kind in ("chat", "generate")

    def __str__(self) -> str:
        return self.path


ENDPOINTS: Final = (
    Endpoint("/api/chat", "/api/chat", "chat"),
    Endpoint("/api/generate", "/api/generate", "generate"),
    Endpoint("/api/embed", "/api/embed", "embed"),
    Endpoint("/api/embeddings", "/api/embeddings", "embed"),
    Endpoint("/api/show", "/api/show", "show"),
    Endpoint("/v1/chat/completions", "/api/chat", "chat"),
    Endpoint("/v1/completions", "/api/generate", "generate"),
    Endpoint("/v1/embeddings", "/api/embed", "embed"),
)
BY_PATH: Final = {endpoint.path: endpoint for endpoint in ENDPOINTS}


# -- what a request means, and what Ollama must read from it -------------------------------


CapField = Literal["num_predict", "max_tokens", "max_completion_tokens"]


@dataclass(frozen=True)
class Meaning:
    """One request as the client means it (before any hostile spelling)."""

    endpoint: Endpoint
    model: str
    allowed: bool  # in the tenant's set
    num_predict: int | None = None  # the completion cap asked for, spelled as cap_field
    cap_field: CapField = "num_predict"  # options.num_predict, or OpenAI's names
    num_ctx: int | None = None
    keep_alive: int | float | str | None = None
    stream: bool | None = None
    show_by_name: bool = False  # /api/show's deprecated `name` instead of `model`


def expected_cap(meaning: Meaning) -> int | None:
    """``options.num_predict`` as Ollama must read it: the cap the gateway reserved.

    A positive cap the client asked for, else the default (the test keys' budget is too
    large to clip it). Embeddings and ``/api/show`` generate nothing: their options pass
    as sent.
    """
    if not meaning.endpoint.generates:
        return meaning.num_predict
    if meaning.num_predict is not None and meaning.num_predict > 0:
        return meaning.num_predict
    return DEFAULT_CAP


def expected_num_ctx(meaning: Meaning) -> int | None:
    """``options.num_ctx`` as Ollama must read it: as the client meant it, capped at the
    model's context length (SPEC §4.12; no size is pinned in these tests)."""
    if meaning.num_ctx is None or meaning.endpoint.upstream == "/api/show":
        return meaning.num_ctx  # /api/show loads nothing: no policy applies
    return min(meaning.num_ctx, model_from_name(meaning.model, 0).context_length)


def expected_keep_alive_ns(meaning: Meaning) -> int | None:
    """``keep_alive`` as Ollama's ``Duration`` must hold it (today: as meant)."""
    if meaning.keep_alive is None or meaning.endpoint.kind == "show":
        return None  # ShowRequest has no keep_alive
    return go_keep_alive_ns(meaning.keep_alive)


def expected_stream(meaning: Meaning) -> bool | None:
    """Whether Ollama streams: as asked, else Ollama's default (true) on the native
    surface and OpenAI's (false) on ``/v1``. None where the request type has no field."""
    if not meaning.endpoint.streams:
        return None
    if meaning.stream is not None:
        return meaning.stream
    return not meaning.endpoint.openai


def expected_status(meaning: Meaning, *, refused: bool) -> int:
    """400 for a body whose keys collide the way Go reads them (or with trailing data),
    else 403 for a model outside the tenant's set, else 200."""
    if refused:
        return 400
    return 200 if meaning.allowed else 403


def expected_reading(meaning: Meaning) -> dict[str, Any]:
    return {
        "error": None,
        "model": meaning.model,
        "num_predict": expected_cap(meaning),
        "num_ctx": expected_num_ctx(meaning),
        "keep_alive_ns": expected_keep_alive_ns(meaning),
        "stream": expected_stream(meaning),
    }


def meant_reading(meaning: Meaning) -> dict[str, Any]:
    """What an honest native body with this meaning is to Go: no gateway policy applied
    (the check of the test's own oracle)."""
    endpoint = meaning.endpoint
    keep_alive = meaning.keep_alive
    return {
        "error": None,
        "model": meaning.model,
        "num_predict": meaning.num_predict,
        "num_ctx": meaning.num_ctx,
        "keep_alive_ns": None if keep_alive is None else go_keep_alive_ns(keep_alive),
        "stream": (meaning.stream is not False) if endpoint.streams else None,
    }


def actual_reading(reading: GoReading, endpoint: Endpoint) -> dict[str, Any]:
    stream = reading.stream
    if stream is None and endpoint.streams:
        stream = True  # `stream` absent: Ollama streams
    return {
        "error": reading.error,
        "model": reading.model,
        "num_predict": reading.num_predict,
        "num_ctx": reading.num_ctx,
        "keep_alive_ns": reading.keep_alive_ns,
        "stream": stream,
    }


# Go's time.ParseDuration, for the durations the strategies write (and the unit table).
_UNIT_NS: Final = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART: Final = re.compile(r"([0-9]*)(?:\.([0-9]*))?(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def go_duration_ns(text: str) -> int:
    """Nanoseconds as Go's ``time.ParseDuration`` computes them (fractions through
    float64, as Go does), for well-formed durations."""
    rest, negative = text, False
    if rest[:1] in ("-", "+"):
        negative, rest = rest[0] == "-", rest[1:]
    if rest == "0":
        return 0
    total, pos = 0, 0
    while pos < len(rest):
        part = _DURATION_PART.match(rest, pos)
        assert part is not None, text
        unit = _UNIT_NS[part.group(3)]
        total += int(part.group(1) or 0) * unit
        digits = part.group(2) or ""
        if digits and int(digits):
            total += int(float(int(digits)) * (float(unit) / 10 ** len(digits)))
        pos = part.end()
    return -total if negative else total


def go_keep_alive_ns(value: int | float | str) -> int:
    """Ollama's ``Duration.UnmarshalJSON``: seconds as a number or a Go duration; any
    negative value is "forever"."""
    if isinstance(value, str):
        ns = go_duration_ns(value)
        return FOREVER_NS if ns < 0 else ns
    if value < 0:
        return FOREVER_NS
    return int(float(value) * 1e9)  # float64 arithmetic, truncated, as Go converts


# -- bodies as trees of key/value pairs (so a key may appear twice) ------------------------

# How the gateway and Go match an object's keys: a struct folds them, `options` is a map
# whose keys fold only to be refused (and never onto num_predict/num_ctx), any other map
# (tool arguments, schemas, values of unknown keys) takes them exactly.
Kind = Literal["struct", "options", "map"]
GOVERNED: Final = ("num_predict", "num_ctx")
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")


@dataclass
class Obj:
    kind: Kind
    pairs: list[tuple[str, Any]] = field(default_factory=list)

    def add(self, key: str, value: Any) -> Obj:
        self.pairs.append((key, value))
        return self

    def get(self, key: str) -> Any:
        return next((v for k, v in self.pairs if k == key), None)


def go_fold(key: str) -> str:
    """Equal for exactly the keys Go matches to one field, on the alphabet used here
    (ASCII, the long s, the Kelvin sign, and runes that fold onto nothing ASCII); lone
    surrogates read as U+FFFD."""
    key = _LONE_SURROGATE.sub("\ufffd", key)
    return key.replace("\u017f", "s").replace("\u212a", "k").upper()


def collides(value: Any) -> bool:
    """Whether the gateway must refuse the tree: a key sent twice in one object, keys
    that fold together in a struct or in ``options``, or an ``options`` key that folds
    onto a governed one without being it."""
    if isinstance(value, list):
        return any(collides(item) for item in value)
    if not isinstance(value, Obj):
        return False
    keys = [key for key, _ in value.pairs]
    if len(set(keys)) != len(keys):
        return True
    if value.kind != "map":
        folded = [go_fold(key) for key in keys]
        if len(set(folded)) != len(folded):
            return True
    if value.kind == "options":
        governed = {go_fold(name) for name in GOVERNED}
        if any(go_fold(key) in governed and key not in GOVERNED for key in keys):
            return True
    return any(collides(item) for _, item in value.pairs)


def objects(value: Any) -> Iterator[Obj]:
    """Every object of a tree, outermost first."""
    if isinstance(value, list):
        for item in value:
            yield from objects(item)
    elif isinstance(value, Obj):
        yield value
        for _, item in value.pairs:
            yield from objects(item)


# -- rendering: one meaning, many spellings ------------------------------------------------


@dataclass(frozen=True)
class Style:
    ascii_only: bool = False  # \u-escape everything beyond ASCII
    escape_mask: int = 0  # ASCII letter i of a string is \u-escaped when bit i % 16 is set
    space: str = ""  # between tokens
    number: Literal["plain", "fraction", "exponent"] = "plain"  # how integers are written


def render(value: Any, style: Style) -> str:
    sp = style.space
    if isinstance(value, Obj):
        items = (f"{render_string(k, style)}{sp}:{sp}{render(v, style)}" for k, v in value.pairs)
        return "{" + sp + f"{sp},{sp}".join(items) + sp + "}"
    if isinstance(value, list):
        return "[" + sp + f"{sp},{sp}".join(render(item, style) for item in value) + sp + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # 12, 12.0 and 12e0 are one number to Go's float64 and to the gateway.
        return {"plain": f"{value}", "fraction": f"{value}.0", "exponent": f"{value}e0"}[
            style.number
        ]
    if isinstance(value, float):
        return repr(value)
    assert isinstance(value, str)
    return render_string(value, style)


def render_string(text: str, style: Style) -> str:
    out = ['"']
    for i, ch in enumerate(text):
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")  # lone surrogates only exist as escapes
        elif code > 0x7F and style.ascii_only:
            if code > 0xFFFF:
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04X}")
            else:
                out.append(f"\\u{code:04X}")
        elif ch.isascii() and ch.isalpha() and style.escape_mask >> (i % 16) & 1:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


# -- strategies ----------------------------------------------------------------------------

_SPACES: Final = ("", " ", "\n", "\t", " \r\n ")


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in ``n`` draws (hypothesis favours the ends of integer ranges)."""
    return st.sampled_from([True] + [False] * (n - 1))


@st.composite
def durations(draw: st.DrawFn) -> str:
    """Well-formed Go durations: "5m", "1h30m", ".5s", "-1m" (forever), "0", "+2us"."""
    if draw(one_in(10)):
        return draw(st.sampled_from(["0", "-0", "+0"]))
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        whole = draw(st.sampled_from(["", "0", "1", "5", "90", "500"]))
        fraction = draw(st.sampled_from(["", ".", ".5", ".25", ".125", ".001"]))
        if not whole and fraction in ("", "."):
            whole = "1"  # a part needs a digit before or after the point
        parts.append(whole + fraction + draw(st.sampled_from(list(_UNIT_NS))))
    sign = draw(st.sampled_from(["", "", "+", "-"]))
    return sign + "".join(parts)


keep_alives: st.SearchStrategy[int | float | str] = st.one_of(
    st.integers(-10, 100_000),
    st.floats(-1e4, 1e6, allow_nan=False, allow_infinity=False),
    durations(),
)


@st.composite
def meanings(draw: st.DrawFn, endpoint: Endpoint | None = None) -> Meaning:
    endpoint = endpoint if endpoint is not None else draw(st.sampled_from(ENDPOINTS))
    allowed = not draw(one_in(5))
    pool: tuple[str, ...]
    if endpoint.kind == "embed":
        pool = EMBED_ALLOWED if allowed else EMBED_DENIED
    elif endpoint.kind == "show":
        pool = CHAT_ALLOWED + EMBED_ALLOWED if allowed else CHAT_DENIED + EMBED_DENIED
    else:
        pool = CHAT_ALLOWED if allowed else CHAT_DENIED
    cap_fields: list[CapField] = ["num_predict"]
    if endpoint.openai and endpoint.generates:
        cap_fields.append("max_tokens")
        if endpoint.kind == "chat":
            cap_fields.append("max_completion_tokens")
    cap_field = draw(st.sampled_from(cap_fields))
    # Ollama reads num_predict <= 0 as "no limit"; OpenAI's names must be positive.
    low = 1 if cap_field != "num_predict" else -2
    plain = endpoint.kind != "show"
    return Meaning(
        endpoint=endpoint,
        model=draw(st.sampled_from(pool)),
        allowed=allowed,
        num_predict=draw(st.none() | st.integers(low, 100_000)),
        cap_field=cap_field,
        num_ctx=draw(st.none() | st.integers(0, 131_072)),
        keep_alive=draw(st.none() | keep_alives) if plain else None,
        stream=draw(st.none() | st.booleans()) if endpoint.streams else None,
        show_by_name=endpoint.kind == "show" and draw(st.booleans()),
    )


def base_body(meaning: Meaning) -> Obj:
    """The request as an honest client writes it."""
    endpoint = meaning.endpoint
    top = Obj("struct").add("name" if meaning.show_by_name else "model", meaning.model)
    if endpoint.kind == "chat":
        top.add("messages", [Obj("struct").add("role", "user").add("content", "hi")])
    elif endpoint.kind == "generate" or endpoint.path == "/api/embeddings":
        top.add("prompt", "hi")
    elif endpoint.kind == "embed":
        top.add("input", "hi")
    options = Obj("options")
    if meaning.num_predict is not None:
        if meaning.cap_field == "num_predict":
            options.add("num_predict", meaning.num_predict)
        else:
            top.add(meaning.cap_field, meaning.num_predict)
    if meaning.num_ctx is not None:
        options.add("num_ctx", meaning.num_ctx)
    if options.pairs:
        top.add("options", options)
    if meaning.keep_alive is not None:
        top.add("keep_alive", meaning.keep_alive)
    if meaning.stream is not None:
        top.add("stream", meaning.stream)
    return top


@st.composite
def spelled(draw: st.DrawFn, key: str) -> str:
    """``key`` as Go still matches it to the same field: any case, U+017F for s, U+212A for k."""
    out = []
    for ch in key:
        if ch in "sS":
            out.append(draw(st.sampled_from(["s", "S", "\u017f"])))
        elif ch in "kK":
            out.append(draw(st.sampled_from(["k", "K", "\u212a"])))
        elif ch.isascii() and ch.isalpha():
            out.append(draw(st.sampled_from([ch.lower(), ch.upper()])))
        else:
            out.append(ch)
    return "".join(out)


def hostile_value(key: str, value: Any) -> Any:
    """What a smuggler puts in a second copy of ``key`` (differs from ``value``)."""
    match go_fold(key):
        case "MODEL" | "NAME":
            return SMUGGLED
        case "OPTIONS":
            return Obj("options").add("num_predict", -1).add("num_ctx", 1)
        case "KEEP_ALIVE":
            return -1
        case "STREAM":
            return value is not True
        case "MESSAGES":
            return [Obj("struct").add("role", "user").add("content", "smuggled")]
        case "NUM_PREDICT" | "MAX_TOKENS" | "MAX_COMPLETION_TOKENS":
            return -1 if value != -1 else 7
        case "NUM_CTX":
            return 1 if value != 1 else 2
    return "smuggled" if value != "smuggled" else "other"


def top_decoys(meaning: Meaning) -> dict[str, Any]:
    """Keys that alias no field of the request (Go and the gateway ignore them), each
    holding what a smuggler would want read."""
    decoys: dict[str, Any] = {
        "num_predict": -1,
        "num_ctx": 1,
        "keep-alive": -1,
        "keepalive": -1,
        "model ": SMUGGLED,
        "modelo": SMUGGLED,
        "mod\u0435l": SMUGGLED,  # U+0435, Cyrillic: folds onto nothing ASCII
        "model\u200b": SMUGGLED,
        "model\ud800": SMUGGLED,  # a lone surrogate, read as U+FFFD by both
        "streams": True,
        "option": Obj("map").add("num_predict", -1),
    }
    if not meaning.endpoint.openai:
        decoys["max_tokens"] = -1
    if not meaning.show_by_name:
        # /api/show reads `name` only when `model` is empty; elsewhere it is unknown.
        decoys["name"] = SMUGGLED
    return decoys


def nested_decoys() -> list[tuple[str, Any]]:
    """The request's own fields again, one level down, where neither reader looks."""
    return [
        ("model", SMUGGLED),
        ("keep_alive", -1),
        ("stream", True),
        ("options", Obj("map").add("num_predict", -1).add("num_ctx", 1)),
    ]


def tools() -> list[Obj]:
    weather = (
        Obj("struct")
        .add("type", "function")
        .add(
            "function",
            Obj("struct")
            .add("name", "get_weather")
            .add("description", "Weather in a city")
            .add(
                "parameters",
                Obj("struct")
                .add("type", "object")
                .add(
                    "properties",
                    Obj("map")
                    .add("city", Obj("struct").add("type", "string"))
                    .add("model", Obj("struct").add("type", "string").add("description", SMUGGLED)),
                )
                .add("required", ["city"]),
            )
            .add("model", SMUGGLED),
        )
    )
    return [weather]


def tool_call_turns() -> list[Obj]:
    """An assistant turn that called a tool (arguments are a map: exact keys, so `City`
    beside `city` is no collision) and the tool's answer."""
    arguments = Obj("map").add("city", "Paris").add("City", "Rome").add("model", SMUGGLED)
    call = Obj("struct").add(
        "function", Obj("struct").add("name", "get_weather").add("arguments", arguments)
    )
    return [
        Obj("struct").add("role", "assistant").add("content", "").add("tool_calls", [call]),
        Obj("struct").add("role", "tool").add("content", "sunny").add("tool_name", "get_weather"),
    ]


# Indices, not the pairs: each example builds (and mutates) objects of its own.
decoy_picks = st.lists(st.integers(0, len(nested_decoys()) - 1), max_size=3, unique=True)


@dataclass(frozen=True)
class Case:
    meaning: Meaning
    body: bytes
    refused: bool  # the gateway must answer 400 (colliding keys or trailing data)


@st.composite
def cases(draw: st.DrawFn, endpoint: Endpoint | None = None) -> Case:
    meaning = draw(meanings(endpoint))
    endpoint = meaning.endpoint
    top = base_body(meaning)
    options = top.get("options")
    if draw(st.booleans()):
        if options is None:
            options = Obj("options")
            top.add("options", options)
        options.add("temperature", 0.25)

    # Decoys nested where a field of the same name means nothing to either reader.
    if draw(st.booleans()):
        if options is None:
            options = Obj("options")
            top.add("options", options)
        for key, value in (nested_decoys()[i] for i in draw(decoy_picks)):
            options.add(key, value)
    messages = top.get("messages")
    if messages and draw(st.booleans()):
        for key, value in (nested_decoys()[i] for i in draw(decoy_picks)):
            messages[0].add(key, value)
    if endpoint.kind == "chat" and not endpoint.openai and draw(st.booleans()):
        top.add("tools", tools())
        assert isinstance(messages, list)
        messages[:0] = tool_call_turns()
    if endpoint.generates and not endpoint.openai and draw(st.booleans()):
        schema = Obj("map").add("type", "object")
        schema.add("properties", Obj("map").add("model", Obj("map").add("type", "string")))
        top.add("format", schema)
    if endpoint.openai and endpoint.generates and draw(st.booleans()):
        top.add("stream_options", Obj("struct").add("include_usage", True).add("model", SMUGGLED))
    if (
        endpoint.openai
        and meaning.cap_field != "num_predict"
        and meaning.num_predict is not None
        and draw(st.booleans())
    ):
        # OpenAI's cap wins over an options.num_predict sent beside it.
        if options is None:
            options = Obj("options")
            top.add("options", options)
        options.add("num_predict", -1)
    decoys = top_decoys(meaning)
    for key in draw(st.lists(st.sampled_from(sorted(decoys)), max_size=3, unique=True)):
        top.add(key, decoys[key])

    # Case and fold variants of the keys structs match by folding.
    for obj in list(objects(top)):
        if obj.kind == "struct":
            obj.pairs = [
                (draw(spelled(key)) if draw(st.booleans()) else key, value)
                for key, value in obj.pairs
            ]
    # Variants of option keys: exact to Go, so `NUM_PREDICT` is not `num_predict`.
    if options is not None and draw(one_in(6)):
        name = draw(st.sampled_from([*GOVERNED, "temperature"]))
        variant = draw(spelled(name))
        options.add(variant if variant != name else name.upper(), -1)

    # Second copies of keys, exact or folded, with other values, before or after (in
    # a quarter of the examples: each is refused, and the rest must be served).
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 0, 0, 1, 2]))):
        candidates = [obj for obj in objects(top) if obj.pairs]
        obj = draw(st.sampled_from(candidates))
        key, value = draw(st.sampled_from(obj.pairs))
        again = draw(spelled(key)) if obj.kind != "map" and draw(st.booleans()) else key
        position = draw(st.integers(0, len(obj.pairs)))
        obj.pairs.insert(position, (again, hostile_value(key, value)))

    # Top-level order is free (only the last of colliding keys would matter, and those
    # are refused).
    top.pairs = draw(st.permutations(top.pairs))

    style = Style(
        ascii_only=draw(st.booleans()),
        escape_mask=draw(st.just(0) | st.sampled_from([0x5555, 0xFFFF]) | st.integers(0, 0xFFFF)),
        space=draw(st.sampled_from(_SPACES)),
        number=draw(st.sampled_from(["plain", "plain", "fraction", "exponent"])),
    )
    text = draw(st.sampled_from(_SPACES)) + render(top, style) + draw(st.sampled_from(_SPACES))
    # Go reads the first value and ignores the rest; the gateway must refuse the rest.
    trailing = draw(st.sampled_from(["", f'{{"model":"{SMUGGLED}"}}', "x", "{}"]))
    trailing = trailing if draw(one_in(10)) else ""
    return Case(meaning, (text + trailing).encode(), collides(top) or bool(trailing))


# -- plain bodies for the examples ---------------------------------------------------------

# Bodies that need more than the example's fields to be valid requests.
_REQUIRED: Final = {
    "/api/chat": ',"messages":[{"role":"user","content":"hi"}]',
    "/api/generate": ',"prompt":"hi"',
    "/api/embed": ',"input":"hi"',
    "/api/show": "",
}
_MODEL: Final = {
    "/api/chat": "llama3.2",
    "/api/generate": "llama3.2",
    "/api/embed": "all-minilm",
    "/api/show": "llama3.2",
}
ISSUE_PATHS: Final = tuple(_REQUIRED)


def issue_body(path: str, fields: str) -> bytes:
    return f'{{"model":"{_MODEL[path]}"{_REQUIRED[path]}{fields}}}'.encode()


# -- the oracle, checked against Go alone --------------------------------------------------


def test_go_reads_the_reported_body_as_ollama_did(go_decoder: GoDecoder) -> None:
    # What made the report an attack: forwarded verbatim, this body is another model, no
    # completion limit and a model pinned for ever.
    body = issue_body(
        "/api/chat", f',"Model":"{SMUGGLED}","Options":{{"num_predict":-1}},"Keep_alive":-1'
    )
    reading = go_decoder.read("/api/chat", body)
    assert (reading.error, reading.model, reading.num_predict, reading.keep_alive_ns) == (
        None,
        SMUGGLED,
        -1,
        FOREVER_NS,
    )


NATIVE: Final = tuple(e for e in ENDPOINTS if not e.openai)


@given(case=st.sampled_from(NATIVE).flatmap(cases))
def test_every_accepted_spelling_means_to_go_what_the_test_means(
    go_decoder: GoDecoder, case: Case
) -> None:
    # The property below trusts that a spelling the test does not expect refused means
    # what the test meant. Go, given the client's own bytes, confirms it.
    if case.refused:
        return
    reading = go_decoder.read(case.meaning.endpoint.upstream, case.body)
    assert actual_reading(reading, case.meaning.endpoint) == meant_reading(case.meaning)


# -- the rig: a real gateway, the mock behind it, and Go reading what the mock got ---------


@dataclass
class Forwarded:
    path: str
    body: bytes


class Probe:
    """Sends bodies through the gateway and reads, with Go, what the mock received."""

    def __init__(self, deployment: Deployment, key: str, go: GoDecoder) -> None:
        self.gateway = httpx.Client(
            base_url=deployment.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        self.mock = httpx.Client(base_url=deployment.mock.url, timeout=30)
        self.go = go
        # Where the shared mock's record stands now: only what follows is this probe's.
        self.mark: int = self.mock.get("/_mock/requests").raise_for_status().json()["recorded"]

    def close(self) -> None:
        self.gateway.close()
        self.mock.close()

    def _received(self, after: int) -> tuple[list[Forwarded], int]:
        params = {"after": str(after)}
        answer = self.mock.get("/_mock/requests", params=params).raise_for_status().json()
        posts = [e for e in answer["requests"] if e["method"] == "POST"]  # not discovery's GETs
        assert all(entry["body"] is not None for entry in posts), "a body too large to keep"
        forwarded = [Forwarded(entry["path"], base64.b64decode(entry["body"])) for entry in posts]
        return forwarded, answer["recorded"]

    def send(self, path: str, body: bytes) -> tuple[httpx.Response, list[Forwarded]]:
        response = self.gateway.post(
            path, content=body, headers={"Content-Type": "application/json"}
        )
        forwarded, self.mark = self._received(after=self.mark)
        return response, forwarded

    def check(self, meaning: Meaning, body: bytes, *, refused: bool) -> int:
        """Send ``body`` (which means ``meaning``) and hold Go's reading to it; the status."""
        endpoint = meaning.endpoint
        response, forwarded = self.send(endpoint.path, body)
        if endpoint.upstream != "/api/show":
            # The gateway's own /api/show, for the model's context length (the cap on
            # num_ctx, SPEC §4.12), is not the client's body.
            forwarded = [sent for sent in forwarded if sent.path != "/api/show"]
        lines = [
            f"sent to {endpoint.path}: {body!r}",
            f"the gateway answered {response.status_code}: {response.text[:300]}",
            *(f"the mock received at {sent.path}: {sent.body!r}" for sent in forwarded),
        ]
        story = "\n".join(lines)
        # First the security property: whatever reached Ollama reads as what was checked.
        assert [sent.path for sent in forwarded] in ([], [endpoint.upstream]), story
        if forwarded:
            reading = self.go.read(endpoint.upstream, forwarded[0].body)
            story += f"\nGo read: {reading}"
            assert actual_reading(reading, endpoint) == expected_reading(meaning), story
            assert meaning.allowed, f"a model outside the tenant's set reached Ollama\n{story}"
        else:
            assert 400 <= response.status_code < 500, story
        # Then the contract around it: collisions are 400, other models 403, the rest served.
        assert response.status_code == expected_status(meaning, refused=refused), story
        assert bool(forwarded) == (response.status_code == 200), story
        return response.status_code


@pytest.fixture(scope="session")
def go_decoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GoDecoder]:
    """Ollama's reading of a body, from Go (built once per session; no Go, no pass)."""
    with GoDecoder(build(tmp_path_factory.mktemp("godecode"))) as decoder:
        yield decoder


@asynccontextmanager
async def probing(
    deployment: Deployment, go_decoder: GoDecoder, *, budget: int | None
) -> AsyncIterator[Probe]:
    """A fresh tenant allowed only some models, so a smuggled model would show."""
    key = await deployment.key(models=TENANT_MODELS)
    if budget is not None:
        await admin.set_budget(deployment.engine, key[:12], total=budget)
    probe = Probe(deployment, key, go_decoder)
    try:
        yield probe
    finally:
        probe.close()


@pytest.fixture(scope="module")
async def probe(deployment: Deployment, go_decoder: GoDecoder) -> AsyncIterator[Probe]:
    """A key with a budget: every completion it asks for is reserved, so capped."""
    async with probing(deployment, go_decoder, budget=BUDGET) as probe:
        yield probe


# -- the property --------------------------------------------------------------------------


async def test_ollama_reads_what_the_gateway_checked(probe: Probe) -> None:
    # Synchronous inside: the gateway and the mock are other processes, and hypothesis
    # drives a plain function.
    outcomes: Counter[int] = Counter()

    @given(case=cases())
    def check(case: Case) -> None:
        status = probe.check(case.meaning, case.body, refused=case.refused)
        outcomes[status] += 1

    check()
    # A property that only ever saw refusals would prove nothing: most examples must
    # reach Ollama, and each kind of refusal must have been tried.
    assert outcomes[200] >= max(5, sum(outcomes.values()) // 8), outcomes
    assert outcomes[400], outcomes
    assert outcomes[403], outcomes


# -- the reported attack, and its fold variants, as plain examples -------------------------


@pytest.mark.parametrize("path", ISSUE_PATHS)
@pytest.mark.parametrize(
    "smuggle",
    [
        # The report, verbatim: a second model spelled with a capital M.
        f',"Model":"{SMUGGLED}","Options":{{"num_predict":-1}},"Keep_alive":-1',
        f',"MODEL":"{SMUGGLED}"',
        f',"model":"{SMUGGLED}"',  # the same key twice
        f',"mode\\u006c":"{SMUGGLED}"',  # the same key twice, one escaped
        ',"options":{"num_ctx":2048},"OPTIONS":{"num_predict":-1}',
        ',"options":{"num_predict":12,"NUM_PREDICT":-1}',
        ',"options":{"Num_Predict":-1}',
        ',"options":{"num_ctx":2048,"Num_Ctx":1}',
        ',"options":{"top_k":4,"top_\\u212a":1}',  # exact to Go, but folds together
        ',"keep_alive":"5m","\\u212aeep_alive":-1',  # Kelvin sign
        ',"\u212aeep_alive":"5m","keep_alive":-1',  # the same, raw UTF-8, other order
        ',"stream":false,"\\u017ftream":true',  # long s
        ',"system":"a","\\u017fy\\u017ftem":"b"',
    ],
)
def test_the_reported_smuggle_and_its_fold_variants_are_refused(
    probe: Probe, path: str, smuggle: str
) -> None:
    meaning = Meaning(BY_PATH[path], _MODEL[path], allowed=True)
    probe.check(meaning, issue_body(path, smuggle), refused=True)


@pytest.mark.parametrize("path", ISSUE_PATHS)
def test_fold_variants_sent_once_are_read_as_the_gateway_checked(probe: Probe, path: str) -> None:
    # Each spelling alone is legitimate to Ollama; the gateway must read it the same way
    # (and cap the completion of the `Options` it found under another case).
    endpoint = BY_PATH[path]
    fields = ',"Options":{"num_predict":-1,"num_ctx":2048}'
    if endpoint.kind != "show":
        fields += ',"\u212aeep_alive":"1h30m"'
    if endpoint.streams:
        fields += ',"\\u017ftream":false'
    body = f'{{"MoDeL":"{_MODEL[path]}"{_REQUIRED[path]}{fields}}}'.encode()
    meaning = Meaning(
        endpoint,
        _MODEL[path],
        allowed=True,
        num_predict=-1,
        num_ctx=2048,
        keep_alive="1h30m" if endpoint.kind != "show" else None,
        stream=False if endpoint.streams else None,
    )
    probe.check(meaning, body, refused=False)


@pytest.mark.parametrize("path", ISSUE_PATHS)
def test_a_smuggled_model_nested_or_trailing_changes_nothing(probe: Probe, path: str) -> None:
    nested = (
        f',"options":{{"model":"{SMUGGLED}","keep_alive":-1}},"name":"{SMUGGLED}"'
        f',"num_predict":-1,"mod\\u0435l":"{SMUGGLED}"'
    )
    meaning = Meaning(BY_PATH[path], _MODEL[path], allowed=True)
    probe.check(meaning, issue_body(path, nested), refused=False)
    # Go stops at the first value; the gateway must not forward what follows it.
    trailing = issue_body(path, "") + f'{{"model":"{SMUGGLED}"}}'.encode()
    probe.check(meaning, trailing, refused=True)


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_key_with_a_lone_surrogate_sent_twice_is_refused_like_any_other(
    probe: Probe, path: str
) -> None:
    # The duplicate-key 400 names the key; a lone surrogate in it must not turn the
    # refusal into a 500 (it cannot be encoded as UTF-8 until it is read as U+FFFD).
    body = issue_body("/api/chat", f',"model\\ud800":"a","model\\ud800":"{SMUGGLED}"')
    probe.check(Meaning(BY_PATH[path], "llama3.2", allowed=True), body, refused=True)


def test_keep_alive_seconds_as_text_is_read_by_ollama_as_the_gateway_checked(
    probe: Probe,
) -> None:
    # The gateway's KeepAlive type takes "300" (seconds as text); Ollama's Duration
    # takes a string only through time.ParseDuration, which wants a unit: Ollama answers
    # 400 "time: missing unit in duration". The gateway must refuse it too, or forward
    # 300 seconds in a form Ollama reads as such.
    meaning = Meaning(BY_PATH["/api/chat"], "llama3.2", allowed=True, keep_alive=300)
    response, forwarded = probe.send("/api/chat", issue_body("/api/chat", ',"keep_alive":"300"'))
    if not forwarded:
        assert response.status_code == 400
        return
    reading = probe.go.read("/api/chat", forwarded[0].body)
    assert actual_reading(reading, meaning.endpoint) == expected_reading(meaning)


@pytest.mark.parametrize("num_predict", [None, -1, 0])
async def test_a_key_without_budget_or_tpm_is_capped_too(
    deployment: Deployment, go_decoder: GoDecoder, num_predict: int | None
) -> None:
    # The cap is forwarded as options.num_predict on every generation, whether or not the
    # key's tokens are counted: without it, `num_predict: -1` generates without end.
    async with probing(deployment, go_decoder, budget=None) as probe:
        meaning = Meaning(BY_PATH["/api/chat"], "llama3.2", allowed=True, num_predict=num_predict)
        options = "" if num_predict is None else f',"options":{{"num_predict":{num_predict}}}'
        probe.check(meaning, issue_body("/api/chat", options), refused=False)
