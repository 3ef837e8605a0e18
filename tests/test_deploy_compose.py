"""docker-compose.yml, checked without a container engine (with `docker compose config` when
there is one): the control plane, the Envoys and their bootstraps, published ports, the
emulators profile, against the CLI parsers and config.parse_config."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest
import yaml

from control_plane.config import parse_config
from control_plane.lab.emulator import cli as emulator

from .deploy_tree import (
    COMPOSE_FILE,
    REGIONS,
    body,
    compose,
    env_default,
    envoy_validate,
    listen_port,
    serve_args,
    services,
    xds_target,
)

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- helpers


def volumes(service: dict) -> dict[str, str]:
    """container path -> source (host path made absolute, or a named volume)."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = env_default(spec).split(":")[:2]
        out[target] = str((ROOT / source).resolve()) if source.startswith(".") else source
    return out


def published(service: dict) -> list[tuple[str, int, int]]:
    """(host ip or "", host port, container port) for each `ports:` entry."""
    out = []
    for spec in service.get("ports", []):
        parts = env_default(str(spec)).split(":")
        ip = parts[0] if len(parts) == 3 else ""
        out.append((ip, int(parts[-2]), int(parts[-1].split("/")[0])))
    return out


# ---------------------------------------------------------------- docker-compose.yml


def compose_regions() -> dict:
    plane = services()["control-plane"]
    args = serve_args(plane["command"])
    config_dir = str(PurePosixPath(args.config).parent)
    host_dir = volumes(plane)[config_dir]
    return yaml.safe_load(Path(host_dir, PurePosixPath(args.config).name).read_text())


def test_compose_control_plane():
    plane = services()["control-plane"]
    assert plane["build"] == "." or plane["build"].get("context") == "."
    args = serve_args(plane["command"])
    assert args.xds_host == "0.0.0.0" and args.admin_host == "0.0.0.0"
    # the config is a mounted directory (edits are seen), holding the try-out regions.yaml by default
    config_dir = str(PurePosixPath(args.config).parent)
    assert volumes(plane)[config_dir] == str(ROOT / "deploy" / "compose")
    assert published(plane) == [("127.0.0.1", args.admin_port, args.admin_port)], \
        "admin (debug endpoints) on the host's loopback only; xDS not published"
    assert str(args.xds_port) in [str(p) for p in plane.get("expose", [])]
    assert args.insecure_xds, "plaintext xDS, on the compose network only"
    assert args.admin_token_file or "VERTEX_GATEWAY_ADMIN_TOKEN" in plane["environment"], \
        "admin off loopback needs a bearer token"
    text = (ROOT / "deploy" / "compose" / "regions.yaml").read_text()
    config = parse_config(text, "deploy/compose/regions.yaml")
    assert tuple(config.regions) == REGIONS
    # its credential file lives on a volume the control plane mounts
    key = config.auth.credentials.removeprefix("service_account:")
    assert any(PurePosixPath(key).is_relative_to(target) for target in volumes(plane))


@pytest.mark.parametrize("region", REGIONS)
def test_compose_envoy_matches_its_bootstrap(region):
    envoy = services()[f"envoy-{region}"]
    command = envoy["command"]
    assert command[0] == "envoy"
    config_path = command[command.index("-c") + 1]
    host_file = Path(volumes(envoy)[config_path])
    assert host_file == ROOT / "envoy" / f"bootstrap-{region}.yaml"
    bootstrap = yaml.safe_load(body(host_file))
    assert bootstrap["node"]["metadata"]["region"] == bootstrap["node"]["locality"]["region"] == region
    host, port = xds_target(bootstrap)
    assert host in services() and host == "control-plane"
    assert port == serve_args(services()[host]["command"]).xds_port == 18000
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    assert listen_port(bootstrap) in [container for _, _, container in published(envoy)]
    assert "control-plane" in envoy.get("depends_on", [])


def test_compose_envoys_publish_distinct_host_ports():
    ports = {region: [host for _, host, _ in published(services()[f"envoy-{region}"])] for region in REGIONS}
    assert ports == {"us-central1": [8080], "us-east4": [8081]}


