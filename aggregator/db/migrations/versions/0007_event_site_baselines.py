"""event_site_baselines: how each dispatch event is measured at each site, declared at notification.

Events notified before this migration have no declaration; they are measured by their program's
current measurement, as before (``aggregator.programs.baseline_declarations``).

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "event_site_baselines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=40), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("excluded_days", sa.JSON(), nullable=False),
        sa.Column("declared_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["dispatch_events.id"],
            name=op.f("fk_event_site_baselines_event_id_dispatch_events"),
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_event_site_baselines_site_id_sites")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_site_baselines")),
        sa.UniqueConstraint("event_id", "site_id", name=op.f("uq_event_site_baselines_event_id_site_id")),
    )
    with op.batch_alter_table("event_site_baselines", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_event_site_baselines_site_id"), ["site_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("event_site_baselines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_event_site_baselines_site_id"))
    op.drop_table("event_site_baselines")
