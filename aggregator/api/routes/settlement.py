"""Settlement: drivers' earnings and statements, programs' invoices, the ledger, and disputes.

- ``/driver/earnings``, ``/driver/statements/{YYYY-MM}``: the calling driver's own;
- ``/operator/programs/{id}/invoice/{YYYY-MM}``: a program of the calling grid operator (another's
  answers 404);
- ``/disputes``: drivers and grid operators open disputes on their own lines, and read and comment on
  the disputes they are party to (admins see and comment on all); anyone else's answers 404;
- ``/admin/settlement/runs``, ``/admin/ledger/...``, ``/admin/disputes``: admins only, who resolve
  disputes.

Statements and invoices are JSON, or ``?format=csv`` / ``?format=pdf`` documents. Months are calendar
months in UTC.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from aggregator.api.deps import Caller, CurrentUser, Now, SessionDep, require_roles
from aggregator.api.paging import PageParams, PageRequest, TimeRange, TimeRangeParams, paginate
from aggregator.api.schemas import Page
from aggregator.api.schemas.settlement import (
    DisputeComment,
    DisputeCreate,
    DisputeDetail,
    DisputeEventPublic,
    DisputePublic,
    DisputeResolve,
    DocumentFormat,
    EarningLinePublic,
    EarningsPage,
    InvoicePublic,
    LedgerAccountPublic,
    LedgerEntryPublic,
    LedgerTransactionPublic,
    Money,
    SettlementRunPublic,
    StatementPublic,
    money_list,
)
from aggregator.db.models import (
    Dispute,
    LedgerAccount,
    LedgerAccountKind,
    LedgerEntry,
    LedgerTransaction,
    Program,
    Role,
    SettlementRun,
)
from aggregator.settlement import disputes
from aggregator.settlement.statement_documents import invoice_csv, invoice_pdf, statement_csv, statement_pdf
from aggregator.settlement.statements import (
    Month,
    StatementError,
    driver_earnings,
    driver_statement,
    program_invoice,
    totals_by_currency,
)

T = TypeVar("T")

DOCUMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}, "application/pdf": {}}, "description": "JSON, CSV or PDF"}
}

FormatParam = Annotated[DocumentFormat, Query(alias="format", description="json, csv or pdf")]


def _invalid(location: tuple[str, ...], message: str, value: Any = None) -> RequestValidationError:
    """A 422 in FastAPI's own shape, whose ``loc`` names the offending field."""
    return RequestValidationError([{"type": "value_error", "loc": location, "msg": message, "input": value}])


def _month(text: str) -> Month:
    try:
        return Month.parse(text)
    except StatementError as error:
        raise _invalid(("path", "month"), str(error), text) from error


def _document(content: str | bytes, media_type: str, filename: str) -> Response:
    return Response(
        content, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )


def _page(
    session: Session, query: Select[Any], page: PageRequest, convert: Callable[[Any], T]
) -> tuple[list[T], int]:
    """One page of ``query`` (ordered) converted by ``convert``, and the total count."""
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    rows = session.scalars(query.offset(page.offset).limit(page.limit)).all()
    return [convert(row) for row in rows], total


# ---------------------------------------------------------------------------------------- drivers

driver_router = APIRouter(
    prefix="/driver", tags=["drivers"], dependencies=[Depends(require_roles(Role.DRIVER))]
)


@driver_router.get("/earnings")
def list_earnings(
    user: CurrentUser, session: SessionDep, page: PageParams, window: TimeRangeParams
) -> EarningsPage:
    """Earnings per settled event (and adjustment) that occurred in the range, newest first, with
    totals per currency over the whole range."""
    lines = driver_earnings(session, user.id, window.start, window.end)
    newest = list(reversed(lines))
    return EarningsPage(
        items=[EarningLinePublic.of(line) for line in newest[page.offset : page.offset + page.limit]],
        total=len(lines),
        offset=page.offset,
        limit=page.limit,
        totals=money_list(totals_by_currency((line.currency, line.total_minor) for line in lines)),
    )


