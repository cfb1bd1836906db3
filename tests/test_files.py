"""execd files, directories and metrics over raw HTTP, against a real sandbox, on both
runtimes (`[fake]`: a runc container over a private root, `[docker]`: a container).

Every effect is checked twice: in the reply, and in what a command in the same sandbox sees
(`POST /command`), since the file API must show the sandbox's own view of its files.
Confinement tests each try one escape (`..`, an absolute symlink, a symlink chain, a
write into a read-only place) and check that neither the API nor a command reaches the host:
each escape names a real host file by its host path, so an implementation that resolved
sandbox paths on the host (the fake runtime's private root is a host directory) would hit it.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.contract import assert_error, assert_execd_spec
from tests.helpers.servers import ServerProcess, create_body, execd_url, fake_only, wait_for

RFC3339_NANO = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$"
# More `..` than any host directory is deep: from anywhere, on the host, this reaches `/`.
CLIMB = "/" + "../" * 40


@pytest.fixture(scope="session")
def server(execd_server: ServerProcess) -> ServerProcess:
    """Every test of this module runs on both runtimes."""
    return execd_server


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def execd(server: ServerProcess, sandbox_id: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=execd_url(server, sandbox_id), timeout=60) as client:
        yield client


def sh(client: httpx.Client, script: str) -> tuple[list[str], int]:
    """Run `script` in the sandbox: (stdout lines, exit code)."""
    response = client.post("/command", json={"command": script})
    assert response.status_code == 200, response.text
    events = [json.loads(f) for f in response.content.split(b"\n\n") if f.strip()]
    errors = [e for e in events if e.get("type") == "error"]
    code = int(errors[0]["error"]["evalue"]) if errors else 0
    return [e["text"] for e in events if e.get("type") == "stdout"], code


def sandbox_bytes(client: httpx.Client, path: str) -> bytes | None:
    """The file's bytes as a command sees them, or None when `cat` cannot read it."""
    lines, code = sh(client, f"base64 -w0 '{path}'")
    return None if code else base64.b64decode("".join(lines))


def sandbox_stat(client: httpx.Client, path: str) -> str:
    lines, code = sh(client, f"stat -c '%a %U %G %s %F' '{path}'")
    assert code == 0, lines
    return lines[0]


def meta(path: str, **extra: Any) -> tuple[str, tuple[str, bytes, str]]:
    body = json.dumps({"path": path, **extra}).encode()
    return ("metadata", ("metadata", body, "application/json"))


def part(content: bytes, name: str = "blob") -> tuple[str, tuple[str, bytes, str]]:
    return ("file", (name, content, "application/octet-stream"))


def upload(client: httpx.Client, parts: list[Any]) -> httpx.Response:
    return client.post("/files/upload", files=parts)


def assert_empty_ok(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.content == b""
    assert response.headers["content-length"] == "0"


def leftovers(client: httpx.Client, directory: str = "/tmp") -> list[str]:
    """Temporary upload files (`.<name>.<random>.part`, beside their target) left under a
    directory of the sandbox."""
    lines, _ = sh(client, f"find '{directory}' -name '*.part' 2>/dev/null")
    return lines


# --- upload ----------------------------------------------------------------------------------


def test_upload_pairs_the_ith_metadata_with_the_ith_file(execd: httpx.Client) -> None:
    # SDK order (m,f,m,f), grouped order (m,m,f,f) and files first (f,f,m,m).
    layouts = {
        "alternating": [meta("/tmp/alt/1"), part(b"one"), meta("/tmp/alt/2"), part(b"two")],
        "grouped": [meta("/tmp/grp/1"), meta("/tmp/grp/2"), part(b"one"), part(b"two")],
        "files-first": [part(b"one"), part(b"two"), meta("/tmp/ff/1"), meta("/tmp/ff/2")],
    }
    for name, parts in layouts.items():
        response = upload(execd, parts)
        assert_empty_ok(response)
        assert_execd_spec(response)
        folder = {"alternating": "alt", "grouped": "grp", "files-first": "ff"}[name]
        assert sandbox_bytes(execd, f"/tmp/{folder}/1") == b"one", name
        assert sandbox_bytes(execd, f"/tmp/{folder}/2") == b"two", name


def test_one_request_with_many_files_holds_few_descriptors(server: ServerProcess,
                                                          execd: httpx.Client) -> None:
    """Files wait for the end of the request to appear, but not with a descriptor each."""
    count = 600
    parts = []
    for index in range(count):
        parts += [meta(f"/tmp/many/{index:03d}.txt"), part(str(index).encode())]
    limit = resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, (256, limit[1]))
    try:
        response = upload(execd, parts)
    finally:
        resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, limit)
    assert_empty_ok(response)
    lines, _ = sh(execd, "ls /tmp/many | wc -l; cat /tmp/many/599.txt")
    assert lines == [str(count), "599"]


def test_upload_accepts_a_plain_metadata_field_and_ignores_other_parts(
        execd: httpx.Client) -> None:
    response = execd.post("/files/upload",
                          data={"metadata": json.dumps({"path": "/tmp/plain.txt"}),
                                "comment": "ignored"},
                          files=[part(b"plain field"), ("extra", ("x", b"zzz", "text/plain"))])
    assert_empty_ok(response)
    assert sandbox_bytes(execd, "/tmp/plain.txt") == b"plain field"


