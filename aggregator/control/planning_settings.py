"""What planning assumes where the database is silent: :class:`PlanningSettings`.

The horizon and step of every plan, the defaults for a session whose vehicle, state of charge, target
or departure is unknown (:mod:`aggregator.control.session_inputs` says where each is used), and the
tariffs by name (:func:`aggregator.control.inputs.site_plan_inputs` prices a site by its
``tariff_ref``). ``[control.planning]`` in ``central.toml`` sets them
(:mod:`aggregator.runtime.config`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import ConfigDict

from market_adapters.tariffs import TouTariff
from optimizer.scenario import ChargeTaper, Tariff

DEFAULT_TARIFF = Tariff(import_price_per_kwh=0.25, export_price_per_kwh=0.0)
"""Used for a site without a known ``tariff_ref``: a flat 0.25 [currency/kWh] import price, nothing
paid for export, no demand charge. Flat prices leave the timing to the tie-breaker (charge early)."""

DEFAULT_CHARGE_TAPER = ChargeTaper(start_soc=0.8, end_fraction=0.05)
"""An assumption, typical of Li-ion CC-CV charging: full power up to 80 % state of charge, then
linearly down to 5 % of it at 100 % (as :mod:`chargersim.vehicles` simulates)."""

TariffSource = Tariff | TouTariff
"""A flat optimizer tariff (one number per price) or a time-of-use tariff priced per step."""


@dataclass(frozen=True)
class PlanningSettings:
    """Horizon, defaults for what the database does not know, and the tariffs by name."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")
    """For :meth:`ControlSettings.from_mapping`: unknown keys are refused."""

    step_minutes: int = 15
    horizon: dt.timedelta = dt.timedelta(hours=24)
    tariffs: Mapping[str, TariffSource] = field(default_factory=dict)
    """Tariff name (a site's ``tariff_ref``) → tariff. A flat :class:`Tariff` must give one number per
    price (a per-step list would not follow the rolling horizon): use a ``TouTariff`` for that."""
    default_tariff: Tariff = DEFAULT_TARIFF
    currency: str = "EUR"
    default_battery_kwh: float = 60.0
    """Battery [kWh] assumed for a session without a known vehicle."""
    default_max_charge_kw: float = 11.0
    """Charging power [kW] assumed for a session without a known vehicle (the EVSE may limit it)."""
    default_arrival_soc_percent: float = 20.0
    default_target_soc_percent: float = 80.0
    default_dwell: dt.timedelta = dt.timedelta(hours=8)
    """Stay assumed from now for a session with no departure from anywhere."""
    overdue_stay: dt.timedelta = dt.timedelta(hours=1)
    """How long a vehicle past its departure is assumed to stay from the horizon start."""
    base_load_max_age: dt.timedelta = dt.timedelta(hours=1)
    charge_taper: ChargeTaper | None = DEFAULT_CHARGE_TAPER
    """The CC-CV taper every planned vehicle gets (the database knows no battery's own); None: none."""

    def __post_init__(self) -> None:
        if self.step_minutes <= 0 or self.horizon <= dt.timedelta(0):
            raise ValueError(
                f"planning settings: step_minutes and horizon must be positive, got {self.step_minutes} "
                f"and {self.horizon}"
            )

    @property
    def step(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.step_minutes)

    @property
    def n_steps(self) -> int:
        return max(1, math.ceil(self.horizon / self.step))


__all__ = ["DEFAULT_CHARGE_TAPER", "DEFAULT_TARIFF", "PlanningSettings", "TariffSource"]
