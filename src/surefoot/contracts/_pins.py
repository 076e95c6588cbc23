"""``VersionPins``: the versions clients were pinned to, recorded in a store's boards.

Rule 1: a pin is one slot of one of ``SHARDS`` boards (``versions:pins:NN``, the shard
        picked by a stable hash of the client), written by ``board_claim``: the first
        claim of a client records its pin, every later one reads it. Of two workers or
        hosts pinning one new client at once, both serve the recorded pin
        (``_versions`` Rule 4).
Rule 2: pins never change once recorded (a client moves to a newer version through the
        policy file, ``[[clients]] version``, which wins over a recorded pin), so each
        worker caches the pins it has read, up to ``CACHE`` clients (then it forgets them
        all and reads them again).
Rule 3: a pin is kept ``KEEP`` seconds (ten years: a board's slots always expire).
Rule 4: a store that fails, or a board that is full, records nothing: the request is
        served the version it would have been pinned to, and the client is pinned at a
        later request. A pin is never guessed.
"""

from __future__ import annotations

import hashlib
import logging
import zlib

from surefoot.metrics import BoardStore

__all__ = ["CACHE", "KEEP", "SHARDS", "VersionPins"]

_log = logging.getLogger("surefoot.contracts")

SHARDS = 64
CACHE = 100_000
KEEP = 10 * 365 * 86400.0
#: Characters of a slot's name kept as they are; longer ones are hashed.
_NAME = 200


class VersionPins:
    """Pins of clients to versions, shared through ``store``'s boards (see the module)."""

    def __init__(self, store: BoardStore) -> None:
        self.store = store
        self._cache: dict[str, str] = {}

    async def pin(self, client: str, version: str, now: float) -> tuple[str | None, bool]:
        """``client``'s pin, recording ``version`` if it has none (Rule 1).

        Returns:
            The pin (None: the store failed, Rule 4) and whether this call recorded it.
        """
        cached = self._cache.get(client)
        if cached is not None:
            return cached, False
        board, slot = _board_of(client), _slot_of(client)
        try:
            made = await self.store.board_claim(board, slot, version.encode(), now + KEEP, now)
            if made:
                pinned = version
            else:
                found = (await self.store.board_read(board, now)).get(slot)
                if found is None:  # expired between the claim and the read: next time
                    return None, False
                pinned = found.decode()
        except Exception as exc:  # Rule 4: a full board raises ValueError, a store its own
            _log.warning("could not record the version pin of %s: %s", client, exc)
            return None, False
        if len(self._cache) >= CACHE:
            self._cache.clear()
        self._cache[client] = pinned
        return pinned, made

    async def read(self, now: float) -> dict[str, str]:
        """Every recorded pin: stored slot name -> version (the admin API's list)."""
        out: dict[str, str] = {}
        for shard in range(SHARDS):
            for slot, value in (await self.store.board_read(_board(shard), now)).items():
                out[slot] = value.decode()
        return out


def _board(shard: int) -> str:
    return f"versions:pins:{shard:02d}"


def _board_of(client: str) -> str:
    return _board(zlib.crc32(client.encode()) % SHARDS)


def _slot_of(client: str) -> str:
    if 0 < len(client) <= _NAME and client.isascii() and client.isprintable():
        return client
    return "h:" + hashlib.blake2b(client.encode(), digest_size=20).hexdigest()