def test_upload_modes_owners_and_parents(execd: httpx.Client) -> None:
    response = upload(execd, [meta("/tmp/new/deep/default"), part(b"a"),
                              meta("/tmp/new/six", mode=600), part(b"b"),
                              meta("/tmp/new/owned", owner="nobody", group="nogroup",
                                   mode=640), part(b"c")])
    assert_empty_ok(response)
    assert sandbox_stat(execd, "/tmp/new/deep/default") == "755 root root 1 regular file"
    assert sandbox_stat(execd, "/tmp/new/deep") == "755 root root 4096 directory"
    assert sandbox_stat(execd, "/tmp/new/six") == "600 root root 1 regular file"
    assert sandbox_stat(execd, "/tmp/new/owned") == "640 nobody nogroup 1 regular file"
    # Replacing an existing file keeps its mode and owner unless told otherwise.
    assert_empty_ok(upload(execd, [meta("/tmp/new/owned"), part(b"longer")]))
    assert sandbox_stat(execd, "/tmp/new/owned") == "640 nobody nogroup 6 regular file"
    assert sandbox_bytes(execd, "/tmp/new/owned") == b"longer"
    # `~` is the sandbox's HOME.
    assert_empty_ok(upload(execd, [meta("~/home.txt"), part(b"home")]))
    assert sandbox_bytes(execd, "/root/home.txt") == b"home"


