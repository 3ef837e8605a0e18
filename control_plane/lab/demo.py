"""`python -m control_plane demo`: the whole stack on one machine.

Per region in the demo config: a Vertex emulator (standing in for the region's PSC
endpoint) and an Envoy; per custom backend, a plain JSON server that answers its paths;
one control plane programs every Envoy over ADS. Everything binds 127.0.0.x. Ctrl-C,
SIGTERM and SIGHUP (the terminal closed) stop every process this started; if the demo
itself dies, the kernel stops its Envoys (PR_SET_PDEATHSIG).
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

from ..app import ControlPlane
from ..config import PUBLISHER_VERBS, VERBS, RegionConfig, load_config
from ..ports import check_ports_free
from ..resources import upstream_path
from .custom_emulator import CustomBackendEmulator
from .emulator import VertexEmulator
from .envoy_process import EnvoyProcess
from .fake_oauth import FakeTokenServer, write_service_account_key

log = logging.getLogger(__name__)

ENVOY_PORT = 8080
EMULATOR_CONTROL_PORT = 8001
FOLLOW_INTERVAL = 0.5  # seconds between looks at the config in force (emulators follow live edits)


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
    # Before anything binds: gRPC would share a used xDS port silently (SO_REUSEPORT).
    check_ports_free((f"{prefix}.1:{args.xds_port}", "--xds-port"), (f"{prefix}.1:{args.admin_port}", "--admin-port"))
    workdir = Path(tempfile.mkdtemp(prefix="vertex-gateway-demo-"))
    emulators: list[VertexEmulator] = []
    backends: list[CustomBackendEmulator] = []
    envoys: list[EnvoyProcess] = []
    follower: asyncio.Task | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    token_server = FakeTokenServer(host=f"{prefix}.1")
    plane: ControlPlane | None = None
    config_path: Path | None = None
    key_path: Path | None = None
    try:
        await token_server.start()
        key_path = write_service_account_key(workdir / "demo-service-account.json", token_server.token_uri)
        config_path = _prepare_config(Path(args.config) if args.config else None, prefix, workdir, key_path)
        config = load_config(config_path)
        # A second demo on the same loopback prefix: say so instead of a bind traceback.
        check_ports_free(*[(f"{region.address}:{region.port}", "--loopback-prefix")
                           for region in config.regions.values()],
                         *[(f"{config.regions[name].address}:{EMULATOR_CONTROL_PORT}", "--loopback-prefix")
                           for name in config.vertex_regions],
                         *[(f"{prefix}.{21 + index}:{ENVOY_PORT}", "--loopback-prefix")
                           for index in range(len(config.vertex_regions))])
        plane = ControlPlane(config_path, xds_address=f"{prefix}.1:{args.xds_port}",
                             admin_address=f"{prefix}.1:{args.admin_port}")
        await plane.start()
        for name in config.regions:
            if config.regions[name].custom:  # no Envoy of its own: a server that answers its paths
                backend = CustomBackendEmulator(name, _custom_paths(config, name), host=config.regions[name].address,
                                                port=config.regions[name].port)
                await backend.start()
                backends.append(backend)
        for index, name in enumerate(config.vertex_regions):
            region = config.regions[name]
            emulator = VertexEmulator(name, config.project, _endpoint_ids(config, name),
                                      _publisher_models(config, name), host=region.address,
                                      port=region.port, control_port=EMULATOR_CONTROL_PORT)
            await emulator.start()
            emulators.append(emulator)
            envoy = EnvoyProcess(name, f"{prefix}.1:{plane.xds_port}", f"{prefix}.{21 + index}:{ENVOY_PORT}",
                                 workdir=workdir / "envoy", log_level="warning", die_with_parent=True)
            envoys.append(envoy.start())  # from this (the main) thread: see EnvoyProcess's die_with_parent
        for envoy in envoys:
            await asyncio.to_thread(envoy.wait_ready)
        follower = asyncio.create_task(_follow_config(plane, emulators))
        _print_banner(config, envoys, emulators, plane, config_path, args.keep_config, backends)
        await stop.wait()
    finally:
        if plane:  # not when refused before anything was started
            print("\nstopping: Envoys, emulators, control plane ...", flush=True)
        if follower:
            follower.cancel()
        for envoy in envoys:
            await asyncio.to_thread(envoy.stop)
        for emulator in [*emulators, *backends]:
            await emulator.stop()
        if plane:
            await plane.stop()
        await token_server.stop()
        if args.keep_config and config_path and config_path.exists():
            _keep_config(config_path, Path(args.keep_config), key_path)
        shutil.rmtree(workdir, ignore_errors=True)


def _custom_paths(config: RegionConfig, backend: str) -> list[str]:
    """Every path the gateway may send to a custom backend: each model's path, each verb."""
    return sorted({upstream_path(config, model, backend).replace("{verb}", verb)
                   for model, spec in config.models.items() if backend in spec.served_regions
                   for verb in (PUBLISHER_VERBS if spec.publisher_model else VERBS)})


