"""Grid operators: dispatch events of their own programs, and the performance delivered on them."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from aggregator.api.deps import require_roles
from aggregator.db.models import Role

router = APIRouter(
    prefix="/operator", tags=["grid operators"], dependencies=[Depends(require_roles(Role.GRID_OPERATOR))]
)
