"""Newer SDKs than the target (PyPI opensandbox 1.1.x, npm 0.1.11) against this server.

They speak upstream HEAD's contract (`timeout: null`, `secureAccess`, the 18080 endpoint
during create, exit codes from `evalue`), which the server accepts beside the target's.
Each runs in its own environment (`tests/setup.sh` installs both) as a subprocess.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.servers import ServerProcess

NEXT_PYTHON = ROOT / ".venv-sdk-next" / "bin" / "python"
NEXT_JS = ROOT / "tests" / "js" / "node_modules" / "opensandbox-next"


def run_json(argv: list[str]) -> dict[str, object]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def require(path: Path) -> None:
    if not path.exists():
        pytest.fail(f"{path} is missing: run tests/setup.sh")


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
