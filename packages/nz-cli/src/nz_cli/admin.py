"""The admin commands (docs/OPERATIONS.md): thin wrappers over :mod:`nz_core.admin` and
:mod:`nz_core.backend_admin`.

Each command validates its options, calls one ``nz_core`` operation and prints the
result, as text for people or as JSON with ``--json``. The full key is printed only by
``create-key``, once, alone on its line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_cli.runner import emit, fail, run_admin, settings
from nz_cli.values import parse_change
from nz_core import admin, backend_admin
from nz_core.admin import UNSET, ApiKey, Tenant
from nz_core.backends import Backend, Topology
from nz_core.budgets import Budgets, Period
from nz_core.errors import InvalidValue, NzError
from nz_core.limits import Limits
from nz_core.migrations import head_revision, upgrade
from nz_core.models import effective_models, parse_model_list
from nz_core.residency import ResidencyPolicy
from nz_core.scopes import format_scopes, parse_scopes

if TYPE_CHECKING:
    from nz_cli.probe import NodeReport

__all__ = ["register"]

Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
TenantName = Annotated[str, typer.Option("--tenant", help="Tenant name.", show_default=False)]
Prefix = Annotated[
    str, typer.Option("--prefix", help="Key prefix (nz_ + 9 characters).", show_default=False)
]
LimitOpt = Annotated[str | None, typer.Option(help="Whole number ≥ 1, or 'none'.")]
BudgetOpt = Annotated[str | None, typer.Option(help="Tokens (whole number ≥ 0), or 'none'.")]
BackendName = Annotated[str, typer.Option("--name", help="Backend name.", show_default=False)]


def _limits_text(limits: Limits) -> str:
    def show(value: int | None) -> str:
        return "none" if value is None else str(value)

    return f"rpm={show(limits.rpm)} tpm={show(limits.tpm)} concurrent={show(limits.concurrent)}"


def _tenant_json(tenant: Tenant) -> dict[str, Any]:
    return {
        "name": tenant.name,
        "rpm": tenant.limits.rpm,
        "tpm": tenant.limits.tpm,
        "concurrent": tenant.limits.concurrent,
        "allow_all_models": tenant.models.allow_all,
        "allowed_models": sorted(tenant.models.allowed),
        "created_at": tenant.created_at.isoformat(),
    }


def _tenant_line(tenant: Tenant) -> str:
    models = ",".join(sorted(tenant.models.allowed)) or "none"
    return (
        f"{tenant.name} {_limits_text(tenant.limits)}"
        f" allow_all_models={str(tenant.models.allow_all).lower()} models={models}"
    )


def _key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "prefix": key.prefix,
        "tenant": key.tenant,
        "name": key.name,
        "scopes": sorted(key.scopes),
        "status": key.status,
        "rpm": key.limits.rpm,
        "tpm": key.limits.tpm,
        "concurrent": key.limits.concurrent,
        "prompt_log_enabled": key.prompt_log_enabled,
        "prompt_log_retention_days": key.prompt_log_retention_days,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
    }


def _key_line(key: ApiKey) -> str:
    name = key.name.replace("\\", "\\\\").replace("'", "\\'")
    return f"{key.prefix} status={key.status} name='{name}' created={key.created_at.isoformat()}"


def _budget_json(prefix: str, budgets: Budgets) -> dict[str, Any]:
    return {
        "prefix": prefix,
        "daily": budgets.daily,
        "monthly": budgets.monthly,
        "total": budgets.total,
    }


def _limit_or_none(option: str, text: str | None) -> int | None:
    value = parse_change(option, text, minimum=1)
    return value if isinstance(value, int) else None


def migrate(as_json: Json = False) -> None:
    """Upgrade the database to the newest schema (safe to run again)."""
    config = settings()
    try:
        upgrade(config.database_url)
    except NzError as exc:
        fail(str(exc))
    revision = head_revision()
    emit(as_json, {"revision": revision}, [f"database is at revision {revision} (newest)"])


def create_tenant(
    name: Annotated[str, typer.Option("--name", help="Tenant name.", show_default=False)],
    rpm: LimitOpt = None,
    tpm: LimitOpt = None,
    concurrent: LimitOpt = None,
    allow_all_models: Annotated[
        bool, typer.Option("--allow-all-models", help="Let it use every discovered model.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Create a tenant (it may use no model until set-models, unless --allow-all-models)."""
    try:
        limits = Limits(
            _limit_or_none("--rpm", rpm),
            _limit_or_none("--tpm", tpm),
            _limit_or_none("--concurrent", concurrent),
        )
    except InvalidValue as exc:
        fail(str(exc))
    tenant = run_admin(
        lambda engine: admin.create_tenant(
            engine, name, limits=limits, allow_all_models=allow_all_models
        )
    )
    emit(as_json, _tenant_json(tenant), [f"created tenant {_tenant_line(tenant)}"])


