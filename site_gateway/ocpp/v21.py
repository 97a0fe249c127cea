"""OCPP 2.1 central-system handlers: the 2.x handlers answered from the 2.1 message modules.

What 2.1 adds on our side is in the data, not in new actions: NotifyEVChargingNeeds may carry V2X
parameters (read in ``Station2x``), and discharge setpoints go out as ``CentralSetpoint`` periods
(``profiles``).
"""

from __future__ import annotations

from ocpp.v21 import ChargePoint as ChargePoint21

from site_gateway.ocpp.profiles import OcppVersion
from site_gateway.ocpp.v201 import Station2x


class StationV21(Station2x, ChargePoint21):
    version = OcppVersion.V21
