"""Routes the newest SDKs call that upstream's execd does not serve: a clear 501 naming the
feature, instead of a 404 that reads like a typo in the URL.

* `/v1/isolated/…` (isolated sessions: `sandbox.isolated_sessions` in Python 1.1.1,
  `isolatedSessions` in JS 0.1.11);
* `/v1/filesystem/{uid}/{gid}/…` (`files_with_identity(uid, gid)` in Python 1.1.1).
"""

from __future__ import annotations

from fastapi import APIRouter

from opensandbox_emulator.server.execd.errors import NotSupported

router = APIRouter(tags=["unsupported"])

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@router.api_route("/v1/isolated/{rest:path}", methods=METHODS)
async def isolated_sessions(rest: str) -> None:
    raise NotSupported("isolated sessions (/v1/isolated/…) are not supported: upstream's "
                       "execd has no such routes; use bash sessions (POST /session) or "
                       "commands instead.")


@router.api_route("/v1/filesystem/{uid}/{gid}/{rest:path}", methods=METHODS)
async def files_with_identity(uid: str, gid: str, rest: str) -> None:
    raise NotSupported("file operations as another identity (/v1/filesystem/{uid}/{gid}/…, "
                       "files_with_identity) are not supported: upstream's execd has no such "
                       "routes; use the plain /files and /directories routes, and "
                       "/files/permissions to set owners.")
