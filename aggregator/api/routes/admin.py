"""Administration: sites and their chargers, accounts of every role, machine API keys, the grid
operators' programs with the sites enrolled in them, and the service's status (whether its outside
peers answer). Admins only.

A change to what a site's plan is made from (its limits, a charger's power) asks the control loop
to re-plan that site.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator.api.deps import AdminCaller, ReplanDep, SessionDep, require_roles
from aggregator.api.paging import PageParams, paginate
from aggregator.api.routes.auth import add_user
from aggregator.api.schemas import Page, UserCreate, UserPublic
from aggregator.api.schemas.admin import (
    AccountPublic,
    AccountUpdate,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    ChargerCreate,
    ChargerPublic,
    ChargerUpdate,
    DependencyPublic,
    ProgramCreate,
    ProgramPublic,
    ProgramUpdate,
    ServiceStatus,
    SiteCreate,
    SitePublic,
    SiteUpdate,
)
from aggregator.api.security import hash_api_key, new_api_key
from aggregator.db.models import ApiKey, Charger, Program, ProgramSite, Role, Site, User
from aggregator.programs.terms import TermsError, program_payment_terms

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_roles(Role.ADMIN))])


def _not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no {what}")


def _unprocessable(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)


def _site(session: Session, site_id: str) -> Site:
    site = session.get(Site, site_id)
    if site is None:
        raise _not_found(f"site {site_id!r}")
    return site


# ------------------------------------------------------------------------------------------- status


@router.get("/status")
async def service_status(request: Request) -> ServiceStatus:
    """Whether the service's outside peers answer: each OpenADR VTN (``openadr:<n>``), InfluxDB and the
    MQTT broker, with since when, the last error and the failed attempts since it was last up. The
    service put them on ``app.state.dependencies``; an API run without it lists none. (Read on the event
    loop, where the components update them, so one answer is one moment.)"""
    entries: Iterable[object] = getattr(request.app.state, "dependencies", ())
    dependencies = [DependencyPublic.model_validate(entry) for entry in entries]
    degraded = any(entry.state == "down" for entry in dependencies)
    return ServiceStatus(status="degraded" if degraded else "ok", dependencies=dependencies)


# -------------------------------------------------------------------------------------------- sites


@router.post("/sites", status_code=status.HTTP_201_CREATED)
def create_site(body: SiteCreate, session: SessionDep) -> SitePublic:
    site = Site(**body.model_dump())
    session.add(site)
    try:
        session.commit()
    except IntegrityError as error:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"site {body.id!r} exists") from error
    return SitePublic.model_validate(site)


@router.get("/sites")
def list_sites(session: SessionDep, page: PageParams) -> Page[SitePublic]:
    return paginate(session, select(Site).order_by(Site.id), page, SitePublic)


@router.get("/sites/{site_id}")
def get_site(site_id: str, session: SessionDep) -> SitePublic:
    return SitePublic.model_validate(_site(session, site_id))


@router.patch("/sites/{site_id}")
def update_site(site_id: str, body: SiteUpdate, session: SessionDep, replans: ReplanDep) -> SitePublic:
    """Change a site's name, limits [kW], tariff or time zone; the site is re-planned."""
    site = _site(session, site_id)
    changes = body.changes()
    for name, value in changes.items():
        setattr(site, name, value)
    session.commit()
    if changes:
        replans.request(site.id, f"site:{','.join(sorted(changes))}")
    return SitePublic.model_validate(site)


# ----------------------------------------------------------------------------------------- chargers


@router.post("/sites/{site_id}/chargers", status_code=status.HTTP_201_CREATED)
def create_charger(
    site_id: str, body: ChargerCreate, session: SessionDep, replans: ReplanDep
) -> ChargerPublic:
    """Register an EVSE of the site; 409 if ``(charge_point_id, evse_id)`` is already registered there."""
    site = _site(session, site_id)
    charger = Charger(site_id=site.id, **body.model_dump())
    session.add(charger)
    try:
        session.commit()
    except IntegrityError as error:
        session.rollback()
        detail = f"site {site_id!r} already has EVSE {body.evse_id} of charge point {body.charge_point_id!r}"
        raise HTTPException(status.HTTP_409_CONFLICT, detail=detail) from error
    replans.request(site_id, f"charger:{charger.id} added")
    return ChargerPublic.model_validate(charger)


