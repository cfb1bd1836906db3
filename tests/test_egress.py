"""Egress policies, enforced, on both runtimes; and the egress API on port 18080.

The tests build their own "internet" (`tests/helpers/test_internet.py`): a network namespace
with a DNS server that resolves the test names and an HTTP server on each of three
addresses. Each runtime gets a server whose DNS forwarder asks that DNS server
(`[egress] dns_upstream`); a program inside a sandbox then resolves and connects as any
program would (`tests/helpers/reach.py`), and the answers say what the policy let through.
No traffic leaves the machine.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RUNTIMES
from tests.helpers.contract import assert_egress_spec, assert_error, assert_lifecycle_spec
from tests.helpers.docker_engine import (
    docker_sections,
    remove_docker_sandboxes,
    require_docker,
    unavailable,
)
from tests.helpers.frames import split_frames
from tests.helpers.newer_sdks import NEXT_JS, NEXT_PYTHON, require, run_json
from tests.helpers.reach import reach
from tests.helpers.servers import ServerProcess, create_body, launch, wait_for
from tests.helpers.test_internet import HTTP_PORT, InternetUnavailable, TestInternet

EGRESS_PORT = 18080
AUTH = "OPENSANDBOX-EGRESS-AUTH"


@pytest.fixture(scope="module")
def internet() -> Iterator[TestInternet]:
    try:
        built = TestInternet().start()
    except InternetUnavailable as error:
        unavailable(f"the egress tests need a test internet: {error}")
    yield built
    built.stop()


@pytest.fixture(scope="module", params=RUNTIMES, ids=RUNTIMES)
def server(request: pytest.FixtureRequest, internet: TestInternet) -> Iterator[ServerProcess]:
    """A server of each runtime whose DNS forwarder asks the test internet's DNS server."""
    workdir = Path(tempfile.mkdtemp(prefix="opensandbox-egress-"))
    sections: dict[str, dict[str, Any]] = {"egress": {"dns_upstream": internet.dns}}
    instance = None
    if request.param == "docker":
        require_docker()
        (workdir / "host").mkdir()
        sections.update(docker_sections(workdir))
        instance = sections["docker"]["instance"]
    running = launch(sections, workdir)
    yield running
    running.stop()
    if instance is not None:
        remove_docker_sandboxes(instance)


def target(name: str) -> str:
    return f"{name}:{HTTP_PORT}"


def create(server: ServerProcess, policy: dict[str, Any] | None) -> str:
    body = create_body(server)
    if policy is not None:
        body["networkPolicy"] = policy
    response = httpx.post(f"{server.url}/v1/sandboxes", json=body, timeout=60)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def delete(server: ServerProcess, sandbox_id: str) -> None:
    httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60)


def egress(server: ServerProcess, sandbox_id: str, *, proxy: bool = False
           ) -> tuple[str, dict[str, str]]:
    """The sandbox's egress API: its base URL and the headers its endpoint says to send."""
    response = httpx.get(f"{server.url}/v1/sandboxes/{sandbox_id}/endpoints/{EGRESS_PORT}",
                         params={"use_server_proxy": str(proxy).lower()}, timeout=30)
    assert response.status_code == 200, response.text
    assert_lifecycle_spec(response, "head/sandbox-lifecycle.yml")
    endpoint = response.json()
    return f"http://{endpoint['endpoint']}", endpoint.get("headers") or {}


def call(server: ServerProcess, sandbox_id: str, method: str, path: str = "/policy", *,
         proxy: bool = False, spec: bool = True, **kwargs: Any) -> httpx.Response:
    """A request to the sandbox's egress API, its answer checked against the egress spec
    (`spec=False` for what the spec leaves out: POST and PUT of a whole policy, 413, 501)."""
    base, headers = egress(server, sandbox_id, proxy=proxy)
    response = httpx.request(method, base + path, headers={**headers, **kwargs.pop(
        "headers", {})}, timeout=60, **kwargs)
    if spec:
        assert_egress_spec(response)
    return response


# --- what a policy lets through -----------------------------------------------------------------


