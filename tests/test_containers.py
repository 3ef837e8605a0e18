"""docker-compose.yml run for real: the product image, two Envoys, the emulators and the
token endpoint as containers, on the host's network (deploy/compose/test-host-network.yml).

Needs Docker, a compose client and the locally built images: deploy/test-containers.sh makes
them and runs this file with VERTEX_GATEWAY_CONTAINER_TESTS=1 (CI does, as root, after the
rest of the suite). Without that variable every test here is skipped; with it, a missing
piece is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from control_plane.lab.harness import wait_for

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
OVERRIDE = ROOT / "deploy" / "compose" / "test-host-network.yml"
PROJECT = "vertex-gateway-test"
REGIONS = ("us-central1", "us-east4")
OTHER = {"us-central1": "us-east4", "us-east4": "us-central1"}

pytestmark = pytest.mark.skipif(os.environ.get("VERTEX_GATEWAY_CONTAINER_TESTS") != "1",
                                reason="run by deploy/test-containers.sh (needs Docker and the local images)")


def addresses() -> dict[str, str]:
    """Service name -> its loopback address, from the override's extra_hosts."""
    override = yaml.safe_load(OVERRIDE.read_text())
    pairs = override["x-host-names"]["extra_hosts"]
    return dict(pair.split(":", 1) for pair in pairs)


class ComposeStack:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.config_dir = workdir / "config"
        self.address = addresses()
        self.tool = shlex.split(os.environ.get("VERTEX_GATEWAY_TEST_COMPOSE") or "docker-compose")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
        self.env.update(VERTEX_GATEWAY_CONFIG_DIR=str(self.config_dir), VERTEX_GATEWAY_TEST_DIR=str(workdir))
        self.env.pop("VERTEX_GATEWAY_ADMIN_TOKEN", None)  # on loopback the control plane needs none

    def compose(self, *args: str, check: bool = True, timeout: float = 180,
                files: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
        files = files or (self.workdir / "compose.yml",)
        done = subprocess.run([*self.tool, "-p", PROJECT, *(f"--file={f}" for f in files), "--profile", "emulators",
                               *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=self.env)
        if check:
            assert done.returncode == 0, f"compose {' '.join(args)}: {done.stdout}{done.stderr}"
        return done

    def prepare(self) -> None:
        self.workdir.chmod(0o755)  # the containers' users read the mounted files
        self.config_dir.mkdir(mode=0o755)
        shutil.copy(ROOT / "deploy" / "compose" / "regions.yaml", self.config_dir / "regions.yaml")
        for region in REGIONS:
            host = self.address[f"envoy-{region}"]
            bootstrap = subprocess.run(
                [sys.executable, "-m", "control_plane", "bootstrap", "--region", region,
                 "--xds-address", "control-plane:18000", "--listen", f"{host}:8080",
                 "--admin-address", f"{host}:9901", "--node-id", f"envoy-{region}"],
                capture_output=True, text=True, timeout=60, cwd=ROOT, check=True).stdout
            (self.workdir / f"bootstrap-{region}.yaml").write_text(bootstrap)
        for path in self.workdir.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        # docker-compose.yml + the override, merged and interpolated by compose itself; less the
        # published ports, which the host network ignores and docker-compose v1 refuses with it
        # (compose v2 would take `ports: !reset []` in the override instead).
        merged = yaml.safe_load(self.compose("config", files=(COMPOSE_FILE, OVERRIDE)).stdout)
        for service in merged["services"].values():
            service.pop("ports", None)
        (self.workdir / "compose.yml").write_text(yaml.safe_dump(merged, sort_keys=False))

    def containers(self) -> list[str]:
        return subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                              capture_output=True, text=True, timeout=30, check=True).stdout.split()

    def inspect(self, service: str) -> dict:
        (container,) = self.compose("ps", "-q", service).stdout.split()
        out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, timeout=30,
                             check=True).stdout
        return json.loads(out)[0]

    def exec(self, service: str, *command: str) -> subprocess.CompletedProcess:
        return self.compose("exec", "-T", service, *command, check=False, timeout=60)

    def envoy_url(self, region: str) -> str:
        return f"http://{self.address[f'envoy-{region}']}:8080"

    def emulator_control(self, region: str) -> str:
        return f"http://{self.address[f'vertex-{region}']}:8001/_emulator"

    def admin_url(self) -> str:
        return f"http://{self.address['control-plane']}:18001"

    def edit_config(self, change) -> None:
        """As an editor saves: a new file renamed over the old one."""
        path = self.config_dir / "regions.yaml"
        tmp = self.config_dir / ".regions.yaml.tmp"
        tmp.write_text(change(path.read_text()))
        tmp.chmod(0o644)
        tmp.replace(path)


