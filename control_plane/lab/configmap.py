"""A directory laid out and updated as kubelet does for a mounted ConfigMap (the tests' and
the benchmarks' stand-in for one)."""

from __future__ import annotations

import time
from pathlib import Path


class ConfigMapVolume:
    """A directory laid out and updated as kubelet does for a mounted ConfigMap (AtomicWriter):
    files live in a timestamped directory; `..data` is a symlink to it; each key is a symlink
    `key -> ..data/key`. An update writes a new timestamped directory, points `..data_tmp` at
    it, renames `..data_tmp` over `..data` (atomic), then deletes the old directory."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._updates = 0

    def write(self, files: dict[str, str]) -> None:
        self._updates += 1
        new = self.root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{self._updates:06d}"
        new.mkdir()
        for name, text in files.items():
            (new / name).write_text(text)
        data = self.root / "..data"
        old = data.resolve() if data.is_symlink() else None
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(new.name)
        tmp.rename(data)
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        if old is not None:
            for child in old.iterdir():
                child.unlink()
            old.rmdir()

    def path(self, name: str) -> Path:
        return self.root / name