def test_upload_errors_leave_nothing_behind(execd: httpx.Client) -> None:
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        ({"json": {"path": "/tmp/x"}}, 400, "INVALID_FILE", "multipart"),
        ({"files": [part(b"x")]}, 400, "INVALID_FILE_METADATA", "metadata file is missing"),
        ({"files": [meta("/tmp/e/only-meta")]}, 400, "INVALID_FILE_CONTENT", "file is missing"),
        ({"files": [meta("/tmp/e/1"), part(b"1"), meta("/tmp/e/2")]}, 400, "INVALID_FILE",
         "metadata and file count mismatch: 2 vs 1"),
        ({"files": [meta("/tmp/e/1"), part(b"1"), part(b"2")]}, 400, "INVALID_FILE",
         "metadata and file count mismatch: 1 vs 2"),
        ({"files": [("metadata", ("metadata", b"{not json", "application/json")),
                    part(b"x")]}, 400, "INVALID_FILE_METADATA", "invalid metadata format"),
        ({"files": [meta(""), part(b"x")]}, 400, "INVALID_FILE_METADATA",
         "metadata path is empty"),
        ({"files": [meta("/tmp/e/m", mode=888), part(b"x")]}, 400, "INVALID_FILE_METADATA",
         "888"),
        ({"files": [meta("/tmp/e/u", owner="no-such-user"), part(b"x")]}, 400, "UNKNOWN_USER",
         "no-such-user"),
        ({"files": [meta("/tmp/e/g", group="no-such-group"), part(b"x")]}, 400,
         "UNKNOWN_GROUP", "no-such-group"),
        ({"files": [meta("/tmp"), part(b"x")]}, 400, "FILE_IS_DIRECTORY", "/tmp"),
    ]
    for request, status, code, mentions in cases:
        response = execd.post("/files/upload", **request)
        assert_error(response, status, code, mentions)
        assert_execd_spec(response)
    assert leftovers(execd) == []
    lines, _ = sh(execd, "ls -A /tmp/e 2>/dev/null | wc -l")
    assert lines == ["0"]
    # A body cut before its closing boundary.
    boundary = "cut"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'
            '{"path":"/tmp/cut.txt"}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
            "\r\nsome bytes but no end").encode()
    response = execd.post("/files/upload", content=body,
                          headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert_error(response, 400, "INVALID_FILE", "closing boundary")
    assert sandbox_bytes(execd, "/tmp/cut.txt") is None
    assert leftovers(execd) == []


def test_upload_cut_by_the_client_keeps_the_old_file(execd: httpx.Client) -> None:
    assert_empty_ok(upload(execd, [meta("/tmp/keep.txt"), part(b"original")]))
    boundary = "b0undary"

    def body() -> Iterator[bytes]:
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"; '
               'filename="metadata"\r\nContent-Type: application/json\r\n\r\n'
               '{"path":"/tmp/keep.txt"}\r\n'
               f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
               'filename="keep.txt"\r\n\r\n').encode()
        for _ in range(8):
            yield b"x" * 256 * 1024
        raise ConnectionAbortedError("the client gives up mid-upload")

    with pytest.raises((ConnectionAbortedError, httpx.HTTPError)):
        execd.post("/files/upload", content=body(),
                   headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    # The server notices the reset and removes the partial file.
    wait_for(lambda: leftovers(execd) == [], "the partial upload to be removed", 20)
    assert sandbox_bytes(execd, "/tmp/keep.txt") == b"original"


# --- download --------------------------------------------------------------------------------


def test_download_headers_and_ranges(execd: httpx.Client) -> None:
    content = b"0123456789"
    assert_empty_ok(upload(execd, [meta("/tmp/d/digits.bin"), part(content)]))
    full = execd.get("/files/download", params={"path": "/tmp/d/digits.bin"})
    assert full.status_code == 200 and full.content == content
    assert full.headers["content-type"] == "application/octet-stream"
    assert full.headers["content-disposition"] == "attachment; filename=digits.bin"
    assert full.headers["content-length"] == "10"
    assert full.headers["accept-ranges"] == "bytes"
    modified = full.headers["last-modified"]
    assert modified.endswith(" GMT")
    assert_execd_spec(full)
    cases = {"bytes=0-3": (0, 3), "bytes=6-": (6, 9), "bytes=-3": (7, 9), "bytes=8-100": (8, 9),
             "bytes=2-2, 5-6": (2, 2), "bytes=-50": (0, 9)}
    for header, (first, last) in cases.items():
        response = execd.get("/files/download", params={"path": "/tmp/d/digits.bin"},
                             headers={"Range": header})
        assert response.status_code == 206, (header, response.text)
        assert response.content == content[first:last + 1], header
        assert response.headers["content-range"] == f"bytes {first}-{last}/10", header
        assert response.headers["content-length"] == str(last - first + 1)
        assert_execd_spec(response)
    for header, code in {"bytes=10-": "RANGE_NOT_SATISFIABLE",
                         "bytes=50-60": "RANGE_NOT_SATISFIABLE",
                         "bytes=-0": "RANGE_NOT_SATISFIABLE",
                         "bytes=5-2": "INVALID_RANGE", "items=0-1": "INVALID_RANGE",
                         "bytes=a-b": "INVALID_RANGE", "bytes=": "INVALID_RANGE"}.items():
        response = execd.get("/files/download", params={"path": "/tmp/d/digits.bin"},
                             headers={"Range": header})
        assert_error(response, 416, code)
        assert response.headers["content-range"] == "bytes */10", header
        assert_execd_spec(response)
    # A stale If-Range gets the whole file; a fresh If-Modified-Since gets 304.
    stale = execd.get("/files/download", params={"path": "/tmp/d/digits.bin"},
                      headers={"Range": "bytes=0-1",
                               "If-Range": "Thu, 01 Jan 2015 00:00:00 GMT"})
    assert stale.status_code == 200 and stale.content == content
    fresh = execd.get("/files/download", params={"path": "/tmp/d/digits.bin"},
                      headers={"Range": "bytes=0-1", "If-Range": modified})
    assert fresh.status_code == 206 and fresh.content == b"01"
    cached = execd.get("/files/download", params={"path": "/tmp/d/digits.bin"},
                       headers={"If-Modified-Since": modified})
    assert cached.status_code == 304 and cached.content == b""


def test_download_errors_and_awkward_names(execd: httpx.Client) -> None:
    response = execd.get("/files/download")
    assert_error(response, 400, "MISSING_QUERY", "path")
    assert_execd_spec(response)
    response = execd.get("/files/download", params={"path": "/tmp/none.txt"})
    assert_error(response, 404, "FILE_NOT_FOUND", "/tmp/none.txt")
    assert_execd_spec(response)
    response = execd.get("/files/download", params={"path": "/tmp"})
    assert_error(response, 400, "FILE_IS_DIRECTORY")
    assert_execd_spec(response)
    sh(execd, "mkfifo /tmp/pipe")
    assert_error(execd.get("/files/download", params={"path": "/tmp/pipe"}), 400,
                 "INVALID_FILE", "not a regular file")
    assert_empty_ok(upload(execd, [meta("/tmp/my file é.txt"), part(b"spaced")]))
    response = execd.get("/files/download", params={"path": "/tmp/my file é.txt"})
    assert response.content == b"spaced"
    assert response.headers["content-disposition"] == (
        "attachment; filename=\"my file ?.txt\"; filename*=UTF-8''my%20file%20%C3%A9.txt")
    empty = execd.get("/files/download", params={"path": "/tmp/empty"})
    assert empty.status_code == 404
    sh(execd, ": > /tmp/empty")
    empty = execd.get("/files/download", params={"path": "/tmp/empty"})
    assert empty.status_code == 200 and empty.content == b""
    assert empty.headers["content-length"] == "0"


def test_a_file_written_by_a_command_downloads_identically(execd: httpx.Client) -> None:
    _, code = sh(execd, "head -c 3000000 /dev/urandom > /tmp/random.bin")
    assert code == 0
    expected = sandbox_bytes(execd, "/tmp/random.bin")
    assert expected is not None and len(expected) == 3_000_000
    response = execd.get("/files/download", params={"path": "/tmp/random.bin"})
    assert response.content == expected
    middle = execd.get("/files/download", params={"path": "/tmp/random.bin"},
                       headers={"Range": "bytes=1048570-2097160"})
    assert middle.content == expected[1048570:2097161]


# --- info, delete, permissions, move ----------------------------------------------------------


def test_info_matches_what_the_sandbox_sees(execd: httpx.Client) -> None:
    sh(execd, "mkdir -p /workspace/i && printf hello > /workspace/i/h.txt && "
              "chmod 640 /workspace/i/h.txt && chown 4321:4321 /workspace/i/h.txt")
    response = execd.get("/files/info", params={"path": ["/workspace/i/h.txt",
                                                         "workspace/i/../i", "~"]})
    assert response.status_code == 200, response.text
    assert_execd_spec(response)
    body = response.json()
    assert list(body) == ["/workspace/i/h.txt", "workspace/i/../i", "~"]
    info = body["/workspace/i/h.txt"]
    assert {"path", "size", "modified_at", "created_at", "owner", "group", "mode"} <= set(info)
    assert info["path"] == "/workspace/i/h.txt"
    assert (info["size"], info["mode"], info["owner"], info["group"]) == (5, 640, "4321",
                                                                           "4321")
    for key in ("modified_at", "created_at"):
        assert __import__("re").match(RFC3339_NANO, info[key]), info[key]
    lines, _ = sh(execd, "stat -c %Y /workspace/i/h.txt")
    seconds = int(lines[0])
    assert info["modified_at"].startswith(time.strftime("%Y-%m-%dT%H:%M:%S",
                                                        time.gmtime(seconds)))
    assert body["workspace/i/../i"]["path"] == "/workspace/i"
    assert body["workspace/i/../i"]["type"] == "directory"
    assert body["~"]["path"] == "/root" and body["~"]["mode"] == 700
    assert execd.get("/files/info").json() == {}
    missing = execd.get("/files/info", params={"path": ["/workspace/i/h.txt", "/nope"]})
    assert_error(missing, 404, "FILE_NOT_FOUND", "/nope")
    assert_execd_spec(missing)


def test_delete_files(execd: httpx.Client) -> None:
    sh(execd, "mkdir -p /tmp/del/dir && echo 1 > /tmp/del/a && echo 2 > /tmp/del/target && "
              "ln -s target /tmp/del/link")
    response = execd.delete("/files", params={"path": ["/tmp/del/a", "/tmp/del/missing",
                                                       "/tmp/del/link"]})
    assert_empty_ok(response)
    assert_execd_spec(response)
    lines, _ = sh(execd, "ls /tmp/del")
    assert lines == ["dir", "target"]  # the link went, its target stayed
    response = execd.delete("/files", params={"path": "/tmp/del/dir"})
    assert_error(response, 400, "FILE_IS_DIRECTORY", "DELETE /directories")
    assert_empty_ok(execd.delete("/files"))


def test_permissions(execd: httpx.Client) -> None:
    sh(execd, "echo x > /tmp/p.txt && chmod 644 /tmp/p.txt")
    response = execd.post("/files/permissions",
                          json={"/tmp/p.txt": {"mode": 600, "owner": "nobody",
                                               "group": "nogroup"}})
    assert_empty_ok(response)
    assert_execd_spec(response)
    assert sandbox_stat(execd, "/tmp/p.txt") == "600 nobody nogroup 2 regular file"
    assert_empty_ok(execd.post("/files/permissions", json={"/tmp/p.txt": {"mode": 0}}))
    assert sandbox_stat(execd, "/tmp/p.txt") == "600 nobody nogroup 2 regular file"
    assert_empty_ok(execd.post("/files/permissions", json={"/tmp/p.txt": {"mode": 4755,
                                                                         "owner": "root"}}))
    assert sandbox_stat(execd, "/tmp/p.txt") == "4755 root nogroup 2 regular file"
    for body, status, code, mentions in [
            ({"/tmp/p.txt": {"mode": 644, "owner": "ghost"}}, 400, "UNKNOWN_USER", "ghost"),
            ({"/tmp/p.txt": {"mode": 644, "group": "ghosts"}}, 400, "UNKNOWN_GROUP", "ghosts"),
            ({"/tmp/p.txt": {"mode": 888}}, 400, "INVALID_REQUEST_BODY", "888"),
            ({"/tmp/p.txt": {"mode": "rw"}}, 400, "INVALID_REQUEST_BODY", "mode"),
            ({"/tmp/nope": {"mode": 644}}, 404, "FILE_NOT_FOUND", "/tmp/nope"),
            ({"": {"mode": 644}}, 400, "INVALID_REQUEST_BODY", "empty")]:
        response = execd.post("/files/permissions", json=body)
        assert_error(response, status, code, mentions)
    assert sandbox_stat(execd, "/tmp/p.txt") == "4755 root nogroup 2 regular file"
    response = execd.post("/files/permissions", content=b"",
                          headers={"content-type": "application/json"})
    assert_error(response, 400, "INVALID_REQUEST_BODY")
    assert_execd_spec(response)


def test_move(execd: httpx.Client) -> None:
    sh(execd, "mkdir -p /tmp/mv/d && echo a > /tmp/mv/a && echo b > /tmp/mv/b && "
              "echo inner > /tmp/mv/d/inner")
    response = execd.post("/files/mv", json=[{"src": "/tmp/mv/a", "dest": "/tmp/mv/new/deep/a"},
                                             {"src": "/tmp/mv/d", "dest": "/workspace/d2"}])
    assert_empty_ok(response)
    assert_execd_spec(response)
    assert sandbox_bytes(execd, "/tmp/mv/new/deep/a") == b"a\n"
    assert sandbox_bytes(execd, "/workspace/d2/inner") == b"inner\n"
    assert sandbox_bytes(execd, "/tmp/mv/a") is None
    assert sandbox_stat(execd, "/tmp/mv/new") == "755 root root 4096 directory"
    response = execd.post("/files/mv", json=[{"src": "/tmp/mv/b", "dest": "/tmp/mv/new/deep/a"}])
    assert_error(response, 409, "FILE_ALREADY_EXISTS", "/tmp/mv/new/deep/a")
    assert sandbox_bytes(execd, "/tmp/mv/new/deep/a") == b"a\n"
    assert sandbox_bytes(execd, "/tmp/mv/b") == b"b\n"
    response = execd.post("/files/mv", json=[{"src": "/tmp/mv/gone", "dest": "/tmp/mv/x"}])
    assert_error(response, 404, "FILE_NOT_FOUND", "/tmp/mv/gone")
    assert_execd_spec(response)
    response = execd.post("/files/mv", json=[{"src": "/workspace/d2", "dest":
                                              "/workspace/d2/sub/d3"}])
    assert_error(response, 400, "INVALID_REQUEST_BODY", "into itself")
    response = execd.post("/files/mv", json=[{"src": "", "dest": "/tmp/x"}])
    assert_error(response, 400, "INVALID_REQUEST_BODY")
    response = execd.post("/files/mv", json={"src": "/tmp/mv/b", "dest": "/tmp/x"})
    assert_error(response, 400, "INVALID_REQUEST_BODY")


# --- search and replace ----------------------------------------------------------------------


def test_search_matches_base_names_like_find(execd: httpx.Client) -> None:
    sh(execd, "mkdir -p /workspace/s/a/b /workspace/s/c.py.d && cd /workspace/s && "
              "touch x.py a/y.py a/b/z.py a/b/z.txt README.md c.py.d/keep Makefile a/b/.hidden.py "
              "&& ln -s /usr/lib a/lib.py")
    def found(pattern: str | None) -> list[str]:
        params = {"path": "/workspace/s"}
        if pattern is not None:
            params["pattern"] = pattern
        response = execd.get("/files/search", params=params)
        assert response.status_code == 200, response.text
        assert_execd_spec(response)
        return [info["path"].removeprefix("/workspace/s/") for info in response.json()]

    everything = found(None)
    assert everything == ["Makefile", "README.md", "a/b/.hidden.py", "a/b/z.py", "a/b/z.txt",
                          "a/lib.py", "a/y.py", "c.py.d/keep", "x.py"]
    assert found("**") == everything
    lines, _ = sh(execd, "cd /workspace/s && find . ! -type d -name '*.py' | sort")
    assert sorted(found("*.py")) == sorted(line[2:] for line in lines)
    assert found("{*.md,Make*}") == ["Makefile", "README.md"]
    assert found("z.[!p]*") == ["a/b/z.txt"]
    assert found("?.py") == ["a/b/z.py", "a/y.py", "x.py"]
    assert found("a/*.py") == []  # a pattern is matched against base names only
    assert found("[a-y].py") == ["a/y.py", "x.py"]
    assert found("*.PY") == []
    symlink = execd.get("/files/search", params={"path": "/workspace/s",
                                                 "pattern": "lib.py"}).json()
    assert symlink[0]["type"] == "symlink"  # listed, not followed
    response = execd.get("/files/search", params={"path": "/workspace/s/x.py"})
    assert [i["path"] for i in response.json()] == ["/workspace/s/x.py"]
    assert_error(execd.get("/files/search", params={"pattern": "*"}), 400, "MISSING_QUERY")
    response = execd.get("/files/search", params={"path": "/workspace/none"})
    assert_error(response, 404, "FILE_NOT_FOUND", "/workspace/none")
    assert_execd_spec(response)
    response = execd.get("/files/search", params={"path": "/workspace/s", "pattern": "[ab"})
    assert_error(response, 400, "INVALID_PATTERN", "[ab")


def test_names_that_are_not_utf8_do_not_break_replies(execd: httpx.Client) -> None:
    _, code = sh(execd, "mkdir -p /tmp/odd && printf x > \"/tmp/odd/$(printf 'n\\377')\"")
    assert code == 0
    response = execd.get("/files/search", params={"path": "/tmp/odd"})
    assert response.status_code == 200, response.text
    assert [i["path"] for i in response.json()] == ["/tmp/odd/n\ufffd"]


def test_search_crosses_into_mounts_as_the_sandbox_does(execd: httpx.Client) -> None:
    response = execd.get("/files/search", params={"path": "/usr/bin", "pattern": "bas?"})
    assert "/usr/bin/bash" in [i["path"] for i in response.json()]


def test_replace(execd: httpx.Client) -> None:
    sh(execd, "printf 'a-b-a-b' > /tmp/r1 && chmod 604 /tmp/r1 && printf 'nothing' > /tmp/r2")
    response = execd.post("/files/replace", params={"verbose": "true"},
                          json={"/tmp/r1": {"old": "a", "new": "AA"}, "/tmp/r2": {"old": "zz"}})
    assert response.status_code == 200, response.text
    assert response.json() == {"/tmp/r1": {"replacedCount": 2}, "/tmp/r2": {"replacedCount": 0}}
    assert sandbox_bytes(execd, "/tmp/r1") == b"AA-b-AA-b"
    assert sandbox_stat(execd, "/tmp/r1").startswith("604 ")
    response = execd.post("/files/replace", json={"/tmp/r1": {"old": "-b", "new": ""}})
    assert_empty_ok(response)
    assert_execd_spec(response)
    assert sandbox_bytes(execd, "/tmp/r1") == b"AA-AA"
    response = execd.post("/files/replace", json={"/tmp/r1": {"old": "", "new": "x"}})
    assert_error(response, 400, "INVALID_REQUEST_BODY", "old")
    assert sandbox_bytes(execd, "/tmp/r1") == b"AA-AA"
    response = execd.post("/files/replace", json={"/tmp/nope": {"old": "a", "new": "b"}})
    assert_error(response, 404, "FILE_NOT_FOUND", "/tmp/nope")
    assert_error(execd.post("/files/replace", json={"/tmp": {"old": "a"}}), 400,
                 "FILE_IS_DIRECTORY")


def test_replace_finds_matches_across_chunk_boundaries(execd: httpx.Client) -> None:
    mib = 1024 * 1024
    content = b"." * (mib - 3) + b"NEEDLE" + b"." * (mib - 2) + b"NEEDLE" + b"tail"
    assert_empty_ok(upload(execd, [meta("/tmp/big.txt"), part(content)]))
    response = execd.post("/files/replace", params={"verbose": "true"},
                          json={"/tmp/big.txt": {"old": "NEEDLE", "new": "pin"}})
    assert response.json() == {"/tmp/big.txt": {"replacedCount": 2}}
    assert sandbox_bytes(execd, "/tmp/big.txt") == content.replace(b"NEEDLE", b"pin")


# --- directories -----------------------------------------------------------------------------


def test_directories(execd: httpx.Client) -> None:
    response = execd.post("/directories", json={
        "/workspace/m/a/b": {"mode": 700, "owner": "nobody", "group": "nogroup"},
        "/workspace/m/plain": {"mode": 0}})
    assert_empty_ok(response)
    assert_execd_spec(response)
    assert sandbox_stat(execd, "/workspace/m/a/b") == "700 nobody nogroup 4096 directory"
    assert sandbox_stat(execd, "/workspace/m/a") == "755 root root 4096 directory"
    assert sandbox_stat(execd, "/workspace/m/plain") == "755 root root 4096 directory"
    assert_empty_ok(execd.post("/directories", json={"/workspace/m/a/b": {"mode": 750}}))
    assert sandbox_stat(execd, "/workspace/m/a/b") == "750 nobody nogroup 4096 directory"
    sh(execd, "echo f > /workspace/m/file")
    response = execd.post("/directories", json={"/workspace/m/file/sub": {"mode": 755}})
    assert_error(response, 400, "NOT_A_DIRECTORY", "/workspace/m/file")
    response = execd.post("/directories", json={"/workspace/m/x": {"owner": "ghost"}})
    assert_error(response, 400, "UNKNOWN_USER", "ghost")
    assert sandbox_bytes(execd, "/workspace/m/x") is None
    lines, _ = sh(execd, "test -e /workspace/m/x && echo yes || echo no")
    assert lines == ["no"]
    sh(execd, "touch /workspace/m/a/b/f1 && ln -s /usr /workspace/m/a/usr-link")
    response = execd.delete("/directories", params={"path": ["/workspace/m/a", "/workspace/gone"]})
    assert_empty_ok(response)
    assert_execd_spec(response)
    lines, _ = sh(execd, "ls /workspace/m; ls /usr | head -1")
    assert lines[:2] == ["file", "plain"] and len(lines) == 3  # the link's target survived


# --- confinement -----------------------------------------------------------------------------


@pytest.fixture
def host_secret(tmp_path: Path) -> Path:
    """A host file, in a host directory no sandbox may see or write into."""
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host only")
    return secret


def test_dot_dot_stays_inside_the_sandbox(execd: httpx.Client, host_secret: Path) -> None:
    escape = CLIMB + str(host_secret).lstrip("/")  # from anywhere up to `/`, then the secret
    assert Path(os.path.normpath(escape)) == host_secret  # on the host, that is the secret
    assert_error(execd.get("/files/download", params={"path": escape}), 404, "FILE_NOT_FOUND")
    assert sandbox_bytes(execd, escape) is None  # a command cannot reach it either
    planted = host_secret.parent / "planted.txt"
    assert_empty_ok(upload(execd, [meta(CLIMB + str(planted).lstrip("/")), part(b"planted")]))
    assert not planted.exists()
    assert sandbox_bytes(execd, str(planted)) == b"planted"  # the sandbox's own path
    assert_empty_ok(upload(execd, [meta(CLIMB + "planted.txt"), part(b"at the top")]))
    assert sandbox_bytes(execd, "/planted.txt") == b"at the top"
    info = execd.get("/files/info", params={"path": "/tmp/../../etc/.."}).json()
    assert info["/tmp/../../etc/.."]["path"] == "/"


def test_an_absolute_symlink_resolves_inside_the_sandbox(execd: httpx.Client,
                                                         host_secret: Path) -> None:
    # A symlink a command made to a host-only path, and one to the sandbox's own /etc.
    host_dir = host_secret.parent
    _, code = sh(execd, f"ln -s {host_dir} /tmp/to-host && "
                        "ln -s /etc/passwd /tmp/passwd-link && ln -s /root /tmp/home-link")
    assert code == 0
    target = f"/tmp/to-host/{host_secret.name}"
    assert_error(execd.get("/files/download", params={"path": target}), 404, "FILE_NOT_FOUND")
    assert sandbox_bytes(execd, target) is None
    assert_empty_ok(upload(execd, [meta("/tmp/to-host/dropped.txt"), part(b"dropped")]))
    assert not (host_dir / "dropped.txt").exists()
    assert sandbox_bytes(execd, f"{host_dir}/dropped.txt") == b"dropped"
    assert host_secret.read_text() == "host only"
    passwd = execd.get("/files/download", params={"path": "/tmp/passwd-link"})
    assert passwd.status_code == 200 and passwd.content == sandbox_bytes(execd, "/etc/passwd")
    assert_empty_ok(upload(execd, [meta("/tmp/home-link/through.txt"), part(b"via link")]))
    assert sandbox_bytes(execd, "/root/through.txt") == b"via link"
    lines, _ = sh(execd, "test -L /tmp/home-link && ls /tmp/home-link/")
    assert "through.txt" in lines  # the link is still a link, its target got the file
    link = execd.get("/files/info", params={"path": "/tmp/home-link"}).json()
    assert link["/tmp/home-link"]["type"] == "directory"  # info follows links, as stat(2)


def test_a_symlink_chain_cannot_climb_out(execd: httpx.Client, host_secret: Path) -> None:
    host_dir = str(host_secret.parent).lstrip("/")
    # On the host, /tmp/up would be `/` and /tmp/chain the secret.
    _, code = sh(execd, f"cd /tmp && ln -s {CLIMB[1:]} up && "
                        f"ln -s up/{host_dir}/{host_secret.name} step && ln -s step chain && "
                        "ln -s loop2 loop1 && ln -s loop1 loop2")
    assert code == 0
    for path in ("/tmp/chain", "/tmp/step"):
        assert_error(execd.get("/files/download", params={"path": path}), 404,
                     "FILE_NOT_FOUND")  # …but not in the sandbox
        assert sandbox_bytes(execd, path) is None
    assert_empty_ok(upload(execd, [meta(f"/tmp/up/{host_dir}/chained.txt"), part(b"c")]))
    assert not (host_secret.parent / "chained.txt").exists()
    assert sandbox_bytes(execd, f"/{host_dir}/chained.txt") == b"c"
    response = execd.get("/files/info", params={"path": "/tmp/loop1"})
    assert_error(response, 400, "INVALID_REQUEST_BODY", "symbolic links")


def test_read_only_places_refuse_every_write(http: httpx.Client, server: ServerProcess,
                                            tmp_path: Path) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "kept.txt").write_text("keep me")
    (ro / "sub").mkdir()
    created = http.post("/v1/sandboxes", json=create_body(server, volumes=[
        {"name": "ro", "host": {"path": str(ro)}, "mountPath": "/mnt/ro", "readOnly": True},
        {"name": "rw", "host": {"path": str(rw)}, "mountPath": "/mnt/rw"}]))
    assert created.status_code == 202, created.text
    sandbox_id = created.json()["id"]
    try:
        with httpx.Client(base_url=execd_url(server, sandbox_id), timeout=60) as execd:
            attempts = [
                ("post", "/files/upload", {"files": [meta("/mnt/ro/new.txt"), part(b"x")]}),
                ("post", "/files/upload", {"files": [meta("/mnt/ro/kept.txt"), part(b"x")]}),
                ("post", "/directories", {"json": {"/mnt/ro/d": {"mode": 755}}}),
                ("delete", "/files", {"params": {"path": "/mnt/ro/kept.txt"}}),
                ("delete", "/directories", {"params": {"path": "/mnt/ro/sub"}}),
                ("delete", "/directories", {"params": {"path": "/mnt"}}),
                ("post", "/files/mv", {"json": [{"src": "/mnt/ro/kept.txt",
                                                 "dest": "/mnt/ro/moved"}]}),
                ("post", "/files/permissions", {"json": {"/mnt/ro/kept.txt": {"mode": 600}}}),
                ("post", "/files/replace", {"json": {"/mnt/ro/kept.txt": {"old": "keep",
                                                                          "new": "lose"}}}),
            ]
            for method, url, request in attempts:
                response = execd.request(method.upper(), url, **request)
                assert_error(response, 403, "FILE_READ_ONLY", "read-only")
            assert sorted(p.name for p in ro.iterdir()) == ["kept.txt", "sub"]
            assert (ro / "kept.txt").read_text() == "keep me"
            _, code = sh(execd, "touch /mnt/ro/new.txt")
            assert code != 0  # a command is refused the same way
            download = execd.get("/files/download", params={"path": "/mnt/ro/kept.txt"})
            assert download.content == b"keep me"
            # The writable volume takes writes, seen by the host and by commands.
            assert_empty_ok(upload(execd, [meta("/mnt/rw/deep/w.txt"), part(b"written")]))
            assert (rw / "deep" / "w.txt").read_bytes() == b"written"
            assert sandbox_bytes(execd, "/mnt/rw/deep/w.txt") == b"written"
            response = execd.post("/files/mv", json=[{"src": "/mnt/rw/deep/w.txt",
                                                      "dest": "/tmp/w.txt"}])
            assert_error(response, 400, "CROSS_MOUNT_MOVE", "cp -r")
            # rm -rf of a volume's mount point empties it but keeps the mount.
            assert_empty_ok(execd.delete("/directories", params={"path": "/mnt/rw"}))
            assert list(rw.iterdir()) == []
            assert_empty_ok(upload(execd, [meta("/mnt/rw/again.txt"), part(b"again")]))
            assert (rw / "again.txt").read_bytes() == b"again"
    finally:
        http.delete(f"/v1/sandboxes/{sandbox_id}")


