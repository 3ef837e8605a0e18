"""Give the memory of a burst of xDS work back to the system once the burst is over.

A burst (1,000 Envoys syncing at once, a push to all of them) allocates many short-lived
buffers: responses on their way out, requests coming in, gRPC's own. glibc's allocator keeps
what they freed in its heaps, fragmented by the few long-lived objects allocated between
them, so the process's RSS stays at the burst's peak: at 1,000 Delta clients about 17 KB per
client beyond what is in use (bench/controlplane.py, docs/BENCHMARKS.md). malloc_trim(0)
returns those free pages. It is called once the work has been quiet for a moment, so it
costs one call per burst, never one per response. Where there is no glibc it does nothing.

The same quiet moment frees what a reload replaced (`retire`): dropping the last reference to
a large config's build costs up to 0.15 s of deallocation (1,000 models), which would otherwise delay
the very push the reload starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

QUIET_S = 0.5


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None


_TRIM = _malloc_trim()


class HeapTrimmer:
    """`busy()` after each piece of work (cheap: two assignments); the heap is trimmed once
    no work has been done for `quiet` seconds since the last trim."""

    __slots__ = ("quiet", "trims", "_last_busy", "_dirty", "_timer", "_retired", "_held", "_on_quiet")

    def __init__(self, quiet: float = QUIET_S):
        self.quiet = quiet
        self.trims = 0
        self._last_busy = 0.0
        self._dirty = False
        self._timer: asyncio.TimerHandle | None = None
        self._retired: list[object] = []
        self._held = 0
        self._on_quiet: list[Callable[[], None]] = []

    def when_quiet(self, release: Callable[[], None]) -> None:
        """Call release() at each quiet moment after work (to drop what a burst shared), before
        the heap is trimmed."""
        self._on_quiet.append(release)

    def busy(self) -> None:
        self._last_busy = time.monotonic()
        self._dirty = True
        if self._timer is None and (_TRIM is not None or self._retired or self._on_quiet):
            self._timer = asyncio.get_running_loop().call_later(self.quiet, self._check)

    def retire(self, garbage: object) -> None:
        """Drop this reference once the work has gone quiet (now when no event loop runs)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._retired.append(garbage)
        self.busy()

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Work that is not xDS (a reload building in its thread): neither free nor trim until
        it is over, since either holds the GIL that work needs."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            self.busy()

    def _check(self) -> None:
        idle = time.monotonic() - self._last_busy
        if self._held:
            idle = 0.0
        if idle < self.quiet:  # still busy: look again when it may have gone quiet
            self._timer = asyncio.get_running_loop().call_later(self.quiet - idle, self._check)
            return
        self._timer = None
        dirty, self._dirty = self._dirty, False
        if dirty:
            for release in self._on_quiet:
                release()
        if self._retired:
            started = time.perf_counter()
            self._retired.clear()
            log.debug("what the last reload replaced freed in %.1f ms", 1000 * (time.perf_counter() - started))
        if dirty and _TRIM is not None:
            started = time.perf_counter()
            _TRIM(0)
            self.trims += 1
            log.debug("heap trimmed after a burst of xDS work in %.1f ms", 1000 * (time.perf_counter() - started))
