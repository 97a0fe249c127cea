"""A gateway-only install in a fresh venv, from the lock and uv's cache, without the network.

The recipe a depot's edge box follows, in four uv calls:

1. ``uv export --frozen --no-dev --extra gateway --no-emit-project``: the gateway's pins (with hashes)
   from ``uv.lock``, the file an edge box without uv installs with ``pip install --require-hashes``;
2. ``uv venv``: a fresh venv on this interpreter;
3. ``uv sync --frozen --no-dev --extra gateway --no-install-project`` into that venv: exactly those
   wheels, by the lock's URLs and hashes (so uv's cache needs the wheels, not the index's pages);
4. ``uv pip install --no-deps <copy of the project>``: fleetgrid itself (its packages and the
  ``fleetgrid`` console script), built from a copy so the build leaves nothing in the checkout.

Every call runs ``--offline``: the wheels come from uv's cache (filled by ``make``), never the internet.
Used by tests/test_gateway_install.py and bench/cli_startup.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("aggregator", "optimizer", "market_adapters", "site_gateway", "wire", "chargersim", "workbench")
CENTRAL_ONLY = ("numpy", "pandas", "pyomo", "highspy", "fastapi", "sqlalchemy", "openleadr", "yaml")
"""Modules of the central extra that must not be importable in a gateway-only venv."""


class GatewayVenvError(RuntimeError):
    """A uv step of the gateway install failed; the message carries its command and output."""


def find_uv() -> Path | None:
    """The repository's pinned uv (``make`` installs it in ``.uv/``), else a ``uv`` on PATH."""
    pinned = ROOT / ".uv" / "bin" / "uv"
    if pinned.exists():
        return pinned
    found = shutil.which("uv")
    return Path(found) if found else None


def _uv(uv: Path, *args: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1", **(env or {})}
    env.pop("VIRTUAL_ENV", None)  # uv would prefer it over --python
    result = subprocess.run(
        [str(uv), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        command = " ".join(map(str, ("uv", *args)))
        raise GatewayVenvError(f"{command} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def build_gateway_venv(uv: Path, directory: Path) -> Path:
    """Install fleetgrid's gateway extra into ``directory/venv``; returns the venv."""
    directory.mkdir(parents=True, exist_ok=True)
    pins = directory / "gateway-requirements.txt"
    _uv(uv, "export", "--frozen", "--no-dev", "--extra", "gateway", "--no-emit-project", "-q", "-o", pins)
    source = directory / "src"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "uv.lock"):
        shutil.copy2(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    venv = directory / "venv"
    _uv(uv, "venv", "--offline", "-q", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    # The pinned packages by the lock's own URLs and hashes (as `make` installs them), so uv needs no
    # index pages in its cache, only the wheels; then our packages, built from the copy.
    sync = ("sync", "--frozen", "--offline", "--no-dev", "--extra", "gateway", "--no-install-project", "-q")
    _uv(uv, *sync, "--project", source, "--python", python, env={"UV_PROJECT_ENVIRONMENT": str(venv)})
    _uv(uv, "pip", "install", "--offline", "--no-deps", "-q", "--python", python, source)
    return venv
