"""``RedisStore``: idempotency records and rate-limit counters in Redis or Redis Cluster.

For several machines sharing limits and records. Each step is one Lua script run by
``EVALSHA`` (sent by SHA; on ``NOSCRIPT``, after a restart or ``SCRIPT FLUSH``, sent
once more with ``EVAL``, which loads it). The scripts live in ``_redis/*.lua``.

Rule 1: every step (``begin``, ``finish``, ``resolve``, ``forget``, ``get``, ``acquire``,
        ``release``) is one round trip: one script that reads, decides and writes. Redis
        runs a script alone, so the step is atomic for every process sharing the server.
Rule 2: the scripts decide exactly as the Python references
        (``surefoot.ratelimit._algorithms`` with ``_core.plan``, ``surefoot.idempotency._core``):
        the same formulas in the same order of operations on the same IEEE doubles, floats
        exchanged as ``'%.17g'`` strings (a Lua number in a reply would be truncated to an
        integer) and states kept as MessagePack (exact doubles) or, for sliding logs, in
        sorted sets (Rule 11). Differential property tests compare both on random request
        sequences.
Rule 3: time comes from one source. With ``clock="server"`` (the default) a script reads
        ``TIME`` on the Redis server, so the clocks of application hosts cannot disagree
        about a limit or take over a live lease. Redis 7 replicates a script's effects,
        not the script, so reading ``TIME`` in a script that writes is safe. Absolute
        times handed back (``InProgress.lease_expires_at``, the fields of a ``Record``)
        are moved to the caller's clock (plus ``now - server_now``). With
        ``clock="caller"`` the scripts use the ``now`` argument (tests, one host).
        Calendar quota periods cannot be computed in Lua: the caller sends the period
        containing its ``now`` and both neighbours, and the script takes the one
        containing its time.
Rule 4: a key expires by itself when its state becomes equivalent to an absent one
        (``expires_at`` of each algorithm, a record's TTL). Expiry is set relative
        (``PX``/``PEXPIRE`` of ``expires_at - now``, rounded up, at least a second), so
        historical or skewed ``now`` values of ``clock="caller"`` still expire after the
        right duration. ``purge`` has nothing to do on the server clock and returns 0.
Rule 5: keys are ``prefix + key``. In a cluster the keys of one call must share a slot:
        rate-limit keys carry a per-principal hash tag (``rl:{tag}:...``), and a request
        whose items hash to different slots is a ``ConfigurationError`` raised before
        anything is sent. A prefix may not contain a hash tag.
Rule 6: every call is bounded by ``timeout``. Redis errors, timeouts, refused connections,
        a cluster that is down and scripts refused for lack of memory become
        ``StoreUnavailable(retry_after=1)`` (``_unavailable`` and ``_failure``), the Redis
        exception kept as ``__cause__`` for logs and never shown to a client. The store
        never retries a command that was written: a script whose reply was lost may have
        run, and running it again would count a request twice or see its own reservation
        (stores made by ``from_url`` give redis-py no retries either). On the pipelined
        connection (Rule 7) ``timeout`` bounds how long Redis may stay silent: a call
        past its deadline fails, with every call on the wire, when nothing has come back
        for a whole ``timeout`` (a worker busy reading replies late is not an outage),
        and in any case after 20 timeouts. A closed connection is never reused. A
        reservation or a concurrency slot that a failed call may still have taken is
        given back in the background (released under its own token, which fences off
        anyone else's). (One exception to the bound: a cluster store's very first call
        also learns the cluster's topology, and may take up to a second for it.)
Rule 7: on a standalone server every step goes through one pipelined connection of the
        store's own (``_Connection``, not redis-py's pool), opened at the first call with
        the client's settings (address, TLS, password, database, client name). The
        commands of one loop turn leave in one ``write()`` (a full batch of coalesced
        acquires leaves at once, in its own); replies are matched to calls in order. Each
        pending call carries its deadline and one watchdog timer per connection watches
        the oldest: past it, the connection is aborted and every pending call fails (as
        on a lost connection); the next call opens a new one.
        Calls queued on an attempt to connect that began before them and failed are sent
        on a new attempt (nothing of them was written). ``NOSCRIPT`` for one call sends
        that call again with ``EVAL``. Coalescing (``coalesce=True``): the ``acquire``
        requests of one loop turn go in script calls that decide them in arrival order,
        with the same decisions as one call per request: one call, written at once, for
        every ``SEND_AT`` of them, and the rest in one call at the end of the turn;
        several such calls may be in flight at once. Nothing ever waits on a timer to be
        sent. (Just after the server lost its scripts, a restart or ``SCRIPT FLUSH``, a
        call sent again with ``EVAL`` may be decided after one sent later, as with
        separate calls: the order among requests in flight together, never a count.)
Rule 8: in a cluster, redis-py carries every call, each under ``asyncio.timeout``, at most
        ``max_in_flight`` at once. Coalescing there: while one call is in flight, the next
        ones queue; when it returns, the queue goes in one pipeline, the ``acquire``
        requests of each slot in one script call, every other step in a call of its own.
        A queued call first waits for the call in flight: at most twice ``timeout``.
Rule 9: cache entries (``StaleCache``'s ``CacheStore`` contract) are plain strings under
        ``prefix + "cache:" + key``: one ``GET``, or one ``SET ... PX`` (the time left to
        ``expires_at``, rounded up, at least a millisecond), sent by redis-py's client
        within ``timeout``, translated as every other call (Rule 6). Redis forgets them.
Rule 10: per-principal quotas (``_core`` Rule 7). The record of an owned key
        (``idem:<owner>:<digest>``) lives under ``idem:{<owner>}:<digest>``, beside its
        owner's two sorted sets, ``own:{<owner>}`` (its live records) and
        ``own:{<owner>}:u`` (its unknown ones), each member scored by its record's
        ``expires_at``: one hash tag, one slot, so every step's script updates record and
        sets together and a reservation counts the owner's records in the same script,
        atomically on a standalone server and in a cluster alike. Members whose score has
        passed are dropped when counted; a set expires after its last member. (The price
        in a cluster: a principal's records all live on one shard, as its counters do.)
Rule 11: a ``sliding_log`` counter is a sorted set, one member per admission,
        ``'<time>:<total>:<cost>'`` (each ``'%.17g'``), scored by its running total. A
        step pops the entries that have left the window from its front (each entry once),
        then reads the oldest and newest members and, when it refuses, the one reaching a
        total (``ZRANGE ... BYSCORE LIMIT 0 1``): O(log n) a step, however long the log,
        and after a step the set holds only live entries, at most ``amount`` (a request
        that costs nothing, a read of the limit, leaves no entry). A refusal that pops
        entries changes no decision (time alone moved the log on; the references' Rule 1)
        unless a later step's clock is earlier. A log kept by an older surefoot (a
        MessagePack list ``t1, c1, t2, c2...`` under a string key) is rewritten as a
        sorted set by the first step that touches it.
Rule 12: the webhook ordering guard's records (``surefoot.webhooks``' ``OrderingStore``)
        are hashes, one key per record (``prefix + key``: no hash tag needed, so any
        cluster serves them), with fields ``n`` (newest), ``k`` (holder), ``v``
        (holding), ``u`` (until) and ``e`` (expires). ``order_claim``, ``order_settle`` and
        ``order_get`` are one script each (``_redis/order*.lua``), which re-state the rules
        of ``surefoot.webhooks._order`` in Lua (Rule 2: the differential tests hold them
        to it). A record's key expires with it (Rule 4); on the caller's clock ``purge``
        deletes it by its ``e`` as it does an idempotency record. A claim whose reply is
        lost is given back as a failed settle under its own token (which frees the
        record only if that claim took it).
Rule 13: boards (``surefoot.metrics``' ``BoardStore``) are hashes, one key per board
        (``prefix + "board:" + board``: one key, so any cluster serves it), slot ``name``
        in field ``s:name`` (never a one-letter field that ``get.lua`` or ``purge.lua``
        reads), its value ``'<expires_at>|<bytes>'``. ``board_put``, ``board_claim``,
        ``board_read`` and ``board_delete`` are one script each (``_redis/board*.lua``),
        bounded by ``surefoot._board`` (checked before anything is sent). On the server's
        clock a slot expires ``expires_at - now`` seconds after the script's ``TIME``
        (Rule 3). The key expires with its latest slot (relative, as Rule 4), a read
        drops the expired slots it finds, and a new slot on a full board first drops that
        board's expired slots. A claim whose reply is lost may have been made (the
        protocol's Rule 3): nothing is given back.
Rule 14: ``SyncRedisStore`` is the same store for threads and processes that block (WSGI,
        Django, Flask): every rule above but the pipelining and coalescing (Rules 7 and
        8) holds for it. Both stores are one sans-I/O half (``_Steps``: each step's
        script, keys and arguments, and the reading of its reply into a ``Decision``, a
        ``Record``...) and a driver that makes the round trip: ``RedisStore``'s on its
        pipelined connection or redis-py's asyncio client, ``SyncRedisStore``'s on
        connections of its own (Rule 15) or on redis-py's blocking ``Redis`` or
        ``RedisCluster``. A reservation or a concurrency slot that a failed call may have
        taken is given back at once, before the failure is raised: one attempt, all of
        the call's slots in one pipelined round trip (they share a slot), its own failure
        ignored; none if the call failed while connecting (nothing was sent). A cluster
        store made by ``from_url`` learns the topology at its first call (a cluster that
        is down is ``StoreUnavailable`` then, never at construction); calls that arrive
        meanwhile wait ``timeout`` at most, and for ``timeout`` after a failed attempt
        calls fail at once.
Rule 15: on a standalone server reached over TCP or a Unix socket, ``SyncRedisStore``
        calls on connections of its own (``_SyncWire``), opened with the client's
        address, credentials (a credential provider is asked at each new connection; one
        that fails fails the call, with nothing sent), database and client name, as Rule
        7's. A call takes an idle connection (the latest first, after checking without
        waiting that the server has not closed it or sent anything unasked) or opens
        one, and gives it back after, up to ``_IDLE_KEPT`` idle ones: threads and
        greenlets share them, so a thread per request does not open a connection per
        request. A call is one write of bytes encoded in advance (each limit's constant
        arguments once, as Rule 7's ``_limits``) and one read, where redis-py's pool,
        command packing and reply callbacks cost about as much CPU again. ``timeout``
        bounds connecting (whatever the client's own connect timeout), each write and
        each read (``SO_SNDTIMEO``/``SO_RCVTIMEO`` on the standard library's sockets: no
        ``poll`` before every call; the socket's own timeout on gevent's or eventlet's);
        any failure closes the connection for good, and socket errors are redis-py's
        ``ConnectionError`` or ``TimeoutError``. ``NOSCRIPT`` sends the call again with
        ``EVAL``. A client whose connections the store cannot open itself (TLS,
        Sentinel, a custom connection class) and a cluster go through redis-py, whose
        socket timeout is then the bound (``from_url`` sets it to ``timeout``). After a
        fork, a child drops the parent's connections (the parent keeps them) and opens
        its own. ``close`` closes them all; a later call opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import json
import math
import os
import select
import socket
import ssl
import struct
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any, Literal, NamedTuple, Protocol, cast
from urllib.parse import parse_qsl, urlencode, urlunsplit

import hiredis
import redis as sync_redis
import redis.connection as sync_connection
import redis.retry as sync_retry
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import (
    URL_QUERY_ARGUMENT_PARSERS,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    InvalidResponse,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from surefoot import webhooks
from surefoot._board import MAX_SLOTS, board_full, check_board, check_slot, check_slot_name
from surefoot._masking import masked_text, split_url
from surefoot.errors import ConfigurationError, StoreUnavailable
from surefoot.idempotency import (
    Begin,
    Decision,
    InProgress,
    Mismatch,
    NotStored,
    Outcome,
    OverQuota,
    Record,
    Replay,
    Reserved,
    State,
    Step,
    StoredResponse,
    Unknown,
    classify,
    key_owner,
)
from surefoot.ratelimit import ALGORITHMS, Item, Limit, RateLimitDecision, quota_period
from surefoot.webhooks import Claim, OrderRecord, Verdict

__all__ = ["RedisStore", "SyncRedisStore"]

Client = Redis | RedisCluster
SyncClient = sync_redis.Redis | sync_redis.RedisCluster
Result = tuple[bool, list[RateLimitDecision]]

#: Requests per script call when coalescing (a longer queue goes in several calls).
MAX_BATCH = 256
#: On a standalone server, a loop turn's acquires are sent as soon as this many wait, in
#: one script call, the rest at the end of the turn: Redis decides the first ones while
#: the worker is still reading the others, instead of every request of a busy turn then
#: waiting, idle, for one long script (a decision service on one CPU: 13,400 decisions/s
#: with one call per turn, 16,700 with 8, 16,300 with 4 or 16; docs/performance.md).
SEND_AT = 8
#: Tuples of rate-limit items whose encoding a store keeps (``_Steps._wire_request``).
_WIRED = 4096
#: Records ``records`` asks for at once (one script call each, pipelined when coalescing).
_READ_CHUNK = 32


# -- the pipelined connection (standalone servers) ----------------------------------------

_EMPTY = b"$0\r\n\r\n"  # '' (the server's clock, no token)
_SMALL = {n: b"$%d\r\n%d\r\n" % (len(str(n)), n) for n in range(-1, 64)}


def _bulk(value: Any) -> bytes:
    """One RESP bulk string, encoded as redis-py encodes arguments (numbers by ``repr``,
    so a float crosses exactly)."""
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        raw = value.encode()
    elif type(value) is int and -1 <= value < 64:
        return _SMALL[value]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        raw = repr(value).encode()
    else:
        raise TypeError(f"cannot send {type(value).__name__} to Redis")
    return b"$%d\r\n%s\r\n" % (len(raw), raw)


def _command(*parts: Any) -> bytes:
    """A whole RESP command (the handshake's)."""
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(part) for part in parts)


