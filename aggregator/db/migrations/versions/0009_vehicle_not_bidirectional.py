"""telemetry_evses.limit_reason takes ``vehicle_not_bidirectional``: a discharge the gateway refused
because the vehicle did not negotiate bidirectional power transfer.

The reasons are a ``VARCHAR(32)`` with the CHECK constraint ``ck_telemetry_evses_limit_reason``
(:func:`aggregator.db.types.value_enum`), so a new reason is that constraint dropped and made again
with the longer list. Downgrading stores each ``vehicle_not_bidirectional`` as ``charger_max``, what
gateways reported for such a refusal before this reason existed.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = ("site_limit", "reserve", "fallback", "charger_max", "energy_request_met")
"""The limit reasons of revision 0008."""
ADDED = "vehicle_not_bidirectional"
STOOD_FOR = "charger_max"
"""What ``ADDED`` is stored as after a downgrade."""


def _allow(values: Sequence[str]) -> None:
    with op.batch_alter_table("telemetry_evses", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_telemetry_evses_limit_reason"), type_="check")
        batch_op.create_check_constraint(
            op.f("ck_telemetry_evses_limit_reason"),
            sa.column("limit_reason", sa.String(32)).in_(values),
        )


def upgrade() -> None:
    _allow((*BEFORE, ADDED))


def downgrade() -> None:
    op.execute(
        sa.text("UPDATE telemetry_evses SET limit_reason = :before WHERE limit_reason = :added").bindparams(
            before=STOOD_FOR, added=ADDED
        )
    )
    _allow(BEFORE)
