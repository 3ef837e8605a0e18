"""Defaults that say what they do: no `clients:` and a listener beyond loopback is logged at
`serve` start and shown at /debug/regions."""

from __future__ import annotations

import logging

import aiohttp

from control_plane.app import ControlPlane
from control_plane.config import parse_config
from control_plane.exposure import open_listener_warning
from control_plane.lab.harness import write_config

BASE = {"project": "p", "regions": {"us-central1": {"address": "10.0.0.1"}},
        "models": {"m": {"default": True, "endpoints": {"us-central1": "1"}}}}
CLIENTS = {"jwt": {"corp": {"issuer": "https://idp.test", "audiences": ["gw"],
                           "jwks_uri": "https://idp.test/jwks.json"}},
           "allow": {"everyone": {"identities": ["*"]}}}


def test_the_warning_names_the_exposed_addresses():
    import yaml

    def config(**extra):
        return parse_config(yaml.safe_dump({**BASE, **extra}))

    assert "0.0.0.0" in open_listener_warning(config())  # the default listener address
    assert open_listener_warning(config(listener={"address": "127.0.0.1", "port": 8080})) is None
    # an Envoy's own --listen override counts too
    assert "10.1.2.3" in open_listener_warning(config(listener={"address": "127.0.0.1", "port": 8080}),
                                               ["10.1.2.3:8080"])
    assert open_listener_warning(config(clients=CLIENTS)) is None
    # IPv4's loopback written as IPv6 is loopback; another mapped address is not
    assert open_listener_warning(config(listener={"address": "::ffff:127.0.0.1", "port": 8080})) is None
    assert "::ffff:10.0.0.1" in open_listener_warning(config(listener={"address": "::ffff:10.0.0.1", "port": 8080}))


async def test_serve_warns_and_debug_regions_shows_it(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    path = write_config(tmp_path / "regions.yaml", BASE)
    plane = ControlPlane(path, xds_address="127.0.0.1:0", admin_address="127.0.0.1:0", watch=False)
    assert "no client authentication" in caplog.text
    await plane.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{plane.admin_port}/debug/regions") as response:
                shown = (await response.json())["client_authentication"]
            assert shown["enabled"] is False and "0.0.0.0" in shown["warning"]
            write_config(path, {**BASE, "clients": CLIENTS})
            assert await plane.reload()
            async with http.get(f"http://127.0.0.1:{plane.admin_port}/debug/regions") as response:
                shown = (await response.json())["client_authentication"]
            assert shown == {"enabled": True, "jwt_issuers": ["corp"], "mtls": False, "grants": ["everyone"],
                             "warning": None}
    finally:
        await plane.stop()
