"""Mailbox progress: processed UIDs per folder and UIDVALIDITY, so IMAP flags never have to be trusted.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.db.models import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mailbox_progress",
        sa.Column("folder", sa.String(200), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("uid", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("inbound_id", sa.Integer(), nullable=True),
        sa.Column("settled_as", sa.String(20), nullable=False),
        sa.Column("moved", sa.Boolean(), nullable=False),
        sa.Column("processed_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["inbound_id"],
            ["inbound_messages.id"],
            name=op.f("fk_mailbox_progress_inbound_id_inbound_messages"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("folder", "uidvalidity", "uid", name=op.f("pk_mailbox_progress")),
    )


def downgrade() -> None:
    op.drop_table("mailbox_progress")
