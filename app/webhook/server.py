"""The HTTP edge: /validate and /mutate (or /admit, both in one call), /healthz and /readyz.

Bodies are read raw (bounded), parsed by `app.webhook.review`, judged by
`app.webhook.admission`. A malformed review is a 400 with its reason, an oversized one a 413;
nothing a client sends becomes a 500.

`POST /validate` and `POST /mutate` are answered straight from the ASGI callable: every Pod
and workload in the cluster waits on them, and FastAPI's middleware and routing layers cost
about as much as the admission itself (docs/benchmarks.md). Everything else (the probes, a
wrong method or path) goes to a FastAPI app, which answers as FastAPI does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from app.webhook.admission import Admission, Endpoint
from app.webhook.review import ReviewError, parse_review, render

logger = logging.getLogger(__name__)

# The apiserver caps a request body at 3 MiB; an AdmissionReview carries the object and, on
# UPDATE, the old object too, plus the envelope. Anything past this is not from an apiserver.
MAX_BODY = 7 * 1024 * 1024

_JSON = "application/json"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ENDPOINTS: dict[str, Endpoint] = {"/validate": "validate", "/mutate": "mutate", "/admit": "admit"}


class BodyTooLarge(Exception):
    pass


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = _declared_length(scope)
    if declared is not None and declared > limit:
        raise BodyTooLarge
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):  # the usual case: one message
        if len(body) > limit:
            raise BodyTooLarge
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _send(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _error_body(reason: str) -> bytes:
    return orjson.dumps({"error": reason})


class AdmissionApp:
    """The ASGI application: admission on the fast path, the rest through FastAPI."""

    def __init__(
        self,
        admission: Admission,
        fallback: FastAPI,
        *,
        max_body: int = MAX_BODY,
        on_bad_request: Callable[[str, int], None] | None = None,
    ) -> None:
        self.admission = admission
        self.fallback = fallback
        self.max_body = max_body
        self.on_bad_request = on_bad_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = _ENDPOINTS.get(scope["path"])
            if endpoint is not None:
                status, body = await self.handle(scope, receive, endpoint)
                await _send(send, status, body)
                return
        await self.fallback(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, endpoint: Endpoint) -> tuple[int, bytes]:
        try:
            body = await _read_body(scope, receive, self.max_body)
        except BodyTooLarge:
            if self.on_bad_request:
                self.on_bad_request(endpoint, 413)
            reason = f"body larger than {self.max_body} bytes: not an AdmissionReview"
            return 413, _error_body(reason)
        try:
            review = parse_review(body)
        except ReviewError as err:
            logger.info("bad review on /%s: %s", endpoint, err)
            return self._bad_request(endpoint, str(err))
        except Exception:  # a parser bug must not become a 500: the body is what broke it
            logger.exception("review on /%s could not be parsed", endpoint)
            return self._bad_request(endpoint, "the review could not be parsed")
        try:
            answer = await self.admission.answer(review, endpoint)
        except ReviewError as err:  # a judged kind without a pod spec
            logger.info("bad review on /%s: %s", endpoint, err)
            return self._bad_request(endpoint, str(err))
        return 200, render(review, answer)

    def _bad_request(self, endpoint: Endpoint, reason: str) -> tuple[int, bytes]:
        if self.on_bad_request:
            self.on_bad_request(endpoint, 400)
        return 400, _error_body(reason)


def create_app(
    admission: Admission,
    *,
    ready: Callable[[], tuple[bool, str]] = lambda: (True, "ok"),
    max_body: int = MAX_BODY,
    on_bad_request: Callable[[str, int], None] | None = None,
) -> AdmissionApp:
    app = FastAPI(title="streamgate", docs_url=None, redoc_url=None, openapi_url=None)
    edge = AdmissionApp(admission, app, max_body=max_body, on_bad_request=on_bad_request)

    # Reached only when the fast path did not answer (it always does for these two): kept so
    # that the routes are listed and a GET gets FastAPI's 405.
    @app.post("/validate")
    async def validate(request: Request) -> Response:
        status, body = await edge.handle(request.scope, request.receive, "validate")
        return Response(body, status_code=status, media_type=_JSON)

    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        status, body = await edge.handle(request.scope, request.receive, "mutate")
        return Response(body, status_code=status, media_type=_JSON)

    @app.post("/admit")
    async def admit(request: Request) -> Response:
        status, body = await edge.handle(request.scope, request.receive, "admit")
        return Response(body, status_code=status, media_type=_JSON)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response("ok", media_type="text/plain")

    @app.get("/readyz")
    async def readyz() -> Response:
        ok, why = ready()
        return Response(why, status_code=200 if ok else 503, media_type="text/plain")

    return edge