def list_tenants(as_json: Json = False) -> None:
    """List every tenant with its limits and model policy."""
    tenants = run_admin(admin.list_tenants)
    emit(as_json, [_tenant_json(t) for t in tenants], [_tenant_line(t) for t in tenants])


def create_key(
    tenant: TenantName,
    name: Annotated[str, typer.Option("--name", help="Key name.", show_default=False)],
    scopes: Annotated[str, typer.Option(help="Comma-separated: chat, embeddings, residency.")] = (
        "chat,embeddings"
    ),
    rpm: LimitOpt = None,
    tpm: LimitOpt = None,
    concurrent: LimitOpt = None,
    as_json: Json = False,
) -> None:
    """Create a key and print it once. Store it now: it cannot be shown again."""
    try:
        parsed_scopes = parse_scopes(scopes)
        limits = Limits(
            _limit_or_none("--rpm", rpm),
            _limit_or_none("--tpm", tpm),
            _limit_or_none("--concurrent", concurrent),
        )
    except InvalidValue as exc:
        fail(str(exc))
    created = run_admin(
        lambda engine: admin.create_key(engine, tenant, name, scopes=parsed_scopes, limits=limits)
    )
    record = created.record
    if as_json:
        emit(True, {"key": created.key, "prefix": record.prefix}, [])
        return
    typer.echo(
        f"created key {record.prefix} '{record.name}' for tenant {record.tenant}"
        f" (scopes {format_scopes(record.scopes)}); it is shown only once:",
        err=True,
    )
    typer.echo(created.key)


def list_keys(tenant: TenantName, as_json: Json = False) -> None:
    """List a tenant's keys by prefix (never the keys themselves)."""
    keys = run_admin(lambda engine: admin.list_keys(engine, tenant))
    emit(as_json, [_key_json(k) for k in keys], [_key_line(k) for k in keys])


def revoke_key(prefix: Prefix, as_json: Json = False) -> None:
    """Revoke a key on every gateway within about a second."""

    async def revoke(engine: AsyncEngine) -> tuple[ApiKey, bool]:
        before = await admin.get_key(engine, prefix)
        after = await admin.revoke_key(engine, prefix, by="cli")
        return after, before.status == "revoked"

    key, already = run_admin(revoke)
    revoked_at = key.revoked_at.isoformat() if key.revoked_at else ""
    line = f"{key.prefix} {'was already' if already else ''} revoked at {revoked_at}"
    emit(as_json, _key_json(key), [" ".join(line.split())])


def set_limits(
    tenant: Annotated[str | None, typer.Option("--tenant", help="Tenant name.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Key prefix.")] = None,
    rpm: LimitOpt = None,
    tpm: LimitOpt = None,
    concurrent: LimitOpt = None,
    as_json: Json = False,
) -> None:
    """Set a tenant's or a key's limits; 'none' clears a key's value so it inherits."""
    if (tenant is None) == (key is None):
        fail("give exactly one of --tenant or --key")
    try:
        changes = {
            "rpm": parse_change("--rpm", rpm, minimum=1),
            "tpm": parse_change("--tpm", tpm, minimum=1),
            "concurrent": parse_change("--concurrent", concurrent, minimum=1),
        }
    except InvalidValue as exc:
        fail(str(exc))
    if all(value is UNSET for value in changes.values()):
        fail("nothing to change: give --rpm, --tpm or --concurrent")
    if key is not None:
        record = run_admin(lambda engine: admin.set_key_limits(engine, key, **changes))
        emit(as_json, _key_json(record), [f"{record.prefix} {_limits_text(record.limits)}"])
    elif tenant is not None:
        updated = run_admin(lambda engine: admin.set_tenant_limits(engine, tenant, **changes))
        emit(as_json, _tenant_json(updated), [_tenant_line(updated)])


