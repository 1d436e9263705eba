"""Key notices: each warning of a key's coming expiry recorded once, with the mail it sent.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.db.models import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "key_notices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(40), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("holder", sa.String(40), nullable=False),
        sa.Column("noticed_at", UTCDateTime(), nullable=False),
        sa.Column("reference", sa.String(40), nullable=False),
        sa.Column("authority_outbox_id", sa.Integer(), nullable=True),
        sa.Column("admin_outbox_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["authority_outbox_id"],
            ["outbox.id"],
            name=op.f("fk_key_notices_authority_outbox_id_outbox"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["admin_outbox_id"], ["outbox.id"], name=op.f("fk_key_notices_admin_outbox_id_outbox"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_notices")),
        sa.UniqueConstraint("fingerprint", "expires_at", "holder", name=op.f("uq_key_notices_fingerprint")),
    )


def downgrade() -> None:
    op.drop_table("key_notices")
