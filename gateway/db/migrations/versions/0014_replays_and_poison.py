"""Signatures already acted on (replays are caught by what was signed) and messages that could not be recorded.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.db.models import UTCDateTime

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "record_failures",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("error", sa.String(100), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("first_at", UTCDateTime(), nullable=False),
        sa.Column("last_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_record_failures")),
    )
    op.create_table(
        "seen_signatures",
        sa.Column("signature_id", sa.String(100), nullable=False),
        sa.Column("inbound_id", sa.Integer(), nullable=False),
        sa.Column("signed_at", UTCDateTime(), nullable=True),
        sa.Column("seen_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["inbound_id"],
            ["inbound_messages.id"],
            name=op.f("fk_seen_signatures_inbound_id_inbound_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("signature_id", name=op.f("pk_seen_signatures")),
    )
    with op.batch_alter_table("seen_signatures") as batch:
        batch.create_index(batch.f("ix_seen_signatures_inbound_id"), ["inbound_id"], unique=False)


def downgrade() -> None:
    op.drop_table("seen_signatures")
    op.drop_table("record_failures")
