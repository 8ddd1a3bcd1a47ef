"""The round-robin balancer in front of the replicas: connections go to each upstream in
turn, bytes pass both ways, a bad upstream is refused with its name."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from bench import roundrobin


def test_parse_upstream():
    assert roundrobin.parse_upstream("127.0.0.1:8443") == ("127.0.0.1", 8443)
    for bad in ("127.0.0.1", ":80", "host:http", "host:0", "host:70000"):
        with pytest.raises(ValueError, match=repr(bad)):
            roundrobin.parse_upstream(bad)


def test_bad_upstream_is_one_line_and_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        roundrobin.main(["--port", "1", "--upstream", "nope"])
    assert exit_info.value.code == 2
    assert "upstream 'nope' is not host:port" in capsys.readouterr().err


async def test_connections_go_to_each_upstream_in_turn():
    async def named(name: bytes) -> asyncio.Server:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(name + b":" + await r.readline())
            await w.drain()
            w.close()

        return await asyncio.start_server(handle, "127.0.0.1", 0)

    servers = [await named(b"a"), await named(b"b"), await named(b"c")]
    ups = [("127.0.0.1", s.sockets[0].getsockname()[1]) for s in servers]
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    front = asyncio.create_task(roundrobin.serve(port, ups))
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            await asyncio.sleep(0.02)
        got = []
        for i in range(5):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(f"hello {i}\n".encode())
            await w.drain()
            got.append(await r.read())
            w.close()
        # The first connection (the readiness probe) went to "a".
        assert got == [
            b"b:hello 0\n",
            b"c:hello 1\n",
            b"a:hello 2\n",
            b"b:hello 3\n",
            b"c:hello 4\n",
        ]
    finally:
        front.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await front
        for s in servers:
            s.close()
