"""What every file route shares: the sandbox's filesystem, the octal-digits mode convention
and the FileInfo body. (Runtime failures become API errors in the app's one handler.)"""

from __future__ import annotations

from typing import Any

from fastapi import Depends
from starlette.responses import Response

from opensandbox_emulator.runtimes.filesystem import ChangeOwnership, FileInfo, SandboxFilesystem
from opensandbox_emulator.server.clock import rfc3339_nano
from opensandbox_emulator.server.errors import ApiError
from opensandbox_emulator.server.execd.errors import InvalidRequestBody
from opensandbox_emulator.server.execd.sandbox import ExecdSandbox, current_sandbox


async def sandbox_files(sandbox: ExecdSandbox = Depends(current_sandbox)) -> SandboxFilesystem:  # noqa: B008
    """FastAPI dependency: the filesystem of the sandbox this request is for."""
    return sandbox.runtime.filesystem(sandbox.sandbox_id)


def empty() -> Response:
    """Upstream's "success, nothing to say": 200 with `Content-Length: 0`."""
    return Response(status_code=200)


def mode_from_digits(value: int | None, *, error: type[ApiError] = InvalidRequestBody
                     ) -> int | None:
    """`755` → 0o755. 0 or None means "leave the mode alone"."""
    if not value:
        return None
    digits = str(value)
    if value < 0 or len(digits) > 4 or any(c not in "01234567" for c in digits):
        raise error(f"mode {value} is not a permission written in octal digits; use values "
                    "such as 644, 755 or 1777")
    return int(digits, 8)


def mode_to_digits(mode: int) -> int:
    """0o755 → 755."""
    return int(f"{mode:o}")


def ownership(mode: int | None, owner: str | None, group: str | None, *,
              error: type[ApiError] = InvalidRequestBody) -> ChangeOwnership:
    return ChangeOwnership(mode=mode_from_digits(mode, error=error), owner=owner or None,
                           group=group or None)


def printable(path: str) -> str:
    """A path whose bytes are not UTF-8 (possible on Linux) with U+FFFD in their place,
    so that one odd name cannot break a whole JSON reply."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def file_info_body(info: FileInfo) -> dict[str, Any]:
    """FileInfo as execd writes it (`created_at` is the ctime, as upstream)."""
    return {"path": printable(info.path), "size": info.size,
            "modified_at": rfc3339_nano(info.modified_ns),
            "created_at": rfc3339_nano(info.changed_ns),
            "owner": info.owner, "group": info.group, "mode": mode_to_digits(info.mode),
            "type": info.type.value}