def test_deny_by_default_lets_only_the_allowed_name_through(server: ServerProcess,
                                                             internet: TestInternet) -> None:
    sandbox = create(server, {"defaultAction": "deny",
                              "egress": [{"action": "allow", "target": "allowed.test"}]})
    asked_before = len(internet.dns_log)  # the internet outlives each test: count from here
    try:
        beta = internet.address("beta")
        assert reach(server, sandbox, [target("allowed.test"), target("other.test"),
                                       target(beta)]) == {
            target("allowed.test"): "alpha",  # resolved through the policy, then connected
            target("other.test"): "nxdomain",  # a name the policy denies does not exist
            target(beta): "refused",  # an address no name let through: refused at once
        }
        # DNS over TCP is redirected and decided alike.
        assert reach(server, sandbox, [target("allowed.test"), target("other.test")],
                     tcp_dns=True) == {target("allowed.test"): "NOERROR",
                                       target("other.test"): "NXDOMAIN"}
        # The denied name never reached the resolver; the allowed one did.
        asked = internet.dns_log[asked_before:]
        assert "other.test" not in asked
        assert "allowed.test" in asked
    finally:
        delete(server, sandbox)


def test_wildcard_rules_match_below_the_domain_and_the_first_match_wins(
        server: ServerProcess, internet: TestInternet) -> None:
    sandbox = create(server, {"defaultAction": "deny", "egress": [
        {"action": "deny", "target": "deep.api.wild.test"},
        {"action": "allow", "target": "*.wild.test"}]})
    try:
        assert reach(server, sandbox, [target(name) for name in (
            "api.wild.test", "deep.api.wild.test", "wild.test", "allowed.test")]) == {
            target("api.wild.test"): "gamma",
            target("deep.api.wild.test"): "nxdomain",  # the deny rule came first
            target("wild.test"): "nxdomain",  # a wildcard does not match its apex
            target("allowed.test"): "nxdomain",  # no rule: the default
        }
    finally:
        delete(server, sandbox)


def test_ip_and_cidr_rules_decide_addresses_in_order(server: ServerProcess,
                                                     internet: TestInternet) -> None:
    alpha, beta, gamma = (internet.address(host) for host in ("alpha", "beta", "gamma"))
    sandbox = create(server, {"defaultAction": "deny", "egress": [
        {"action": "deny", "target": beta},
        {"action": "allow", "target": internet.cidr}]})
    try:
        assert reach(server, sandbox, [target(alpha), target(beta), target(gamma),
                                       target("allowed.test")]) == {
            target(alpha): "alpha", target(gamma): "gamma",  # inside the allowed block
            target(beta): "refused",  # denied by the rule before it
            target("allowed.test"): "nxdomain",  # address rules do not allow names
        }
    finally:
        delete(server, sandbox)


def test_allow_by_default_refuses_only_what_is_denied(server: ServerProcess,
                                                      internet: TestInternet) -> None:
    beta = internet.address("beta")
    sandbox = create(server, {"defaultAction": "allow", "egress": [
        {"action": "deny", "target": "other.test"},
        {"action": "deny", "target": internet.address("gamma")}]})
    try:
        assert reach(server, sandbox, [target("allowed.test"), target("other.test"),
                                       target(beta), target(internet.address("gamma"))]) == {
            target("allowed.test"): "alpha", target("other.test"): "nxdomain",
            # The denied name's address is not: names and addresses are decided apart.
            target(beta): "beta",
            target(internet.address("gamma")): "refused",
        }
    finally:
        delete(server, sandbox)


# --- the egress API ------------------------------------------------------------------------------


