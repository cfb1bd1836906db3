"""The Lifecycle API over raw HTTP: routes, status codes, bodies, every validation error,
auth, request ids, the state machine, TTL expiry, list filters and endpoints.

Success bodies are checked against `../shared/specs/sandbox-lifecycle.yml` (the target
contract); bodies of sandboxes without expiry, which only newer SDKs create, are checked
against the newer `head/` spec, where `expiresAt` is optional.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.helpers.contract import assert_error, assert_lifecycle_spec
from tests.helpers.servers import ServerProcess, create_body, launch, wait_for

RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
EXECD_PORT = 44772


# --- helpers ---------------------------------------------------------------------------------


def assert_no_nulls(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert item is not None, f"{key} is null"
            assert_no_nulls(item)
    elif isinstance(value, list):
        for item in value:
            assert_no_nulls(item)


def parse_time(text: str) -> datetime:
    assert RFC3339_Z.match(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def state_of(http: httpx.Client, sandbox_id: str) -> str:
    response = http.get(f"/v1/sandboxes/{sandbox_id}")
    assert response.status_code == 200, response.text
    return str(response.json()["status"]["state"])


@pytest.fixture
def created(http: httpx.Client) -> Iterator[Callable[..., dict[str, Any]]]:
    """Create sandboxes (with `create_body` overrides); all are deleted afterwards."""
    ids: list[str] = []

    def create(**overrides: Any) -> dict[str, Any]:
        response = http.post("/v1/sandboxes", json=create_body(**overrides))
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        ids.append(body["id"])
        return body

    yield create
    for sandbox_id in ids:
        http.delete(f"/v1/sandboxes/{sandbox_id}")


def tag() -> dict[str, str]:
    """Metadata unique to one test, so list filters see only that test's sandboxes."""
    return {"suite": "t" + uuid.uuid4().hex[:12]}


# --- routes, codes, shapes -------------------------------------------------------------------


def test_create_answers_202_with_a_camelcase_body(http: httpx.Client) -> None:
    before = datetime.now(UTC)
    response = http.post("/v1/sandboxes", json=create_body(metadata={"team": "ai"}))
    assert response.status_code == 202, response.text
    body = response.json()
    http_cleanup = body["id"]
    try:
        assert_lifecycle_spec(response)
        assert_no_nulls(body)
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                            body["id"])
        assert set(body) == {"id", "status", "metadata", "expiresAt", "createdAt",
                             "entrypoint"}
        assert body["status"]["state"] in ("Pending", "Running")
        assert body["metadata"] == {"team": "ai"}
        assert body["entrypoint"] == ["tail", "-f", "/dev/null"]
        created_at = parse_time(body["createdAt"])
        assert created_at >= before - timedelta(seconds=1)
        assert parse_time(body["expiresAt"]) - created_at == timedelta(seconds=600)
        parse_time(body["status"]["lastTransitionAt"])
    finally:
        http.delete(f"/v1/sandboxes/{http_cleanup}")


def test_every_route_works_under_v1_and_at_the_root(http: httpx.Client) -> None:
    for prefix in ("/v1", ""):
        response = http.post(f"{prefix}/sandboxes", json=create_body())
        assert response.status_code == 202, (prefix, response.text)
        assert_lifecycle_spec(response)
        sandbox_id = response.json()["id"]
        base = f"{prefix}/sandboxes/{sandbox_id}"
        got = http.get(base)
        assert got.status_code == 200
        assert_lifecycle_spec(got)
        assert got.json()["image"] == {"uri": "python:3.11"}
        listed = http.get(f"{prefix}/sandboxes")
        assert listed.status_code == 200
        assert_lifecycle_spec(listed)
        endpoint = http.get(f"{base}/endpoints/{EXECD_PORT}")
        assert endpoint.status_code == 200
        assert_lifecycle_spec(endpoint)
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        renewed = http.post(f"{base}/renew-expiration", json={"expiresAt": future})
        assert renewed.status_code == 200, renewed.text
        assert_lifecycle_spec(renewed)
        paused = http.post(f"{base}/pause")
        assert paused.status_code == 202, paused.text
        assert paused.content == b""
        assert_lifecycle_spec(paused)
        wait_for(lambda b=base: http.get(b).json()["status"]["state"] == "Paused", "Paused")
        resumed = http.post(f"{base}/resume")
        assert resumed.status_code == 202, resumed.text
        assert resumed.content == b""
        assert_lifecycle_spec(resumed)
        deleted = http.delete(base)
        assert deleted.status_code == 204
        assert deleted.content == b""
        assert_lifecycle_spec(deleted)
        assert_error(http.get(base), 404, "DOCKER::SANDBOX_NOT_FOUND", sandbox_id)


def test_health_is_at_the_root_only_and_docs_exist(http: httpx.Client) -> None:
    health = http.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "healthy"
    assert_error(http.get("/v1/health"), 404, "GENERAL::NOT_FOUND")
    assert http.get("/docs").status_code == 200
    assert http.get("/openapi.json").json()["paths"]


