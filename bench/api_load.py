"""The traders' schedule endpoint under load: ``GET /trader/sites/{id}/schedule`` at constant rates.

- The API (:func:`aggregator.api.app.create_app`) runs under uvicorn in its own process, on a free
  port, on an SQLite file in a temporary directory or on ``--database-url`` (migrated first).
- Seeding: ``--sites`` sites, each with ``--versions`` schedule versions of a synthetic depot day
  (:func:`workbench.synthetic.generate_depot_day`, ``--vehicles`` × 96 quarter-hour steps, a third
  V2G) solved by the optimizer and stored as the control loop stores them; one trader account.
- Load: for each rate of ``--rates``, requests are sent open-loop for ``--duration`` seconds, the
  ``k``-th at ``t0 + k / rate`` whether or not earlier ones have answered (httpx ``AsyncClient``), so
  a slow server shows up as latency instead of as a lower rate. Latency is from the request's planned
  send time to its complete response. Sites are requested round-robin, with a bearer token.
- Printed per rate: requests, errors, achieved rate (answers per second over the step), p50 / p99 /
  max latency, and the server process's CPU (from ``/proc``).

Target (issue): p99 <= 50 ms at 200 req/s.

    python bench/api_load.py [--rates 50 100 200 400] [--duration 10] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import socket
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from report import make_console, print_tables

from aggregator.api.config import Settings
from aggregator.api.security import create_access_token, hash_password
from aggregator.control import schedules
from aggregator.db.migrate import upgrade
from aggregator.db.models import Role, ScheduleStatus, ScheduleVersion, Site, User
from aggregator.db.session import make_engine, make_sessionmaker
from optimizer import schedule
from workbench.synthetic import generate_depot_day

SECRET = "bench-secret-" + "x" * 40
TARGET_RATE = 200.0
TARGET_P99_MS = 50.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_IN_FLIGHT = 64
"""Requests the server admits at once, and its database connections."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value), parse_constant=lambda name: None)


def seed(url: str, sites: int, versions: int, vehicles: int) -> tuple[list[str], str]:
    """Sites with solved schedule versions, and a trader's bearer token."""
    upgrade(url)
    engine = make_engine(url)
    settings = Settings(secret_key=SecretStr(SECRET))
    site_ids = [f"bench-{k}" for k in range(sites)]
    with make_sessionmaker(engine)() as session:
        trader = User(
            email="trader@bench.example", password_hash=hash_password("bench-password"), role=Role.TRADER
        )
        session.add(trader)
        now = dt.datetime.now(dt.UTC)
        for k, site_id in enumerate(site_ids):
            scenario = generate_depot_day(vehicles, seed=k, v2g_share=1 / 3)
            scenario = scenario.model_copy(update={"site": scenario.site.model_copy(update={"id": site_id})})
            session.add(
                Site(
                    id=site_id,
                    name=site_id,
                    import_limit_kw=scenario.site.import_limit_kw,
                    export_limit_kw=0.0,
                )
            )
            session.flush()  # the versions refer to the site
            started = time.perf_counter()
            result = schedule(scenario, time_limit=30)
            print(
                f"{site_id}: {vehicles} vehicles x {scenario.n_steps} steps solved in "
                f"{time.perf_counter() - started:.2f} s ({result.status.value})",
                flush=True,
            )
            inputs = {
                "scenario": scenario.model_dump(mode="json"),
                "sessions": {v.id: n for n, v in enumerate(scenario.vehicles)},
                "events": [],
            }
            for n in range(versions):
                session.add(
                    ScheduleVersion(
                        site_id=site_id,
                        created_at=now - dt.timedelta(minutes=15 * (versions - n)),
                        horizon_start=scenario.start,
                        step_seconds=scenario.step_minutes * 60,
                        inputs=inputs,
                        result_summary=_json_safe(result.summary()),
                        status=ScheduleStatus(result.status.value),
                        plan=schedules.plan_json(result),
                    )
                )
        session.commit()
        token = create_access_token(trader.id, Role.TRADER, settings)
    engine.dispose()
    return site_ids, token


