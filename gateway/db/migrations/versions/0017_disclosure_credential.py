"""The disclosure log names the credential a disclosure was encrypted to: its method, and a fingerprint long
enough for an S/MIME certificate's SHA-256 (64 hex digits; an OpenPGP v4 fingerprint has 40).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("disclosures") as batch:
        # Every disclosure before this one went by OpenPGP: the only method there was.
        batch.add_column(sa.Column("method", sa.String(10), nullable=False, server_default="openpgp"))
        batch.alter_column("key_fingerprint", existing_type=sa.String(40), type_=sa.String(64), nullable=False)


def downgrade() -> None:
    smime = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM disclosures WHERE method <> 'openpgp'")).scalar()
    if smime:  # the disclosure log is the law's record: never a line of it cut short or misnamed
        raise RuntimeError(f"cannot downgrade below 0017: {smime} disclosures were encrypted with S/MIME")
    with op.batch_alter_table("disclosures") as batch:
        batch.alter_column("key_fingerprint", existing_type=sa.String(64), type_=sa.String(40), nullable=False)
        batch.drop_column("method")
