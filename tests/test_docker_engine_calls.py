"""The calls every command makes to the Docker engine go over the event loop's own
kept-alive connections (not the SDK's thread): against a real engine they answer what the
SDK answers, refuse with the SDK's own errors (status and the engine's words), and survive
a kept connection that went away."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from docker.errors import APIError, NotFound

from opensandbox_emulator.runtimes.docker.engine import (
    Engine,
    ExecStartError,
    explain,
    frames,
    wrong_state,
)
from tests.helpers.docker_engine import DOCKER_BUSYBOX_IMAGE, docker_client, require_docker

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def sdk() -> Iterator[Any]:
    with docker_client() as client:
        yield client


@pytest.fixture
def containers(sdk: Any) -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for container in made:
        container.remove(force=True)


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    require_docker()
    engine = Engine()
    await engine.connect()
    yield engine
    await engine.close()


def start(sdk: Any, containers: list[Any], *, running: bool = True) -> Any:
    name = f"opensandbox-engine-test-{uuid.uuid4().hex[:10]}"
    container = sdk.containers.create(DOCKER_BUSYBOX_IMAGE, ["sleep", "300"], name=name)
    containers.append(container)
    if running:
        container.start()
    return container


async def run(engine: Engine, container: str, argv: list[str],
              environment: dict[str, str] | None = None) -> bytes:
    exec_id = await engine.create_exec(container, argv, environment=environment)
    output = bytearray()
    async for _, payload in frames(await engine.attach_exec(exec_id)):
        output += payload
    assert (await engine.inspect_exec(exec_id))["ExitCode"] == 0
    return bytes(output)


async def test_inspect_answers_as_the_sdk_does(engine: Engine, sdk: Any,
                                               containers: list[Any]) -> None:
    container = start(sdk, containers)
    ours = await engine.inspect_container(container.name)
    theirs = sdk.api.inspect_container(container.name)
    assert ours["Id"] == theirs["Id"] == container.id
    assert ours["State"]["Running"] is theirs["State"]["Running"] is True
    assert ours["Config"]["Labels"] == theirs["Config"]["Labels"]


async def test_an_exec_runs_with_its_environment(engine: Engine, sdk: Any,
                                                 containers: list[Any]) -> None:
    container = start(sdk, containers)
    output = await run(engine, container.id, ["sh", "-c", 'echo "$GREETING" "$ODD"'],
                       {"GREETING": "hello there", "ODD": "a=b;'c'"})
    assert output == b"hello there a=b;'c'\n"


async def test_refusals_are_the_sdks_errors(engine: Engine, sdk: Any,
                                            containers: list[Any]) -> None:
    with pytest.raises(NotFound) as missing:
        await engine.inspect_container(f"no-such-container-{uuid.uuid4().hex}")
    assert missing.value.status_code == 404
    assert "no such container" in explain(missing.value).lower()
    stopped = start(sdk, containers, running=False)
    with pytest.raises(APIError) as refused:
        await engine.create_exec(stopped.id, ["true"])
    assert not isinstance(refused.value, NotFound)
    assert wrong_state(refused.value)  # 409: the container is not running
    assert "not running" in explain(refused.value)
    with pytest.raises(NotFound):
        await engine.inspect_exec("0" * 64)


async def test_an_exec_the_engine_will_not_start_says_why(engine: Engine, sdk: Any,
                                                          containers: list[Any]) -> None:
    container = start(sdk, containers)
    exec_id = await engine.create_exec(container.id, ["true"])
    container.pause()
    try:
        with pytest.raises(ExecStartError) as refused:
            await engine.attach_exec(exec_id)
    finally:
        container.unpause()
    assert refused.value.wrong_state  # 409: the container is paused
    assert "paused" in refused.value.message


async def test_a_kept_connection_that_went_away_is_replaced(engine: Engine, sdk: Any,
                                                            containers: list[Any]) -> None:
    container = start(sdk, containers)
    await engine.inspect_container(container.name)
    assert engine._idle, "the connection was not kept for the next call"
    for _, writer in engine._idle:
        writer.transport.abort()  # as when the engine restarts
    assert (await engine.inspect_container(container.name))["Id"] == container.id
    assert await run(engine, container.id, ["echo", "again"]) == b"again\n"
