"""gateway_status.reads: the centre→site fields a site's gateway said it reads in its latest status
(:attr:`wire.contract.GatewayStatus.reads`), so the control loop sends a field added within schema
version 1 (a setpoint's ``transaction_id``) only to a gateway that reads it.

A JSON list of names, ``[]`` for every row from before: a gateway that has not said so since is one
that reads none of them, and gets setpoints without a transaction id until its next status.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("gateway_status", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reads", sa.JSON(), server_default=sa.text("'[]'"), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("gateway_status", schema=None) as batch_op:
        batch_op.drop_column("reads")
