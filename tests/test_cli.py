"""The ``fleetgrid`` command line, run in-process: files written, their columns, errors, ACN input."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
from acn_queue import event_queue, write_queue
from tariff_data import SCE_TOU_EV_4
from typer.testing import CliRunner

from aggregator.cli import app
from aggregator.scenario_files import read_scenario

runner = CliRunner()


def run(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "day.yaml"
    run(
        "scenario",
        "generate",
        "--vehicles",
        "8",
        "--seed",
        "3",
        "--v2g-share",
        "0.5",
        "--dr-event",
        "--out",
        path,
    )
    return path


def test_generate_writes_a_valid_scenario(scenario_file: Path) -> None:
    scenario = read_scenario(scenario_file)
    assert len(scenario.vehicles) == 8
    assert sum(v.v2g_consent for v in scenario.vehicles) == 4
    assert len(scenario.dr_events) == 1


def test_schedule_writes_every_output(scenario_file: Path, tmp_path: Path) -> None:
    output = run("schedule", scenario_file, "--out", tmp_path, "--time-limit", "30")
    assert "total cost" in output
    schedule = pd.read_csv(tmp_path / "schedule.csv")
    assert list(schedule.columns) == ["vehicle_id", "start", "charge_kw", "discharge_kw", "energy_kwh"]
    assert dt.datetime.fromisoformat(schedule["start"][0]).utcoffset() is not None
    site = pd.read_csv(tmp_path / "site.csv")
    assert list(site.columns[:4]) == ["start", "import_kw", "export_kw", "base_kw"]
    assert len(site) == 96
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in (
        "status",
        "objective",
        "bound",
        "gap",
        "build_seconds",
        "solve_seconds",
        "peak_import_kw",
        "energy_requested_kwh",
        "energy_delivered_kwh",
        "cost",
        "vehicles",
    ):
        assert key in summary, key
    assert summary["status"] in ("optimal", "feasible")
    assert set(summary["vehicles"]) == set(schedule["vehicle_id"])
    assert summary["peak_import_kw"] == pytest.approx(site["import_kw"].max(), rel=1e-5)
    assert (tmp_path / "schedule.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_prints_every_policy(scenario_file: Path) -> None:
    output = run("schedule", scenario_file, "--compare", "--time-limit", "30")
    for policy in ("milp", "uncontrolled", "edf", "round-robin"):
        assert policy in output


@pytest.mark.parametrize("policy", ["uncontrolled", "edf", "round-robin"])
def test_baseline_policy_writes_a_summary(scenario_file: Path, tmp_path: Path, policy: str) -> None:
    run("schedule", scenario_file, "--policy", policy, "--out", tmp_path, "--no-plot")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["policy"] == policy
    assert summary["status"] == "heuristic"


def test_bad_scenario_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"start": "2026-01-01T00:00:00+00:00", "site": {"id": "s", "import_limit_kw": -5}})
    )
    result = runner.invoke(app, ["schedule", str(bad)])
    assert result.exit_code == 2
    assert "import_limit_kw" in result.output


def test_unknown_policy_is_refused(scenario_file: Path) -> None:
    result = runner.invoke(app, ["schedule", str(scenario_file), "--policy", "fastest"])
    assert result.exit_code == 2
    assert "fastest" in result.output


def test_acn_sessions_offline_and_online(tmp_path: Path) -> None:
    # Three sessions on two stations, 5-minute steps from 2019-03-01 00:00 PST (a Friday).
    queue = event_queue(
        [
            {"arrival": 96, "departure": 120, "station_id": "CA-1", "energy": 6.0, "session_id": "a"},
            {"arrival": 100, "departure": 110, "station_id": "CA-2", "energy": 4.0, "session_id": "b"},
            {"arrival": 120, "departure": 150, "station_id": "CA-1", "energy": 8.0, "session_id": "c"},
        ]
    )
    sessions = write_queue(tmp_path / "acn.json", queue)
    tariff = tmp_path / "tariff.json"
    tariff.write_text(json.dumps(SCE_TOU_EV_4))
    offline, online = tmp_path / "offline", tmp_path / "online"
    run("schedule", "--acn", sessions, "--tariff", tariff, "--out", offline, "--no-plot")
    run("schedule", "--acn", sessions, "--tariff", tariff, "--out", online, "--online", "--no-plot")
    first = json.loads((offline / "summary.json").read_text())
    second = json.loads((online / "summary.json").read_text())
    assert first["energy_delivered_kwh"] == pytest.approx(18.0, abs=1e-4)
    assert second["energy_delivered_kwh"] == pytest.approx(18.0, abs=1e-4)
    # Knowing every session in advance can only help.
    assert first["peak_import_kw"] <= second["peak_import_kw"] + 1e-6
    site = pd.read_csv(offline / "site.csv")
    assert dt.datetime.fromisoformat(site["start"][0]) == dt.datetime.fromisoformat(
        "2019-03-01T00:00:00-08:00"
    )


def test_acn_needs_a_tariff(tmp_path: Path) -> None:
    sessions = write_queue(tmp_path / "acn.json", event_queue([{}]))
    result = runner.invoke(app, ["schedule", "--acn", str(sessions)])
    assert result.exit_code == 2
    assert "--tariff" in result.output


def test_gateway_refuses_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text('[site]\nid = "depot"\nimport_limit_kw = -3\n')
    result = runner.invoke(app, ["gateway", "--config", str(config)])
    assert result.exit_code == 2
    assert "site.import_limit_kw" in result.output


def test_example_gateway_config_is_valid() -> None:
    from site_gateway.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "examples" / "site.toml")
    assert config.site.id == "depot-north"
    assert config.ocpp.port == 9000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--broker-url", "http://broker.example"), "--broker-url"),
        (("--minutes", "0"), "--minutes"),
        (("--vehicles", "0"), "--vehicles"),
    ],
)
def test_demo_refuses_bad_options_by_name(args: tuple[str, ...], message: str) -> None:
    result = runner.invoke(app, ["demo", *args])
    assert result.exit_code == 2
    assert message in result.output
