"""How a program measures its events: the baseline method and its parameters (``Program.measurement``).

The method and its parameters are data: the :data:`BaselineMethod` union validates
``Program.measurement``, and an event's site baselines are declared with it when the event is notified
(:mod:`aggregator.programs.baseline_declarations`). What each method computes from the meter is
:mod:`aggregator.settlement.baselines`; the presets' sources are cited there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


class DayOfAdjustment(BaseModel):
    """Scale or shift a day-matching baseline to the event day's own load before the event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["multiplicative", "additive"]
    window_hours: float = Field(gt=0, le=24, description="Length of the adjustment window [h]")
    gap_hours: float = Field(0, ge=0, le=24, description="The window ends this long before the event [h]")
    cap_up: float | None = Field(
        None, ge=0, description="Largest upward adjustment: fraction (multiplicative) or kW (additive)"
    )
    cap_down: float | None = Field(
        None, ge=0, description="Largest downward adjustment: fraction (multiplicative) or kW (additive)"
    )

    @model_validator(mode="after")
    def _multiplicative_floor(self) -> DayOfAdjustment:
        if self.kind == "multiplicative" and self.cap_down is not None and self.cap_down > 1:
            raise ValueError(f"cap_down {self.cap_down} would allow a negative multiplicative factor")
        return self


class XofYConfig(BaseModel):
    """Day matching: the ``x`` highest of the ``y`` most recent eligible days (``x == y``: plain mean)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["x_of_y"] = "x_of_y"
    x: int = Field(ge=1, description="Days averaged")
    y: int = Field(ge=1, description="Most recent eligible days considered")
    lookback_days: int = Field(45, ge=1, le=366, description="Calendar days searched back from the event day")
    min_days: int | None = Field(None, ge=1, description="Fewest eligible days accepted (default: y)")
    adjustment: DayOfAdjustment | None = None

    @model_validator(mode="after")
    def _x_within_y(self) -> XofYConfig:
        if self.x > self.y:
            raise ValueError(f"x ({self.x}) cannot exceed y ({self.y})")
        if self.min_days is not None and self.min_days > self.y:
            raise ValueError(f"min_days ({self.min_days}) cannot exceed y ({self.y})")
        return self

    @property
    def required_days(self) -> int:
        return self.y if self.min_days is None else self.min_days


class SameDayConfig(BaseModel):
    """A flat baseline from the same day's load before and after the event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["same_day"] = "same_day"
    hours_before: float = Field(3, ge=0, le=24)
    skip_before: float = Field(1, ge=0, le=24)
    hours_after: float = Field(2, ge=0, le=24)
    skip_after: float = Field(1, ge=0, le=24)

    @model_validator(mode="after")
    def _some_window(self) -> SameDayConfig:
        if self.hours_before == 0 and self.hours_after == 0:
            raise ValueError("hours_before and hours_after are both 0: no window to average")
        return self


class MeterBeforeConfig(BaseModel):
    """Meter before / meter after: the reading just before the event, held flat."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["meter_before_after"] = "meter_before_after"
    intervals_before: int = Field(1, ge=1, le=96)
    gap_intervals: int = Field(0, ge=0, le=96)


class CounterfactualConfig(BaseModel):
    """The optimiser's plan for the site without the event, supplied by the caller."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["counterfactual"] = "counterfactual"


BaselineMethod = Annotated[
    XofYConfig | SameDayConfig | MeterBeforeConfig | CounterfactualConfig, Field(discriminator="method")
]
"""How a program measures delivery; ``Program.measurement`` validates against this."""

BASELINE_METHOD: TypeAdapter[BaselineMethod] = TypeAdapter(BaselineMethod)


def baseline_method(measurement: Mapping[str, Any]) -> BaselineMethod:
    """``Program.measurement`` as a :data:`BaselineMethod` (raises pydantic's ``ValidationError``)."""
    return BASELINE_METHOD.validate_python(measurement)


CAISO_10_IN_10 = XofYConfig(
    x=10,
    y=10,
    adjustment=DayOfAdjustment(kind="multiplicative", window_hours=3, gap_hours=1, cap_up=0.2, cap_down=0.2),
)
NYISO_AVERAGE_DAY = XofYConfig(
    x=5,
    y=10,
    lookback_days=30,
    adjustment=DayOfAdjustment(kind="multiplicative", window_hours=2, gap_hours=2, cap_up=0.2, cap_down=0.2),
)
PJM_HIGH_4_OF_5 = XofYConfig(
    x=4, y=5, lookback_days=45, adjustment=DayOfAdjustment(kind="additive", window_hours=3, gap_hours=1)
)
PJM_SAME_DAY_3_2 = SameDayConfig(hours_before=3, skip_before=1, hours_after=2, skip_after=1)


def declared_parameters(method: BaselineMethod) -> dict[str, Any]:
    """``method`` with every parameter written out (defaults included), as JSON data: what a
    declaration stores so the baseline can be recomputed whatever the defaults become."""
    return BASELINE_METHOD.dump_python(method, mode="json")


__all__ = [
    "BASELINE_METHOD",
    "CAISO_10_IN_10",
    "NYISO_AVERAGE_DAY",
    "PJM_HIGH_4_OF_5",
    "PJM_SAME_DAY_3_2",
    "BaselineMethod",
    "CounterfactualConfig",
    "DayOfAdjustment",
    "MeterBeforeConfig",
    "SameDayConfig",
    "XofYConfig",
    "baseline_method",
    "declared_parameters",
]
