"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest

from control_plane.lab.fake_oauth import FakeTokenServer


@pytest.fixture
async def token_server():
    """A local OAuth token endpoint: real google-auth credentials are granted tokens by it."""
    server = FakeTokenServer()
    await server.start()
    yield server
    await server.stop()
