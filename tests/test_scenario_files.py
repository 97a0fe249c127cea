"""Scenario files: JSON and YAML round trips, and errors that point at the file, position or field."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from optimizer import DemandCharge, TimeWindow
from workbench.scenario_files import ScenarioFileError, read_scenario, write_scenario
from workbench.synthetic import generate_depot_day


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    scenario = generate_depot_day(6, 1, v2g_share=0.5, dr_event=True)
    path = write_scenario(scenario, tmp_path / f"day{suffix}")
    assert read_scenario(path) == scenario


def test_yaml_clock_times_are_not_base_60_numbers(tmp_path: Path) -> None:
    scenario = generate_depot_day(2, 1)
    tariff = scenario.tariff.model_copy(update={"demand_charges": []})
    scenario = scenario.model_copy(update={"tariff": tariff})
    path = write_scenario(scenario, tmp_path / "day.yaml")
    text = path.read_text()
    assert "  demand_charges: []\n" in text
    text = text.replace(
        "  demand_charges: []\n",
        "  demand_charges:\n  - {rate_per_kw: 2.0, windows: [{start: 22:00, end: 06:00}]}\n",
    )
    path.write_text(text)
    charge = read_scenario(path).tariff.demand_charges[0]
    assert charge == DemandCharge(rate_per_kw=2.0, windows=[TimeWindow(start=dt.time(22), end=dt.time(6))])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json"):
        read_scenario(tmp_path / "nowhere.json")


def test_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"suffix '\.toml'"):
        read_scenario(tmp_path / "day.toml")


def test_bad_json_names_the_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"name": "x",\n  "start": }\n')
    with pytest.raises(ScenarioFileError, match="line 2 column 12"):
        read_scenario(path)


def test_bad_yaml_names_the_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsite: [1, 2\nstart: 3\n")
    with pytest.raises(ScenarioFileError, match=r"not valid YAML: .* at line 3 column"):
        read_scenario(path)


def test_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ScenarioFileError, match="expected a mapping"):
        read_scenario(path)


def test_validation_errors_name_the_field(tmp_path: Path) -> None:
    path = write_scenario(generate_depot_day(3, 1), tmp_path / "day.yaml")
    path.write_text(path.read_text().replace("capacity_kwh: ", "capacity_kwh: -", 1))
    with pytest.raises(ScenarioFileError, match=r"vehicles\[0\]\.capacity_kwh") as caught:
        read_scenario(path)
    assert caught.value.field == "vehicles[0].capacity_kwh"