def test_unknown_routes_and_methods_use_the_error_shape(http: httpx.Client) -> None:
    assert_error(http.get("/v1/nothing-here"), 404, "GENERAL::NOT_FOUND")
    assert_error(http.put("/v1/sandboxes"), 405, "GENERAL::METHOD_NOT_ALLOWED")


def test_get_and_actions_on_an_unknown_sandbox_are_404(http: httpx.Client) -> None:
    missing = str(uuid.uuid4())
    base = f"/v1/sandboxes/{missing}"
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    for response in (http.get(base), http.delete(base), http.post(f"{base}/pause"),
                     http.post(f"{base}/resume"),
                     http.post(f"{base}/renew-expiration", json={"expiresAt": future}),
                     http.get(f"{base}/endpoints/8080")):
        body = assert_error(response, 404, "DOCKER::SANDBOX_NOT_FOUND", missing)
        assert_lifecycle_spec(response)
        assert body["message"] == f"Sandbox {missing} not found."


# --- create validation --------------------------------------------------------------------------

INVALID_CREATES: list[tuple[str, dict[str, Any], str, str]] = [
    ("timeout below 60", {"timeout": 59}, "SANDBOX::INVALID_PARAMETER", "timeout"),
    ("timeout above 86400", {"timeout": 86401}, "SANDBOX::INVALID_PARAMETER", "timeout"),
    ("timeout not an int", {"timeout": "soon"}, "SANDBOX::INVALID_PARAMETER", "timeout"),
    ("timeout fractional", {"timeout": 60.5}, "SANDBOX::INVALID_PARAMETER", "timeout"),
    ("empty entrypoint", {"entrypoint": []}, "SANDBOX::INVALID_PARAMETER", "entrypoint"),
    ("blank program", {"entrypoint": [""]}, "SANDBOX::INVALID_PARAMETER", "entrypoint"),
    ("entrypoint not a list", {"entrypoint": "sleep 1"}, "SANDBOX::INVALID_PARAMETER",
     "entrypoint"),
    ("non-string cpu", {"resourceLimits": {"cpu": 1}}, "SANDBOX::INVALID_PARAMETER",
     "resourceLimits.cpu"),
    ("non-string memory", {"resourceLimits": {"memory": 512}}, "SANDBOX::INVALID_PARAMETER",
     "resourceLimits.memory"),
    ("image missing", {"image": None}, "SANDBOX::INVALID_PARAMETER", "image"),
    ("image uri missing", {"image": {}}, "SANDBOX::INVALID_PARAMETER", "image.uri"),
    ("non-string metadata value", {"metadata": {"a": 1}}, "SANDBOX::INVALID_PARAMETER",
     "metadata.a"),
    ("non-string env value", {"env": {"A": 1}}, "SANDBOX::INVALID_PARAMETER", "env.A"),
    ("label key with a space", {"metadata": {"a b": "v"}}, "SANDBOX::INVALID_METADATA_LABEL",
     "'a b'"),
    ("label key too long", {"metadata": {"k" * 64: "v"}}, "SANDBOX::INVALID_METADATA_LABEL",
     "k" * 64),
    ("label key starts with a dash", {"metadata": {"-a": "v"}},
     "SANDBOX::INVALID_METADATA_LABEL", "'-a'"),
    ("label key with an empty prefix", {"metadata": {"/a": "v"}},
     "SANDBOX::INVALID_METADATA_LABEL", "'/a'"),
    ("label key with an empty name", {"metadata": {"example.com/": "v"}},
     "SANDBOX::INVALID_METADATA_LABEL", "example.com/"),
    ("label prefix with upper case", {"metadata": {"Example.com/a": "v"}},
     "SANDBOX::INVALID_METADATA_LABEL", "Example.com/a"),
    ("label prefix with two slashes", {"metadata": {"a/b/c": "v"}},
     "SANDBOX::INVALID_METADATA_LABEL", "a/b/c"),
    ("label value with a space", {"metadata": {"ok": "a b"}},
     "SANDBOX::INVALID_METADATA_LABEL", "'a b'"),
    ("label value too long", {"metadata": {"ok": "v" * 64}},
     "SANDBOX::INVALID_METADATA_LABEL", "v" * 64),
    ("label value ends with a dot", {"metadata": {"ok": "v."}},
     "SANDBOX::INVALID_METADATA_LABEL", "'v.'"),
    ("label key with a trailing newline", {"metadata": {"a\n": "v"}},
     "SANDBOX::INVALID_METADATA_LABEL", "a\n"),
    ("label value with a trailing newline", {"metadata": {"a": "v\n"}},
     "SANDBOX::INVALID_METADATA_LABEL", "v\n"),
    ("unbalanced quote in a one-string entrypoint", {"entrypoint": ["sh -c 'exit"]},
     "SANDBOX::INVALID_PARAMETER", "entrypoint"),
]


@pytest.mark.parametrize(("overrides", "code", "mentions"),
                         [case[1:] for case in INVALID_CREATES],
                         ids=[case[0] for case in INVALID_CREATES])
def test_invalid_create_is_400_with_code_and_message(http: httpx.Client,
                                                     overrides: dict[str, Any], code: str,
                                                     mentions: str) -> None:
    body = create_body(**overrides)
    body = {k: v for k, v in body.items() if v is not None}
    response = http.post("/v1/sandboxes", json=body)
    assert_error(response, 400, code, mentions)
    assert_lifecycle_spec(response)


