"""Driver preferences and session overrides, program sites, schedule plans, setpoint commands and acks.

Columns added as NOT NULL to existing tables carry a server default, so existing rows get a value.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 12:47:55.588905
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "program_sites",
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["program_id"], ["programs.id"], name=op.f("fk_program_sites_program_id_programs")
        ),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_program_sites_site_id_sites")),
        sa.PrimaryKeyConstraint("program_id", "site_id", name=op.f("pk_program_sites")),
    )
    op.create_table(
        "setpoint_commands",
        sa.Column("command_id", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("schedule_version_id", sa.Integer(), nullable=True),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "accepted",
                "rejected",
                "error",
                name="command_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ack_outcomes", sa.JSON(), nullable=False),
        sa.Column("ack_detail", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["schedule_version_id"],
            ["schedule_versions.id"],
            name=op.f("fk_setpoint_commands_schedule_version_id_schedule_versions"),
        ),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_setpoint_commands_site_id_sites")),
        sa.PrimaryKeyConstraint("command_id", name=op.f("pk_setpoint_commands")),
    )
    with op.batch_alter_table("setpoint_commands", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_setpoint_commands_site_id_issued_at"), ["site_id", "issued_at"], unique=False
        )

    op.create_table(
        "session_overrides",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("departure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("target_soc_percent", sa.Double(), nullable=True),
        sa.Column("charge_now", sa.Boolean(), nullable=False),
        sa.Column("no_v2g", sa.Boolean(), nullable=False),
        sa.CheckConstraint(
            "target_soc_percent IS NULL OR (target_soc_percent >= 0 AND target_soc_percent <= 100)",
            name=op.f("ck_session_overrides_target_soc_percent_range"),
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_session_overrides_created_by_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["charging_sessions.id"],
            name=op.f("fk_session_overrides_session_id_charging_sessions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_session_overrides")),
    )
    with op.batch_alter_table("session_overrides", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_session_overrides_session_id_id"), ["session_id", "id"], unique=False
        )

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=100), nullable=True))

    with op.batch_alter_table("charging_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("soc_at_start_percent", sa.Double(), nullable=True))

    with op.batch_alter_table("dispatch_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("price_per_kwh", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("penalty_per_kwh", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("created_by_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_dispatch_events_created_by_id_users"), "users", ["created_by_id"], ["id"]
        )

    with op.batch_alter_table("programs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("currency", sa.String(length=3), nullable=False, server_default="USD"))
        batch_op.add_column(sa.Column("measurement", sa.JSON(), nullable=False, server_default="{}"))

    with op.batch_alter_table("schedule_versions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("trigger", sa.String(length=200), nullable=False, server_default="cadence")
        )
        batch_op.add_column(sa.Column("plan", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("counterfactual", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("supersedes_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_schedule_versions_supersedes_id_schedule_versions"),
            "schedule_versions",
            ["supersedes_id"],
            ["id"],
        )

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()))

    with op.batch_alter_table("vehicles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("id_token", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("departure_time", sa.String(length=5), nullable=True))
        batch_op.add_column(sa.Column("target_soc_percent", sa.Double(), nullable=False, server_default="80"))
        batch_op.create_unique_constraint(batch_op.f("uq_vehicles_id_token"), ["id_token"])


def downgrade() -> None:
    with op.batch_alter_table("vehicles", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_vehicles_id_token"), type_="unique")
        batch_op.drop_column("target_soc_percent")
        batch_op.drop_column("departure_time")
        batch_op.drop_column("id_token")

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("is_active")

    with op.batch_alter_table("schedule_versions", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_schedule_versions_supersedes_id_schedule_versions"), type_="foreignkey"
        )
        batch_op.drop_column("supersedes_id")
        batch_op.drop_column("counterfactual")
        batch_op.drop_column("plan")
        batch_op.drop_column("trigger")

    with op.batch_alter_table("programs", schema=None) as batch_op:
        batch_op.drop_column("measurement")
        batch_op.drop_column("currency")

    with op.batch_alter_table("dispatch_events", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_dispatch_events_created_by_id_users"), type_="foreignkey")
        batch_op.drop_column("created_by_id")
        batch_op.drop_column("penalty_per_kwh")
        batch_op.drop_column("price_per_kwh")

    with op.batch_alter_table("charging_sessions", schema=None) as batch_op:
        batch_op.drop_column("soc_at_start_percent")

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("name")

    with op.batch_alter_table("session_overrides", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_session_overrides_session_id_id"))

    op.drop_table("session_overrides")
    with op.batch_alter_table("setpoint_commands", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_setpoint_commands_site_id_issued_at"))

    op.drop_table("setpoint_commands")
    op.drop_table("program_sites")
