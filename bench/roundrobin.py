"""A TCP load balancer for the replicas section: each new connection goes to the next
upstream in turn (what a Service's round-robin spread does to the apiserver's connections),
bytes pass through untouched (TLS ends at the replicas).

    python -m bench.roundrobin --port 29600 --upstream 127.0.0.1:29601 --upstream 127.0.0.1:29602
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
from collections.abc import Iterator


def parse_upstream(text: str) -> tuple[str, int]:
    """host:port -> (host, port); a bad one is a ValueError naming it."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"upstream {text!r} is not host:port")
    return host, int(port)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(port: int, upstreams: list[tuple[str, int]]) -> None:
    turn: Iterator[tuple[str, int]] = itertools.cycle(upstreams)

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        host, up_port = next(turn)
        try:
            up_r, up_w = await asyncio.open_connection(host, up_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_copy(client_r, up_w), _copy(up_r, client_w), return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.roundrobin")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", action="append", required=True, help="host:port, repeated")
    args = p.parse_args(argv)
    try:
        upstreams = [parse_upstream(u) for u in args.upstream]
    except ValueError as err:
        p.error(str(err))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, upstreams))


if __name__ == "__main__":
    main()