def predict(url: str, path: str = "/predict", timeout: float = 10) -> requests.Response:
    return requests.post(url + path, json={"instances": [[1, 2]]}, timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = ComposeStack(tmp_path_factory.mktemp("compose"))
    stack.prepare()
    stack.compose("down", "-v", "--remove-orphans")  # leftovers of an interrupted run
    try:
        stack.compose("up", "-d", "--no-build")
        yield stack
    finally:
        logs = stack.compose("logs", "--no-color", "--tail", "40", check=False, timeout=60)
        print(logs.stdout[-20000:])  # shown by pytest when a test failed
        stack.compose("down", "-v", "--remove-orphans", check=False)


def test_every_container_is_on_the_host_network_only(stack):
    for service in ("control-plane", *(f"envoy-{r}" for r in REGIONS), *(f"vertex-{r}" for r in REGIONS),
                    "fake-oauth"):
        info = stack.inspect(service)
        assert info["HostConfig"]["NetworkMode"] == "host", service
        assert set(info["NetworkSettings"]["Networks"]) <= {"host"}, service
    networks = subprocess.run(["docker", "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                              capture_output=True, text=True, timeout=30, check=True).stdout.split()
    assert networks == [], "no compose network: nothing travels through a container bridge"


def test_control_plane_is_healthy_by_its_healthcheck_non_root_and_read_only(stack):
    health = wait_for(lambda: stack.inspect("control-plane")["State"]["Health"]["Status"] == "healthy", 120,
                      interval=1, what="the control plane's HEALTHCHECK to report healthy")
    assert health
    info = stack.inspect("control-plane")
    assert info["Config"]["User"] == "10001:10001"
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["Config"]["Healthcheck"]["Test"][0] == "CMD"  # the image's own check, not compose's
    uid = stack.exec("control-plane", "python", "-c", "import os; print(os.getuid(), os.getgid())")
    assert uid.stdout.split() == ["10001", "10001"], uid.stdout + uid.stderr
    write = stack.exec("control-plane", "python", "-c", "open('/home/gateway/x', 'w')")
    assert write.returncode != 0 and "Read-only file system" in write.stderr + write.stdout


@pytest.mark.parametrize("region", REGIONS)
def test_requests_through_each_envoy_are_answered_by_its_region(stack, region):
    answer = wait_for(lambda: (r := predict(stack.envoy_url(region))).status_code == 200 and r, 120, interval=0.5,
                      what=f"a 200 through the {region} Envoy")
    assert answer.headers["x-vertex-region"] == region
    assert answer.headers["x-envoy-attempt-count"] == "1"
    native = predict(stack.envoy_url(region), "/v1/models/housing:predict")
    assert native.status_code == 200 and native.headers["x-vertex-region"] == region
    assert "predictions" in native.json()


@pytest.mark.parametrize("region", REGIONS)
def test_a_failing_region_is_answered_by_the_other(stack, region):
    control = stack.emulator_control(region)
    requests.post(control + "/fail", json={"mode": "503", "count": 1}, timeout=5).raise_for_status()
    try:
        moved = predict(stack.envoy_url(region))
        assert moved.status_code == 200, moved.text
        assert moved.headers["x-vertex-region"] == OTHER[region]
        assert moved.headers["x-envoy-attempt-count"] == "2"
    finally:
        requests.post(control + "/fail", json={"mode": "none"}, timeout=5).raise_for_status()


def test_an_edit_of_the_mounted_regions_yaml_is_applied(stack):
    before = requests.get(stack.admin_url() + "/debug/regions", timeout=5).json()
    stack.edit_config(lambda text: text.replace("\n  housing:\n", "\n  pricing:\n", 1))
    for region in REGIONS:
        renamed = wait_for(lambda: (r := predict(stack.envoy_url(region), "/v1/models/pricing:predict"))
                           .status_code == 200 and r, 60, interval=0.5, what=f"the edit in the {region} Envoy")
        assert renamed.headers["x-vertex-region"] == region
        assert predict(stack.envoy_url(region), "/v1/models/housing:predict").status_code == 404
    after = requests.get(stack.admin_url() + "/debug/regions", timeout=5).json()
    assert after["last_reload"]["ok"] and after["version"] != before["version"]


def test_compose_down_leaves_nothing_running(stack):
    assert stack.containers()
    stack.compose("down", "-v", "--remove-orphans")
    assert stack.containers() == []
    volumes = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.split()
    assert volumes == []
    for region in REGIONS:
        with pytest.raises(requests.ConnectionError):
            predict(stack.envoy_url(region), timeout=2)
    with pytest.raises(requests.ConnectionError):
        requests.get(stack.admin_url() + "/healthz", timeout=2)