def _encode(keys: list[str], args: list[Any]) -> tuple[int, bytes]:
    """The arguments of a script call after its SHA or source, and the command's length."""
    body = _bulk(len(keys)) + b"".join([_bulk(k) for k in keys] + [_bulk(a) for a in args])
    return 3 + len(keys) + len(args), body


def _script_command(head: bytes, length: int, body: bytes) -> bytes:
    """A whole script command: ``head`` (``_Script.sha_head`` or ``eval_head``), then
    ``body``, ``length`` parts in all."""
    return b"*%d\r\n%s%s" % (length, head, body)


class _Script(NamedTuple):
    name: str
    source: str
    sha: str
    sha_head: bytes  # RESP of "EVALSHA <sha>", the start of every call by SHA
    eval_head: bytes  # RESP of "EVAL <source>"


def _script(name: str, *preludes: str) -> _Script:
    folder = resources.files("surefoot.storage").joinpath("_redis")
    source = "".join(folder.joinpath(f"{part}.lua").read_text("utf-8") for part in preludes)
    source += folder.joinpath(f"{name}.lua").read_text("utf-8")
    sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
    sha_head = b"$7\r\nEVALSHA\r\n" + _bulk(sha)
    return _Script(name, source, sha, sha_head, b"$4\r\nEVAL\r\n" + _bulk(source))


_ACQUIRE = _script("acquire", "common")
_RELEASE = _script("release", "common")
_BEGIN = _script("begin", "common", "record")
_FINISH = _script("finish", "common", "record")
_RESOLVE = _script("resolve", "common", "record")
_FORGET = _script("forget", "common", "record")
_GET = _script("get", "common")
_PURGE = _script("purge", "common")
_ORDER_CLAIM = _script("order_claim", "common", "order")
_ORDER_SETTLE = _script("order_settle", "common", "order")
_ORDER_GET = _script("order_get", "common", "order")
_BOARD_PUT = _script("board_put", "common", "board")
_BOARD_CLAIM = _script("board_claim", "common", "board")
_BOARD_READ = _script("board_read", "common", "board")
_BOARD_DELETE = _script("board_delete", "common", "board")
_VERDICTS = {v.value.encode(): v for v in Verdict}

_STEPS = {Step.COMPLETE: "complete", Step.RELEASE: "release", Step.MARK_UNKNOWN: "mark_unknown"}
_STATES = {s.value.encode(): s for s in (State.IN_FLIGHT, State.COMPLETED, State.UNKNOWN)}
_SERVER = ""  # the time argument that tells a script to read the server's clock

# Options redis-py takes from a URL and that make sense for this store ("timeout" is
# ours: redis-py's is the wait for a pooled connection).
_PASSED_ON = (set(URL_QUERY_ARGUMENT_PARSERS) - {"timeout"}) | {
    "client_name",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_ca_path",
    "ssl_cert_reqs",
    "ssl_certfile",
    "ssl_ciphers",
    "ssl_keyfile",
    "ssl_password",
}
_EXPECTED: dict[object, str] = {int: "an integer", float: "a number"}


#: One script call: (script, keys, arguments). A plain tuple, as every step makes one.
_Call = tuple[_Script, list[str], list[Any]]


class _Request(NamedTuple):
    """One ``acquire``, encoded for the acquire script (several go in one call): as
    arguments for redis-py in a cluster, as RESP for the pipelined connection."""

    keys: list[str]
    args: list[str | int | float]  # empty outside a cluster
    size: int  # items
    slot: int  # 0 outside a cluster
    wire_keys: bytes = b""  # the keys in RESP
    wire_args: bytes = b""  # the arguments in RESP
    length: int = 0  # arguments in wire_args

    def alone(self) -> tuple[int, bytes]:
        """The acquire script's arguments deciding this request alone, in RESP, and how
        many the command has (its name and SHA included)."""
        body = b"".join((_bulk(len(self.keys)), self.wire_keys, _SMALL[1], self.wire_args))
        return 4 + len(self.keys) + self.length, body


