"""How long ``fleetgrid`` takes before it does anything, and what the gateway-only install weighs.

Every figure is the wall time of a whole ``fleetgrid`` process (``subprocess``, a fresh interpreter each
time), the median of ``--runs`` runs after one warm-up run that is not counted. Each command is timed
twice over:

- with bytecode cached, as on a usual machine: the warm-up writes the ``.pyc`` files, to a temporary
  ``PYTHONPYCACHEPREFIX`` so that nothing is written into the venvs or the checkout;
- without any ``.pyc`` (``PYTHONDONTWRITEBYTECODE=1``, no prefix): every module compiled at every
  start, as in a venv installed without compiling whose user may not write ``__pycache__``, or a
  shell that sets ``PYTHONDONTWRITEBYTECODE``.

The commands:

- the full install (this interpreter's venv, ``.venv``: central extra and dev tools):
  ``fleetgrid --help``, ``fleetgrid gateway --help``, ``fleetgrid admin --help``, and two real admin
  calls on an SQLite database that is already at the latest schema: ``init-db`` with
  ``--database-url`` and with ``--config central.toml`` (the form README.md uses);
- the gateway-only install, built here into a temporary directory as tests/gateway_venv.py does
  (uv, offline, the gateway extra's pins from uv.lock):
  ``fleetgrid --help``, ``fleetgrid gateway --help`` and ``fleetgrid sim-chargers --help``;
- the two venvs' size on disk and their numbers of installed distributions.

Goals (issue 10): ``fleetgrid --help`` <= 0.5 s, ``fleetgrid admin ...`` <= 1.5 s,
``fleetgrid gateway --help`` <= 0.5 s.

    python bench/cli_startup.py [--runs 7] [--no-gateway-venv]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from report import make_console, print_tables, seconds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from gateway_venv import build_gateway_venv, find_uv  # noqa: E402  (a test helper, shared)

GOALS = {"--help": 0.5, "gateway --help": 0.5, "admin": 1.5}


@dataclass(frozen=True)
class Timing:
    install: str
    command: str
    cached: list[float]
    """Wall times [s] with the bytecode cached."""
    uncached: list[float]
    """Wall times [s] without any ``.pyc``."""
    goal: float | None


def wall_times(argv: list[str], runs: int, pycache: Path | None) -> list[float]:
    """Wall times [s] of ``runs`` runs of ``argv`` after one uncounted warm-up; each must succeed.

    ``pycache``: the bytecode cache directory (``PYTHONPYCACHEPREFIX``); ``None``: no bytecode at all.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHONPYCACHE")}
    env["COLUMNS"] = "100"
    if pycache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    times = []
    for run in range(runs + 1):
        start = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(
                f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )
        if run > 0:
            times.append(elapsed)
    return times


def goal_for(args: list[str]) -> float | None:
    key = " ".join(args)
    if args[0] == "admin":
        key = "admin"
    return GOALS.get(key)


def time_commands(
    install: str, venv: Path, commands: list[list[str]], runs: int, workdir: Path
) -> list[Timing]:
    fleetgrid = str(venv / "bin" / "fleetgrid")
    timings = []
    for args in commands:
        shown = " ".join(["fleetgrid", *args]).replace(str(workdir), "$TMP")
        argv = [fleetgrid, *args]
        cached = wall_times(argv, runs, workdir / "pycache")
        timings.append(Timing(install, shown, cached, wall_times(argv, runs, None), goal_for(args)))
    return timings


def disk_usage(directory: Path) -> int:
    """Bytes on disk (allocated blocks) under ``directory``, each hard-linked file counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for parent, _dirs, files in os.walk(directory):
        for name in files:
            stat = os.lstat(Path(parent) / name)
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
    return total


def distributions(venv: Path) -> int:
    return sum(1 for _ in venv.glob("lib/python*/site-packages/*.dist-info"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7, help="Counted runs per command (after a warm-up)")
    parser.add_argument("--no-gateway-venv", action="store_true", help="Skip the gateway-only install")
    options = parser.parse_args()
    console = make_console()
    full = Path(sys.prefix)
    timings: list[Timing] = []
    sizes: list[list[str]] = []
    build_s: float | None = None
    with tempfile.TemporaryDirectory(prefix="fleetgrid-cli-bench-") as tmp:
        work = Path(tmp)
        url = f"sqlite:///{work / 'admin.sqlite'}"
        central = work / "central.toml"
        central.write_text(f'[database]\nurl = "{url}"\n')
        timings += time_commands(
            "full",
            full,
            [
                ["--help"],
                ["gateway", "--help"],
                ["admin", "--help"],
                ["admin", "--database-url", url, "init-db"],
                ["admin", "--config", str(central), "init-db"],
            ],
            options.runs,
            work,
        )
        sizes.append(
            ["full (.venv: central + dev)", f"{disk_usage(full) / 1e6:.0f}", str(distributions(full))]
        )
        if not options.no_gateway_venv:
            uv = find_uv()
            if uv is None:
                raise SystemExit(
                    "uv is not installed (`make` puts it in .uv/bin/uv); or pass --no-gateway-venv"
                )
            start = time.perf_counter()
            gateway = build_gateway_venv(uv, work / "gateway")
            build_s = time.perf_counter() - start
            timings += time_commands(
                "gateway only",
                gateway,
                [["--help"], ["gateway", "--help"], ["sim-chargers", "--help"]],
                options.runs,
                work,
            )
            sizes.append(["gateway only", f"{disk_usage(gateway) / 1e6:.0f}", str(distributions(gateway))])

    rows = [
        [
            t.command,
            t.install,
            seconds(statistics.median(t.cached)),
            f"{seconds(min(t.cached))}-{seconds(max(t.cached))}",
            seconds(statistics.median(t.uncached)),
            "" if t.goal is None else f"<= {t.goal:g}",
        ]
        for t in timings
    ]
    header = ["command", "install", "median [s]", "min-max [s]", "median, no .pyc [s]", "goal [s]"]
    print_tables(console, f"fleetgrid start-up, {options.runs} runs each", header, rows)
    print_tables(console, "installs", ["install", "size on disk [MB]", "distributions"], sizes)
    if build_s is not None:
        console.print(f"gateway-only venv built from uv's cache (offline) in {build_s:.1f} s")


if __name__ == "__main__":
    main()