@driver_router.get("/statements/{month}", response_model=StatementPublic, responses=DOCUMENT_RESPONSES)
def read_statement(month: str, user: CurrentUser, session: SessionDep, format: FormatParam = "json") -> Any:
    """The caller's statement for ``month`` (``YYYY-MM``): energy, earning lines, totals."""
    statement = driver_statement(session, user.id, _month(month))
    if format == "csv":
        return _document(statement_csv(statement), "text/csv", f"statement-{month}.csv")
    if format == "pdf":
        return _document(statement_pdf(statement), "application/pdf", f"statement-{month}.pdf")
    return StatementPublic.of(statement)


# -------------------------------------------------------------------------------------- operators

operator_router = APIRouter(
    prefix="/operator", tags=["grid operators"], dependencies=[Depends(require_roles(Role.GRID_OPERATOR))]
)


@operator_router.get(
    "/programs/{program_id}/invoice/{month}", response_model=InvoicePublic, responses=DOCUMENT_RESPONSES
)
def read_invoice(
    program_id: str, month: str, user: CurrentUser, session: SessionDep, format: FormatParam = "json"
) -> Any:
    """The invoice of one of the caller's programs for ``month``: per event, its performance and the
    amount due."""
    program = session.get(Program, program_id)
    if program is None or program.owner_id != user.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no program {program_id!r}")
    invoice = program_invoice(session, program_id, _month(month))
    if format == "csv":
        return _document(invoice_csv(invoice), "text/csv", f"invoice-{program_id}-{month}.csv")
    if format == "pdf":
        return _document(invoice_pdf(invoice), "application/pdf", f"invoice-{program_id}-{month}.pdf")
    return InvoicePublic.of(invoice)


# --------------------------------------------------------------------------------------- disputes


def _dispute_public(session: Session, dispute: Dispute, state: disputes.DisputeStatus) -> DisputePublic:
    entry = session.get(LedgerEntry, dispute.ledger_entry_id)
    assert entry is not None  # a foreign key
    return DisputePublic(
        id=dispute.id,
        status=state,
        ledger_entry_id=dispute.ledger_entry_id,
        account_owner_ref=dispute.account_owner_ref,
        opened_by_id=dispute.opened_by_id,
        reason=dispute.reason,
        opened_at=dispute.opened_at,
        disputed=Money.of(entry.amount_minor, entry.account.currency),
    )


def _dispute_detail(session: Session, dispute: Dispute) -> DisputeDetail:
    state = disputes.statuses(session, [dispute.id])[dispute.id]
    entry = session.get(LedgerEntry, dispute.ledger_entry_id)
    assert entry is not None  # a foreign key
    return DisputeDetail(
        **_dispute_public(session, dispute, state).model_dump(),
        entry=LedgerEntryPublic.of(entry),
        history=[DisputeEventPublic.model_validate(step) for step in disputes.history(session, dispute.id)],
    )


def _dispute_page(
    session: Session,
    query: Select[Dispute],
    page: PageRequest,
    window: TimeRange,
    state: disputes.DisputeStatus | None,
) -> Page[DisputePublic]:
    query = window.apply(query, Dispute.opened_at)
    if state is not None:
        query = disputes.with_status(query, state)
    rows, total = _page(session, query.order_by(Dispute.id.desc()), page, lambda row: row)
    found = disputes.statuses(session, [row.id for row in rows])
    items = [_dispute_public(session, row, found[row.id]) for row in rows]
    return Page[DisputePublic](items=items, total=total, offset=page.offset, limit=page.limit)


def _dispute_http_error(error: disputes.DisputeError) -> Exception:
    if isinstance(error, disputes.DisputeNotFoundError):
        return HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error))
    if isinstance(error, disputes.DisputeConflictError):
        return HTTPException(status.HTTP_409_CONFLICT, detail=str(error))
    return _invalid(("body", error.field), str(error))


