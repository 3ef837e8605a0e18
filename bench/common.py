"""Helpers shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from control_plane.lab.envoy_process import envoy_binary  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def fmt(value, spec: str = "", none: str = "–") -> str:
    """A table cell: the value formatted, or `none` when there is none."""
    if value is None:
        return none
    return format(value, spec)


def machine() -> dict:
    """What a result was measured on: CPU, Python, Envoy, the commit and the files changed from it."""
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        envoy = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=30
                               ).stdout.strip().rsplit("version: ", 1)[-1]
    except (OSError, subprocess.SubprocessError):
        envoy = "unknown"
    commit, modified = "", []
    try:  # read-only git queries
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        modified = subprocess.run(["git", "diff", "--name-only", "HEAD"], cwd=ROOT, capture_output=True,
                                  text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "envoy": envoy, "commit": commit, "modified_files": modified,
            "loadavg_start": list(os.getloadavg())}


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads, from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rpartition(")")[2].split()  # after "(comm)": fields 3.. of proc(5)
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime (14), stime (15)


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    user = system = 0.0
    for pid in pids:
        u, s = cpu_times(pid)
        user, system = user + u, system + s
    return user, system


def rss_bytes(pid: int) -> int:
    """Resident set size from /proc/PID/statm (pages)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def ensure_debian_package(binary: str, package: str) -> str | None:
    """The path of `binary`, installing Debian's `package` first when absent and we are root.
    None (and a message on stderr) when it cannot be had."""
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"{binary} not found and cannot install it (needs root and apt-get): apt-get install -y {package}",
              file=sys.stderr)
        return None
    print(f"{binary} not found: installing Debian package {package} ...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "-qq", package], ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", package]):
        if cmd[1] == "update" and (shutil.which(binary) or Path(f"/usr/sbin/{binary}").exists()):
            break
        subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if not found:
        print(f"installing {package} failed: {binary} still not found", file=sys.stderr)
    return found


def write_json(directory: Path, name: str, started, doc: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(path)
    return path


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not ended within `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def control_plane_healthy(admin_port: int) -> bool:
    """The control plane on this admin port says ok at /healthz (serving, its first tokens in hand)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/healthz", timeout=2) as resp:
        return json.load(resp)["status"] == "ok"


def wait_until(condition, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001  (the thing waited for may not be up yet)
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}" + (f" (last error: {last!r})" if last else ""))


def pct(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def verdict_rows(verdicts: list[dict]) -> list[str]:
    """The targets table every benchmark ends its Markdown with."""
    rows = ["| target | goal | measured | |", "|---|---|---:|---|"]
    for v in verdicts:
        rows.append(f"| {v['target']} | {v['goal']} | {v['text']} | {'met' if v['met'] else '**missed**'} |")
    return rows


def make_body(target: int = 1024) -> bytes:
    """A Vertex `instances` payload of about `target` bytes (deterministic)."""
    instances: list[dict] = []
    while True:
        i = len(instances)
        candidate = instances + [{"id": i, "features": [round((i * 7 + j) * 0.0137, 4) for j in range(6)]}]
        body = json.dumps({"instances": candidate}, separators=(",", ":")).encode()
        if len(body) > target:
            return json.dumps({"instances": instances}, separators=(",", ":")).encode()
        instances = candidate


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


NO_MATPLOTLIB = "matplotlib not installed: plot skipped (pip install matplotlib)"


def save_plot(fig, path: Path, dpi: int = 100) -> str:
    """Lay out, write and close a figure; returns the line a benchmark prints about it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return f"plot written to {path}"
