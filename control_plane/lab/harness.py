"""Real parts run in-process for the tests and the benchmarks: an asyncio loop in a thread, a control
plane on one, free ports, and waiting on conditions with deadlines (never sleeps)."""

from __future__ import annotations

import asyncio
import functools
import random
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import yaml

from control_plane.app import ControlPlane

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 15.0, interval: float = 0.02, what: str = "") -> T:
    """Poll until condition() is truthy; return its value or fail after timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the thing waited for may not exist yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}"
                         + (f" (last error: {last_error!r})" if last_error else ""))


async def until(condition: Callable[[], T], timeout: float = 10.0, what: str = "") -> T:
    """wait_for on the running event loop (a server on the same loop keeps running meanwhile):
    condition()'s first truthy value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := condition()):
        if asyncio.get_running_loop().time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(0.005)  # yields to the server on this loop; bounded by the deadline
    return value


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for a server started later (an Envoy's listener, a control
    plane). Taken below the kernel's range for outgoing connections' local ports: a port from
    bind(0) comes from that range, so between this call and the server's bind any connection
    the suite opens could take it ("Address already in use", seen in CI). Not handed out twice
    by this process."""
    low = _local_ports_start()
    candidates = range(max(1024, low - _BELOW_RANGE), low)
    for _ in range(50):
        port = random.choice(candidates)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # (every try taken: the kernel's choice)
        sock.bind((host, 0))
        return sock.getsockname()[1]


_BELOW_RANGE = 12_000
_handed_out: set[int] = set()


@functools.cache
def _local_ports_start() -> int:
    """Where the kernel's range of local ports for outgoing connections starts (Linux; 32768 by
    default), read once."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class LoopThread:
    """An asyncio loop in a daemon thread, so sync tests can drive async servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        async def wrapper() -> T:
            return fn()

        return self.call(wrapper(), timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class ControlPlaneThread:
    """A real ControlPlane (gRPC ADS + admin HTTP) on its own loop thread."""

    def __init__(self, config_path: Path, watch: bool = True, xds_address: str = "127.0.0.1:0", **options):
        self.loop = LoopThread()

        async def make() -> ControlPlane:
            plane = ControlPlane(config_path, xds_address=xds_address, admin_address="127.0.0.1:0",
                                 watch=watch, **options)
            await plane.start()
            return plane

        self.plane: ControlPlane = self.loop.call(make())

    @property
    def xds_address(self) -> str:
        return f"127.0.0.1:{self.plane.xds_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.plane.admin_port}"

    def reload(self) -> bool:
        return self.loop.call(self.plane.reload("test"))

    def close(self) -> None:
        self.loop.call(self.plane.stop())
        self.loop.close()


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
