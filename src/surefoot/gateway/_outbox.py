"""``OutboxRunner``: the outbox of ``[webhooks.send]`` inside ``surefoot serve``.

The gateway holds one ``Outbox`` (the admin API's side of it) and, once started,
``workers`` asyncio tasks each running an ``OutboxWorker`` with the gateway's event hooks,
so its logs and Prometheus metrics see every ``WebhookAttempted``, ``WebhookDeferred``,
``WebhookEndpointDisabled`` and ``OutboxBacklog``. With ``workers = 0`` the gateway only
serves the admin API and ``surefoot webhooks worker`` processes deliver.

Rule 1: ``start`` creates the tables if they are missing before any worker claims; a
        database that cannot be reached stops the start with a ``ConfigurationError``
        naming ``webhooks.send.database`` masked (``surefoot._masking``), never the URL
        with its password.
Rule 2: a worker waits out its database's failures itself; one that fails anyway (any
        exception out of ``run``) is not lost: it is logged at WARNING and replaced by a
        new one, with a new connection, after a pause that grows to ``_MAX_PAUSE``; every
        other worker carries on meanwhile.
Rule 3: ``aclose`` asks every worker to stop, waits for what they have in flight to be
        recorded (each request is bounded by ``timeout``), then closes their clients and
        connections and the admin side's connection. It may be called without ``start``.
Rule 4: the settings are read once, at start: a reload that changes ``[webhooks.send]``
        is logged by the gateway and applied by the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from surefoot._masking import masked_text, masked_url
from surefoot.clock import Clock
from surefoot.errors import ConfigurationError
from surefoot.events import EventHook
from surefoot.gateway._config import Sender

if TYPE_CHECKING:
    import httpx

    from surefoot.outbox import Outbox, OutboxWorker

__all__ = ["OutboxRunner"]

_log = logging.getLogger("surefoot.gateway")
_FIRST_PAUSE = 1.0
_MAX_PAUSE = 30.0


class OutboxRunner:
    """The outbox ``sender`` describes and its delivery tasks.

    Args:
        sender: the checked ``[webhooks.send]`` table.
        clock: the gateway's clock (the outbox's ``now``).
        hooks: the gateway's event hooks, handed to every worker.
        transport: the workers' httpx transport (tests); default: each worker's own
            sender (aiohttp when it is installed).
    """

    def __init__(
        self,
        sender: Sender,
        *,
        clock: Clock,
        hooks: Sequence[EventHook],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.sender = sender
        self.outbox: Outbox = sender.outbox(clock)
        self.hooks = tuple(hooks)
        self.transport = transport
        self.workers: list[OutboxWorker] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    def __repr__(self) -> str:
        return f"OutboxRunner({self.sender!r}, workers={self.sender.workers})"

    async def start(self) -> None:
        """Create the tables if missing, then start the delivery tasks (Rule 1).

        Raises:
            ConfigurationError: the database cannot be reached or refuses the tables.
        """
        try:
            await asyncio.to_thread(self.outbox.create_tables)
        except Exception as exc:
            cause = exc.__cause__ or exc
            database = self.sender.database
            reason = masked_text(" ".join(f"{type(cause).__name__}: {cause}".split()), database)
            raise ConfigurationError(
                f"webhooks.send.database ({masked_url(database)}): cannot create the "
                f"outbox's tables ({reason})"
            ) from None
        for _ in range(self.sender.workers):
            self.workers.append(self._worker())
        for index in range(len(self.workers)):
            self._tasks.append(asyncio.ensure_future(self._run(index)))

    def _worker(self) -> OutboxWorker:
        """A new worker (it opens its own database connection)."""
        from surefoot.outbox import OutboxWorker

        sender = self.sender
        return OutboxWorker(
            self.outbox,
            timeout=sender.timeout,
            max_in_flight=sender.max_in_flight,
            allow_private=sender.allow_private,
            transport=self.transport,
            hooks=self.hooks,
        )

    async def _run(self, index: int) -> None:
        """Worker ``index`` runs until ``aclose``; one that fails is replaced by a new one
        (with a new connection: the old one may be what failed) after a pause (Rule 2)."""
        pause = _FIRST_PAUSE
        while not self._stopping.is_set():
            try:
                await self.workers[index].run()
                return
            except Exception as exc:
                reason = masked_text(f"{type(exc).__name__}: {exc}", self.sender.database)
                _log.warning("outbox worker failed (%s); starting another in %g s", reason, pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)
            pause = min(_MAX_PAUSE, pause * 2)
            if self._stopping.is_set():
                return
            with contextlib.suppress(Exception):
                await self.workers[index].aclose()
            try:
                self.workers[index] = self._worker()
            except Exception as exc:
                # Not connected: the old (closed) worker stays in its slot until the next try.
                reason = masked_text(f"{type(exc).__name__}: {exc}", self.sender.database)
                _log.warning("outbox worker cannot start (%s)", reason)

    async def aclose(self) -> None:
        """Stop the workers, let them record what is in flight, close everything (Rule 3)."""
        self._stopping.set()
        for worker in self.workers:
            worker.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in self.workers:
            with contextlib.suppress(Exception):
                await worker.aclose()
        self.workers.clear()
        self._tasks.clear()
        await asyncio.to_thread(self.outbox.close)
