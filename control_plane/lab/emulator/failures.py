"""The failure an emulator is told to inject (mode, how many requests, delay, per-tier statuses),
and how it drops a connection: with a TCP RST, as a region that resets it would."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import Any

from aiohttp import web

MODES = ("none", "reset", "hang", "slow", "down", "status", "stall", "tls")
HANG_MAX_SECONDS = 600.0
STALL = web.RequestKey("stall", asyncio.Event)  # set on a request answered in "stall" mode
FAILURE_MESSAGES = {
    429: "Resource exhausted. Please try again later. Please refer to "
         "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
    500: "Internal error encountered.",
    502: "Bad Gateway.",
    503: "The service is currently unavailable.",
    504: "Deadline exceeded.",
}
Failure = tuple[str, int | None, float]  # mode, status, delay


def abort(transport: asyncio.BaseTransport | None) -> None:
    """Drop a connection with a TCP RST (SO_LINGER 0), so clients see ECONNRESET, not a clean EOF."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def drop_connections(runner: web.AppRunner) -> None:
    for handler in runner.server.connections if runner.server else []:
        abort(handler.transport)


class FailureModes:
    """The injected failure; safe from any thread (tests set it from theirs, handlers read it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.mode: str = "none"
        self.status: int | None = None
        self.remaining: int | None = None
        self.delay = 0.0
        self._tier_status: dict[str, int] = {}  # tier -> status answered to requests asking for it

    @property
    def down(self) -> bool:
        return self.mode == "down"

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"mode": self.mode, "status": self.status, "remaining": self.remaining,
                    "delay": self.delay, "down": self.mode == "down"}

    def set(self, mode: str, count: int | None, status: int | None, delay: float) -> None:
        if mode.isdigit():
            status = int(mode)
        elif mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: one of {', '.join(MODES)} or a status code like '503'")
        elif mode != "status":
            status = None
        if (mode == "status" or mode.isdigit()) and (status is None or not 200 <= status <= 599):
            raise ValueError("a status mode needs a status code between 200 and 599")
        if count is not None and count < 1:
            raise ValueError("count must be >= 1 (or omitted: fail until told otherwise)")
        if delay < 0:
            raise ValueError("delay must be >= 0")
        with self._lock:
            if mode == "none":
                self._tier_status = {}
            healthy = mode in ("none", "down")  # count and delay only make sense for failing requests
            self.mode, self.status = mode, status
            self.remaining, self.delay = (None, 0.0) if healthy else (count, float(delay))

    def set_down(self, down: bool) -> None:
        with self._lock:
            if down or self.mode == "down":
                self.mode, self.status, self.remaining = ("down" if down else "none"), None, None

    def take(self) -> Failure | None:
        """The failure to apply to one request, counting it against `count`."""
        with self._lock:
            if self.mode in ("none", "down"):
                return None
            taken = (self.mode, self.status, self.delay)
            if self.remaining is not None:
                self.remaining -= 1
                if self.remaining <= 0:  # no wake: the request that used up the count may itself hang
                    self.mode, self.status, self.remaining, self.delay = "none", None, None, 0.0
            return taken

    def peek(self) -> Failure | None:
        with self._lock:
            return None if self.mode in ("none", "down") else (self.mode, self.status, self.delay)

    def fail_tier(self, tier: str, status: int | None) -> None:
        """Answer `status` (e.g. 429) to every request asking for capacity tier `tier` (dedicated,
        shared, priority, or "" for none), while no other failure mode applies; None: serve it
        again. set("none") clears every tier failure."""
        if status is not None and not 200 <= status <= 599:
            raise ValueError("a tier failure needs a status code between 200 and 599")
        with self._lock:
            if status is None:
                self._tier_status.pop(tier, None)
            else:
                self._tier_status[tier] = status

    def tier_failure(self, tier: str) -> Failure | None:
        """The failure for a request asking for `tier` when no other failure applies to it."""
        status = self._tier_status.get(tier)
        return None if status is None else ("tier", status, 0.0)

    def tiers(self) -> dict[str, int]:
        with self._lock:
            return dict(self._tier_status)
