"""The set of abuse actions a gateway checks on every request, before any other work.

An :class:`Entry` puts one :class:`Action` (allow, ban, limit, challenge) on one subject:
a client address, a network (CIDR), a principal (``"cred:<hash>"``, ``"user:alice"``) or
an account (the login name tried, hashed by the caller: ``"acct:<hash>"``). A
:class:`BanSet` holds them and answers :meth:`BanSet.match` for a request. Pure: ``now`` is
a parameter, nothing here reads a clock or does I/O.

Layout of a :class:`BanSet` (``record`` = the entries of one subject, one per action)::

    _slots        "ban address 203.0.113.7" -> Entry          every entry, by slot
    _addr4/_addr6 int(address) -> record                      one dict per IP version
    _nets4/_nets6 prefix length -> {int(network) -> record}   one dict per length present
    _probe4/6     ((mask, table), ...) longest prefix first   rebuilt when a length comes or goes
    _principals   principal -> record
    _accounts     account -> record

An entry carries where it is filed (``Entry._place``: version, prefix length, int), parsed
once when it is made, so ``put`` and ``remove`` never parse. ``entries``, ``purge`` and
``counts`` scan every entry: they serve an admin API and a periodic sweep, not requests.

Rule 1: a subject has one spelling (:func:`subject`): an address is compressed and an
        IPv4-mapped IPv6 address is its IPv4 address; a network is in CIDR notation
        without host bits. An :class:`Entry` canonicalises its value when made, so two
        spellings of one subject share one slot and one record.
Rule 2: ``match()`` costs O(1) whatever the number of entries: one probe of the address
        dict, one probe per prefix length present for the address's version (at most 33
        for IPv4, 129 for IPv6, whatever the number of networks), one per principal and
        one per account; it never scans. ``remove`` drops a record left empty and a
        prefix length left without networks, so a length stops costing a probe once its
        last network is gone. An empty set answers at once.
Rule 3: when several active entries match a request, the action with the highest
        precedence wins: ALLOW > BAN > LIMIT > CHALLENGE. An ALLOW is returned (not
        ``None``) so the caller knows to skip every other check. Between entries of the
        same action, the first found wins, in this order: the exact address, the networks
        from the longest prefix to the shortest, the principals then the accounts in the
        order given.
Rule 4: an entry is active while ``now < until``; an inactive entry never matches. It is
        kept (as the subject's offence history: ``put`` returns it when replaced) until
        ``max(until, forget_at)``, when :meth:`BanSet.purge` drops it.
Rule 5: a client address matches address entries of its own version only; an IPv4-mapped
        IPv6 client address (``::ffff:203.0.113.7``) is checked as its IPv4 address, and
        IPv4-mapped networks are refused, so no entry is ever reachable by one spelling of
        a client and not by the other. An address that does not parse matches no address
        or network entry; ``match()`` never raises on client input. A zone id on a client
        address (``fe80::1%eth0``) is ignored: entries refuse zone ids.
Rule 6: ``Entry.decode(e.encode()) == e``; ``decode`` raises ``ValueError`` (and nothing
        else) on any other input.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, ClassVar

__all__ = [
    "MAX_REASON",
    "Action",
    "BanSet",
    "Entry",
    "Kind",
    "network_of",
    "overlaps",
    "subject",
]

MAX_REASON = 200
"""The longest ``Entry.reason``, in characters."""

MAX_SOURCE = 100
"""The longest ``Entry.source``, in characters."""

MAX_NAME = 256
"""The longest principal or account."""

MAX_ENCODED = 8192
"""The longest input :meth:`Entry.decode` reads, in bytes (an encoded entry is far shorter)."""

_FORMAT = 1  # the "v" of an encoded entry

_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")  # an IPv4 address, canonically spelled


class Action(StrEnum):
    """What an entry does to a request it matches, in precedence order (Rule 3)."""

    ALLOW = "allow"
    BAN = "ban"
    LIMIT = "limit"
    CHALLENGE = "challenge"


class Kind(StrEnum):
    """What an entry's value names."""

    ADDRESS = "address"
    NETWORK = "network"
    PRINCIPAL = "principal"
    ACCOUNT = "account"


