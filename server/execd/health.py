"""`GET /ping`: 200 with an empty body and `Content-Length: 0` (the JS SDK parses the body
as JSON and accepts only an empty one that says so)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

router = APIRouter(tags=["health"])


@router.get("/ping")
async def ping() -> Response:
    return Response(status_code=200, headers={"content-length": "0"})
