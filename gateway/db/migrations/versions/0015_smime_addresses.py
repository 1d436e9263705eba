"""S/MIME per registered address: a delivery method and a pinned certificate for each address; an authority's
OpenPGP key becomes optional; the authentication policies no longer name PGP alone.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.db.models import UTCDateTime

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("authority_addresses") as batch:
        batch.add_column(sa.Column("method", sa.String(10), nullable=False, server_default="openpgp"))
        batch.add_column(sa.Column("cert_fingerprint", sa.String(64), nullable=True))
        batch.add_column(sa.Column("cert_pem", sa.Text(), nullable=True))
        batch.add_column(sa.Column("cert_subject", sa.Text(), nullable=True))
        batch.add_column(sa.Column("cert_expires", UTCDateTime(), nullable=True))
        batch.create_index(batch.f("ix_authority_addresses_cert_fingerprint"), ["cert_fingerprint"], unique=False)
    with op.batch_alter_table("authorities") as batch:
        batch.alter_column("key_fingerprint", existing_type=sa.String(40), type_=sa.String(64), nullable=True)
    # "pgp" meant "signed by the pinned credential"; a credential may now be a certificate.
    op.execute("UPDATE authorities SET auth_policy = 'signed' WHERE auth_policy = 'pgp'")
    op.execute("UPDATE authorities SET auth_policy = 'signed-or-dmarc' WHERE auth_policy = 'pgp-or-dmarc'")


def downgrade() -> None:
    bind = op.get_bind()
    keyless = bind.execute(sa.text("SELECT COUNT(*) FROM authorities WHERE key_fingerprint IS NULL")).scalar()
    smime = bind.execute(sa.text("SELECT COUNT(*) FROM authority_addresses WHERE method <> 'openpgp'")).scalar()
    if keyless or smime:  # never a registration silently lost, nor an address silently moved to OpenPGP
        raise RuntimeError(
            f"cannot downgrade below 0015: {keyless} authorities have no OpenPGP key and {smime} addresses take "
            "S/MIME; remove or re-register them first"
        )
    op.execute("UPDATE authorities SET auth_policy = 'pgp' WHERE auth_policy = 'signed'")
    op.execute("UPDATE authorities SET auth_policy = 'pgp-or-dmarc' WHERE auth_policy = 'signed-or-dmarc'")
    with op.batch_alter_table("authorities") as batch:
        batch.alter_column("key_fingerprint", existing_type=sa.String(64), type_=sa.String(40), nullable=False)
    with op.batch_alter_table("authority_addresses") as batch:
        batch.drop_index(batch.f("ix_authority_addresses_cert_fingerprint"))
        for column in ("cert_expires", "cert_subject", "cert_pem", "cert_fingerprint", "method"):
            batch.drop_column(column)
