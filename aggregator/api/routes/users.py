"""What any signed-in account can read about itself."""

from __future__ import annotations

from fastapi import APIRouter

from aggregator.api.deps import CurrentUser
from aggregator.api.schemas import UserPublic

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/me")
def read_me(user: CurrentUser) -> UserPublic:
    return UserPublic.model_validate(user)
