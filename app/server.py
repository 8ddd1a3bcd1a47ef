"""The HTTP edge: FastAPI routes for /validate, /mutate, /healthz and /readyz.

Bodies are read raw (bounded), parsed by `app.review`, judged by `app.admission`. A malformed
review is a 400 with its reason, an oversized one a 413; nothing a client sends becomes a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from fastapi import FastAPI, Request, Response

from app.admission import Admission, Endpoint
from app.review import ReviewError, parse_review, render

logger = logging.getLogger(__name__)

# The apiserver caps a request body at 3 MiB; an AdmissionReview carries the object and, on
# UPDATE, the old object too, plus the envelope. Anything past this is not from an apiserver.
MAX_BODY = 7 * 1024 * 1024

_JSON = "application/json"


class BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, reason: str) -> Response:
    return Response(orjson.dumps({"error": reason}), status_code=status, media_type=_JSON)


def create_app(
    admission: Admission,
    *,
    ready: Callable[[], tuple[bool, str]] = lambda: (True, "ok"),
    max_body: int = MAX_BODY,
    on_bad_request: Callable[[str, int], None] | None = None,
) -> FastAPI:
    app = FastAPI(title="streamgate", docs_url=None, redoc_url=None, openapi_url=None)

    async def handle(request: Request, endpoint: Endpoint) -> Response:
        try:
            body = await _read_body(request, max_body)
        except BodyTooLarge:
            if on_bad_request:
                on_bad_request(endpoint, 413)
            return _error(413, f"body larger than {max_body} bytes: not an AdmissionReview")
        try:
            review = parse_review(body)
            answer = await admission.answer(review, endpoint)
        except ReviewError as err:
            logger.info("bad review on /%s: %s", endpoint, err)
            if on_bad_request:
                on_bad_request(endpoint, 400)
            return _error(400, str(err))
        return Response(render(review, answer), media_type=_JSON)

    @app.post("/validate")
    async def validate(request: Request) -> Response:
        return await handle(request, "validate")

    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        return await handle(request, "mutate")

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response("ok", media_type="text/plain")

    @app.get("/readyz")
    async def readyz() -> Response:
        ok, why = ready()
        return Response(why, status_code=200 if ok else 503, media_type="text/plain")

    return app
