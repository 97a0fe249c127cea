"""The program kinds' table (aggregator/programs/kinds.py): whole, consistent, and the one place that
branches on a signal kind."""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aggregator.db.models import ProgramKind
from aggregator.programs.flexibility import EnergyRoom
from aggregator.programs.kinds import (
    KINDS,
    MEASURED_KINDS,
    PLANNED_KINDS,
    POSTED_KINDS,
    PlannedSteps,
    rules_for,
)
from market_adapters.dispatch import COMMITMENTS, Commitment, SignalKind
from optimizer.scenario import DrEvent, V2gDispatch

ROOT = Path(__file__).resolve().parent.parent

SCANNED = ("aggregator", "market_adapters", "optimizer", "site_gateway", "wire", "workbench", "chargersim")
"""Our packages; none but the two modules below may branch on a signal kind."""

ALLOWED = {Path("aggregator/programs/kinds.py"), Path("market_adapters/dispatch.py")}
"""The kinds' table, and the seam that defines the kinds and their commitments."""

T0 = dt.datetime(2026, 7, 1, 17, tzinfo=dt.UTC)


# ------------------------------------------------------------------------------------- the table


def test_every_signal_kind_has_one_entry_and_one_commitment() -> None:
    assert set(KINDS) == set(SignalKind)
    assert set(COMMITMENTS) == set(SignalKind)
    assert all(rules.kind is kind for kind, rules in KINDS.items())


@pytest.mark.parametrize("kind", list(SignalKind), ids=str)
def test_each_kinds_rules_hang_together(kind: SignalKind) -> None:
    rules = rules_for(kind)
    # measured and paid exactly when it commits; planned, posted and baselined only then
    assert (rules.measure is not None) == rules.commits
    assert not rules.planned or rules.commits
    assert not rules.plan_baseline or rules.planned
    assert rules.portfolio_kind is None or rules.planned
    if rules.program_kind is not None:
        assert rules.commits and rules.unit == "kW", "the operators' API posts kW"
    # a kind the adapters ask flexibility for answers it; a price needs none
    assert (rules.flexibility_kw is None) == (rules.commitment is Commitment.NONE)


def test_the_derived_sets_are_the_tables() -> None:
    committing = {SignalKind.DR_REDUCTION, SignalKind.DR_CAP, SignalKind.V2G_EXPORT}
    assert set(MEASURED_KINDS) == committing
    assert set(PLANNED_KINDS) == committing
    assert dict(POSTED_KINDS) == {
        SignalKind.DR_REDUCTION: ProgramKind.DR,
        SignalKind.DR_CAP: ProgramKind.DR,
        SignalKind.V2G_EXPORT: ProgramKind.V2G,
    }
    assert {k for k, r in KINDS.items() if r.v2g_consent} == {SignalKind.V2G_EXPORT}
    assert {k: r.portfolio_kind for k, r in KINDS.items() if r.portfolio_kind} == {
        SignalKind.DR_REDUCTION: "reduction",
        SignalKind.V2G_EXPORT: "v2g_export",
    }


def test_a_kind_without_an_entry_is_named() -> None:
    with pytest.raises(LookupError, match=r"'capacity' has no entry in aggregator\.programs\.kinds\.KINDS"):
        rules_for("capacity")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- optimizer input


@dataclass(frozen=True)
class Window:
    scenario_id: str = "dispatch-7-0"
    start: dt.datetime = T0
    end: dt.datetime = T0 + dt.timedelta(minutes=30)
    value_kw: float = 12.0
    price_per_kwh: float = 0.4
    penalty_per_kwh: float = 0.1


def test_a_reduction_is_a_dr_event_below_its_baseline_and_needs_one() -> None:
    rules = rules_for(SignalKind.DR_REDUCTION)
    event = rules.optimizer_input(Window(), [50.0, 40.0])
    assert isinstance(event, DrEvent)
    assert (event.reduction_kw, event.cap_kw, event.baseline_kw) == (12.0, None, [50.0, 40.0])
    assert (event.payment_per_kwh, event.penalty_per_kwh) == (0.4, 0.1)
    assert rules.optimizer_input(Window(), None) is None


def test_a_cap_is_a_dr_event_paid_only_against_a_baseline() -> None:
    rules = rules_for(SignalKind.DR_CAP)
    with_baseline = rules.optimizer_input(Window(), [50.0, 40.0])
    without = rules.optimizer_input(Window(), None)
    assert isinstance(with_baseline, DrEvent) and isinstance(without, DrEvent)
    assert (with_baseline.cap_kw, with_baseline.payment_per_kwh) == (12.0, 0.4)
    assert (without.cap_kw, without.baseline_kw, without.payment_per_kwh, without.penalty_per_kwh) == (
        12.0,
        None,
        0.0,
        0.1,
    )


