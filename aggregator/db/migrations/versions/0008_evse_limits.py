"""telemetry_evses.limit_kw, limit_reason and limit_discharge: the cap a gateway applied to an EVSE,
why, and in which direction.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("telemetry_evses", schema=None) as batch_op:
        batch_op.add_column(sa.Column("limit_kw", sa.Double(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "limit_reason",
                sa.Enum(
                    "site_limit",
                    "reserve",
                    "fallback",
                    "charger_max",
                    "energy_request_met",
                    name="limit_reason",
                    native_enum=False,
                    create_constraint=True,
                    length=32,
                ),
                nullable=True,
            )
        )
        batch_op.add_column(sa.Column("limit_discharge", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("telemetry_evses", schema=None) as batch_op:
        batch_op.drop_column("limit_discharge")
        batch_op.drop_constraint(op.f("ck_telemetry_evses_limit_reason"), type_="check")
        batch_op.drop_column("limit_reason")
        batch_op.drop_column("limit_kw")