def serve(url: str, port: int) -> None:
    """The API under uvicorn (run in a child process)."""
    import uvicorn

    from aggregator.api.app import create_app

    settings = Settings(secret_key=SecretStr(SECRET), database_url=url)
    # Each request holds a database connection from authentication until its response, also while it
    # waits for a worker thread: with more requests in flight than connections, the threads wait for
    # connections the waiting requests hold. Admitting at most as many requests as there are
    # connections (uvicorn answers 503 beyond) keeps an overload from stalling the pool.
    engine = make_engine(url, pool_size=MAX_IN_FLIGHT, max_overflow=0, pool_timeout=10)
    app = create_app(settings, make_sessionmaker(engine))
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        limit_concurrency=MAX_IN_FLIGHT,
        timeout_graceful_shutdown=2,
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class StepResult:
    rate: float
    sent: int
    errors: int
    latencies_ms: list[float]
    seconds: float
    server_cpu: float
    client_cpu: float
    """CPU of all client processes together, as a share of one core."""

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


@dataclass
class ClientShare:
    """What one client process sent: its latencies [ms], errors, seconds and CPU seconds."""

    sent: int
    errors: int
    latencies_ms: list[float]
    seconds: float
    cpu_seconds: float
    error_kinds: dict[str, int]


async def fire(
    base: str, token: str, paths: list[str], rate: float, duration: float, control: Any
) -> ClientShare:
    """``rate`` requests per second for ``duration`` s, open loop, from the moment ``control`` sends.

    The client first opens its connections and tells ``control`` it is ready; the parent answers with
    a wall-clock start time once every client is ready.
    """
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    errors = 0
    kinds: Counter[str] = Counter()

    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as client:
        # open a few connections and warm the server's rendered plans before the clock starts
        await asyncio.gather(*(client.get(path) for path in paths * 4))
        control.send("ready")
        begin, phase = control.recv()

        async def one(path: str, planned: float) -> None:
            nonlocal errors
            try:
                response = await client.get(path)
                await response.aread()
                if response.status_code != 200:
                    errors += 1
                    kinds[f"HTTP {response.status_code}"] += 1
                    return
            except httpx.HTTPError as error:
                errors += 1
                kinds[f"{type(error).__name__}: {error}"[:120]] += 1
                return
            latencies.append((time.perf_counter() - planned) * 1000)

        n = int(rate * duration)
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.perf_counter() + (begin - time.time()) + phase
        cpu0 = time.process_time()
        for k in range(n):
            planned = t0 + k / rate
            delay = planned - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(paths[k % len(paths)], planned))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        seconds = time.perf_counter() - t0
    return ClientShare(n, errors, latencies, seconds, time.process_time() - cpu0, dict(kinds))


def client_process(
    base: str, token: str, paths: list[str], rate: float, duration: float, control: Any
) -> None:
    try:
        control.send(asyncio.run(fire(base, token, paths, rate, duration, control)))
    except BaseException as error:
        control.send(f"client failed: {error!r}")
        raise


def _receive(control: Any, timeout: float) -> Any:
    if not control.poll(timeout):
        raise SystemExit(f"a client process did not answer within {timeout:.0f} s")
    message = control.recv()
    if isinstance(message, str) and message.startswith("client failed"):
        raise SystemExit(message)
    return message


