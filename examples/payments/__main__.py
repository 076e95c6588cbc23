"""``python -m examples.payments``: serve the payments API with uvicorn.

The databases come from ``$PAYMENTS_LEDGER`` (default ``payments.db``) and
``$SUREFOOT_STORE`` (default ``sqlite:///idempotency.db``), read by every worker.
"""

from __future__ import annotations

import argparse

import uvicorn


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.payments", description="Serve the payments example."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    args = parser.parse_args()
    # An import string, not the app object: each worker process builds its own app.
    uvicorn.run("examples.payments.app:app", host=args.host, port=args.port, workers=args.workers)


if __name__ == "__main__":
    main()
