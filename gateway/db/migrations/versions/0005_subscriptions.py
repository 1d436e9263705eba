"""Subscriptions: monthly disclosures an authority asked for, with their twelve-month review.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.db.models import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("authority_id", sa.Integer(), nullable=False),
        sa.Column("police_force_area", sa.String(100), nullable=True),
        sa.Column("local_authority", sa.String(100), nullable=True),
        sa.Column("area", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_on", sa.Date(), nullable=False),
        sa.Column("review_on", sa.Date(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("created_by_inbound_id", sa.Integer(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["authority_id"],
            ["authorities.id"],
            name=op.f("fk_subscriptions_authority_id_authorities"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["created_by_inbound_id"],
            ["inbound_messages.id"],
            name=op.f("fk_subscriptions_created_by_inbound_id_inbound_messages"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
    )
    op.create_index(op.f("ix_subscriptions_authority_id"), "subscriptions", ["authority_id"])
    op.create_index(op.f("ix_subscriptions_status"), "subscriptions", ["status"])


def downgrade() -> None:
    op.drop_table("subscriptions")