def test_compose_publishes_on_loopback_unless_told_otherwise():
    for name, service in services().items():
        for ip, _host, _container in published(service):
            assert ip == "127.0.0.1", f"{name} publishes beyond the host's loopback by default"
    envoy_specs = [str(spec) for region in REGIONS for spec in services()[f"envoy-{region}"]["ports"]]
    assert all(spec.startswith("${VERTEX_GATEWAY_PUBLISH_ADDRESS:-127.0.0.1}:") for spec in envoy_specs)
    assert "VERTEX_GATEWAY_PUBLISH_ADDRESS" in (ROOT / "docs" / "RUNBOOK.md").read_text()
    assert all(services()[name].get("read_only") is True for name in services()
               if services()[name].get("image") == "vertex-gateway:local")
    tool = compose_cli()
    if tool is None:
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VERTEX_GATEWAY_", "COMPOSE_"))}
    rendered = subprocess.run([*tool, "-f", str(COMPOSE_FILE), "config"], capture_output=True, text=True,
                              timeout=60, cwd=ROOT, env={**env, "VERTEX_GATEWAY_PUBLISH_ADDRESS": "0.0.0.0"})
    assert rendered.returncode == 0, rendered.stderr
    ports = yaml.safe_load(rendered.stdout)["services"]["envoy-us-central1"]["ports"]
    # compose v1 renders "IP:PUBLISHED:TARGET/tcp", v2 a mapping
    rendered_ports = [(p["host_ip"], int(p["published"])) if isinstance(p, dict)
                      else (p.split(":")[0], int(p.split(":")[1])) for p in ports]
    assert rendered_ports == [("0.0.0.0", 8080)]


@pytest.mark.parametrize("region", REGIONS)
def test_compose_envoy_command_is_accepted_by_envoy(region, tmp_path):
    envoy = services()[f"envoy-{region}"]
    envoy_validate(envoy["command"][1:], tmp_path, (ROOT / "envoy" / f"bootstrap-{region}.yaml").read_text())


def test_compose_emulators_profile_is_what_the_try_out_config_points_at(monkeypatch):
    regions = compose_regions()
    parsed = []

    async def no_serve(args, ssl_context):
        parsed.append(args)

    monkeypatch.setattr(emulator, "_serve", no_serve)
    by_address = {}
    for name, service in services().items():
        if service.get("entrypoint") == ["python", "-m", "control_plane.lab.emulator"]:
            assert service.get("profiles") == ["emulators"], f"{name} must be opt-in"
            emulator.main(service["command"])  # SystemExit on an argument the emulator does not take
            by_address[name] = parsed[-1]
    for region, spec in regions["regions"].items():
        args = by_address[spec["address"]]  # the region's address is that emulator's service name
        assert args.region == region and args.project == regions["project"]
        assert args.listen == ("0.0.0.0", spec["port"]) and spec["tls"] is False
        served = {endpoint_id for endpoint_id, _model in args.endpoint}
        assert served == {m["endpoints"][region] for m in regions["models"].values() if region in m["endpoints"]}
    # fake-oauth writes the key the try-out config names, on the volume the control plane reads
    oauth = services()["fake-oauth"]
    assert oauth.get("profiles") == ["emulators"]
    command = oauth["command"]
    key = command[command.index("--key-file") + 1]
    assert regions["auth"]["credentials"] == f"service_account:{key}"
    key_dir = str(PurePosixPath(key).parent)
    assert volumes(oauth)[key_dir] == volumes(services()["control-plane"])[key_dir] in compose()["volumes"]
    token_uri = command[command.index("--token-uri") + 1]
    assert re.fullmatch(r"http://fake-oauth:(\d+)/token", token_uri)
    script = Path(volumes(oauth)[oauth["entrypoint"][1]])
    assert script == ROOT / "deploy" / "compose" / "fake_oauth.py"


def test_compose_fake_oauth_script_issues_tokens_to_google_auth(tmp_path):
    from google.auth.transport.requests import Request
    from google.oauth2 import service_account

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = tmp_path / "key" / "demo-service-account.json"
    proc = subprocess.Popen([sys.executable, str(ROOT / "deploy" / "compose" / "fake_oauth.py"),
                             "--listen", f"127.0.0.1:{port}", "--token-uri", f"http://127.0.0.1:{port}/token",
                             "--key-file", str(key)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # the image has it installed
    try:
        deadline = time.monotonic() + 20
        while not key.exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no key file written"
            time.sleep(0.05)
        credentials = service_account.Credentials.from_service_account_file(
            str(key), scopes=["https://www.googleapis.com/auth/cloud-platform"])
        credentials.refresh(Request())
        assert credentials.token.startswith("ya29.fake") and credentials.expiry
    finally:
        proc.terminate()
        proc.wait(10)


def compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.parametrize("profile", [[], ["--profile", "emulators"]], ids=["default", "emulators"])
def test_docker_compose_config_accepts_the_file(profile):
    tool = compose_cli()
    if tool is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VERTEX_GATEWAY_", "COMPOSE_"))}
    done = subprocess.run([*tool, "-f", str(COMPOSE_FILE), *profile, "config", "-q"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