def test_the_hosts_system_directories_are_read_only(server: ServerProcess,
                                                    execd: httpx.Client) -> None:
    fake_only(server, "a fake sandbox sees the host's /usr and parts of its /etc through "
                      "read-only binds; a container's own /usr and /etc are its image's")
    for method, url, request in [
            ("post", "/files/upload", {"files": [meta("/usr/planted"), part(b"x")]}),
            ("post", "/files/upload", {"files": [meta("/etc/ssl/certs/planted"),
                                                 part(b"x")]}),
            ("post", "/files/permissions", {"json": {"/etc/ssl/openssl.cnf": {"mode": 777}}})]:
        response = execd.request(method.upper(), url, **request)
        assert_error(response, 403, "FILE_READ_ONLY", "read-only")
    assert not Path("/usr/planted").exists()
    assert not Path("/etc/ssl/certs/planted").exists()


def test_etc_is_the_sandboxs_own_and_holds_no_host_secret(server: ServerProcess,
                                                          execd: httpx.Client) -> None:
    fake_only(server, "a container's /etc is its image's")
    host_passwd = Path("/etc/passwd").read_bytes()
    _, code = sh(execd, "ln -s /etc/passwd /tmp/passwd-link")
    assert code == 0
    # Written through a symlink, the sandbox's own /etc/passwd changes; the host's does not.
    assert_empty_ok(upload(execd, [meta("/tmp/passwd-link"),
                                   part(b"root:x:0:0::/root:/bin/sh\nextra:x:4242:4242::/:/bin/sh\n")]))
    assert sandbox_bytes(execd, "/etc/passwd") == \
        b"root:x:0:0::/root:/bin/sh\nextra:x:4242:4242::/:/bin/sh\n"
    assert Path("/etc/passwd").read_bytes() == host_passwd
    # A user added inside is known to the files API (names come from the sandbox's /etc).
    assert_empty_ok(upload(execd, [meta("/tmp/owned", owner="extra", group="4242"),
                                   part(b"x")]))
    assert execd.get("/files/info", params={"path": "/tmp/owned"}).json()[
        "/tmp/owned"]["owner"] == "extra"
    # The sandbox's shadow is its own, every account locked; the host's is nowhere.
    shadow = execd.get("/files/download", params={"path": "/etc/shadow"})
    assert shadow.status_code == 200
    assert all(line.split(":")[1] in ("*", "!") for line in shadow.text.splitlines())
    host_shadow = Path("/etc/shadow").read_bytes()
    assert shadow.content != host_shadow
    for path in ("/etc/gshadow", "/etc/sudoers", "/etc/ssh", "/etc/ssl/private",
                 "/etc/subuid", "/etc/machine-id"):
        response = execd.get("/files/download", params={"path": path})
        if response.status_code == 200:
            assert path in ("/etc/gshadow",) and b"$" not in response.content, path
        else:
            assert response.status_code == 404, (path, response.text)


