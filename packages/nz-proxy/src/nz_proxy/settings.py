"""The gateway's configuration (SPEC §8): one frozen, typed object built once.

:func:`load_settings` reads the environment (and a ``.env`` file beneath it), converts
and validates every value, and raises :class:`SettingsError` naming the variable at
fault. Nothing reads the environment anywhere else, so tests build their own
:class:`Settings` directly.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from dotenv import dotenv_values

from nz_core.backends import Backend, configured_backends
from nz_core.budgets import DEFAULT_IMAGE_TOKENS
from nz_core.database import DEFAULT_DATABASE_URL
from nz_core.errors import InvalidValue

__all__ = ["Settings", "SettingsError", "load_settings", "settings_reference"]


def _doc(text: str, **constraints: Any) -> msgspec.Meta:
    return msgspec.Meta(description=text, **constraints)


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every setting, with its default. Field ``x_y`` is read from variable ``X_Y``."""

    database_url: Annotated[
        str, _doc("SQLAlchemy URL; PostgreSQL (`postgresql+asyncpg://…`) in production.")
    ] = DEFAULT_DATABASE_URL
    redis_url: Annotated[
        str | None,
        _doc("Redis URL for shared state; unset means embedded in-process state (one process)."),
    ] = None
    ollama_base_url: Annotated[
        str, _doc("The Ollama backend (`node-1`) while `gateway.backends` is empty.")
    ] = "http://127.0.0.1:11434"
    ollama_base_urls: Annotated[
        tuple[str, ...],
        _doc(
            "Comma-separated Ollama backends (`node-1`, `node-2`, … in order), instead of "
            "`OLLAMA_BASE_URL`, while `gateway.backends` is empty."
        ),
    ] = ()
    backend_ps_refresh_s: Annotated[
        float, _doc("Seconds between polls of each backend's `/api/ps` (residency).", gt=0)
    ] = 2.0
    keep_alive_min_s: Annotated[
        float, _doc("Shortest `keep_alive` a client may ask for, in seconds.", ge=0)
    ] = 60.0
    keep_alive_max_s: Annotated[
        float,
        _doc(
            "Longest `keep_alive` a client may ask for (a negative one, forever, becomes "
            "this), unless its key has the `residency` scope.",
            gt=0,
        ),
    ] = 1800.0
    gateway_host: Annotated[str, _doc("Listen address.")] = "127.0.0.1"
    gateway_port: Annotated[int, _doc("Listen port.", ge=0, le=65535)] = 8080
    gateway_workers: Annotated[int, _doc("Granian worker processes.", ge=1, le=256)] = 1
    model_discovery_refresh_s: Annotated[
        float, _doc("Seconds between polls of the backend's `/api/tags`.", gt=0)
    ] = 60.0
    model_discovery_cache_ttl_s: Annotated[
        float, _doc("Seconds a discovered model list stays valid without a refresh.", gt=0)
    ] = 180.0
    key_cache_ttl_s: Annotated[
        float, _doc("Seconds a verified key stays cached (argon2 runs once per lifetime).", gt=0)
    ] = 300.0
    budget_default_completion_cap: Annotated[
        int, _doc("Completion tokens reserved when a request names no cap.", ge=1)
    ] = 4096
    budget_image_tokens: Annotated[
        int, _doc("Prompt tokens an image is reserved at (vision models spend hundreds).", ge=0)
    ] = DEFAULT_IMAGE_TOKENS
    budget_timezone: Annotated[str, _doc("Timezone of the daily and monthly budget periods.")] = (
        "UTC"
    )
    circuit_breaker_failures: Annotated[
        int, _doc("Consecutive upstream failures that open the circuit.", ge=1)
    ] = 5
    circuit_breaker_reset_s: Annotated[
        float, _doc("Seconds the circuit stays open before one probe.", gt=0)
    ] = 30.0
    upstream_connect_timeout_s: Annotated[
        float, _doc("Seconds to connect to the backend.", gt=0)
    ] = 5.0
    upstream_read_timeout_s: Annotated[
        float,
        _doc("Seconds to wait for the first byte and between bytes (model loading).", gt=0),
    ] = 300.0
    max_request_bytes: Annotated[int, _doc("Largest accepted request body.", ge=1024)] = 16777216
    max_choices: Annotated[
        int,
        _doc(
            "Most choices one `/v1` request may ask for (`n` times the prompts of a batch), "
            "each a call to the backend; the default takes a LangChain batch whole.",
            ge=1,
            le=128,
        ),
    ] = 20
    playground_enabled: Annotated[bool, _doc("Serve the browser playground at `/playground`.")] = (
        False
    )
    prompt_log_default_retention_days: Annotated[
        int, _doc("Prompt-log retention for keys that opted in without one.", ge=1)
    ] = 7
    trusted_proxies: Annotated[
        tuple[str, ...],
        _doc("Comma-separated CIDRs whose `X-Forwarded-For` is believed."),
    ] = ()
    log_format: Annotated[
        Literal["json", "console"], _doc("`json` in production, `console` for people.")
    ] = "json"
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], _doc("Lowest level logged.")
    ] = "info"
    concurrency_lease_s: Annotated[
        float,
        _doc("Lease of a concurrency slot; streams renew it, a crashed process's expires.", ge=2),
    ] = 30.0
    redis_max_connections: Annotated[
        int,
        _doc(
            "Redis connections per worker; beyond them requests queue briefly (then 503).",
            ge=1,
            le=10000,
        ),
    ] = 64
    audit_journal_grace_s: Annotated[
        float,
        _doc(
            "Seconds a request's journaled audit row may wait for its own process to write "
            "it before another replica does (the owner was killed).",
            ge=1,
        ),
    ] = 60.0
    listing_rpm: Annotated[
        int,
        _doc(
            "Calls per key per minute to the routes that list or describe models "
            "(`/api/tags`, `/api/ps`, `/api/show`, `/api/version`, `/v1/models`); they "
            "count against this, never the key's `rpm`.",
            ge=1,
        ),
    ] = 600
    audit_buffer_rows: Annotated[
        int, _doc("Audit rows held in memory while the database is away (then 503).", ge=10)
    ] = 10000

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.budget_timezone)

    @property
    def embedded_state(self) -> bool:
        """True when limit state lives in this process (no ``REDIS_URL``)."""
        return self.redis_url is None

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in self.trusted_proxies)

    @property
    def configured_backends(self) -> tuple[Backend, ...]:
        """The backends ``OLLAMA_BASE_URLS`` (else ``OLLAMA_BASE_URL``) define, in force
        while ``gateway.backends`` is empty (:func:`nz_core.backend_admin.load_topology`)."""
        return configured_backends(self.ollama_base_urls or (self.ollama_base_url,))