def _endpoint_ids(config, region: str) -> dict[str, str]:
    return {m.endpoints[region]: model for model, m in config.models.items() if region in m.endpoints}


def _publisher_models(config, region: str) -> list[str]:
    return [m.publisher_model for m in config.models.values() if m.publisher_model and region in m.regions]


async def _follow_config(plane: ControlPlane, emulators: list[VertexEmulator]) -> None:
    """Endpoint ids and publisher models added by a live edit are served too, once the control
    plane has accepted the edit (a real Vertex endpoint exists before it is configured). A new
    region gets no emulator or Envoy: that needs a restart."""
    seen = plane.cache.config.version
    while True:
        await asyncio.sleep(FOLLOW_INTERVAL)
        config = plane.cache.config
        if config.version == seen:
            continue
        seen = config.version
        for emulator in emulators:
            if emulator.region in config.regions:
                emulator.endpoints.update(_endpoint_ids(config, emulator.region))
                emulator.publisher_models.update(_publisher_models(config, emulator.region))


def _keep_config(config_path: Path, target: Path, key_path: Path | None) -> None:
    """The edited regions.yaml, minus the `auth:` the demo added for its throwaway token endpoint,
    so that `demo --config TARGET` runs it again."""
    yaml = YAML()
    try:
        data = yaml.load(config_path.read_text())
        auth = data.get("auth") if isinstance(data, dict) else None
        if key_path and isinstance(auth, dict) and auth.get("credentials") == f"service_account:{key_path}":
            del data["auth"]
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w") as out:
            yaml.dump(data, out)
    except Exception:  # a broken last edit is kept as it is: the user may want to fix it
        shutil.copyfile(config_path, target)
    print(f"kept the edited config: {target}  (run it again: python -m control_plane demo --config {target})",
          flush=True)


def _print_banner(config, envoys, emulators, plane, config_path, keep_config, backends=()) -> None:
    first, first_emulator = envoys[0], emulators[0]
    model = config.default_model
    ejection = config.policy.outlier_detection
    admin = f"http://{plane.admin_address.rpartition(':')[0]}:{plane.admin_port}"
    lines = [
        "",
        "Vertex gateway demo is up.",
        f"  control plane: xDS {plane.xds_address.rpartition(':')[0]}:{plane.xds_port}, debug {admin}",
    ]
    for envoy, emulator in zip(envoys, emulators):
        lines.append(f"  {envoy.region:<14} Envoy http://{envoy.listen} (admin {envoy.admin_url})  ->  "
                     f"emulator {emulator.url} (control {emulator.control_url})")
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
        f"A region that fails {ejection.consecutive_5xx} times in a row is ejected for "
        f"{ejection.base_ejection_time:g} s (policy.outlier_detection.base_ejection_time; longer if it is",
        "ejected again): until then every request goes straight to the other region, even after you heal it",
        "or switch to another failure mode. `model/M@R...ejections_active` in an Envoy's /stats shows it.",
        "",
        "See what each Envoy runs:",
        f"  curl -s {admin}/debug/clients",
        f"Edit {config_path} while this runs: valid changes are pushed, broken ones rejected;",
        "the emulators also answer endpoint ids that an edit adds (a new region needs a restart).",
        f"On exit the edited file is kept at {keep_config}." if keep_config else
        "It is deleted on exit: start with --keep-config PATH to keep it.",
        "Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


def run_demo(args: argparse.Namespace) -> int:
    asyncio.run(_run(args))
    return 0
