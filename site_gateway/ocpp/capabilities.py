"""What a charger and the vehicle at it can do, as the charger says, and what the gateway may ask of them.

Pure functions and small value types, no I/O (:mod:`site_gateway.ocpp.station` asks the charger).

Charging-rate units (:class:`ChargerCapabilities`):

- read from the charger after every boot: OCPP 1.6 ``GetConfiguration`` of
  ``ChargingScheduleAllowedChargingRateUnit`` (``"Current"``, ``"Power"`` or both); OCPP 2.x
  ``GetVariables`` of ``SmartChargingCtrlr.RateUnit`` (``"A"``, ``"W"`` or both);
- a profile goes in the configured ``limit_unit`` when the charger allows it, else in the unit it does
  allow; a charger that does not say (an unknown key, a CallError, no answer) gets ``limit_unit``;
- amperes stand for ``W / (voltage_v x phases)`` with the voltage and phases of the charger's
  configuration (230 V, 3 phases by default): the assumption is the nominal phase voltage, so a grid
  running above it lets the charger draw a little more than the kW it was given.

Composite schedules: a charger that answers GetCompositeSchedule with a NotSupported or NotImplemented
CallError cannot report one; it is remembered (:attr:`ChargerCapabilities.composite_schedule`), and an
accepted profile on it stands as accepted, verified from its meter values instead.

Discharge (:class:`DischargeCapability`), per session:

- OCPP 1.6 never discharges; OCPP 2.0.1 only on chargers configured with ``discharge_on_201``;
- the EV's own word decides when the charger reports it: a NotifyEVChargingNeeds whose
  ``requestedEnergyTransfer`` is a bidirectional (BPT, ISO 15118-20) mode may discharge up to its
  ``v2xChargingParameters.maxDischargePower`` (and the charger's ``max_discharge_kw``); any other
  mode may not. OCPP 2.0.1 has no BPT modes, so there the charger's declaration stands;
- until the vehicle says (and at chargers whose vehicles never do, such as DC chargers with
  CHAdeMO), the charger's declared capability stands: its configured ``max_discharge_kw``.

A vehicle that did not negotiate bidirectional transfer is refused discharge by the *vehicle*; a
charger that cannot discharge refuses it itself: the gateway tells the centre which.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from site_gateway.config import ChargerSection

RATE_UNIT_KEY_16 = "ChargingScheduleAllowedChargingRateUnit"
"""OCPP 1.6 configuration key: the charging-rate units a charger accepts in profiles."""
RATE_UNIT_COMPONENT = "SmartChargingCtrlr"
RATE_UNIT_VARIABLE = "RateUnit"
"""OCPP 2.x device model: ``SmartChargingCtrlr.RateUnit``."""
_UNIT_WORDS = {"current": "A", "a": "A", "power": "W", "w": "W"}

BPT_MODES = frozenset({"AC_BPT", "AC_BPT_DER", "DC_BPT", "DC_ACDP_BPT"})
"""OCPP 2.1 ``EnergyTransferModeEnumType`` values for bidirectional power transfer."""
COMPOSITE_UNSUPPORTED = frozenset({"NotSupported", "NotImplemented"})
"""CallError codes that say a charger cannot report a composite schedule at all."""


class OcppVersion(StrEnum):
    """Negotiated websocket subprotocol, one per OCPP version we speak."""

    V16 = "ocpp1.6"
    V201 = "ocpp2.0.1"
    V21 = "ocpp2.1"


@dataclass(frozen=True, slots=True)
class ChargerCapabilities:
    """What a charger said it can do with charging profiles."""

    rate_units: tuple[str, ...] | None = None
    """Units its profiles may use ("A", "W"); ``None`` when it did not say."""
    composite_schedule: bool = True
    """False once it answered GetCompositeSchedule with NotSupported or NotImplemented."""


def parse_rate_units(text: str | None) -> tuple[str, ...] | None:
    """``"Current,Power"`` (1.6) or ``"A,W"`` (2.x) as ``("A", "W")``; ``None`` when nothing readable."""
    if not text:
        return None
    units: list[str] = []
    for word in text.replace(";", ",").split(","):
        unit = _UNIT_WORDS.get(word.strip().lower())
        if unit is not None and unit not in units:
            units.append(unit)
    return tuple(units) or None


def rate_unit(charger: ChargerSection, capabilities: ChargerCapabilities | None = None) -> str:
    """The unit of the profiles sent to ``charger``: its configured ``limit_unit`` when the charger
    allows it (or did not say), else the unit it allows."""
    allowed = capabilities.rate_units if capabilities is not None else None
    if not allowed or charger.limit_unit in allowed:
        return charger.limit_unit
    return allowed[0]


class DischargeRefusal(StrEnum):
    """Who says no to discharging."""

    CHARGER = "charger"
    """The charger or its protocol version cannot discharge (or is not configured to)."""
    VEHICLE = "vehicle"
    """The vehicle did not negotiate bidirectional transfer."""


@dataclass(frozen=True, slots=True)
class DischargeCapability:
    """The most a session may discharge [kW, >= 0] and, at 0, who refuses and why."""

    max_kw: float
    refused_by: DischargeRefusal | None = None
    reason: str | None = None

    @property
    def allowed(self) -> bool:
        return self.max_kw > 0

    def in_words(self) -> str:
        """Who refuses and why, to follow "limited to 0.00 kW by" in an acknowledgement."""
        return f"the {self.refused_by or DischargeRefusal.CHARGER}: {self.reason or 'no discharge'}"


NO_DISCHARGE = DischargeCapability(0.0)
"""Nothing known yet: no discharge."""


def declared_discharge(version: OcppVersion, charger: ChargerSection) -> DischargeCapability:
    """What the charger's configuration allows, before (or without) the vehicle's word."""
    if version is OcppVersion.V16:
        return DischargeCapability(0.0, DischargeRefusal.CHARGER, "OCPP 1.6 cannot discharge")
    if version is OcppVersion.V201 and not charger.discharge_on_201:
        why = f"charger {charger.id} is not configured to discharge on OCPP 2.0.1 (discharge_on_201)"
        return DischargeCapability(0.0, DischargeRefusal.CHARGER, why)
    if charger.max_discharge_kw <= 0:
        why = f"charger {charger.id} declares no discharge (max_discharge_kw = 0)"
        return DischargeCapability(0.0, DischargeRefusal.CHARGER, why)
    return DischargeCapability(charger.max_discharge_kw)


def reported_discharge(
    version: OcppVersion,
    charger: ChargerSection,
    requested_energy_transfer: str | None,
    max_discharge_power_w: float | None = None,
) -> DischargeCapability:
    """What a session may discharge once the vehicle has reported its needs (module docstring)."""
    declared = declared_discharge(version, charger)
    if not declared.allowed or version is not OcppVersion.V21:
        return declared  # the charger refuses, or 2.0.1: no BPT modes to report
    mode = requested_energy_transfer or "none"
    if mode not in BPT_MODES:
        why = f"the vehicle negotiated {mode}, not bidirectional transfer (ISO 15118-20 BPT)"
        return DischargeCapability(0.0, DischargeRefusal.VEHICLE, why)
    if max_discharge_power_w is None:
        return declared
    if max_discharge_power_w <= 0:
        why = f"the vehicle negotiated {mode} with a maximum discharge power of 0 W"
        return DischargeCapability(0.0, DischargeRefusal.VEHICLE, why)
    return DischargeCapability(min(declared.max_kw, max_discharge_power_w / 1000))
