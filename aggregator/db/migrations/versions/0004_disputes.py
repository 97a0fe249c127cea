"""Disputes: a driver's or grid operator's objection to a ledger entry, and its append-only history.

Both tables are append-only like the ledger (migration 0003): on PostgreSQL the ledger's
``ledger_refuse_change()`` refuses ``UPDATE`` and ``DELETE`` (unless ``fleetgrid.ledger_purge`` is
on); on SQLite a trigger refuses ``UPDATE``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 13:01:57.195775
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DISPUTE_TABLES = ("disputes", "dispute_events")

POSTGRES_APPEND_ONLY = """
CREATE TRIGGER {table}_append_only
    BEFORE UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
"""

SQLITE_APPEND_ONLY = """
CREATE TRIGGER {table}_append_only BEFORE UPDATE ON {table}
BEGIN
    SELECT RAISE(ABORT, '{table} rows are a dispute history and cannot be updated; append an event');
END
"""

LedgerId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "disputes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ledger_entry_id", LedgerId, nullable=False),
        sa.Column("account_owner_ref", sa.String(length=100), nullable=False),
        sa.Column("opened_by_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=2000), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["ledger_entry_id"],
            ["ledger_entries.id"],
            name=op.f("fk_disputes_ledger_entry_id_ledger_entries"),
        ),
        sa.ForeignKeyConstraint(["opened_by_id"], ["users.id"], name=op.f("fk_disputes_opened_by_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disputes")),
    )
    with op.batch_alter_table("disputes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_disputes_account_owner_ref_opened_at"),
            ["account_owner_ref", "opened_at"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_disputes_ledger_entry_id"), ["ledger_entry_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_disputes_opened_by_id"), ["opened_by_id"], unique=False)

    op.create_table(
        "dispute_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dispute_id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "opened",
                "comment",
                "adjusted",
                "rejected",
                name="dispute_event_kind",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("author_id", sa.Integer(), nullable=False),
        sa.Column("note", sa.String(length=2000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolves_id", sa.Integer(), nullable=True),
        sa.Column("adjustment_transaction_id", LedgerId, nullable=True),
        sa.CheckConstraint(
            "resolves_id IS NULL OR resolves_id = dispute_id",
            name=op.f("ck_dispute_events_resolves_own_dispute"),
        ),
        sa.ForeignKeyConstraint(
            ["adjustment_transaction_id"],
            ["ledger_transactions.id"],
            name=op.f("fk_dispute_events_adjustment_transaction_id_ledger_transactions"),
        ),
        sa.ForeignKeyConstraint(["author_id"], ["users.id"], name=op.f("fk_dispute_events_author_id_users")),
        sa.ForeignKeyConstraint(
            ["dispute_id"], ["disputes.id"], name=op.f("fk_dispute_events_dispute_id_disputes")
        ),
        sa.ForeignKeyConstraint(
            ["resolves_id"], ["disputes.id"], name=op.f("fk_dispute_events_resolves_id_disputes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispute_events")),
        sa.UniqueConstraint(
            "adjustment_transaction_id", name=op.f("uq_dispute_events_adjustment_transaction_id")
        ),
        sa.UniqueConstraint("resolves_id", name=op.f("uq_dispute_events_resolves_id")),
    )
    with op.batch_alter_table("dispute_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dispute_events_dispute_id_id"), ["dispute_id", "id"], unique=False
        )

    template = POSTGRES_APPEND_ONLY if op.get_bind().dialect.name == "postgresql" else SQLITE_APPEND_ONLY
    for table in DISPUTE_TABLES:
        op.execute(template.format(table=table))


def downgrade() -> None:
    # The append-only triggers go with their tables.
    with op.batch_alter_table("dispute_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dispute_events_dispute_id_id"))
    op.drop_table("dispute_events")
    with op.batch_alter_table("disputes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_disputes_opened_by_id"))
        batch_op.drop_index(batch_op.f("ix_disputes_ledger_entry_id"))
        batch_op.drop_index(batch_op.f("ix_disputes_account_owner_ref_opened_at"))
    op.drop_table("disputes")
