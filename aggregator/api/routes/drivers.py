"""Drivers: their vehicles, V2G consent, charging preferences, sessions and overrides, earnings."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from aggregator.api.deps import require_roles
from aggregator.db.models import Role

router = APIRouter(prefix="/driver", tags=["drivers"], dependencies=[Depends(require_roles(Role.DRIVER))])
