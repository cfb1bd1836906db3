"""The Lifecycle API driven by the official Python SDK (`opensandbox==0.1.5`), unmodified.

The SDK's generated client only accepts the exact documented status codes and parses error
bodies as `{"code","message"}`, so these tests fail if the server's wire format drifts.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest
from opensandbox import Sandbox, SandboxManager
from opensandbox.config import ConnectionConfig, ConnectionConfigSync
from opensandbox.exceptions import SandboxApiException, SandboxException
from opensandbox.models.sandboxes import SandboxFilter
from opensandbox.sync import SandboxManagerSync, SandboxSync

from tests.helpers.servers import ServerProcess

pytestmark = pytest.mark.anyio
EXECD_PORT = 44772


def config_for(server: ServerProcess, **extra: Any) -> ConnectionConfig:
    return ConnectionConfig(domain=server.domain, request_timeout=timedelta(seconds=30),
                            **extra)


@pytest.fixture
async def manager(server: ServerProcess) -> AsyncIterator[SandboxManager]:
    manager = await SandboxManager.create(config_for(server))
    try:
        yield manager
    finally:
        await manager.close()


@pytest.fixture
async def sandboxes(server: ServerProcess) -> AsyncIterator[Callable[..., Awaitable[Sandbox]]]:
    """`Sandbox.create` with the health check skipped; every sandbox is killed afterwards."""
    made: list[Sandbox] = []

    async def create(**options: Any) -> Sandbox:
        options.setdefault("entrypoint", ["tail", "-f", "/dev/null"])
        sandbox = await Sandbox.create("python:3.11", connection_config=config_for(server),
                                       skip_health_check=True, **options)
        made.append(sandbox)
        return sandbox

    yield create
    for sandbox in made:
        try:
            await sandbox.kill()
        except SandboxException:
            pass  # the test already killed it
        await sandbox.close()


async def wait_for_state(manager: SandboxManager, sandbox_id: str, state: str) -> None:
    """Poll until the sandbox reaches `state` (the deadline only stops a hang)."""
    with anyio.fail_after(15):
        while True:
            if (await manager.get_sandbox_info(sandbox_id)).status.state == state:
                return
            await anyio.sleep(0.05)


async def test_create_get_endpoint_renew_and_kill(sandboxes: Callable[..., Awaitable[Sandbox]],
                                                  manager: SandboxManager) -> None:
    labels = {"suite": "sdk-" + uuid.uuid4().hex[:8], "team": "ai"}
    sandbox = await sandboxes(metadata=labels, env={"GREETING": "hi"},
                              timeout=timedelta(minutes=5),
                              resource={"cpu": "500m", "memory": "512Mi"})
    info = await sandbox.get_info()
    assert info.id == sandbox.id
    assert info.status.state == "Running"
    assert info.status.reason == "CONTAINER_RUNNING"
    assert info.metadata == labels
    assert info.entrypoint == ["tail", "-f", "/dev/null"]
    assert info.image is not None and info.image.image == "python:3.11"
    assert info.expires_at.tzinfo is not None
    assert info.expires_at - info.created_at == timedelta(minutes=5)

    endpoint = await sandbox.get_endpoint(EXECD_PORT)
    assert "://" not in endpoint.endpoint
    assert str(EXECD_PORT) in endpoint.endpoint
    # Newer SDKs also ask for the egress sidecar's port.
    assert (await sandbox.get_endpoint(18080)).endpoint

    before = datetime.now(UTC)
    renewed = await sandbox.renew(timedelta(hours=1))
    assert renewed.expires_at >= before + timedelta(hours=1) - timedelta(seconds=1)
    assert (await sandbox.get_info()).expires_at == renewed.expires_at

    await sandbox.kill()
    with pytest.raises(SandboxApiException) as missing:
        await manager.get_sandbox_info(sandbox.id)
    assert missing.value.status_code == 404
    assert "not found" in str(missing.value)


async def test_manager_pause_resume_renew_and_kill(sandboxes: Callable[..., Awaitable[Sandbox]],
                                                   manager: SandboxManager) -> None:
    sandbox = await sandboxes()
    await manager.pause_sandbox(sandbox.id)
    await wait_for_state(manager, sandbox.id, "Paused")
    with pytest.raises(SandboxApiException) as conflict:
        await manager.pause_sandbox(sandbox.id)
    assert conflict.value.status_code == 409

    renewed = await manager.renew_sandbox(sandbox.id, timedelta(minutes=30))
    info = await manager.get_sandbox_info(sandbox.id)
    assert info.expires_at == renewed.expires_at
    assert info.status.state == "Paused"

    await manager.resume_sandbox(sandbox.id)
    await wait_for_state(manager, sandbox.id, "Running")
    with pytest.raises(SandboxApiException) as not_paused:
        await manager.resume_sandbox(sandbox.id)
    assert not_paused.value.status_code == 409

    await manager.kill_sandbox(sandbox.id)
    with pytest.raises(SandboxApiException) as gone:
        await manager.kill_sandbox(sandbox.id)
    assert gone.value.status_code == 404


async def test_sandbox_pause_and_resume_through_the_sandbox_object(
        server: ServerProcess, sandboxes: Callable[..., Awaitable[Sandbox]],
        manager: SandboxManager) -> None:
    sandbox = await sandboxes()
    await sandbox.pause()
    await wait_for_state(manager, sandbox.id, "Paused")
    resumed = await Sandbox.resume(sandbox.id, connection_config=config_for(server),
                                   skip_health_check=True)
    try:
        await wait_for_state(manager, sandbox.id, "Running")
    finally:
        await resumed.close()


async def test_list_with_filters_and_pages(sandboxes: Callable[..., Awaitable[Sandbox]],
                                           manager: SandboxManager) -> None:
    suite = "sdk-" + uuid.uuid4().hex[:8]
    dev = [await sandboxes(metadata={"suite": suite, "env": "dev"}) for _ in range(3)]
    prod = await sandboxes(metadata={"suite": suite, "env": "prod"})
    await manager.pause_sandbox(dev[0].id)
    await wait_for_state(manager, dev[0].id, "Paused")

    everything = await manager.list_sandbox_infos(SandboxFilter(metadata={"suite": suite}))
    newest_first = [prod.id, dev[2].id, dev[1].id, dev[0].id]
    assert [i.id for i in everything.sandbox_infos] == newest_first
    assert everything.pagination.total_items == 4
    assert everything.pagination.has_next_page is False

    both = await manager.list_sandbox_infos(
        SandboxFilter(metadata={"suite": suite, "env": "dev"}))
    assert {i.id for i in both.sandbox_infos} == {s.id for s in dev}

    running_dev = await manager.list_sandbox_infos(
        SandboxFilter(metadata={"suite": suite, "env": "dev"}, states=["Running"]))
    assert {i.id for i in running_dev.sandbox_infos} == {dev[1].id, dev[2].id}

    either = await manager.list_sandbox_infos(
        SandboxFilter(metadata={"suite": suite}, states=["PAUSED", "running"]))
    assert len(either.sandbox_infos) == 4

    page = await manager.list_sandbox_infos(
        SandboxFilter(metadata={"suite": suite}, page_size=3, page=2))
    assert [i.id for i in page.sandbox_infos] == newest_first[3:]
    assert page.pagination.page == 2
    assert page.pagination.page_size == 3
    assert page.pagination.total_pages == 2
    assert page.pagination.has_next_page is False
    first = await manager.list_sandbox_infos(
        SandboxFilter(metadata={"suite": suite}, page_size=3, page=1))
    assert first.pagination.has_next_page is True


async def test_errors_become_typed_sdk_exceptions(server: ServerProcess,
                                                  manager: SandboxManager) -> None:
    with pytest.raises(SandboxApiException) as bad:
        await Sandbox.create("python:3.11", connection_config=config_for(server),
                             skip_health_check=True, metadata={"bad key": "x"})
    assert bad.value.status_code == 400
    assert "bad key" in str(bad.value)
    with pytest.raises(SandboxApiException) as timeout:
        await Sandbox.create("python:3.11", connection_config=config_for(server),
                             skip_health_check=True, timeout=timedelta(seconds=10))
    assert timeout.value.status_code == 400
    with pytest.raises(SandboxApiException) as missing:
        await manager.pause_sandbox(str(uuid.uuid4()))
    assert missing.value.status_code == 404


async def test_api_key_from_the_sdk(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(server={"api_key": "secret"})
    sandbox = await Sandbox.create("python:3.11",
                                   connection_config=config_for(server, api_key="secret"),
                                   skip_health_check=True)
    try:
        assert (await sandbox.get_info()).status.state == "Running"
    finally:
        await sandbox.kill()
        await sandbox.close()
    manager = await SandboxManager.create(config_for(server, api_key="wrong"))
    try:
        with pytest.raises(SandboxApiException) as denied:
            await manager.list_sandbox_infos(SandboxFilter())
        assert denied.value.status_code == 401
    finally:
        await manager.close()


async def test_a_failed_entrypoint_shows_as_failed(sandboxes: Callable[..., Awaitable[Sandbox]],
                                                   manager: SandboxManager) -> None:
    sandbox = await sandboxes(entrypoint=["sh", "-c", "exit 7"])
    await wait_for_state(manager, sandbox.id, "Failed")
    info = await manager.get_sandbox_info(sandbox.id)
    assert info.status.reason == "CONTAINER_EXITED_ERROR"
    assert info.status.message is not None and "7" in info.status.message


def test_the_sync_sdk_works_too(server: ServerProcess) -> None:
    config = ConnectionConfigSync(domain=server.domain)
    sandbox = SandboxSync.create("python:3.11", connection_config=config,
                                 skip_health_check=True, metadata={"kind": "sync"})
    try:
        manager = SandboxManagerSync.create(config)
        info = manager.get_sandbox_info(sandbox.id)
        assert info.metadata == {"kind": "sync"}
        manager.pause_sandbox(sandbox.id)
        manager.resume_sandbox(sandbox.id)
        listed = manager.list_sandbox_infos(SandboxFilter(metadata={"kind": "sync"}))
        assert sandbox.id in [i.id for i in listed.sandbox_infos]
    finally:
        sandbox.kill()
        sandbox.close()
    with httpx.Client(base_url=server.url) as client:
        assert client.get(f"/v1/sandboxes/{sandbox.id}").status_code == 404
