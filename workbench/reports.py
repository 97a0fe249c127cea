"""Schedule results on disk: CSV tables, a JSON summary and a plot.

``write_result(result, out_dir)`` writes

- ``schedule.csv``: vehicle_id, start (ISO-8601 with offset), charge_kw, discharge_kw, energy_kwh;
- ``site.csv``: start, import_kw, export_kw, base_kw (plus generation, EV totals and prices);
- ``vehicles.csv``: per vehicle requested, delivered and unmet kWh with the reason;
- ``summary.json``: :meth:`optimizer.ScheduleResult.summary`;
- ``schedule.png``: site import stacked by vehicle, prices, limits and event windows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from optimizer import ScheduleResult

MAX_STACKED_VEHICLES = 15
"""Above this many vehicles the plot stacks them as one layer."""


def _iso(column: pd.Series) -> pd.Series:
    return column.map(lambda stamp: stamp.isoformat())


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def write_result(result: ScheduleResult, out_dir: Path, *, plot: bool = True) -> list[Path]:
    """Write every output of ``result`` into ``out_dir`` (created if missing); return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    schedule = result.schedule
    schedule["start"] = _iso(schedule["start"])
    site = result.site
    site["start"] = _iso(site["start"])
    paths = [
        out_dir / "schedule.csv",
        out_dir / "site.csv",
        out_dir / "vehicles.csv",
        out_dir / "summary.json",
    ]
    schedule.to_csv(paths[0], index=False, float_format="%.6g")
    site.to_csv(paths[1], index=False, float_format="%.6g")
    result.vehicles.to_csv(paths[2], index=False, float_format="%.6g")
    paths[3].write_text(json.dumps(_json_safe(result.summary()), indent=2) + "\n")
    if plot:
        paths.append(out_dir / "schedule.png")
        plot_result(result, paths[-1])
    return paths


def _closed(values: np.ndarray) -> np.ndarray:
    """Repeat the last value so a post-step plot draws the final step too."""
    return np.append(values, values[-1:])


def plot_result(result: ScheduleResult, path: Path) -> None:
    """Site import stacked by vehicle over base load, with prices, limits and event windows.

    Charging stacks above the inflexible load; V2G discharge stacks below zero. With more than
    :data:`MAX_STACKED_VEHICLES` vehicles, the fleet is one layer each way.
    """
    problem = result.problem
    step = pd.Timedelta(hours=problem.step_hours)
    edges = problem.index.tz_localize(None).append(
        pd.DatetimeIndex([problem.index[-1].tz_localize(None) + step])
    )
    fig = Figure(figsize=(12, 7), layout="constrained")  # no pyplot: no global backend state
    ax, ax_price = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})

    names = [v.id for v in problem.vehicles]
    charge, discharge = result.charge_kw, result.discharge_kw
    if len(names) > MAX_STACKED_VEHICLES:
        names = [f"{len(names)} vehicles"]
        charge, discharge = charge.sum(axis=0, keepdims=True), discharge.sum(axis=0, keepdims=True)
    colors = [matplotlib.colormaps["tab20"](k % 20) for k in range(len(names) + 1)]
    base = np.maximum(problem.net_base_kw, 0.0)
    ax.stackplot(
        edges,
        *(_closed(layer) for layer in [base, *charge]),
        labels=["base load - generation", *names],
        colors=colors,
        step="post",
        alpha=0.85,
    )
    if discharge.any():
        ax.stackplot(
            edges, *(_closed(-layer) for layer in discharge), colors=colors[1:], step="post", alpha=0.5
        )
    ax.step(
        edges,
        _closed(result.evaluation.import_kw - result.evaluation.export_kw),
        where="post",
        color="black",
        lw=1.2,
        label="site import - export",
    )
    ax.axhline(0.0, color="black", lw=0.5)
    ax.axhline(problem.import_limit_kw, color="red", ls="--", lw=1, label="import limit")
    if problem.export_limit_kw and discharge.any():
        ax.axhline(-problem.export_limit_kw, color="purple", ls="--", lw=1, label="export limit")
    for charge_spec, peak in zip(problem.demand_charges, result.evaluation.demand_peaks_kw, strict=True):
        ax.axhline(
            peak, color="grey", ls=":", lw=1, label=f"billed demand '{charge_spec.name}' {peak:.1f} kW"
        )
    for k, event in enumerate(problem.dr_events):
        ax.axvspan(
            edges[event.steps[0]],
            edges[event.steps[-1] + 1],
            color="orange",
            alpha=0.2,
            label="DR event" if k == 0 else None,
        )
    for k, dispatch in enumerate(problem.dispatches):
        ax.axvspan(
            edges[dispatch.steps[0]],
            edges[dispatch.steps[-1] + 1],
            color="green",
            alpha=0.15,
            label="V2G dispatch" if k == 0 else None,
        )
    top = max(result.peak_import_kw, float(base.max(initial=0.0)), 1.0) * 1.3
    if problem.import_limit_kw > top:  # keep the schedule readable; say where the limit is
        ax.set_ylim(top=top)
        ax.text(edges[0], top * 0.97, f"import limit {problem.import_limit_kw:,.0f} kW (above)", va="top")
    ax.set_ylabel("power [kW]")
    ax.set_title(
        f"{problem.name}: {result.policy} ({result.status.value}), peak {result.peak_import_kw:.1f} kW, "
        f"cost {result.total_cost:,.2f} {problem.currency}"
    )
    ax.legend(loc="upper right", fontsize=7, ncol=2)
    ax_price.step(edges, _closed(problem.import_price), where="post", label="import price")
    ax_price.step(edges, _closed(problem.export_price), where="post", label="export price")
    ax_price.set_ylabel(f"{problem.currency}/kWh")
    ax_price.legend(loc="upper left", fontsize=7)
    fig.savefig(path, dpi=110)
