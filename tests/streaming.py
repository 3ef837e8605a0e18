"""Reading a streamed HTTP response as it arrives (tests/test_emulator.py, tests/test_openai.py)."""

from __future__ import annotations

import time

import requests


def timed_chunks(resp: requests.Response) -> list[tuple[float, bytes]]:
    """The body as the client saw it arrive: one entry per HTTP chunk, with its arrival time."""
    return [(time.monotonic(), chunk) for chunk in resp.iter_content(chunk_size=None)]
