"""The scheduling model of :mod:`optimizer.model`, built straight into HiGHS with numpy arrays.

For ``bench/scale.py``: how much of a solve is Pyomo (building expressions, handing them to HiGHS)
and how much is HiGHS itself. The model is the same mathematical model as ``build_model`` — the same
variables with the same bounds and domains, the same constraints row for row, the same objective — so
the two must reach the same objective; ``bench/scale.py`` checks that, and that the counts of columns,
rows and binaries agree. A change to a family in :mod:`optimizer.model` needs the same change here.

Every family is a block of columns (:meth:`_Builder.columns`) or of rows (:meth:`_Builder.rows`) made
from index arrays, with the Pyomo component's name. Rows come as coordinate triplets (row within the
family, column, coefficient) and are handed to ``Highs.addRows`` in compressed-row form.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import highspy
import numpy as np

from optimizer.evaluation import evaluate
from optimizer.problem import Problem
from optimizer.solve import SolverOptions, highs_settings

INF = highspy.kHighsInf


@dataclass
class DirectResult:
    objective: float
    bound: float | None
    gap: float | None
    status: str
    build_seconds: float
    solve_seconds: float
    evaluated_objective: float
    """Objective of the returned powers priced by :func:`optimizer.evaluate` (must equal ``objective``)."""
    n_columns: int
    n_rows: int
    n_binaries: int


@dataclass
class _Builder:
    highs: highspy.Highs
    columns_of: dict[str, np.ndarray] = field(default_factory=dict)
    rows_of: dict[str, int] = field(default_factory=dict)
    cost: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    offset: float = 0.0
    binaries: list[np.ndarray] = field(default_factory=list)
    n_columns: int = 0
    plugged: tuple[np.ndarray, np.ndarray] = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    """(vehicle, step) of every ``charge_kw`` column, in column order."""
    v2g: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Positions in ``plugged`` of the ``discharge_kw`` columns, in column order."""

    def columns(
        self, name: str, lower: np.ndarray | float, upper: np.ndarray | float, n: int, binary: bool = False
    ) -> np.ndarray:
        """Add ``n`` columns named ``name``; return their indices."""
        lower_arr = np.broadcast_to(np.asarray(lower, dtype=float), (n,)).copy()
        upper_arr = np.broadcast_to(np.asarray(upper, dtype=float), (n,)).copy()
        index = np.arange(self.n_columns, self.n_columns + n, dtype=np.int32)
        if n:
            self.highs.addVars(n, lower_arr, upper_arr)
        self.n_columns += n
        self.columns_of[name] = index
        if binary and n:
            self.binaries.append(index)
        return index

    def rows(
        self,
        name: str,
        lower: np.ndarray | float,
        upper: np.ndarray | float,
        n: int,
        entries: list[tuple[np.ndarray, np.ndarray, np.ndarray | float]],
    ) -> None:
        """Add ``n`` rows from triplets (row in ``0..n-1``, column, coefficient)."""
        if not n:
            self.rows_of[name] = 0
            return
        rows = np.concatenate([np.broadcast_to(r, np.shape(c)) for r, c, _ in entries])
        cols = np.concatenate([c for _, c, _ in entries])
        vals = np.concatenate(
            [np.broadcast_to(np.asarray(v, dtype=float), np.shape(c)) for _, c, v in entries]
        )
        order = np.argsort(rows, kind="stable")
        starts = np.searchsorted(rows[order], np.arange(n)).astype(np.int32)
        lower_arr = np.broadcast_to(np.asarray(lower, dtype=float), (n,)).copy()
        upper_arr = np.broadcast_to(np.asarray(upper, dtype=float), (n,)).copy()
        self.highs.addRows(
            n, lower_arr, upper_arr, len(cols), starts, cols[order].astype(np.int32), vals[order]
        )
        self.rows_of[name] = n

    def objective(self, columns: np.ndarray, coefficients: np.ndarray | float) -> None:
        self.cost.append((columns, np.broadcast_to(np.asarray(coefficients, dtype=float), columns.shape)))

    def finish(self) -> None:
        if self.cost:
            cols = np.concatenate([c for c, _ in self.cost])
            vals = np.concatenate([v for _, v in self.cost])
            total = np.zeros(self.n_columns)
            np.add.at(total, cols, vals)
            used = np.flatnonzero(total).astype(np.int32)
            self.highs.changeColsCost(len(used), used, total[used])
        self.highs.changeObjectiveOffset(self.offset)
        if self.binaries:
            index = np.concatenate(self.binaries).astype(np.int32)
            kinds = np.full(len(index), highspy.HighsVarType.kInteger)
            self.highs.changeColsIntegrality(len(index), index, kinds)


