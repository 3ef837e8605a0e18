"""Fixtures shared by several test modules, all here: no test module imports from another.
Shared constants and helpers are plain modules beside it (configs.py, config_problems.py,
deploy_tree.py, ads_steps.py, streaming.py)."""

from __future__ import annotations

import copy

import pytest

from control_plane import discover
from control_plane.app import ControlPlane
from control_plane.lab.fake_oauth import FakeTokenServer, write_service_account_key
from control_plane.lab.harness import write_config

from .configs import TWO_REGIONS
from .fake_vertex_api import FakeVertexAPI


@pytest.fixture
async def token_server():
    """A local OAuth token endpoint: real google-auth credentials are granted tokens by it."""
    server = FakeTokenServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def plane_config(tmp_path, token_server) -> dict:
    """TWO_REGIONS with credentials the token server grants: what `plane` serves first. The test's
    own copy: edit it and write it to `plane.config_path` to change the config."""
    key = write_service_account_key(tmp_path / "key.json", token_server.token_uri)
    return {**copy.deepcopy(TWO_REGIONS), "auth": {"credentials": f"service_account:{key}"}}


@pytest.fixture
async def plane(tmp_path, plane_config):
    """A whole control plane (ADS, CSDS, admin) on ephemeral loopback ports, serving plane_config."""
    plane = ControlPlane(write_config(tmp_path / "regions.yaml", plane_config), xds_address="127.0.0.1:0",
                         admin_address="127.0.0.1:0", watch=False)
    await plane.start()
    yield plane
    await plane.stop()


@pytest.fixture
def api():
    """The fake Vertex AI REST API (tests/fake_vertex_api.py) of project my-project (number 123456789012)."""
    with FakeVertexAPI(project="my-project", project_number="123456789012") as fake:
        yield fake


@pytest.fixture
def anonymous(monkeypatch):
    """The CLI's `discover` and `validate --online` use anonymous credentials (google-auth would call out)."""
    monkeypatch.setenv(discover.ANONYMOUS_ENV, "1")
