"""Connection hygiene for the admission port: uvicorn's HTTP/1.1 protocol with a deadline
for a connection's first request.

uvicorn (h11) starts no timer before a connection's first request: a client that opens a
TLS connection, sends half a request head and stops holds ~270 KiB for ever, and a few
hundred of them push a pod past its memory limit (docs/reliability.md). The apiserver sends
its request right after connecting, so a connection with no complete request head after
`FIRST_REQUEST_TIMEOUT` seconds is closed. Idle keep-alive connections after a request are
uvicorn's own `timeout_keep_alive`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

FIRST_REQUEST_TIMEOUT = 10.0


def guarded_protocol(first_request_timeout: float = FIRST_REQUEST_TIMEOUT) -> type[H11Protocol]:
    """An H11Protocol class that closes connections silent past `first_request_timeout`."""

    class GuardedH11Protocol(H11Protocol):
        _first_request_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._first_request_timer = self.loop.call_later(
                first_request_timeout, self._no_first_request
            )

        def _no_first_request(self) -> None:
            # `cycle` is set once a complete request head arrived: from then on the request's
            # own handling (and uvicorn's keep-alive timeout) governs the connection.
            if self.cycle is None and not self.transport.is_closing():
                logger.debug(
                    "dropping a connection with no request after %.0fs", first_request_timeout
                )
                # abort, not close: a TLS close waits (up to 30 s) for the silent peer's
                # close_notify, keeping the socket and its buffers all that time.
                self.transport.abort()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._first_request_timer is not None:
                self._first_request_timer.cancel()
            super().connection_lost(exc)

    return GuardedH11Protocol
