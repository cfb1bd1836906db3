"""execd responses outside files and code, against `execd-api.yaml`: ping, command status,
command logs and metrics (the spec's cursor is a line index; the server's a byte offset,
which changes no shape)."""

from __future__ import annotations

import httpx

from tests.helpers.contract import assert_execd_spec
from tests.helpers.servers import ServerProcess, execd_url, wait_for


def test_ping_status_logs_and_metrics_match_the_spec(server: ServerProcess,
                                                     sandbox_id: str) -> None:
    with httpx.Client(base_url=execd_url(server, sandbox_id), timeout=30) as execd:
        ping = execd.get("/ping")
        assert ping.status_code == 200 and ping.content == b""
        assert_execd_spec(ping)

        with execd.stream("POST", "/command",
                          json={"command": "echo one; echo two", "background": True}) as run:
            frames = [line for line in run.iter_lines() if line.strip()]
        command_id = httpx.Response(200, content=frames[0]).json()["text"]

        def finished() -> httpx.Response | None:
            status = execd.get(f"/command/status/{command_id}")
            return None if status.json()["running"] else status

        status = wait_for(finished, "the background command to finish")
        assert status.json()["exit_code"] == 0
        assert_execd_spec(status)

        logs = execd.get(f"/command/{command_id}/logs", params={"cursor": 0})
        assert logs.text == "one\ntwo\n"
        assert logs.headers["EXECD-COMMANDS-TAIL-CURSOR"] == str(len(b"one\ntwo\n"))
        assert_execd_spec(logs)

        metrics = execd.get("/metrics")
        body = metrics.json()
        assert 0 <= body["mem_used_mib"] <= body["mem_total_mib"]
        assert 0 <= body["cpu_used_pct"] <= 100
        assert_execd_spec(metrics)
