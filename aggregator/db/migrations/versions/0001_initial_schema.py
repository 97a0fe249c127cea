"""Initial schema: people, vehicles and consent, sites, programs and events, sessions, telemetry, schedules.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 12:13:55.711468
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sites",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("import_limit_kw", sa.Double(), nullable=False),
        sa.Column("export_limit_kw", sa.Double(), nullable=False),
        sa.Column("tariff_ref", sa.String(length=200), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("export_limit_kw >= 0", name=op.f("ck_sites_export_limit_kw_not_negative")),
        sa.CheckConstraint("import_limit_kw >= 0", name=op.f("ck_sites_import_limit_kw_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sites")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column(
            "role",
            sa.Enum(
                "driver",
                "grid_operator",
                "trader",
                "gateway",
                "admin",
                name="role",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_hash", sa.String(length=128), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_api_keys_owner_id_users")),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_api_keys_site_id_sites")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_index(op.f("ix_api_keys_owner_id"), "api_keys", ["owner_id"], unique=False)
    op.create_index(op.f("ix_api_keys_site_id"), "api_keys", ["site_id"], unique=False)
    op.create_table(
        "chargers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("charge_point_id", sa.String(length=64), nullable=False),
        sa.Column("evse_id", sa.Integer(), nullable=False),
        sa.Column("max_kw", sa.Double(), nullable=False),
        sa.Column("bidirectional", sa.Boolean(), nullable=False),
        sa.CheckConstraint("max_kw >= 0", name=op.f("ck_chargers_max_kw_not_negative")),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_chargers_site_id_sites")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chargers")),
        sa.UniqueConstraint(
            "site_id", "charge_point_id", "evse_id", name=op.f("uq_chargers_site_id_charge_point_id_evse_id")
        ),
    )
    op.create_table(
        "gateway_status",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "online",
                "fallback",
                "offline",
                name="gateway_state",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_gateway_status_site_id_sites")),
        sa.PrimaryKeyConstraint("site_id", name=op.f("pk_gateway_status")),
    )
    op.create_table(
        "programs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "kind",
            sa.Enum("dr", "v2g", name="program_kind", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("payment_terms", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_programs_owner_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_programs")),
    )
    op.create_index(op.f("ix_programs_owner_id"), "programs", ["owner_id"], unique=False)
    op.create_table(
        "schedule_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("horizon_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("step_seconds", sa.Integer(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("result_summary", sa.JSON(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "optimal",
                "feasible",
                "heuristic",
                "shifted",
                name="schedule_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.CheckConstraint("step_seconds > 0", name=op.f("ck_schedule_versions_step_seconds_positive")),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_schedule_versions_site_id_sites")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_versions")),
    )
    op.create_index(
        op.f("ix_schedule_versions_site_id_created_at"),
        "schedule_versions",
        ["site_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "telemetry",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("site_import_kw", sa.Double(), nullable=False),
        sa.Column("base_load_kw", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_telemetry_site_id_sites")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telemetry")),
        sa.UniqueConstraint("site_id", "seq", name=op.f("uq_telemetry_site_id_seq")),
    )
    op.create_index(op.f("ix_telemetry_site_id_sent_at"), "telemetry", ["site_id", "sent_at"], unique=False)
    op.create_table(
        "vehicles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("battery_kwh", sa.Double(), nullable=False),
        sa.Column("max_charge_kw", sa.Double(), nullable=False),
        sa.Column("max_discharge_kw", sa.Double(), nullable=False),
        sa.Column("v2g_capable", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("battery_kwh > 0", name=op.f("ck_vehicles_battery_kwh_positive")),
        sa.CheckConstraint("max_charge_kw >= 0", name=op.f("ck_vehicles_max_charge_kw_not_negative")),
        sa.CheckConstraint("max_discharge_kw >= 0", name=op.f("ck_vehicles_max_discharge_kw_not_negative")),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_vehicles_owner_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vehicles")),
    )
    op.create_index(op.f("ix_vehicles_owner_id"), "vehicles", ["owner_id"], unique=False)
    op.create_table(
        "charging_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("charger_id", sa.Integer(), nullable=False),
        sa.Column("evse_id", sa.Integer(), nullable=False),
        sa.Column("transaction_id", sa.String(length=64), nullable=True),
        sa.Column("vehicle_id", sa.Integer(), nullable=True),
        sa.Column("id_token", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("energy_kwh", sa.Double(), nullable=True),
        sa.Column("departure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("energy_request_kwh", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(
            ["charger_id"], ["chargers.id"], name=op.f("fk_charging_sessions_charger_id_chargers")
        ),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_charging_sessions_site_id_sites")),
        sa.ForeignKeyConstraint(
            ["vehicle_id"], ["vehicles.id"], name=op.f("fk_charging_sessions_vehicle_id_vehicles")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_charging_sessions")),
        sa.UniqueConstraint(
            "charger_id", "transaction_id", name=op.f("uq_charging_sessions_charger_id_transaction_id")
        ),
    )
    op.create_index(
        op.f("ix_charging_sessions_site_id_started_at"),
        "charging_sessions",
        ["site_id", "started_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_charging_sessions_vehicle_id"), "charging_sessions", ["vehicle_id"], unique=False
    )
    op.create_table(
        "dispatch_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("program_id", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("external_event_id", sa.String(length=200), nullable=False),
        sa.Column("modification", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "dr_reduction",
                "dr_cap",
                "v2g_export",
                "price",
                name="signal_kind",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "active",
                "cancelled",
                "completed",
                name="signal_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("intervals", sa.JSON(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("target_sites", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("window_end > window_start", name=op.f("ck_dispatch_events_window_ordered")),
        sa.ForeignKeyConstraint(
            ["program_id"], ["programs.id"], name=op.f("fk_dispatch_events_program_id_programs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispatch_events")),
        sa.UniqueConstraint(
            "source",
            "external_event_id",
            "modification",
            name=op.f("uq_dispatch_events_source_external_event_id_modification"),
        ),
    )
    op.create_index(op.f("ix_dispatch_events_program_id"), "dispatch_events", ["program_id"], unique=False)
    op.create_index(
        op.f("ix_dispatch_events_window_start_window_end"),
        "dispatch_events",
        ["window_start", "window_end"],
        unique=False,
    )
    op.create_table(
        "telemetry_evses",
        sa.Column("telemetry_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("charger_id", sa.String(length=64), nullable=False),
        sa.Column("evse_id", sa.Integer(), nullable=False),
        sa.Column("power_kw", sa.Double(), nullable=False),
        sa.Column("energy_kwh", sa.Double(), nullable=True),
        sa.Column("soc_percent", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(
            ["telemetry_id"],
            ["telemetry.id"],
            name=op.f("fk_telemetry_evses_telemetry_id_telemetry"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("telemetry_id", "charger_id", "evse_id", name=op.f("pk_telemetry_evses")),
    )
    op.create_table(
        "v2g_consents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vehicle_id", sa.Integer(), nullable=False),
        sa.Column("min_reserve_kwh", sa.Double(), nullable=False),
        sa.Column("given_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("supersedes_id", sa.Integer(), nullable=True),
        sa.CheckConstraint("min_reserve_kwh >= 0", name=op.f("ck_v2g_consents_min_reserve_kwh_not_negative")),
        sa.ForeignKeyConstraint(
            ["supersedes_id"], ["v2g_consents.id"], name=op.f("fk_v2g_consents_supersedes_id_v2g_consents")
        ),
        sa.ForeignKeyConstraint(
            ["vehicle_id"], ["vehicles.id"], name=op.f("fk_v2g_consents_vehicle_id_vehicles")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_v2g_consents")),
    )
    op.create_index(op.f("ix_v2g_consents_vehicle_id_id"), "v2g_consents", ["vehicle_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_v2g_consents_vehicle_id_id"), table_name="v2g_consents")
    op.drop_table("v2g_consents")
    op.drop_table("telemetry_evses")
    op.drop_index(op.f("ix_dispatch_events_window_start_window_end"), table_name="dispatch_events")
    op.drop_index(op.f("ix_dispatch_events_program_id"), table_name="dispatch_events")
    op.drop_table("dispatch_events")
    op.drop_index(op.f("ix_charging_sessions_vehicle_id"), table_name="charging_sessions")
    op.drop_index(op.f("ix_charging_sessions_site_id_started_at"), table_name="charging_sessions")
    op.drop_table("charging_sessions")
    op.drop_index(op.f("ix_vehicles_owner_id"), table_name="vehicles")
    op.drop_table("vehicles")
    op.drop_index(op.f("ix_telemetry_site_id_sent_at"), table_name="telemetry")
    op.drop_table("telemetry")
    op.drop_index(op.f("ix_schedule_versions_site_id_created_at"), table_name="schedule_versions")
    op.drop_table("schedule_versions")
    op.drop_index(op.f("ix_programs_owner_id"), table_name="programs")
    op.drop_table("programs")
    op.drop_table("gateway_status")
    op.drop_table("chargers")
    op.drop_index(op.f("ix_api_keys_site_id"), table_name="api_keys")
    op.drop_index(op.f("ix_api_keys_owner_id"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("users")
    op.drop_table("sites")
