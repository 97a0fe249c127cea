"""Logging in (OAuth2 password flow) and drivers signing themselves up."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from aggregator.api.deps import SessionDep, SettingsDep
from aggregator.api.schemas import TokenPublic, UserPublic, UserSignup
from aggregator.api.security import create_access_token, hash_password, verify_password
from aggregator.db.models import Role, User

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/token")
def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], session: SessionDep, settings: SettingsDep
) -> TokenPublic:
    """Exchange e-mail (as ``username``) and password for a bearer access token."""
    user = session.scalar(select(User).where(User.email == form.username.strip().lower()))
    verified = verify_password(form.password, user.password_hash if user else None)
    if user is None or not verified or not user.is_active:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="wrong e-mail or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return TokenPublic(
        access_token=create_access_token(user.id, user.role, settings),
        expires_in=settings.access_token_minutes * 60,
    )


@router.post("/signup", status_code=status.HTTP_201_CREATED)
def signup(body: UserSignup, session: SessionDep) -> UserPublic:
    """A driver creates their own account (other roles are created by an admin)."""
    return UserPublic.model_validate(add_user(session, body.email, body.password, Role.DRIVER))


def add_user(session: SessionDep, email: str, password: str, role: Role) -> User:
    """Insert and commit a user; 409 if the e-mail is taken."""
    user = User(email=email, password_hash=hash_password(password), role=role)
    session.add(user)
    try:
        session.commit()
    except IntegrityError as error:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"{email} already has an account") from error
    return user
