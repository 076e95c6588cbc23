"""``ChaosProxy``: a fault-injecting HTTP/1.1 reverse proxy, for tests and drills.

It sits between a client and a server (``surefoot chaos --listen ... --upstream ...``) and
applies a ``FaultPlan`` to every request, on the wire: unlike a transport inside the
client, it can cut real TCP connections, so any client in any language meets the faults.

Theory of operation, per request (asyncio streams, HTTP/1.1 parsed by h11, keep-alive):
1. Requests under the control prefix (``/__chaos``) are the control API, never forwarded::

       GET  /__chaos/plan     the rules (as ``[[chaos.rules]]`` tables), seed, paused
       PUT  /__chaos/plan     {"rules": [...]}: replace the rules (422 if invalid)
       POST /__chaos/pause    inject nothing until resume
       POST /__chaos/resume
       GET  /__chaos/counts   faults injected, by rule and by kind

2. Anything else: the plan decides, and the fault is applied where a network would:

   - ``delay``: wait, then forward;  ``abort``: answer the status (and ``Retry-After``);
   - ``reset``: close the client's connection with a TCP RST, never forwarding;
   - ``hang``: forward nothing and answer nothing until the client gives up (closes its
     connection) or ``hang_max`` seconds pass;
   - ``fail_after``: forward, let the upstream answer completely, then lose the answer:
     ``reset`` (RST), ``502``, or ``truncate`` (the headers and half the body, then the
     connection closes: a client sees a body shorter than its ``Content-Length``);
   - ``duplicate``: deliver the request twice (in sequence: the client gets the second
     answer; concurrently: the first);
   - ``slow_body``: deliver the answer's body at ``bytes_per_second``;
   - ``reorder``: hold the request until ``window`` requests of the rule are held (or
     ``hold`` seconds passed), then forward them one at a time in the plan's
     ``release_order``, each once the one before has been answered by the upstream (or
     failed): the upstream receives them in that order.

3. Forwarding keeps the method, target, headers (minus hop-by-hop ones; ``Host`` becomes
   the upstream's) and body; a proxied answer keeps its status, reason phrase, headers
   and body. An answer the proxy makes up (a fault's, or 502 when the upstream cannot be
   reached: not a fault, a broken test setup) has its status's standard reason phrase.

Every injected fault is counted by the plan and emitted as ``FaultInjected`` (at WARNING:
with the default ``LoggingHook``, one line on the ``surefoot.chaos`` logger, which
``surefoot chaos`` prints on stderr).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import h11
import httpx

from surefoot.chaos._events import FaultInjected
from surefoot.chaos._plan import (
    Abort,
    Delay,
    Duplicate,
    FailAfter,
    Fault,
    FaultPlan,
    Hang,
    Reorder,
    Reset,
    Rule,
    SlowBody,
)
from surefoot.chaos.transport import CHAOS_HEADER, _AsyncPens, _detail
from surefoot.errors import (
    DEFAULT_PROBLEM_BASE,
    AdminBadRequest,
    AdminNotFound,
    ConfigRejected,
    ConfigurationError,
    SurefootError,
    problem_body,
)
from surefoot.events import EventHook, LoggingHook, emit, wanted

__all__ = ["ChaosControl", "ChaosProxy"]

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
_READ = 65536


class _Cut(Exception):
    """The connection was cut on purpose (reset or truncate): stop serving it."""


class ChaosProxy:
    """A fault-injecting reverse proxy in front of ``upstream``.

    Example:
        >>> proxy = ChaosProxy(upstream="http://127.0.0.1:8080", plan=FaultPlan(rules, seed=7))
        >>> with proxy.running():          # a background thread; or `await proxy.start()`
        ...     httpx.post(proxy.url + "/charges", ...)

    Args:
        upstream: the server's base URL.
        plan: the fault plan (change it at run time through it or the control API).
        host, port: where to listen (port 0: any free port; ``url`` says which).
        control_prefix: the path prefix of the control API.
        hang_max: the longest a ``hang`` lasts if the client never gives up.
        timeout: seconds to wait for the upstream.
        hooks: event hooks (default: one ``LoggingHook``).
    """

    def __init__(
        self,
        *,
        upstream: str,
        plan: FaultPlan,
        host: str = "127.0.0.1",
        port: int = 0,
        control_prefix: str = "/__chaos",
        hang_max: float = 300.0,
        timeout: float = 60.0,
        hooks: Sequence[EventHook] | None = None,
    ) -> None:
        if not isinstance(plan, FaultPlan):
            raise ConfigurationError(f"ChaosProxy.plan: expected a FaultPlan, got {plan!r}")
        self.upstream = httpx.URL(upstream)
        self.plan = plan
        self.host = host
        self.port = port
        self.control_prefix = control_prefix.rstrip("/")
        self.hang_max = hang_max
        self.timeout = timeout
        self.hooks: tuple[EventHook, ...] = (LoggingHook(),) if hooks is None else tuple(hooks)
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._pens = _AsyncPens(plan, asyncio.sleep)

    @property
    def url(self) -> str:
        """The proxy's base URL (once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- running -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and accept connections in the running event loop."""
        self._client = httpx.AsyncClient(
            base_url=self.upstream,
            timeout=self.timeout,
            trust_env=False,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        """Stop accepting, cut open connections, close the upstream pool."""
        if self._server is not None:
            self._server.close()
        self._pens.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @contextlib.contextmanager
    def running(self) -> Iterator[ChaosProxy]:
        """Serve in a background thread with its own event loop (for tests)."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.aclose())
            loop.close()

        thread = threading.Thread(target=run, name="surefoot-chaos-proxy", daemon=True)
        thread.start()
        started.wait()
        if failure:
            raise failure[0]
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)

    # -- one connection ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await self._read_request(conn, reader)
                if request is None:
                    break
                await self._handle(conn, reader, writer, request, body)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except (_Cut, ConnectionError, h11.RemoteProtocolError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # aclose cancels open connections: ending normally keeps Python 3.11's
            # start_server callback from logging each cancellation as an unhandled error.
            pass
        finally:
            self._connections.discard(task)
            if not writer.transport.is_closing():
                writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request | None, bytes]:
        request = None
        chunks: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(_READ)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return request, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _handle(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        body: bytes,
    ) -> None:
        target = request.target.decode("latin-1")
        path = target.split("?", 1)[0]
        method = request.method.decode("ascii")
        if path == self.control_prefix or path.startswith(self.control_prefix + "/"):
            status, payload, content_type = self._control(method, path, body)
            await _respond(conn, writer, status, [(b"content-type", content_type)], payload)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
        fault = self.plan.decide(method, path, headers)
        if fault is not None:
            self._emit(fault, method, path, headers)
        spec = fault.spec if fault is not None else None
        if isinstance(spec, Reset):
            _reset(writer)
        if isinstance(spec, Hang):
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(_READ), self.hang_max)
            raise _Cut
        if isinstance(spec, Abort):
            assert fault is not None
            extra = [(CHAOS_HEADER.encode(), fault.rule.encode())]
            if spec.retry_after is not None:
                extra.append((b"retry-after", str(max(0, round(spec.retry_after))).encode()))
            made_up = f"fault injected by surefoot chaos rule {fault.rule!r}\n".encode()
            await _respond(conn, writer, spec.status, extra, made_up)
            return
        if isinstance(spec, Delay):
            assert fault is not None
            await asyncio.sleep(fault.delay)
        forwarded = [(k, v) for k, v in request.headers if k.lower() not in _HOP_BY_HOP]
        try:
            if isinstance(spec, Reorder):
                assert fault is not None
                # Entered with nothing awaited since decide(): held in the order decided.
                async with self._pens.turn(fault):
                    answer = await self._forward(method, target, forwarded, body)
            elif isinstance(spec, Duplicate) and spec.concurrent:
                first, _ = await asyncio.gather(
                    self._forward(method, target, forwarded, body),
                    self._forward(method, target, forwarded, body),
                )
                answer = first
            elif isinstance(spec, Duplicate):
                await self._forward(method, target, forwarded, body)
                answer = await self._forward(method, target, forwarded, body)
            else:
                answer = await self._forward(method, target, forwarded, body)
        except httpx.HTTPError:
            gone = b"the upstream could not be reached\n"
            await _respond(conn, writer, 502, [(b"content-type", b"text/plain")], gone)
            return
        status, reason, response_headers, content = answer
        if isinstance(spec, FailAfter):
            assert fault is not None
            if spec.lose == "reset":
                _reset(writer)
            if spec.lose == "502":
                extra = [(CHAOS_HEADER.encode(), fault.rule.encode())]
                await _respond(conn, writer, 502, extra, b"fault injected: answer lost\n")
                return
            # truncate: the full Content-Length, half the body, then the connection closes.
            head = h11.Response(
                status_code=status,
                headers=[*response_headers, (b"content-length", str(len(content)).encode())],
                reason=reason,
            )
            writer.write(conn.send(head) or b"")
            writer.write(conn.send(h11.Data(data=content[: len(content) // 2])) or b"")
            await writer.drain()
            writer.transport.close()
            raise _Cut
        if isinstance(spec, SlowBody):
            await _respond_slowly(
                conn, writer, status, response_headers, content, spec.bytes_per_second, reason
            )
            return
        await _respond(conn, writer, status, response_headers, content, reason)

    async def _forward(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
        assert self._client is not None
        request = self._client.build_request(
            method, self.upstream.join(target), headers=headers, content=body
        )
        response = await self._client.send(request)
        kept = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
        reason = response.extensions.get("reason_phrase", b"")
        return response.status_code, reason, kept, response.content

    def _emit(self, fault: Fault, method: str, path: str, headers: dict[str, str]) -> None:
        if not wanted(self.hooks, FaultInjected):
            return
        lowered = {k.lower(): v for k, v in headers.items()}
        emit(
            self.hooks,
            FaultInjected(
                at=time.time(),
                request_id=lowered.get("x-request-id") or lowered.get("idempotency-key") or "-",
                method=method,
                host=self.upstream.host,
                path=path,
                rule=fault.rule,
                kind=fault.kind,
                detail=_detail(fault),
            ),
        )

    # -- the control API -------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, bytes, bytes]:
        action = path[len(self.control_prefix) :].strip("/")
        try:
            if (method, action) == ("GET", "plan"):
                return _json(200, self._plan_json())
            if (method, action) == ("PUT", "plan"):
                self.plan.replace(_rules_from(body))
                return _json(200, self._plan_json())
            if (method, action) == ("POST", "pause"):
                self.plan.pause()
                return _json(200, self._plan_json())
            if (method, action) == ("POST", "resume"):
                self.plan.resume()
                return _json(200, self._plan_json())
            if (method, action) == ("GET", "counts"):
                counts = {"by_rule": self.plan.counts("rule"), "by_kind": self.plan.counts("kind")}
                return _json(200, counts)
            raise AdminNotFound(what=f"{method} {path}")
        except SurefootError as exc:
            document = problem_body(exc, request_id="-", base=DEFAULT_PROBLEM_BASE)
            return exc.status, document, b"application/problem+json"

    def _plan_json(self) -> dict[str, Any]:
        return {
            "seed": self.plan.seed,
            "paused": self.plan.paused,
            "rules": [rule.to_dict() for rule in self.plan.rules],
        }


def _rules_from(body: bytes) -> tuple[Rule, ...]:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise AdminBadRequest(reason='expected a JSON object {"rules": [...]}') from None
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise AdminBadRequest(reason='expected a JSON object {"rules": [...]}')
    try:
        return FaultPlan.from_dict({"chaos": {"rules": data["rules"]}}, "PUT plan").rules
    except ConfigurationError as exc:
        raise ConfigRejected(problems=str(exc)) from None


def _json(status: int, data: Any) -> tuple[int, bytes, bytes]:
    return status, json.dumps(data).encode(), b"application/json"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed peer or a middlebox does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    raise _Cut


def _phrase(status: int) -> bytes:
    """The standard reason phrase of ``status`` (empty for one without)."""
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


async def _respond(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    reason: bytes | None = None,
) -> None:
    """Send a whole answer: ``reason`` is the upstream's, else the status's own (None)."""
    head = h11.Response(
        status_code=status,
        headers=[*headers, (b"content-length", str(len(body)).encode())],
        reason=_phrase(status) if reason is None else reason,
    )
    writer.write((conn.send(head) or b"") + (conn.send(h11.Data(data=body)) or b""))
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()


async def _respond_slowly(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    rate: float,
    reason: bytes,
) -> None:
    head = h11.Response(
        status_code=status,
        headers=[*headers, (b"content-length", str(len(body)).encode())],
        reason=reason,
    )
    writer.write(conn.send(head) or b"")
    await writer.drain()
    size = max(1, int(rate / 10))  # ten pieces a second
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        await asyncio.sleep(len(piece) / rate)
        writer.write(conn.send(h11.Data(data=piece)) or b"")
        await writer.drain()
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()


class ChaosControl:
    """Drives a running chaos proxy's control API (from pytest, between test steps).

    Example:
        >>> chaos = ChaosControl("http://127.0.0.1:8474")
        >>> chaos.replace([Rule(name="lost", fault=FailAfter(lose="reset"), methods=("POST",))])
        >>> ...  # the step under faults
        >>> chaos.pause(); chaos.counts()["by_kind"]
        {'fail_after': 3}
    """

    def __init__(self, url: str, *, prefix: str = "/__chaos", timeout: float = 10.0) -> None:
        self._client = httpx.Client(base_url=url.rstrip("/") + prefix, timeout=timeout)

    def plan(self) -> dict[str, Any]:
        """The rules in force (as ``[[chaos.rules]]`` tables), the seed, whether paused."""
        return self._call("GET", "/plan")

    def replace(self, rules: Sequence[Rule | dict[str, Any]]) -> dict[str, Any]:
        """Put ``rules`` in force (the generator and the counts go on)."""
        tables = [r.to_dict() if isinstance(r, Rule) else dict(r) for r in rules]
        return self._call("PUT", "/plan", json={"rules": tables})

    def pause(self) -> dict[str, Any]:
        """Inject nothing until ``resume``."""
        return self._call("POST", "/pause")

    def resume(self) -> dict[str, Any]:
        """Inject again."""
        return self._call("POST", "/resume")

    def counts(self) -> dict[str, dict[str, int]]:
        """Faults injected so far: ``{"by_rule": {...}, "by_kind": {...}}``."""
        counts: dict[str, dict[str, int]] = self._call("GET", "/counts")
        return counts

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ChaosControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._client.request(method, path, **kwargs)
        if response.status_code >= 400:
            problem = response.json()
            raise ConfigurationError(f"chaos control {method} {path}: {problem.get('detail')}")
        data: dict[str, Any] = response.json()
        return data