@pytest.mark.parametrize("proxy", [False, True], ids=["gateway", "server-proxy"])
def test_patch_and_delete_apply_to_the_next_connection(server: ServerProcess,
                                                       internet: TestInternet,
                                                       proxy: bool) -> None:
    sandbox = create(server, {"defaultAction": "deny",
                              "egress": [{"action": "allow", "target": "allowed.test"}]})
    alpha = internet.address("alpha")
    try:
        got = call(server, sandbox, "GET", proxy=proxy)
        assert got.json() == {"status": "ok", "mode": "enforcing", "enforcementMode": "dns+nft",
                              "policy": {"defaultAction": "deny", "egress": [
                                  {"action": "allow", "target": "allowed.test"}]}}
        assert reach(server, sandbox, [target("allowed.test"), target(alpha)]) == {
            target("allowed.test"): "alpha", target(alpha): "alpha"}

        patched = call(server, sandbox, "PATCH", proxy=proxy, json=[
            {"action": "allow", "target": "Other.Test"},
            {"action": "deny", "target": "allowed.test"},
            {"action": "allow", "target": "allowed.test"}])  # the first of a target wins
        assert patched.status_code == 200, patched.text
        assert patched.json() == {"status": "ok", "mode": "enforcing",
                                  "enforcementMode": "dns+nft"}
        assert call(server, sandbox, "GET", proxy=proxy).json()["policy"]["egress"] == [
            {"action": "allow", "target": "other.test"},
            {"action": "deny", "target": "allowed.test"}]
        assert reach(server, sandbox, [target("other.test"), target("allowed.test"),
                                       target(alpha)]) == {
            target("other.test"): "beta", target("allowed.test"): "nxdomain",
            # What the sandbox learned through a name that is now denied is gone too.
            target(alpha): "refused"}

        deleted = call(server, sandbox, "DELETE", proxy=proxy,
                       json=["ALLOWED.test", "not-there.test"])
        assert deleted.status_code == 200 and "reason" not in deleted.json(), deleted.text
        assert call(server, sandbox, "GET").json()["policy"] == {
            "defaultAction": "deny", "egress": [{"action": "allow", "target": "other.test"}]}
        nothing = call(server, sandbox, "DELETE", proxy=proxy, json=["not-there.test"])
        assert nothing.json()["reason"] == "no matching targets found"
        assert reach(server, sandbox, [target("other.test"), target("allowed.test")]) == {
            target("other.test"): "beta", target("allowed.test"): "nxdomain"}
    finally:
        delete(server, sandbox)


def test_a_sandbox_without_a_policy_is_unrestricted_until_given_one(
        server: ServerProcess, internet: TestInternet) -> None:
    alpha, beta = internet.address("alpha"), internet.address("beta")
    sandbox = create(server, None)
    try:
        got = call(server, sandbox, "GET")
        assert got.json() == {"status": "ok", "mode": "allow_all", "enforcementMode": "dns+nft",
                              "policy": {"defaultAction": "allow", "egress": []}}
        assert reach(server, sandbox, [target(alpha), target(beta)]) == {
            target(alpha): "alpha", target(beta): "beta"}
        # The first change starts enforcement.
        assert call(server, sandbox, "PATCH",
                    json=[{"action": "deny", "target": beta}]).status_code == 200
        assert reach(server, sandbox, [target(alpha), target(beta)]) == {
            target(alpha): "alpha", target(beta): "refused"}
        # A whole policy replaces it (POST, as upstream's sidecar takes it); an empty body
        # resets it to deny-all.
        replaced = call(server, sandbox, "POST", json={"defaultAction": "allow"}, spec=False)
        assert replaced.json()["mode"] == "allow_all"
        assert reach(server, sandbox, [target(beta)]) == {target(beta): "beta"}
        reset = httpx.post(egress(server, sandbox)[0] + "/policy",
                           headers=egress(server, sandbox)[1], timeout=30)
        assert reset.json() == {"status": "ok", "mode": "deny_all", "enforcementMode": "dns+nft",
                                "reason": "policy reset to default deny-all"}
        assert reach(server, sandbox, [target(alpha)]) == {target(alpha): "refused"}
    finally:
        delete(server, sandbox)


def test_egress_api_errors_are_plain_text_and_change_nothing(server: ServerProcess) -> None:
    sandbox = create(server, {"defaultAction": "deny",
                              "egress": [{"action": "allow", "target": "allowed.test"}]})
    try:
        base, headers = egress(server, sandbox)
        assert list(headers) == [AUTH]
        for method in ("GET", "PATCH", "DELETE"):
            for given in ({}, {AUTH: "wrong"}):
                refused = httpx.request(method, base + "/policy", headers=given, json=["x"])
                assert_egress_spec(refused)
                assert refused.status_code == 401
                assert refused.headers["content-type"].startswith("text/plain")
                assert AUTH in refused.text
        for body in (b"", b"[]", b"{", b'[{"action": "maybe", "target": "a.test"}]',
                     b'[{"action": "allow", "target": "not a name"}]',
                     b'[{"action": "allow"}]', b'{"action": "allow", "target": "a.test"}'):
            bad = call(server, sandbox, "PATCH", content=body,
                       headers={"content-type": "application/json"})
            assert bad.status_code == 400, (body, bad.text)
            assert bad.headers["content-type"].startswith("text/plain") and bad.text.strip()
        for body in (b"", b"[]", b'[""]', b"[1]"):
            assert call(server, sandbox, "DELETE", content=body).status_code == 400, body
        too_many = [{"action": "allow", "target": f"h{i}.test"} for i in range(4097)]
        assert call(server, sandbox, "PATCH", json=too_many, spec=False).status_code == 413
        assert call(server, sandbox, "GET").json()["policy"]["egress"] == [
            {"action": "allow", "target": "allowed.test"}]
        # The Credential Vault needs the credential proxy, which no sandbox here has.
        assert call(server, sandbox, "POST", "/credential-vault",
                    json={"credentials": [], "bindings": []}).status_code == 412
        for path in ("/credential-vault", "/credential-vault/credentials",
                     "/credential-vault/bindings/b"):
            missing = call(server, sandbox, "GET", path)
            assert missing.status_code == 404 and "credential proxy" in missing.text
        assert httpx.get(base + "/healthz").text == "ok"  # the one route without the token
    finally:
        delete(server, sandbox)


