"""bench.dataplane's load generators: wrk with a Lua script that prints its summary as JSON, or,
when wrk cannot be had, control_plane/lab/loadgen.py in its own process."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%s]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"bytes\\":%%d,\\"connect\\":%%d,\\"read\\":%%d," ..
    "\\"write\\":%%d,\\"status\\":%%d,\\"timeout\\":%%d,\\"p50_us\\":%%d,\\"p90_us\\":%%d,\\"p99_us\\":%%d," ..
    "\\"max_us\\":%%d,\\"mean_us\\":%%.1f}\\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


class Wrk:
    name = "wrk"

    def __init__(self, binary: str, body: bytes, workdir: Path):
        self.binary = binary
        self.body, self.workdir = body, workdir
        self.script = workdir / "post.lua"
        assert b"]==]" not in body
        self.script.write_text(WRK_SCRIPT % body.decode())
        self.version = (subprocess.run([binary, "-v"], capture_output=True, text=True).stdout
                        + subprocess.run([binary, "-v"], capture_output=True, text=True).stderr).split("\n")[0]

    def run(self, url: str, connections: int, duration: float, headers: dict | None = None) -> dict:
        script = self.script
        if headers:  # a script that also sends these headers (e.g. the +jwt target's token)
            script = self.workdir / "post-headers.lua"
            extra = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
            script.write_text(WRK_SCRIPT.replace('wrk.headers["Content-Type"] = "application/json"\n',
                                                 'wrk.headers["Content-Type"] = "application/json"\n' + extra)
                              % self.body.decode())
        cmd = [self.binary, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
               "-s", str(script), url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
        line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk gave no result: {out.stdout[-500:]} {out.stderr[-500:]}")
        r = json.loads(line[len("WRKJSON "):])
        errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
        return {"requests": r["requests"], "duration_s": r["duration_us"] / 1e6, "errors": errors,
                "error_detail": {k: r[k] for k in ("connect", "read", "write", "status", "timeout") if r[k]},
                "p50_ms": r["p50_us"] / 1000, "p90_ms": r["p90_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
                "max_ms": r["max_us"] / 1000, "mean_ms": r["mean_us"] / 1000,
                "rps": r["requests"] / (r["duration_us"] / 1e6)}


def _python_load(url: str, connections: int, duration: float, body: bytes, queue, headers=None) -> None:
    from control_plane.lab.loadgen import percentile, run_load
    result = asyncio.run(run_load(url, 10_000_000, connections, body, deadline_s=duration, headers=headers))
    lat = [s.latency * 1000 for s in result.samples]
    queue.put({"requests": len(lat), "duration_s": result.duration,
               "errors": sum(s.status != 200 for s in result.samples), "error_detail": {},
               "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90), "p99_ms": percentile(lat, 99),
               "max_ms": max(lat), "mean_ms": sum(lat) / len(lat), "rps": len(lat) / result.duration})


class PythonLoad:
    """control_plane/lab/loadgen.py in its own process: used only when wrk cannot be had."""

    name = "python (control_plane/lab/loadgen.py) -- FALLBACK: its own CPU cost bounds every number"
    version = sys.version.split()[0]

    def __init__(self, body: bytes):
        self.body = body

    def run(self, url: str, connections: int, duration: float, headers: dict | None = None) -> dict:
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_python_load, args=(url, connections, duration, self.body, queue, headers))
        proc.start()
        try:
            return queue.get(timeout=duration + 60)
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
