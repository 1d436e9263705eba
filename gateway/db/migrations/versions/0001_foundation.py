"""Foundation: the register, the allowlist of authorities and the hash-chained audit trail.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.db.models import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_APPEND_ONLY_MESSAGE = "audit_log is append-only"
_GENESIS = "0" * 64  # the prev_hash of the first record, as in gateway.audit


def upgrade() -> None:
    op.create_table(
        "register_imports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("imported_at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("homes_file", sa.Text(), nullable=False),
        sa.Column("homes_sha256", sa.String(64), nullable=False),
        sa.Column("enforcement_file", sa.Text(), nullable=True),
        sa.Column("enforcement_sha256", sa.String(64), nullable=True),
        sa.Column("home_count", sa.Integer(), nullable=False),
        sa.Column("enforcement_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_register_imports")),
    )
    op.create_table(
        "homes",
        sa.Column("urn", sa.String(20), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("postcode", sa.String(10), nullable=False),
        sa.Column("telephone", sa.String(40), nullable=True),
        sa.Column("local_authority", sa.String(100), nullable=False),
        sa.Column("police_force_area", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("provider_name", sa.Text(), nullable=False),
        sa.Column("provider_address", sa.Text(), nullable=False),
        sa.Column("provider_type", sa.String(20), nullable=False),
        sa.Column("responsible_individual_name", sa.Text(), nullable=True),
        sa.Column("responsible_individual_address", sa.Text(), nullable=True),
        sa.Column("manager_name", sa.Text(), nullable=True),
        sa.Column("manager_address", sa.Text(), nullable=True),
        sa.Column("import_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["import_id"], ["register_imports.id"], name=op.f("fk_homes_import_id_register_imports")
        ),
        sa.PrimaryKeyConstraint("urn", name=op.f("pk_homes")),
    )
    op.create_index(op.f("ix_homes_local_authority"), "homes", ["local_authority"])
    op.create_index(op.f("ix_homes_police_force_area"), "homes", ["police_force_area"])
    op.create_table(
        "enforcement_actions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("urn", sa.String(20), nullable=False),
        sa.Column("date", sa.Date(), nullable=False),
        sa.Column("nature", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["urn"], ["homes.urn"], name=op.f("fk_enforcement_actions_urn_homes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enforcement_actions")),
    )
    op.create_index(op.f("ix_enforcement_actions_urn"), "enforcement_actions", ["urn"])
    op.create_table(
        "authorities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("name_key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("area", sa.String(100), nullable=True),
        sa.Column("auth_policy", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("key_fingerprint", sa.String(40), nullable=False),
        sa.Column("key_expires", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_authorities")),
        sa.UniqueConstraint("name", name=op.f("uq_authorities_name")),
        sa.UniqueConstraint("name_key", name=op.f("uq_authorities_name_key")),
    )
    op.create_table(
        "authority_addresses",
        sa.Column("address", sa.String(254), nullable=False),
        sa.Column("authority_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["authority_id"],
            ["authorities.id"],
            name=op.f("fk_authority_addresses_authority_id_authorities"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_authority_addresses")),
    )
    op.create_index(op.f("ix_authority_addresses_authority_id"), "authority_addresses", ["authority_id"])
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("recorded_at", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(60), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_log")),
        sa.UniqueConstraint("hash", name=op.f("uq_audit_log_hash")),
    )
    op.create_index(op.f("ix_audit_log_action"), "audit_log", ["action"])

    # The hash chain detects tampering; these triggers stop the gateway's own code (or a careless admin
    # with SQL access) from changing history in the first place. Besides refusing UPDATE and DELETE, an
    # insert must extend the chain at its head: that also stops INSERT OR REPLACE (whose implicit delete
    # fires no DELETE trigger in SQLite) and ON CONFLICT DO UPDATE from rewriting a record.
    if op.get_bind().dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY_MESSAGE}'); END"
            )
        op.execute(
            "CREATE TRIGGER audit_log_append_at_head BEFORE INSERT ON audit_log "
            "WHEN NEW.seq IS NOT COALESCE((SELECT MAX(seq) FROM audit_log), 0) + 1 "
            f"OR NEW.prev_hash IS NOT COALESCE((SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1), '{_GENESIS}') "
            f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY_MESSAGE}'); END"
        )
    else:
        op.execute(
            "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{_APPEND_ONLY_MESSAGE}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
        )
        op.execute(
            "CREATE FUNCTION audit_log_append_at_head() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "DECLARE last_seq integer; last_hash text; BEGIN "
            "SELECT seq, hash INTO last_seq, last_hash FROM audit_log ORDER BY seq DESC LIMIT 1; "
            "IF NEW.seq IS DISTINCT FROM COALESCE(last_seq, 0) + 1 "
            f"OR NEW.prev_hash IS DISTINCT FROM COALESCE(last_hash, '{_GENESIS}') THEN "
            f"RAISE EXCEPTION '{_APPEND_ONLY_MESSAGE}'; END IF; RETURN NEW; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_at_head BEFORE INSERT ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_append_at_head()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("audit_log_no_update", "audit_log_no_delete", "audit_log_append_at_head"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    else:
        for trigger in ("audit_log_append_only", "audit_log_append_at_head"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON audit_log")
            op.execute(f"DROP FUNCTION IF EXISTS {trigger}()")
    op.drop_table("audit_log")
    op.drop_table("authority_addresses")
    op.drop_table("authorities")
    op.drop_table("enforcement_actions")
    op.drop_table("homes")
    op.drop_table("register_imports")
