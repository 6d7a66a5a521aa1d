"""Initial schema: tenants, keys, budgets, the ledger, revocations, audit and prompt logs.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)
JsonList = sa.JSON().with_variant(JSONB(), "postgresql")

# Columns whose change alters what the gateway caches for a key (SPEC §4.5).
KEY_POLICY_COLUMNS = (
    "scopes",
    "status",
    "rpm",
    "tpm",
    "concurrent",
    "prompt_log_enabled",
    "prompt_log_retention_days",
)
TENANT_POLICY_COLUMNS = ("rpm", "tpm", "concurrent", "allow_all_models", "allowed_models")


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _limit(name: str, table: str) -> sa.Column[int]:
    return sa.Column(
        name,
        sa.Integer,
        sa.CheckConstraint(f"{name} IS NULL OR {name} >= 1", name=f"ck_{table}_{name}_positive"),
    )


def _budget(name: str) -> sa.Column[int]:
    return sa.Column(
        name,
        sa.BigInteger,
        sa.CheckConstraint(
            f"{name} IS NULL OR {name} >= 0", name=f"ck_budgets_{name}_not_negative"
        ),
    )


def upgrade() -> None:
    schema = "gateway" if _postgres() else None
    fk = "gateway." if schema else ""

    op.create_table(
        "tenants",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False),
        _limit("rpm", "tenants"),
        _limit("tpm", "tenants"),
        _limit("concurrent", "tenants"),
        sa.Column("allow_all_models", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("allowed_models", JsonList, nullable=False, server_default=sa.text("'[]'")),
        sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 64", name="ck_tenants_name_length"),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
        sa.UniqueConstraint("name", name="uq_tenants_name"),
        schema=schema,
    )
    op.create_table(
        "api_keys",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("prefix", sa.String(12), nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("scopes", sa.Text, nullable=False, server_default="chat,embeddings"),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        _limit("rpm", "api_keys"),
        _limit("tpm", "api_keys"),
        _limit("concurrent", "api_keys"),
        sa.Column("prompt_log_enabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("prompt_log_retention_days", sa.Integer),
        sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.Column("revoked_at", Timestamp),
        sa.Column("last_used_at", Timestamp),
        sa.CheckConstraint("length(prefix) = 12", name="ck_api_keys_prefix_length"),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 128", name="ck_api_keys_name_length"),
        sa.CheckConstraint(
            "scopes IN ('chat', 'embeddings', 'chat,embeddings')", name="ck_api_keys_scopes_known"
        ),
        sa.CheckConstraint(
            "(status = 'active' AND revoked_at IS NULL)"
            " OR (status = 'revoked' AND revoked_at IS NOT NULL)",
            name="ck_api_keys_status_revoked_at",
        ),
        sa.CheckConstraint(
            "prompt_log_retention_days IS NULL OR prompt_log_retention_days >= 1",
            name="ck_api_keys_retention_positive",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            [f"{fk}tenants.id"],
            name="fk_api_keys_tenant_id_tenants",
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
        schema=schema,
    )
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"], schema=schema)
    op.create_table(
        "budgets",
        sa.Column("key_id", BigId, nullable=False),
        _budget("daily"),
        _budget("monthly"),
        _budget("total"),
        sa.ForeignKeyConstraint(
            ["key_id"],
            [f"{fk}api_keys.id"],
            name="fk_budgets_key_id_api_keys",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("key_id", name="pk_budgets"),
        schema=schema,
    )
    op.create_table(
        "budget_usage",
        sa.Column("key_id", BigId, nullable=False),
        sa.Column("period", sa.Text, nullable=False),
        sa.Column("period_start", Timestamp, nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.CheckConstraint(
            "period IN ('day', 'month', 'total')", name="ck_budget_usage_period_known"
        ),
        sa.CheckConstraint("tokens >= 0", name="ck_budget_usage_tokens_positive"),
        sa.ForeignKeyConstraint(
            ["key_id"],
            [f"{fk}api_keys.id"],
            name="fk_budget_usage_key_id_api_keys",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("key_id", "period", "period_start", name="pk_budget_usage"),
        schema=schema,
    )
    op.create_table(
        "revocations",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("key_prefix", sa.String(12), nullable=False),
        sa.Column("revoked_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.Column("revoked_by", sa.Text, nullable=False, server_default="unknown"),
        sa.Column("reason", sa.Text),
        sa.ForeignKeyConstraint(
            ["key_prefix"],
            [f"{fk}api_keys.prefix"],
            name="fk_revocations_key_prefix_api_keys",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_revocations"),
        schema=schema,
    )
    op.create_index("ix_revocations_key_prefix", "revocations", ["key_prefix"], schema=schema)
    op.create_table(
        "key_changes",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("key_prefix", sa.String(12), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("changed_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("kind IN ('revoked', 'policy')", name="ck_key_changes_kind_known"),
        sa.PrimaryKeyConstraint("id", name="pk_key_changes"),
        schema=schema,
    )
    op.create_index("ix_key_changes_changed_at", "key_changes", ["changed_at"], schema=schema)
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("ts", Timestamp, nullable=False),
        sa.Column("tenant_id", BigId),
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
        sa.CheckConstraint(
            "tokens_in >= 0 AND tokens_out >= 0", name="ck_audit_log_tokens_positive"
        ),
        sa.CheckConstraint("latency_ms >= 0", name="ck_audit_log_latency_positive"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            [f"{fk}tenants.id"],
            name="fk_audit_log_tenant_id_tenants",
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
        schema=schema,
    )
    op.create_index("ix_audit_log_request_id", "audit_log", ["request_id"], schema=schema)
    op.create_index(
        "ix_audit_log_tenant_ts",
        "audit_log",
        ["tenant_id", "ts"],
        schema=schema,
        postgresql_include=["tokens_in", "tokens_out"],
    )
    op.create_index(
        "ix_audit_log_key_ts",
        "audit_log",
        ["key_prefix", "ts"],
        schema=schema,
        postgresql_include=["tokens_in", "tokens_out"],
    )
    op.create_table(
        "prompt_log",
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("key_id", BigId, nullable=False),
        sa.Column("ts", Timestamp, nullable=False),
        sa.Column("request_body", sa.Text, nullable=False),
        sa.Column("response_text", sa.Text, nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"],
            [f"{fk}api_keys.id"],
            name="fk_prompt_log_key_id_api_keys",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_prompt_log"),
        schema=schema,
    )
    op.create_index("ix_prompt_log_expires_at", "prompt_log", ["expires_at"], schema=schema)

    if _postgres():
        _postgres_triggers()
    else:
        _sqlite_triggers()


def _postgres_triggers() -> None:
    key_cols = ", ".join(KEY_POLICY_COLUMNS)
    old_key = ", ".join(f"OLD.{c}" for c in KEY_POLICY_COLUMNS)
    new_key = ", ".join(f"NEW.{c}" for c in KEY_POLICY_COLUMNS)
    tenant_cols = ", ".join(TENANT_POLICY_COLUMNS)
    old_tenant = ", ".join(f"OLD.{c}" for c in TENANT_POLICY_COLUMNS)
    new_tenant = ", ".join(f"NEW.{c}" for c in TENANT_POLICY_COLUMNS)
    statements = [
        # Revoking is an INSERT into revocations (the CLI and neuronetz-console alike):
        # mark the key revoked and tell every replica at once (SPEC §4.5).
        """
        CREATE FUNCTION gateway.apply_revocation() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE gateway.api_keys
               SET status = 'revoked', revoked_at = NEW.revoked_at
             WHERE prefix = NEW.key_prefix AND status = 'active';
            PERFORM pg_notify('key_revoked', NEW.key_prefix);
            RETURN NEW;
        END $$
        """,
        """
        CREATE TRIGGER revocations_apply AFTER INSERT ON gateway.revocations
        FOR EACH ROW EXECUTE FUNCTION gateway.apply_revocation()
        """,
        # One helper logs a change and notifies; the log lets a listener that lost its
        # connection catch up on what it missed.
        """
        CREATE FUNCTION gateway.log_key_change(key_prefix text, change_kind text)
        RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO gateway.key_changes (key_prefix, kind) VALUES (key_prefix, change_kind);
            PERFORM pg_notify('policy_changed', key_prefix);
        END $$
        """,
        """
        CREATE FUNCTION gateway.api_key_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM gateway.log_key_change(OLD.prefix, 'revoked');
                RETURN OLD;
            END IF;
            PERFORM gateway.log_key_change(
                NEW.prefix,
                CASE WHEN NEW.status = 'revoked' AND OLD.status <> 'revoked'
                     THEN 'revoked' ELSE 'policy' END);
            RETURN NEW;
        END $$
        """,
        f"""
        CREATE TRIGGER api_keys_policy_changed AFTER UPDATE OF {key_cols} ON gateway.api_keys
        FOR EACH ROW WHEN (({old_key}) IS DISTINCT FROM ({new_key}))
        EXECUTE FUNCTION gateway.api_key_changed()
        """,
        """
        CREATE TRIGGER api_keys_deleted AFTER DELETE ON gateway.api_keys
        FOR EACH ROW EXECUTE FUNCTION gateway.api_key_changed()
        """,
        """
        CREATE FUNCTION gateway.tenant_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM gateway.log_key_change(prefix, 'policy')
               FROM gateway.api_keys WHERE tenant_id = NEW.id;
            RETURN NEW;
        END $$
        """,
        f"""
        CREATE TRIGGER tenants_policy_changed AFTER UPDATE OF {tenant_cols} ON gateway.tenants
        FOR EACH ROW WHEN (({old_tenant}) IS DISTINCT FROM ({new_tenant}))
        EXECUTE FUNCTION gateway.tenant_changed()
        """,
        """
        CREATE FUNCTION gateway.budget_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE changed_key bigint;
        BEGIN
            changed_key := CASE WHEN TG_OP = 'DELETE' THEN OLD.key_id ELSE NEW.key_id END;
            PERFORM gateway.log_key_change(prefix, 'policy')
               FROM gateway.api_keys WHERE id = changed_key;
            RETURN NULL;
        END $$
        """,
        """
        CREATE TRIGGER budgets_changed AFTER INSERT OR UPDATE OR DELETE ON gateway.budgets
        FOR EACH ROW EXECUTE FUNCTION gateway.budget_changed()
        """,
    ]
    for statement in statements:
        op.execute(statement)


def _sqlite_triggers() -> None:
    # SQLite has no NOTIFY; the gateway polls key_changes instead (SPEC §4.5).
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in KEY_POLICY_COLUMNS)
    tenant_changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in TENANT_POLICY_COLUMNS)
    log = "INSERT INTO key_changes (key_prefix, kind, changed_at)"
    statements = [
        """
        CREATE TRIGGER revocations_apply AFTER INSERT ON revocations BEGIN
            UPDATE api_keys SET status = 'revoked', revoked_at = NEW.revoked_at
             WHERE prefix = NEW.key_prefix AND status = 'active';
        END
        """,
        f"""
        CREATE TRIGGER api_keys_policy_changed
        AFTER UPDATE OF {", ".join(KEY_POLICY_COLUMNS)} ON api_keys
        WHEN {changed} BEGIN
            {log} VALUES (NEW.prefix,
                CASE WHEN NEW.status = 'revoked' AND OLD.status <> 'revoked'
                     THEN 'revoked' ELSE 'policy' END,
                CURRENT_TIMESTAMP);
        END
        """,
        f"""
        CREATE TRIGGER api_keys_deleted AFTER DELETE ON api_keys BEGIN
            {log} VALUES (OLD.prefix, 'revoked', CURRENT_TIMESTAMP);
        END
        """,
        f"""
        CREATE TRIGGER tenants_policy_changed
        AFTER UPDATE OF {", ".join(TENANT_POLICY_COLUMNS)} ON tenants
        WHEN {tenant_changed} BEGIN
            {log} SELECT prefix, 'policy', CURRENT_TIMESTAMP
                    FROM api_keys WHERE tenant_id = NEW.id;
        END
        """,
    ]
    for event, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
        statements.append(
            f"""
            CREATE TRIGGER budgets_{event.lower()} AFTER {event} ON budgets BEGIN
                {log} SELECT prefix, 'policy', CURRENT_TIMESTAMP
                        FROM api_keys WHERE id = {row}.key_id;
            END
            """
        )
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    schema = "gateway" if _postgres() else None
    if _postgres():
        op.execute("DROP FUNCTION gateway.apply_revocation() CASCADE")
        op.execute("DROP FUNCTION gateway.api_key_changed() CASCADE")
        op.execute("DROP FUNCTION gateway.tenant_changed() CASCADE")
        op.execute("DROP FUNCTION gateway.budget_changed() CASCADE")
        op.execute("DROP FUNCTION gateway.log_key_change(text, text)")
    for table in (
        "prompt_log",
        "audit_log",
        "key_changes",
        "revocations",
        "budget_usage",
        "budgets",
        "api_keys",
        "tenants",
    ):
        op.drop_table(table, schema=schema)
