"""The control plane process: config in force, the xDS server, the admin endpoints, reloads.

A thin asyncio shell around the pure parts (config, resources, snapshot, cache).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web
from watchfiles import awatch

from .admin import admin_app
from .cache import Builder, SnapshotCache
from .config import AuthProfile, ConfigError, RegionConfig, load_config
from .csds import CsdsServer
from .metrics import Metrics
from .resources import build_resources
from .server import AdsServer
from .snapshot import InconsistentSnapshot
from .status import ClientRegistry
from .tokens import TokenRefresher

log = logging.getLogger(__name__)


class PlaintextRefused(RuntimeError):
    pass


@dataclass(frozen=True)
class ServerTls:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # set: Envoys must present a certificate it signed

    def credentials(self) -> grpc.ServerCredentials:
        pair = (Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes())
        client_ca = Path(self.client_ca_file).read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_credentials([pair], root_certificates=client_ca,
                                           require_client_auth=client_ca is not None)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class ControlPlane:
    def __init__(self, config_path: str | Path, xds_address: str = "127.0.0.1:18000",
                 admin_address: str = "127.0.0.1:18001", watch: bool = True, xds_tls: ServerTls | None = None,
                 insecure_xds: bool = False, admin_token: str | None = None, builder: Builder = build_resources):
        xds_host = xds_address.rpartition(":")[0]
        if xds_tls is None and not is_loopback(xds_host):
            if not insecure_xds:
                raise PlaintextRefused(
                    f"plaintext xDS on non-loopback address {xds_host}: give --xds-tls-cert/--xds-tls-key "
                    "(and --xds-tls-client-ca for mTLS), or --insecure-xds on a trusted network")
            log.warning("serving xDS in PLAINTEXT on %s: any host that reaches it can read config and "
                        "access tokens; use --xds-tls-* outside a trusted network", xds_host)
        admin_host = admin_address.rpartition(":")[0]
        if not is_loopback(admin_host) and not admin_token:
            raise PlaintextRefused(f"admin endpoints on non-loopback address {admin_host} need a bearer token "
                                   "(--admin-token-file or VERTEX_GATEWAY_ADMIN_TOKEN)")
        self.admin_token = admin_token
        self.xds_tls = xds_tls
        self.config_path = Path(config_path)
        self.xds_address = xds_address
        self.admin_address = admin_address
        self.watch = watch
        config = load_config(self.config_path)  # ConfigError: refuse to start on a broken file
        self._file_hash = _file_hash(self.config_path)
        self.metrics = Metrics()
        self.clients = ClientRegistry()
        self.cache = SnapshotCache(config, builder)
        self.ads = AdsServer(self.cache, self.clients, self.metrics)
        self.tokens = TokenRefresher(_profiles(config), config.auth.refresh_margin, self.cache.set_tokens,
                                     self.metrics)
        self.last_reload: dict = {"time": _now(), "ok": True, "version": config.version, "errors": []}
        self.metrics.config_ok.set(1)
        self.xds_port = 0
        self.admin_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._admin: web.AppRunner | None = None
        self._watcher: asyncio.Task | None = None
        self._stop_watch = asyncio.Event()

    async def start(self) -> None:
        self._grpc = grpc.aio.server(options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            # Envoy pings every 10 s (bootstrap keepalive); allow it.
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
        ])
        self._grpc.add_generic_rpc_handlers((self.ads.rpc_handler(), CsdsServer(self.clients).rpc_handler()))
        if self.xds_tls:
            self.xds_port = self._grpc.add_secure_port(self.xds_address, self.xds_tls.credentials())
        else:
            self.xds_port = self._grpc.add_insecure_port(self.xds_address)
        if not self.xds_port:
            raise OSError(f"cannot bind the xDS port {self.xds_address}")
        await self._grpc.start()
        self._admin = web.AppRunner(admin_app(self), access_log=None)
        await self._admin.setup()
        host, _, port = self.admin_address.rpartition(":")
        site = web.TCPSite(self._admin, host.strip("[]"), int(port))
        await site.start()
        self.admin_port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked
        if self.watch:
            self._watcher = asyncio.create_task(self._watch_file())
        self.tokens.start()
        log.info("serving xDS on %s:%d, admin on %s:%d, config %s version %s",
                 self.xds_address.rpartition(":")[0], self.xds_port, host, self.admin_port,
                 self.config_path, self.cache.config.version)

    async def stop(self) -> None:
        self._stop_watch.set()
        if self._watcher:
            self._watcher.cancel()
        await self.tokens.stop()
        if self._grpc:
            await self._grpc.stop(grace=0.5)
        if self._admin:
            await self._admin.cleanup()

    def reload(self, reason: str = "file changed") -> bool:
        """Validate, build and swap in the file's config; a broken one leaves the running config."""
        read = self._read_config()
        if read is None:
            return True  # same bytes (editors touch files; watchers fire twice)
        config, errors = read
        if config is not None:
            errors = self._install(config, lambda: self.cache.prepare(config))
        return self._record_reload(reason, errors)

    async def reload_in_background(self, reason: str = "file changed") -> bool:
        """reload(), with the heavy build on a worker thread so xDS streams keep being served."""
        read = self._read_config()
        if read is None:
            return True
        config, errors = read
        if config is not None:
            try:
                snapshots = await asyncio.to_thread(self.cache.prepare, config)
            except InconsistentSnapshot as exc:
                errors = [self._inconsistent(exc)]
            else:
                errors = self._install(config, lambda: snapshots)
        return self._record_reload(reason, errors)

    def _read_config(self) -> tuple[RegionConfig | None, list[str]] | None:
        """None: the file is unchanged. Else the config to install (None when there is nothing
        to install: a broken file, or an edit that changes nothing) and the problems found."""
        digest = _file_hash(self.config_path)
        if digest == self._file_hash and self.last_reload["ok"]:
            return None
        self._file_hash = digest
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            return None, [str(p) for p in exc.problems]
        return (config if config.version != self.cache.config.version else None), []

    def _install(self, config: RegionConfig, build: Callable[[], dict]) -> list[str]:
        try:
            self.cache.apply(config, build())
        except InconsistentSnapshot as exc:
            return [self._inconsistent(exc)]
        self.tokens.update(_profiles(config), config.auth.refresh_margin)
        return []

    def _inconsistent(self, exc: InconsistentSnapshot) -> str:
        return f"{self.config_path}: cannot build a consistent snapshot: {exc}"

    def _record_reload(self, reason: str, errors: list[str]) -> bool:
        ok = not errors
        self.last_reload = {"time": _now(), "ok": ok, "reason": reason,
                            "version": self.cache.config.version, "errors": errors}
        self.metrics.reloads.labels("ok" if ok else "failed").inc()
        self.metrics.config_ok.set(1 if ok else 0)
        if ok:
            log.info("config reloaded (%s): version %s", reason, self.cache.config.version)
        else:
            log.error("config rejected, still serving version %s: %s", self.cache.config.version,
                      " | ".join(errors))
        return ok

    async def _watch_file(self) -> None:
        # Watch the directory: editors and Kubernetes ConfigMaps replace the file, not write it.
        directory = self.config_path.resolve().parent
        # "..data" is the symlink a Kubernetes ConfigMap volume swaps on update.
        names = {self.config_path.name, "..data"}
        async for _changes in awatch(directory, stop_event=self._stop_watch, debounce=50, step=10,
                                     recursive=False, ignore_permission_denied=True,
                                     watch_filter=lambda _change, path: Path(path).name in names):
            if self.config_path.exists():
                await self.reload_in_background()


def _profiles(config: RegionConfig) -> dict[str, AuthProfile]:
    return {name: config.auth.profile(name) for name in config.profiles_in_use()}


def _file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
