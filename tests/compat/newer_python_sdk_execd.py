"""The newest Python SDK (opensandbox 1.1.x) through execd's newest surface: bash sessions,
directory listing, line reads, `set_env`. Prints what it saw as one JSON object for
tests/test_execd_newest.py.

    .venv-sdk-next/bin/python tests/compat/newer_python_sdk_execd.py <domain> <image> [--proxy]
"""

import asyncio
import json
import sys
from datetime import timedelta

from opensandbox import Sandbox
from opensandbox.config import ConnectionConfig
from opensandbox.exceptions import SandboxException
from opensandbox.models.execd import ExecutionHandlers
from opensandbox.models.filesystem import DirectoryListEntry, WriteEntry


def lines(execution):
    return [m.text for m in execution.logs.stdout]


async def readme_session(sandbox: Sandbox, out: dict[str, object]) -> None:
    """The README's streaming handlers (section 3), on a session run."""
    seen: list[str] = []

    async def handle_stdout(msg):
        seen.append(f"STDOUT: {msg.text}")

    async def handle_complete(complete):
        seen.append("complete")

    handlers = ExecutionHandlers(on_stdout=handle_stdout, on_execution_complete=handle_complete)
    session_id = await sandbox.commands.create_session()
    await sandbox.commands.run_in_session(
        session_id, "for i in {1..3}; do echo \"Count $i\"; sleep 0.2; done",
        handlers=handlers)
    await sandbox.commands.delete_session(session_id)
    out["readme_handlers"] = seen


async def sessions(sandbox: Sandbox, out: dict[str, object]) -> None:
    commands = sandbox.commands
    sid = await commands.create_session(working_directory="/tmp/session-home")
    first = await commands.run_in_session(
        sid, "export KEPT=exported; PLAIN=plain; f() { echo fn; }; alias al='echo alias'; "
        "cd /tmp && mkdir -p deeper && cd deeper; pwd")
    out["session_first"] = {"id": first.id, "stdout": lines(first),
                            "exit_code": first.exit_code}
    second = await commands.run_in_session(
        sid, 'echo "kept=$KEPT plain=${PLAIN:-unset}"; pwd; type f >/dev/null 2>&1 || '
        'echo no-function; echo err >&2')
    out["session_second"] = {"stdout": lines(second), "stderr": [m.text for m in
                                                                second.logs.stderr]}
    third = await commands.run_in_session(sid, "pwd; unset KEPT", working_directory="/")
    fourth = await commands.run_in_session(sid, 'pwd; echo "kept=${KEPT:-gone}"')
    out["session_cwd"] = [lines(third), lines(fourth)]
    slow = await commands.run_in_session(sid, "echo before; sleep 30; echo after",
                                         timeout=timedelta(seconds=1))
    out["session_timeout"] = {"stdout": lines(slow), "exit_code": slow.exit_code,
                              "error": slow.error.value if slow.error else None}
    again = await commands.run_in_session(sid, "echo still-usable")
    out["session_after_timeout"] = lines(again)
    failed = await commands.run_in_session(sid, "echo before-exit; exit 7")
    out["session_exit"] = {"stdout": lines(failed), "exit_code": failed.exit_code}
    await commands.delete_session(sid)
    try:
        await commands.run_in_session(sid, "echo gone")
        out["session_deleted"] = "still there"
    except SandboxException as error:
        out["session_deleted"] = type(error).__name__
    fresh = await commands.create_session()
    where = await commands.run_in_session(fresh, "pwd")
    out["session_default_cwd"] = lines(where)
    await commands.delete_session(fresh)


async def filesystem(sandbox: Sandbox, out: dict[str, object]) -> None:
    files = sandbox.files
    await files.write_files([
        WriteEntry(path="/tmp/tree/a.txt", data="one\ntwo\r\nthree\n\nfive"),
        WriteEntry(path="/tmp/tree/sub/b.txt", data="b"),
        WriteEntry(path="/tmp/tree/sub/deep/c.txt", data="c"),
    ])
    for depth in (None, 2, 0):
        entries = await files.list_directory(DirectoryListEntry(path="/tmp/tree", depth=depth))
        out[f"list_depth_{depth}"] = [[e.path, e.entry_type] for e in entries]
    out["read_offset"] = await files.read_file("/tmp/tree/a.txt", offset=2, limit=1)
    out["read_tail"] = await files.read_file("/tmp/tree/a.txt", offset=3)
    out["read_past_end"] = await files.read_file("/tmp/tree/a.txt", offset=50, limit=2)
    out["read_range"] = await files.read_file("/tmp/tree/a.txt", range_header="bytes=0-2")


async def environment(sandbox: Sandbox, out: dict[str, object]) -> None:
    commands = sandbox.commands
    await commands.set_env("GREETING", "hello world")
    await commands.set_env("QUOTED", "it's $HOME")
    run = await commands.run('echo "$GREETING"; echo "$QUOTED"')
    out["set_env_run"] = lines(run)
    sid = await commands.create_session()
    seen = await commands.run_in_session(sid, 'echo "$GREETING"; export GREETING=mine')
    await commands.set_env("GREETING", "changed")
    mine = await commands.run_in_session(sid, 'echo "$GREETING"')
    out["set_env_session"] = [lines(seen), lines(mine)]
    await commands.delete_session(sid)


async def main(domain: str, image: str, use_server_proxy: bool) -> dict[str, object]:
    config = ConnectionConfig(domain=domain, use_server_proxy=use_server_proxy)
    out: dict[str, object] = {}
    # As the SDK's README starts one: its defaults (entrypoint, health check) throughout.
    sandbox = await Sandbox.create(image, connection_config=config)
    try:
        await readme_session(sandbox, out)
        await sessions(sandbox, out)
        await filesystem(sandbox, out)
        await environment(sandbox, out)
    finally:
        await sandbox.kill()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], "--proxy" in sys.argv)),
                     default=str))
