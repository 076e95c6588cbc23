"""``python -m examples.checkout.worker [DATABASE]``: one ``SagaWorker`` running checkouts.

It claims the due ``checkout`` sagas of ``DATABASE`` (default ``sqlite:///checkout.db``),
runs their steps and stops cleanly on SIGTERM or Ctrl-C (the saga in flight finishes its
step and is handed back). Start as many as you like; kill them as you like.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from examples.checkout.checkout import checkout
from surefoot.saga import SagaLog, SagaWorker


async def work(database: str) -> None:
    log = SagaLog(database)
    worker = SagaWorker(log, [checkout], poll_interval=0.2, lease=10.0)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        await worker.aclose()
        log.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    asyncio.run(work(sys.argv[1] if len(sys.argv) > 1 else "sqlite:///checkout.db"))
