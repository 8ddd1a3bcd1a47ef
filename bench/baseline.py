"""The floor to compare against: a bare ASGI app that only parses the AdmissionReview and
echoes its uid, on uvicorn with the same TLS context as streamgate. By default on the fastest
stack uvicorn offers (httptools + uvloop, streamgate's own default); `--http h11 --loop
asyncio` is the pure-Python stack streamgate served on before (kept for continuity).

    python -m bench.baseline --port 29443 --cert tls.crt --key tls.key [--http h11 --loop asyncio]
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, Literal

import orjson
import uvicorn

from app.certs.tls import server_context
from app.webhook.connections import HTTP_PROTOCOLS
from app.webhook.loops import EVENT_LOOPS, EventLoop

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_HEADERS = [(b"content-type", b"application/json")]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    if scope["method"] == "POST":
        review = orjson.loads(b"".join(chunks))
        out = orjson.dumps(
            {
                "apiVersion": review["apiVersion"],
                "kind": "AdmissionReview",
                "response": {"uid": review["request"]["uid"], "allowed": True},
            }
        )
    else:
        out = b"ok"
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": out})


def config(
    host: str,
    port: int,
    cert: Path,
    key: Path,
    *,
    http: Literal["httptools", "h11"] = "httptools",
    loop: EventLoop = "uvloop",
) -> uvicorn.Config:
    """The same settings `app.webhook.serve.build_server` gives streamgate, on uvicorn's
    own (unguarded) protocol."""
    cfg = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        log_config=None,
        access_log=False,
        lifespan="off",
        http=http,
        loop=loop,
        proxy_headers=False,  # as streamgate (app/webhook/serve.py)
    )
    cfg.load()
    cfg.ssl = server_context(cert, key)
    return cfg


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--http", choices=HTTP_PROTOCOLS, default="httptools")
    p.add_argument("--loop", choices=EVENT_LOOPS, default="uvloop")
    args = p.parse_args()
    uvicorn.Server(
        config(args.host, args.port, args.cert, args.key, http=args.http, loop=args.loop)
    ).run()


if __name__ == "__main__":
    main()
