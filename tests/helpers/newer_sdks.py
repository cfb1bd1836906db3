"""Running the newest SDKs (PyPI 1.1.x in `.venv-sdk-next`, npm 0.1.11 as
`opensandbox-next`) as subprocesses that print one JSON object."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT

NEXT_PYTHON = ROOT / ".venv-sdk-next" / "bin" / "python"
NEXT_JS = ROOT / "tests" / "js" / "node_modules" / "opensandbox-next"


def run_json(argv: list[str]) -> dict[str, object]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def require(path: Path) -> None:
    if not path.exists():
        pytest.fail(f"{path} is missing: run tests/setup.sh")
