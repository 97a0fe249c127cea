"""Fit the session distributions of :mod:`workbench.synthetic` to real ACN-Data sessions; print them.

Source: ``../shared/data/acn/caltech_201903.json.gz`` — 954 Caltech ACN sessions, March 2019, in
the acnportal event-queue format (read with :func:`market_adapters.acn.read_acn_sessions`). Only
weekday sessions are used, because the synthetic day is a weekday workplace/depot day.

Fitted by maximum likelihood, with numpy only:

- arrival clock hour (local time): Gaussian mixtures of two and three components by EM, started from
  fixed means so the result is reproducible; the one with the lower BIC is kept (three: morning
  commuters, a broad midday group, evening visitors);
- each session is assigned to its most likely arrival component; per component, dwell hours and
  delivered energy [kWh] are lognormal (MLE: mean and standard deviation of the logarithm).

The printed numbers are embedded as constants in ``workbench/synthetic.py``; rerun this script and
update them there if the data or the method changes::

    .venv/bin/python bench/fit_acn_distributions.py [path/to/events.json.gz [START]]

Another file needs its start (its first step's local date, ``2019-11-01``) unless it has an acnportal
name (``caltech_20191101T000000_20191201T000000_5m_208V_6.6kW.json.gz``), which carries it.
"""

from __future__ import annotations

import datetime as dt
import sys
import zoneinfo
from pathlib import Path

import numpy as np

from market_adapters.acn import ACN_TIMEZONE, read_acn_sessions

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "acn" / "caltech_201903.json.gz"
DEFAULT_START = dt.datetime(2019, 3, 1, tzinfo=zoneinfo.ZoneInfo(ACN_TIMEZONE))
"""Step 0 of :data:`DEFAULT_PATH`, whose name does not carry it."""


INITIAL_MEANS_H = ((8.5, 15.0), (8.5, 12.0, 18.0))
"""EM starting means of the candidate arrival mixtures [h]."""


def mixture_density(x: np.ndarray, weights: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Weighted density of every component at every point: shape (len(x), components)."""
    return np.asarray(
        weights * np.exp(-0.5 * ((x[:, None] - mu) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    )


def fit_gaussian_mixture(
    x: np.ndarray, means: tuple[float, ...], iterations: int = 1000
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """EM for a 1-D Gaussian mixture: (weights, means, standard deviations, BIC)."""
    k = len(means)
    weights = np.full(k, 1 / k)
    mu = np.array(means, dtype=float)
    sigma = np.full(k, x.std())
    for _ in range(iterations):
        resp = mixture_density(x, weights, mu, sigma)
        resp /= resp.sum(axis=1, keepdims=True)
        total = resp.sum(axis=0)
        weights = total / len(x)
        mu = (resp * x[:, None]).sum(axis=0) / total
        sigma = np.sqrt((resp * (x[:, None] - mu) ** 2).sum(axis=0) / total)
    log_likelihood = float(np.log(mixture_density(x, weights, mu, sigma).sum(axis=1)).sum())
    bic = -2 * log_likelihood + (3 * k - 1) * np.log(len(x))
    return weights, mu, sigma, float(bic)


def lognormal_mle(x: np.ndarray) -> tuple[float, float]:
    logs = np.log(x)
    return float(logs.mean()), float(logs.std())


def main(path: Path, start: dt.datetime | None) -> None:
    sessions = read_acn_sessions(path, start=start)
    weekday = [s for s in sessions if s.arrival.weekday() < 5]
    arrival_h = np.array([s.arrival.hour + s.arrival.minute / 60 for s in weekday])
    dwell_h = np.array([(s.departure - s.arrival).total_seconds() / 3600 for s in weekday])
    energy = np.array([s.requested_energy_kwh for s in weekday])

    print(f"source: {path.name}: {len(sessions)} sessions, {len(weekday)} on weekdays (used)")
    fits = [fit_gaussian_mixture(arrival_h, means) for means in INITIAL_MEANS_H]
    for _, mu, _, bic in fits:
        print(f"arrival hour ~ {len(mu)}-component Gaussian mixture (EM): BIC {bic:.1f}")
    weights, mu, sigma, _ = min(fits, key=lambda fit: fit[3])
    print(f"kept the {len(mu)}-component mixture (lowest BIC):")
    for k in range(len(mu)):
        print(f"  component {k}: weight={weights[k]:.4f} mean_h={mu[k]:.4f} sd_h={sigma[k]:.4f}")
    labels = mixture_density(arrival_h, weights, mu, sigma).argmax(axis=1)
    for k in range(len(mu)):
        mask = labels == k
        d_mu, d_sd = lognormal_mle(dwell_h[mask])
        e_mu, e_sd = lognormal_mle(energy[mask])
        print(
            f"  component {k} ({mask.sum()} sessions): dwell_h ~ lognormal(mu={d_mu:.4f}, sigma={d_sd:.4f}) "
            f"[median {np.exp(d_mu):.2f} h]; energy_kwh ~ lognormal(mu={e_mu:.4f}, sigma={e_sd:.4f}) "
            f"[median {np.exp(e_mu):.2f} kWh]"
        )
    d_mu, d_sd = lognormal_mle(dwell_h)
    e_mu, e_sd = lognormal_mle(energy)
    print(f"all weekday sessions: dwell_h ~ lognormal(mu={d_mu:.4f}, sigma={d_sd:.4f})")
    print(f"all weekday sessions: energy_kwh ~ lognormal(mu={e_mu:.4f}, sigma={e_sd:.4f})")
    print(
        "empirical: arrival hour mean/sd "
        f"{arrival_h.mean():.3f}/{arrival_h.std():.3f}; dwell median {np.median(dwell_h):.3f} h; "
        f"energy median {np.median(energy):.3f} kWh"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1:
        local = dt.datetime.fromisoformat(sys.argv[2]) if len(sys.argv) > 2 else None
        main(Path(sys.argv[1]), local and local.replace(tzinfo=zoneinfo.ZoneInfo(ACN_TIMEZONE)))
    else:
        main(DEFAULT_PATH, DEFAULT_START)
