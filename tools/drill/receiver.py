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

With ``--outbox WIRE`` (``target = "outbox"``) the events come from ``surefoot.outbox``
workers: each body is a Standard Webhooks envelope (``{"type", "timestamp", "data"}``)
whose ``data`` is the charge, handed to the ledger app unwrapped (after the receiver
verified the envelope's bytes); and every request that reaches the receiver is written
to the file ``WIRE`` as one JSON line (``webhook_id``, ``event``: the charge's
reference, ``status``, ``absorbed``: answered by the receiver's idempotency layer, a
stored answer or a 409, without reaching the app), for the audit.
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
    ledger: str,
    store: Any | None,
    *,
    secret: str,
    lease: float = 5.0,
    seed: int = 0,
    wire: str | None = None,
) -> Any:
    """The ledger app on ``ledger`` behind a ``WebhookReceiver`` on ``store`` (without
    one when ``store`` is None: the comparison run); with ``wire``, the outbox drill's
    receiver (envelopes unwrapped, every request logged to that file)."""
    from examples.legacy_payments.app import create_app

    from surefoot.webhooks import StandardWebhooks, WebhookEndpoint, WebhookReceiver

    app: Any = create_app(ledger, seed=seed)
    if wire is not None:
        app = Unwrapped(app)
    if store is not None:
        endpoint = WebhookEndpoint(
            name="drill", scheme=StandardWebhooks(secrets=(secret,)), lease=lease
        )
        app = WebhookReceiver(app, endpoints={PATH: endpoint}, store=store, hooks=[])
    return app if wire is None else WireLog(app, wire)


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return b"".join(chunks)


def _envelope_data(body: bytes) -> Any:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document.get("data") if isinstance(document, dict) else None


class Unwrapped:
    """Hands the ledger app the ``data`` of an outbox event's envelope as the body of
    ``POST /charges`` (anything else passes through as it is)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        data = _envelope_data(await _body(receive))
        body = json.dumps(data).encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)


class WireLog:
    """Writes one JSON line per ``POST /charges`` that reached the receiver, once it is
    answered (appended with one ``write``: the workers' lines never interleave)."""

    def __init__(self, app: Any, path: str) -> None:
        self.app = app
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        answer: dict[str, Any] = {"status": None, "absorbed": False}

        async def receiving() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                answer["status"] = message["status"]
                answer["absorbed"] = (
                    headers.get(b"idempotent-replayed") == b"true" or message["status"] == 409
                )
            await send(message)

        try:
            await self.app(scope, receiving, sending)
        finally:
            sent = {k.lower(): v for k, v in scope["headers"]}
            data = _envelope_data(b"".join(chunks))
            event = data.get("reference") if isinstance(data, dict) else None
            line = {
                "webhook_id": sent.get(b"webhook-id", b"").decode("latin-1") or None,
                "event": event,
                **answer,
            }
            os.write(self.fd, (json.dumps(line) + "\n").encode())


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
        wire=settings.get("wire"),
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
    parser.add_argument("--outbox", metavar="WIRE", help="the outbox drill's wire log")
    args = parser.parse_args(argv)
    if SECRET_VARIABLE not in os.environ:
        parser.error(f"${SECRET_VARIABLE} must hold the endpoint's whsec_ secret")
    settings = {
        "ledger": args.ledger,
        "store": args.store,
        "lease": args.lease,
        "seed": args.seed,
        "bare": args.bare,
        "wire": args.outbox,
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
