"""How a worker puts one signed POST on the wire: with aiohttp when it is installed
(``surefoot[outbox]``: about five times the requests per second of httpx on this kind of
load, see ``docs/performance.md``), else with an httpx transport (also what tests hand in).

Both do the same, and nothing more: no redirects, no cookies, no proxies from the
environment, the address already checked by the worker (its host name kept for ``Host``
and for TLS), and at most ``MAX_ANSWER`` bytes of the answer read, so a consumer cannot hold
a worker or its memory with an endless body (a longer answer closes the connection).
A transport failure is a ``SendError`` (its text names the error, never the body); the
caller bounds the time with ``asyncio.timeout``.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Protocol

import httpx

__all__ = ["MAX_ANSWER", "SendError", "Sender", "default_sender", "HttpxSender"]

#: Bytes of an answer read at most (the status and headers are what count).
MAX_ANSWER = 64 * 1024


class SendError(Exception):
    """The request got no answer: connection refused or reset, a protocol error..."""


class Sender(Protocol):
    async def post(
        self, url: httpx.URL, headers: dict[str, str], body: bytes, server_hostname: str | None
    ) -> tuple[int, str | None]:
        """POST ``body``: the answer's status and its ``Retry-After`` (None if absent)."""
        ...

    async def aclose(self) -> None: ...


class HttpxSender:
    """Through an httpx transport, called directly (no client: no redirects, no cookies)."""

    def __init__(self, transport: httpx.AsyncBaseTransport, timeout: float) -> None:
        self._transport = transport
        self._timeouts = httpx.Timeout(timeout).as_dict()

    async def post(
        self, url: httpx.URL, headers: dict[str, str], body: bytes, server_hostname: str | None
    ) -> tuple[int, str | None]:
        extensions: dict[str, Any] = {"timeout": self._timeouts}
        if server_hostname is not None:
            extensions["sni_hostname"] = server_hostname
        request = httpx.Request("POST", url, content=body, headers=headers, extensions=extensions)
        try:
            response = await self._transport.handle_async_request(request)
            try:
                read = 0
                stream = response.stream
                assert isinstance(stream, httpx.AsyncByteStream)
                async for chunk in stream:
                    read += len(chunk)
                    if read > MAX_ANSWER:
                        break
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            raise TimeoutError from None
        except (httpx.HTTPError, OSError) as exc:
            raise SendError(f"{type(exc).__name__}: {exc}") from None
        return response.status_code, response.headers.get("retry-after")

    async def aclose(self) -> None:
        await self._transport.aclose()


class AiohttpSender:
    """Through an ``aiohttp.ClientSession``, made on first use in the worker's loop."""

    def __init__(self, max_connections: int) -> None:
        self._max_connections = max_connections
        self._session: Any = None

    async def post(
        self, url: httpx.URL, headers: dict[str, str], body: bytes, server_hostname: str | None
    ) -> tuple[int, str | None]:
        import aiohttp
        import yarl

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, use_dns_cache=False),
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=False,
                trust_env=False,
                skip_auto_headers=("Accept", "Accept-Encoding"),
            )
        try:
            async with self._session.post(
                yarl.URL(str(url), encoded=True),
                data=body,
                headers=headers,
                allow_redirects=False,
                server_hostname=server_hostname,
            ) as response:
                await response.content.read(MAX_ANSWER)
                return response.status, response.headers.get("Retry-After")
        except aiohttp.ServerTimeoutError:
            raise TimeoutError from None
        except (aiohttp.ClientError, OSError) as exc:
            raise SendError(f"{type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def default_sender(max_connections: int, timeout: float) -> Sender:
    """aiohttp's when it is installed, else httpx's."""
    if importlib.util.find_spec("aiohttp") is not None:
        return AiohttpSender(max_connections)
    return HttpxSender(
        httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=max_connections), trust_env=False
        ),
        timeout,
    )
