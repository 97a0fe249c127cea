"""What the benchmark scripts print besides their figures: the machine, and a table twice over.

Each table is printed for the terminal (rich) and as Markdown to paste into BENCHMARKS.md, under a line
naming the command and the machine it ran on, because figures mean nothing without them.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import version
from pathlib import Path

from rich.console import Console
from rich.table import Table


def machine() -> str:
    """CPU model, cores this process may use, Python, highspy and Pyomo versions."""
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{model}, {cores} cores (nproc); Python {platform.python_version()}, "
        f"highspy {version('highspy')}, Pyomo {version('pyomo')}"
    )


def make_console() -> Console:
    """A console as wide as the tables when the output goes to a file or a pipe (rich assumes 80)."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def command() -> str:
    return "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])


def print_tables(console: Console, title: str, header: list[str], rows: list[list[str]]) -> None:
    """``rows`` as a rich table, then as a Markdown table with the command and the machine."""
    table = Table(title=title)
    for name in header:
        table.add_column(name, justify="left" if name == header[0] else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"\nMarkdown ({title}):\n")
    lines = [
        f"`{command()}` on {machine()}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    # plain print: rich would wrap long lines and read [..] as markup
    print("\n".join(lines), flush=True)


def seconds(value: float) -> str:
    return f"{value:.2f}"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.3f} %"
