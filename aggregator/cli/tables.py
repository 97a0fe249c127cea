"""Rich tables for schedule results."""

from __future__ import annotations

from collections.abc import Sequence

from rich.markup import escape
from rich.table import Table

from optimizer import ScheduleResult


def _money(value: float) -> str:
    return f"{value:,.2f}"


def result_table(result: ScheduleResult) -> Table:
    """A short summary of one result: solver figures, energy, cost by term."""
    table = Table(title=f"{result.problem.name}: {result.policy}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    gap = "-" if result.gap is None else f"{result.gap:.3%}"
    table.add_row(
        "status", f"{result.status.value} ({result.message})" if result.message else result.status.value
    )
    table.add_row(escape("build / solve [s]"), f"{result.build_seconds:.2f} / {result.solve_seconds:.2f}")
    table.add_row(escape("objective / gap"), f"{result.objective:,.2f} / {gap}")
    table.add_row(escape("peak import [kW]"), f"{result.peak_import_kw:.2f}")
    for charge, peak in zip(result.problem.demand_charges, result.evaluation.demand_peaks_kw, strict=True):
        table.add_row(escape(f"billed demand '{charge.name}' [kW]"), f"{peak:.2f}")
    requested, delivered = result.energy_requested_kwh, result.energy_delivered_kwh
    share = delivered / requested if requested else 1.0
    table.add_row(escape("energy delivered [kWh]"), f"{delivered:,.1f} of {requested:,.1f} ({share:.2%})")
    table.add_row(escape("targets met"), f"{result.targets_met} of {len(result.problem.vehicles)}")
    unmet = sum(o.unmet_kwh for o in result.evaluation.vehicles)
    if unmet > 1e-3:
        table.add_row(
            "unmet energy [kWh]", f"{unmet:,.2f} (penalty {result.costs['unmet_energy_penalty']:,.2f})"
        )
    for name, value in result.costs.items():
        if abs(value) >= 0.005 and name != "unmet_energy_penalty":
            table.add_row(escape(f"  {name} [{result.problem.currency}]"), _money(value))
    table.add_row(escape(f"total cost [{result.problem.currency}]"), _money(result.total_cost))
    return table


def comparison_table(results: Sequence[ScheduleResult]) -> Table:
    """Policies side by side: cost by term, peak, energy delivered, targets met."""
    currency = results[0].problem.currency if results else ""
    name = results[0].problem.name if results else ""
    table = Table(title=f"{name}: policies compared (money in {currency})")
    table.add_column("", style="bold", no_wrap=True)
    for result in results:
        table.add_column(result.policy, justify="right")
    terms = [t for t in results[0].costs if t != "unmet_energy_penalty" and any(r.costs[t] for r in results)]
    for term in terms:
        table.add_row(term, *(_money(r.costs[term]) for r in results))
    table.add_row(escape("total cost"), *(_money(r.total_cost) for r in results), style="bold")
    table.add_row(
        "unmet energy [kWh]", *(f"{sum(o.unmet_kwh for o in r.evaluation.vehicles):.2f}" for r in results)
    )
    table.add_row(escape("peak import [kW]"), *(f"{r.peak_import_kw:.2f}" for r in results))
    table.add_row(
        "energy delivered [kWh]",
        *(
            f"{r.energy_delivered_kwh:,.1f} ({r.energy_delivered_kwh / r.energy_requested_kwh:.2%})"
            if r.energy_requested_kwh
            else "0.0"
            for r in results
        ),
    )
    table.add_row(escape("targets met"), *(f"{r.targets_met}/{len(r.problem.vehicles)}" for r in results))
    table.add_row(escape("status"), *(r.status.value for r in results))
    table.add_row(escape("build + solve [s]"), *(f"{r.build_seconds + r.solve_seconds:.2f}" for r in results))
    return table