def test_a_paused_sandbox_keeps_its_egress_api(server: ServerProcess) -> None:
    sandbox = create(server, {"defaultAction": "deny"})
    try:
        assert httpx.post(f"{server.url}/v1/sandboxes/{sandbox}/pause",
                          timeout=30).status_code == 202
        wait_for(lambda: httpx.get(f"{server.url}/v1/sandboxes/{sandbox}", timeout=30)
                 .json()["status"]["state"] == "Paused", "the sandbox to pause")
        assert call(server, sandbox, "GET").json()["mode"] == "deny_all"
        assert call(server, sandbox, "PATCH", json=[{"action": "allow", "target": "a.test"}]
                    ).status_code == 200
    finally:
        delete(server, sandbox)


# --- create ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy, mentions", [
    ({"defaultAction": "maybe"}, "defaultAction"),
    ({"egress": [{"action": "permit", "target": "a.test"}]}, "egress[0].action"),
    ({"egress": [{"action": "allow", "target": "10.0.0.0/33"}]}, "CIDR"),
    ({"egress": [{"action": "allow", "target": "exa mple.com"}]}, "domain"),
])
def test_a_policy_that_cannot_be_read_is_refused_at_create(server: ServerProcess,
                                                           policy: dict[str, Any],
                                                           mentions: str) -> None:
    body = create_body(server, networkPolicy=policy)
    response = httpx.post(f"{server.url}/v1/sandboxes", json=body, timeout=60)
    assert_error(response, 400, "SANDBOX::INVALID_PARAMETER", mentions)


def test_an_empty_policy_denies_everything(server: ServerProcess,
                                           internet: TestInternet) -> None:
    """`networkPolicy: {}` is deny-all, as upstream's sidecar reads it (only leaving
    networkPolicy out is unrestricted)."""
    sandbox = create(server, {})
    try:
        assert call(server, sandbox, "GET").json()["policy"] == {"defaultAction": "deny",
                                                                 "egress": []}
        assert reach(server, sandbox, [target("allowed.test"),
                                       target(internet.address("alpha"))]) == {
            target("allowed.test"): "nxdomain", target(internet.address("alpha")): "refused"}
    finally:
        delete(server, sandbox)


def test_health_says_how_egress_is_enforced(server: ServerProcess,
                                            internet: TestInternet) -> None:
    health = httpx.get(f"{server.url}/health", timeout=30).json()
    assert health["egress"]["enforced"] is True
    assert health["egress"]["mode"] == "dns+nft"
    assert health["egress"]["dnsUpstream"] == [f"{internet.dns}:53"]


def test_nothing_is_left_of_a_policy_when_its_sandbox_goes(server: ServerProcess) -> None:
    """The server holds each enforced sandbox's network namespace open while it lives
    (`/proc/<pid>/ns/net`, or the engine's bind of it); deleting the sandbox lets it go."""
    pid = server.process.pid

    def namespaces_held() -> set[str]:
        held = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):  # closed meanwhile
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("net:[") or "/netns/" in link:
                    held.add(f"{fd} {link}")
        return held

    before = namespaces_held()
    sandbox = create(server, {"defaultAction": "deny"})
    assert len(namespaces_held() - before) == 1
    delete(server, sandbox)
    wait_for(lambda: namespaces_held() == before, "the sandbox's namespace to be let go")