# Index of an action in a record: its precedence, 0 the highest.
_RANK: dict[Action, int] = {action: rank for rank, action in enumerate(Action)}
_IP_KINDS = (Kind.ADDRESS, Kind.NETWORK)

_Record = list["Entry | None"]  # one slot per action, indexed by _RANK


def _show(value: str) -> str:
    """``repr(value)``, cut short: error messages quote user input, which may be huge."""
    return repr(value) if len(value) <= 60 else repr(value[:60]) + "..."


def _require_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _kind(kind: object) -> Kind:
    text = _require_str("kind", kind)
    try:
        return Kind(text)
    except ValueError:
        expected = ", ".join(Kind)
        raise ValueError(f"expected a kind among {expected}, got {_show(text)}") from None


def _action(action: object) -> Action:
    text = _require_str("action", action)
    try:
        return Action(text)
    except ValueError:
        expected = ", ".join(Action)
        raise ValueError(f"expected an action among {expected}, got {_show(text)}") from None


def _address(value: str) -> IPv4Address | IPv6Address:
    """The address ``value`` names, IPv4-mapped IPv6 as IPv4 (the canonical form's parse)."""
    if "%" in value:
        raise ValueError(f"{_show(value)}: an address with a zone id (%...) is not accepted")
    try:
        ip = ip_address(value)
    except ValueError:
        raise ValueError(
            f"expected an IP address such as 203.0.113.7 or 2001:db8::7, got {_show(value)}"
        ) from None
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _network(value: str) -> IPv4Network | IPv6Network:
    """The network ``value`` names, checked per Rule 1 and 5."""
    if "%" in value:
        raise ValueError(f"{_show(value)}: a network with a zone id (%...) is not accepted")
    try:
        net = ip_network(value, strict=True)
    except ValueError:
        try:
            loose = ip_network(value, strict=False)
        except ValueError:
            raise ValueError(
                "expected a network in CIDR notation such as 203.0.113.0/24 or "
                f"2001:db8::/48, got {_show(value)}"
            ) from None
        raise ValueError(
            f"{_show(value)} has host bits set: did you mean {loose.with_prefixlen}?"
        ) from None
    if net.version == 6 and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            v4 = ip_network((mapped, net.prefixlen - 96))
            raise ValueError(
                f"{_show(value)} is an IPv4-mapped IPv6 network: clients are matched by their "
                f"IPv4 address, write it as {v4.with_prefixlen}"
            )
    return net


def _name(kind: Kind, value: str) -> str:
    if not 1 <= len(value) <= MAX_NAME or not all("!" <= c <= "~" for c in value):
        raise ValueError(
            f"expected a {kind} of 1 to {MAX_NAME} printable ASCII characters without "
            f"spaces, got {_show(value)}"
        )
    return value


def subject(kind: Kind | str, value: str) -> str:
    """The canonical spelling of a subject (Rule 1).

    Example:
        >>> subject("address", "::ffff:203.0.113.7")
        '203.0.113.7'
        >>> subject("network", "2001:DB8::/48")
        '2001:db8::/48'

    Args:
        kind: What ``value`` names.
        value: An address (IPv4 or IPv6, no zone id), a network in CIDR notation without
            host bits (a ``/32`` or ``/128`` stays a network), or a principal or account
            of 1 to 256 printable ASCII characters without spaces.

    Raises:
        ValueError: ``value`` is not a ``kind``; the message says what was expected (for a
            network with host bits set, the network meant).
    """
    return _canonical(kind if type(kind) is Kind else _kind(kind), value)[0]


