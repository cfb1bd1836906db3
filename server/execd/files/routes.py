"""The /files and /directories routes: parse, call the sandbox's filesystem, reply.

Behaviour lives in the runtime's `SandboxFilesystem`; upload and download streaming in
`upload.py` and `download.py`. Multi-path requests are handled in order and stop at the
first failure, as upstream does.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from opensandbox_emulator.runtimes.failures import IsADirectory
from opensandbox_emulator.runtimes.filesystem import ChangeOwnership, SandboxFilesystem
from opensandbox_emulator.server.execd.errors import InvalidRequestBody, MissingQuery
from opensandbox_emulator.server.execd.files.common import (
    empty,
    file_info_body,
    ownership,
    sandbox_files,
)
from opensandbox_emulator.server.execd.files.download import download
from opensandbox_emulator.server.execd.files.globs import BadPattern, compile_glob
from opensandbox_emulator.server.execd.files.lines import download_lines
from opensandbox_emulator.server.execd.files.upload import receive_upload
from opensandbox_emulator.server.inputs import Text

router = APIRouter(tags=["filesystem"])

Files = Annotated[SandboxFilesystem, Depends(sandbox_files)]
Paths = Annotated[list[Text], Query(alias="path")]


def _nonempty(paths: Any) -> None:
    """An empty path would mean the sandbox's root; refuse it rather than guess."""
    if any(not path for path in paths):
        raise InvalidRequestBody("a path is empty; name the file or directory (absolute, "
                                 "or relative to /; ~ is the sandbox's HOME)")


class Permission(BaseModel):
    """`mode` in octal digits (755); 0 or absent leaves the mode, empty names the owner."""

    mode: int = 0
    owner: Text | None = None
    group: Text | None = None


class RenameItem(BaseModel):
    src: Text
    dest: Text


class ReplaceItem(BaseModel):
    old: str = ""
    new: str = ""


@router.get("/files/info")
async def files_info(fs: Files, paths: Paths = []) -> JSONResponse:  # noqa: B006
    _nonempty(paths)
    result: dict[str, Any] = {}
    for path in paths:
        result[path] = file_info_body(await fs.stat(path))
    return JSONResponse(result)


@router.delete("/files")
async def delete_files(fs: Files, paths: Paths = []) -> Response:  # noqa: B006
    _nonempty(paths)
    for path in paths:
        try:
            await fs.remove_file(path)
        except IsADirectory as error:
            # Reworded for this route: the client asked to remove files, so say which
            # route removes directories.
            raise IsADirectory(error.path, f"{error.path} is a directory; remove directories "
                                           "with DELETE /directories") from error
    return empty()


def _ownership_changes(body: dict[Text, Permission]) -> dict[str, ChangeOwnership]:
    """The `{path: {mode, owner, group}}` body of /files/permissions and /directories,
    every entry checked (a bad mode refuses the request) before anything changes."""
    _nonempty(body)
    return {path: ownership(p.mode, p.owner, p.group) for path, p in body.items()}


@router.post("/files/permissions")
async def set_permissions(fs: Files, body: Annotated[dict[Text, Permission], Body()]
                          ) -> Response:
    for path, change in _ownership_changes(body).items():
        await fs.set_ownership(path, change)
    return empty()


@router.post("/files/mv")
async def move_files(fs: Files, body: Annotated[list[RenameItem], Body()]) -> Response:
    for number, item in enumerate(body, 1):
        if not item.src or not item.dest:
            raise InvalidRequestBody(f"item {number}: both src and dest must be non-empty "
                                     "paths")
    for item in body:
        await fs.rename(item.src, item.dest)
    return empty()


@router.get("/files/search")
async def search_files(fs: Files, path: Annotated[Text, Query()] = "",
                       pattern: Annotated[Text, Query()] = "") -> JSONResponse:
    if not path:
        raise MissingQuery("path")
    try:
        match = compile_glob(pattern or "**")
    except BadPattern as error:
        raise InvalidRequestBody(f"invalid search pattern: {error}", code="INVALID_PATTERN"
                                 ) from error
    return JSONResponse([file_info_body(info) for info in await fs.search(path, match)])


@router.post("/files/replace")
async def replace_content(fs: Files, body: Annotated[dict[Text, ReplaceItem], Body()],
                          verbose: bool = False) -> Response:
    _nonempty(body)
    for path, item in body.items():
        if not item.old:
            raise InvalidRequestBody(f"{path}: old must be a non-empty string (the text to "
                                     "replace)")
    counts: dict[str, dict[str, int]] = {}
    for path, item in body.items():
        counts[path] = {"replacedCount": await fs.replace(path, item.old.encode(),
                                                          item.new.encode())}
    return JSONResponse(counts) if verbose else empty()


@router.post("/files/upload")
async def upload_files(fs: Files, request: Request) -> Response:
    await receive_upload(request, fs)
    return empty()


@router.get("/files/download")
async def download_file(fs: Files, request: Request, path: Annotated[Text, Query()] = "",
                        offset: str | None = None, limit: str | None = None) -> Response:
    if not path:
        raise MissingQuery("path")
    if offset or limit:
        return await download_lines(fs, path, request, offset, limit)
    return await download(fs, path, request)


@router.get("/directories/list")
async def list_directory(fs: Files, path: Annotated[Text, Query()] = "",
                         depth: str | None = None) -> JSONResponse:
    if not path:
        raise MissingQuery("path")
    levels = 1
    if depth is not None and depth != "":
        try:
            levels = int(depth)
        except ValueError:
            levels = -1
        if levels < 0:
            raise InvalidRequestBody(f"invalid query parameter 'depth': {depth!r} is not an "
                                     "integer >= 0 (0 lists nothing, 1 the children, the "
                                     "default)")
    entries = await fs.list_directory(path, levels)
    return JSONResponse([file_info_body(info) for info in entries])


@router.post("/directories")
async def make_directories(fs: Files, body: Annotated[dict[Text, Permission], Body()]
                           ) -> Response:
    for path, change in _ownership_changes(body).items():
        await fs.make_dirs(path, change)
    return empty()


@router.delete("/directories")
async def delete_directories(fs: Files, paths: Paths = []) -> Response:  # noqa: B006
    _nonempty(paths)
    for path in paths:
        await fs.remove_tree(path)
    return empty()