def test_an_export_is_a_v2g_dispatch_and_a_price_is_not_planned() -> None:
    dispatch = rules_for(SignalKind.V2G_EXPORT).optimizer_input(Window(), None)
    assert dispatch == V2gDispatch(
        id="dispatch-7-0",
        start=T0,
        end=T0 + dt.timedelta(minutes=30),
        export_kw=12.0,
        price_per_kwh=0.4,
        penalty_per_kwh=0.1,
    )
    assert rules_for(SignalKind.PRICE).optimizer_input(Window(), [1.0]) is None


# --------------------------------------------------------------------------------- flexibility


STEPS = PlannedSteps(
    import_kw=np.array([30.0, 45.0, 20.0]),
    down_kw=np.array([10.0, 25.0, 8.0]),
    vehicles_kw=np.array([4.0, 20.0, -2.0]),
)


def test_what_a_sites_plan_can_promise_by_kind() -> None:
    assert rules_for(SignalKind.DR_REDUCTION).site_flexibility_kw(STEPS) == 8.0  # the smallest drop
    assert rules_for(SignalKind.V2G_EXPORT).site_flexibility_kw(STEPS) == 5.0  # min(6, 5, 10)
    assert rules_for(SignalKind.DR_CAP).site_flexibility_kw(STEPS) == 20.0  # max(20, 20, 12)
    assert rules_for(SignalKind.PRICE).site_flexibility_kw(STEPS) == 0.0
    no_export = PlannedSteps(STEPS.import_kw, STEPS.down_kw, STEPS.vehicles_kw + 30.0)
    assert rules_for(SignalKind.V2G_EXPORT).site_flexibility_kw(no_export) == 0.0


def v2g_van(reserve_kwh: float) -> PlannedSteps:
    """A V2G van over two window steps of 15 min, planned at 4 kW charging (site import 9 kW), 6 kW more
    of discharge available, 3 kWh of grid energy to spare beyond its target and nowhere to catch up;
    η = 0.8 each way, so a kWh discharged costs 1 / 0.64 = 1.5625 kWh to put back."""
    return PlannedSteps(
        import_kw=np.array([9.0, 9.0]),
        down_kw=np.array([10.0, 10.0]),
        vehicles_kw=np.array([4.0, 4.0]),
        energy=EnergyRoom(
            step_hours=0.25,
            pause_kw=np.array([[4.0, 4.0]]),
            discharge_kw=np.array([[6.0, 6.0]]),
            catch_up_kw=np.zeros((1, 0)),
            site_room_kw=np.zeros(0),
            spare_kwh=np.array([3.0]),
            reserve_kwh=np.array([reserve_kwh]),
            charge_efficiency=np.array([0.8]),
            discharge_efficiency=np.array([0.8]),
        ),
    )


def test_what_a_plan_can_promise_within_the_energy_its_vehicles_can_move() -> None:
    """Pausing costs 1 kWh per kWh and comes first: 4 kW over both steps spends 2 of the 3 kWh spare.
    The last kWh buys 1 / (2 x 0.25 x 1.5625) = 1.28 kW of discharge per step: 5.28 kW held (the power
    headroom would say 10). With 0.5 kWh above the reserve, discharge is 0.5 x 0.8 / 0.25 = 1.6 kW
    over the two steps: 4.8 kW. An export is what is left beyond the 4 kW planned; a cap is the 9 kW
    planned import minus what can be held."""
    roomy, reserved = v2g_van(reserve_kwh=10.0), v2g_van(reserve_kwh=0.5)
    reduction, export, cap = (
        rules_for(k) for k in (SignalKind.DR_REDUCTION, SignalKind.V2G_EXPORT, SignalKind.DR_CAP)
    )
    assert reduction.site_flexibility_kw(roomy) == pytest.approx(5.28)
    assert reduction.site_flexibility_kw(reserved) == pytest.approx(4.8)
    assert export.site_flexibility_kw(roomy) == pytest.approx(1.28)
    assert cap.site_flexibility_kw(roomy) == pytest.approx(9.0 - 5.28)
    assert roomy.energy is not None
    spent = dataclasses.replace(roomy, energy=dataclasses.replace(roomy.energy, spare_kwh=np.array([0.0])))
    assert reduction.site_flexibility_kw(spent) == pytest.approx(0.0, abs=1e-9)  # nothing to spare