def test_a_server_that_cannot_enforce_refuses_the_policy(
        unprivileged_server: ServerProcess) -> None:
    """A server run as a normal user cannot enter its sandboxes' network namespaces: it
    says so in /health and refuses networkPolicy (never runs it unenforced); a sandbox
    without one is made as usual, and its egress API says it is unrestricted."""
    health = httpx.get(f"{unprivileged_server.url}/health", timeout=30).json()
    assert health["egress"]["enforced"] is False
    assert "root" in health["egress"]["reason"]
    body = create_body(unprivileged_server, networkPolicy={"defaultAction": "deny"})
    response = httpx.post(f"{unprivileged_server.url}/v1/sandboxes", json=body, timeout=60)
    assert_error(response, 501, "GENERAL::NOT_IMPLEMENTED", "networkPolicy")
    assert "root" in response.json()["message"]
    sandbox = create(unprivileged_server, None)
    try:
        assert call(unprivileged_server, sandbox, "GET").json()["mode"] == "allow_all"
        refused = call(unprivileged_server, sandbox, "PATCH",
                       json=[{"action": "deny", "target": "a.test"}], spec=False)
        assert refused.status_code == 501 and "root" in refused.text
    finally:
        delete(unprivileged_server, sandbox)


def test_the_sandbox_cannot_lift_its_own_policy(server: ServerProcess,
                                                internet: TestInternet) -> None:
    """Root inside the sandbox has no capability over its network: it can neither change
    the rules nor take the forwarder's port, and asking another resolver directly is
    redirected to the forwarder all the same."""
    sandbox = create(server, {"defaultAction": "deny",
                              "egress": [{"action": "allow", "target": "allowed.test"}]})
    try:
        script = (
            "import socket, subprocess\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "try:\n"
            "    s.bind(('127.0.0.1', 15353)); print('bound')\n"
            "except OSError as e:\n"
            "    print('bind', e.errno)\n"
            "try:\n"
            "    r = subprocess.run(['nft', 'flush', 'ruleset'], capture_output=True)\n"
            "    print('nft', r.returncode)\n"
            "except FileNotFoundError:\n"
            "    print('nft', 'missing')\n")
        response = httpx.post(f"{server.url}/sandboxes/{sandbox}/proxy/44772/command",
                              json={"command": f"python3 -c {shlex.quote(script)}"},
                              timeout=60)
        lines = [e["text"] for e in split_frames(response.content) if e["type"] == "stdout"]
        assert lines[0] == f"bind {errno.EADDRINUSE}"
        assert lines[1] != "nft 0"  # refused (or no nft in the image at all)
        with_resolver = reach(server, sandbox, [target("allowed.test"), target("other.test")],
                              resolver=internet.dns)
        assert with_resolver == {target("allowed.test"): "NOERROR",
                                 target("other.test"): "NXDOMAIN"}
        assert reach(server, sandbox, [target(internet.address("beta"))]) == {
            target(internet.address("beta")): "refused"}
    finally:
        delete(server, sandbox)


# --- the SDKs ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_sdk_readme_creates_a_sandbox_with_a_policy(server: ServerProcess) -> None:
    """The SDK README's create example (0.1.5, which has `network_policy` but no egress
    API), with this test internet's names."""
    from datetime import timedelta

    from opensandbox import Sandbox
    from opensandbox.config import ConnectionConfig
    from opensandbox.models.sandboxes import NetworkPolicy, NetworkRule

    config = ConnectionConfig(domain=server.domain, request_timeout=timedelta(seconds=60))
    sandbox = await Sandbox.create(
        server.image,
        connection_config=config,
        timeout=timedelta(minutes=30),
        resource={"cpu": "2", "memory": "4Gi"},
        env={"PYTHONPATH": "/app"},
        metadata={"project": "demo"},
        network_policy=NetworkPolicy(
            defaultAction="deny",
            egress=[NetworkRule(action="allow", target="allowed.test")],
        ),
    )
    try:
        fetch = ("import sys, urllib.request\n"
                 "for url in sys.argv[1:]:\n"
                 "    try:\n"
                 "        print(urllib.request.urlopen(url, timeout=10).read().decode())\n"
                 "    except Exception as error:\n"
                 "        print('failed', type(error).__name__)\n")
        execution = await sandbox.commands.run(
            f"python3 -c {shlex.quote(fetch)} http://allowed.test:{HTTP_PORT}/ "
            f"http://other.test:{HTTP_PORT}/")
        assert [line.text for line in execution.logs.stdout] == ["alpha", "failed URLError"]
    finally:
        await sandbox.kill()
        await sandbox.close()


