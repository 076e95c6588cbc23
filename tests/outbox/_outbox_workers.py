"""Processes of ``test_processes.py``: the consumer, outbox workers and the application.

Kept apart from the tests so that a spawned process imports only what it runs (no pytest).

- ``consumer``: a real HTTP server (uvicorn on a socket bound before the parent is told it
  is ready) whose app is surefoot's ``WebhookReceiver`` (Standard Webhooks, its own SQLite
  store) in front of a small ASGI app that appends each processed event to the ledger.
  In front of the receiver, ``Wire`` logs every raw delivery as it arrives (webhook-id,
  arrival time, path, whether the ``standardwebhooks`` library, an independent oracle,
  verifies it) and, while a ``hold`` file exists, keeps the whole answer of a delivery
  that reached the app from going out (so a worker can be killed after the consumer
  processed its deliveries and before it recorded them). Paths under ``/hang`` are
  answered only when the client gives up (a dead endpoint that accepts connections).
- ``outbox_worker``: ``OutboxWorker(...).run()`` with short, explicit settings, until killed.
- ``application``: business rows, each with ``Outbox.enqueue`` in its transaction, some
  committed and some rolled back, until killed (or ``os._exit`` right after a COMMIT).

Every line of the ledger and of the arrival log is one short ``O_APPEND`` write: lines of
several processes never interleave and a line survives its writer being killed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

from _support import GUARD

PATH = "/hooks/orders"
HANG_PATH = "/hang/orders"
WHSEC = "whsec_" + base64.b64encode(b"surefoot-outbox-process-test-k!").decode()
EVENT_TYPE = "order.created"


def append_line(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def read_ledger(folder: Path) -> list[dict[str, Any]]:
    """The events the consumer's app processed: ``{"id", "type", "data"}``, in order."""
    return [json.loads(line) for line in read_lines(folder / "ledger")]


def read_arrivals(folder: Path) -> list[tuple[str, float, str, bool]]:
    """Every delivery as it came off the wire: (webhook-id, arrival time, path, verified)."""
    found = []
    for line in read_lines(folder / "arrivals"):
        webhook_id, at, path, ok = line.split(" ")
        found.append((webhook_id, float(at), path, ok == "ok"))
    return found


# -- the consumer ----------------------------------------------------------------------------


class Wire:
    """Pure ASGI, in front of the receiver: logs each raw delivery, checks it with the
    ``standardwebhooks`` library, and holds a processed delivery's answer while
    ``folder / "hold"`` exists."""

    def __init__(self, app: Any, folder: Path) -> None:
        from standardwebhooks.webhooks import Webhook

        self.app = app
        self.folder = folder
        self.oracle = Webhook(WHSEC)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self.oracle.verify(body, headers)
            verified = "ok"
        except Exception:  # every failure counts: the oracle raises several kinds
            verified = "bad"
        webhook_id = headers.get("webhook-id", "-").replace(" ", "_") or "-"
        append_line(
            self.folder / "arrivals", f"{webhook_id} {time.time():.6f} {scope['path']} {verified}"
        )
        if scope["path"].startswith("/hang"):
            await self._until_disconnect(receive)
            return

        sent = False

        async def replay() -> Any:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        answer: list[Any] = []

        async def keep(message: Any) -> None:
            answer.append(message)

        await self.app(scope, replay, keep)  # the whole answer, its record settled
        await asyncio.to_thread(_while_held, self.folder / "hold")
        for message in answer:
            await send(message)

    @staticmethod
    async def _until_disconnect(receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass


def _while_held(hold: Path) -> None:
    """Return once ``hold`` is gone (the parent removes it; at most ``GUARD`` seconds)."""
    deadline = time.monotonic() + GUARD
    while hold.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def build_consumer(folder: Path) -> Any:
    from surefoot.storage import store_from_url
    from surefoot.webhooks import WEBHOOK, StandardWebhooks, WebhookEndpoint, WebhookReceiver

    async def app(scope: Any, receive: Any, send: Any) -> None:
        event = scope[WEBHOOK]
        document = event.json()
        line = {"id": event.id, "type": document["type"], "data": document["data"]}
        append_line(folder / "ledger", json.dumps(line, separators=(",", ":")))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    endpoint = WebhookEndpoint(name="orders", scheme=StandardWebhooks(secrets=(WHSEC,)), lease=60.0)
    store = store_from_url(f"sqlite:///{folder}/consumer.db?lock_timeout=30")
    receiver = WebhookReceiver(app, endpoints={PATH: endpoint}, store=store, hooks=[])
    return Wire(receiver, folder)


def consumer(folder: Path, port: Any, ready: Any) -> None:
    """Serve the consumer on a free port of 127.0.0.1 (``port.value``) until killed."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)  # connections wait here until uvicorn accepts: no start-up race
    port.value = sock.getsockname()[1]
    config = uvicorn.Config(
        build_consumer(folder),
        lifespan="off",
        log_level="critical",
        access_log=False,
        ws="none",
        timeout_keep_alive=30,
    )
    ready.set()
    uvicorn.Server(config).run(sockets=[sock])


# -- outbox workers --------------------------------------------------------------------------


def outbox_worker(
    database: str, prefix: str, schedule: list[float], settings: dict[str, Any]
) -> None:
    """``OutboxWorker(...).run()`` until killed; ``settings`` are the worker's keyword
    arguments, plus ``rate_store`` as a store URL."""
    from surefoot.outbox import Outbox, OutboxWorker, RetrySchedule
    from surefoot.storage import store_from_url

    options = dict(settings)
    rate_url = options.pop("rate_store", None)

    async def main() -> None:
        outbox = Outbox(database, prefix=prefix, schedule=RetrySchedule(tuple(schedule), 0.0))
        rate_store = None if rate_url is None else store_from_url(rate_url)
        worker = OutboxWorker(outbox, rate_store=rate_store, hooks=[], **options)
        await worker.run()

    asyncio.run(main())


# -- the application -------------------------------------------------------------------------


def application(
    database: str, prefix: str, committed: Any, exit_after: int | None, limit: int
) -> None:
    """Orders, one transaction each: the row and its ``order.created`` event, committed,
    or (every third) rolled back. Counts commits in ``committed``; with ``exit_after``,
    ``os._exit`` right after that many COMMITs, else goes on until killed (at most
    ``limit`` orders)."""
    from surefoot.outbox import Outbox

    outbox = Outbox(database, prefix=prefix)
    conn: Any
    if database.startswith("sqlite://"):
        conn = sqlite3.connect(database.removeprefix("sqlite:///"), isolation_level=None)

        def begin() -> None:
            conn.execute("BEGIN IMMEDIATE")

        def commit() -> None:
            conn.execute("COMMIT")

        def rollback() -> None:
            conn.execute("ROLLBACK")

        mark = "?"
    else:
        import psycopg

        conn = psycopg.connect(database)
        begin, commit, rollback, mark = (lambda: None), conn.commit, conn.rollback, "%s"
    insert = f"INSERT INTO {prefix}_orders (id, note) VALUES ({mark}, {mark})"
    for order in range(limit):
        keep = order % 3 != 2
        begin()
        conn.execute(insert, (order, "kept" if keep else "rolled back"))
        outbox.enqueue(conn, EVENT_TYPE, {"order": order, "kept": keep})
        if not keep:
            rollback()
            continue
        commit()
        committed.value += 1
        if exit_after is not None and committed.value >= exit_after:
            os._exit(0)  # no clean-up, no close: as a crash right after the COMMIT
    os._exit(0)