def set_budget(
    key: Annotated[str, typer.Option("--key", help="Key prefix.", show_default=False)],
    daily: BudgetOpt = None,
    monthly: BudgetOpt = None,
    total: BudgetOpt = None,
    as_json: Json = False,
) -> None:
    """Set a key's token budgets per period; 'none' clears a period."""
    try:
        changes = {
            "daily": parse_change("--daily", daily, minimum=0),
            "monthly": parse_change("--monthly", monthly, minimum=0),
            "total": parse_change("--total", total, minimum=0),
        }
    except InvalidValue as exc:
        fail(str(exc))
    if all(value is UNSET for value in changes.values()):
        fail("nothing to change: give --daily, --monthly or --total")
    budgets = run_admin(lambda engine: admin.set_budget(engine, key, **changes))

    def show(value: int | None) -> str:
        return "none" if value is None else str(value)

    emit(
        as_json,
        _budget_json(key, budgets),
        [
            f"{key} daily={show(budgets.daily)} monthly={show(budgets.monthly)}"
            f" total={show(budgets.total)}"
        ],
    )


def set_models(
    tenant: TenantName,
    models: Annotated[
        str | None, typer.Option("--models", help="Comma-separated allowlist.")
    ] = None,
    allow_all: Annotated[
        bool | None,
        typer.Option(
            "--allow-all/--no-allow-all", help="Allow every discovered model, or only the list."
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Set a tenant's model allowlist, or switch allow_all_models."""
    if models is None and allow_all is None:
        fail("give --models, --allow-all or --no-allow-all")
    try:
        allowed = parse_model_list(models) if models is not None else None
    except InvalidValue as exc:
        fail(str(exc))
    updated = run_admin(
        lambda engine: admin.set_models(engine, tenant, models=allowed, allow_all=allow_all)
    )
    emit(as_json, _tenant_json(updated), [_tenant_line(updated)])


def set_prompt_log(
    key: Annotated[str, typer.Option("--key", help="Key prefix.", show_default=False)],
    enable: Annotated[
        bool | None, typer.Option("--enable/--disable", help="Opt the key in or out.")
    ] = None,
    retention_days: Annotated[
        str | None, typer.Option(help="Days to keep prompts (default: the gateway's).")
    ] = None,
    as_json: Json = False,
) -> None:
    """Opt a key in or out of prompt logging, with a retention in days."""
    if enable is None:
        fail("give --enable or --disable")
    if retention_days is not None and not enable:
        fail("--retention-days only applies with --enable")
    try:
        days = parse_change("--retention-days", retention_days, minimum=1)
    except InvalidValue as exc:
        fail(str(exc))
    record = run_admin(
        lambda engine: admin.set_prompt_log(
            engine, key, enabled=enable, retention_days=None if days is UNSET else days
        )
    )
    state = "enabled" if record.prompt_log_enabled else "disabled"
    retention = record.prompt_log_retention_days
    line = f"{record.prefix} prompt_log={state}"
    if record.prompt_log_enabled:
        line += f" retention_days={retention if retention is not None else 'default'}"
    emit(as_json, _key_json(record), [line])


def list_models(
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Show this tenant's effective set.")
    ] = None,
    as_json: Json = False,
) -> None:
    """List the models the active backends have (read-only /api/tags); with a tenant, the
    ones it may use."""
    from nz_cli.probe import probe_all  # only a few commands talk HTTP: keep it off startup

    config = settings()
    topology = run_admin(_topology)
    active = [backend for backend in topology.backends if backend.active]
    if not active:
        fail("no active backend: activate one (activate-backend) or add one (add-backend)")
    reports = asyncio.run(
        probe_all(active, residency=False, wait_s=config.upstream_connect_timeout_s + 5)
    )
    if not any(report.reachable for report in reports):
        backend, report = active[0], reports[0]
        fail(f"backend {backend.name} at {backend.url} did not list its models: {report.error}")
    discovered = sorted({model for report in reports for model in report.models})
    if tenant is None:
        emit(as_json, {"models": discovered}, discovered)
        return
    record = run_admin(lambda engine: admin.get_tenant(engine, tenant))
    allowed = sorted(effective_models(record.models, frozenset(discovered)))
    emit(as_json, {"tenant": tenant, "models": allowed}, allowed)


def show_usage(
    tenant: TenantName,
    key: Annotated[str | None, typer.Option("--key", help="Only this key (prefix).")] = None,
    period: Annotated[
        Period, typer.Option(help="Current calendar day or month, or all time.")
    ] = Period.DAY,
    as_json: Json = False,
) -> None:
    """Requests and tokens from the audit log for a tenant or one of its keys."""
    zone = settings().zone
    result = run_admin(lambda engine: admin.usage(engine, tenant, key=key, period=period, tz=zone))
    emit(
        as_json,
        {
            "tenant": tenant,
            "key": key,
            "period": period.value,
            "requests": result.requests,
            "tokens_in": result.tokens_in,
            "tokens_out": result.tokens_out,
        },
        [f"requests={result.requests} tokens_in={result.tokens_in} tokens_out={result.tokens_out}"],
    )


# -- backends and model policies (SPEC §4.10, §4.12) ----------------------------


async def _topology(engine: AsyncEngine) -> Topology:
    return await backend_admin.load_topology(engine, settings().configured_backends)


def _backend_json(backend: Backend) -> dict[str, Any]:
    return {
        "name": backend.name,
        "url": backend.url,
        "parallel": backend.parallel,
        "status": backend.status.value,
        "created_at": backend.created_at.isoformat() if backend.created_at else None,
        "updated_at": backend.updated_at.isoformat() if backend.updated_at else None,
    }


def _backend_line(backend: Backend) -> str:
    return f"{backend.name} {backend.url} parallel={backend.parallel} status={backend.status.value}"


def _report_json(report: NodeReport) -> dict[str, Any]:
    return {
        "reachable": report.reachable,
        "error": report.error,
        "models": list(report.models),
        "resident": [
            {
                "model": resident.model,
                "context_length": resident.context_length,
                "expires_at": resident.expires_at,
                "size_vram": resident.size_vram,
            }
            for resident in report.resident
        ],
    }


def _report_text(report: NodeReport) -> str:
    if not report.reachable:
        return f"unreachable ({report.error})"
    resident = [
        resident.model
        + (f"(ctx={resident.context_length})" if resident.context_length is not None else "")
        for resident in report.resident
    ]
    return f"models={','.join(report.models) or 'none'} resident={','.join(resident) or 'none'}"


def _policy_json(policy: ResidencyPolicy) -> dict[str, Any]:
    return {
        "model": policy.model,
        "num_ctx": policy.num_ctx,
        "updated_at": policy.updated_at.isoformat() if policy.updated_at else None,
    }


def _policy_line(policy: ResidencyPolicy) -> str:
    return f"{policy.model} num_ctx={'none' if policy.num_ctx is None else policy.num_ctx}"


def _positive(option: str, text: str) -> int:
    """A whole number ≥ 1 (these options have no 'none')."""
    stripped = text.strip()
    if not (stripped.isascii() and stripped.isdigit()) or int(stripped) < 1:
        fail(f"{option} must be a whole number ≥ 1, got '{text}'")
    return int(stripped)


def _no_active_warning(backends: Sequence[Backend]) -> None:
    if backends and not any(backend.active for backend in backends):
        typer.echo(
            "warning: no backend is active now; requests fail until one is activated"
            " (activate-backend) or added",
            err=True,
        )


def add_backend(
    name: BackendName,
    url: Annotated[
        str, typer.Option("--url", help="The node's Ollama URL (http/https).", show_default=False)
    ],
    parallel: Annotated[
        str, typer.Option(help="The node's OLLAMA_NUM_PARALLEL (whole number ≥ 1).")
    ] = "1",
    as_json: Json = False,
) -> None:
    """Add an Ollama node; every gateway routes to it within about a second."""
    slots = _positive("--parallel", parallel)
    backend = run_admin(lambda engine: backend_admin.add_backend(engine, name, url, parallel=slots))
    emit(as_json, _backend_json(backend), [f"added backend {_backend_line(backend)}"])


def list_backends(as_json: Json = False) -> None:
    """List the backends in force, with each node's models and loaded models."""
    from nz_cli.probe import probe_all  # only a few commands talk HTTP: keep it off startup

    topology = run_admin(_topology)
    reports = asyncio.run(probe_all(topology.backends))
    source = "environment" if topology.configured else "database"
    if topology.configured and not as_json:
        typer.echo(
            "note: gateway.backends is empty; OLLAMA_BASE_URL(S) define these backends",
            err=True,
        )
    emit(
        as_json,
        [
            _backend_json(backend) | {"source": source} | _report_json(report)
            for backend, report in zip(topology.backends, reports, strict=True)
        ],
        [
            f"{_backend_line(backend)} {_report_text(report)}"
            for backend, report in zip(topology.backends, reports, strict=True)
        ],
    )


def drain_backend(name: BackendName, as_json: Json = False) -> None:
    """Send no new requests to a backend; the ones in flight finish."""

    async def drain(engine: AsyncEngine) -> tuple[Backend, list[Backend]]:
        drained = await backend_admin.drain_backend(engine, name)
        return drained, await backend_admin.list_backends(engine)

    backend, remaining = run_admin(drain)
    _no_active_warning(remaining)
    emit(as_json, _backend_json(backend), [_backend_line(backend)])


def activate_backend(name: BackendName, as_json: Json = False) -> None:
    """Route new requests to a drained backend again."""
    backend = run_admin(lambda engine: backend_admin.activate_backend(engine, name))
    emit(as_json, _backend_json(backend), [_backend_line(backend)])


def remove_backend(name: BackendName, as_json: Json = False) -> None:
    """Remove a backend; requests in flight on it finish (drain it first to wait for them)."""

    async def remove(engine: AsyncEngine) -> tuple[Backend, list[Backend]]:
        removed = await backend_admin.remove_backend(engine, name)
        return removed, await backend_admin.list_backends(engine)

    backend, remaining = run_admin(remove)
    if not remaining:
        typer.echo(
            "note: gateway.backends is empty; OLLAMA_BASE_URL(S) define the backends again",
            err=True,
        )
    _no_active_warning(remaining)
    emit(as_json, _backend_json(backend), [f"removed backend {_backend_line(backend)}"])


def set_model_policy(
    model: Annotated[str, typer.Option("--model", help="Model name.", show_default=False)],
    num_ctx: Annotated[
        str | None,
        typer.Option("--num-ctx", help="Pin the context size every request gets (tokens ≥ 1)."),
    ] = None,
    no_num_ctx: Annotated[
        bool,
        typer.Option("--no-num-ctx", help="Unpin: clients' values, capped at the model's."),
    ] = False,
    as_json: Json = False,
) -> None:
    """Pin a model's context size (num_ctx), so clients cannot force reloads by varying it."""
    if (num_ctx is None) == (not no_num_ctx):
        fail("give exactly one of --num-ctx or --no-num-ctx")
    pinned = None if num_ctx is None else _positive("--num-ctx", num_ctx)
    policy = run_admin(lambda engine: backend_admin.set_model_policy(engine, model, num_ctx=pinned))
    emit(as_json, _policy_json(policy), [_policy_line(policy)])


def list_model_policies(as_json: Json = False) -> None:
    """List the models' residency policies (pinned context sizes)."""
    policies = run_admin(backend_admin.list_model_policies)
    emit(as_json, [_policy_json(p) for p in policies], [_policy_line(p) for p in policies])


def register(app: typer.Typer) -> None:
    """Add the admin commands to ``app``."""
    for command in (
        migrate,
        create_tenant,
        list_tenants,
        create_key,
        list_keys,
        revoke_key,
        set_limits,
        set_budget,
        set_models,
        set_prompt_log,
        list_models,
        show_usage,
        add_backend,
        list_backends,
        drain_backend,
        activate_backend,
        remove_backend,
        set_model_policy,
        list_model_policies,
    ):
        app.command(name=command.__name__.replace("_", "-"))(command)