StatusParam = Annotated[disputes.DisputeStatus | None, Query(alias="status", description="Only these")]

disputes_router = APIRouter(prefix="/disputes", tags=["disputes"])

PARTIES = (Role.DRIVER, Role.GRID_OPERATOR)
PartyCaller = Annotated[Caller, Depends(require_roles(*PARTIES))]
ReaderCaller = Annotated[Caller, Depends(require_roles(*PARTIES, Role.ADMIN))]


@disputes_router.post("", status_code=status.HTTP_201_CREATED)
def create_dispute(body: DisputeCreate, caller: PartyCaller, session: SessionDep, now: Now) -> DisputeDetail:
    """Dispute one ledger entry of the caller's own account (a line of their statement or invoice)."""
    try:
        dispute = disputes.open_dispute(session, caller.user, body.ledger_entry_id, body.reason, now=now)
    except disputes.DisputeError as error:
        session.rollback()
        raise _dispute_http_error(error) from error
    session.commit()
    return _dispute_detail(session, dispute)


@disputes_router.get("")
def list_disputes(
    caller: ReaderCaller,
    session: SessionDep,
    page: PageParams,
    window: TimeRangeParams,
    state: StatusParam = None,
) -> Page[DisputePublic]:
    """The disputes the caller is party to (all, for an admin) opened in the range, newest first."""
    return _dispute_page(session, disputes.visible_disputes(session, caller.user), page, window, state)


@disputes_router.get("/{dispute_id}")
def read_dispute(dispute_id: int, caller: ReaderCaller, session: SessionDep) -> DisputeDetail:
    """The dispute with the entry it names and its history, oldest first."""
    try:
        dispute = disputes.get_visible(session, caller.user, dispute_id)
    except disputes.DisputeError as error:
        raise _dispute_http_error(error) from error
    return _dispute_detail(session, dispute)


@disputes_router.post("/{dispute_id}/comments", status_code=status.HTTP_201_CREATED)
def comment_dispute(
    dispute_id: int, body: DisputeComment, caller: ReaderCaller, session: SessionDep, now: Now
) -> DisputeDetail:
    """Append a comment to an open dispute the caller is party to (or any, for an admin)."""
    try:
        disputes.add_comment(session, caller.user, dispute_id, body.note, now=now)
    except disputes.DisputeError as error:
        session.rollback()
        raise _dispute_http_error(error) from error
    session.commit()
    return _dispute_detail(session, disputes.get_visible(session, caller.user, dispute_id))


# ------------------------------------------------------------------------------------------ admins

admin_router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_roles(Role.ADMIN))])


@admin_router.get("/settlement/runs")
def list_runs(
    session: SessionDep,
    page: PageParams,
    window: TimeRangeParams,
    scope: Annotated[str | None, Query(description="Only this scope's versions")] = None,
) -> Page[SettlementRunPublic]:
    """Settlement runs made in the range, newest first."""
    query = window.apply(select(SettlementRun), SettlementRun.created_at)
    if scope is not None:
        query = query.where(SettlementRun.scope == scope)
    return paginate(session, query.order_by(SettlementRun.id.desc()), page, SettlementRunPublic)


