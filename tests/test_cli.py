"""The ``fleetgrid`` command line, run in-process: files written, their columns, errors, ACN input."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from acn_queue import event_queue, write_queue
from tariff_data import SCE_TOU_EV_4
from typer.testing import CliRunner

from aggregator.cli import SUBCOMMANDS, Subcommand, app, load_command
from workbench.scenario_files import read_scenario

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
    # Three sessions on two stations, 5-minute steps from 2019-03-01 00:00 PST (a Friday), given by
    # --start: the file's name does not carry it.
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
    acn = ("--acn", sessions, "--tariff", tariff, "--start", "2019-03-01")
    run("schedule", *acn, "--out", offline, "--no-plot")
    run("schedule", *acn, "--out", online, "--online", "--no-plot")
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


def test_acn_start_comes_from_an_acnportal_name(tmp_path: Path) -> None:
    name = "caltech_20191105T000000_20191106T000000_5m_208V_6.6kW.json.gz"  # a Tuesday, PST
    sessions = write_queue(tmp_path / name, event_queue([{"arrival": 96, "departure": 120}]), gzipped=True)
    tariff = tmp_path / "tariff.json"
    tariff.write_text(json.dumps(SCE_TOU_EV_4))
    run("schedule", "--acn", sessions, "--tariff", tariff, "--out", tmp_path / "out", "--no-plot")
    site = pd.read_csv(tmp_path / "out" / "site.csv")
    assert site["start"][0] == "2019-11-05T00:00:00-08:00"
    charging = site[site["ev_charge_kw"] > 0]["start"]
    assert charging.iloc[0] >= "2019-11-05T08:00:00-08:00" and charging.iloc[-1] < "2019-11-05T10:00:00-08:00"


def test_acn_without_a_start_is_refused(tmp_path: Path) -> None:
    sessions = write_queue(tmp_path / "caltech_201911.json", event_queue([{}]))
    tariff = tmp_path / "tariff.json"
    tariff.write_text(json.dumps(SCE_TOU_EV_4))
    args = ["schedule", "--acn", str(sessions), "--tariff", str(tariff)]
    result = runner.invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "caltech_201911.json" in flat and "give --start YYYY-MM-DD" in flat
    assert "America/Los_Angeles" in flat
    bad = runner.invoke(app, [*args, "--start", "1 Nov"])
    assert bad.exit_code == 2 and "--start '1 Nov'" in bad.output


def test_start_is_only_for_acn(scenario_file: Path) -> None:
    result = runner.invoke(app, ["schedule", str(scenario_file), "--start", "2019-03-01"])
    assert result.exit_code == 2 and "--start" in result.output


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


# ------------------------------------------------------------------- start-up: lazy subcommands

CENTRAL = ("numpy", "pandas", "pyomo", "highspy", "fastapi", "sqlalchemy", "openleadr", "yaml", "matplotlib")
OURS = ("aggregator", "optimizer", "market_adapters", "site_gateway", "wire", "chargersim", "workbench")


def imported_after(statement: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after ``statement`` (ours and the central ones)."""
    probe = (
        f"import sys\n{statement}\n"
        "print(' '.join(sorted({name.partition('.')[0] for name in sys.modules})))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split()) & {*CENTRAL, *OURS}


def test_help_lists_every_subcommand_without_importing_any() -> None:
    loaded = imported_after(
        "from typer.testing import CliRunner\nfrom aggregator.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'], env={'COLUMNS': '200'})\n"
        "assert result.exit_code == 0, result.output\n"
        "print(result.output, file=sys.stderr)\n"
        "assert not [m for m in sys.modules if m.startswith(('aggregator.cli.', 'site_gateway.'))]"
    )
    assert loaded == {"aggregator"}
    output = " ".join(runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output.split())
    for name, subcommand in SUBCOMMANDS.items():
        assert f" {name} {subcommand.help} " in output, name


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_listed_help_is_the_commands_own(name: str) -> None:
    command = load_command(name, SUBCOMMANDS[name])
    assert (command.help or "").strip().splitlines()[0] == SUBCOMMANDS[name].help


@pytest.mark.parametrize(
    ("statement", "allowed"),
    [
        # the edge: runs on the base install, and site_gateway never imports aggregator
        (
            "import site_gateway.cli, site_gateway.gateway, chargersim.cli, chargersim.stations",
            {"site_gateway", "wire", "chargersim"},
        ),
        # admin: the database and its models, not the API app, the optimizer or the adapters' clients
        ("import aggregator.cli.admin", {*OURS} - {"optimizer"} | {"sqlalchemy"}),
        # what `fleetgrid admin --config central.toml` adds: not openleadr (a VEN imports it to start)
        ("from aggregator.runtime.config import CentralConfig", {*OURS} - {"optimizer"} | {"sqlalchemy"}),
    ],
)
def test_a_subcommand_imports_only_what_it_needs(statement: str, allowed: set[str]) -> None:
    assert imported_after(statement) <= allowed


def test_a_missing_central_package_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = Subcommand("no_such_package.cli:app", "Broken.", "central")
    monkeypatch.setitem(SUBCOMMANDS, "broken", broken)
    result = runner.invoke(app, ["broken", "--help"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    line = " ".join(result.output.split())
    assert "`fleetgrid broken` needs the Python package 'no_such_package'" in line
    assert "pip install 'fleetgrid[central]'" in line
