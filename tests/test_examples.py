"""The example scenario files shipped in examples/ load, schedule and pass the checker."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.scenario_files import read_scenario
from optimizer import schedule
from optimizer.verification import check_schedule

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_schedules_cleanly(path: Path) -> None:
    scenario = read_scenario(path)
    result = schedule(scenario, time_limit=30, mip_gap=1e-6)
    assert result.is_ok, result.message
    assert check_schedule(scenario, result) == []
    assert all(o.reason == "met" for o in result.evaluation.vehicles)


def test_small_depot_earns_from_its_commitments() -> None:
    scenario = read_scenario(Path(__file__).resolve().parents[1] / "examples" / "small-depot.yaml")
    result = schedule(scenario, mip_gap=1e-6)
    # Hand check: keeping import at the 20 kW DR target for both event hours earns 2 h x 10 kW x 0.50;
    # exporting the requested 5 kW for the dispatch hour earns 5 kWh x 0.60.
    assert result.costs["dr_payment"] == pytest.approx(10.0, abs=1e-6)
    assert result.costs["v2g_payment"] == pytest.approx(3.0, abs=1e-6)
    assert result.costs["demand_charge"] == pytest.approx(0.0, abs=1e-6)
    assert result.peak_import_kw <= 30.0 + 1e-6
