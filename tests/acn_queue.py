"""Small acnportal event-queue files for tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any


def event_queue(evs: list[dict[str, Any]]) -> dict[str, Any]:
    """A small acnportal event queue: one EV, Battery and PluginEvent per entry of ``evs``."""
    context: dict[str, Any] = {}
    queue = []
    for k, ev in enumerate(evs):
        attributes = {
            "_arrival": ev.get("arrival", 0),
            "_departure": ev.get("departure", 12),
            "_session_id": ev.get("session_id", f"s{k}"),
            "_station_id": ev.get("station_id", "CA-1"),
            "_requested_energy": ev.get("energy", 5.0),
            "_estimated_departure": ev.get("departure", 12),
            "_energy_delivered": 0,
            "_current_charging_rate": 0,
            "_battery": f"b{k}",
        }
        for name in ev.get("drop", ()):
            attributes.pop(name)
        attributes.update(ev.get("set", {}))
        context[f"b{k}"] = {
            "class": "acnportal.acnsim.models.battery.Battery",
            "attributes": {"_max_power": 6.6, "_capacity": 5.0, "_init_charge": 0},
        }
        context[f"ev{k}"] = {"class": "acnportal.acnsim.models.ev.EV", "attributes": attributes}
        context[f"p{k}"] = {
            "class": "acnportal.acnsim.events.event.PluginEvent",
            "attributes": {"timestamp": ev.get("arrival", 0), "event_type": "Plugin", "ev": f"ev{k}"},
        }
        queue.append([ev.get("arrival", 0), f"p{k}"])
    context["q"] = {
        "class": "acnportal.acnsim.events.event_queue.EventQueue",
        "attributes": {"_queue": queue, "_timestep": 0},
    }
    return {"id": "q", "context_dict": context, "version": "0.2.1"}


def write_queue(path: Path, document: dict[str, Any], *, gzipped: bool = False) -> Path:
    text = json.dumps(json.dumps(document))  # acnportal writes a JSON string holding JSON
    if gzipped:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path