def test_the_portfolio_adds_up_its_sites_and_an_unknown_site_breaks_a_cap() -> None:
    figures = {"a": 5.0, "b": None, "c": 2.5}
    assert rules_for(SignalKind.DR_REDUCTION).portfolio_kw(figures) == 7.5
    assert rules_for(SignalKind.V2G_EXPORT).portfolio_kw(figures) == 7.5
    assert rules_for(SignalKind.DR_CAP).portfolio_kw(figures) == math.inf
    assert rules_for(SignalKind.DR_CAP).portfolio_kw({}) == math.inf
    assert rules_for(SignalKind.DR_CAP).portfolio_kw({"a": 5.0, "c": -1.0}) == 4.0
    assert rules_for(SignalKind.PRICE).portfolio_kw({"a": 0.0, "b": 0.0}) == 0.0


# --------------------------------------------------------------------------------- measurement


def test_a_cap_is_measured_as_the_reduction_it_asks_for() -> None:
    index = pd.date_range(T0, periods=3, freq="15min")
    committed = pd.Series([60.0, 60.0, 60.0], index=index)
    baseline = pd.Series([100.0, 50.0, 90.0], index=index)
    reduction, cap = rules_for(SignalKind.DR_CAP).committed_reduction(committed, baseline)
    assert reduction.tolist() == [40.0, 0.0, 30.0]
    assert cap is not None and cap.tolist() == [60.0, 60.0, 60.0]
    same, none = rules_for(SignalKind.DR_REDUCTION).committed_reduction(committed, baseline)
    assert same is committed and none is None
    with pytest.raises(ValueError, match="'price' carries no commitment"):
        rules_for(SignalKind.PRICE).committed_reduction(committed, baseline)


# -------------------------------------------------------------------- one module branches on kinds


def _kind_aliases(tree: ast.Module) -> set[str]:
    """Names a module binds to ``SignalKind`` (``from market_adapters.dispatch import SignalKind as K``)."""
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "market_adapters.dispatch"
        for alias in node.names
        if alias.name == "SignalKind"
    }


def _names_a_kind(node: ast.AST, aliases: set[str]) -> bool:
    """Whether ``node`` contains a ``SignalKind.MEMBER`` (through any alias, or ``module.SignalKind``)."""
    for inner in ast.walk(node):
        if isinstance(inner, ast.Attribute) and inner.attr in SignalKind.__members__:
            owner = inner.value
            if (isinstance(owner, ast.Name) and owner.id in aliases) or (
                isinstance(owner, ast.Attribute) and owner.attr == "SignalKind"
            ):
                return True
    return False


def kind_branches(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, what) of every place ``source`` branches on, or tabulates, a signal kind member: a
    comparison (``is``, ``==``, ``in``, a SQL ``!=``), a ``match`` case, a dict keyed by kinds, a set
    of kinds, or a ``Literal[...]`` of kinds."""
    tree = ast.parse(source, filename=filename)
    aliases = _kind_aliases(tree) | {"SignalKind"}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and _names_a_kind(node, aliases):
            found.append((node.lineno, "compares a kind"))
        elif isinstance(node, ast.match_case) and _names_a_kind(node.pattern, aliases):
            found.append((node.pattern.lineno, "matches a kind"))
        elif isinstance(node, ast.Dict) and any(
            key is not None and _names_a_kind(key, aliases) for key in node.keys
        ):
            found.append((node.lineno, "a table keyed by kinds"))
        elif isinstance(node, ast.Set) and _names_a_kind(node, aliases):
            found.append((node.lineno, "a set of kinds"))
        elif isinstance(node, ast.Subscript) and _names_a_kind(node.slice, aliases):
            found.append((node.lineno, "a type of kinds"))
    return sorted(found)


def test_the_checker_finds_every_kind_of_branch() -> None:
    source = """
from market_adapters import dispatch
from market_adapters.dispatch import SignalKind as K
if kind is K.DR_CAP: pass
ok = kind in (K.DR_REDUCTION, K.V2G_EXPORT)
query.where(Row.kind != dispatch.SignalKind.PRICE)
match kind:
    case K.PRICE: pass
TABLE = {K.DR_CAP: "cap"}
SOME = frozenset({K.DR_CAP})
Posted = Literal[K.DR_CAP]
"""
    assert [line for line, _ in kind_branches(source)] == [4, 5, 6, 8, 9, 10, 11]
    allowed = """
from market_adapters.dispatch import SignalKind
kind = SignalKind.V2G_EXPORT
PAYLOAD_MAP = {"SIMPLE": (SignalKind.DR_REDUCTION, "simple")}
rules = rules_for(SignalKind.DR_CAP)
if rules.commits and kind in MEASURED_KINDS: pass
"""
    assert kind_branches(allowed) == []


def test_no_module_but_the_kinds_table_branches_on_a_signal_kind() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for package in SCANNED
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.relative_to(ROOT) not in ALLOWED
        for line, what in kind_branches(path.read_text(), str(path))
    ]
    assert not found, (
        "branch on a signal kind through its entry in aggregator/programs/kinds.py (KINDS), not here:\n"
        + "\n".join(found)
    )