def _canonical(kind: Kind, value: object) -> tuple[str, tuple[int, ...]]:
    """The canonical spelling and, for an address or a network, where a BanSet files it.

    The place is ``(version, int(address))`` or ``(version, prefix length,
    int(network address))``; ``()`` for a principal or an account.
    """
    text = _require_str("value", value)
    if kind is Kind.ADDRESS:
        if _DOTTED.fullmatch(text):  # already canonical IPv4: a third of ipaddress's cost
            a, b, c, d = map(int, text.split("."))
            return text, (4, a << 24 | b << 16 | c << 8 | d)
        ip = _address(text)
        return ip.compressed, (ip.version, int(ip))
    if kind is Kind.NETWORK:
        net = _network(text)
        return net.with_prefixlen, (net.version, net.prefixlen, int(net.network_address))
    return _name(kind, text), ()


def network_of(address: str, v4_prefix: int, v6_prefix: int) -> str:
    """The network of ``address`` with the prefix length of its version.

    Example:
        >>> network_of("203.0.113.7", 24, 64)
        '203.0.113.0/24'

    Raises:
        ValueError: ``address`` is not an address, or a prefix length is out of range
            (0-32 for IPv4, 0-128 for IPv6).
    """
    if not 0 <= v4_prefix <= 32:
        raise ValueError(f"an IPv4 prefix length is 0 to 32, got {v4_prefix}")
    if not 0 <= v6_prefix <= 128:
        raise ValueError(f"an IPv6 prefix length is 0 to 128, got {v6_prefix}")
    ip = _address(_require_str("an address", address))
    prefix = v4_prefix if ip.version == 4 else v6_prefix
    return str(ip_network((ip, prefix), strict=False).with_prefixlen)


def overlaps(a: Entry, b: Entry) -> bool:
    """Whether some request could match both entries' subjects (their actions aside).

    Two addresses or networks overlap when one contains the other or they share
    addresses (an IPv4 and an IPv6 subject never do); a principal or an account overlaps
    only itself.
    """
    if a.kind in _IP_KINDS and b.kind in _IP_KINDS:
        na, nb = ip_network(a.value), ip_network(b.value)
        return na.version == nb.version and bool(na.overlaps(nb))
    return a.kind is b.kind and a.value == b.value


def _number(name: str, value: object, *, infinite: bool = False) -> float:
    """``value`` as a float: finite, or also ``math.inf`` when ``infinite``."""
    if type(value) is float and -math.inf < value and (infinite or value < math.inf):
        return value  # the common case, first: NaN fails both comparisons
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large: {value}") from None
    if not (math.isfinite(number) or (infinite and number == math.inf)):
        allowed = "a finite number or math.inf" if infinite else "a finite number"
        raise ValueError(f"{name} must be {allowed}, got {number}")
    return number


