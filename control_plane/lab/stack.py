"""A whole gateway for the end-to-end tests and the benchmarks: Vertex emulators per region, the
control plane, and one real Envoy per requested region, all on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import requests
import yaml

from .configmap import ConfigMapVolume
from .emulator import EmulatorThread, VertexEmulator
from .envoy_process import EnvoyProcess
from .fake_oauth import FakeTokenServer, write_service_account_key
from .harness import ControlPlaneThread, free_port, wait_for, write_config

PROJECT = "p-e2e"
GEMINI = ["google/gemini-2.0-flash"]  # publisher models every emulator serves
ENDPOINT_IDS = {"us-central1": "1001", "us-east4": "2002", "europe-west4": "3003", "global": "9009"}
# `global`: Vertex's global location (publisher models), the last resort where a stack has it.
DEFAULT_FAILOVER = {"us-central1": ["us-east4", "europe-west4", "global"], "us-east4": ["us-central1"],
                    "europe-west4": ["us-central1"], "global": []}


class Stack:
    def __init__(self, regions=("us-central1", "us-east4"), envoys=("us-central1",), extra: dict | None = None,
                 delta: bool = False, token_lifetime: int = 3600, tls: dict | None = None,
                 ca_file: str | None = None, plane_options: dict | None = None, envoy_xds_tls=None,
                 configmap: bool = False, lazy_cluster_stats: bool = False):
        """tls: region -> ssl.SSLContext for that region's emulator (then Envoy verifies it with ca_file).
        configmap: regions.yaml lives in a directory laid out and updated as kubelet does."""
        tls = tls or {}
        self.dir = Path(tempfile.mkdtemp(prefix="vertex-e2e-"))
        self.emulators = {r: VertexEmulator(r, PROJECT, {ENDPOINT_IDS[r]: "housing", str(int(ENDPOINT_IDS[r]) + 1): "churn"},
                                            GEMINI, ssl_context=tls.get(r))
                          for r in regions}
        self.emulator_thread = EmulatorThread(self.emulators.values()).__enter__()
        # Real google-auth service-account credentials, granted by a local token endpoint.
        self.token_server = FakeTokenServer(expires_in=token_lifetime)
        self.emulator_thread.call(self.token_server.start())
        self.key_path = write_service_account_key(self.dir / "key.json", self.token_server.token_uri)
        self.config = {
            "project": PROJECT,
            "auth": {"credentials": f"service_account:{self.key_path}"},
            "listener": {"port": 8080},
            "regions": {r: {"address": "127.0.0.1", "port": e.port, "tls": r in tls,
                            **({"ca_file": ca_file} if r in tls else {}),
                            "failover": [f for f in DEFAULT_FAILOVER[r] if f in regions]}
                        for r, e in self.emulators.items()},
            "models": {
                "housing": {"default": True, "endpoints": {r: ENDPOINT_IDS[r] for r in regions}},
                "churn": {"endpoints": {r: str(int(ENDPOINT_IDS[r]) + 1) for r in regions}},
            },
        }
        _merge(self.config, copy.deepcopy(extra or {}))  # a test's module-level `extra` stays as written
        self.configmap = ConfigMapVolume(self.dir / "config") if configmap else None
        if self.configmap:
            self.configmap.write({"regions.yaml": yaml.safe_dump(self.config, sort_keys=False)})
            self.config_path = self.configmap.path("regions.yaml")
        else:
            self.config_path = write_config(self.dir / "regions.yaml", self.config)
        self.plane_options = plane_options or {}
        self.plane = ControlPlaneThread(self.config_path, **self.plane_options)
        self.envoys: dict[str, EnvoyProcess] = {}
        try:
            for region in envoys:
                envoy = EnvoyProcess(region, self.plane.xds_address, f"127.0.0.1:{free_port()}",
                                     delta=delta, workdir=self.dir, xds_tls=envoy_xds_tls,
                                     lazy_cluster_stats=lazy_cluster_stats)
                self.envoys[region] = envoy.start()
            for envoy in self.envoys.values():
                envoy.wait_ready()
        except BaseException:
            self.close()
            raise

    def url(self, path: str, region: str = "us-central1") -> str:
        return f"http://{self.envoys[region].listen}{path}"

    def post(self, path: str, region: str = "us-central1", **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return requests.post(self.url(path, region), **kwargs)

    def update_config(self, change: dict) -> None:
        """Edit regions.yaml as an operator would and wait until the control plane applied it."""
        config = copy.deepcopy(self.config)
        _merge(config, change)
        self.config = config
        write_config(self.config_path, config)
        assert self.plane.reload()

    def wait_synced(self, timeout: float = 15.0) -> None:
        def synced():
            clients = requests.get(self.plane.admin_url + "/debug/clients", timeout=5).json()["clients"]
            return len(clients) >= len(self.envoys) and all(
                c["error"] is None and t["status"] == "SYNCED" for c in clients for t in c["types"].values())
        wait_for(synced, timeout, what="every Envoy SYNCED")

    def restart_control_plane(self, stopped: Callable[[], None] = lambda: None) -> None:
        """Stop the control plane, run `stopped()` while it is down, start a new one on the same port."""
        address = self.plane.xds_address
        self.plane.close()
        stopped()
        self.plane = ControlPlaneThread(self.config_path, xds_address=address, **self.plane_options)

    def reset(self) -> None:
        for emulator in self.emulators.values():
            emulator.fail("none")
            emulator.clear()

    def close(self) -> None:
        for envoy in self.envoys.values():
            envoy.stop()
        self.plane.close()
        self.emulator_thread.call(self.token_server.stop())
        self.emulator_thread.__exit__(None, None, None)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


DELETE = "__delete__"  # as a value in an edit: remove the key


def _merge(into: dict, change: dict) -> None:
    for key, value in change.items():
        if value == DELETE:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
