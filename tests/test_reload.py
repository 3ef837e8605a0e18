"""Config changes that nothing can break: the watcher as the product runs it (no Envoy here;
tests/test_e2e_live_edits.py has real Envoys). Every outcome is recorded, watching never
stops, a Kubernetes ConfigMap's symlink swaps are followed, hostile files are refused while
the admin endpoints keep answering, and reloads are serialized."""

from __future__ import annotations

import asyncio
import copy
import os
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from control_plane.app import ControlPlane
from control_plane.config import parse_config
from control_plane.lab.configmap import ConfigMapVolume
from control_plane.lab.fake_oauth import write_service_account_key
from control_plane.lab.harness import until
from control_plane.resources import build_resources

from .configs import TWO_REGIONS

# The plane fixture's two loopback regions, as this module's own project.
BASE = {**TWO_REGIONS, "project": "p-reload"}
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))


@pytest.fixture
def config_text(tmp_path, token_server):
    key = write_service_account_key(tmp_path / "key.json", token_server.token_uri)

    def text(**policy) -> str:
        data = copy.deepcopy(BASE)
        data["auth"] = {"credentials": f"service_account:{key}"}
        if policy:
            data["policy"] = policy
        return yaml.safe_dump(data, sort_keys=False)
    return text


def version_of(text: str) -> str:
    return parse_config(text).version


async def started(path: Path, **options) -> ControlPlane:
    plane = ControlPlane(path, xds_address="127.0.0.1:0", admin_address="127.0.0.1:0", **options)
    await plane.start()
    return plane


