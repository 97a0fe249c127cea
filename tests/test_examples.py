"""Every example in examples/ (and the examples in the config modules' docstrings) is read by the class
the service reads it with: central.toml by :class:`CentralConfig` and its control loop's settings,
site.toml by the gateway's :class:`GatewayConfig`, scenarios by ``fleetgrid schedule``'s reader (and
they schedule cleanly), day-ahead prices by ``fleetgrid prices import``'s. The options an example
shows commented out are valid once uncommented."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import aggregator.runtime.config
import site_gateway.config
from aggregator.runtime.config import CentralConfig
from market_adapters.errors import AdapterFormatError
from market_adapters.prices import PriceCsvRules, normalise_prices, read_prices
from optimizer import schedule
from optimizer.verification import check_schedule
from site_gateway.config import load_config
from workbench.scenario_files import read_scenario

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = sorted((EXAMPLES_DIR).glob("*.yaml"))


def check_central(path: Path) -> None:
    config = CentralConfig.load(path)
    config.control_settings()  # what `fleetgrid aggregator` checks before it starts


def check_site(path: Path) -> None:
    load_config(path)


def check_scenario(path: Path) -> None:
    read_scenario(path)


DAY_AHEAD_DATE_FORMATS = ("ISO8601", "%d/%m/%Y %H:%M")
"""What README.md's ``fleetgrid prices import examples/day-ahead.csv`` declares."""


def day_ahead(path: Path) -> pd.Series:
    """A price example as ``fleetgrid prices import`` reads it: per kWh in EUR, 15-minute steps."""
    rules = PriceCsvRules(date_formats=DAY_AHEAD_DATE_FORMATS) if path.suffix == ".csv" else None
    return normalise_prices(read_prices(path, rules=rules), currency="EUR", step_minutes=15)


def check_prices(path: Path) -> None:
    assert len(day_ahead(path)) == 96


CHECKS: dict[str, Callable[[Path], None]] = {
    "central.toml": check_central,
    "site.toml": check_site,
    ".yaml": check_scenario,
    "day-ahead.xml": check_prices,
    "day-ahead.csv": check_prices,
}
"""How each example is read: by file name, else by suffix."""


def check_for(path: Path) -> Callable[[Path], None]:
    check = CHECKS.get(path.name) or CHECKS.get(path.suffix)
    assert check is not None, f"{path.name}: no check says how the service reads it; add one to CHECKS"
    return check


ALL_EXAMPLES = sorted(p for p in EXAMPLES_DIR.iterdir() if p.is_file())


@pytest.mark.parametrize("path", ALL_EXAMPLES, ids=[p.name for p in ALL_EXAMPLES])
def test_every_example_is_read_by_the_service_s_own_class(path: Path) -> None:
    check_for(path)(path)


def uncommented(text: str) -> str:
    """``text`` with the options it shows commented out (``# key = value``, ``# [table]``) uncommented."""
    option = re.compile(r"^# ?(\[\[?[\w.]+\]\]?(\s|$)|[A-Za-z_]\w* +=)")
    return "\n".join(
        line.removeprefix("#").lstrip(" ") if option.match(line) else line for line in text.splitlines()
    )


@pytest.mark.parametrize("name", ["central.toml", "site.toml"])
def test_commented_out_options_are_valid(name: str, tmp_path: Path) -> None:
    text = (EXAMPLES_DIR / name).read_text(encoding="utf-8")
    path = tmp_path / name
    path.write_text(uncommented(text), encoding="utf-8")
    check_for(path)(path)
    if name == "central.toml":  # the example shows the optional mirror and a VEN: both come alive
        config = CentralConfig.load(path)
        assert config.influxdb is not None and len(config.openadr) == 1


def test_uncommenting_finds_options_only() -> None:
    text = "# The central service:\n#   fleetgrid admin\n# [influxdb]   # optional\n# url = 'x'\nport = 1\n"
    assert (
        uncommented(text)
        == "# The central service:\n#   fleetgrid admin\n[influxdb]   # optional\nurl = 'x'\nport = 1"
    )


def docstring_example(module: object) -> str:
    doc = module.__doc__ or ""
    found = re.search(r"::\n\n((?:    .*\n|\s*\n)+)", doc)
    assert found is not None, f"{module}: no example block in the docstring"
    return textwrap.dedent(found.group(1))


@pytest.mark.parametrize(
    ("module", "name"),
    [(aggregator.runtime.config, "central.toml"), (site_gateway.config, "site.toml")],
    ids=["central.toml", "site.toml"],
)
def test_the_docstring_examples_are_valid(module: object, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(uncommented(docstring_example(module)), encoding="utf-8")
    check_for(path)(path)


def test_the_price_examples_are_one_day_in_two_formats() -> None:
    xml, csv = day_ahead(EXAMPLES_DIR / "day-ahead.xml"), day_ahead(EXAMPLES_DIR / "day-ahead.csv")
    assert xml.index.equals(csv.index) and np.allclose(xml.to_numpy(), csv.to_numpy())
    assert xml.index[0] == pd.Timestamp("2026-11-09T23:00Z")  # midnight in Berlin
    # The CSV switches from ISO to day-first dates part-way: read only when both formats are declared.
    with pytest.raises(AdapterFormatError, match="matches none of the declared date formats"):
        read_prices(EXAMPLES_DIR / "day-ahead.csv", rules=PriceCsvRules(date_formats=("ISO8601",)))


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
