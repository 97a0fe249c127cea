"""Settlement: double-entry ledger (accounts, transactions, entries) and versioned settlement runs.

The database guards the ledger as far as each backend can:

- PostgreSQL: a deferred constraint trigger checks at commit that every transaction's entries sum to
  zero in each currency, and another that no transaction is left without entries; row triggers refuse
  ``UPDATE`` of every ledger table and ``DELETE`` unless the session set
  ``fleetgrid.ledger_purge = 'on'`` (for tearing down test data or a retention purge, never for a
  correction).
- SQLite: triggers refuse ``UPDATE``; balancing and ``DELETE`` are refused in code only
  (:func:`aggregator.settlement.ledger.post_transaction`, the ORM listeners of the models). A later
  migration that recreates one of these tables in batch mode on SQLite must recreate its trigger.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 12:54:23.071218
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEDGER_TABLES = ("settlement_runs", "ledger_accounts", "ledger_transactions", "ledger_entries")

POSTGRES_BALANCE = """
CREATE FUNCTION ledger_transaction_balances() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    off record;
BEGIN
    SELECT a.currency AS currency, sum(e.amount_minor) AS total INTO off
    FROM ledger_entries AS e JOIN ledger_accounts AS a ON a.id = e.account_id
    WHERE e.transaction_id = NEW.transaction_id
    GROUP BY a.currency
    HAVING sum(e.amount_minor) <> 0
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % does not balance: its % entries sum to % (minor units)',
            NEW.transaction_id, off.currency, off.total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER ledger_entries_balance
    AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_transaction_balances();

CREATE FUNCTION ledger_transaction_has_entries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM ledger_entries WHERE transaction_id = NEW.id) THEN
        RAISE EXCEPTION 'ledger transaction % has no entries', NEW.id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER ledger_transactions_have_entries
    AFTER INSERT ON ledger_transactions
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_transaction_has_entries();

CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('fleetgrid.ledger_purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% of % row % refused: settlement history is append-only; book a reversing transaction',
        TG_OP, TG_TABLE_NAME, OLD.id
        USING ERRCODE = 'restrict_violation';
END
$$;
"""

POSTGRES_APPEND_ONLY = """
CREATE TRIGGER {table}_append_only
    BEFORE UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
"""

SQLITE_APPEND_ONLY = """
CREATE TRIGGER {table}_append_only BEFORE UPDATE ON {table}
BEGIN
    SELECT RAISE(ABORT, '{table} rows are settlement history and cannot be updated; book a reversal');
END
"""


def upgrade() -> None:
    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "program_receivable",
                "penalties",
                "platform_revenue",
                "wear_compensation_expense",
                "driver_payable",
                name="ledger_account_kind",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("owner_ref", sa.String(length=100), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_accounts")),
        sa.UniqueConstraint(
            "kind", "owner_ref", "currency", name=op.f("uq_ledger_accounts_kind_owner_ref_currency")
        ),
    )
    with op.batch_alter_table("ledger_accounts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ledger_accounts_owner_ref"), ["owner_ref"], unique=False)

    op.create_table(
        "settlement_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=300), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "event",
                "period",
                name="settlement_run_kind",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("inputs_hash", sa.String(length=64), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("supersedes_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("version >= 1", name=op.f("ck_settlement_runs_version_positive")),
        sa.ForeignKeyConstraint(
            ["supersedes_id"],
            ["settlement_runs.id"],
            name=op.f("fk_settlement_runs_supersedes_id_settlement_runs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_runs")),
        sa.UniqueConstraint("scope", "version", name=op.f("uq_settlement_runs_scope_version")),
    )
    op.create_table(
        "ledger_transactions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("booked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reverses_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.ForeignKeyConstraint(
            ["reverses_id"],
            ["ledger_transactions.id"],
            name=op.f("fk_ledger_transactions_reverses_id_ledger_transactions"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["settlement_runs.id"], name=op.f("fk_ledger_transactions_run_id_settlement_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_transactions")),
        sa.UniqueConstraint("reverses_id", name=op.f("uq_ledger_transactions_reverses_id")),
    )
    with op.batch_alter_table("ledger_transactions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ledger_transactions_occurred_at"), ["occurred_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_ledger_transactions_run_id"), ["run_id"], unique=False)

    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("transaction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("memo", sa.String(length=300), nullable=False),
        sa.CheckConstraint("amount_minor <> 0", name=op.f("ck_ledger_entries_amount_minor_not_zero")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["ledger_accounts.id"], name=op.f("fk_ledger_entries_account_id_ledger_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["ledger_transactions.id"],
            name=op.f("fk_ledger_entries_transaction_id_ledger_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
    )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ledger_entries_account_id_transaction_id"),
            ["account_id", "transaction_id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_ledger_entries_transaction_id"), ["transaction_id"], unique=False
        )

    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(POSTGRES_BALANCE)
        for table in LEDGER_TABLES:
            op.execute(POSTGRES_APPEND_ONLY.format(table=table))
    elif dialect == "sqlite":
        for table in LEDGER_TABLES:
            op.execute(SQLITE_APPEND_ONLY.format(table=table))


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_entries_transaction_id"))
        batch_op.drop_index(batch_op.f("ix_ledger_entries_account_id_transaction_id"))

    op.drop_table("ledger_entries")  # its triggers go with it
    with op.batch_alter_table("ledger_transactions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_transactions_run_id"))
        batch_op.drop_index(batch_op.f("ix_ledger_transactions_occurred_at"))

    op.drop_table("ledger_transactions")
    op.drop_table("settlement_runs")
    with op.batch_alter_table("ledger_accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_accounts_owner_ref"))

    op.drop_table("ledger_accounts")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION ledger_refuse_change()")
        op.execute("DROP FUNCTION ledger_transaction_has_entries()")
        op.execute("DROP FUNCTION ledger_transaction_balances()")