def test_kernel_filesystems_are_refused(execd: httpx.Client) -> None:
    for path in ("/proc/self/environ", "/proc/1/status", "/dev/null"):
        response = execd.get("/files/download", params={"path": path})
        assert_error(response, 403, "FILE_NOT_ACCESSIBLE", "command")


# --- memory ----------------------------------------------------------------------------------


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_large_transfers_stream_in_bounded_memory(server: ServerProcess,
                                                  start_server: Any) -> None:
    own = start_server(like=server)
    with own.client() as http:
        sandbox_id = http.post("/v1/sandboxes", json=create_body(own)).json()["id"]
    size = 300 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    boundary = "memtest"
    with httpx.Client(base_url=execd_url(own, sandbox_id), timeout=120) as execd:
        assert_empty_ok(upload(execd, [meta("/tmp/warm"), part(b"warm")]))
        execd.get("/files/download", params={"path": "/tmp/warm"})
        before = _peak_rss_mib(own.process.pid)

        def body() -> Iterator[bytes]:
            yield (f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'
                   '{"path":"/tmp/big.bin"}\r\n'
                   f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                   'filename="big.bin"\r\n\r\n').encode()
            for _ in range(size // len(block)):
                yield block
            yield f"\r\n--{boundary}--\r\n".encode()

        response = execd.post("/files/upload", content=body(), headers={
            "content-type": f"multipart/form-data; boundary={boundary}"})
        assert_empty_ok(response)
        received = 0
        with execd.stream("GET", "/files/download", params={"path": "/tmp/big.bin"}) as stream:
            assert stream.headers["content-length"] == str(size)
            for chunk in stream.iter_bytes():
                received += len(chunk)
        assert received == size
        grown = _peak_rss_mib(own.process.pid) - before
        assert grown < 64, f"the server's peak RSS grew by {grown:.0f} MiB for 300 MiB"


# --- metrics ---------------------------------------------------------------------------------


def test_metrics(execd: httpx.Client) -> None:
    response = execd.get("/metrics")
    assert response.status_code == 200, response.text
    assert_execd_spec(response)
    body = response.json()
    assert list(body) == ["cpu_count", "cpu_used_pct", "mem_total_mib", "mem_used_mib",
                          "timestamp"]
    assert body["cpu_count"] >= 1
    assert 0 <= body["cpu_used_pct"] <= 100
    assert 0 <= body["mem_used_mib"] <= body["mem_total_mib"]
    assert abs(body["timestamp"] - time.time() * 1000) < 60_000


def test_metrics_watch_streams_one_json_line_per_sample(execd: httpx.Client) -> None:
    with execd.stream("GET", "/metrics/watch") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        raw = b""
        chunks = response.iter_raw()
        while raw.count(b"\n") < 2:
            raw += next(chunks)
    lines = raw.split(b"\n")
    for line in lines[:2]:
        sample = json.loads(line)
        assert line == json.dumps(sample, separators=(",", ":")).encode()
        assert set(sample) == {"cpu_count", "cpu_used_pct", "mem_total_mib", "mem_used_mib",
                               "timestamp"}
    assert json.loads(lines[1])["timestamp"] > json.loads(lines[0])["timestamp"]