@router.get("/sites/{site_id}/chargers")
def list_chargers(site_id: str, session: SessionDep, page: PageParams) -> Page[ChargerPublic]:
    site = _site(session, site_id)
    query = select(Charger).where(Charger.site_id == site.id).order_by(Charger.id)
    return paginate(session, query, page, ChargerPublic)


@router.patch("/chargers/{charger_id}")
def update_charger(
    charger_id: int, body: ChargerUpdate, session: SessionDep, replans: ReplanDep
) -> ChargerPublic:
    """Change an EVSE's power limit [kW] or whether it discharges; its site is re-planned."""
    charger = session.get(Charger, charger_id)
    if charger is None:
        raise _not_found(f"charger {charger_id}")
    changes = body.changes()
    for name, value in changes.items():
        setattr(charger, name, value)
    session.commit()
    if changes:
        replans.request(charger.site_id, f"charger:{charger.id} changed")
    return ChargerPublic.model_validate(charger)


# -------------------------------------------------------------------------------------------- users


@router.post("/users", status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, session: SessionDep) -> UserPublic:
    return UserPublic.model_validate(add_user(session, body.email, body.password, body.role))


@router.get("/users")
def list_users(
    session: SessionDep,
    page: PageParams,
    role: Annotated[Role | None, Query(description="Only accounts of this role")] = None,
    is_active: Annotated[bool | None, Query(description="Only active (or deactivated) accounts")] = None,
) -> Page[AccountPublic]:
    query = select(User).order_by(User.id)
    if role is not None:
        query = query.where(User.role == role)
    if is_active is not None:
        query = query.where(User.is_active == is_active)
    return paginate(session, query, page, AccountPublic)


@router.patch("/users/{user_id}")
def update_user(user_id: int, body: AccountUpdate, session: SessionDep, caller: AdminCaller) -> AccountPublic:
    """Deactivate (or reactivate) an account: a deactivated one cannot log in, and its access tokens
    and API keys are refused. Accounts are never deleted (their history stays)."""
    user = session.get(User, user_id)
    if user is None:
        raise _not_found(f"user {user_id}")
    if user.id == caller.user.id and not body.is_active:
        raise HTTPException(status.HTTP_409_CONFLICT, detail="an admin cannot deactivate their own account")
    user.is_active = body.is_active
    session.commit()
    return AccountPublic.model_validate(user)


# ----------------------------------------------------------------------------------------- API keys


@router.post("/api-keys", status_code=status.HTTP_201_CREATED)
def create_api_key(body: ApiKeyCreate, session: SessionDep) -> ApiKeyCreated:
    """A new key for ``owner_id``, bound to ``site_id`` if given. The key is in this response only."""
    owner = session.get(User, body.owner_id)
    if owner is None:
        raise _unprocessable(f"owner_id: no user {body.owner_id}")
    if body.site_id is not None:
        if session.get(Site, body.site_id) is None:
            raise _unprocessable(f"site_id: no site {body.site_id!r}")
        if owner.role is not Role.GATEWAY:
            raise _unprocessable(
                f"a key bound to a site must belong to a gateway account; user {owner.id} is {owner.role}"
            )
    key = new_api_key()
    api_key = ApiKey(key_hash=hash_api_key(key), name=body.name, owner_id=owner.id, site_id=body.site_id)
    session.add(api_key)
    session.commit()
    return ApiKeyCreated(**ApiKeyPublic.model_validate(api_key).model_dump(), key=key)


@router.get("/api-keys")
def list_api_keys(
    session: SessionDep,
    page: PageParams,
    owner_id: Annotated[int | None, Query(description="Only the keys of this account")] = None,
    site_id: Annotated[str | None, Query(description="Only the keys bound to this site")] = None,
    revoked: Annotated[bool | None, Query(description="Only revoked (or usable) keys")] = None,
) -> Page[ApiKeyPublic]:
    """The keys (never the keys themselves, nor their hashes)."""
    query = select(ApiKey).order_by(ApiKey.id)
    if owner_id is not None:
        query = query.where(ApiKey.owner_id == owner_id)
    if site_id is not None:
        query = query.where(ApiKey.site_id == site_id)
    if revoked is not None:
        query = query.where(ApiKey.revoked == revoked)
    return paginate(session, query, page, ApiKeyPublic)


