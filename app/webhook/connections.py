"""Connection hygiene for the admission port: uvicorn's HTTP/1.1 protocol (httptools by
default, h11 where the C extension is not available) with a deadline for a connection's
first request.

uvicorn starts no timer before a connection's first request (neither protocol does): a
client that opens a TLS connection, sends half a request head and stops holds ~270 KiB for
ever, and a few hundred of them push a pod past its memory limit (docs/reliability.md). The
apiserver sends its request right after connecting, so a connection with no complete
request head after `FIRST_REQUEST_TIMEOUT` seconds is closed. Idle keep-alive connections
after a request are uvicorn's own `timeout_keep_alive`; the connection limit is uvicorn's
`limit_concurrency` (both protocols answer 503 past it).

With client authentication (`serve --client-ca`), a connection that presented no verified
client certificate may only ask for the probes (`OPEN_PATHS`): anything else is answered 403
without reaching the app. (A certificate the CA did not sign already failed the handshake.)
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol, cast

logger = logging.getLogger(__name__)

FIRST_REQUEST_TIMEOUT = 10.0
# What the kubelet's probes ask for: served without a client certificate.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
NO_CLIENT_CERT = (
    "streamgate: this webhook requires a client certificate signed by its --client-ca for "
    "everything but /healthz and /readyz; give the apiserver an admission kubeconfig with one "
    "(docs/security.md)"
)


def probes_only(app: Any) -> Any:
    """An ASGI app that passes the probes to `app` and answers everything else 403."""
    body = json.dumps({"error": NO_CLIENT_CERT}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return guarded


# The HTTP/1.1 parsers `streamgate serve --http` offers: httptools (C, llhttp) is the fast
# one and the default; h11 is pure Python, for platforms without the C extension.
HTTP_PROTOCOLS = ("httptools", "h11")


class _Connection(Protocol):
    """What the guard reads of uvicorn's protocol objects (the same on both)."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: object | None  # set once a complete request head arrived
    app: Any  # the ASGI app this connection's requests go to


class _FirstRequestGuard(asyncio.Protocol):
    """Mixed in before a uvicorn protocol: aborts a connection silent past the deadline."""

    first_request_timeout: float = FIRST_REQUEST_TIMEOUT
    client_auth: bool = False
    _first_request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        conn = cast(_Connection, self)
        # The TLS handshake is done by now: a peer certificate, if any, was verified.
        if self.client_auth and not transport.get_extra_info("peercert"):
            conn.app = probes_only(conn.app)
        self._first_request_timer = conn.loop.call_later(
            self.first_request_timeout, self._no_first_request
        )

    def _no_first_request(self) -> None:
        # `cycle` is set once a complete request head arrived: from then on the request's own
        # handling (and uvicorn's keep-alive timeout) governs the connection.
        conn = cast(_Connection, self)
        if conn.cycle is None and not conn.transport.is_closing():
            logger.debug(
                "dropping a connection with no request after %.0fs", self.first_request_timeout
            )
            # abort, not close: a TLS close waits (up to 30 s) for the silent peer's
            # close_notify, keeping the socket and its buffers all that time.
            conn.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._first_request_timer is not None:
            self._first_request_timer.cancel()
        super().connection_lost(exc)


class ProtocolUnavailable(RuntimeError):
    """The chosen HTTP protocol's library is not installed."""


def guarded_protocol(
    http: str = "httptools",
    first_request_timeout: float = FIRST_REQUEST_TIMEOUT,
    *,
    client_auth: bool = False,
) -> type[asyncio.Protocol]:
    """uvicorn's `http` protocol class, closing connections silent past the deadline and,
    with `client_auth`, serving only the probes to connections without a client certificate.

    Each base is imported only when chosen: without httptools installed, `h11` still works.
    """
    timeout, authenticate = first_request_timeout, client_auth
    if http == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol

        class GuardedH11Protocol(_FirstRequestGuard, H11Protocol):
            first_request_timeout = timeout
            client_auth = authenticate

        return GuardedH11Protocol
    if http == "httptools":
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        except ImportError as err:
            raise ProtocolUnavailable(
                f"the httptools HTTP parser is not installed ({err}); install it "
                "(pip install httptools) or serve with --http h11"
            ) from err

        class GuardedHttpToolsProtocol(_FirstRequestGuard, HttpToolsProtocol):
            first_request_timeout = timeout
            client_auth = authenticate

        return GuardedHttpToolsProtocol
    raise ValueError(f"unknown HTTP protocol {http!r}: one of {', '.join(HTTP_PROTOCOLS)}")