@pytest.mark.parametrize("missing", ["image", "entrypoint"])
def test_missing_required_fields_are_400(http: httpx.Client, missing: str) -> None:
    body = create_body()
    del body[missing]
    assert_error(http.post("/v1/sandboxes", json=body), 400, "SANDBOX::INVALID_PARAMETER",
                 missing)


def test_malformed_json_is_400_not_422(http: httpx.Client) -> None:
    response = http.post("/v1/sandboxes", content=b"{not json",
                         headers={"content-type": "application/json"})
    assert_error(response, 400, "SANDBOX::INVALID_PARAMETER", "JSON")
    assert_error(http.post("/v1/sandboxes", json=[1]), 400, "SANDBOX::INVALID_PARAMETER")


def test_valid_label_forms_are_accepted(http: httpx.Client,
                                        created: Callable[..., dict[str, Any]]) -> None:
    metadata = {"app.kubernetes.io/name": "web", "empty": "", "A_b.c-9": "X_y.z-1",
                "k" * 63: "v" * 63}
    body = created(metadata=metadata)
    assert body["metadata"] == metadata
    listed = http.get(f"/v1/sandboxes/{body['id']}").json()
    assert listed["metadata"] == metadata


def test_unknown_fields_are_ignored(http: httpx.Client,
                                    created: Callable[..., dict[str, Any]]) -> None:
    body = created(secureAccess=False, platform={"os": "linux", "arch": "amd64"},
                   snapshotId=None, somethingNew={"x": [1, 2]})
    assert state_of(http, body["id"]) == "Running"


@pytest.mark.parametrize("timeout", ["absent", None])
def test_no_timeout_means_no_expiry(http: httpx.Client,
                                    created: Callable[..., dict[str, Any]],
                                    timeout: Any) -> None:
    overrides: dict[str, Any] = {} if timeout == "absent" else {"timeout": None}
    body = create_body(**overrides)
    if timeout == "absent":
        del body["timeout"]
    response = http.post("/v1/sandboxes", json=body)
    assert response.status_code == 202, response.text
    sandbox = response.json()
    try:
        assert "expiresAt" not in sandbox
        assert_lifecycle_spec(response, "head/sandbox-lifecycle.yml")
        got = http.get(f"/v1/sandboxes/{sandbox['id']}")
        assert "expiresAt" not in got.json()
        assert_no_nulls(got.json())
        assert_lifecycle_spec(got, "head/sandbox-lifecycle.yml")
    finally:
        http.delete(f"/v1/sandboxes/{sandbox['id']}")


def test_metadata_is_left_out_when_not_given_and_echoed_when_empty(
        http: httpx.Client, created: Callable[..., dict[str, Any]]) -> None:
    without = created()
    assert "metadata" not in without
    assert "metadata" not in http.get(f"/v1/sandboxes/{without['id']}").json()
    empty = created(metadata={})
    assert empty["metadata"] == {}


def test_a_one_string_entrypoint_is_split_like_a_command_line(
        http: httpx.Client, created: Callable[..., dict[str, Any]]) -> None:
    body = created(entrypoint=["sh -c 'sleep 1000'"])
    assert body["entrypoint"] == ["sh -c 'sleep 1000'"]  # echoed as sent, as upstream
    got = http.get(f"/v1/sandboxes/{body['id']}").json()
    assert got["entrypoint"] == ["sh", "-c", "sleep 1000"]
    assert got["status"]["state"] == "Running"


def test_timeout_limit_and_blank_api_key_come_from_the_config(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(server={"api_key": "  ", "max_sandbox_timeout_seconds": 120})
    with server.client() as client:
        assert client.get("/v1/sandboxes").status_code == 200  # blank key: no auth
        assert_error(client.post("/v1/sandboxes", json=create_body(timeout=121)), 400,
                     "SANDBOX::INVALID_PARAMETER", "120")
        response = client.post("/v1/sandboxes", json=create_body(timeout=120))
        assert response.status_code == 202
        assert client.delete(f"/v1/sandboxes/{response.json()['id']}").status_code == 204


def test_a_missing_program_fails_the_create_with_the_error_shape(http: httpx.Client) -> None:
    response = http.post("/v1/sandboxes",
                         json=create_body(entrypoint=["no-such-program-xyz"]))
    # The client's mistake: 400 (upstream's code, kept for clients that match on it).
    body = assert_error(response, 400, "DOCKER::SANDBOX_START_FAILED", "no-such-program-xyz")
    assert "not found" in body["message"]


# --- volumes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Host directories: `allowed` (the allowlist), `outside`, and links between them."""
    base = tmp_path_factory.mktemp("storage")
    allowed = base / "allowed"
    (allowed / "data" / "sub").mkdir(parents=True)
    outside = base / "outside"
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)
    (allowed / "data" / "inner").symlink_to(allowed / "data" / "sub")
    sibling = base / "allowed2"
    sibling.mkdir()
    return {"base": base, "allowed": allowed, "outside": outside, "sibling": sibling}


