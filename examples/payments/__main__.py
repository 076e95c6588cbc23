"""``python -m examples.payments``: serve the payments API with uvicorn.

The databases come from ``$PAYMENTS_LEDGER`` (default ``payments.db``) and
``$SUREFOOT_STORE`` (default ``sqlite:///idempotency.db``), read by every worker.
"""

from __future__ import annotations

import argparse
import copy

import uvicorn
from uvicorn.config import LOGGING_CONFIG


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.payments", description="Serve the payments example."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    args = parser.parse_args()
    # surefoot logs its events on "surefoot.*" and, as a library, prints nothing unless the
    # application configures logging: show them beside uvicorn's own lines.
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["surefoot"] = {"handlers": ["default"], "level": "INFO"}
    # An import string, not the app object: each worker process builds its own app.
    uvicorn.run(
        "examples.payments.app:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=log_config,
    )


if __name__ == "__main__":
    main()