@dataclass(frozen=True, slots=True)
class Entry:
    """One action on one subject, active while ``now < until``.

    Example:
        >>> Entry(Action.BAN, Kind.NETWORK, "203.0.113.0/24", until=math.inf).slot
        'ban network 203.0.113.0/24'

    The value is canonicalised when the entry is made (Rule 1): ``Entry(Action.BAN,
    Kind.ADDRESS, "::ffff:203.0.113.7", ...)`` has the value ``"203.0.113.7"``.

    Raises:
        ValueError: a field is out of its range: an invalid subject, ``until`` or
            ``forget_at`` neither finite nor ``math.inf``, a reason over
            :data:`MAX_REASON` characters, a source empty or over :data:`MAX_SOURCE`, an
            ``offence`` below 1, a negative or infinite ``rate``, or a LIMIT whose rate
            is not above 0 (a LIMIT of 0 is a BAN).
    """

    action: Action
    kind: Kind
    value: str
    until: float
    reason: str = ""
    source: str = "admin"
    at: float = 0.0
    offence: int = 1
    rate: float = 0.0
    forget_at: float = 0.0
    # Where a BanSet files the entry (see _canonical), kept so that it never parses again.
    _place: tuple[int, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Fast paths first: a BanSet is rebuilt from many entries at start-up.
        if type(self.action) is not Action:
            object.__setattr__(self, "action", _action(self.action))
        if type(self.kind) is not Kind:
            object.__setattr__(self, "kind", _kind(self.kind))
        value, place = _canonical(self.kind, self.value)
        if value != self.value:
            object.__setattr__(self, "value", value)
        object.__setattr__(self, "_place", place)
        until, at, rate, forget_at = self.until, self.at, self.rate, self.forget_at
        if not (
            type(until) is float
            and type(at) is float
            and type(rate) is float
            and type(forget_at) is float
            and -math.inf < until
            and -math.inf < forget_at
            and math.isfinite(at)
            and math.isfinite(rate)
        ):  # slow path: convert (an int), or say what is wrong
            object.__setattr__(self, "until", _number("until", until, infinite=True))
            object.__setattr__(self, "at", _number("at", at))
            object.__setattr__(self, "rate", _number("rate", rate))
            object.__setattr__(self, "forget_at", _number("forget_at", forget_at, infinite=True))
        if self.rate < 0 or (self.action is Action.LIMIT and self.rate == 0):
            raise ValueError(f"a {self.action}'s rate must be above 0, got {self.rate}")
        reason = _require_str("reason", self.reason)
        if len(reason) > MAX_REASON:
            raise ValueError(f"a reason is at most {MAX_REASON} characters, got {len(reason)}")
        source = _require_str("source", self.source)
        if not 1 <= len(source) <= MAX_SOURCE:
            raise ValueError(f"a source is 1 to {MAX_SOURCE} characters, got {len(source)}")
        offence = self.offence
        if type(offence) is not int or offence < 1:
            raise ValueError(f"offence must be an integer of 1 or more, got {offence!r}")

    @property
    def slot(self) -> str:
        """The name unique to this entry's ``(action, kind, value)``: ``"ban address 1.2.3.4"``."""
        return f"{self.action} {self.kind} {self.value}"

    def active(self, now: float) -> bool:
        """True while the entry acts on requests: ``now < until``."""
        return now < self.until

    def encode(self) -> bytes:
        """Compact, stable JSON (sorted keys, ASCII); ``math.inf`` is written ``null``."""
        return json.dumps(
            {
                "v": _FORMAT,
                "action": self.action.value,
                "kind": self.kind.value,
                "value": self.value,
                "until": None if self.until == math.inf else self.until,
                "reason": self.reason,
                "source": self.source,
                "at": self.at,
                "offence": self.offence,
                "rate": self.rate,
                "forget_at": None if self.forget_at == math.inf else self.forget_at,
            },
            separators=(",", ":"),
            sort_keys=True,
            allow_nan=False,
        ).encode("ascii")

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        """The entry :meth:`encode` wrote.

        Raises:
            ValueError: ``data`` is not an encoded entry (never any other exception).
        """
        if len(data) > MAX_ENCODED:
            raise ValueError(f"an encoded entry is at most {MAX_ENCODED} bytes, got {len(data)}")
        try:
            obj = json.loads(data, parse_constant=_no_constant, parse_float=_finite_float)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"not an encoded entry: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"an encoded entry is a JSON object, got {type(obj).__name__}")
        if obj.keys() != _ENCODED_KEYS:
            raise ValueError(f"an encoded entry has the keys {sorted(_ENCODED_KEYS)}")
        version = obj.pop("v")
        if type(version) is not int or version != _FORMAT:
            raise ValueError(f"not an encoded entry of format {_FORMAT}")
        for name in ("until", "forget_at"):
            if obj[name] is None:
                obj[name] = math.inf
        return cls(**obj)


_ENCODED_KEYS = frozenset(
    (
        "v",
        "action",
        "kind",
        "value",
        "until",
        "reason",
        "source",
        "at",
        "offence",
        "rate",
        "forget_at",
    )
)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number an entry holds")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range")
    return number


