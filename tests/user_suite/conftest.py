"""The user's own fixtures: a clean emulator for every test, and the image to run."""

import os

import pytest


@pytest.fixture(autouse=True)
def clean_emulator(opensandbox_emulator_reset):
    """Every test starts with no sandbox, an empty journal, no fault and the real time."""
    return opensandbox_emulator_reset


@pytest.fixture
def anyio_backend():
    return "asyncio"  # the SDK is asyncio-based


@pytest.fixture
def image():
    # Any name works on the emulator's default (fake) runtime; its docker runtime needs an
    # image the engine has.
    return os.environ.get("SANDBOX_IMAGE", "python:3.11")