class SettingsError(ValueError):
    """A setting is invalid; ``variable`` names the environment variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


_FIELDS: Final = {name.upper(): name for name in Settings.__struct_fields__}


def _validate(settings: Settings) -> None:
    try:
        ZoneInfo(settings.budget_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(
            "BUDGET_TIMEZONE", f"unknown timezone '{settings.budget_timezone}'"
        ) from None
    for cidr in settings.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise SettingsError("TRUSTED_PROXIES", f"'{cidr}' is not a CIDR") from None
    for variable, url, schemes in (
        ("OLLAMA_BASE_URL", settings.ollama_base_url, ("http://", "https://")),
        ("REDIS_URL", settings.redis_url, ("redis://", "rediss://", "unix://")),
    ):
        if url is not None and not url.startswith(schemes):
            raise SettingsError(variable, f"must start with {' or '.join(schemes)}")
    try:
        configured_backends(settings.ollama_base_urls or (settings.ollama_base_url,))
    except InvalidValue as exc:
        variable = "OLLAMA_BASE_URLS" if settings.ollama_base_urls else "OLLAMA_BASE_URL"
        raise SettingsError(variable, str(exc)) from None
    if settings.keep_alive_min_s > settings.keep_alive_max_s:
        raise SettingsError("KEEP_ALIVE_MIN_S", "must be at most KEEP_ALIVE_MAX_S")
    if not settings.database_url.startswith(("postgresql", "postgres://", "sqlite")):
        raise SettingsError("DATABASE_URL", "must be a postgresql:// or sqlite:// URL")
    if settings.model_discovery_cache_ttl_s < settings.model_discovery_refresh_s:
        raise SettingsError(
            "MODEL_DISCOVERY_CACHE_TTL_S", "must be at least MODEL_DISCOVERY_REFRESH_S"
        )


def _raw_value(name: str, text: str) -> Any:
    if name in ("trusted_proxies", "ollama_base_urls"):
        return [part.strip() for part in text.split(",") if part.strip()]
    if name in ("log_format", "log_level"):
        return text.strip().lower()
    if name == "redis_url" and not text.strip():
        return None
    return text.strip()


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    env_file: Path | None = Path(".env"),
    **overrides: Any,
) -> Settings:
    """Build :class:`Settings` from ``environ`` (default ``os.environ``) over ``env_file``.

    ``overrides`` (field names, already typed) win over both, for CLI flags.

    Raises:
        SettingsError: a value does not parse or is out of range.
    """
    source: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        source.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    source.update(os.environ if environ is None else environ)
    raw = {_FIELDS[k]: _raw_value(_FIELDS[k], v) for k, v in source.items() if k in _FIELDS}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        variable = _variable_of(str(exc))
        value = raw.get(variable.lower())
        problem = str(exc).split(" - at ")[0]
        if value is not None:
            problem = f"invalid value {value!r} ({problem})"
        raise SettingsError(variable, problem) from None
    _validate(settings)
    return settings


def _variable_of(message: str) -> str:
    # msgspec names the failing field as "$.field_name" at the end of its message.
    if " - at `$." in message:
        field = message.rsplit(" - at `$.", 1)[1].split("`")[0].split("[")[0]
        return field.upper()
    return "settings"


def settings_reference() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, for the generated docs."""
    schema = msgspec.json.schema(Settings)["$defs"]["Settings"]["properties"]
    rows = []
    for name, prop in schema.items():
        default = prop.get("default")
        if default is None:
            shown = "unset"
        elif isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, list):
            shown = ",".join(default) or "empty"
        else:
            shown = str(default)
        rows.append((name.upper(), shown, prop.get("description", "")))
    return rows