def _client(address: str) -> tuple[int, int] | None:
    """``(version, int)`` of a client address (IPv4-mapped as IPv4), None if it does not parse."""
    if _DOTTED.fullmatch(address):  # most clients: a third of ip_address()'s cost
        a, b, c, d = map(int, address.split("."))
        return 4, a << 24 | b << 16 | c << 8 | d
    try:  # every IPv4 address ipaddress accepts is _DOTTED: this can only be IPv6
        ip = IPv6Address(address)
    except ValueError:
        return None
    mapped = ip.ipv4_mapped
    return (6, int(ip)) if mapped is None else (4, int(mapped))


def _mask(prefix: int, bits: int) -> int:
    return ((1 << prefix) - 1) << (bits - prefix)


def _pick(record: _Record, now: float, best: Entry | None, rank: int) -> tuple[Entry | None, int]:
    """The better of ``best`` (of precedence ``rank``) and ``record``'s active entries."""
    for i in range(rank):
        entry = record[i]
        if entry is not None and now < entry.until:
            return entry, i
    return best, rank


class BanSet:
    """The entries in force, looked up in O(1) per request (Rule 2).

    Example:
        >>> bans = BanSet()
        >>> bans.put(Entry(Action.BAN, Kind.NETWORK, "203.0.113.0/24", until=60.0))
        >>> bans.match(10.0, "203.0.113.7").action
        <Action.BAN: 'ban'>
    """

    __slots__ = (
        "_accounts",
        "_addr4",
        "_addr6",
        "_nets4",
        "_nets6",
        "_principals",
        "_probe4",
        "_probe6",
        "_slots",
    )

    # Every table match() probes is made by this factory, so a test can count the probes
    # with a dict subclass while the production path stays plain dicts.
    _new_table: ClassVar[type[dict[Any, Any]]] = dict

    def __init__(self) -> None:
        self._slots: dict[str, Entry] = {}
        self._addr4: dict[int, _Record] = self._new_table()
        self._addr6: dict[int, _Record] = self._new_table()
        self._nets4: dict[int, dict[int, _Record]] = {}
        self._nets6: dict[int, dict[int, _Record]] = {}
        self._probe4: tuple[tuple[int, dict[int, _Record]], ...] = ()
        self._probe6: tuple[tuple[int, dict[int, _Record]], ...] = ()
        self._principals: dict[str, _Record] = self._new_table()
        self._accounts: dict[str, _Record] = self._new_table()

    def __len__(self) -> int:
        """The number of entries kept, active or not (until purged)."""
        return len(self._slots)

    def _table(self, entry: Entry) -> tuple[dict[Any, _Record], Any]:
        """The table holding ``entry``'s record and its key there."""
        kind = entry.kind
        if kind is Kind.PRINCIPAL:
            return self._principals, entry.value
        if kind is Kind.ACCOUNT:
            return self._accounts, entry.value
        if kind is Kind.ADDRESS:
            version, n = entry._place
            return (self._addr4 if version == 4 else self._addr6), n
        version, prefix, n = entry._place
        nets = self._nets4 if version == 4 else self._nets6
        table = nets.get(prefix)
        if table is None:
            table = nets[prefix] = self._new_table()
            self._reprobe(version)
        return table, n

    def _reprobe(self, version: int) -> None:
        """Rebuild the probe list of ``version``: one (mask, table) per prefix length present."""
        if version == 4:
            self._probe4 = tuple((_mask(p, 32), self._nets4[p]) for p in sorted(self._nets4)[::-1])
        else:
            self._probe6 = tuple((_mask(p, 128), self._nets6[p]) for p in sorted(self._nets6)[::-1])

    def put(self, entry: Entry) -> Entry | None:
        """Add ``entry``, or replace the entry of the same slot.

        Returns:
            The entry replaced (active or not: it is the subject's history), else None.
        """
        slot = entry.slot
        old = self._slots.get(slot)
        self._slots[slot] = entry
        table, key = self._table(entry)
        record = table.get(key)
        if record is None:
            record = table[key] = [None] * len(_RANK)
        record[_RANK[entry.action]] = entry
        return old

    def remove(self, slot: str) -> Entry | None:
        """Remove the entry named ``slot``; returns it, or None if there was none."""
        entry = self._slots.pop(slot, None)
        if entry is None:
            return None
        table, key = self._table(entry)
        record = table[key]
        record[_RANK[entry.action]] = None
        if not any(record):
            del table[key]
            if not table and entry.kind is Kind.NETWORK:
                version, prefix, _ = entry._place
                del (self._nets4 if version == 4 else self._nets6)[prefix]
                self._reprobe(version)
        return entry

    def get(self, slot: str) -> Entry | None:
        """The entry named ``slot`` (active or not), else None."""
        return self._slots.get(slot)

    def match(
        self,
        now: float,
        address: str | None = None,
        principals: Iterable[str] = (),
        accounts: Iterable[str] = (),
    ) -> Entry | None:
        """The active entry of highest precedence that matches the request (Rule 3).

        Args:
            now: The time of the request.
            address: The client's address; one that does not parse matches no address or
                network entry (Rule 5).
            principals: The request's principals, in the order to try them.
            accounts: The accounts (hashed login names) the request tries.

        Returns:
            The entry that decides (an ALLOW means: skip the other checks), else None.
        """
        if not self._slots:
            return None
        best: Entry | None = None
        rank = len(_RANK)
        client = None if address is None else _client(address)
        if client is not None:
            version, n = client
            if version == 4:
                record, probes = self._addr4.get(n), self._probe4
            else:
                record, probes = self._addr6.get(n), self._probe6
            if record is not None:
                best, rank = _pick(record, now, best, rank)
                if rank == 0:
                    return best
            for mask, table in probes:
                record = table.get(n & mask)
                if record is not None:
                    best, rank = _pick(record, now, best, rank)
                    if rank == 0:
                        return best
        for names, table_ in ((principals, self._principals), (accounts, self._accounts)):
            for name in names:
                record = table_.get(name)
                if record is not None:
                    best, rank = _pick(record, now, best, rank)
                    if rank == 0:
                        return best
        return best

    def entries(
        self,
        now: float | None = None,
        *,
        action: Action | None = None,
        kind: Kind | None = None,
        active: bool = True,
    ) -> list[Entry]:
        """The entries, sorted by ``(action, kind, value)``, for an admin listing.

        Args:
            now: With ``active``, only the entries active at ``now`` are listed.
            action: Only entries of this action.
            kind: Only entries of this kind.
            active: False lists inactive entries too (the history kept until purged);
                without ``now`` every entry is listed.
        """
        since = now if now is not None and active else -math.inf
        found = [
            e
            for e in self._slots.values()
            if (action is None or e.action is action)
            and (kind is None or e.kind is kind)
            and since < e.until
        ]
        return sorted(found, key=lambda e: (e.action, e.kind, e.value))

    def purge(self, now: float) -> int:
        """Drop the entries past ``max(until, forget_at)`` (Rule 4); returns how many."""
        gone = [slot for slot, e in self._slots.items() if now >= max(e.until, e.forget_at)]
        for slot in gone:
            self.remove(slot)
        return len(gone)

    def counts(self, now: float) -> dict[tuple[str, str], int]:
        """Active entries per ``(action, kind)``, every pair present (0 when none), for a gauge."""
        counts = {(a.value, k.value): 0 for a in Action for k in Kind}
        for e in self._slots.values():
            if now < e.until:
                counts[e.action.value, e.kind.value] += 1
        return counts
