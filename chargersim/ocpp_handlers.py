"""The simulated station's answers to CSMS-initiated OCPP requests, for all three versions.

:class:`StationHandlers` routes SetChargingProfile, ClearChargingProfile and GetCompositeSchedule (1.6
names and 2.x names) to the :class:`~chargersim.stations.SimulatedCharger` that does the work, and
wraps its answer in the version's own result type; :func:`station_class` gives the ``ocpp`` library's
ChargePoint of a protocol with these handlers, which the station's link runs on its websocket.

The charging-rate units its profiles may use (``sim.store.rate_units``) are readable as a real station
has them: 1.6 ``GetConfiguration`` key ``ChargingScheduleAllowedChargingRateUnit`` ("Current",
"Power"), 2.x ``GetVariables`` ``SmartChargingCtrlr.RateUnit`` ("A", "W"). A station built with
``sim.store.reports_composite = False`` answers GetCompositeSchedule with a NotImplemented CallError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v21 import call_result as result21
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as result201

if TYPE_CHECKING:
    from chargersim.stations import Protocol, SimulatedCharger

RATE_UNIT_KEY_16 = "ChargingScheduleAllowedChargingRateUnit"
_UNIT_WORDS_16 = {"A": "Current", "W": "Power"}


class StationHandlers:
    """CSMS-initiated messages, for all three versions; ``self.sim`` does the work."""

    sim: SimulatedCharger
    _ocpp_version: str

    def __init__(self, station_id: str, connection: Any, sim: SimulatedCharger) -> None:
        self.sim = sim  # before the library builds its route map
        super().__init__(station_id, connection, response_timeout=sim.response_timeout_s)  # type: ignore[call-arg]

    @on("SetChargingProfile")
    def on_set_charging_profile(self, **kwargs: Any) -> Any:
        if self.sim.protocol == "1.6":
            status = self.sim.set_profile(kwargs["connector_id"], kwargs["cs_charging_profiles"])
            return result16.SetChargingProfile(status)
        status = self.sim.set_profile(kwargs["evse_id"], kwargs["charging_profile"])
        return self._results.SetChargingProfile(status=status)

    @on("ClearChargingProfile")
    def on_clear_charging_profile(self, **kwargs: Any) -> Any:
        if self.sim.protocol == "1.6":
            status = self.sim.clear_profiles(
                kwargs.get("id"),
                kwargs.get("connector_id"),
                kwargs.get("charging_profile_purpose"),
                kwargs.get("stack_level"),
            )
            return result16.ClearChargingProfile(status)
        criteria = kwargs.get("charging_profile_criteria") or {}
        status = self.sim.clear_profiles(
            kwargs.get("charging_profile_id"),
            criteria.get("evse_id"),
            criteria.get("charging_profile_purpose"),
            criteria.get("stack_level"),
        )
        return self._results.ClearChargingProfile(status=status)

    @on("GetConfiguration")
    def on_get_configuration(self, key: list[str] | None = None, **kwargs: Any) -> Any:
        """1.6 only (2.x routes no such action): the rate units; other keys are unknown here."""
        value = ",".join(_UNIT_WORDS_16[unit] for unit in self.sim.store.rate_units)
        entry = {"key": RATE_UNIT_KEY_16, "readonly": True, "value": value}
        unknown = [k for k in key or [] if k != RATE_UNIT_KEY_16]
        known = [entry] if key is None or RATE_UNIT_KEY_16 in key else []
        return result16.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on("GetVariables")
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **kwargs: Any) -> Any:
        """2.x: ``SmartChargingCtrlr.RateUnit``; any other variable is unknown here."""
        results = []
        for wanted in get_variable_data:
            component, variable = wanted["component"], wanted["variable"]
            known = (component.get("name"), variable.get("name")) == ("SmartChargingCtrlr", "RateUnit")
            result: dict[str, Any] = {
                "attribute_status": "Accepted" if known else "UnknownVariable",
                "component": component,
                "variable": variable,
            }
            if known:
                result["attribute_value"] = ",".join(self.sim.store.rate_units)
            results.append(result)
        return self._results.GetVariables(get_variable_result=results)

    @on("GetCompositeSchedule")
    def on_get_composite_schedule(self, **kwargs: Any) -> Any:
        if not self.sim.store.reports_composite:
            raise OcppNotImplemented(details={"cause": "this station does not compute composite schedules"})
        if self.sim.protocol == "1.6":
            connector = kwargs["connector_id"]
            schedule = self.sim.composite_payload(
                connector, kwargs["duration"], kwargs.get("charging_rate_unit")
            )
            if schedule is None:
                return result16.GetCompositeSchedule("Rejected")
            return result16.GetCompositeSchedule(
                "Accepted",
                connector_id=connector,
                schedule_start=schedule["start_schedule"],
                charging_schedule=schedule,
            )
        schedule = self.sim.composite_payload(
            kwargs["evse_id"], kwargs["duration"], kwargs.get("charging_rate_unit")
        )
        if schedule is None:
            return self._results.GetCompositeSchedule(status="Rejected")
        return self._results.GetCompositeSchedule(status="Accepted", schedule=schedule)

    @property
    def _results(self) -> Any:
        return result21 if self.sim.protocol == "2.1" else result201


class Station16(StationHandlers, ChargePoint16):
    pass


class Station201(StationHandlers, ChargePoint201):
    pass


class Station21(StationHandlers, ChargePoint21):
    pass


def station_class(protocol: Protocol) -> type[StationHandlers]:
    """The ``ocpp`` library's ChargePoint of ``protocol`` with our handlers."""
    return {"1.6": Station16, "2.0.1": Station201, "2.1": Station21}[protocol]
