"""The centre's ingestion alone, as its own process, so that a test can SIGKILL it at any moment::

    python tests/ingestion_process.py DATABASE_URL HOST PORT [--commit-delay-s 0.05] [--client-id ID]

It prints ``subscribed`` on stdout once every session is connected and subscribed, then runs until it
is killed (or ended by SIGTERM/SIGINT, which stores what was taken and prints the counters as JSON).
``--commit-delay-s`` holds every commit that long first (a slow database), so that a kill lands while
a batch is being stored. Logs go to stderr. It uses only what ingestion has always offered
(``Ingestion``, ``IngestionSettings``, ``wait_subscribed``), so the same test runs against old code.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import time
from typing import Any

from sqlalchemy import event

from aggregator.db.session import make_engine, make_sessionmaker
from aggregator.ingestion.pipeline import Ingestion, IngestionSettings


async def run(args: argparse.Namespace) -> None:
    engine = make_engine(args.database_url)
    if args.commit_delay_s > 0:

        def slow_commit(connection: Any) -> None:
            time.sleep(args.commit_delay_s)  # in the writer's worker thread, before the commit

        event.listen(engine, "commit", slow_commit)
    settings = IngestionSettings(
        host=args.host, port=args.port, client_id=args.client_id, batch_max_messages=25, max_pending=100
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Ingestion(settings, make_sessionmaker(engine)) as ingestion:
        await ingestion.wait_subscribed(30.0)
        print("subscribed", flush=True)
        await stop.wait()
    stats = {kind.value: dataclasses.asdict(c) for kind, c in ingestion.stats.kinds.items()}
    print(json.dumps(stats), flush=True)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("database_url")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--commit-delay-s", type=float, default=0.0)
    parser.add_argument("--client-id", default="fleetgrid-centre-ingestion")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
