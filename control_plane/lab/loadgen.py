"""A bounded HTTP load generator (count and time), shared by the load tests and bench/."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp


@dataclass
class Sample:
    started: float  # seconds since the run began
    latency: float
    status: int  # 0 = transport error
    region: str
    attempts: int
    error: str = ""


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    duration: float = 0.0

    @property
    def errors(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200]

    def window(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.started < end]


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def summary(samples: list[Sample]) -> dict:
    latencies = [s.latency * 1000 for s in samples]
    return {"requests": len(samples), "errors": sum(s.status != 200 for s in samples),
            "p50_ms": round(percentile(latencies, 50), 2), "p99_ms": round(percentile(latencies, 99), 2),
            "mean_ms": round(statistics.fmean(latencies), 2) if latencies else float("nan")}


async def run_load(url: str, total: int, concurrency: int, body: bytes,
                   events: dict[int, Callable[[], None]] | None = None, deadline_s: float = 120.0,
                   request_timeout_s: float = 30.0, headers: dict[str, str] | None = None) -> LoadResult:
    """Send `total` POSTs with `concurrency` in flight; events[i]() runs before request i is sent."""
    events = dict(events or {})
    result = LoadResult()
    counter = itertools.count()
    begin = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            index = next(counter)
            if index >= total or time.monotonic() - begin > deadline_s:
                return
            if index in events:
                await asyncio.to_thread(events.pop(index))
            start = time.monotonic()
            try:
                async with session.post(url, data=body, headers={"content-type": "application/json",
                                                                  **(headers or {})}) as resp:
                    await resp.read()
                    sample = Sample(start - begin, time.monotonic() - start, resp.status,
                                    resp.headers.get("x-vertex-region", ""),
                                    int(resp.headers.get("x-envoy-attempt-count", "0")))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                sample = Sample(start - begin, time.monotonic() - start, 0, "", 0, repr(exc))
            result.samples.append(sample)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    result.duration = time.monotonic() - begin
    return result


async def load_until(url: str, done: Callable[[], object], body: bytes = b'{"instances": [1]}', limit: int = 3000,
                     deadline_s: float = 30.0, headers: dict[str, str] | None = None) -> LoadResult:
    """Small batches of POSTs until done(), `limit` requests or `deadline_s`: traffic throughout
    something that takes its own time (a token's rotation), and no longer."""
    total = LoadResult()
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not done() and len(total.samples) < limit and loop.time() - start < deadline_s:
        batch = await run_load(url, 20, 4, body, deadline_s=10, headers=headers)
        total.samples += batch.samples
        await asyncio.sleep(0.05)  # pacing between bounded batches, not synchronisation
    return total
