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
