"""``idempotency_scope``: idempotency keys derived from a prefix, counted in call order.

Within ``with idempotency_scope("order-42"):`` every request that the resilient transports
would otherwise send without a key (a non-idempotent method, no key header yet) gets
``order-42:1``, ``order-42:2``... in the order the requests are made. A block re-run after a
crash, making the same calls in the same order, therefore sends the same keys, and an
upstream that deduplicates by key does each operation once.

Rule 1: the active scope lives in a ``ContextVar``, so it follows ``await`` and is copied
into ``asyncio.to_thread`` and new tasks; its value is a ``_Scope`` shared by reference, so
a key taken in a copied context advances the same counter as the block that opened it.
Rule 2: the innermost scope wins; leaving it restores the outer one with its counter as it
was left. A scope that was left counts no more requests: entering the same prefix again
starts at 1.
Rule 3: a request that brings its own key keeps it and takes no number.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar

from surefoot.errors import ConfigurationError

__all__ = ["idempotency_scope", "next_scoped_key"]

_MAX_PREFIX = 200  # leaves room for ":<n>" under the 255 characters a key may have
_EXPECTED = f"a non-empty str of printable ASCII (0x21-0x7e), at most {_MAX_PREFIX} characters"


class _Scope:
    """One entered scope: its prefix and how many keys it has handed out."""

    __slots__ = ("count", "lock", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.count = 0
        # Threads started from the scope (asyncio.to_thread) share this counter.
        self.lock = threading.Lock()

    def next_key(self) -> str:
        with self.lock:
            self.count += 1
            return f"{self.prefix}:{self.count}"


_current: ContextVar[_Scope | None] = ContextVar("surefoot_idempotency_scope", default=None)


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise ConfigurationError(
            f"idempotency_scope.prefix: expected {_EXPECTED}, got {type(prefix).__name__}"
        )
    if not prefix:
        raise ConfigurationError(f"idempotency_scope.prefix: expected {_EXPECTED}, got ''")
    if len(prefix) > _MAX_PREFIX:
        raise ConfigurationError(
            f"idempotency_scope.prefix: expected {_EXPECTED}, got {len(prefix)} characters"
        )
    bad = next((c for c in prefix if not "\x21" <= c <= "\x7e"), None)
    if bad is not None:
        raise ConfigurationError(
            f"idempotency_scope.prefix: expected {_EXPECTED}, got {prefix!r} (contains {bad!r})"
        )
    return prefix


def idempotency_scope(prefix: str) -> AbstractContextManager[None]:
    """Derive idempotency keys from ``prefix`` for the requests made inside the block.

    Example:
        >>> with idempotency_scope("checkout-42"):
        ...     client.post("/v1/charges", json=charge)  # Idempotency-Key: checkout-42:1
        ...     client.post("/v1/shipments", json=parcel)  # Idempotency-Key: checkout-42:2

    Every request sent through a ``ResilientTransport`` or ``AsyncResilientTransport``
    inside the block whose method is not idempotent (not in
    ``RetryPolicy.idempotent_methods``) and that has no key header yet gets the header
    ``f"{prefix}:{n}"``, n counting those requests from 1, whether or not the transport has
    ``auto_idempotency_key`` (the scope's key is used instead of a UUID4). A request that
    carries its own key keeps it and takes no number. The scope follows ``await`` and
    ``asyncio.to_thread`` (they share one counter); an inner scope hides the outer one until
    it is left. All attempts of one request carry the same key.

    Args:
        prefix: names the unit of work, e.g. ``"checkout-<order id>"``: printable ASCII
            (0x21-0x7e), 1 to 200 characters.

    Returns:
        A context manager; the prefix is checked at once, the scope begins on entry.

    Raises:
        ConfigurationError: ``prefix`` is not such a string.

    Warning:
        The keys follow the order in which requests are made. Requests made concurrently
        in one scope (``asyncio.gather``, several threads) may take their numbers in another
        order on a re-run and so send another request's key; give each concurrent branch a
        scope of its own.
    """
    return _entered(_check_prefix(prefix))


@contextmanager
def _entered(prefix: str) -> Iterator[None]:
    token = _current.set(_Scope(prefix))
    try:
        yield
    finally:
        _current.reset(token)


def next_scoped_key() -> str | None:
    """The active scope's next key (taking its number), or None outside any scope."""
    scope = _current.get()
    return None if scope is None else scope.next_key()
