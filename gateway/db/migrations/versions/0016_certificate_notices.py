"""Key notices hold a certificate's fingerprint too: the SHA-256 of an S/MIME certificate is 64 hex digits, an
OpenPGP fingerprint 40.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("key_notices") as batch:
        batch.alter_column("fingerprint", existing_type=sa.String(40), type_=sa.String(64), existing_nullable=False)


def downgrade() -> None:
    bind = op.get_bind()
    longer = bind.execute(sa.text("SELECT COUNT(*) FROM key_notices WHERE LENGTH(fingerprint) > 40")).scalar()
    if longer:  # never a notice's record cut short, nor its certificate noticed twice
        raise RuntimeError(
            f"cannot downgrade below 0016: {longer} key notices are of S/MIME certificates; delete them first"
        )
    with op.batch_alter_table("key_notices") as batch:
        batch.alter_column("fingerprint", existing_type=sa.String(64), type_=sa.String(40), existing_nullable=False)
