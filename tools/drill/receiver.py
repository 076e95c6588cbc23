"""The webhook drill's receiver: the ledger app behind a ``WebhookReceiver``, in one process.

``python -m tools.drill.receiver --port P --ledger L --store URL`` serves, with uvicorn
(``--workers`` processes), the example payments API (``examples.legacy_payments``) behind
a ``WebhookReceiver`` whose one endpoint is ``POST /charges``: a Standard Webhooks event,
signed with the secret in ``$SUREFOOT_DRILL_WEBHOOK_SECRET`` and identified by its
``webhook-id``, books one charge, once, however often the sender delivers it. With
``--bare`` the app runs without the receiver (the comparison run: every delivery books).

Each worker process opens the store by URL (one SQLite file, or Redis) and runs on the
system clock; ``--lease`` is how long a delivery may take before its event counts as
abandoned (the worker died) and the next delivery runs it.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

#: The environment variable that holds the endpoint's secret (never the command line).
SECRET_VARIABLE = "SUREFOOT_DRILL_WEBHOOK_SECRET"  # noqa: S105 (its name, not a secret)
#: The receiver's one endpoint: where the ledger app books charges.
PATH = "/charges"
_SETTINGS = "SUREFOOT_DRILL_RECEIVER"


def build_receiver(
    ledger: str, store: Any | None, *, secret: str, lease: float = 5.0, seed: int = 0
) -> Any:
    """The ledger app on ``ledger`` behind a ``WebhookReceiver`` on ``store`` (without
    one when ``store`` is None: the comparison run)."""
    from examples.legacy_payments.app import create_app

    from surefoot.webhooks import StandardWebhooks, WebhookEndpoint, WebhookReceiver

    app = create_app(ledger, seed=seed)
    if store is None:
        return app
    endpoint = WebhookEndpoint(
        name="drill", scheme=StandardWebhooks(secrets=(secret,)), lease=lease
    )
    return WebhookReceiver(app, endpoints={PATH: endpoint}, store=store, hooks=[])


def create_receiver() -> Any:
    """The ASGI app of one worker process (uvicorn's factory), from the environment."""
    from surefoot.storage import store_from_url

    settings = json.loads(os.environ[_SETTINGS])
    store = None if settings["bare"] else store_from_url(settings["store"])
    return build_receiver(
        settings["ledger"],
        store,
        secret=os.environ[SECRET_VARIABLE],
        lease=settings["lease"],
        seed=settings["seed"],
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m tools.drill.receiver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bare", action="store_true")
    args = parser.parse_args(argv)
    if SECRET_VARIABLE not in os.environ:
        parser.error(f"${SECRET_VARIABLE} must hold the endpoint's whsec_ secret")
    settings = {
        "ledger": args.ledger,
        "store": args.store,
        "lease": args.lease,
        "seed": args.seed,
        "bare": args.bare,
    }
    os.environ[_SETTINGS] = json.dumps(settings)  # the workers inherit it
    uvicorn.run(
        "tools.drill.receiver:create_receiver",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