@pytest.mark.parametrize("proxy", [False, True], ids=["gateway", "server-proxy"])
def test_the_newest_sdk_reads_and_changes_the_policy(server: ServerProcess, proxy: bool) -> None:
    require(NEXT_PYTHON)
    argv = [str(NEXT_PYTHON), "tests/compat/newer_egress_sdk.py", server.domain, server.image,
            f"http://allowed.test:{HTTP_PORT}/", f"http://other.test:{HTTP_PORT}/"]
    out = run_json(argv + (["--proxy"] if proxy else []))
    assert_the_policy_flow(out)
    assert "404" in str(out["vault"])
    assert out["plain_policy"] == {"defaultAction": "allow", "egress": []}


def test_a_restarted_server_puts_the_policies_of_its_docker_sandboxes_back(
        internet: TestInternet, tmp_path: Path) -> None:
    """Docker sandboxes outlive the server. Its rules stay in their namespaces meanwhile
    (what they refused stays refused); the server that adopts them serves their names
    again, under the policy as last changed."""
    require_docker()
    (tmp_path / "host").mkdir()
    sections: dict[str, dict[str, Any]] = {"egress": {"dns_upstream": internet.dns},
                                           **docker_sections(tmp_path)}
    first = launch(sections, tmp_path)
    try:
        sandbox = create(first, {"defaultAction": "deny",
                                 "egress": [{"action": "allow", "target": "allowed.test"}]})
        assert call(first, sandbox, "PATCH", json=[{"action": "allow", "target": "other.test"}]
                    ).status_code == 200
        first.stop()
        beta = internet.address("beta")
        # No server: the rules still refuse, and no name resolves (nothing serves them).
        container = f"sandbox-{sandbox}"
        alone = subprocess.run(["docker", "exec", container, "python3", "-c", (
            "import socket\n"
            f"try:\n    socket.create_connection(('{beta}', {HTTP_PORT}), timeout=10)\n"
            "except ConnectionRefusedError:\n    print('refused')\n")],
            capture_output=True, text=True, timeout=60)
        assert alone.stdout.strip() == "refused", alone.stderr
        second = launch(sections, tmp_path)
        try:
            assert call(second, sandbox, "GET").json()["policy"]["egress"] == [
                {"action": "allow", "target": "other.test"},
                {"action": "allow", "target": "allowed.test"}]
            assert reach(second, sandbox, [target("allowed.test"), target("other.test"),
                                           target(internet.address("gamma"))]) == {
                target("allowed.test"): "alpha", target("other.test"): "beta",
                target(internet.address("gamma")): "refused"}
        finally:
            second.stop()
    finally:
        first.stop()
        remove_docker_sandboxes(sections["docker"]["instance"])


@pytest.mark.parametrize("proxy", [False, True], ids=["gateway", "server-proxy"])
def test_the_newest_js_sdk_reads_and_changes_the_policy(server: ServerProcess,
                                                       proxy: bool) -> None:
    require(NEXT_JS)
    argv = ["node", "tests/js/newer_egress.mjs", server.domain, server.image,
            f"http://allowed.test:{HTTP_PORT}/", f"http://other.test:{HTTP_PORT}/"]
    out = run_json(argv + (["--proxy"] if proxy else []))
    assert "error" not in out, out.get("error")
    assert_the_policy_flow(out)


def assert_the_policy_flow(out: dict[str, Any]) -> None:
    """What the newest SDKs' programs see (tests/compat/newer_egress_sdk.py and
    tests/js/newer_egress.mjs): a deny-by-default policy allowing allowed.test, then a patch
    that allows other.test and denies allowed.test, then other.test's rule deleted."""
    assert out["first"] == ["alpha", "failed URLError"]
    assert out["policy"] == {"defaultAction": "deny",
                             "egress": [{"action": "allow", "target": "allowed.test"}]}
    assert out["patched"] == {"defaultAction": "deny", "egress": [
        {"action": "allow", "target": "other.test"},
        {"action": "deny", "target": "allowed.test"}]}
    assert out["after_patch"] == ["failed URLError", "beta"]
    assert out["after_delete"] == ["failed URLError", "failed URLError"]
