"""Energy traders: schedules, planned against actual import, flexibility, KPIs, what-if re-optimisation."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from aggregator.api.deps import require_roles
from aggregator.db.models import Role

router = APIRouter(prefix="/trader", tags=["traders"], dependencies=[Depends(require_roles(Role.TRADER))])