def build_highs(problem: Problem, highs: highspy.Highs) -> _Builder:
    """Build the model of :func:`optimizer.model.build_model` into ``highs``; family by family."""
    b = _Builder(highs)
    dt = problem.step_hours
    n_steps = problem.n_steps
    vehicles = problem.vehicles
    n_vehicles = len(vehicles)

    # index sets: plugged (vehicle, step) pairs, vehicle by vehicle; v2g_plugged the pairs that may discharge
    first = np.array([v.first_step for v in vehicles], dtype=np.int64)
    end = np.array([v.end_step for v in vehicles], dtype=np.int64)
    lengths = end - first
    plug_i = np.repeat(np.arange(n_vehicles), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    plug_t = np.repeat(first, lengths) + (np.arange(len(plug_i)) - starts)
    n_plug = len(plug_i)
    can_discharge = np.array([v.can_discharge for v in vehicles], dtype=bool)
    v2g = np.flatnonzero(can_discharge[plug_i]) if n_vehicles else np.array([], dtype=np.int64)
    n_v2g = len(v2g)
    max_charge = np.array([v.max_charge_kw for v in vehicles])
    max_discharge = np.array([v.max_discharge_kw for v in vehicles])

    # add_ev_power
    charge = b.columns("charge_kw", 0.0, max_charge[plug_i] if n_vehicles else 0.0, n_plug)
    discharge = b.columns("discharge_kw", 0.0, max_discharge[plug_i[v2g]] if n_vehicles else 0.0, n_v2g)
    discharge_of_plug = np.full(n_plug, -1, dtype=np.int64)
    discharge_of_plug[v2g] = discharge

    # add_ev_charge_discharge_exclusive
    if n_v2g:
        is_charging = b.columns("is_charging", 0.0, 1.0, n_v2g, binary=True)
        rows = np.arange(n_v2g)
        b.rows(
            "ev_charge_when_charging",
            -INF,
            0.0,
            n_v2g,
            [(rows, charge[v2g], 1.0), (rows, is_charging, -max_charge[plug_i[v2g]])],
        )
        pd_v2g = max_discharge[plug_i[v2g]]
        b.rows(
            "ev_discharge_when_not_charging",
            -INF,
            pd_v2g,
            n_v2g,
            [(rows, discharge, 1.0), (rows, is_charging, pd_v2g)],
        )

    # add_ev_energy_balance
    floor = np.array([v.energy_floor_kwh for v in vehicles])
    capacity = np.array([v.capacity_kwh for v in vehicles])
    eta_c = np.array([v.charge_efficiency for v in vehicles])
    eta_d = np.array([v.discharge_efficiency for v in vehicles])
    initial = np.array([v.energy_initial_kwh for v in vehicles])
    energy = b.columns(
        "energy_kwh", floor[plug_i] if n_vehicles else 0.0, capacity[plug_i] if n_vehicles else 0.0, n_plug
    )
    rows = np.arange(n_plug)
    is_first = plug_t == first[plug_i] if n_vehicles else np.zeros(0, dtype=bool)
    later = np.flatnonzero(~is_first)
    rhs = np.where(is_first, initial[plug_i] if n_vehicles else 0.0, 0.0)
    b.rows(
        "ev_energy_balance",
        rhs,
        rhs,
        n_plug,
        [
            (rows, energy, 1.0),
            (rows, charge, -dt * eta_c[plug_i] if n_vehicles else 0.0),
            (v2g, discharge, dt / eta_d[plug_i[v2g]] if n_vehicles else 0.0),
            (later, energy[later - 1], -1.0),
        ],
    )

    # add_ev_charge_taper: (1 + k η Δt) charge + k energy[t-1] <= P f + k C (arrival energy at the first step)
    offsets = np.cumsum(lengths) - lengths
    taper_of = [(i, t) for i, v in enumerate(vehicles) for t in v.taper_steps(dt)]
    taper_i = np.array([i for i, _ in taper_of], dtype=np.int64)
    taper_at = offsets[taper_i] + np.array([t for _, t in taper_of], dtype=np.int64) - first[taper_i]
    slope = np.array([v.taper_slope_kw_per_kwh for v in vehicles])[taper_i]
    coefficient = np.array([v.taper_charge_coefficient(dt) for v in vehicles])[taper_i]
    upper = np.array(
        [
            v.taper_full_kw + v.taper_slope_kw_per_kwh * v.capacity_kwh if v.has_taper else 0.0
            for v in vehicles
        ]
    )[taper_i]
    taper_first = is_first[taper_at]
    upper = np.where(taper_first, upper - slope * initial[taper_i], upper)
    rows = np.arange(len(taper_of))
    taper_later = np.flatnonzero(~taper_first)
    b.rows(
        "ev_charge_taper",
        -INF,
        upper,
        len(taper_of),
        [
            (rows, charge[taper_at], coefficient),
            (taper_later, energy[taper_at[taper_later] - 1], slope[taper_later]),
        ],
    )

    # add_ev_departure_target
    terminal = np.array([v.terminal_energy_kwh for v in vehicles])
    shortfall = b.columns("departure_shortfall_kwh", 0.0, INF, n_vehicles)
    plugged_vehicles = np.flatnonzero(lengths > 0)
    last_energy = energy[np.cumsum(lengths)[plugged_vehicles] - 1]
    lower = np.where(lengths > 0, terminal, terminal - initial)
    rows = np.arange(n_vehicles)
    b.rows(
        "ev_departure_target",
        lower,
        INF,
        n_vehicles,
        [(rows, shortfall, 1.0), (plugged_vehicles, last_energy, 1.0)],
    )
    b.objective(shortfall, problem.unmet_penalty_per_kwh)

    # add_site_power_balance
    site_import = b.columns("site_import_kw", 0.0, problem.import_limit_kw, n_steps)
    site_export = b.columns("site_export_kw", 0.0, problem.export_limit_kw, n_steps)
    generating = np.flatnonzero(problem.generation_kw > 0)
    curtailment = b.columns("curtailment_kw", 0.0, problem.generation_kw[generating], len(generating))
    steps = np.arange(n_steps)
    b.rows(
        "site_power_balance",
        problem.net_base_kw,
        problem.net_base_kw,
        n_steps,
        [
            (steps, site_import, 1.0),
            (steps, site_export, -1.0),
            (generating, curtailment, -1.0),
            (plug_t, charge, -1.0),
            (plug_t[v2g], discharge, 1.0),
        ],
    )
    arbitrage = np.flatnonzero((problem.export_price >= problem.import_price) & (problem.export_limit_kw > 0))
    if len(arbitrage):
        n = len(arbitrage)
        is_importing = b.columns("site_is_importing", 0.0, 1.0, n, binary=True)
        rows = np.arange(n)
        b.rows(
            "site_import_when_importing",
            -INF,
            0.0,
            n,
            [(rows, site_import[arbitrage], 1.0), (rows, is_importing, -problem.import_limit_kw)],
        )
        b.rows(
            "site_export_when_exporting",
            -INF,
            problem.export_limit_kw,
            n,
            [(rows, site_export[arbitrage], 1.0), (rows, is_importing, problem.export_limit_kw)],
        )
    negative = np.flatnonzero(np.minimum(problem.import_price, problem.export_price)[generating] < 0)
    if len(negative):
        n = len(negative)
        at = generating[negative]
        is_curtailing = b.columns("site_is_curtailing", 0.0, 1.0, n, binary=True)
        rows = np.arange(n)
        b.rows(
            "site_curtail_when_curtailing",
            -INF,
            0.0,
            n,
            [(rows, curtailment[negative], 1.0), (rows, is_curtailing, -problem.generation_kw[at])],
        )
        b.rows(
            "site_export_at_limit_when_curtailing",
            0.0,
            INF,
            n,
            [(rows, site_export[at], 1.0), (rows, is_curtailing, -problem.export_limit_kw)],
        )
        b.rows(
            "site_no_import_when_curtailing",
            -INF,
            problem.import_limit_kw,
            n,
            [(rows, site_import[at], 1.0), (rows, is_curtailing, problem.import_limit_kw)],
        )
    b.objective(site_import, problem.import_price * dt)
    b.objective(site_export, -problem.export_price * dt)
    b.objective(discharge, problem.wear_cost_per_kwh * dt)

    # add_demand_charges
    charges = problem.demand_charges
    if charges:
        peak = b.columns("demand_peak_kw", np.array([c.peak_already_kw for c in charges]), INF, len(charges))
        intervals = [(d, steps_k) for d, c in enumerate(charges) for steps_k in c.intervals]
        n = len(intervals)
        sizes = np.array([len(s) for _, s in intervals])
        rows = np.arange(n)
        b.rows(
            "demand_peak_definition",
            0.0,
            INF,
            n,
            [
                (rows, peak[[d for d, _ in intervals]], 1.0),
                (
                    np.repeat(rows, sizes),
                    site_import[np.concatenate([s for _, s in intervals]).astype(np.int64)],
                    -1.0 / np.repeat(sizes, sizes),
                ),
            ],
        )
        rates = np.array([c.rate_per_kw for c in charges])
        b.objective(peak, rates)
        b.offset -= float(sum(c.rate_per_kw * c.peak_already_kw for c in charges))

    # add_dr_events
    events = problem.dr_events
    if events:
        ev_e = np.concatenate([np.full(len(e.steps), k) for k, e in enumerate(events)])
        ev_t = np.concatenate([e.steps for e in events]).astype(np.int64)
        target = np.concatenate([e.target_import_kw for e in events])
        committed = np.concatenate([e.committed_kw for e in events])
        payment = np.array([e.payment_per_kwh for e in events])[ev_e]
        penalty = np.array([e.penalty_per_kwh for e in events])[ev_e]
        n = len(ev_t)
        dr_shortfall = b.columns("dr_shortfall_kw", 0.0, INF, n)
        dr_delivered = b.columns("dr_delivered_kw", 0.0, committed, n)
        baseline = target + committed
        paid = np.flatnonzero((committed > 0) & (payment > 0))
        overload = paid[problem.import_limit_kw > baseline[paid]]
        is_delivering = b.columns("dr_is_delivering", 0.0, 1.0, len(overload), binary=True)
        rows = np.arange(n)
        b.rows(
            "dr_event_shortfall",
            -target,
            INF,
            n,
            [(rows, dr_shortfall, 1.0), (rows, site_import[ev_t], -1.0)],
        )
        # dr_event_delivery: delivered + import (+ (limit - baseline) is_delivering) <= baseline (+ ...)
        lift = np.zeros(n)
        lift[overload] = problem.import_limit_kw - baseline[overload]
        rows = np.arange(len(paid))
        position = np.full(n, -1)
        position[paid] = rows
        b.rows(
            "dr_event_delivery",
            -INF,
            baseline[paid] + lift[paid],
            len(paid),
            [
                (rows, dr_delivered[paid], 1.0),
                (rows, site_import[ev_t[paid]], 1.0),
                (position[overload], is_delivering, lift[overload]),
            ],
        )
        rows = np.arange(len(overload))
        b.rows(
            "dr_delivery_when_delivering",
            -INF,
            0.0,
            len(overload),
            [(rows, dr_delivered[overload], 1.0), (rows, is_delivering, -committed[overload])],
        )
        b.objective(dr_shortfall, dt * penalty)
        b.objective(dr_delivered, -dt * payment)

    # add_v2g_dispatches
    dispatches = problem.dispatches
    if dispatches:
        d_of = np.concatenate([np.full(len(d.steps), k) for k, d in enumerate(dispatches)])
        d_t = np.concatenate([d.steps for d in dispatches]).astype(np.int64)
        export = np.array([d.export_kw for d in dispatches])[d_of]
        price = np.array([d.price_per_kwh for d in dispatches])[d_of]
        penalty = np.array([d.penalty_per_kwh for d in dispatches])[d_of]
        room_charge = np.zeros(n_steps)
        room_discharge = np.zeros(n_steps)
        if n_plug:
            np.add.at(room_charge, plug_t, max_charge[plug_i])
            np.add.at(room_discharge, plug_t, max_discharge[plug_i])
        n = len(d_t)
        delivered = b.columns("v2g_delivered_kw", 0.0, np.where(room_discharge[d_t] > 0, export, 0.0), n)
        paid = np.flatnonzero((export > 0) & (price + penalty > 0) & (room_discharge[d_t] > 0))
        charging = paid[room_charge[d_t[paid]] > 0]
        is_delivering = b.columns("v2g_is_delivering", 0.0, 1.0, len(charging), binary=True)
        lift = np.zeros(n)
        lift[charging] = room_charge[d_t[charging]]
        position = np.full(n, -1)
        position[paid] = np.arange(len(paid))
        # v2g_dispatch_delivery: delivered - Σ discharge + Σ charge (+ room is_delivering) <= 0 (+ room)
        entries: list[tuple[np.ndarray, np.ndarray, np.ndarray | float]] = [
            (np.arange(len(paid)), delivered[paid], 1.0),
            (position[charging], is_delivering, lift[charging]),
        ]
        for k in paid:  # the vehicles plugged in at each paid dispatch step
            at = np.flatnonzero(plug_t == d_t[k])
            at_v2g = np.flatnonzero(plug_t[v2g] == d_t[k])
            entries.append((np.full(len(at), position[k]), charge[at], 1.0))
            entries.append((np.full(len(at_v2g), position[k]), discharge[at_v2g], -1.0))
        b.rows("v2g_dispatch_delivery", -INF, lift[paid], len(paid), entries)
        rows = np.arange(len(charging))
        b.rows(
            "v2g_delivery_when_delivering",
            -INF,
            0.0,
            len(charging),
            [(rows, delivered[charging], 1.0), (rows, is_delivering, -export[charging])],
        )
        b.objective(delivered, -dt * (penalty + price))
        b.offset += float(dt * (penalty * export).sum())

    # add_charging_urgency: a tie-breaker the rolling horizon switches on (weight 0 offline)
    weight = problem.charging_urgency_weight
    if weight and n_plug:
        need = np.maximum(terminal - initial, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            full_power_steps = np.where(max_charge > 0, need / (max_charge * eta_c * dt), 0.0)
        priority = 1.0 / np.maximum(lengths - full_power_steps + 1.0, 1.0)
        b.objective(charge, weight * dt * plug_t * priority[plug_i])

    b.finish()
    b.plugged, b.v2g = (plug_i, plug_t), v2g
    return b


def solve_direct(problem: Problem, options: SolverOptions | None = None) -> DirectResult:
    """Build with :func:`build_highs`; solve as :func:`optimizer.optimize` does, with its HiGHS settings.

    Like ``optimizer.solve._solve_exclusivity_relaxed_first``: first with ``is_charging`` continuous,
    and again with it binary (in the time left) only if a vehicle then charges and discharges at once.
    """
    options = options or SolverOptions()
    started = time.perf_counter()
    highs = highspy.Highs()
    highs.setOptionValue("output_flag", options.verbose)
    builder = build_highs(problem, highs)
    build_seconds = time.perf_counter() - started

    for name, value in highs_settings(options).items():
        highs.setOptionValue(name, value)
    started = time.perf_counter()
    exclusive = builder.columns_of.get("is_charging", np.zeros(0, dtype=np.int32))
    _set_integrality(highs, exclusive, highspy.HighsVarType.kContinuous)
    highs.run()
    if len(exclusive) and highs.getInfo().primal_solution_status == 2:
        values = np.asarray(highs.getSolution().col_value)
        charge = values[builder.columns_of["charge_kw"]][builder.v2g]
        discharge = values[builder.columns_of["discharge_kw"]]
        if ((charge > 1e-6) & (discharge > 1e-6)).any():
            _set_integrality(highs, exclusive, highspy.HighsVarType.kInteger)
            highs.setOptionValue("time_limit", max(0.0, options.time_limit - (time.perf_counter() - started)))
            highs.run()
    solve_seconds = time.perf_counter() - started

    info = highs.getInfo()
    status = highs.modelStatusToString(highs.getModelStatus())
    if info.primal_solution_status != 2:  # kSolutionStatusFeasible: no schedule within the time limit
        nan = float("nan")
        return DirectResult(nan, None, None, status, build_seconds, solve_seconds, nan, 0, 0, 0)
    is_mip = info.mip_node_count >= 0  # an LP once is_charging was relaxed and no other binary is left
    objective = float(info.objective_function_value)
    bound = float(info.mip_dual_bound) if is_mip else objective
    # the same definition as optimizer.optimize: |objective - bound| / |objective|
    gap = abs(objective - bound) / max(abs(objective), 1e-9) if abs(objective - bound) > 1e-9 else 0.0
    values = np.asarray(highs.getSolution().col_value)
    shape = (len(problem.vehicles), problem.n_steps)
    charge, discharge = np.zeros(shape), np.zeros(shape)
    (plug_i, plug_t), v2g = builder.plugged, builder.v2g
    charge[plug_i, plug_t] = values[builder.columns_of["charge_kw"]]
    discharge[plug_i[v2g], plug_t[v2g]] = values[builder.columns_of["discharge_kw"]]
    evaluated = evaluate(problem, np.maximum(charge, 0.0), np.maximum(discharge, 0.0)).objective
    return DirectResult(
        objective=objective,
        bound=bound,
        gap=gap,
        status=status,
        build_seconds=build_seconds,
        solve_seconds=solve_seconds,
        evaluated_objective=float(evaluated),
        n_columns=highs.getNumCol(),
        n_rows=highs.getNumRow(),
        n_binaries=int(sum(len(x) for x in builder.binaries)),
    )


def _set_integrality(highs: highspy.Highs, columns: np.ndarray, kind: highspy.HighsVarType) -> None:
    if len(columns):
        highs.changeColsIntegrality(len(columns), columns, np.full(len(columns), kind))