def run_step(
    base: str, token: str, site_ids: list[str], rate: float, duration: float, clients: int, server_pid: int
) -> StepResult:
    """One rate, split over ``clients`` processes whose requests interleave evenly."""
    context = mp.get_context("spawn")
    controls, processes = [], []
    for k in range(clients):
        mine, theirs = context.Pipe()
        # every client asks for every site in turn, each starting at another one
        paths = [f"/trader/sites/{site_id}/schedule" for site_id in site_ids]
        paths = paths[k % len(paths) :] + paths[: k % len(paths)]
        process = context.Process(
            target=client_process, args=(base, token, paths, rate / clients, duration, theirs), daemon=True
        )
        process.start()
        theirs.close()
        controls.append(mine)
        processes.append(process)
    for control in controls:
        _receive(control, 120)
    begin = time.time() + 0.5
    for k, control in enumerate(controls):
        control.send((begin, k / rate))
    time.sleep(max(0.0, begin - time.time()))
    cpu0 = cpu_seconds(server_pid)
    shares: list[ClientShare] = [_receive(control, duration + 120) for control in controls]
    server_cpu = cpu_seconds(server_pid) - cpu0
    for process in processes:
        process.join(10)
    seconds = max(share.seconds for share in shares)
    kinds: Counter[str] = Counter()
    for share in shares:
        kinds.update(share.error_kinds)
    for kind, count in kinds.most_common():
        print(f"{rate:.0f} req/s: {count} x {kind}", flush=True)
    return StepResult(
        rate=rate,
        sent=sum(share.sent for share in shares),
        errors=sum(share.errors for share in shares),
        latencies_ms=[latency for share in shares for latency in share.latencies_ms],
        seconds=seconds,
        server_cpu=server_cpu / seconds,
        client_cpu=sum(share.cpu_seconds for share in shares) / seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", type=float, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--versions", type=int, default=4, help="schedule versions per site")
    parser.add_argument("--vehicles", type=int, default=50)
    parser.add_argument("--clients", type=int, default=2, help="client processes sharing each rate")
    parser.add_argument("--database-url", help="an empty database to use (default: a temporary SQLite file)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
        site_ids, token = seed(url, args.sites, args.versions, args.vehicles)
        port = free_port()
        server = mp.get_context("spawn").Process(target=serve, args=(url, port), daemon=True)
        server.start()
        assert server.pid is not None
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/openapi.json", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or not server.is_alive():
                    raise SystemExit("the API did not start")
                time.sleep(0.2)
            size = len(
                httpx.get(
                    f"{base}/trader/sites/{site_ids[0]}/schedule",
                    headers={"Authorization": f"Bearer {token}"},
                ).content
            )
            print(f"response: {size / 1024:.1f} KiB of JSON per request", flush=True)
            results = [
                run_step(base, token, site_ids, rate, args.duration, args.clients, server.pid)
                for rate in args.rates
            ]
        finally:
            server.terminate()
            server.join(10)
            if server.is_alive():
                server.kill()
                server.join(10)

    rows = []
    for r in results:
        p99 = r.percentile(0.99)
        target = "-"
        if r.rate == TARGET_RATE:
            verdict = "met" if p99 <= TARGET_P99_MS and not r.errors else "MISSED"
            target = f"{verdict} (p99 <= {TARGET_P99_MS:.0f} ms)"
        rows.append(
            [
                f"{r.rate:.0f}",
                str(r.sent),
                str(r.errors),
                f"{len(r.latencies_ms) / r.seconds:.1f}",
                f"{r.percentile(0.5):.1f}",
                f"{p99:.1f}",
                f"{max(r.latencies_ms, default=math.nan):.1f}",
                f"{100 * r.server_cpu:.0f}",
                f"{100 * r.client_cpu:.0f}",
                target,
            ]
        )
    backend = "PostgreSQL" if args.database_url and args.database_url.startswith("postgres") else "SQLite"
    title = f"GET /trader/sites/{{id}}/schedule, {args.vehicles} vehicles x 96 steps, {backend}"
    header = [
        "rate [req/s]",
        "sent",
        "errors",
        "achieved [req/s]",
        "p50 ms",
        "p99 ms",
        "max ms",
        "server CPU %",
        "clients CPU %",
        "target",
    ]
    print_tables(make_console(), title, header, rows)


if __name__ == "__main__":
    main()