@router.post("/api-keys/{key_id}/revoke")
def revoke_api_key(key_id: int, session: SessionDep) -> ApiKeyPublic:
    """Revoke a key for good (revoking a revoked key changes nothing); a new key is a new row."""
    api_key = session.get(ApiKey, key_id)
    if api_key is None:
        raise _not_found(f"API key {key_id}")
    api_key.revoked = True
    session.commit()
    return ApiKeyPublic.model_validate(api_key)


# ----------------------------------------------------------------------------------------- programs


def _program(session: Session, program_id: str) -> Program:
    program = session.get(Program, program_id)
    if program is None:
        raise _not_found(f"program {program_id!r}")
    return program


def _grid_operator(session: Session, owner_id: int) -> User:
    owner = session.get(User, owner_id)
    if owner is None:
        raise _unprocessable(f"owner_id: no user {owner_id}")
    if owner.role is not Role.GRID_OPERATOR:
        raise _unprocessable(f"owner_id: user {owner_id} is {owner.role}, not a grid_operator")
    return owner


@router.post("/programs", status_code=status.HTTP_201_CREATED)
def create_program(body: ProgramCreate, session: SessionDep) -> ProgramPublic:
    """A grid operator's DR or V2G program: payment terms that pay (validated, stored as given), or
    ``unpaid: true``; measurement is stored as given."""
    _grid_operator(session, body.owner_id)
    program = Program(**body.model_dump())
    session.add(program)
    try:
        session.commit()
    except IntegrityError as error:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"program {body.id!r} exists") from error
    return ProgramPublic.model_validate(program)


@router.get("/programs")
def list_programs(
    session: SessionDep,
    page: PageParams,
    owner_id: Annotated[int | None, Query(description="Only the programs of this grid operator")] = None,
) -> Page[ProgramPublic]:
    query = select(Program).order_by(Program.id)
    if owner_id is not None:
        query = query.where(Program.owner_id == owner_id)
    return paginate(session, query, page, ProgramPublic)


@router.get("/programs/{program_id}")
def get_program(program_id: str, session: SessionDep) -> ProgramPublic:
    return ProgramPublic.model_validate(_program(session, program_id))


@router.patch("/programs/{program_id}")
def update_program(program_id: str, body: ProgramUpdate, session: SessionDep) -> ProgramPublic:
    program = _program(session, program_id)
    changes = body.changes()
    if "owner_id" in changes:
        _grid_operator(session, changes["owner_id"])
    if changes.keys() & {"currency", "unpaid", "payment_terms"}:
        try:
            program_payment_terms(
                changes.get("payment_terms", program.payment_terms),
                changes.get("currency", program.currency),
                unpaid=changes.get("unpaid", program.unpaid),
            )
        except TermsError as error:
            raise _unprocessable(f"payment_terms: {error}") from error
    for name, value in changes.items():
        setattr(program, name, value)
    session.commit()
    return ProgramPublic.model_validate(program)


@router.put("/programs/{program_id}/sites/{site_id}")
def enrol_site(program_id: str, site_id: str, session: SessionDep) -> ProgramPublic:
    """Enrol a site in the program (enrolling it again changes nothing)."""
    program = _program(session, program_id)
    site = _site(session, site_id)
    if session.get(ProgramSite, (program.id, site.id)) is None:
        session.add(ProgramSite(program_id=program.id, site_id=site.id))
        session.commit()
        session.refresh(program)
    return ProgramPublic.model_validate(program)


@router.delete("/programs/{program_id}/sites/{site_id}", status_code=status.HTTP_204_NO_CONTENT)
def withdraw_site(program_id: str, site_id: str, session: SessionDep) -> Response:
    """Withdraw a site from the program; 404 if it is not enrolled. Past events keep their targets."""
    program = _program(session, program_id)
    enrolment = session.get(ProgramSite, (program.id, site_id))
    if enrolment is None:
        raise _not_found(f"site {site_id!r} enrolled in program {program_id!r}")
    session.delete(enrolment)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
