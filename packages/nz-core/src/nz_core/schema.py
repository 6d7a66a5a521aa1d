"""The database schema (SPEC §7) as SQLAlchemy Core tables.

The tables live in the PostgreSQL schema ``gateway``. SQLite (embedded mode) has no
schemas, so engines for it translate ``gateway`` to none (:mod:`nz_core.database`);
the tables are otherwise the same. Constraints carry the invariants: limits are NULL or
at least 1, budgets NULL or at least 0, a key is revoked exactly when it has a
``revoked_at``, and a revocation must name an existing key.

Besides SPEC §7's tables there is ``key_changes``, an append-only log written by
triggers whenever a key's policy changes or it is revoked. Embedded mode polls it in
place of NOTIFY, and a PostgreSQL listener that reconnects reads it to catch up on
what it missed (SPEC §4.5).

``backends`` and ``model_policies`` (SPEC §4.10, §4.12) say where requests go and how
models stay loaded; on PostgreSQL every change to either sends
``pg_notify('backends_changed', '<table>:<name or model>')`` from a trigger, in the
writing transaction, whoever writes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

__all__ = [
    "SCHEMA",
    "UTCDateTime",
    "api_keys",
    "audit_log",
    "backends",
    "budget_usage",
    "budgets",
    "key_changes",
    "metadata",
    "model_policies",
    "prompt_log",
    "revocations",
    "tenants",
]

SCHEMA: Final = "gateway"

metadata = sa.MetaData(
    schema=SCHEMA,
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    },
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases.

    PostgreSQL keeps ``timestamptz``; SQLite has no timezone support, so values are
    stored as naive UTC and made aware again on the way out.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stamp = datetime.fromisoformat(value) if isinstance(value, str) else value
        if not isinstance(stamp, datetime):
            raise TypeError(f"expected a datetime, got {type(stamp).__name__}")
        if stamp.tzinfo is None:
            return stamp.replace(tzinfo=UTC)
        return stamp.astimezone(UTC)


JsonList = sa.JSON().with_variant(JSONB(), "postgresql")

# SQLite only auto-increments an INTEGER PRIMARY KEY, not a BIGINT one.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


# Scopes are stored sorted; ``residency`` never alone (nz_core.scopes.check_scopes).
_STORED_SCOPES: Final = ", ".join(
    f"'{scopes}'"
    for scopes in (
        "chat",
        "embeddings",
        "chat,embeddings",
        "chat,residency",
        "embeddings,residency",
        "chat,embeddings,residency",
    )
)


def _limit(name: str) -> sa.Column[int]:
    return sa.Column(
        name,
        sa.Integer,
        sa.CheckConstraint(f"{name} IS NULL OR {name} >= 1", name=f"{name}_positive"),
    )


def _now() -> sa.Column[datetime]:
    return sa.Column("created_at", UTCDateTime, nullable=False, server_default=sa.func.now())


tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    _limit("rpm"),
    _limit("tpm"),
    _limit("concurrent"),
    sa.Column("allow_all_models", sa.Boolean, nullable=False, server_default=sa.false()),
    # Normalised model names (``name:tag``) as a JSON list; JSONB on PostgreSQL so the
    # change trigger can compare old and new values.
    sa.Column("allowed_models", JsonList, nullable=False, server_default=sa.text("'[]'")),
    _now(),
    sa.CheckConstraint("length(name) BETWEEN 1 AND 64", name="name_length"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "tenant_id",
        BigId,
        sa.ForeignKey("tenants.id", ondelete="RESTRICT"),
        nullable=False,
        index=True,
    ),
    sa.Column("prefix", sa.String(12), nullable=False, unique=True),
    sa.Column("hash", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("scopes", sa.Text, nullable=False, server_default="chat,embeddings"),
    sa.Column("status", sa.Text, nullable=False, server_default="active"),
    _limit("rpm"),
    _limit("tpm"),
    _limit("concurrent"),
    sa.Column("prompt_log_enabled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("prompt_log_retention_days", sa.Integer),
    _now(),
    sa.Column("revoked_at", UTCDateTime),
    sa.Column("last_used_at", UTCDateTime),
    sa.CheckConstraint("length(prefix) = 12", name="prefix_length"),
    sa.CheckConstraint("length(name) BETWEEN 1 AND 128", name="name_length"),
    # Scopes are stored in one canonical order, so the allowed values are a closed set.
    sa.CheckConstraint(f"scopes IN ({_STORED_SCOPES})", name="scopes_known"),
    sa.CheckConstraint(
        "(status = 'active' AND revoked_at IS NULL)"
        " OR (status = 'revoked' AND revoked_at IS NOT NULL)",
        name="status_revoked_at",
    ),
    sa.CheckConstraint(
        "prompt_log_retention_days IS NULL OR prompt_log_retention_days >= 1",
        name="retention_positive",
    ),
)


def _budget(name: str) -> sa.Column[int]:
    return sa.Column(
        name,
        sa.BigInteger,
        sa.CheckConstraint(f"{name} IS NULL OR {name} >= 0", name=f"{name}_not_negative"),
    )


budgets = sa.Table(
    "budgets",
    metadata,
    sa.Column("key_id", BigId, sa.ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True),
    _budget("daily"),
    _budget("monthly"),
    _budget("total"),
)

budget_usage = sa.Table(
    "budget_usage",
    metadata,
    sa.Column("key_id", BigId, sa.ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("period", sa.Text, primary_key=True),
    sa.Column("period_start", UTCDateTime, primary_key=True),
    sa.Column("tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.CheckConstraint("period IN ('day', 'month', 'total')", name="period_known"),
    sa.CheckConstraint("tokens >= 0", name="tokens_positive"),
)

revocations = sa.Table(
    "revocations",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "key_prefix",
        sa.String(12),
        sa.ForeignKey("api_keys.prefix", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("revoked_at", UTCDateTime, nullable=False, server_default=sa.func.now()),
    sa.Column("revoked_by", sa.Text, nullable=False, server_default="unknown"),
    sa.Column("reason", sa.Text),
)

key_changes = sa.Table(
    "key_changes",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("key_prefix", sa.String(12), nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("changed_at", UTCDateTime, nullable=False, server_default=sa.func.now(), index=True),
    sa.CheckConstraint("kind IN ('revoked', 'policy')", name="kind_known"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    # Minted by the gateway (time-ordered), so a retried batch insert is idempotent.
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("request_id", sa.Text, nullable=False, index=True),
    sa.Column("ts", UTCDateTime, nullable=False),
    sa.Column("tenant_id", BigId, sa.ForeignKey("tenants.id", ondelete="RESTRICT")),
    sa.Column("key_prefix", sa.String(12)),
    sa.Column("endpoint", sa.Text, nullable=False),
    sa.Column("model", sa.Text),
    sa.Column("tokens_in", sa.Integer, nullable=False, server_default="0"),
    sa.Column("tokens_out", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status", sa.SmallInteger, nullable=False),
    sa.Column("latency_ms", sa.Integer, nullable=False),
    sa.Column("ttft_ms", sa.Integer),
    sa.Column("client_ip", sa.Text),
    sa.Column("stream", sa.Boolean, nullable=False),
    # The node that served the request; NULL when none did (refused before routing).
    sa.Column("backend", sa.Text),
    sa.CheckConstraint("tokens_in >= 0 AND tokens_out >= 0", name="tokens_positive"),
    sa.CheckConstraint("latency_ms >= 0", name="latency_positive"),
    # show-usage sums tokens per tenant over a period: an index-only scan on PostgreSQL.
    sa.Index(
        "ix_audit_log_tenant_ts",
        "tenant_id",
        "ts",
        postgresql_include=["tokens_in", "tokens_out"],
    ),
    # Per-key forensics and per-key usage.
    sa.Index(
        "ix_audit_log_key_ts",
        "key_prefix",
        "ts",
        postgresql_include=["tokens_in", "tokens_out"],
    ),
)

prompt_log = sa.Table(
    "prompt_log",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("key_id", BigId, sa.ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False),
    sa.Column("ts", UTCDateTime, nullable=False),
    sa.Column("request_body", sa.Text, nullable=False),
    sa.Column("response_text", sa.Text, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False, index=True),
)

backends = sa.Table(
    "backends",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    # Normalised (nz_core.backends.check_backend_url), so one node has one spelling.
    sa.Column("url", sa.Text, nullable=False, unique=True),
    sa.Column(
        "parallel",
        sa.Integer,
        sa.CheckConstraint("parallel >= 1", name="parallel_positive"),
        nullable=False,
        server_default="1",
    ),
    sa.Column("status", sa.Text, nullable=False, server_default="active"),
    _now(),
    sa.Column("updated_at", UTCDateTime, nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("length(name) BETWEEN 1 AND 64", name="name_length"),
    sa.CheckConstraint("status IN ('active', 'draining')", name="status_known"),
)

model_policies = sa.Table(
    "model_policies",
    metadata,
    # Normalised (``name:tag``), as requests are looked up.
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column(
        "num_ctx",
        sa.Integer,
        sa.CheckConstraint("num_ctx IS NULL OR num_ctx >= 1", name="num_ctx_positive"),
    ),
    sa.Column("updated_at", UTCDateTime, nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("length(model) >= 1", name="model_not_empty"),
)
