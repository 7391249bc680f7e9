"""ASGI guards in front of ``refseg serve``'s app: request bodies bounded in bytes while they
stream, and requests from other sites refused (``Host`` and ``Origin`` checks).

They are plain ASGI middlewares, so they see the body as it arrives: a chunked upload with
no ``Content-Length`` is cut off at the limit instead of being spooled to disk in full.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})


async def send_json_error(send: Send, status: int, message: str) -> None:
    """A complete ``{"error": message}`` response."""
    body = json.dumps({"error": message}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class BodyLimitMiddleware:
    """413 once a request body exceeds ``limit`` bytes: from ``Content-Length`` before reading,
    else while the body streams (the app never sees more than ``limit`` bytes).

    Args:
        message: the error text for a body of (at least) the given size.
    """

    def __init__(self, app: ASGIApp, limit: int, message: Callable[[int], str]) -> None:
        self.app = app
        self.limit = limit
        self.message = message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.limit:
            await send_json_error(send, 413, self.message(int(length)))
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # An HTTPException passes through FastAPI's body parsing unchanged.
                    raise HTTPException(413, self.message(received))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:
            if started or exc.status_code != 413:
                raise
            await send_json_error(send, 413, str(exc.detail))


def _hostname(value: str) -> str:
    """The host part of a ``Host`` header or an origin's netloc, lower-case, no brackets."""
    return (urlsplit(f"//{value}").hostname or "").lower()


def allowed_host_names(bind_host: str, origins: Iterable[str] = ()) -> frozenset[str] | None:
    """Host names a request may address: the bind address (every loopback name when it is
    loopback) and the hosts of ``origins``; ``None`` (no check) for a wildcard bind or ``*``."""
    origins = list(origins)
    if "*" in origins or bind_host in WILDCARD_ADDRESSES:
        return None
    names = {bind_host.strip("[]").lower()}
    try:
        if ipaddress.ip_address(bind_host.strip("[]")).is_loopback:
            names |= LOOPBACK_NAMES
    except ValueError:
        if bind_host.lower() == "localhost":
            names |= LOOPBACK_NAMES
    names |= {_hostname(urlsplit(o).netloc) for o in origins}
    return frozenset(n for n in names if n)


class SameSiteMiddleware:
    """403 for requests another site could have sent: a ``Host`` that is not an allowed name
    (DNS rebinding) or an ``Origin`` other than the server's own or an allowed one (a page on
    another site posting to a local service).

    Args:
        hosts: allowed ``Host`` names (``None``: any).
        origins: extra allowed origins such as ``https://app.example`` (``*``: any).
    """

    def __init__(
        self, app: ASGIApp, hosts: Iterable[str] | None, origins: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.hosts = None if hosts is None else frozenset(h.lower() for h in hosts)
        self.origins = frozenset(o.rstrip("/").lower() for o in origins)

    def problem(self, scope: Scope) -> str | None:
        """Why the request is refused, or ``None``."""
        host = _header(scope, b"host") or ""
        if self.hosts is not None and _hostname(host) not in self.hosts:
            return (
                f"requests for host {host!r} are refused: this server answers to "
                f"{', '.join(sorted(self.hosts))} (see refseg serve --allow-origin)"
            )
        origin = _header(scope, b"origin")
        if origin is None or "*" in self.origins:
            return None
        origin = origin.rstrip("/").lower()
        parts = urlsplit(origin)
        if parts.netloc and parts.netloc == host.lower() or origin in self.origins:
            return None
        return (
            f"cross-site request from origin {origin!r} refused; allow it with "
            "refseg serve --allow-origin ORIGIN"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self.problem(scope)
            if problem is not None:
                await send_json_error(send, 403, problem)
                return
        await self.app(scope, receive, send)
