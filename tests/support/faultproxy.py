"""A small fault-injecting proxy on 127.0.0.1 in front of a real server (a local registry, the
ACR front, the kube-apiserver), for reliability tests.

    proxy = FaultProxy("127.0.0.1:25000").start()      # HTTP layer: understands requests
    proxy.set("status", status=500)                    # every request now gets a 500
    proxy.set("status", status=429, headers={"Retry-After": "2"}, match=r"/referrers/")
    proxy.set("pass")                                  # forward again
    with proxy.faulted("hang"): ...                    # back to the previous fault afterwards
    proxy.stop()

    tcp = FaultProxy("127.0.0.1:26443", layer="tcp").start()   # opaque bytes (TLS, the API)

Two layers:

* ``http`` (the upstream speaks plain HTTP/1.1): each request is read and, unless a fault
  matches it, forwarded on a new upstream connection with ``Connection: close``; the answer is
  relayed and the client connection closed, so a fault set now applies to the very next
  request. ``match`` is a regex searched in ``"METHOD /path?query"``: only matching requests
  get the fault, the rest pass.
* ``tcp`` (anything, e.g. TLS end to end): bytes are spliced both ways; faults apply to new
  connections, and setting one cuts the open connections (a client would otherwise go on
  using its kept-alive connection).

Faults (``set(kind, ...)``):

==============  =====  =====================================================================
kind            layer  what the client sees
==============  =====  =====================================================================
pass            both   the real server
hang            both   the connection is accepted and read, nothing ever comes back
reset           both   a TCP RST (after the request was read, on the http layer)
trickle         both   http: a complete, valid-looking 200 sent one byte per ``delay``
                       seconds; tcp: the real answer, ``delay`` seconds per 64 bytes
tls-error       both   a TLS handshake with a certificate nobody trusts
partition       tcp    open connections go silent for good (no FIN, no RST: bytes are
                       dropped both ways), new ones hang: a peer that vanished
status          http   ``status`` (500 by default) with ``headers``, e.g. 429 + Retry-After
bad-json        http   200, the right content type, a truncated JSON body
content-type    http   200, ``text/html``
redirect-loop   http   302 to the same URL, forever
huge            http   200, the right content type, a 10 MiB chunked body (no length)
drip            http   200 and headers at once, then one body byte per ``delay`` seconds
stall           http   the real answer, after ``delay`` seconds of silence
==============  =====  =====================================================================

``outage()`` closes the listening socket and cuts every open connection (connection refused
until ``restore()``); ``drop()`` only cuts open connections (a restarted server). A DNS failure
needs no proxy: use :data:`UNRESOLVABLE` as the image's registry host.

Counters: ``connections`` (accepted), ``requests`` (http layer, read), ``faults_served``
(requests or connections that got a fault), ``by_kind``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# RFC 2606: `.invalid` never resolves; the resolver answers at once.
UNRESOLVABLE = "streamgate-no-such-registry.invalid"

HTTP_FAULTS = frozenset(
    {"pass", "hang", "reset", "trickle", "tls-error", "status", "bad-json", "content-type"}
    | {"redirect-loop", "huge", "drip", "stall"}
)
TCP_FAULTS = frozenset({"pass", "hang", "reset", "trickle", "tls-error", "partition"})
TEN_MB = 10 * 1024 * 1024

_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class Fault:
    kind: str = "pass"
    match: re.Pattern[str] | None = None
    status: int = 500
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.3

    def applies(self, request_line: str) -> bool:
        return self.kind != "pass" and (self.match is None or bool(self.match.search(request_line)))


@dataclass(eq=False)
class _Conn:
    writer: asyncio.StreamWriter
    others: list[asyncio.StreamWriter] = field(default_factory=list)
    dead: bool = False  # partitioned: everything is dropped from now on


def _untrusted_context() -> ssl.SSLContext:
    """A server context with a fresh self-signed pair no client trusts."""
    from app.certs.tls import issue_self_signed

    directory = Path(tempfile.mkdtemp(prefix="faultproxy-"))
    files = issue_self_signed(directory, ["127.0.0.1", "localhost"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    return context


def _content_type(path: str) -> str:
    return _OCI_INDEX if "/referrers/" in path else _OCI_MANIFEST


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(self, upstream: str, *, layer: str = "http", port: int = 0) -> None:
        if layer not in ("http", "tcp"):
            raise ValueError(f"layer must be http or tcp, not {layer!r}")
        host, _, port_text = upstream.rpartition(":")
        self.upstream = (host, int(port_text))
        self.layer = layer
        self.fault = Fault()
        self.connections = 0
        self.requests = 0
        self.faults_served = 0
        self.by_kind: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._tls: ssl.SSLContext | None = None

    # ---- control (from any thread) ---------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        """host:port to use as the registry (or API server) address."""
        return f"127.0.0.1:{self._port}"

    def start(self) -> FaultProxy:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self._listen())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="faultproxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set(
        self,
        kind: str,
        *,
        match: str | None = None,
        status: int = 500,
        headers: dict[str, str] | None = None,
        delay: float = 0.3,
    ) -> None:
        allowed = HTTP_FAULTS if self.layer == "http" else TCP_FAULTS
        if kind not in allowed:
            raise ValueError(f"{kind!r} is not a fault of the {self.layer} layer")
        if kind == "tls-error" and self._tls is None:
            self._tls = _untrusted_context()
        was, self.fault = (
            self.fault,
            Fault(
                kind,
                re.compile(match) if match else None,
                status,
                tuple((headers or {}).items()),
                delay,
            ),
        )
        cuts = self.layer == "tcp" and kind not in ("pass", "partition") and was.kind == "pass"
        if cuts and self._loop:
            self.drop()

    @contextlib.contextmanager
    def faulted(self, kind: str, **kw: Any) -> Iterator[FaultProxy]:
        before = self.fault
        self.set(kind, **kw)
        try:
            yield self
        finally:
            self.fault = before

    def outage(self) -> None:
        """Connection refused from now on, and every open connection cut."""
        self._call(self._close_listener)
        self.drop()

    def restore(self) -> None:
        self._call(self._listen)

    def drop(self) -> None:
        """Cut every open connection with a reset (a server restart, seen from the client)."""
        self._call(self._drop_all)

    def _call(self, coro_fn: Any) -> None:
        assert self._loop is not None, "not started"
        asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result(10)

    def _count(self, kind: str) -> None:
        with self._lock:
            self.faults_served += 1
            self.by_kind[kind] += 1

    # ---- the loop ------------------------------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, sock=sock, backlog=128)

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _drop_all(self) -> None:
        for conn in list(self._conns):
            for writer in (conn.writer, *conn.others):
                _rst(writer)
        self._conns.clear()

    async def _shutdown(self) -> None:
        await self._close_listener()
        await self._drop_all()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        conn = _Conn(writer)
        self._conns.add(conn)
        try:
            if self.layer == "tcp":
                await self._tcp(reader, writer, conn)
            else:
                await self._http(reader, writer, conn)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
            pass
        except asyncio.CancelledError:  # the proxy is stopping
            pass
        finally:
            self._conns.discard(conn)
            for w in (writer, *conn.others):
                w.close()

    # ---- tcp layer -----------------------------------------------------------------------------

    async def _tcp(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn
    ) -> None:
        fault = self.fault
        if fault.kind != "pass":
            self._count(fault.kind)
        if fault.kind in ("hang", "partition"):
            while await reader.read(65536):
                pass
            return
        if fault.kind == "reset":
            _rst(writer)
            return
        if fault.kind == "tls-error":
            await self._bad_handshake(writer)
            return
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        conn.others.append(up_writer)
        slow = fault.delay if fault.kind == "trickle" else 0.0
        await asyncio.gather(
            self._pipe(reader, up_writer, 0.0, conn), self._pipe(up_reader, writer, slow, conn)
        )

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, slow: float, conn: _Conn
    ) -> None:
        try:
            while data := await src.read(64 if slow else 65536):
                if conn.dead or self.fault.kind == "partition":
                    conn.dead = True
                    continue
                dst.write(data)
                await dst.drain()
                if slow:
                    await asyncio.sleep(slow)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError):
                if dst.can_write_eof():
                    dst.write_eof()

    async def _bad_handshake(self, writer: asyncio.StreamWriter) -> None:
        assert self._tls is not None
        with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):
            await writer.start_tls(self._tls, ssl_handshake_timeout=5)
            await asyncio.sleep(5)  # a client that accepted it anyway waits for nothing

    # ---- http layer ----------------------------------------------------------------------------

    async def _http(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn
    ) -> None:
        fault = self.fault
        if fault.kind == "tls-error":
            self._count(fault.kind)
            await self._bad_handshake(writer)
            return
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = [*lines[0].split(" ", 2), "", ""][:3]
        headers = [line.split(":", 1) for line in lines[1:] if ":" in line]
        length = next((int(v) for k, v in headers if k.strip().lower() == "content-length"), 0)
        body = await reader.readexactly(length) if length else b""
        with self._lock:
            self.requests += 1
        fault = self.fault
        if fault.applies(f"{method} {path}"):
            self._count(fault.kind)
            if fault.kind != "stall":
                await self._http_fault(fault, method, path, reader, writer)
                return
            await asyncio.sleep(fault.delay)
        await self._forward(head, body, writer, conn)

    async def _forward(
        self, head: bytes, body: bytes, writer: asyncio.StreamWriter, conn: _Conn
    ) -> None:
        lines = head.decode("latin-1").split("\r\n")
        kept = [
            line
            for line in lines[1:]
            if line and line.split(":", 1)[0].strip().lower() not in ("connection", "keep-alive")
        ]
        request = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1")
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        conn.others.append(up_writer)
        up_writer.write(request + body)
        await up_writer.drain()
        while data := await up_reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def _http_fault(
        self,
        fault: Fault,
        method: str,
        path: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        kind = fault.kind
        ctype = _content_type(path)
        if kind == "hang":
            while await reader.read(65536):
                pass
            return
        if kind == "reset":
            _rst(writer)
            return
        if kind == "status":
            await _answer(writer, fault.status, dict(fault.headers), b"")
        elif kind == "bad-json":
            await _answer(writer, 200, {"Content-Type": ctype}, b'{"manifests": [{"digest": ')
        elif kind == "content-type":
            await _answer(writer, 200, {"Content-Type": "text/html"}, b"<html>maintenance</html>")
        elif kind == "redirect-loop":
            await _answer(writer, 302, {"Location": path}, b"")
        elif kind == "huge":
            await self._huge(writer, ctype, head_only=method == "HEAD")
        elif kind == "trickle":
            body = b'{"schemaVersion": 2, "manifests": []}'
            raw = _response(200, {"Content-Type": ctype}, body)
            for i in range(len(raw)):
                writer.write(raw[i : i + 1])
                await writer.drain()
                await asyncio.sleep(fault.delay)
        elif kind == "drip":
            body = b" " * 4096
            writer.write(_response(200, {"Content-Type": ctype}, b"", length=len(body)))
            for i in range(len(body)):
                writer.write(body[i : i + 1])
                await writer.drain()
                await asyncio.sleep(fault.delay)
        await writer.drain()

    @staticmethod
    async def _huge(writer: asyncio.StreamWriter, ctype: str, *, head_only: bool) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n"
        writer.write((head + "Connection: close\r\n\r\n").encode())
        if head_only:
            return
        entry = b'{"mediaType":"x","digest":"sha256:' + b"b" * 64 + b'"},'
        piece = b'{"manifests": [' + entry * (64 * 1024 // len(entry))
        sent = 0
        while sent < TEN_MB:
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
            sent += len(piece)
            piece = entry * (64 * 1024 // len(entry))
        writer.write(b"0\r\n\r\n")


def _response(
    status: int, headers: dict[str, str], body: bytes, *, length: int | None = None
) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body) if length is None else length}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _answer(
    writer: asyncio.StreamWriter, status: int, headers: dict[str, str], body: bytes
) -> None:
    writer.write(_response(status, headers, body))
    await writer.drain()


_REASONS = {
    200: "OK",
    302: "Found",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    """Polls `predicate` until true or `timeout` seconds; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
