"""``python -m examples.legacy_payments``: serve the legacy payments API with uvicorn.

The options reach the app through ``$LEGACY_LEDGER``, ``$LEGACY_FAIL_AFTER_COMMIT`` and
``$LEGACY_SEED``, which every worker process reads when it builds its app; an option left
out keeps the variable's value, if it is set.
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Sequence

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from examples.legacy_payments.app import DEFAULT_LEDGER, create_app


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.legacy_payments",
        description="Serve the legacy payments API (no idempotency; the gateway's upstream).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--ledger",
        default=os.environ.get("LEGACY_LEDGER") or DEFAULT_LEDGER,
        help=f"the SQLite ledger (default $LEGACY_LEDGER, else {DEFAULT_LEDGER})",
    )
    parser.add_argument(
        "--fail-after-commit",
        type=_probability,
        default=os.environ.get("LEGACY_FAIL_AFTER_COMMIT") or "0",
        metavar="P",
        help="probability that a charge commits and then answers 500 (default 0)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=os.environ.get("LEGACY_SEED") or None,
        help="seed of the failures, the same in every worker (default unseeded)",
    )
    args = parser.parse_args(argv)
    # An absolute path: every worker opens the same file whatever its working directory.
    ledger = os.path.abspath(args.ledger)
    os.environ["LEGACY_LEDGER"] = ledger
    os.environ["LEGACY_FAIL_AFTER_COMMIT"] = repr(args.fail_after_commit)
    if args.seed is None:
        os.environ.pop("LEGACY_SEED", None)
    else:
        os.environ["LEGACY_SEED"] = str(args.seed)
    # Create the ledger once, here, rather than in every worker at the same moment.
    create_app(ledger)
    log_config = copy.deepcopy(LOGGING_CONFIG)
    # Show the injected failures beside uvicorn's own lines.
    log_config["loggers"]["examples.legacy_payments"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    # An import string, not the app object: each worker process builds its own app.
    uvicorn.run(
        "examples.legacy_payments.app:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=log_config,
    )


if __name__ == "__main__":
    main()
