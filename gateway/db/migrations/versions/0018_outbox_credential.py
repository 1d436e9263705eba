"""The outbox remembers what each message to an authority was sealed to, so that one sealed to a key or a
certificate no longer pinned for its address (replaced, or removed at once) is withheld, not sent.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows queued before this have neither: what they were sealed to cannot be checked, so the outbox withholds
    # them (failed, the admins alerted) rather than send what may be encrypted to a key replaced since.
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("sealed_method", sa.String(10), nullable=True))
        batch.add_column(sa.Column("sealed_fingerprint", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("sealed_fingerprint")
        batch.drop_column("sealed_method")
