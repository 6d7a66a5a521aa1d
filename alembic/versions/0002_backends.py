"""Several Ollama nodes: backends, model policies, the audit's backend, the residency scope.

SPEC §4.10 and §4.12: ``backends`` and ``model_policies``, whose every change notifies
``backends_changed`` on PostgreSQL; ``audit_log.backend``; and keys may hold the
``residency`` scope.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)

OLD_SCOPES = "scopes IN ('chat', 'embeddings', 'chat,embeddings')"
NEW_SCOPES = (
    "scopes IN ('chat', 'embeddings', 'chat,embeddings', 'chat,residency',"
    " 'embeddings,residency', 'chat,embeddings,residency')"
)
# 0001 named it twice over (the naming convention applied to a full name).
OLD_SCOPES_NAME = "ck_api_keys_ck_api_keys_scopes_known"
NEW_SCOPES_NAME = "ck_api_keys_scopes_known"


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    schema = "gateway" if _postgres() else None
    op.create_table(
        "backends",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column(
            "parallel",
            sa.Integer,
            sa.CheckConstraint("parallel >= 1", name=op.f("ck_backends_parallel_positive")),
            nullable=False,
            server_default="1",
        ),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 64", name=op.f("ck_backends_name_length")),
        sa.CheckConstraint(
            "status IN ('active', 'draining')", name=op.f("ck_backends_status_known")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backends")),
        sa.UniqueConstraint("name", name=op.f("uq_backends_name")),
        sa.UniqueConstraint("url", name=op.f("uq_backends_url")),
        schema=schema,
    )
    op.create_table(
        "model_policies",
        sa.Column("model", sa.Text, nullable=False),
        sa.Column(
            "num_ctx",
            sa.Integer,
            sa.CheckConstraint(
                "num_ctx IS NULL OR num_ctx >= 1", name=op.f("ck_model_policies_num_ctx_positive")
            ),
        ),
        sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("length(model) >= 1", name=op.f("ck_model_policies_model_not_empty")),
        sa.PrimaryKeyConstraint("model", name=op.f("pk_model_policies")),
        schema=schema,
    )
    op.add_column("audit_log", sa.Column("backend", sa.Text), schema=schema)
    if _postgres():
        op.drop_constraint(op.f(OLD_SCOPES_NAME), "api_keys", schema=schema, type_="check")
        op.create_check_constraint(op.f(NEW_SCOPES_NAME), "api_keys", NEW_SCOPES, schema=schema)
        _postgres_notify()
    else:
        _sqlite_swap_check(
            f"CONSTRAINT {OLD_SCOPES_NAME} CHECK ({OLD_SCOPES})",
            f"CONSTRAINT {NEW_SCOPES_NAME} CHECK ({NEW_SCOPES})",
        )


def _postgres_notify() -> None:
    # One function for both tables: the trigger names the column that identifies a row.
    # Every replica LISTENs and rereads both tables (SPEC §4.10).
    op.execute(
        """
        CREATE FUNCTION gateway.notify_backends_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE changed jsonb;
        BEGIN
            IF TG_LEVEL = 'STATEMENT' THEN  -- TRUNCATE
                PERFORM pg_notify('backends_changed', TG_TABLE_NAME);
                RETURN NULL;
            END IF;
            IF TG_OP = 'DELETE' THEN
                changed := to_jsonb(OLD);
            ELSE
                changed := to_jsonb(NEW);
            END IF;
            PERFORM pg_notify('backends_changed', TG_TABLE_NAME || ':' || (changed ->> TG_ARGV[0]));
            RETURN NULL;
        END $$
        """
    )
    for table, column in (("backends", "name"), ("model_policies", "model")):
        op.execute(
            f"""
            CREATE TRIGGER {table}_changed AFTER INSERT OR UPDATE OR DELETE
            ON gateway.{table} FOR EACH ROW
            EXECUTE FUNCTION gateway.notify_backends_changed('{column}')
            """
        )
        op.execute(
            f"""
            CREATE TRIGGER {table}_truncated AFTER TRUNCATE ON gateway.{table}
            FOR EACH STATEMENT EXECUTE FUNCTION gateway.notify_backends_changed()
            """
        )


def _sqlite_swap_check(old: str, new: str) -> None:
    """Replace a CHECK constraint of ``api_keys`` in place.

    SQLite cannot alter a constraint, and rebuilding the table (Alembic's batch mode)
    would drop it under its triggers and, with foreign keys on, cascade the drop into
    budgets, revocations and prompt logs. SQLite documents editing the stored schema
    for changes that no existing row can violate (https://sqlite.org/lang_altertable.html,
    "other kinds of table schema changes"); the downgrade first rewrites the rows that
    the narrower check would refuse.
    """
    bind = op.get_bind()
    found = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'api_keys'"
    ).scalar_one()
    if found.count(old) != 1:
        raise RuntimeError("api_keys does not have the expected scopes check; not migrating")
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql(
        "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'api_keys'",
        (found.replace(old, new),),
    )
    # A new schema version makes every connection reload the schema, this one included.
    bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")
    problems = bind.exec_driver_sql("PRAGMA integrity_check").scalars().all()
    if problems != ["ok"]:
        raise RuntimeError(f"api_keys failed the integrity check: {problems[:3]}")


def downgrade() -> None:
    schema = "gateway" if _postgres() else None
    prefix = "gateway." if schema else ""
    # The narrower check admits no residency; the scope sorts last and never comes alone.
    op.execute(
        f"UPDATE {prefix}api_keys SET scopes = replace(scopes, ',residency', '')"
        " WHERE scopes LIKE '%residency%'"
    )
    if _postgres():
        op.execute("DROP FUNCTION gateway.notify_backends_changed() CASCADE")
        op.drop_constraint(op.f(NEW_SCOPES_NAME), "api_keys", schema=schema, type_="check")
        op.create_check_constraint(op.f(OLD_SCOPES_NAME), "api_keys", OLD_SCOPES, schema=schema)
    else:
        _sqlite_swap_check(
            f"CONSTRAINT {NEW_SCOPES_NAME} CHECK ({NEW_SCOPES})",
            f"CONSTRAINT {OLD_SCOPES_NAME} CHECK ({OLD_SCOPES})",
        )
    op.drop_column("audit_log", "backend", schema=schema)
    op.drop_table("model_policies", schema=schema)
    op.drop_table("backends", schema=schema)