@pytest.fixture(scope="module")
def restricted(storage: dict[str, Path],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose `[storage] allowed_host_paths` is just `storage["allowed"]`."""
    running = launch({"storage": {"allowed_host_paths": [str(storage["allowed"])]}},
                     tmp_path_factory.mktemp("restricted"))
    yield running
    running.stop()


def volume(name: str = "data", **backend: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "mountPath": f"/mnt/{name}"}
    spec.update(backend)
    return spec


def host(path: Path | str, **extra: Any) -> dict[str, Any]:
    return volume(host={"path": str(path)}, **extra)


def test_volume_shape_errors(http: httpx.Client, tmp_path: Path) -> None:
    cases: list[tuple[list[dict[str, Any]], str, str]] = [
        ([host(tmp_path, name="Bad_Name")], "SANDBOX::INVALID_PARAMETER", "name"),
        ([host(tmp_path, name="-a")], "SANDBOX::INVALID_PARAMETER", "name"),
        ([host(tmp_path, name="a" * 64)], "SANDBOX::INVALID_PARAMETER", "name"),
        ([host(tmp_path, name="a\n")], "SANDBOX::INVALID_PARAMETER", "name"),
        ([volume()], "SANDBOX::INVALID_PARAMETER", "none was provided"),
        ([volume(host={"path": str(tmp_path)}, pvc={"claimName": "x"})],
         "SANDBOX::INVALID_PARAMETER", "multiple were provided"),
        ([host(tmp_path, mountPath="relative")], "SANDBOX::INVALID_PARAMETER", "mountPath"),
        ([volume(host={"path": "relative/dir"})], "SANDBOX::INVALID_PARAMETER", "host.path"),
        ([volume(pvc={"claimName": "Not_A_Label"})], "SANDBOX::INVALID_PARAMETER",
         "claimName"),
        ([host(tmp_path), host(tmp_path, mountPath="/mnt/other")], "VOLUME::DUPLICATE_NAME",
         "'data'"),
        ([host(tmp_path), host(tmp_path, name="other", mountPath="/mnt/data/")],
         "VOLUME::DUPLICATE_MOUNT_PATH", "/mnt/data"),
        ([host(tmp_path, subPath="/abs")], "VOLUME::INVALID_SUB_PATH", "/abs"),
        ([host(tmp_path, subPath="a/../../b")], "VOLUME::INVALID_SUB_PATH", "a/../../b"),
        ([host(tmp_path, subPath="..")], "VOLUME::INVALID_SUB_PATH", ".."),
        ([host(f"{tmp_path}/")], "VOLUME::INVALID_HOST_PATH", "normalized"),
        ([host(f"{tmp_path}//x")], "VOLUME::INVALID_HOST_PATH", "normalized"),
        ([host(f"{tmp_path}/./x")], "VOLUME::INVALID_HOST_PATH", "normalized"),
        ([host(f"{tmp_path}/../x")], "VOLUME::INVALID_HOST_PATH", "normalized"),
        ([host(tmp_path / "missing")], "VOLUME::HOST_PATH_NOT_FOUND", "missing"),
        ([host(tmp_path, subPath="missing-sub")], "VOLUME::HOST_PATH_NOT_FOUND",
         "missing-sub"),
        ([volume(pvc={"claimName": "no-such-volume", "createIfNotExists": False})],
         "VOLUME::PVC_NOT_FOUND", "no-such-volume"),
    ]
    for volumes, code, mentions in cases:
        response = http.post("/v1/sandboxes", json=create_body(volumes=volumes))
        assert_error(response, 400, code, mentions)


def test_pvc_volumes_resolve_named_volumes(server: ServerProcess, http: httpx.Client,
                                           created: Callable[..., dict[str, Any]]) -> None:
    volumes_root = Path(server.state_dir).parent / "volumes"
    name = "vol-" + uuid.uuid4().hex[:8]
    (volumes_root / name / "sub").mkdir(parents=True)
    (volumes_root / name / "out").symlink_to("/etc")
    body = created(volumes=[volume(pvc={"claimName": name}),
                            volume("withsub", pvc={"claimName": name}, subPath="sub")])
    assert state_of(http, body["id"]) == "Running"
    for sub, code in (("nope", "VOLUME::PVC_SUBPATH_NOT_FOUND"),
                      ("out", "VOLUME::INVALID_SUB_PATH"),
                      ("../x", "VOLUME::INVALID_SUB_PATH")):
        response = http.post("/v1/sandboxes", json=create_body(
            volumes=[volume(pvc={"claimName": name}, subPath=sub)]))
        assert_error(response, 400, code, sub)


def test_host_paths_must_sit_under_the_allowlist_after_resolving_symlinks(
        restricted: ServerProcess, storage: dict[str, Path]) -> None:
    allowed, outside = storage["allowed"], storage["outside"]
    with restricted.client() as client:
        refused = [
            host(outside),
            host(storage["sibling"]),  # shares the allowed prefix as a string only
            host(allowed / "escape"),  # a symlink inside, pointing outside
            host(allowed, subPath="escape"),  # the same reached through subPath
            host(storage["base"]),  # a parent of the allowed directory
        ]
        for spec in refused:
            response = client.post("/v1/sandboxes", json=create_body(volumes=[spec]))
            assert_error(response, 400, "VOLUME::HOST_PATH_NOT_ALLOWED", spec["host"]["path"])
        assert_error(client.post("/v1/sandboxes", json=create_body(
            volumes=[host(allowed / "nope")])), 400, "VOLUME::HOST_PATH_NOT_FOUND")
        accepted = [host(allowed), host(allowed / "data"), host(allowed, subPath="data/sub"),
                    host(allowed / "data" / "inner")]  # a link that stays inside
        for spec in accepted:
            response = client.post("/v1/sandboxes", json=create_body(volumes=[spec]))
            assert response.status_code == 202, (spec, response.text)
            assert client.delete(f"/v1/sandboxes/{response.json()['id']}").status_code == 204


# --- auth and request ids -------------------------------------------------------------------


def test_api_key_is_required_when_configured(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(server={"api_key": "k", "cors_origins": ["http://localhost:3000"]})
    with server.client() as client:
        missing = client.get("/v1/sandboxes")
        body = assert_error(missing, 401, "MISSING_API_KEY", "OPEN-SANDBOX-API-KEY")
        assert_lifecycle_spec(missing)
        assert body["message"].startswith("Authentication credentials are missing")
        assert_error(client.post("/v1/sandboxes", json=create_body()), 401, "MISSING_API_KEY")
        wrong = client.get("/v1/sandboxes", headers={"OPEN-SANDBOX-API-KEY": "nope"})
        assert_error(wrong, 401, "INVALID_API_KEY")
        assert_error(client.get("/sandboxes", headers={"OPEN-SANDBOX-API-KEY": ""}), 401,
                     "INVALID_API_KEY")
        assert "x-request-id" in wrong.headers
        good = client.get("/v1/sandboxes", headers={"OPEN-SANDBOX-API-KEY": "k"})
        assert good.status_code == 200
        assert_lifecycle_spec(good)
        for exempt in ("/health", "/docs", "/openapi.json"):
            assert client.get(exempt).status_code == 200, exempt
        # A browser's CORS preflight carries no key; it must still get its answer.
        preflight = client.options("/v1/sandboxes", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "open-sandbox-api-key,content-type"})
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert_error(client.options("/v1/sandboxes"), 401, "MISSING_API_KEY")


def test_no_api_key_configured_means_no_auth(http: httpx.Client) -> None:
    assert http.get("/v1/sandboxes", headers={"OPEN-SANDBOX-API-KEY": "anything"}
                    ).status_code == 200
    assert http.get("/v1/sandboxes").status_code == 200


def test_request_id_is_echoed_or_generated_on_every_response(http: httpx.Client) -> None:
    responses = [
        http.get("/health"),
        http.get("/v1/sandboxes"),
        http.get(f"/v1/sandboxes/{uuid.uuid4()}"),
        http.post("/v1/sandboxes", json={"timeout": 1}),
        http.get("/v1/no-such-route"),
        http.get("/v1/sandboxes/x/endpoints/0"),
    ]
    generated = set()
    for response in responses:
        value = response.headers.get("x-request-id")
        assert value, (response.request.url, response.headers)
        generated.add(value)
    assert len(generated) == len(responses)  # each request gets its own
    for response in (http.get("/v1/sandboxes", headers={"X-Request-ID": "req-123"}),
                     http.get(f"/v1/sandboxes/{uuid.uuid4()}",
                              headers={"X-Request-ID": "req-123"}),
                     http.post("/v1/sandboxes", json={}, headers={"X-Request-ID": "req-123"}),
                     http.get("/health", headers={"X-Request-ID": "req-123"})):
        assert response.headers["x-request-id"] == "req-123"


# --- the state machine ---------------------------------------------------------------------


def test_pause_resume_and_their_conflicts(http: httpx.Client,
                                          created: Callable[..., dict[str, Any]]) -> None:
    sandbox_id = created()["id"]
    base = f"/v1/sandboxes/{sandbox_id}"
    wait_for(lambda: state_of(http, sandbox_id) == "Running", "Running")
    assert_error(http.post(f"{base}/resume"), 409, "DOCKER::SANDBOX_NOT_PAUSED", "Running")
    assert http.post(f"{base}/pause").status_code == 202
    assert state_of(http, sandbox_id) in ("Pausing", "Paused")
    wait_for(lambda: state_of(http, sandbox_id) == "Paused", "Paused")
    paused = http.get(base)
    assert_lifecycle_spec(paused)
    assert paused.json()["status"]["reason"] == "CONTAINER_PAUSED"
    conflict = http.post(f"{base}/pause")
    assert_error(conflict, 409, "DOCKER::SANDBOX_NOT_RUNNING", "Paused")
    assert_lifecycle_spec(conflict)
    # Renew works while paused.
    future = datetime.now(UTC) + timedelta(hours=2)
    renewed = http.post(f"{base}/renew-expiration", json={"expiresAt": future.isoformat()})
    assert renewed.status_code == 200, renewed.text
    assert parse_time(renewed.json()["expiresAt"]) == future
    assert parse_time(http.get(base).json()["expiresAt"]) == future
    assert http.post(f"{base}/resume").status_code == 202
    wait_for(lambda: state_of(http, sandbox_id) == "Running", "Running after resume")
    assert http.get(base).json()["status"]["reason"] == "CONTAINER_RUNNING"


def test_pause_freezes_the_process_tree(server: ServerProcess, http: httpx.Client,
                                        created: Callable[..., dict[str, Any]]) -> None:
    sandbox_id = created(entrypoint=["sh", "-c", "while :; do date +%s%N > /tmp/tick; "
                                     "sleep 0.02; done"])["id"]
    tick = server.state_dir / "sandboxes" / sandbox_id / "root" / "tmp" / "tick"
    wait_for(tick.exists, "the first tick")
    assert http.post(f"/v1/sandboxes/{sandbox_id}/pause").status_code == 202
    wait_for(lambda: state_of(http, sandbox_id) == "Paused", "Paused")
    time.sleep(0.1)  # a write already inside the kernel when SIGSTOP came still completes
    frozen = tick.read_text()
    time.sleep(0.3)
    assert tick.read_text() == frozen, "a paused sandbox kept running"
    assert http.post(f"/v1/sandboxes/{sandbox_id}/resume").status_code == 202
    wait_for(lambda: tick.read_text() != frozen, "ticks after resume")


def test_last_transition_time_is_when_the_transition_happened(
        http: httpx.Client, created: Callable[..., dict[str, Any]]) -> None:
    """Not when someone first looked: nobody reads the sandbox between pause and GET."""
    sandbox_id = created()["id"]
    base = f"/v1/sandboxes/{sandbox_id}"
    asked = datetime.now(UTC)
    assert http.post(f"{base}/pause").status_code == 202
    time.sleep(1)
    looked = datetime.now(UTC)
    status = http.get(base).json()["status"]
    assert status["state"] == "Paused"
    # Pausing finishes just after the 202; it is stamped then, not at this first GET.
    assert asked <= parse_time(status["lastTransitionAt"]) < looked - timedelta(seconds=0.5)
    asked = datetime.now(UTC)
    assert http.post(f"{base}/resume").status_code == 202
    resumed_by = datetime.now(UTC)
    time.sleep(0.5)
    status = http.get(base).json()["status"]
    assert status["state"] == "Running"
    assert asked <= parse_time(status["lastTransitionAt"]) <= resumed_by


def test_renew_needs_a_time_strictly_in_the_future(http: httpx.Client,
                                                   created: Callable[..., dict[str, Any]]
                                                   ) -> None:
    body = created()
    base = f"/v1/sandboxes/{body['id']}/renew-expiration"
    past = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    response = http.post(base, json={"expiresAt": past})
    assert_error(response, 400, "DOCKER::INVALID_EXPIRATION", "future")
    assert_lifecycle_spec(response)
    assert_error(http.post(base, json={"expiresAt": "next tuesday"}), 400,
                 "SANDBOX::INVALID_PARAMETER", "next tuesday")
    assert_error(http.post(base, json={}), 400, "SANDBOX::INVALID_PARAMETER", "expiresAt")
    # Earlier than the current expiry is fine; offsets and naive times become UTC.
    sooner = datetime.now(UTC) + timedelta(seconds=120)
    offset = sooner.astimezone(UTC).replace(tzinfo=None).isoformat() + "+00:00"
    assert http.post(base, json={"expiresAt": offset}).status_code == 200
    shifted = (sooner + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%f+01:00")
    renewed = http.post(base, json={"expiresAt": shifted})
    assert renewed.status_code == 200
    assert parse_time(renewed.json()["expiresAt"]) == sooner
    naive = sooner.replace(tzinfo=None).isoformat()
    assert parse_time(http.post(base, json={"expiresAt": naive}).json()["expiresAt"]) == sooner
    assert parse_time(http.get(f"/v1/sandboxes/{body['id']}").json()["expiresAt"]) == sooner


def test_renew_gives_expiry_to_a_sandbox_that_had_none(http: httpx.Client,
                                                       created: Callable[..., dict[str, Any]]
                                                       ) -> None:
    body = created(timeout=None)
    assert "expiresAt" not in body
    future = datetime.now(UTC) + timedelta(hours=1)
    response = http.post(f"/v1/sandboxes/{body['id']}/renew-expiration",
                         json={"expiresAt": future.isoformat()})
    assert response.status_code == 200
    assert parse_time(http.get(f"/v1/sandboxes/{body['id']}").json()["expiresAt"]) == future


def test_delete_makes_the_sandbox_disappear(http: httpx.Client) -> None:
    response = http.post("/v1/sandboxes", json=create_body(metadata=tag()))
    sandbox_id = response.json()["id"]
    assert http.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
    assert_error(http.get(f"/v1/sandboxes/{sandbox_id}"), 404, "DOCKER::SANDBOX_NOT_FOUND")
    assert_error(http.delete(f"/v1/sandboxes/{sandbox_id}"), 404, "DOCKER::SANDBOX_NOT_FOUND")
    ids = [item["id"] for item in http.get("/v1/sandboxes",
                                           params={"pageSize": 200}).json()["items"]]
    assert sandbox_id not in ids


@pytest.mark.parametrize(("script", "state", "reason", "message"), [
    ("exit 0", "Terminated", "CONTAINER_EXITED", "exited successfully"),
    ("exit 3", "Failed", "CONTAINER_EXITED_ERROR", "exited with code 3"),
    # A child left holding the entrypoint's output must not keep the sandbox "Running".
    ("sleep 600 & exit 0", "Terminated", "CONTAINER_EXITED", "exited successfully"),
    ("setsid sleep 600 & exit 4", "Failed", "CONTAINER_EXITED_ERROR", "exited with code 4"),
])
def test_entrypoint_exit_sets_terminated_or_failed(http: httpx.Client,
                                                   created: Callable[..., dict[str, Any]],
                                                   script: str, state: str, reason: str,
                                                   message: str) -> None:
    before = datetime.now(UTC)
    sandbox_id = created(entrypoint=["sh", "-c", script])["id"]
    wait_for(lambda: state_of(http, sandbox_id) == state, state)
    response = http.get(f"/v1/sandboxes/{sandbox_id}")
    assert_lifecycle_spec(response)
    status = response.json()["status"]
    assert status["reason"] == reason
    assert message in status["message"]
    assert parse_time(status["lastTransitionAt"]) >= before - timedelta(seconds=1)
    assert_error(http.post(f"/v1/sandboxes/{sandbox_id}/pause"), 409,
                 "DOCKER::SANDBOX_NOT_RUNNING", state)
    assert_error(http.post(f"/v1/sandboxes/{sandbox_id}/resume"), 409,
                 "DOCKER::SANDBOX_NOT_PAUSED", state)


def test_expired_sandboxes_are_reaped(server: ServerProcess, http: httpx.Client) -> None:
    running = http.post("/v1/sandboxes", json=create_body(timeout=60)).json()["id"]
    paused = http.post("/v1/sandboxes", json=create_body(timeout=60)).json()["id"]
    assert http.post(f"/v1/sandboxes/{paused}/pause").status_code == 202
    wait_for(lambda: state_of(http, paused) == "Paused", "Paused")
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    for sandbox_id in (running, paused):
        response = http.post(f"/v1/sandboxes/{sandbox_id}/renew-expiration",
                             json={"expiresAt": soon})
        assert response.status_code == 200, response.text
    for sandbox_id in (running, paused):
        wait_for(lambda s=sandbox_id: http.get(f"/v1/sandboxes/{s}").status_code == 404,
                 f"{sandbox_id} to expire")
        assert not (server.state_dir / "sandboxes" / sandbox_id).exists()


# --- list ----------------------------------------------------------------------------------


def listed(http: httpx.Client, **params: Any) -> dict[str, Any]:
    response = http.get("/v1/sandboxes", params=params)
    assert response.status_code == 200, response.text
    assert_lifecycle_spec(response)
    assert_no_nulls(response.json())
    body: dict[str, Any] = response.json()
    return body


def meta(labels: dict[str, str]) -> str:
    """The single `metadata` query value, `k=v&k2=v2` (httpx percent-encodes it)."""
    return "&".join(f"{k}={v}" for k, v in labels.items())


def test_list_filters_by_metadata_with_and(http: httpx.Client,
                                          created: Callable[..., dict[str, Any]]) -> None:
    labels = tag()
    a = created(metadata={**labels, "team": "ai", "env": "dev"})["id"]
    b = created(metadata={**labels, "team": "ai", "env": "prod"})["id"]
    c = created(metadata={**labels, "team": "web"})["id"]

    def ids(**params: Any) -> list[str]:
        return [item["id"] for item in listed(http, **params)["items"]]

    assert set(ids(metadata=meta(labels))) == {a, b, c}
    assert set(ids(metadata=meta({**labels, "team": "ai"}))) == {a, b}
    assert ids(metadata=meta({**labels, "team": "ai", "env": "prod"})) == [b]
    assert ids(metadata=meta({**labels, "team": "nobody"})) == []
    # On the wire the value is one percent-encoded parameter.
    raw = http.get("/v1/sandboxes?metadata=" + quote(meta({**labels, "env": "dev"}), safe=""))
    assert [item["id"] for item in raw.json()["items"]] == [a]
    # As upstream HEAD parses it: `k=` matches only an empty value, a pair without `=` is
    # a malformed filter.
    assert ids(metadata=meta(labels) + "&team=") == []
    empty = created(metadata={**labels, "team": ""})["id"]
    assert ids(metadata=meta(labels) + "&team=") == [empty]
    response = http.get("/v1/sandboxes", params={"metadata": meta(labels) + "&team"})
    assert_error(response, 400, "INVALID_METADATA_FORMAT", "team")
    assert_lifecycle_spec(response)


def test_list_filters_by_state_with_or_case_insensitively(
        http: httpx.Client, created: Callable[..., dict[str, Any]]) -> None:
    labels = tag()
    running = created(metadata=labels)["id"]
    paused = created(metadata=labels)["id"]
    failed = created(metadata=labels, entrypoint=["sh", "-c", "exit 1"])["id"]
    assert http.post(f"/v1/sandboxes/{paused}/pause").status_code == 202
    wait_for(lambda: state_of(http, paused) == "Paused", "Paused")
    wait_for(lambda: state_of(http, failed) == "Failed", "Failed")

    def ids(*states: str) -> set[str]:
        params = httpx.QueryParams([("metadata", meta(labels))] +
                                   [("state", s) for s in states])
        response = http.get("/v1/sandboxes", params=params)
        assert response.status_code == 200
        return {item["id"] for item in response.json()["items"]}

    assert ids() == {running, paused, failed}
    assert ids("Running") == {running}
    assert ids("running") == {running}
    assert ids("PAUSED", "failed") == {paused, failed}
    assert ids("Terminated") == set()


def test_list_pages_newest_first(http: httpx.Client,
                                 created: Callable[..., dict[str, Any]]) -> None:
    labels = tag()
    made = [created(metadata=labels)["id"] for _ in range(5)]
    newest_first = list(reversed(made))
    first = listed(http, metadata=meta(labels), pageSize=2)
    assert first["pagination"] == {"page": 1, "pageSize": 2, "totalItems": 5,
                                   "totalPages": 3, "hasNextPage": True}
    assert [i["id"] for i in first["items"]] == newest_first[:2]
    second = listed(http, metadata=meta(labels), pageSize=2, page=2)
    assert [i["id"] for i in second["items"]] == newest_first[2:4]
    last = listed(http, metadata=meta(labels), pageSize=2, page=3)
    assert [i["id"] for i in last["items"]] == newest_first[4:]
    assert last["pagination"]["hasNextPage"] is False
    past = listed(http, metadata=meta(labels), pageSize=2, page=9)
    assert past["items"] == []
    assert past["pagination"]["totalItems"] == 5
    everything = listed(http, metadata=meta(labels))
    assert everything["pagination"] == {"page": 1, "pageSize": 20, "totalItems": 5,
                                        "totalPages": 1, "hasNextPage": False}
    created_times = [parse_time(i["createdAt"]) for i in everything["items"]]
    assert created_times == sorted(created_times, reverse=True)
    for item in everything["items"]:
        assert item["image"] == {"uri": "python:3.11"}
    empty = listed(http, metadata=meta(tag()))
    assert empty == {"items": [], "pagination": {"page": 1, "pageSize": 20, "totalItems": 0,
                                                 "totalPages": 0, "hasNextPage": False}}
    assert listed(http, pageSize=200)["pagination"]["pageSize"] == 200


@pytest.mark.parametrize("params", [{"pageSize": 0}, {"pageSize": 201}, {"page": 0},
                                    {"page": "x"}, {"pageSize": "big"}])
def test_list_rejects_bad_paging(http: httpx.Client, params: dict[str, Any]) -> None:
    name = next(iter(params))
    assert_error(http.get("/v1/sandboxes", params=params), 400, "SANDBOX::INVALID_PARAMETER",
                 name)


# --- endpoints -----------------------------------------------------------------------------


def test_endpoint_has_no_scheme_and_works_for_any_valid_port(
        server: ServerProcess, http: httpx.Client, sandbox_id: str) -> None:
    for port in (EXECD_PORT, 18080, 8080, 1, 65535):
        response = http.get(f"/v1/sandboxes/{sandbox_id}/endpoints/{port}")
        assert response.status_code == 200, (port, response.text)
        assert_lifecycle_spec(response)
        endpoint = response.json()["endpoint"]
        assert "://" not in endpoint
        assert str(port) in endpoint
        assert sandbox_id in endpoint or response.json().get("headers")
    proxied = http.get(f"/v1/sandboxes/{sandbox_id}/endpoints/{EXECD_PORT}",
                       params={"use_server_proxy": "true"})
    assert proxied.status_code == 200
    assert proxied.json()["endpoint"] == \
        f"{server.domain}/sandboxes/{sandbox_id}/proxy/{EXECD_PORT}"


@pytest.mark.parametrize("port", ["0", "65536", "-1", "http", "1.5"])
def test_endpoint_rejects_bad_ports(http: httpx.Client, sandbox_id: str, port: str) -> None:
    response = http.get(f"/v1/sandboxes/{sandbox_id}/endpoints/{port}")
    assert_error(response, 400, "DOCKER::INVALID_PORT", "1 and 65535")


def test_endpoint_of_an_unknown_sandbox_is_404(http: httpx.Client) -> None:
    response = http.get(f"/v1/sandboxes/{uuid.uuid4()}/endpoints/{EXECD_PORT}")
    assert_error(response, 404, "DOCKER::SANDBOX_NOT_FOUND")


def test_responses_are_json_without_nulls(http: httpx.Client, sandbox_id: str) -> None:
    for path in (f"/v1/sandboxes/{sandbox_id}", "/v1/sandboxes",
                 f"/v1/sandboxes/{sandbox_id}/endpoints/{EXECD_PORT}"):
        response = http.get(path)
        assert response.headers["content-type"].startswith("application/json")
        assert_no_nulls(json.loads(response.content))
