"""`python -m control_plane demo`: the whole stack on one machine.

Per region in the demo config: a Vertex emulator (standing in for the region's PSC
endpoint) and an Envoy; per custom backend, a plain JSON server that answers its paths;
one control plane programs every Envoy over ADS. Everything
binds 127.0.0.x; Ctrl-C stops every process this started.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
import tempfile
from importlib import resources as package_files
from pathlib import Path

from ruamel.yaml import YAML

from .app import ControlPlane
from .config import PUBLISHER_VERBS, VERBS, RegionConfig, load_config
from .custom_emulator import CustomBackendEmulator
from .emulator import VertexEmulator
from .envoy_process import EnvoyProcess
from .fake_oauth import FakeTokenServer, write_service_account_key
from .resources import upstream_path

log = logging.getLogger(__name__)

ENVOY_PORT = 8080
EMULATOR_CONTROL_PORT = 8001


def _prepare_config(source: Path | None, prefix: str, workdir: Path, key_path: Path) -> Path:
    """Copy the demo config into workdir, moving 127.0.0.x addresses under `prefix`; without an
    `auth:` section, tokens come from the demo's local token endpoint (key_path)."""
    yaml = YAML()  # round-trip: the copy keeps the shipped comments
    text = source.read_text() if source else package_files.files(__package__).joinpath(
        "demo_regions.yaml").read_text()
    data = yaml.load(text)
    for region in data["regions"].values():
        address = str(region["address"])
        if address.startswith("127.0.0."):
            region["address"] = f"{prefix}.{address.rsplit('.', 1)[1]}"
    if "auth" not in data:
        data["auth"] = {"credentials": f"service_account:{key_path}"}
        data.yaml_set_comment_before_after_key(
            "auth", before="tokens from the demo's local OAuth endpoint (real google-auth code)")
    path = workdir / "regions.yaml"
    with path.open("w") as out:
        yaml.dump(data, out)
    return path


async def _run(args: argparse.Namespace) -> None:
    prefix = args.loopback_prefix
    workdir = Path(tempfile.mkdtemp(prefix="vertex-gateway-demo-"))
    token_server = FakeTokenServer(host=f"{prefix}.1")
    await token_server.start()
    key_path = write_service_account_key(workdir / "demo-service-account.json", token_server.token_uri)
    config_path = _prepare_config(Path(args.config) if args.config else None, prefix, workdir, key_path)
    config = load_config(config_path)
    plane = ControlPlane(config_path, xds_address=f"{prefix}.1:{args.xds_port}",
                         admin_address=f"{prefix}.1:{args.admin_port}")
    emulators: list[VertexEmulator] = []
    backends: list[CustomBackendEmulator] = []
    envoys: list[EnvoyProcess] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await plane.start()
        for name in config.regions:
            if config.regions[name].custom:  # no Envoy of its own: a server that answers its paths
                backend = CustomBackendEmulator(name, _custom_paths(config, name), host=config.regions[name].address,
                                                port=config.regions[name].port)
                await backend.start()
                backends.append(backend)
        for index, name in enumerate(config.vertex_regions):
            region = config.regions[name]
            ids = {m.endpoints[name]: model for model, m in config.models.items() if name in m.endpoints}
            publishers = [m.publisher_model for m in config.models.values()
                          if m.publisher_model and name in m.regions]
            emulator = VertexEmulator(name, config.project, ids, publishers, host=region.address,
                                      port=region.port, control_port=EMULATOR_CONTROL_PORT)
            await emulator.start()
            emulators.append(emulator)
            envoy = EnvoyProcess(name, f"{prefix}.1:{plane.xds_port}", f"{prefix}.{21 + index}:{ENVOY_PORT}",
                                 workdir=workdir / "envoy", log_level="warning")
            envoys.append(envoy.start())
        for envoy in envoys:
            await asyncio.to_thread(envoy.wait_ready)
        _print_banner(config, envoys, emulators, plane, config_path, backends)
        await stop.wait()
    finally:
        print("\nstopping: Envoys, emulators, control plane ...", flush=True)
        for envoy in envoys:
            await asyncio.to_thread(envoy.stop)
        for emulator in [*emulators, *backends]:
            await emulator.stop()
        await plane.stop()
        await token_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _custom_paths(config: RegionConfig, backend: str) -> list[str]:
    """Every path the gateway may send to a custom backend: each model's path, each verb."""
    return sorted({upstream_path(config, model, backend).replace("{verb}", verb)
                   for model, spec in config.models.items() if backend in spec.served_regions
                   for verb in (PUBLISHER_VERBS if spec.publisher_model else VERBS)})


def _print_banner(config, envoys, emulators, plane, config_path, backends=()) -> None:
    first, first_emulator = envoys[0], emulators[0]
    model = config.default_model
    lines = [
        "",
        "Vertex gateway demo is up.",
        f"  control plane: xDS {plane.xds_address.rpartition(':')[0]}:{plane.xds_port}, "
        f"debug http://{plane.admin_address.rpartition(':')[0]}:{plane.admin_port}",
    ]
    for envoy, emulator in zip(envoys, emulators):
        lines.append(f"  {envoy.region:<14} Envoy http://{envoy.listen}  ->  emulator {emulator.url} "
                     f"(control {emulator.control_url})")
    lines += [
        "",
        "Try:",
        f"  curl -si http://{first.listen}/v1/models/{model}:predict -d '{{\"instances\": [[1, 2]]}}'",
        f"  curl -si http://{first.listen}/predict -d '{{\"instances\": [[1, 2]]}}'",
        "",
        f"Make {first.region} fail, then repeat a curl (x-vertex-region shows who answered):",
        f"  curl -s {first_emulator.control_url}/_emulator/fail -d '{{\"mode\": \"503\"}}'"
        "     # or 429, 500, reset, hang, down",
        f"  curl -s {first_emulator.control_url}/_emulator/fail -d '{{\"mode\": \"none\"}}'    # heal",
        f"  curl -s {first_emulator.control_url}/_emulator/requests      # what the region received",
        *([f"Make every region fail the same way and the custom backend {backends[0].name} "
           f"(http://{backends[0].host}:{backends[0].port}) answers last."] if backends else []),
        "",
        "See what each Envoy runs:",
        f"  curl -s http://{plane.admin_address.rpartition(':')[0]}:{plane.admin_port}/debug/clients",
        f"Edit {config_path} while this runs: valid changes are pushed, broken ones rejected.",
        "Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


def run_demo(args: argparse.Namespace) -> int:
    asyncio.run(_run(args))
    return 0