@admin_router.get("/ledger/accounts")
def list_accounts(
    session: SessionDep,
    page: PageParams,
    window: TimeRangeParams,
    kind: Annotated[LedgerAccountKind | None, Query(description="Only accounts of this kind")] = None,
    owner_ref: Annotated[str | None, Query(description="Only this owner's: user:<id>, program:<id>")] = None,
) -> Page[LedgerAccountPublic]:
    """Ledger accounts with their balance over the transactions that occurred in the range."""
    query = select(LedgerAccount).order_by(LedgerAccount.id)
    if kind is not None:
        query = query.where(LedgerAccount.kind == kind)
    if owner_ref is not None:
        query = query.where(LedgerAccount.owner_ref == owner_ref)
    accounts, total = _page(session, query, page, lambda row: row)
    sums = (
        select(LedgerEntry.account_id, func.sum(LedgerEntry.amount_minor))
        .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
        .where(LedgerEntry.account_id.in_([account.id for account in accounts]))
        .group_by(LedgerEntry.account_id)
    )
    if window.start is not None:
        sums = sums.where(LedgerTransaction.occurred_at >= window.start)
    if window.end is not None:
        sums = sums.where(LedgerTransaction.occurred_at < window.end)
    balance = {account_id: int(amount) for account_id, amount in session.execute(sums)}
    items = [
        LedgerAccountPublic(
            id=account.id,
            kind=account.kind,
            owner_ref=account.owner_ref,
            currency=account.currency,
            balance=Money.of(balance.get(account.id, 0), account.currency),
            created_at=account.created_at,
        )
        for account in accounts
    ]
    return Page[LedgerAccountPublic](items=items, total=total, offset=page.offset, limit=page.limit)


@admin_router.get("/ledger/transactions")
def list_transactions(
    session: SessionDep,
    page: PageParams,
    window: TimeRangeParams,
    account_id: Annotated[int | None, Query(description="Only transactions touching this account")] = None,
) -> Page[LedgerTransactionPublic]:
    """Ledger transactions that occurred in the range, newest first, with their entries."""
    query = window.apply(select(LedgerTransaction), LedgerTransaction.occurred_at)
    if account_id is not None:
        touching = select(LedgerEntry.transaction_id).where(LedgerEntry.account_id == account_id)
        query = query.where(LedgerTransaction.id.in_(touching))
    query = query.order_by(LedgerTransaction.occurred_at.desc(), LedgerTransaction.id.desc())

    def public(transaction: LedgerTransaction) -> LedgerTransactionPublic:
        return LedgerTransactionPublic(
            id=transaction.id,
            run_id=transaction.run_id,
            description=transaction.description,
            occurred_at=transaction.occurred_at,
            booked_at=transaction.booked_at,
            reverses_id=transaction.reverses_id,
            entries=[LedgerEntryPublic.of(entry) for entry in transaction.entries],
        )

    items, total = _page(session, query, page, public)
    return Page[LedgerTransactionPublic](items=items, total=total, offset=page.offset, limit=page.limit)


@admin_router.get("/disputes")
def list_all_disputes(
    session: SessionDep, page: PageParams, window: TimeRangeParams, state: StatusParam = None
) -> Page[DisputePublic]:
    """Every dispute opened in the range, newest first (``?status=open`` for the work queue)."""
    return _dispute_page(session, select(Dispute), page, window, state)


@admin_router.post("/disputes/{dispute_id}/resolve")
def resolve_dispute(
    dispute_id: int,
    body: DisputeResolve,
    caller: Annotated[Caller, Depends(require_roles(Role.ADMIN))],
    session: SessionDep,
    now: Now,
) -> DisputeDetail:
    """Resolve an open dispute: ``adjusted`` books a balanced adjusting transaction in the disputing
    party's favour, ``rejected`` changes nothing; 409 if it was resolved already."""
    adjustment = None
    if body.outcome == "adjusted":
        assert body.amount_minor is not None and body.counter_account is not None  # the model checks
        adjustment = disputes.Adjustment(body.amount_minor, body.counter_account)
    try:
        disputes.resolve(session, caller.user, dispute_id, body.note, adjustment=adjustment, now=now)
        session.commit()
    except disputes.DisputeError as error:
        session.rollback()
        raise _dispute_http_error(error) from error
    return _dispute_detail(session, disputes.get_visible(session, caller.user, dispute_id))


router = APIRouter()
for _part in (driver_router, operator_router, disputes_router, admin_router):
    router.include_router(_part)

__all__ = ["router"]
