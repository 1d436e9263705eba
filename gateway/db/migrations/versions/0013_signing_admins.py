"""Admins as OpenPGP keys: signed proposals and approvals; pending changes under the old rule are cancelled.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

import datetime as dt
import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.audit import GENESIS_HASH, canonical_json, chain_hash
from gateway.db.models import UTCDateTime

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CANCELLED_BECAUSE = (
    "proposed under the old two-person rule, where an admin was a name anyone could type: "
    "propose it again, signed with a registered admin key"
)


def upgrade() -> None:
    now = dt.datetime.now(dt.UTC)
    op.create_table(
        "admins",
        sa.Column("fingerprint", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("added_at", UTCDateTime(), nullable=False),
        sa.Column("proposed_by", sa.String(40), nullable=True),
        sa.Column("approved_by", sa.String(40), nullable=True),
        sa.PrimaryKeyConstraint("fingerprint", name=op.f("pk_admins")),
    )
    installation = op.create_table(
        "installation",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("identity", sa.String(36), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_installation")),
    )
    op.bulk_insert(installation, [{"id": 1, "identity": str(uuid.uuid4()), "created_at": now}])
    with op.batch_alter_table("pending_changes") as batch:
        batch.add_column(sa.Column("statement", sa.Text(), nullable=True))
        batch.add_column(sa.Column("proposer_fingerprint", sa.String(40), nullable=True))
        batch.add_column(sa.Column("proposer_signature", sa.Text(), nullable=True))
        batch.add_column(sa.Column("approver_fingerprint", sa.String(40), nullable=True))
        batch.add_column(sa.Column("approver_signature", sa.Text(), nullable=True))
    _cancel_pending(now)


def _cancel_pending(now: dt.datetime) -> None:
    """No change waiting under the old rule is approvable under the new one: each is cancelled, on the record."""
    bind = op.get_bind()
    pending = [row[0] for row in bind.execute(sa.text("SELECT id FROM pending_changes WHERE status = 'pending'"))]
    if not pending:
        return
    bind.execute(
        sa.text(
            "UPDATE pending_changes SET status = 'cancelled', decided_by = 'migration 0013', decided_at = :now "
            "WHERE status = 'pending'"
        ),
        {"now": now},
    )
    last = bind.execute(sa.text("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")).first()
    seq, prev_hash = (1, GENESIS_HASH) if last is None else (last[0] + 1, last[1])
    recorded_at = now.isoformat(timespec="microseconds").replace("+00:00", "Z")
    fields = {
        "recorded_at": recorded_at,
        "actor": "migration 0013",
        "action": "change.cancel",
        "subject": "changes " + ", ".join(map(str, pending)),
        "details": canonical_json({"changes": pending, "why": CANCELLED_BECAUSE}),
    }
    digest = chain_hash(prev_hash=prev_hash, seq=seq, **fields)
    bind.execute(
        sa.text(
            "INSERT INTO audit_log (seq, recorded_at, actor, action, subject, details, prev_hash, hash) "
            "VALUES (:seq, :recorded_at, :actor, :action, :subject, :details, :prev_hash, :hash)"
        ),
        {"seq": seq, "prev_hash": prev_hash, "hash": digest, **fields},
    )


def downgrade() -> None:
    with op.batch_alter_table("pending_changes") as batch:
        for column in ("approver_signature", "approver_fingerprint", "proposer_signature", "proposer_fingerprint"):
            batch.drop_column(column)
        batch.drop_column("statement")
    op.drop_table("installation")
    op.drop_table("admins")