class _Waiter(Protocol):
    """What a pending call answers: a future, or a batch of them (``_Batch``)."""

    def done(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


class _Settings(NamedTuple):
    """Where and how the store's own connections connect (the client's own settings)."""

    host: str
    port: int
    path: str | None  # a Unix socket
    ssl: ssl.SSLContext | None
    connect_timeout: float | None
    credentials: Any  # (username, password), or a redis-py CredentialProvider
    setup: tuple[bytes, ...]  # SELECT, CLIENT SETNAME

    def handshake(self) -> tuple[bytes, ...]:
        """The commands a new connection sends first, each answered ``+OK``: ``AUTH``
        with the credentials of the moment (a provider is asked at each connection, as
        redis-py asks it: its tokens may rotate), then ``setup``."""
        credentials = self.credentials
        if not isinstance(credentials, tuple):
            got = tuple(credentials.get_credentials())
            credentials = (None, *got) if len(got) == 1 else got
        username, password = credentials
        if not password:
            return self.setup
        auth = ("AUTH", username, password) if username else ("AUTH", password)
        return (_command(*auth), *self.setup)


def _settings(client: Redis) -> _Settings:
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    context = None
    if issubclass(pool.connection_class, SSLConnection):
        # redis-py's own reading of the ssl_* options, so TLS behaves as the client's.
        context = pool.connection_class(**kwargs).ssl_context.get()
    unix = issubclass(pool.connection_class, UnixDomainSocketConnection)
    return _read_settings(kwargs, context, unix)


def _sync_settings(client: sync_redis.Redis) -> _Settings | None:
    """``_settings`` of a blocking client whose connections are plain TCP or a Unix
    socket; None for any other kind (TLS, Sentinel...), whose calls redis-py carries."""
    pool = client.connection_pool
    kind = pool.connection_class
    if kind not in (sync_connection.Connection, sync_connection.UnixDomainSocketConnection):
        return None
    unix = kind is sync_connection.UnixDomainSocketConnection
    return _read_settings(dict(pool.connection_kwargs), None, unix)


def _read_settings(kwargs: dict[str, Any], context: ssl.SSLContext | None, unix: bool) -> _Settings:
    provider = kwargs.get("credential_provider")
    credentials = provider or (kwargs.get("username"), kwargs.get("password"))
    setup: list[bytes] = []
    if int(kwargs.get("db") or 0):
        setup.append(_command("SELECT", int(kwargs["db"])))
    if kwargs.get("client_name"):
        setup.append(_command("CLIENT", "SETNAME", kwargs["client_name"]))
    timeout = kwargs.get("socket_connect_timeout") or kwargs.get("socket_timeout")
    return _Settings(
        str(kwargs.get("host", "localhost")),
        int(kwargs.get("port", 6379)),
        kwargs.get("path") if unix else None,
        context,
        float(timeout) if timeout else None,
        credentials,
        tuple(setup),
    )


#: Timeouts a call may wait in all while replies keep coming (see ``_Connection._check``).
_PATIENCE = 20


class _Connection(asyncio.Protocol):
    """One pipelined RESP2 connection to a standalone server (Rules 6 and 7).

    Commands are appended to a buffer written once per loop turn; each pending entry
    (waiter, deadline, script, length, arguments) is answered in order as replies
    arrive. One watchdog timer looks at the oldest entry: past its deadline the
    connection is aborted and every entry fails. A closed connection is never reused.
    """

    def __init__(
        self, settings: _Settings, timeout: float, requeue: Callable[[list[list[Any]]], None]
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self._requeue = requeue
        self._early = 0  # entries queued before the connection attempt began
        self.closed = False
        self._timeout = timeout
        self._settings = settings
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        self._pending: deque[list[Any]] = deque()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._flushing = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None
        self._heard = self.loop.time()  # when Redis last sent us anything
        deadline = self.loop.time() + timeout
        unusable: Exception | None = None
        try:
            handshake = settings.handshake()
        except Exception as exc:  # the credential provider failed: this one cannot open
            handshake, unusable = (), _no_credentials(exc)
        for command in handshake:
            self._pending.append([None, deadline, None, 0, b""])
            self._out.append(command)
        self._opening = self.loop.create_task(self._open(unusable))

    async def _open(self, unusable: Exception | None) -> None:
        settings = self._settings
        self._early = len(self._pending)
        try:
            if unusable is not None:  # every call queued so far fails (none is late)
                raise unusable
            async with asyncio.timeout(settings.connect_timeout):
                if settings.path is not None:
                    await self.loop.create_unix_connection(lambda: self, settings.path)
                else:
                    await self.loop.create_connection(
                        lambda: self,
                        settings.host,
                        settings.port,
                        ssl=settings.ssl,
                        server_hostname=settings.host if settings.ssl is not None else None,
                    )
        except asyncio.CancelledError:
            self._abort(TimeoutError("no connection to Redis"))
            raise
        except Exception as exc:
            # Calls queued after this attempt began were not sent: they get an attempt
            # of their own (an outage found by one attempt must not fail calls made
            # after the server came back).
            late = [self._pending.pop() for _ in range(len(self._pending) - self._early)]
            self._abort(exc)
            if late:
                self._requeue(late[::-1])

    def send(
        self, waiter: _Waiter, script: _Script, length: int, body: bytes, *, now: bool = False
    ) -> None:
        """Queue ``EVALSHA`` of ``script`` with ``body`` (its length in ``length``), written
        at the end of the loop turn, or ``now`` with what is queued before it."""
        self._pending.append([waiter, self.loop.time() + self._timeout, script, length, body])
        self._out += (b"*%d\r\n" % length, script.sha_head, body)
        if now:
            self._flush()
        elif not self._flushing:
            self._flushing = True
            self.loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = self.loop.call_at(self._pending[0][1], self._check)

    def _flush(self) -> None:
        self._flushing = False
        if self._transport is not None and self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._transport.write(data)

    def _check(self) -> None:
        """Abort when Redis is unresponsive: the oldest call is past its deadline and
        nothing has come back for a whole ``timeout``. A busy worker, or an event loop
        starved of CPU, reads replies late; that is no outage, and failing every call
        on the wire for it would turn one slow moment into a burst of 503s. Past
        ``_PATIENCE`` timeouts a call fails whatever else is arriving."""
        self._watchdog = None
        if not self._pending:
            return
        now = self.loop.time()
        deadline = self._pending[0][1]
        if deadline > now:
            self._watchdog = self.loop.call_at(deadline, self._check)
            return
        if now < deadline + self._timeout * (_PATIENCE - 1):
            if now - self._heard < self._timeout:
                self._watchdog = self.loop.call_at(self._heard + self._timeout, self._check)
                return
            if self._readable():  # replies are waiting: let the loop read them first
                self._watchdog = self.loop.call_later(0.001, self._check)
                return
        self._abort(TimeoutError(f"no reply from Redis within {self._timeout} s"))

    def _readable(self) -> bool:
        """Whether bytes from Redis are waiting in the socket, unread."""
        sock = None if self._transport is None else self._transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            return False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if self.closed:
            transport.abort()
            return
        self._transport = transport
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._heard = self.loop.time()
        reader, pending = self._reader, self._pending
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except InvalidResponse as exc:
                self._abort(exc)
                return
            if reply is False:
                break
            if not pending:
                self._abort(InvalidResponse("a reply nobody asked for"))
                return
            waiter, _, script, length, body = pending.popleft()
            if isinstance(reply, ResponseError):
                if waiter is None:  # the handshake failed: nothing after it can work
                    self._abort(reply)
                    return
                if script is not None and str(reply).startswith("NOSCRIPT"):
                    # Nothing ran: send it whole (EVAL caches it for the next EVALSHA).
                    self._resend(waiter, script, length, body)
                    continue
                if not waiter.done():
                    waiter.set_exception(_failure(reply))
            elif waiter is not None and not waiter.done():
                waiter.set_result(reply)
        if not pending and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _resend(self, waiter: _Waiter, script: _Script, length: int, body: bytes) -> None:
        self._pending.append([waiter, self.loop.time() + self._timeout, None, length, body])
        self._out += (b"*%d\r\n" % length, script.eval_head, body)
        if not self._flushing:
            self._flushing = True
            self.loop.call_soon(self._flush)

    def connection_lost(self, exc: Exception | None) -> None:
        self._abort(exc or RedisConnectionError("Redis closed the connection"))

    def _abort(self, cause: BaseException) -> None:
        """Close for good, failing every pending call with ``StoreUnavailable``."""
        if self.closed:
            return
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if not self._opening.done() and self._opening is not asyncio.current_task():
            self._opening.cancel()
        if self._transport is not None:
            self._transport.abort()
        pending, self._pending = self._pending, deque()
        self._out.clear()
        for waiter, *_ in pending:
            if waiter is not None and not waiter.done():
                error = StoreUnavailable(retry_after=1)
                error.__cause__ = cause
                waiter.set_exception(error)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def aclose(self) -> None:
        """Wait for the calls on the wire (each within its deadline), then close."""
        if self._pending and not self.closed:
            self._drained = self.loop.create_future()
            await self._drained
        self._abort(RedisConnectionError("the store was closed"))
        with _suppress_cancelled():
            await asyncio.gather(self._opening, return_exceptions=True)


def _no_credentials(cause: Exception) -> RedisConnectionError:
    """The failure of a connection whose credential provider failed (nothing was sent)."""
    error = RedisConnectionError("no connection to Redis: the credential provider failed")
    error.__cause__ = cause
    return error


class _Batch:
    """The waiter of one coalesced acquire script call: answers each request's future."""

    __slots__ = ("_decide", "_done", "_futures", "_requests")

    def __init__(
        self,
        decide: Any,
        requests: list[_Request],
        futures: list[asyncio.Future[Any]],
    ) -> None:
        self._decide = decide
        self._requests = requests
        self._futures = futures
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, reply: Any, /) -> None:
        try:
            results = self._decide(self._requests, reply)
        except Exception as exc:  # a reply this store cannot read: fail, never hang
            failure = StoreUnavailable(retry_after=1)
            failure.__cause__ = exc
            self.set_exception(failure)
            return
        self._done = True
        for future, result in zip(self._futures, results, strict=True):
            if not future.done():
                future.set_result(result)

    def set_exception(self, exception: BaseException, /) -> None:
        self._done = True
        assert isinstance(exception, StoreUnavailable)
        for future in self._futures:
            if not future.done():
                future.set_exception(_copy(exception))


class _Steps:
    """Each step's script call and the reading of its reply: the sans-I/O half that
    ``RedisStore`` and ``SyncRedisStore`` share (Rule 14). Nothing here sends, waits or
    reads a clock; the stores' drivers make the round trips."""

    prefix: str
    _server_clock: bool
    _cluster: bool
    _periods: dict[tuple[str, str], tuple[float, float, tuple[float, ...]]]
    _limits: dict[tuple[int, str], tuple[Limit, bytes]]  # each Limit's arguments in RESP
    _wired: dict[int, tuple[Sequence[Item], _Request]]  # each tuple of items in RESP

    def _now(self, now: float) -> str | float:
        return _SERVER if self._server_clock else now

    def _caller_time(self, t: float, server_now: float, now: float) -> float:
        """``t`` of the store's clock, on the caller's (Rule 3)."""
        return t + (now - server_now) if self._server_clock else t

    # -- idempotency -----------------------------------------------------------------------

    def _record_keys(self, key: str) -> list[str]:
        """The Redis keys of the record under ``key``: the record, and for an owned key
        its owner's sets of live and of unknown records, all under the owner's hash tag
        (Rule 10)."""
        owner = key_owner(key)
        if not owner:
            return [self.prefix + key]
        tagged = self.prefix + "own:{" + owner + "}"
        return [f"{self.prefix}idem:{{{owner}}}:{key[-40:]}", tagged, tagged + ":u"]

    def _store_key(self, redis_key: str) -> str:
        """The store key of a record's Redis key (``_record_keys`` read backwards)."""
        key = redis_key.removeprefix(self.prefix)
        if len(key) == 68 and key.startswith("idem:{") and key[26:28] == "}:":
            return f"idem:{key[6:26]}:{key[28:]}"
        return key

    def _begin_call(self, key: str, request: Begin, now: float) -> _Call:
        args = [
            self._now(now),
            request.fingerprint,
            request.token,
            request.lease,
            request.ttl,
            request.on_lease_expiry,
            request.max_records,
            request.max_unknown,
        ]
        return (_BEGIN, self._record_keys(key), args)

    def _begin_give_back(self, call: _Call, request: Begin, now: float) -> _Call:
        """What releases the reservation a failed ``begin`` may have made for a request
        that will never execute (its token fences off anyone else's reservation)."""
        args = [self._now(now), request.token, "release", *_response_args(None)]
        return (_FINISH, call[1], args)

    def _decision(self, reply: list[Any], request: Begin, now: float) -> Decision:
        """The ``Decision`` of a ``begin`` script's reply."""
        kind = reply[0]
        if kind == 1:
            return Reserved(request.token, reply[1], took_over=reply[2] == 1)
        if kind == 2:
            return InProgress(self._caller_time(float(reply[1]), float(reply[2]), now))
        if kind == 3:
            return Mismatch()
        if kind == 4:
            response = StoredResponse(int(reply[1]), _decode_headers(reply[2]), _body(reply[3]))
            if response.body is None:
                return NotStored(response.status)
            return Replay(response)
        if kind == 6:
            wait = max(float(reply[3]) - float(reply[4]), 0.0)
            return OverQuota("unknown" if reply[1] == b"unknown" else "records", reply[2], wait)
        return Unknown(lease_expired_now=reply[1] == 1)

    def _finish_call(self, key: str, token: str, outcome: Outcome, now: float) -> _Call:
        args = [self._now(now), token, _STEPS[outcome.step], *_response_args(outcome.response)]
        return (_FINISH, self._record_keys(key), args)

    def _resolve_call(self, key: str, response: StoredResponse, now: float) -> _Call:
        return (_RESOLVE, self._record_keys(key), [self._now(now), *_response_args(response)])

    def _forget_call(self, key: str, now: float) -> _Call:
        return (_FORGET, self._record_keys(key), [self._now(now)])

    def _get_call(self, key: str, now: float) -> _Call:
        return (_GET, self._record_keys(key)[:1], [self._now(now)])

    def _read_call(self, redis_key: str, now: float) -> _Call:
        """``get`` of a record found by a scan, under its Redis key."""
        return (_GET, [redis_key], [self._now(now)])

    def _record(self, reply: list[Any], now: float) -> Record | None:
        """The live record of a ``get`` script's reply, on the caller's clock."""
        # A missing field is None, or False when a RESP3 client reads a Lua false.
        fields: list[Any] = [None if field is False else field for field in reply]
        at, state, fp, token, generation, lease_at, expires_at, ttl, status, headers, body = fields
        if state not in _STATES:
            return None
        response = None
        if status is not None:
            response = StoredResponse(int(status), _decode_headers(headers), _body(body))
        record = Record(
            _STATES[state],
            fp.decode(),
            token.decode(),
            int(generation),
            float(lease_at),
            float(expires_at),
            float(ttl),
            response,
        )
        at = float(at)
        if classify(record, at) is State.ABSENT:
            return None
        if self._server_clock:
            record = record._replace(
                lease_expires_at=self._caller_time(record.lease_expires_at, at, now),
                expires_at=self._caller_time(record.expires_at, at, now),
            )
        return record

    def _listed(
        self, redis_keys: list[str], replies: list[Any], now: float, state: State | None
    ) -> list[tuple[str, Record]]:
        """The live records (in ``state``, if given) of ``get`` replies for scanned keys."""
        out: list[tuple[str, Record]] = []
        for key, reply in zip(redis_keys, replies, strict=True):
            record = self._record(reply, now)
            if record is not None and state in (None, classify(record, now)):
                out.append((self._store_key(key), record))
        return out

    def _match(self) -> str:
        """The ``SCAN`` pattern of every key under the prefix."""
        return _glob_escape(self.prefix) + "*"

    # -- ordering records (Rule 12) ---------------------------------------------------------

    def _order_claim_call(
        self, key: str, version: float, token: str, now: float, lease: float, retention: float
    ) -> _Call:
        args = [self._now(now), token, float(version), float(lease), float(retention)]
        return (_ORDER_CLAIM, [self.prefix + key], args)

    def _order_claim_give_back(self, call: _Call, retention: float) -> _Call:
        """A failed settle under the claim's token: frees the object a failed claim may
        hold for an event nobody processes (and leaves anyone else's claim alone)."""
        _, keys, (at, token, version, *_) = call
        return (_ORDER_SETTLE, keys, [at, token, version, 0, float(retention)])

    def _claim(self, reply: list[Any], now: float) -> Claim:
        verdict, newest, until, server_now = reply
        return Claim(
            _VERDICTS[verdict],
            _number(newest),
            self._caller_time(float(until), float(server_now), now),
        )

    def _order_settle_call(
        self, key: str, token: str, version: float, ok: bool, now: float, retention: float
    ) -> _Call:
        args = [self._now(now), token, float(version), 1 if ok else 0, float(retention)]
        return (_ORDER_SETTLE, [self.prefix + key], args)

    def _order_get_call(self, key: str, now: float) -> _Call:
        return (_ORDER_GET, [self.prefix + key], [self._now(now)])

    def _order_record(self, reply: list[Any], now: float) -> OrderRecord | None:
        at, newest, holder, holding, until, expires = reply
        if expires in (None, False):
            return None
        at = float(at)
        record = OrderRecord(
            _number(newest),
            None if holder in (None, False) else holder.decode(),
            _number(holding),
            self._caller_time(float(until), at, now),
            self._caller_time(float(expires), at, now),
        )
        return webhooks.live_order(record, now)

    # -- boards (Rule 13) -------------------------------------------------------------------

    def _board_write_call(
        self, script: _Script, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> _Call:
        check_slot(board, slot, value, expires_at, now)
        args = [self._now(now), float(now), float(expires_at), slot, value, MAX_SLOTS]
        return (script, [self.prefix + "board:" + board], args)

    def _board_read_call(self, board: str, now: float) -> _Call:
        check_board(board)
        return (_BOARD_READ, [self.prefix + "board:" + board], [self._now(now)])

    def _board_delete_call(self, board: str, slot: str, now: float) -> _Call:
        check_slot_name(board, slot)
        return (_BOARD_DELETE, [self.prefix + "board:" + board], [self._now(now), slot])

    # -- cache entries (Rule 9) -------------------------------------------------------------

    def _cache_get_command(self, key: str) -> tuple[Any, ...]:
        return ("GET", self.prefix + "cache:" + key)

    def _cache_put_command(
        self, key: str, value: bytes, expires_at: float, now: float
    ) -> tuple[Any, ...]:
        ttl = max(1, math.ceil((expires_at - now) * 1000))
        return ("SET", self.prefix + "cache:" + key, value, "PX", ttl)

    # -- rate limits -----------------------------------------------------------------------

    def _request(self, items: Sequence[Item], now: float) -> _Request:
        """``items`` as arguments of the acquire script (in a cluster, refused before
        anything is sent when their keys span slots: Rule 5)."""
        prefix = self.prefix
        keys: list[str] = []
        args: list[str | int | float] = [self._now(now), len(items)]
        for item in items:
            algorithm, limit = item.algorithm, item.limit
            if algorithm not in ALGORITHMS:
                raise ConfigurationError(
                    f"rate limit item {item.key!r}: expected an algorithm among "
                    f"{sorted(ALGORITHMS)}, got {algorithm!r}"
                )
            keys.append(prefix + item.key)
            args += (
                algorithm,
                limit.amount,
                limit.window,
                limit.capacity,
                limit.max_wait,
                limit.lease,
                item.cost,
                1 if item.enforce else 0,
                item.token,
            )
            if algorithm == "quota":
                periods = self._quota_periods(now, limit)
                args.append(len(periods) // 2)
                args += periods
            else:
                args.append(0)
        slot = 0
        if self._cluster and keys:
            slots = {key_slot(key.encode()) for key in keys}
            if len(slots) > 1:
                raise ConfigurationError(
                    f"{type(self).__name__}.acquire: the keys of one request must share a "
                    "Redis Cluster hash slot (give them one hash tag, as in 'rl:{tag}:...'), "
                    f"got {keys!r}"
                )
            slot = slots.pop()
        return _Request(keys, args, len(items), slot)

    def _wire_request(self, items: Sequence[Item], now: float) -> _Request:
        """``_request`` in RESP for the pipelined connection. The rate limiter asks for
        the same tuple of items for the same principal (its plan keeps them), so a tuple
        (immutable: a list could change between calls) without a quota is encoded once
        (``_wired``) and only the time, on the caller's clock, is added per call; each
        limit's constant arguments are encoded once (``_limits``). A caller that builds
        its tuple per call only adds entries never found again: bounded by ``_WIRED``."""
        wired = self._wired.get(id(items))
        if wired is None or wired[0] is not items:
            request = self._encoded(items, now)
            if type(items) is tuple and not any(item.algorithm == "quota" for item in items):
                if len(self._wired) >= _WIRED:
                    self._wired.clear()
                self._wired[id(items)] = (items, request)  # kept: its id stays its own
        else:
            request = wired[1]
        if self._server_clock:
            return request
        return request._replace(wire_args=_bulk(now) + request.wire_args)

    def _encoded(self, items: Sequence[Item], now: float) -> _Request:
        """``items`` in RESP, but for the time on the caller's clock (``_wire_request``
        puts it first); a quota's periods, which depend on ``now``, are in it."""
        prefix, limits = self.prefix, self._limits
        keys: list[str] = []
        wire_keys: list[bytes] = []
        wire = [_EMPTY, _bulk(len(items))] if self._server_clock else [_bulk(len(items))]
        length = 2
        for item in items:
            algorithm, limit = item.algorithm, item.limit
            cached = limits.get((id(limit), algorithm))
            if cached is None or cached[0] is not limit:
                if algorithm not in ALGORITHMS:
                    raise ConfigurationError(
                        f"rate limit item {item.key!r}: expected an algorithm among "
                        f"{sorted(ALGORITHMS)}, got {algorithm!r}"
                    )
                if len(limits) >= 1024:
                    limits.clear()  # limits made per call: keep the cache small
                constant = (algorithm, limit.amount, limit.window, limit.capacity)
                encoded = b"".join(map(_bulk, (*constant, limit.max_wait, limit.lease)))
                cached = limits[id(limit), algorithm] = (limit, encoded)
            key = prefix + item.key
            keys.append(key)
            wire_keys.append(_bulk(key))
            wire += (cached[1], _bulk(item.cost), _SMALL[1 if item.enforce else 0])
            wire.append(_bulk(item.token) if item.token else _EMPTY)
            if algorithm == "quota":
                periods = self._quota_periods(now, limit)
                wire.append(_bulk(len(periods) // 2))
                wire += map(_bulk, periods)
                length += 10 + len(periods)
            else:
                wire.append(_SMALL[0])
                length += 10
        return _Request(keys, [], len(items), 0, b"".join(wire_keys), b"".join(wire), length)

    def _quota_periods(self, now: float, limit: Limit) -> tuple[float, ...]:
        """The calendar period containing ``now`` as (start, end), and on the server clock
        both neighbours too, for the script to pick from (Rule 3)."""
        period = limit.period or "day"
        cached = self._periods.get((period, limit.timezone))
        if cached is not None and cached[0] <= now < cached[1]:
            return cached[2]
        start, end = quota_period(now, period, limit.timezone)
        periods: tuple[float, ...] = (start, end)
        if self._server_clock:
            before = quota_period(start - 1.0, period, limit.timezone)
            after = quota_period(end, period, limit.timezone)
            periods = (*before, start, end, *after)
        self._periods[period, limit.timezone] = (start, end, periods)
        return periods

    def _decisions(self, requests: list[_Request], reply: list[Any]) -> list[Result]:
        """Each request's (admitted, decisions) from the acquire script's reply."""
        results: list[Result] = []
        at = 0
        for request in requests:
            admitted = reply[at] == 1
            decisions = []
            for i in range(at + 1, at + 1 + 6 * request.size, 6):
                decisions.append(
                    RateLimitDecision(
                        reply[i] == 1,
                        reply[i + 1],
                        float(reply[i + 2]),
                        float(reply[i + 3]),
                        float(reply[i + 4]),
                        float(reply[i + 5]),
                    )
                )
            results.append((admitted, decisions))
            at += 1 + 6 * request.size
        return results

    def _slot_give_backs(self, items: Sequence[Item], now: float) -> list[_Call]:
        """What frees the concurrency slots a failed ``acquire`` may have taken for a
        request that will not run (counts it may have charged stay charged)."""
        return [
            self._release_call(item.key, item.token, now)
            for item in items
            if item.algorithm == "concurrency"
        ]

    def _release_call(self, key: str, token: str, now: float) -> _Call:
        return (_RELEASE, [self.prefix + key], [self._now(now), token])


class RedisStore(_Steps):
    """Idempotency records and rate-limit counters in Redis (or Redis Cluster).

    Example:
        >>> store = RedisStore.from_url("redis://127.0.0.1:6379/0?prefix=api:")
        >>> store = RedisStore.from_url("redis+cluster://10.0.0.5:7000?timeout=0.1")
        >>> store = RedisStore(Redis(host="cache"), prefix="api:", clock="server")

    Args:
        client: a ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` made with
            ``decode_responses=False``. It stays yours: ``aclose`` closes only a client
            the store made (``from_url``).
        prefix: put before every key; no ``{`` or ``}`` (Redis Cluster hash tags).
        clock: ``"server"`` decides on the Redis server's clock (one clock for every
            host); ``"caller"`` on the ``now`` each call passes (tests, one host).
        timeout: seconds a call may wait for its reply before it fails with
            ``StoreUnavailable`` (in a cluster, a call queued behind another waits for
            that one first).
        coalesce: decide the ``acquire`` requests of one loop turn (in a cluster: of
            one slot, queued behind a call in flight) in one script call (on a standalone
            server, one per ``SEND_AT`` of them; Rules 7, 8).

    Warning:
        A client you pass in keeps its own retry policy. redis-py retries failed
        commands by default, and a script whose reply was lost may have run: pass
        ``retry=Retry(NoBackoff(), 0)`` (as ``from_url`` does) so that a request is never
        counted twice or refused by its own reservation.
    """

    rate_limit_algorithms = ALGORITHMS
    #: Calls a cluster store has on the wire at once; more wait their turn (within
    #: ``timeout``). A standalone store pipelines every call on one connection.
    max_in_flight = 16

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "surefoot:",
        clock: Literal["server", "caller"] = "server",
        timeout: float = 0.05,
        coalesce: bool = True,
    ) -> None:
        if not isinstance(client, Redis | RedisCluster):
            raise ConfigurationError(
                "RedisStore.client: expected a redis.asyncio.Redis or RedisCluster, "
                f"got {type(client).__name__}"
            )
        if client.get_encoder().decode_responses:
            raise ConfigurationError(
                "RedisStore.client: expected a client made with decode_responses=False "
                "(stored response bodies are bytes)"
            )
        _check_options("RedisStore", prefix, clock, timeout)
        if not isinstance(coalesce, bool):
            raise ConfigurationError(
                f"RedisStore.coalesce: expected True or False, got {coalesce!r}"
            )
        self.prefix = prefix
        self.clock = clock
        self.timeout = float(timeout)
        self.coalesce = coalesce
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._owns_client = False
        self._server_clock = clock == "server"
        # A cluster learns its topology once, before its first call (``_initialize``).
        self._ready = not self._cluster
        self._init_task: asyncio.Future[Any] | None = None
        # Coalescing (Rule 8, a cluster): whether a call is in flight, and who waits for the next.
        self._busy = False
        self._queue: list[tuple[_Call | _Request, asyncio.Future[Any]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()  # reservations given back
        # A burst on a cold pool would open one connection per call, each costing a
        # handshake: a few connections, reused at once, answer the burst sooner.
        self._in_flight = asyncio.Semaphore(self.max_in_flight)
        # A standalone server: one pipelined connection (Rule 7), made at the first call.
        self._settings: _Settings | None = None
        self._conn: _Connection | None = None
        self._turn: list[tuple[_Request, asyncio.Future[Result]]] = []  # acquires to batch
        self._turn_handle: asyncio.Handle | None = None
        self._limits: dict[tuple[int, str], tuple[Limit, bytes]] = {}  # encoded, per Limit
        self._wired: dict[int, tuple[Sequence[Item], _Request]] = {}  # encoded, per tuple
        self._periods: dict[tuple[str, str], tuple[float, float, tuple[float, ...]]] = {}

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """A store on the server (or cluster) that ``url`` names.

        Example:
            >>> RedisStore.from_url("redis://:secret@cache:6379/0?prefix=api:&timeout=0.1")
            >>> RedisStore.from_url("rediss://cache:6380/0?ssl_ca_certs=/etc/ca.pem")
            >>> RedisStore.from_url("redis+cluster://10.0.0.5:7000?clock=server")

        ``redis://`` and ``rediss://`` (TLS) name one server, ``redis+cluster://host:port``
        any node of a cluster. Query options: ``prefix``, ``clock`` (``server`` or
        ``caller``), ``timeout`` (seconds), ``coalesce`` (``true`` or ``false``), and
        redis-py's own connection options (``db``, ``max_connections``, ``client_name``,
        ``ssl_*``, ``socket_timeout``...).

        Raises:
            ConfigurationError: an unknown option or an invalid value, naming the option
                and what is expected (never the password).
        """
        url_options = _url_options(url, "RedisStore")
        defaults: dict[str, Any] = {
            "socket_timeout": url_options.timeout,
            "socket_connect_timeout": url_options.timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        client_cls: Any = RedisCluster if url_options.cluster else Redis
        try:
            client = client_cls.from_url(url_options.target, **defaults)
        except (RedisClusterException, ValueError) as exc:
            raise _url_error("RedisStore", exc, url_options.target, url) from None
        store = cls(
            client,
            prefix=url_options.prefix,
            clock=url_options.clock,
            timeout=url_options.timeout,
            coalesce=url_options.coalesce,
        )
        store._owns_client = True
        return store

    # -- calls ---------------------------------------------------------------------------

    async def _eval(self, call: _Call) -> Any:
        """One round trip: run the script by SHA, loading it if the server lost it."""
        client = self._client
        script, keys, args = call
        with _unavailable():
            if not self._ready:
                await self._initialize()
            async with asyncio.timeout(self.timeout):
                async with self._in_flight:
                    try:
                        return await client.evalsha(script.sha, len(keys), *keys, *args)
                    except NoScriptError:
                        # EVAL runs the script and caches it: the next EVALSHA finds it.
                        return await client.eval(script.source, len(keys), *keys, *args)

    async def _step(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        """One script call: pipelined (standalone), or in a cluster sent at once or queued
        behind the call in flight (Rules 7, 8)."""
        if not self._cluster:
            length, body = _encode(keys, args)
            future = self._wire().loop.create_future()
            self._wire().send(future, script, length, body)
            return await future
        call: _Call = (script, keys, args)
        return await (self._lane(call) if self.coalesce else self._eval(call))

    def _wire(self) -> _Connection:
        """The pipelined connection, (re)opened when the last one closed."""
        conn = self._conn
        if conn is None or conn.closed or conn.loop is not asyncio.get_running_loop():
            settings = self._settings
            if settings is None:
                assert isinstance(self._client, Redis)
                settings = self._settings = _settings(self._client)
            conn = self._conn = _Connection(settings, self.timeout, self._resend_unsent)
        return conn

    def _resend_unsent(self, entries: list[list[Any]]) -> None:
        """Calls queued on a connection that failed to open, sent on a new one."""
        conn = self._wire()
        for waiter, _, script, length, body in entries:
            conn.send(waiter, script, length, body)

    def _coalesced(self, request: _Request) -> asyncio.Future[Result]:
        """``request``'s future, answered with the other acquires of this loop turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._turn.append((request, future))
        if len(self._turn) >= SEND_AT:
            self._send_turn(now=True)
        elif self._turn_handle is None:
            self._turn_handle = loop.call_soon(self._send_turn)
        return future

    def _send_turn(self, *, now: bool = False) -> None:
        """The acquires waiting, in one script call (per ``MAX_BATCH``): at the end of the
        loop turn, or ``now`` (``SEND_AT`` of them wait; the end of the turn sends the rest)."""
        if not now:
            self._turn_handle = None
        turn, self._turn = self._turn, []
        turn = [(request, future) for request, future in turn if not future.done()]
        conn = self._wire()
        for i in range(0, len(turn), MAX_BATCH):
            group = turn[i : i + MAX_BATCH]
            requests = [request for request, _ in group]
            nkeys = sum(len(request.keys) for request in requests)
            body = b"".join(
                [_bulk(nkeys)]
                + [request.wire_keys for request in requests]
                + [_bulk(len(requests))]
                + [request.wire_args for request in requests]
            )
            length = 4 + nkeys + sum(request.length for request in requests)
            batch = _Batch(self._decisions, requests, [future for _, future in group])
            conn.send(batch, _ACQUIRE, length, body, now=now)

    async def _lane(self, job: _Call | _Request) -> Any:
        """Send ``job`` now if nothing is in flight, else queue it for the next send."""
        if self._busy:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queue.append((job, future))
            # Bounded without a timer of its own: the call in flight ends within its
            # timeout, then this one goes, within its own.
            return await future
        self._busy = True
        try:
            if isinstance(job, _Request):
                return self._decisions([job], await self._eval(_batch([job])))[0]
            return await self._eval(job)
        finally:
            if self._queue:
                self._drainer = asyncio.get_running_loop().create_task(self._drain())
            else:
                self._busy = False

    async def _drain(self) -> None:
        """Send what queued while a call was in flight, until nothing is left: the
        ``acquire`` requests of each slot in one script call, every other step in a call
        of its own, all of them in one pipeline (Rule 8)."""
        batch: list[tuple[_Call | _Request, asyncio.Future[Any]]] = []
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                batch = [(job, f) for job, f in batch if not f.done()]  # cancelled callers
                # Per call: its futures, and the requests it decides (None: not acquire).
                sends: list[tuple[_Call, list[asyncio.Future[Any]], list[_Request] | None]] = []
                slots: dict[int, list[tuple[_Request, asyncio.Future[Any]]]] = {}
                for job, future in batch:
                    if isinstance(job, _Request):
                        slots.setdefault(job.slot, []).append((job, future))
                    else:
                        sends.append((job, [future], None))
                for group in slots.values():
                    for i in range(0, len(group), MAX_BATCH):
                        requests = [request for request, _ in group[i : i + MAX_BATCH]]
                        futures = [future for _, future in group[i : i + MAX_BATCH]]
                        sends.append((_batch(requests), futures, requests))
                outcomes = await self._pipeline([call for call, _, _ in sends])
                for (_, waiting, decided), outcome in zip(sends, outcomes, strict=True):
                    if isinstance(outcome, StoreUnavailable):
                        results: list[Any] = [_copy(outcome) for _ in waiting]
                    elif decided is not None:
                        results = self._decisions(decided, outcome)
                    else:
                        results = [outcome]
                    for future, result in zip(waiting, results, strict=True):
                        if future.done():
                            continue
                        if isinstance(result, StoreUnavailable):
                            future.set_exception(result)
                        else:
                            future.set_result(result)
                batch = []
        except BaseException:
            for _, future in batch + self._queue:
                if not future.done():
                    future.set_exception(StoreUnavailable(retry_after=1))
            self._queue = []
            raise
        finally:
            self._busy = False
            self._drainer = None

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        """Send ``calls`` in one round trip (per node); each answer, or the
        ``StoreUnavailable`` it failed with."""
        if len(calls) == 1:
            try:
                return [await self._eval(calls[0])]
            except StoreUnavailable as exc:
                return [exc]
        client = self._client
        try:
            with _unavailable():
                if not self._ready:
                    await self._initialize()
                async with asyncio.timeout(self.timeout):
                    async with self._in_flight:
                        pipe = client.pipeline(transaction=False)
                        for script, keys, args in calls:
                            # By name: redis-py's cluster pipeline refuses its evalsha().
                            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                        outcomes: list[Any] = await pipe.execute(raise_on_error=False)
                        lost = [i for i, o in enumerate(outcomes) if isinstance(o, NoScriptError)]
                        if lost:
                            # Nothing ran for these: send them whole (EVAL caches them).
                            pipe = client.pipeline(transaction=False)
                            for i in lost:
                                script, keys, args = calls[i]
                                pipe.execute_command("EVAL", script.source, len(keys), *keys, *args)
                            again = await pipe.execute(raise_on_error=False)
                            for i, outcome in zip(lost, again, strict=True):
                                outcomes[i] = outcome
        except StoreUnavailable as exc:
            return [_copy(exc) for _ in calls]
        return [_failure(o) if isinstance(o, Exception) else o for o in outcomes]

    async def _initialize(self) -> None:
        """Learn a cluster's topology, once, in a task of its own (shared by every caller).

        The first attempt may take ``max(timeout, 1 s)``: it fetches the slot map and
        redis-py's command table, which can take longer than one call should. Should it
        fail, later attempts get ``timeout``, as any call. A caller that stops waiting
        leaves the attempt running for the next one.
        """
        task = self._init_task
        bound = self.timeout
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            if task is None:
                bound = max(self.timeout, 1.0)
            assert isinstance(self._client, RedisCluster)
            task = self._init_task = asyncio.ensure_future(self._client.initialize())
            task.add_done_callback(_retrieve)
        async with asyncio.timeout(bound):
            await asyncio.shield(task)
        self._ready = True

    # -- cache entries -----------------------------------------------------------------------

    async def cache_get(self, key: str, now: float) -> bytes | None:
        reply = await self._command(*self._cache_get_command(key))
        return None if reply is None else bytes(reply)

    async def cache_put(self, key: str, value: bytes, expires_at: float, now: float) -> None:
        await self._command(*self._cache_put_command(key, value, expires_at, now))

    async def _command(self, *args: Any) -> Any:
        """One plain command through redis-py's client (Rule 9)."""
        with _unavailable():
            if not self._ready:
                await self._initialize()
            async with asyncio.timeout(self.timeout):
                async with self._in_flight:
                    return await self._client.execute_command(*args)

    # -- idempotency -----------------------------------------------------------------------

    async def begin(self, key: str, request: Begin, now: float) -> Decision:
        call = self._begin_call(key, request, now)
        try:
            reply = await self._step(*call)
        except StoreUnavailable:
            self._give_back(self._begin_give_back(call, request, now))
            raise
        return self._decision(reply, request, now)

    async def finish(self, key: str, token: str, outcome: Outcome, now: float) -> bool:
        return _finished(await self._step(*self._finish_call(key, token, outcome, now)))

    async def resolve(self, key: str, response: StoredResponse, now: float) -> bool:
        return bool(await self._step(*self._resolve_call(key, response, now)) == 1)

    async def forget(self, key: str, now: float) -> bool:
        return bool(await self._step(*self._forget_call(key, now)) == 1)

    async def get(self, key: str, now: float) -> Record | None:
        return self._record(await self._step(*self._get_call(key, now)), now)

    async def records(
        self, now: float, *, state: State | None = None, limit: int = 100
    ) -> list[tuple[str, Record]]:
        """Live records (``state``: only those), up to ``limit``, oldest write first.

        Scans the keys under the prefix (every primary of a cluster): an operator's tool,
        not something to run per request.
        """
        out: list[tuple[str, Record]] = []
        async for keys in self._scan():
            for i in range(0, len(keys), _READ_CHUNK):
                chunk = keys[i : i + _READ_CHUNK]
                replies = await asyncio.gather(
                    *(self._step(*self._read_call(key, now)) for key in chunk)
                )
                out += self._listed(chunk, replies, now, state)
            if len(out) >= limit:
                break
        return _oldest_first(out, limit)

    async def purge(self, now: float, *, limit: int = 500) -> int:
        """Delete up to ``limit`` records expired at ``now``; how many went.

        On the server clock Redis expires records by itself (Rule 4): there is nothing to
        purge, and this returns 0 without a round trip. On the caller's clock, whose
        ``now`` may be anywhere, it scans the prefix and deletes what has expired by it.
        """
        if self._server_clock:
            return 0
        deleted = 0
        async for keys in self._scan():
            for key in keys:
                deleted += int(await self._step(*_purge_call(key, now)))
                if deleted >= limit:
                    return deleted
        return deleted

    async def _scan(self) -> AsyncIterator[list[str]]:
        """Pages of the record keys under the prefix, on every primary."""
        match = self._match()
        client = self._client
        if isinstance(client, RedisCluster):
            if not self._ready:
                with _unavailable():
                    await self._initialize()
            nodes: list[ClusterNode | None] = list(client.get_primaries())
        else:
            nodes = [None]
        for node in nodes:
            cursor = 0
            while True:
                options: dict[str, Any] = {} if node is None else {"target_nodes": node}
                with _unavailable():
                    async with asyncio.timeout(self.timeout):
                        page: Any = await client.scan(
                            cursor, match=match, count=1000, _type="hash", **options
                        )
                # A cluster answers {node name: cursor} for the node it was asked.
                cursor = page[0] if node is None else page[0][node.name]
                if page[1]:
                    yield [key.decode() for key in page[1]]
                if cursor == 0:
                    break

    # -- ordering records (Rule 12) ---------------------------------------------------------

    async def order_claim(
        self, key: str, *, version: float, token: str, now: float, lease: float, retention: float
    ) -> Claim:
        call = self._order_claim_call(key, version, token, now, lease, retention)
        try:
            reply = await self._step(*call)
        except StoreUnavailable:
            self._give_back(self._order_claim_give_back(call, retention))
            raise
        return self._claim(reply, now)

    async def order_settle(
        self, key: str, *, token: str, version: float, ok: bool, now: float, retention: float
    ) -> None:
        await self._step(*self._order_settle_call(key, token, version, ok, now, retention))

    async def order_get(self, key: str, now: float) -> OrderRecord | None:
        return self._order_record(await self._step(*self._order_get_call(key, now)), now)

    # -- boards (Rule 13) -------------------------------------------------------------------

    async def board_put(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> None:
        call = self._board_write_call(_BOARD_PUT, board, slot, value, expires_at, now)
        _board_written(await self._step(*call), board)

    async def board_claim(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> bool:
        call = self._board_write_call(_BOARD_CLAIM, board, slot, value, expires_at, now)
        return _board_written(await self._step(*call), board)

    async def board_read(self, board: str, now: float) -> dict[str, bytes]:
        return _board(await self._step(*self._board_read_call(board, now)))

    async def board_delete(self, board: str, slot: str, now: float) -> bool:
        return bool(await self._step(*self._board_delete_call(board, slot, now)) == 1)

    # -- rate limits -----------------------------------------------------------------------

    async def acquire(self, items: Sequence[Item], now: float) -> Result:
        request = self._request(items, now) if self._cluster else self._wire_request(items, now)
        try:
            if not self._cluster:
                if self.coalesce:
                    return await self._coalesced(request)
                conn = self._wire()
                future = conn.loop.create_future()
                conn.send(future, _ACQUIRE, *request.alone())
                return self._decisions([request], await future)[0]
            if self.coalesce:
                result: Result = await self._lane(request)
                return result
            return self._decisions([request], await self._eval(_batch([request])))[0]
        except StoreUnavailable:
            for call in self._slot_give_backs(items, now):
                self._give_back(call)
            raise

    def _give_back(self, call: _Call) -> None:
        """Run ``call`` in the background, once, ignoring its failure."""

        async def quietly() -> None:
            with contextlib.suppress(StoreUnavailable):
                await self._step(*call)

        task = asyncio.get_running_loop().create_task(quietly())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def release(self, key: str, token: str, now: float) -> None:
        await self._step(*self._release_call(key, token, now))

    async def aclose(self) -> None:
        """Fail the calls still queued, wait for those on the wire (each within its
        ``timeout``), and close the client if the store made it."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._turn_handle is not None:
            self._turn_handle.cancel()
            self._turn_handle = None
        for _, future in self._turn:  # acquires of this loop turn, not sent yet
            if not future.done():
                future.set_exception(StoreUnavailable(retry_after=1))
        self._turn = []
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.aclose()
        drainer = self._drainer
        if drainer is not None:
            drainer.cancel()  # its waiters get StoreUnavailable
            with _suppress_cancelled():
                await drainer
        for _, future in self._queue:  # queued behind a call still in flight
            if not future.done():
                future.set_exception(StoreUnavailable(retry_after=1))
        self._queue = []
        if self._owns_client:
            await self._client.aclose()

    def __repr__(self) -> str:
        kind = "RedisCluster" if self._cluster else "Redis"
        return (
            f"RedisStore(<{kind}>, prefix={self.prefix!r}, clock={self.clock!r}, "
            f"timeout={self.timeout!r}, coalesce={self.coalesce!r})"
        )


def _stdlib(sock: socket.socket) -> bool:
    """Whether ``sock`` is the standard library's socket (gevent and eventlet patch the
    module with sockets that wait in their hub, where the kernel's timeouts do not act)."""
    return type(sock).__module__ == "socket" and sys.platform != "win32"


def _bound(sock: socket.socket, timeout: float) -> None:
    """Bound each send and receive on ``sock`` by ``timeout``: in the kernel where it can
    (``SO_RCVTIMEO``, ``SO_SNDTIMEO``: a blocking socket, no ``poll`` before every call,
    and a call past the bound fails with ``EAGAIN``), else with the socket's timeout."""
    if not _stdlib(sock):
        sock.settimeout(timeout)
        return
    sock.settimeout(None)
    seconds = int(timeout)
    interval = struct.pack("ll", seconds, max(int((timeout - seconds) * 1e6), 1))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)


class _SyncWire:
    """One blocking RESP2 connection of a ``SyncRedisStore`` to a standalone server, used
    by one call at a time (Rule 15): a call is one ``sendall`` of bytes encoded in
    advance and reads until hiredis has its reply(ies). Any failure to write or read
    closes it for good (a late reply must never answer the next call)."""

    __slots__ = ("__weakref__", "_poll", "_reader", "_sock", "closed")

    def __init__(self, settings: _Settings, timeout: float) -> None:
        self.closed = False
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        try:
            handshake = settings.handshake()
        except Exception as exc:
            self.closed = True
            raise _no_credentials(exc) from exc
        # Never longer than the store's own timeout (redis-py's default is 5 seconds).
        connect = min(settings.connect_timeout or timeout, timeout)
        try:
            if settings.path is not None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.settimeout(connect)
                self._sock.connect(settings.path)
            else:
                address = (settings.host, settings.port)
                self._sock = socket.create_connection(address, connect)
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _bound(self._sock, timeout)
            self._poll: Any = None
            if _stdlib(self._sock) and hasattr(select, "poll"):
                self._poll = select.poll()
                self._poll.register(self._sock, select.POLLIN)
        except OSError as exc:
            self.close()
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError("timeout connecting to Redis") from exc
            raise RedisConnectionError(f"error connecting to Redis: {exc.strerror}") from exc
        if handshake:
            for reply in self.calls(b"".join(handshake), len(handshake)):
                if isinstance(reply, ResponseError):
                    self.close()
                    raise reply

    def quiet(self) -> bool:
        """Whether the connection is still open with nothing unasked to read: before a
        connection is used again (the server may have closed it while it was idle: its
        ``timeout``, a restart, a proxy), as redis-py's pool checks its own."""
        if self.closed:  # its descriptor's number may be another socket's by now
            return False
        try:
            if self._poll is not None:  # end of file, an error, or bytes nobody asked for
                return not self._poll.poll(0)
            return not select.select([self._sock], [], [], 0)[0]
        except (OSError, ValueError):
            return False

    def calls(self, data: bytes, replies: int = 1) -> list[Any]:
        """Send ``data`` (``replies`` commands) and read their replies, errors included."""
        if self.closed:
            raise RedisConnectionError("the connection was closed")
        reader, sock = self._reader, self._sock
        out: list[Any] = []
        try:
            sock.sendall(data)
            while len(out) < replies:
                reply = reader.gets()
                if reply is False:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise RedisConnectionError("Redis closed the connection")
                    reader.feed(chunk)
                else:
                    out.append(reply)
        except BaseException as exc:
            self.close()
            if isinstance(exc, TimeoutError | BlockingIOError):
                raise RedisTimeoutError("no reply from Redis within the timeout") from exc
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"error talking to Redis: {exc.strerror}") from exc
            raise
        return out

    def close(self) -> None:
        self.closed = True
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()

    __del__ = close  # a connection dropped (after a fork, or past _IDLE_KEPT) is closed


#: Idle connections a ``SyncRedisStore`` keeps for its next calls (Rule 15).
_IDLE_KEPT = 16


class SyncRedisStore(_Steps):
    """``RedisStore`` for code that blocks: WSGI workers, Django, Flask (Rule 14).

    Example:
        >>> store = SyncRedisStore.from_url("redis://127.0.0.1:6379/0?prefix=api:")
        >>> store = SyncRedisStore.from_url("redis+cluster://10.0.0.5:7000?timeout=0.1")
        >>> store = SyncRedisStore(redis.Redis(host="cache", socket_timeout=0.05,
        ...                        retry=Retry(NoBackoff(), 0)), prefix="api:")

    The same scripts, keys and decisions as ``RedisStore``: an ASGI and a WSGI service on
    one server (and one prefix) share their limits and their idempotency records.
    Safe to share between threads: on a standalone server the calls take turns on a few
    connections of the store's own, made with the client's settings (a cluster, or a TLS
    client, takes a connection from the client's pool); after a fork, the child opens
    its own.

    Args:
        client: a ``redis.Redis`` or ``redis.RedisCluster`` made with
            ``decode_responses=False``. It stays yours: ``close`` closes only a client the
            store made (``from_url``).
        prefix: put before every key; no ``{`` or ``}`` (Redis Cluster hash tags).
        clock: ``"server"`` decides on the Redis server's clock (one clock for every
            host); ``"caller"`` on the ``now`` each call passes (tests, one host).
        timeout: seconds: bounds connecting, and each write and read of a call; past it
            the call fails with ``StoreUnavailable``. ``from_url`` gives its client the
            same connect and socket timeout.

    There is no coalescing (``RedisStore``'s ``coalesce``): each call is its own round
    trip. ``from_url`` accepts ``coalesce=`` and ignores it, so that one URL configures
    both stores.

    Warning:
        A ``RedisCluster`` or a TLS client you pass in carries the calls with its own
        retry policy and socket timeouts. redis-py retries failed commands by default,
        and a script whose reply was lost may have run: pass ``retry=Retry(NoBackoff(),
        0)`` (``redis.retry.Retry``) and a ``socket_timeout`` (as ``from_url`` does), or
        a request may be counted twice, and a silent server may hold a worker as long as
        the operating system lets it.
    """

    rate_limit_algorithms = ALGORITHMS
    _client: SyncClient | None
    _direct: _Settings | None

    def __init__(
        self,
        client: SyncClient,
        *,
        prefix: str = "surefoot:",
        clock: Literal["server", "caller"] = "server",
        timeout: float = 0.05,
    ) -> None:
        if not isinstance(client, sync_redis.Redis | sync_redis.RedisCluster):
            raise ConfigurationError(
                "SyncRedisStore.client: expected a redis.Redis or redis.RedisCluster "
                f"(redis.asyncio's clients go with RedisStore), got {type(client).__name__}"
            )
        if client.get_encoder().decode_responses:
            raise ConfigurationError(
                "SyncRedisStore.client: expected a client made with decode_responses=False "
                "(stored response bodies are bytes)"
            )
        self._configure(prefix, clock, timeout, isinstance(client, sync_redis.RedisCluster))
        self._client = client
        if isinstance(client, sync_redis.Redis):
            self._direct = _sync_settings(client)

    def _configure(
        self, prefix: str, clock: Literal["server", "caller"], timeout: float, cluster: bool
    ) -> None:
        _check_options("SyncRedisStore", prefix, clock, timeout)
        self.prefix = prefix
        self.clock = clock
        self.timeout = float(timeout)
        self._cluster = cluster
        self._server_clock = clock == "server"
        self._owns_client = False
        self._client = None
        # A cluster store made by from_url: the client, made (learning the topology) at
        # the first call.
        self._connect: Callable[[], SyncClient] | None = None
        self._lock = threading.Lock()
        # The last failure to connect: calls within ``timeout`` of it fail at once.
        self._failed: tuple[float, Exception] | None = None
        self._periods = {}
        self._limits = {}
        self._wired = {}
        # A standalone server reached over TCP or a Unix socket: the store's own
        # connections (Rule 15); None: redis-py carries the calls.
        self._direct = None
        self._idle: list[_SyncWire] = []  # connections between calls, the latest last
        self._wires: weakref.WeakSet[_SyncWire] = weakref.WeakSet()  # every one open
        _FORKABLE.add(self)

    def _forked(self) -> None:
        """In a forked child: a lock another thread of the parent held stays held, and
        the parent's connections are the parent's (dropped here, never written to)."""
        self._lock = threading.Lock()
        self._idle = []
        self._wires = weakref.WeakSet()

    @classmethod
    def from_url(cls, url: str) -> SyncRedisStore:
        """A store on the server (or cluster) that ``url`` names.

        Example:
            >>> SyncRedisStore.from_url("redis://:secret@cache:6379/0?prefix=api:&timeout=0.1")
            >>> SyncRedisStore.from_url("rediss://cache:6380/0?ssl_ca_certs=/etc/ca.pem")
            >>> SyncRedisStore.from_url("redis+cluster://10.0.0.5:7000?clock=server")

        The URLs of ``RedisStore.from_url``, read by the same rules (``coalesce`` is
        accepted and ignored). Nothing is sent before the first call.

        Raises:
            ConfigurationError: an unknown option or an invalid value, naming the option
                and what is expected (never the password).
        """
        options = _url_options(url, "SyncRedisStore")
        defaults: dict[str, Any] = {
            "socket_timeout": options.timeout,
            "socket_connect_timeout": options.timeout,
            "retry": sync_retry.Retry(NoBackoff(), 0),
        }
        if not options.cluster:
            try:
                client = sync_redis.Redis.from_url(options.target, **defaults)
            except ValueError as exc:
                raise _url_error("SyncRedisStore", exc, options.target, url) from None
            store = cls(client, prefix=options.prefix, clock=options.clock, timeout=options.timeout)
        else:
            # redis-py's RedisCluster connects as it is made: checked here, made at the
            # first call (a cluster that is down then is StoreUnavailable, not an error
            # in the configuration).
            try:
                db = cast(Any, parse_url)(options.target).get("db", 0)
            except ValueError as exc:
                raise _url_error("SyncRedisStore", exc, options.target, url) from None
            if db:
                raise ConfigurationError(
                    f"SyncRedisStore URL: db: a Redis Cluster has only the database 0, got {db}"
                )
            store = cls.__new__(cls)
            store._configure(options.prefix, options.clock, options.timeout, cluster=True)
            target = options.target

            def connect() -> SyncClient:
                return sync_redis.RedisCluster.from_url(target, **defaults)

            store._connect = connect
        store._owns_client = True
        return store

    # -- calls ---------------------------------------------------------------------------

    def _redis(self) -> SyncClient:
        """The client; a cluster store made by ``from_url`` makes it at its first call.

        Calls that arrive while another connects wait at most ``timeout`` for it; for
        ``timeout`` after a failed attempt, calls fail at once (``StoreUnavailable``)."""
        client = self._client
        if client is not None:
            return client
        if not self._lock.acquire(timeout=self.timeout):
            raise TimeoutError("another call is connecting to the Redis Cluster")
        try:
            client = self._client
            if client is None:
                failed = self._failed
                if failed is not None and time.monotonic() < failed[0] + self.timeout:
                    raise RedisClusterException(
                        "the Redis Cluster could not be reached just now"
                    ) from failed[1]
                assert self._connect is not None
                try:
                    client = self._client = self._connect()
                except Exception as exc:
                    self._failed = (time.monotonic(), exc)
                    raise
            return client
        finally:
            self._lock.release()

    def _take(self) -> _SyncWire:
        """An idle connection still open and quiet, or a new one (Rule 15)."""
        while True:
            with self._lock:
                wire = self._idle.pop() if self._idle else None
            if wire is None:
                assert self._direct is not None
                wire = _SyncWire(self._direct, self.timeout)
                with self._lock:
                    self._wires.add(wire)
                return wire
            if wire.quiet():
                return wire
            wire.close()

    def _put(self, wire: _SyncWire) -> None:
        """``wire`` back among the idle connections, unless it closed or enough are."""
        with self._lock:
            if not wire.closed and len(self._idle) < _IDLE_KEPT:
                self._idle.append(wire)  # close() may still close it: quiet() then says so
                return
        wire.close()

    def _exchange(self, data: bytes, replies: int = 1) -> list[Any]:
        """``replies`` commands in ``data``, on a connection taken for them, and their
        replies (errors included)."""
        wire = self._take()
        try:
            return wire.calls(data, replies)
        finally:
            self._put(wire)

    def _send(self, script: _Script, length: int, body: bytes) -> Any:
        """One script call on a connection of the store's: by SHA, and whole (``EVAL``)
        if the server lost the script."""
        reply = self._exchange(_script_command(script.sha_head, length, body))[0]
        if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"):
            # Nothing ran: EVAL runs the script and caches it for the next EVALSHA.
            reply = self._exchange(_script_command(script.eval_head, length, body))[0]
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def _call(self, call: _Call) -> Any:
        """``call``'s round trip, untranslated."""
        if self._direct is None:
            return _evaluate(self._redis(), call)
        script, keys, args = call
        return self._send(script, *_encode(keys, args))

    def _run(self, call: _Call) -> Any:
        """One round trip: run the script by SHA, loading it if the server lost it."""
        with _unavailable():
            return self._call(call)

    def _run_or_give_back(
        self, call: Callable[[], Any], give_backs: Callable[[], list[_Call]]
    ) -> Any:
        """``call()``; if it fails once its script may have been sent, ``give_backs()``
        are sent, in one round trip, before the failure is raised."""
        if self._direct is None:
            with _unavailable():
                self._redis()  # a failure here sent nothing
        try:
            with _unavailable():
                return call()
        except StoreUnavailable as exc:
            if _may_have_run(exc.__cause__):
                self._give_back(give_backs())
            raise

    def _give_back(self, calls: list[_Call]) -> None:
        """Send ``calls`` once, now, in one pipeline (their keys share a slot), ignoring
        their failure (the caller is failing already): one ``timeout`` at most. EVAL, not
        EVALSHA: no second round trip if the server lost the script."""
        if not calls:
            return
        with contextlib.suppress(StoreUnavailable), _unavailable():
            if self._direct is not None:
                data = b"".join(
                    _script_command(script.eval_head, *_encode(keys, args))
                    for script, keys, args in calls
                )
                self._exchange(data, len(calls))
                return
            pipe: Any = self._redis().pipeline(transaction=False)
            for script, keys, args in calls:
                pipe.execute_command("EVAL", script.source, len(keys), *keys, *args)
            pipe.execute(raise_on_error=False)

    def _command(self, *args: Any) -> Any:
        """One plain command (Rule 9)."""
        with _unavailable():
            client: Any = self._redis()
            return client.execute_command(*args)

    # -- cache entries -----------------------------------------------------------------------

    def cache_get(self, key: str, now: float) -> bytes | None:
        reply = self._command(*self._cache_get_command(key))
        return None if reply is None else bytes(reply)

    def cache_put(self, key: str, value: bytes, expires_at: float, now: float) -> None:
        self._command(*self._cache_put_command(key, value, expires_at, now))

    # -- idempotency -----------------------------------------------------------------------

    def begin(self, key: str, request: Begin, now: float) -> Decision:
        call = self._begin_call(key, request, now)
        reply = self._run_or_give_back(
            functools.partial(self._call, call), lambda: [self._begin_give_back(call, request, now)]
        )
        return self._decision(reply, request, now)

    def finish(self, key: str, token: str, outcome: Outcome, now: float) -> bool:
        return _finished(self._run(self._finish_call(key, token, outcome, now)))

    def resolve(self, key: str, response: StoredResponse, now: float) -> bool:
        return bool(self._run(self._resolve_call(key, response, now)) == 1)

    def forget(self, key: str, now: float) -> bool:
        return bool(self._run(self._forget_call(key, now)) == 1)

    def get(self, key: str, now: float) -> Record | None:
        return self._record(self._run(self._get_call(key, now)), now)

    def records(
        self, now: float, *, state: State | None = None, limit: int = 100
    ) -> list[tuple[str, Record]]:
        """Live records (``state``: only those), up to ``limit``, oldest write first.

        Scans the keys under the prefix (every primary of a cluster): an operator's tool,
        not something to run per request.
        """
        out: list[tuple[str, Record]] = []
        for keys in self._scan():
            replies = [self._run(self._read_call(key, now)) for key in keys]
            out += self._listed(keys, replies, now, state)
            if len(out) >= limit:
                break
        return _oldest_first(out, limit)

    def purge(self, now: float, *, limit: int = 500) -> int:
        """Delete up to ``limit`` records expired at ``now``; how many went (always 0 on
        the server clock, where Redis expires them by itself: Rule 4)."""
        if self._server_clock:
            return 0
        deleted = 0
        for keys in self._scan():
            for key in keys:
                deleted += int(self._run(_purge_call(key, now)))
                if deleted >= limit:
                    return deleted
        return deleted

    def _scan(self) -> Iterator[list[str]]:
        """Pages of the record keys under the prefix, on every primary."""
        match = self._match()
        with _unavailable():
            client: Any = self._redis()
            nodes: list[Any] = list(client.get_primaries()) if self._cluster else [None]
        for node in nodes:
            cursor = 0
            while True:
                options: dict[str, Any] = {} if node is None else {"target_nodes": node}
                with _unavailable():
                    page = client.scan(cursor, match=match, count=1000, _type="hash", **options)
                # A cluster answers {node name: cursor} for the node it was asked.
                cursor = page[0] if node is None else page[0][node.name]
                if page[1]:
                    yield [key.decode() for key in page[1]]
                if cursor == 0:
                    break

    # -- ordering records (Rule 12) ---------------------------------------------------------

    def order_claim(
        self, key: str, *, version: float, token: str, now: float, lease: float, retention: float
    ) -> Claim:
        call = self._order_claim_call(key, version, token, now, lease, retention)
        reply = self._run_or_give_back(
            functools.partial(self._call, call),
            lambda: [self._order_claim_give_back(call, retention)],
        )
        return self._claim(reply, now)

    def order_settle(
        self, key: str, *, token: str, version: float, ok: bool, now: float, retention: float
    ) -> None:
        self._run(self._order_settle_call(key, token, version, ok, now, retention))

    def order_get(self, key: str, now: float) -> OrderRecord | None:
        return self._order_record(self._run(self._order_get_call(key, now)), now)

    # -- boards (Rule 13) -------------------------------------------------------------------

    def board_put(self, board: str, slot: str, value: bytes, expires_at: float, now: float) -> None:
        call = self._board_write_call(_BOARD_PUT, board, slot, value, expires_at, now)
        _board_written(self._run(call), board)

    def board_claim(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> bool:
        call = self._board_write_call(_BOARD_CLAIM, board, slot, value, expires_at, now)
        return _board_written(self._run(call), board)

    def board_read(self, board: str, now: float) -> dict[str, bytes]:
        return _board(self._run(self._board_read_call(board, now)))

    def board_delete(self, board: str, slot: str, now: float) -> bool:
        return bool(self._run(self._board_delete_call(board, slot, now)) == 1)

    # -- rate limits -----------------------------------------------------------------------

    def acquire(self, items: Sequence[Item], now: float) -> Result:
        if self._direct is None:
            request = self._request(items, now)
            call = functools.partial(self._call, _batch([request]))
        else:
            request = self._wire_request(items, now)
            call = functools.partial(self._send, _ACQUIRE, *request.alone())
        give_backs = functools.partial(self._slot_give_backs, items, now)
        return self._decisions([request], self._run_or_give_back(call, give_backs))[0]

    def release(self, key: str, token: str, now: float) -> None:
        self._run(self._release_call(key, token, now))

    def close(self) -> None:
        """Close the store's connections, and the client if the store made it
        (``from_url``). A later call opens a new connection."""
        with self._lock:
            wires = list(self._wires)
            self._idle.clear()
        for wire in wires:
            wire.close()
        client = self._client
        if self._owns_client and client is not None:
            client.close()

    def __repr__(self) -> str:
        kind = "RedisCluster" if self._cluster else "Redis"
        return (
            f"SyncRedisStore(<{kind}>, prefix={self.prefix!r}, clock={self.clock!r}, "
            f"timeout={self.timeout!r})"
        )


@contextmanager
def _unavailable() -> Iterator[None]:
    """Redis failures become ``StoreUnavailable`` (Rule 6): the one translation point."""
    try:
        yield
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        raise StoreUnavailable(retry_after=1) from exc


def _evaluate(client: Any, call: _Call) -> Any:
    """One script call: by SHA, loading the script if the server lost it."""
    script, keys, args = call
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        # EVAL runs the script and caches it: the next EVALSHA finds it.
        return client.eval(script.source, len(keys), *keys, *args)


# redis-py's functions that connect a connection (and its handshake, HELLO...) before
# anything is sent on it.
_CONNECTING = frozenset(
    {"connect", "connect_check_health", "on_connect", "on_connect_check_health"}
)


def _may_have_run(error: BaseException | None) -> bool:
    """Whether a script call that failed with ``error`` may have run: unless it failed
    while the store's connection (``_SyncWire``) or redis-py's connected (nothing of the
    call was sent yet), the lost reply may hide it."""
    trace = None if error is None else error.__traceback__
    while trace is not None:
        code = trace.tb_frame.f_code
        if code is _SyncWire.__init__.__code__:
            return False
        if code.co_name in _CONNECTING and trace.tb_frame.f_globals.get("__name__") == (
            "redis.connection"
        ):
            return False
        trace = trace.tb_next
    return True


#: The stores of this process that a fork must reset in the child (one hook for all).
_FORKABLE: weakref.WeakSet[SyncRedisStore] = weakref.WeakSet()


def _after_fork() -> None:
    for store in list(_FORKABLE):
        store._forked()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork)


def _batch(requests: list[_Request]) -> _Call:
    """One acquire script call deciding ``requests`` in order (all of one slot)."""
    keys: list[str] = []
    args: list[Any] = [len(requests)]
    for request in requests:
        keys += request.keys
        args += request.args
    return (_ACQUIRE, keys, args)


def _failure(error: Exception) -> StoreUnavailable:
    """A command's error in a pipeline, translated as ``_unavailable`` translates."""
    try:
        with _unavailable():
            raise error
    except StoreUnavailable as exc:
        return exc
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def _suppress_cancelled() -> Iterator[None]:
    try:
        yield
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


def _copy(exc: StoreUnavailable) -> StoreUnavailable:
    """A fresh exception per waiter (one instance raised in many tasks would share and
    grow one traceback), with the same cause."""
    fresh = StoreUnavailable(retry_after=1)
    fresh.__cause__ = exc.__cause__
    return fresh


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a background task's failure as seen (the next call retries it)."""
    if not task.cancelled():
        task.exception()


def _finished(reply: Any) -> bool:
    """Whether a ``finish`` script settled the reservation."""
    if reply == -1:
        raise ValueError("completing a record needs the response to keep")
    return bool(reply == 1)


def _purge_call(redis_key: str, now: float) -> _Call:
    return (_PURGE, [redis_key], [now])


def _oldest_first(out: list[tuple[str, Record]], limit: int) -> list[tuple[str, Record]]:
    """``records``' answer: oldest write first, at most ``limit``."""
    out.sort(key=lambda kr: (kr[1].expires_at - kr[1].ttl, kr[0]))
    return out[:limit]


def _board_written(reply: Any, board: str) -> bool:
    """Whether a ``board_put`` or ``board_claim`` script wrote its slot."""
    if reply == -1:
        raise board_full(board)
    return bool(reply == 1)


def _board(reply: list[Any]) -> dict[str, bytes]:
    """The live slots of a ``board_read`` script's reply."""
    return {bytes(reply[i]).decode(): bytes(reply[i + 1]) for i in range(0, len(reply), 2)}


def _number(raw: Any) -> float | None:
    """A '%.17g' field of a script's reply; None for a missing one (None, or False when a
    RESP3 client reads a Lua false)."""
    return None if raw is None or raw is False else float(raw)


def _response_args(response: StoredResponse | None) -> list[Any]:
    """The response as ``settle`` in ``record.lua`` reads it."""
    if response is None:
        return [0, "", "", 0, ""]
    body = response.body
    headers = _encode_headers(response.headers)
    return [1, response.status, headers, 0 if body is None else 1, b"" if body is None else body]


def _encode_headers(headers: tuple[tuple[bytes, bytes], ...]) -> str:
    return json.dumps([[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers])


def _decode_headers(raw: bytes) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in json.loads(raw))


def _body(raw: Any) -> bytes | None:
    # A missing field comes back as None (RESP2) or False (a Lua false under RESP3).
    return raw if isinstance(raw, bytes) else None


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class _UrlOptions(NamedTuple):
    """What a store URL says (``_url_options``)."""

    cluster: bool
    target: str  # the URL redis-py reads: the store's own options taken out
    prefix: str
    clock: Literal["server", "caller"]
    timeout: float
    coalesce: bool


def _url_options(url: str, name: str) -> _UrlOptions:
    """A store URL read and checked, one grammar for both stores (``from_url``); redis-py's
    options are checked against the asyncio clients' (the same names for both stores)."""
    parts = split_url(url, f"{name} URL")
    cluster = parts.scheme == "redis+cluster"
    if parts.scheme not in ("redis", "rediss", "redis+cluster"):
        raise ConfigurationError(
            f"{name} URL: expected the scheme redis://, rediss:// or redis+cluster://, "
            f"got {parts.scheme!r}"
        )
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    prefix = options.pop("prefix", "surefoot:")
    clock = options.pop("clock", "server")
    if clock not in ("server", "caller"):
        raise ConfigurationError(f"{name} URL: clock: expected 'server' or 'caller', got {clock!r}")
    timeout = _url_timeout(options.pop("timeout", "0.05"), name)
    coalesce = _url_bool("coalesce", options.pop("coalesce", "true"), name)
    client_cls: Any = RedisCluster if cluster else Redis
    accepted = _PASSED_ON & set(inspect.signature(client_cls.__init__).parameters)
    if parts.scheme != "rediss":
        accepted = {option for option in accepted if not option.startswith("ssl_")}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigurationError(
            f"{name} URL: unknown options {unknown}; expected prefix, clock, timeout, "
            f"coalesce or one of redis-py's {sorted(accepted)}"
        )
    for option, value in options.items():
        parser = URL_QUERY_ARGUMENT_PARSERS.get(option)
        if parser is not None:
            try:
                parser(value)
            except (TypeError, ValueError):
                expected = _EXPECTED.get(parser, "true or false")
                raise ConfigurationError(
                    f"{name} URL: {option}: expected {expected}, got {value!r}"
                ) from None
    scheme = "redis" if cluster else parts.scheme
    target = urlunsplit((scheme, parts.netloc, parts.path, urlencode(options), ""))
    return _UrlOptions(
        cluster, target, prefix, "server" if clock == "server" else "caller", timeout, coalesce
    )


def _url_error(name: str, exc: Exception, target: str, url: str) -> ConfigurationError:
    """redis-py's refusal of a URL, without its password."""
    return ConfigurationError(
        f"{name} URL: {type(exc).__name__}: " + masked_text(masked_text(str(exc), target), url)
    )


def _check_options(name: str, prefix: object, clock: object, timeout: object) -> None:
    """The options both stores take, checked with the same messages."""
    if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
        raise ConfigurationError(
            f"{name}.prefix: expected a string without '{{' or '}}' (Redis Cluster "
            f"hash tags), got {prefix!r}"
        )
    if clock not in ("server", "caller"):
        raise ConfigurationError(f"{name}.clock: expected 'server' or 'caller', got {clock!r}")
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not (0 < timeout < math.inf)
    ):
        raise ConfigurationError(
            f"{name}.timeout: expected a positive number of seconds, got {timeout!r}"
        )


def _url_timeout(value: str, store: str) -> float:
    try:
        timeout = float(value)
    except ValueError:
        timeout = math.nan
    if not 0 < timeout < math.inf:
        raise ConfigurationError(
            f"{store} URL: timeout: expected a positive number of seconds, got {value!r}"
        )
    return timeout


def _url_bool(name: str, value: str, store: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ConfigurationError(f"{store} URL: {name}: expected true or false, got {value!r}")
