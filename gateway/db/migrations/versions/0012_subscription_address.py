"""Subscription address: the registered address that asked, where its deliveries and notices go.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(sa.Column("address", sa.String(254), nullable=True))
    # The address of the message that started it, while that address is still the authority's; otherwise the
    # authority's first address, where deliveries went until now. One no longer allowed there ends at the
    # next schedule run, with a notice.
    op.execute(
        """
        UPDATE subscriptions SET address = (
            SELECT inbound_messages.sender FROM inbound_messages
            JOIN authority_addresses ON authority_addresses.address = inbound_messages.sender
            WHERE inbound_messages.id = subscriptions.created_by_inbound_id
              AND authority_addresses.authority_id = subscriptions.authority_id
        )
        """
    )
    op.execute(
        """
        UPDATE subscriptions SET address = (
            SELECT MIN(authority_addresses.address) FROM authority_addresses
            WHERE authority_addresses.authority_id = subscriptions.authority_id
        )
        WHERE address IS NULL
        """
    )
    op.execute("UPDATE subscriptions SET address = '' WHERE address IS NULL")  # an authority with no address
    with op.batch_alter_table("subscriptions") as batch:
        batch.alter_column("address", existing_type=sa.String(254), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("address")
