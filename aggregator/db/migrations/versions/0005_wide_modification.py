"""dispatch_events.modification as BIGINT: OpenADR 3 versions events by epoch milliseconds.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dispatch_events", schema=None) as batch_op:
        batch_op.alter_column("modification", existing_type=sa.Integer(), type_=sa.BigInteger())


def downgrade() -> None:
    with op.batch_alter_table("dispatch_events", schema=None) as batch_op:
        batch_op.alter_column("modification", existing_type=sa.BigInteger(), type_=sa.Integer())
