"""Newer SDKs than the target (PyPI opensandbox 1.1.x, npm 0.1.11) against this server.

They speak upstream HEAD's contract (`timeout: null`, `secureAccess`, the 18080 endpoint
during create, exit codes from `evalue`), which the server accepts beside the target's.
Each runs in its own environment (`tests/setup.sh` installs both) as a subprocess.
"""

from __future__ import annotations

import pytest

from tests.helpers.newer_sdks import NEXT_JS, NEXT_PYTHON, require, run_json
from tests.helpers.servers import ServerProcess


@pytest.mark.parametrize("proxy", [False, True], ids=["gateway", "server-proxy"])
def test_newer_python_sdk(server: ServerProcess, proxy: bool) -> None:
    require(NEXT_PYTHON)
    argv = [str(NEXT_PYTHON), "tests/compat/newer_python_sdk.py", server.domain]
    out = run_json(argv + (["--proxy"] if proxy else []))
    assert out["stdout"] == ["hi"] and out["stderr"] == ["oops"]
    assert out["exit_code"] == 3
    assert out["read"] == "newer SDK" and out["cat"] == ["newer SDK"]
    assert out["memory_ok"] is True
    assert out["state_after_resume"] == "Running"
    assert out["expires_at_without_timeout"] is None


@pytest.mark.parametrize("proxy", [False, True], ids=["gateway", "server-proxy"])
def test_newer_js_sdk(server: ServerProcess, proxy: bool) -> None:
    require(NEXT_JS)
    argv = ["node", "tests/js/newer_sdk.mjs", server.domain]
    out = run_json(argv + (["--proxy"] if proxy else []))
    assert "error" not in out, out.get("error")
    assert out["healthy"] is True
    assert out["stdout"] == ["hi"] and out["stderr"] == ["oops"]
    assert out["exitCode"] == 3
    assert out["read"] == "written by the newer SDK"
    assert out["cat"] == ["written by the newer SDK"]
    assert out["backgroundLog"] == "one\ntwo\n"
    assert out["stateAfterResume"] == "Running"


# --- the Lifecycle API's newest surface, on both runtimes ---------------------------------------


def check_lifecycle_run(out: dict[str, object], *, signed: bool) -> None:
    assert "error" not in out, out.get("error")
    assert out["listed"] == [True]
    assert out.get("snapshot_first_state", out.get("snapshotFirstState")) == "Creating"
    assert out.get("snapshot_state", out.get("snapshotState")) == "Ready"
    assert out.get("restored_stdout", out.get("restoredStdout"))[0].startswith("from-")  # type: ignore[index]
    assert out.get("paused_snapshot_state", out.get("pausedSnapshotState")) == "Ready"
    assert out.get("listed_snapshots", out.get("listedSnapshots")) is True
    assert out.get("deleted_snapshot", out.get("deletedSnapshot")) == 404
    if signed:
        assert (out.get("signed_status", out.get("signedStatus")),
                out.get("altered_status", out.get("alteredStatus")),
                out.get("expired_status", out.get("expiredStatus"))) == (200, 401, 401)
    else:  # upstream refuses `expires` with `use_server_proxy`
        assert out.get("signed_refused") == 400


@pytest.mark.parametrize("proxy", [False, True], ids=["gateway", "server-proxy"])
def test_newer_python_sdk_lifecycle(execd_server: ServerProcess, proxy: bool) -> None:
    require(NEXT_PYTHON)
    argv = [str(NEXT_PYTHON), "tests/compat/newer_lifecycle_sdk.py", execd_server.domain,
            execd_server.image]
    out = run_json(argv + (["--proxy"] if proxy else []))
    check_lifecycle_run(out, signed=not proxy)
    assert out["patched"] == out["got"] and out["patched"]["stage"] == "dev"  # type: ignore[index]
    assert "team" not in out["patched"]  # type: ignore[operator]
    assert out["restored_snapshot_id"]
    assert "entrypoint says hi" in out["logs"]  # type: ignore[operator]
    assert out["event_kinds"] == ["Created", "Snapshotted", "Paused", "Snapshotted", "Resumed"]


@pytest.mark.parametrize("proxy", [False, True], ids=["gateway", "server-proxy"])
def test_newer_js_sdk_lifecycle(execd_server: ServerProcess, proxy: bool) -> None:
    require(NEXT_JS)
    argv = ["node", "tests/js/newer_lifecycle.mjs", execd_server.domain, execd_server.image]
    out = run_json(argv + (["--proxy"] if proxy else []))
    # The JS SDK sends `expires` alone, so its signed endpoints work with the proxy too.
    check_lifecycle_run(out, signed=True)
    assert out["patched"]["stage"] == "dev" and "team" not in out["patched"]  # type: ignore[index,operator]
    assert out["restoredSnapshotId"]
