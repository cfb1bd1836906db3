"""Files, directories and metrics through the official SDKs, unmodified.

Python (`opensandbox==0.1.5`) writes several files in one multipart request; JS
(`@alibaba-group/opensandbox@0.1.6`, driven by `tests/js/files.mjs` under node) sends one
request per file. Each step is checked against what a command in the same sandbox sees.
Every test runs on both runtimes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from opensandbox import Sandbox
from opensandbox.exceptions import SandboxException
from opensandbox.models.filesystem import (
    ContentReplaceEntry,
    MoveEntry,
    SearchEntry,
    SetPermissionEntry,
    WriteEntry,
)

from tests.helpers import ROOT
from tests.helpers.servers import ServerProcess

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="session")
def server(execd_server: ServerProcess) -> ServerProcess:
    """Every test of this module runs on both runtimes."""
    return execd_server


@pytest.fixture
def sandbox(sdk_sandbox: Sandbox) -> Sandbox:
    return sdk_sandbox


async def run(sandbox: Sandbox, command: str) -> str:
    """A command's stdout lines, joined by newlines."""
    execution = await sandbox.commands.run(command)
    assert execution.error is None, execution.error
    return "\n".join(message.text for message in execution.logs.stdout)


async def test_python_sdk_files_round_trip(sandbox: Sandbox) -> None:
    files = sandbox.files
    await files.write_files([
        WriteEntry(path="/workspace/sdk/a.txt", data="alpha\nbeta\n"),
        WriteEntry(path="/workspace/sdk/deep/b.bin", data=bytes(range(256)), mode=600),
        WriteEntry(path="/workspace/sdk/c.py", data="print('hi')\n", mode=644),
    ])
    assert await run(sandbox, "cat /workspace/sdk/a.txt") == "alpha\nbeta"
    assert await run(sandbox, "od -An -tx1 -N4 -j252 /workspace/sdk/deep/b.bin") \
        == " fc fd fe ff"
    assert await run(sandbox, "stat -c '%a' /workspace/sdk/a.txt /workspace/sdk/deep/b.bin "
                              "/workspace/sdk/c.py") == "755\n600\n644"

    assert await files.read_file("/workspace/sdk/a.txt") == "alpha\nbeta\n"
    assert await files.read_bytes("/workspace/sdk/deep/b.bin") == bytes(range(256))
    assert await files.read_file("/workspace/sdk/a.txt", range_header="bytes=6-9") == "beta"
    assert await files.read_bytes("/workspace/sdk/deep/b.bin", range_header="bytes=-2") \
        == b"\xfe\xff"

    infos = await files.get_file_info(["/workspace/sdk/a.txt", "/workspace/sdk/deep"])
    info = infos["/workspace/sdk/a.txt"]
    assert (info.path, info.size, info.mode, info.owner, info.group) == (
        "/workspace/sdk/a.txt", 11, 755, "root", "root")
    assert int(await run(sandbox, "stat -c %Y /workspace/sdk/a.txt")) == int(
        info.modified_at.timestamp())
    assert infos["/workspace/sdk/deep"].mode == 755

    found = await files.search(SearchEntry(path="/workspace/sdk", pattern="*.{py,bin}"))
    assert sorted(e.path for e in found) == ["/workspace/sdk/c.py", "/workspace/sdk/deep/b.bin"]
    listed = await run(sandbox, "find /workspace/sdk -type f | sort")
    everything = await files.search(SearchEntry(path="/workspace/sdk", pattern="**"))
    assert sorted(e.path for e in everything) == listed.splitlines()

    await files.set_permissions([SetPermissionEntry(path="/workspace/sdk/a.txt", mode=640,
                                                    owner="nobody", group="nogroup")])
    assert await run(sandbox, "stat -c '%a %U %G' /workspace/sdk/a.txt") \
        == "640 nobody nogroup"

    await files.replace_contents([ContentReplaceEntry(path="/workspace/sdk/a.txt",
                                                      old_content="beta", new_content="gamma")])
    assert await run(sandbox, "cat /workspace/sdk/a.txt") == "alpha\ngamma"
    assert await run(sandbox, "stat -c '%a %U' /workspace/sdk/a.txt") == "640 nobody"

    await files.move_files([MoveEntry(src="/workspace/sdk/a.txt", dest="/tmp/moved/a.txt")])
    assert await run(sandbox, "cat /tmp/moved/a.txt; test -e /workspace/sdk/a.txt || "
                              "echo gone") == "alpha\ngamma\ngone"

    await files.create_directories([WriteEntry(path="/workspace/sdk/made/x", mode=700)])
    assert await run(sandbox, "stat -c %a /workspace/sdk/made/x") == "700"

    await files.delete_files(["/tmp/moved/a.txt", "/workspace/sdk/c.py"])
    await files.delete_directories(["/workspace/sdk/deep", "/workspace/sdk/made"])
    assert await run(sandbox, "ls -A /workspace/sdk /tmp/moved") == "/tmp/moved:\n/workspace/sdk:"

    with pytest.raises(SandboxException):
        await files.read_file("/workspace/sdk/a.txt")
    with pytest.raises(SandboxException):
        await files.get_file_info(["/workspace/none"])

    # And the other way round: what a command writes, the SDK reads.
    await run(sandbox, "printf 'from a command' > /tmp/cmd.txt")
    assert await files.read_file("/tmp/cmd.txt") == "from a command"

    metrics = await sandbox.get_metrics()
    assert metrics.cpu_count >= 1 and 0 <= metrics.memory_used_in_mib \
        <= metrics.memory_total_in_mib


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_js_sdk_files_round_trip(server: ServerProcess) -> None:
    script = ROOT / "tests" / "js" / "files.mjs"
    if not (ROOT / "tests" / "js" / "node_modules" / "@alibaba-group" / "opensandbox").exists():
        pytest.skip("the JS SDK is not installed (run tests/setup.sh)")
    done = subprocess.run(["node", str(script), server.domain, server.image],
                          capture_output=True, text=True,
                          timeout=120, cwd=Path(script).parent)
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(done.stdout)
    assert report["cat"] == ["one", "two"]
    assert report["modes"] == "755\n600"
    assert report["read"] == "one\n"
    assert report["range"] == "wo"
    assert report["info"] == {"path": "/workspace/js/a.txt", "size": 4, "mode": 755,
                              "owner": "root", "group": "root"}
    assert report["search"] == ["/workspace/js/a.txt", "/workspace/js/sub/b.txt"]
    assert report["permissions"] == "640 nobody nogroup"
    assert report["replaced"] == "ONE"
    assert report["moved"] == "ONE\ngone"
    assert report["dirs"] == "700"
    assert report["deleted"] == "end"  # the directory is empty
    assert report["bytes"] == [0, 1, 254, 255]
    assert report["metrics"]["cpuCount"] >= 1
