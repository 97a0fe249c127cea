"""Administration: sites, accounts of every role, machine API keys. Admins only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from aggregator.api.deps import SessionDep, require_roles
from aggregator.api.routes.auth import add_user
from aggregator.api.schemas import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    ApiKeyCreate,
    ApiKeyCreated,
    Page,
    SiteCreate,
    SitePublic,
    UserCreate,
    UserPublic,
)
from aggregator.api.security import hash_api_key, new_api_key
from aggregator.db.models import ApiKey, Role, Site, User

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_roles(Role.ADMIN))])

Offset = Annotated[int, Query(ge=0)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT)]


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
def list_sites(
    session: SessionDep, offset: Offset = 0, limit: Limit = DEFAULT_PAGE_LIMIT
) -> Page[SitePublic]:
    total = session.scalar(select(func.count()).select_from(Site)) or 0
    sites = session.scalars(select(Site).order_by(Site.id).offset(offset).limit(limit))
    return Page[SitePublic](
        items=[SitePublic.model_validate(site) for site in sites], total=total, offset=offset, limit=limit
    )


@router.post("/users", status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, session: SessionDep) -> UserPublic:
    return UserPublic.model_validate(add_user(session, body.email, body.password, body.role))


@router.post("/api-keys", status_code=status.HTTP_201_CREATED)
def create_api_key(body: ApiKeyCreate, session: SessionDep) -> ApiKeyCreated:
    """A new key for ``owner_id``, bound to ``site_id`` if given. The key is in this response only."""
    owner = session.get(User, body.owner_id)
    if owner is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"no user {body.owner_id}")
    if body.site_id is not None:
        if session.get(Site, body.site_id) is None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"no site {body.site_id!r}")
        if owner.role is not Role.GATEWAY:
            detail = (
                f"a key bound to a site must belong to a gateway account; user {owner.id} is {owner.role}"
            )
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)
    key = new_api_key()
    api_key = ApiKey(key_hash=hash_api_key(key), owner_id=owner.id, site_id=body.site_id)
    session.add(api_key)
    session.commit()
    return ApiKeyCreated(
        id=api_key.id,
        owner_id=api_key.owner_id,
        site_id=api_key.site_id,
        revoked=api_key.revoked,
        created_at=api_key.created_at,
        key=key,
    )
