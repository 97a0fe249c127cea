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
"""Above this many vehicles the plot stacks the largest consumers and groups the rest."""


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


def plot_result(result: ScheduleResult, path: Path) -> None:
    """Site import stacked by vehicle over base load, with prices, limits and event windows."""
    problem = result.problem
    index = problem.index.tz_localize(None)
    fig = Figure(figsize=(12, 7), layout="constrained")  # no pyplot: no global backend state
    ax, ax_price = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    net_vehicle = result.charge_kw - result.discharge_kw
    order = np.argsort(-np.abs(net_vehicle).sum(axis=1))
    shown = order[:MAX_STACKED_VEHICLES]
    layers = [np.maximum(problem.net_base_kw, 0.0)]
    labels = ["base load - generation"]
    layers += [net_vehicle[i] for i in shown]
    labels += [problem.vehicles[i].id for i in shown]
    if len(order) > len(shown):
        layers.append(net_vehicle[order[len(shown) :]].sum(axis=0))
        labels.append(f"{len(order) - len(shown)} other vehicles")
    colors = [matplotlib.colormaps["tab20"](k % 20) for k in range(len(layers))]
    ax.stackplot(index, *layers, labels=labels, colors=colors, step="post", alpha=0.85)
    ax.step(index, result.evaluation.import_kw, where="post", color="black", lw=1.2, label="site import")
    ax.axhline(problem.import_limit_kw, color="red", ls="--", lw=1, label="import limit")
    if problem.export_limit_kw:
        ax.axhline(-problem.export_limit_kw, color="purple", ls="--", lw=1, label="export limit")
    step = pd.Timedelta(hours=problem.step_hours)
    for event in problem.dr_events:
        ax.axvspan(index[event.steps[0]], index[event.steps[-1]] + step, color="orange", alpha=0.2)
    for dispatch in problem.dispatches:
        ax.axvspan(index[dispatch.steps[0]], index[dispatch.steps[-1]] + step, color="green", alpha=0.15)
    ax.set_ylabel("power [kW]")
    ax.set_title(
        f"{problem.name}: {result.policy} ({result.status.value}), peak {result.peak_import_kw:.1f} kW, "
        f"cost {result.total_cost:,.2f} {problem.currency}"
    )
    ax.legend(loc="upper left", fontsize=7, ncol=2)
    ax_price.step(index, problem.import_price, where="post", label="import price")
    ax_price.step(index, problem.export_price, where="post", label="export price")
    ax_price.set_ylabel(f"{problem.currency}/kWh")
    ax_price.legend(loc="upper left", fontsize=7)
    fig.savefig(path, dpi=110)
