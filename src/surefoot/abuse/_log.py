"""The abuse log: one JSON line per ban, unban, threshold crossing and anomaly.

Rule 1: one event, one line, written with one ``write`` on a file opened with
        ``O_APPEND``: the workers of ``surefoot serve`` share the file without interleaving
        their lines (a line is far below the size Linux appends atomically).
Rule 2: a line holds the event's fields as they are: subjects already shown as
        ``[abuse] addresses`` says (``shown``), accounts hashed, principals hashes.
Rule 3: a log that cannot be written never breaks a request: the failure is logged once
        on ``surefoot.abuse`` and the line is lost (the event still reaches the other hooks).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from datetime import UTC, datetime
from ipaddress import ip_address, ip_network
from typing import Literal

from surefoot.abuse._events import AbuseEvent, AbuseRefused
from surefoot.events import Event

__all__ = ["AbuseLog", "Privacy", "shown"]

Privacy = Literal["full", "truncate", "hash"]
_log = logging.getLogger("surefoot.abuse")
#: The prefix an address keeps when truncated: its /24 (IPv4) or /48 (IPv6).
_TRUNCATE = {4: 24, 6: 48}


def shown(kind: str, value: str, privacy: Privacy, secret: bytes = b"") -> str:
    """How a subject appears in events and the abuse log.

    Addresses and networks are kept (``full``), cut to their /24 or /48 (``truncate``), or
    hashed (``hash``: ``addr:`` and 64 bits of BLAKE2b keyed with ``secret``: enough to
    follow one address through the log; without a secret an IPv4 address can be found back
    by trying them all). An ``addr:`` principal is its address shown so; a ``user:`` one is
    hashed unless ``full``; credentials and accounts are hashes already, shown as they are.
    """
    if privacy == "full":
        return value
    if kind == "principal" and value.startswith("addr:"):
        return "addr:" + shown("address", value[5:], privacy, secret)
    if kind == "principal" and value.startswith("user:"):  # a user id, as the app named it
        return "user:" + hashlib.blake2b(value.encode(), digest_size=8, key=secret).hexdigest()
    if kind not in ("address", "network"):
        return value
    if privacy == "hash":
        digest = hashlib.blake2b(value.encode(), digest_size=8, key=secret).hexdigest()
        return f"{kind[:4]}:{digest}"
    try:
        network = ip_network(value, strict=False)
    except ValueError:
        return value
    keep = _TRUNCATE[network.version]
    if network.prefixlen <= keep:
        return str(network)
    address = ip_address(network.network_address)
    return str(ip_network(f"{address}/{keep}", strict=False))


class AbuseLog:
    """An event hook writing abuse events to a JSON-lines file (see the module's rules).

    Example:
        >>> gateway = Gateway(config, hooks=[AbuseLog("/var/log/surefoot/abuse.jsonl")])
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = None
        self._failed = False

    def wants(self, event_type: type[Event]) -> bool:
        return issubclass(event_type, AbuseEvent) and event_type is not AbuseRefused

    def __call__(self, event: Event, /) -> None:
        if not isinstance(event, AbuseEvent) or isinstance(event, AbuseRefused):
            return
        record = {
            "time": datetime.fromtimestamp(event.at, UTC).isoformat(timespec="milliseconds"),
            "event": event.name,
            # JSON has no infinity: a ban without expiry has a null ``until``.
            **{k: None if v in (math.inf, -math.inf) else v for k, v in event.fields().items()},
        }
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            os.write(self._fd, line.encode())
        except OSError as exc:
            if not self._failed:
                self._failed = True
                _log.error("abuse log %s cannot be written: %s", self.path, exc.strerror)
            return
        self._failed = False

    def close(self) -> None:
        """Close the file (the next event opens it again)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
