"""A lean HTTP/1.1 keep-alive client on asyncio streams, for the fleet simulator.

httpx spends a few hundred microseconds of CPU per request (httpcore's pool, anyio, header
models); at 10,000 simulated hosts in one process that is the simulator's whole budget.
This client does only what the agent protocol needs: JSON bodies, ``Content-Length`` or
chunked answers, keep-alive connections reused per origin (a pool per simulated host, so a
waiting long-poll holds one connection and a heartbeat takes another, as a real agent's
httpx pool does), a deadline per request. The bodies and answers stay the agent's own
pydantic wire models (``compute_agent.client``); only the transport is lean.

A connection idle longer than ``keepalive_expiry`` is closed before reuse (keep it below
the API's keep-alive timeout, ``api.server.KEEP_ALIVE_SECONDS``); a request sent on a reused
connection that the server closed meanwhile (nothing answered) is sent once more on a new
connection, as browsers do: the agent's requests are all safe to repeat except enrollment,
which a simulated host sends on a connection of its own.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit


class TransportError(Exception):
    """No answer: the connection failed, closed early or the deadline passed."""


class Headers(dict[str, str]):
    """Answer headers by lower-cased name; ``get`` ignores case, as httpx's does."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


class Response:
    """An answer: the few parts of ``httpx.Response`` the simulator and the agent's retry
    rules (``compute_agent.client.retry_after``) read."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: Headers, content: bytes) -> None:
        self.status_code, self.headers, self.content = status_code, headers, content

    def json(self) -> Any:
        """The body as JSON; raises ValueError when it is not."""
        return jsonlib.loads(self.content)

    @property
    def text(self) -> str:
        """The body as text."""
        return self.content.decode("utf-8", "replace")


class _Stale(Exception):
    """A reused connection closed before any answer: safe to send again on a new one."""


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.idle_since = time.monotonic()

    def close(self) -> None:
        self.writer.close()


class Client:
    """Keep-alive connections to one or more origins, and requests over them."""

    def __init__(self, *, timeout: float = 30.0, keepalive_expiry: float = 25.0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.timeout = timeout
        self.keepalive_expiry = keepalive_expiry
        self._tls = tls
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}

    async def aclose(self) -> None:
        """Close every idle connection (those in use close when their request ends)."""
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    async def request(self, method: str, url: str, *, params: Mapping[str, Any] | None = None,
                      json: Any = None, headers: Mapping[str, str] | None = None,
                      timeout: float | None = None) -> Response:
        """Send one request and read its answer; raises TransportError."""
        parts = urlsplit(url)
        scheme = parts.scheme
        host = parts.hostname or "localhost"
        port = parts.port or (443 if scheme == "https" else 80)
        target = parts.path or "/"
        query = parts.query
        if params:
            query = f"{query}&{urlencode(params)}" if query else urlencode(params)
        if query:
            target = f"{target}?{query}"
        body = b"" if json is None else jsonlib.dumps(json, separators=(",", ":")).encode()
        head = [f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"]
        if json is not None:
            head.append("Content-Type: application/json\r\n")
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body)}\r\n")
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}\r\n")
        head.append("\r\n")
        data = "".join(head).encode("latin-1") + body
        origin = (scheme, host, port)
        try:
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                conn = self._reuse(origin)
                if conn is not None:
                    try:
                        return await self._exchange(origin, conn, data, method)
                    except _Stale:
                        pass
                conn = await self._connect(origin)
                try:
                    return await self._exchange(origin, conn, data, method)
                except _Stale as exc:
                    raise TransportError("server closed the connection") from exc
        except TimeoutError as exc:
            raise TransportError(f"no answer from {origin[1]}:{origin[2]} in time") from exc

    def _reuse(self, origin: tuple[str, str, int]) -> _Connection | None:
        conns = self._idle.get(origin)
        oldest_usable = time.monotonic() - self.keepalive_expiry
        while conns:
            conn = conns.pop()
            if conn.idle_since >= oldest_usable and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    async def _connect(self, origin: tuple[str, str, int]) -> _Connection:
        scheme, host, port = origin
        tls = (self._tls or ssl.create_default_context()) if scheme == "https" else None
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=tls,
                                                           limit=1 << 20)
        except OSError as exc:
            raise TransportError(f"cannot connect to {host}:{port}: {exc}") from exc
        return _Connection(reader, writer)

    async def _exchange(self, origin: tuple[str, str, int], conn: _Connection, data: bytes,
                        method: str) -> Response:
        """One request and answer on ``conn``; the connection goes back to the pool when
        the answer allows it. Raises _Stale (nothing answered) or TransportError."""
        answered = False
        try:
            conn.writer.write(data)
            await conn.writer.drain()
            try:
                head = await conn.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise _Stale from exc
                raise
            answered = True
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = Headers()
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                content = b""
            elif "content-length" in headers:
                content = await conn.reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                content = await self._chunks(conn.reader)
            else:  # the body runs until the server closes
                content = await conn.reader.read()
                headers["connection"] = "close"
        except _Stale:
            conn.close()
            raise
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, IndexError) as exc:
            conn.close()
            if not answered and isinstance(exc, ConnectionResetError | BrokenPipeError):
                raise _Stale from exc
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:  # cancelled or out of time mid-answer: the stream is unusable
            conn.close()
            raise
        if headers.get("connection", "").lower() == "close":
            conn.close()
        else:
            conn.idle_since = time.monotonic()
            self._idle.setdefault(origin, []).append(conn)
        return Response(status, headers, content)

    @staticmethod
    async def _chunks(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