def save(path: Path, text: str) -> None:
    """Write the file as one atomic rename (as most editors do): the watcher never sees it
    half-written, so the counts of rejected reloads below are exact. Editors that write in
    place are test_editor_save_styles' business."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def failed_reloads(plane: ControlPlane) -> float:
    return plane.metrics.reloads.labels("failed")._value.get()


async def test_kubelet_configmap_updates_each_apply(tmp_path, config_text):
    volume = ConfigMapVolume(tmp_path / "config")
    volume.write({"regions.yaml": config_text()})
    plane = await started(volume.path("regions.yaml"))
    try:
        for i in range(6):  # the first update used to apply and every later one to be lost
            text = config_text(timeout=f"{31 + i}s")
            volume.write({"regions.yaml": text})
            await until(lambda t=text: plane.cache.config.version == version_of(t), what=f"update {i + 1} applied")
            assert plane.last_reload["ok"]
        assert failed_reloads(plane) == 0
        assert len([p for p in (tmp_path / "config").iterdir() if p.name.startswith("..2")]) == 1
    finally:
        await plane.stop()


@pytest.mark.parametrize("style", ["rename", "in place", "two steps"])
async def test_editor_save_styles(tmp_path, config_text, style):
    path = tmp_path / "regions.yaml"
    path.write_text(config_text())
    plane = await started(path)
    try:
        for i in range(3):
            text = config_text(timeout=f"{41 + i}s")
            if style == "rename":  # vim, most IDEs: write a temporary file, rename it over the original
                tmp = tmp_path / ".regions.yaml.swp"
                tmp.write_text(text)
                os.replace(tmp, path)
            elif style == "in place":
                path.write_text(text)
            else:  # truncate, then write: the empty file in between may be seen and refused
                with open(path, "w") as handle:
                    handle.flush()
                    os.fsync(handle.fileno())
                    await asyncio.sleep(0.1)  # let the watcher see the empty file (what is tested)
                    handle.write(text)
            await until(lambda t=text: plane.cache.config.version == version_of(t) and plane.last_reload["ok"],
                        what=f"edit {i + 1} applied")
    finally:
        await plane.stop()


async def test_a_rejected_edit_is_recorded_and_later_edits_apply(tmp_path, config_text):
    broken = {"timeout": 33.0}

    def builder(build, group):  # a build failure the rules cannot foresee (a bug, say)
        if build.config.policy.timeout == broken["timeout"]:
            raise RuntimeError("boom in the builder")
        return build_resources(build, group)

    path = tmp_path / "regions.yaml"
    save(path, config_text())
    plane = await started(path, builder=builder)
    version = plane.cache.config.version
    try:
        save(path, config_text(timeout="33s"))
        await until(lambda: failed_reloads(plane) == 1, what="the build failure recorded")
        assert plane.cache.config.version == version and not plane.last_reload["ok"]
        assert "boom in the builder" in plane.last_reload["errors"][0]
        assert str(path) in plane.last_reload["errors"][0]
        assert plane.metrics.config_ok._value.get() == 0
        # a rules violation, then two good edits: the watcher is still there
        save(path, config_text(max_request_bytes=5_000_000_000))
        await until(lambda: failed_reloads(plane) == 2, what="the rules violation recorded")
        assert "policy.max_request_bytes" in plane.last_reload["errors"][0]
        for seconds in (34, 35):
            text = config_text(timeout=f"{seconds}s")
            save(path, text)
            await until(lambda t=text: plane.cache.config.version == version_of(t), what=f"{seconds}s applied")
        assert plane.last_reload["ok"] and plane.metrics.config_ok._value.get() == 1
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{plane.admin_port}/debug/regions") as response:
                regions = await response.json()
        assert regions["last_reload"]["ok"] and regions["version"] == plane.cache.config.version
        assert regions["last_reload"]["file_sha256"]
    finally:
        await plane.stop()


async def test_alias_bomb_refused_while_admin_answers(tmp_path, config_text):
    path = tmp_path / "regions.yaml"
    save(path, config_text())
    plane = await started(path)
    version = plane.cache.config.version
    latencies: list[float] = []
    try:
        async with aiohttp.ClientSession() as http:
            async def poll() -> None:
                while True:
                    start = time.monotonic()
                    async with http.get(f"http://127.0.0.1:{plane.admin_port}/healthz") as response:
                        await response.read()
                    latencies.append(time.monotonic() - start)
                    await asyncio.sleep(0.005)

            poller = asyncio.create_task(poll())
            await until(lambda: latencies, what="a first /healthz")
            save(path, BOMB)
            await until(lambda: failed_reloads(plane) == 1, what="the bomb refused")
            poller.cancel()
        assert "aliases expand" in plane.last_reload["errors"][0]
        assert plane.cache.config.version == version
        # a generous bound on a shared machine; bench/controlplane.py measures the real figure
        assert max(latencies) < 1.0, f"/healthz took {max(latencies):.3f}s during the reload"
        text = config_text(timeout="36s")
        save(path, text)
        await until(lambda: plane.cache.config.version == version_of(text), what="the next good edit")
    finally:
        await plane.stop()


async def test_a_deleted_file_is_reported_and_applied_when_back(tmp_path, config_text):
    path = tmp_path / "regions.yaml"
    save(path, config_text())
    plane = await started(path)
    version = plane.cache.config.version
    try:
        path.unlink()
        await until(lambda: failed_reloads(plane) == 1, what="the deletion reported")
        assert "cannot read" in plane.last_reload["errors"][0] and plane.cache.config.version == version
        text = config_text(timeout="37s")
        save(path, text)
        await until(lambda: plane.cache.config.version == version_of(text), what="the file applied when back")
        assert plane.last_reload["ok"] and failed_reloads(plane) == 1  # reported once, not per event
    finally:
        await plane.stop()


async def test_sighup_and_file_events_are_serialized(tmp_path, config_text):
    slow = {"on": False}

    def builder(build, group):  # a slow build, so that a reload is in progress when the file changes
        if slow["on"]:
            time.sleep(0.3)
        return build_resources(build, group)

    path = tmp_path / "regions.yaml"
    save(path, config_text())
    plane = await started(path, builder=builder)
    try:
        slow["on"] = True
        save(path, config_text(timeout="38s"))
        sighup = asyncio.create_task(plane.reload("SIGHUP"))  # reads "38s" and builds it slowly
        await asyncio.sleep(0.05)
        newest = config_text(timeout="39s")
        save(path, newest)  # the watcher's reload waits for the SIGHUP one, then reads this
        assert await sighup
        await until(lambda: plane.cache.config.version == version_of(newest), what="the newest file in force")
        await plane.reload("SIGHUP")  # nothing later may put the older file back
        assert plane.cache.config.version == version_of(newest)
    finally:
        await plane.stop()


async def test_an_edited_auth_profile_keeps_its_token_until_the_new_one(tmp_path, config_text, token_server):
    path = tmp_path / "regions.yaml"
    save(path, config_text())
    plane = await started(path, watch=False)
    try:
        await until(lambda: not plane.cache.missing_tokens(), what="the first token")
        token_server.fail(500)  # the new credentials' first token cannot be had for now
        data = yaml.safe_load(path.read_text())
        data["auth"]["scopes"] = ["https://www.googleapis.com/auth/cloud-platform", "openid"]
        save(path, yaml.safe_dump(data))
        assert await plane.reload()
        await until(lambda: plane.tokens.states[0].refreshes_failed >= 1, what="a failed refresh")
        assert plane.cache.missing_tokens() == [], "the still-valid token was dropped"
        assert plane.tokens.degraded_reasons() == []
        token_server.fail(None)
    finally:
        await plane.stop()
