"""The control plane process: config in force, the xDS server, the admin endpoints, reloads.

A thin asyncio shell around the pure parts (config, resources, snapshot, cache).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web
from watchfiles import awatch

from . import loading, trust_stores
from .admin import admin_app
from .cache import Builder, SnapshotCache
from .config import DEFAULT_PROFILE, ConfigError, RegionConfig, check_ca_file, key_pair_problem
from .csds import CsdsServer
from .exposure import is_loopback, open_listener_warning
from .fleet import FleetLoad
from .lrs import LoadReportServer
from .metrics import Metrics
from .ports import check_ports_free
from .resources import build_serialized
from .server import AdsServer
from .status import ClientRegistry
from .tokens import HeaderFileSource, IdTokenSource, Source, TokenRefresher
from .yamlsafe import Limits

log = logging.getLogger(__name__)

WATCH_POLL_MS = 2000  # with no file event for this long, check the file anyway
FILE_CHANGED = "file changed"
_MISSING = "missing"  # the "hash" of a file that is not there: reported once, applied when back


class PlaintextRefused(RuntimeError):
    pass


class StartRefused(RuntimeError):
    """A file or address named on the command line cannot be used (the message names its flag)."""


@dataclass(frozen=True)
class ServerTls:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # set: Envoys must present a certificate it signed

    def check(self) -> None:
        """Refuse a missing, unreadable or unusable file here, naming its flag: gRPC would only
        say that it failed to bind the port."""
        problem = key_pair_problem(self.cert_file, self.key_file)
        if problem:
            raise StartRefused(f"--xds-tls-cert {self.cert_file} / --xds-tls-key {self.key_file}: {problem}")
        if self.client_ca_file:
            try:
                check_ca_file(self.client_ca_file)  # as a regions.yaml CA file is checked
            except ValueError as exc:
                raise StartRefused(f"--xds-tls-client-ca {self.client_ca_file}: {exc}") from None

    def credentials(self) -> grpc.ServerCredentials:
        self.check()
        pair = (Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes())
        client_ca = Path(self.client_ca_file).read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_credentials([pair], root_certificates=client_ca,
                                           require_client_auth=client_ca is not None)


class ControlPlane:
    def __init__(self, config_path: str | Path, xds_address: str = "127.0.0.1:18000",
                 admin_address: str = "127.0.0.1:18001", watch: bool = True, xds_tls: ServerTls | None = None,
                 insecure_xds: bool = False, admin_token: str | None = None, builder: Builder = build_serialized,
                 max_config_bytes: int | None = None):
        xds_host = xds_address.rpartition(":")[0]
        if xds_tls is None and not is_loopback(xds_host):
            if not insecure_xds:
                raise PlaintextRefused(
                    f"plaintext xDS on non-loopback address {xds_host}: give --xds-tls-cert/--xds-tls-key "
                    "(and --xds-tls-client-ca for mTLS), or --insecure-xds on a trusted network")
            log.warning("serving xDS in PLAINTEXT on %s: any host that reaches it can read config and "
                        "access tokens; use --xds-tls-* outside a trusted network", xds_host)
        elif xds_tls is not None and not xds_tls.client_ca_file and not is_loopback(xds_host):
            # TLS alone authenticates the control plane, not the Envoys: anyone who connects would
            # be served config and access tokens, exactly as with plaintext.
            if not insecure_xds:
                raise PlaintextRefused(
                    f"xDS over TLS without --xds-tls-client-ca on non-loopback address {xds_host} authenticates "
                    "no Envoy: give --xds-tls-client-ca (mTLS), or --insecure-xds on a trusted network")
            log.warning("serving xDS over TLS WITHOUT client certificates on %s: any host that reaches it can "
                        "read config and access tokens", xds_host)
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
        self.limits = Limits().scaled(max_config_bytes) if max_config_bytes else Limits()
        # ConfigError: refuse to start on a file that `validate` would refuse (same steps)
        loaded = loading.load(self.config_path, self.limits)
        config = loaded.config
        self._seen_sha256: str | None = loaded.sha256
        self._reload_lock = asyncio.Lock()
        self.metrics = Metrics()
        self.clients = ClientRegistry()
        self.cache = loading.checked(str(self.config_path), "cannot build Envoy resources",
                                     lambda: SnapshotCache(config, builder))
        self.ads = AdsServer(self.cache, self.clients, self.metrics)
        self.cache.retire = self.ads.heap.retire
        self.fleet = FleetLoad(lambda: self.cache.config.observability.load_reports, self.metrics,
                               self.cache.set_avoided, lambda: list(self.cache.config.regions))
        self.tokens = TokenRefresher(_profiles(config), config.auth.refresh_margin, self.cache.set_tokens,
                                     self.metrics)
        self.last_reload: dict = {"time": _now(), "ok": True, "reason": "start", "version": config.version,
                                  "file_sha256": loaded.sha256, "errors": []}
        self._open_warning = open_listener_warning(config)
        if self._open_warning:
            log.warning("%s", self._open_warning)
        # What the config's TLS clusters cost each Envoy (trust_stores.py): worked out in a thread
        # after start and when xDS work goes quiet after a reload, not while a reload's pushes go out.
        self.trust_stores: dict | None = None
        self._trust_task: asyncio.Task | None = None
        self._trust_failed: str | None = None  # the config version whose estimate failed
        self.ads.heap.when_quiet(self._estimate_trust_stores)
        self.metrics.config_ok.set(1)
        self.metrics.describe_backends(config)
        self.xds_port = 0
        self.admin_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._admin: web.AppRunner | None = None
        self._watcher: asyncio.Task | None = None
        self._stop_watch = asyncio.Event()

    async def start(self) -> None:
        check_ports_free((self.xds_address, "--xds-port"), (self.admin_address, "--admin-port"))  # gRPC: SO_REUSEPORT
        self._grpc = grpc.aio.server(options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            # Envoy pings every 10 s (bootstrap keepalive); allow it.
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
        ])
        self._grpc.add_generic_rpc_handlers((self.ads.rpc_handler(), CsdsServer(self.clients).rpc_handler(),
                                             LoadReportServer(self.fleet, lambda: self.cache.config.observability
                                                              .load_reports).rpc_handler()))
        credentials = self.xds_tls.credentials() if self.xds_tls else None  # refuses unusable files first
        try:
            if credentials:
                self.xds_port = self._grpc.add_secure_port(self.xds_address, credentials)
            else:
                self.xds_port = self._grpc.add_insecure_port(self.xds_address)
        except RuntimeError:  # gRPC's "Failed to bind": e.g. an address this host does not have
            self.xds_port = 0
        if not self.xds_port:
            await self._grpc.stop(None)
            raise StartRefused(f"--xds-host/--xds-port: cannot bind {self.xds_address} (an address of this "
                               "host, and a port free here?)")
        await self._grpc.start()
        self._admin = web.AppRunner(admin_app(self), access_log=None)
        await self._admin.setup()
        host, _, port = self.admin_address.rpartition(":")
        site = web.TCPSite(self._admin, host.strip("[]"), int(port))
        try:
            await site.start()
        except OSError as exc:
            await self._grpc.stop(None)
            await self._admin.cleanup()
            raise StartRefused(f"--admin-host/--admin-port: cannot bind {self.admin_address}: "
                               f"{exc.strerror or exc}") from None
        self.admin_port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked
        if self.watch:
            self._watcher = asyncio.create_task(self._watch_file())
        self.tokens.start()
        self._estimate_trust_stores()
        log.info("serving xDS on %s:%d, admin on %s:%d, config %s version %s",
                 self.xds_address.rpartition(":")[0], self.xds_port, host, self.admin_port,
                 self.config_path, self.cache.config.version)

    async def stop(self) -> None:
        self._stop_watch.set()
        if self._trust_task:
            self._trust_task.cancel()
        if self._watcher:
            self._watcher.cancel()
        await self.tokens.stop()
        if self._grpc:
            await self._grpc.stop(grace=0.5)
        if self._admin:
            await self._admin.cleanup()

    async def reload(self, reason: str = "requested") -> bool:
        """Read, check, build and install the file's config; anything wrong leaves the running
        config in force and is recorded. Serialized: a SIGHUP and a file event never interleave,
        and each reads the file as it is when its turn comes."""
        async with self._reload_lock:
            try:
                with self.ads.heap.holding():
                    return await self._reload(reason)
            except Exception as exc:  # noqa: BLE001 - a reload must never stop later reloads
                log.exception("reload failed unexpectedly")
                return self._record_reload(reason, None, [f"{self.config_path}: internal error while reloading: "
                                                          f"{type(exc).__name__}: {exc}"])

    async def _reload(self, reason: str) -> bool:
        try:
            data = await asyncio.to_thread(loading.read_bytes, self.config_path)
        except ConfigError as exc:
            return self._record_reload(reason, _MISSING, [str(p) for p in exc.problems])
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._seen_sha256 and (self.last_reload["ok"] or reason == FILE_CHANGED):
            # The same bytes again (editors touch files, watchers fire twice): already applied, or
            # already reported. A SIGHUP retries a rejected file (a missing ca_file may be there now).
            return self.last_reload["ok"]
        try:
            # Parse and build off the event loop: xDS streams and /healthz keep being served.
            loaded = await asyncio.to_thread(loading.parse, data, self.config_path, self.limits)
            config = loaded.config
            if config.version != self.cache.config.version:  # else: comments or formatting only
                snapshots = await asyncio.to_thread(loading.checked, str(self.config_path),
                                                    "cannot build Envoy resources", lambda: self.cache.prepare(config))
                self.cache.apply(config, snapshots)
                self.tokens.update(_profiles(config), config.auth.refresh_margin)
                self._warn_if_open(config)
                self.metrics.describe_backends(config)
        except ConfigError as exc:
            return self._record_reload(reason, digest, [str(p) for p in exc.problems])
        return self._record_reload(reason, digest, [])

    def _estimate_trust_stores(self) -> None:
        """Estimate the trust stores of the config in force, if not done yet (in a thread), and
        log the warning when it changes."""
        config = self.cache.config
        if config.version in ((self.trust_stores or {}).get("version"), self._trust_failed) \
                or (self._trust_task and not self._trust_task.done()):
            return
        clusters = self.cache.region_clusters()  # of this config, taken together

        async def estimate() -> None:
            try:
                figures = await asyncio.to_thread(trust_stores.estimate, config, clusters)
            except Exception:  # noqa: BLE001 - an estimate for operators; never stops anything
                log.exception("estimating the Envoys' trust stores failed")
                self._trust_failed = config.version  # not again for this config
                return
            warning = trust_stores.warning(figures)
            if warning and warning != (self.trust_stores or {}).get("warning"):
                log.warning("%s", warning)
            self.trust_stores = {"version": config.version, "regions": figures, "warning": warning}
            if self.cache.config.version != config.version:  # a reload applied meanwhile: once this task is done
                asyncio.get_running_loop().call_soon(self._estimate_trust_stores)
        self._trust_task = asyncio.get_running_loop().create_task(estimate())

    def _warn_if_open(self, config: RegionConfig) -> None:
        warning = open_listener_warning(config)
        if warning and warning != self._open_warning:
            log.warning("%s", warning)
        self._open_warning = warning

    def _record_reload(self, reason: str, digest: str | None, errors: list[str]) -> bool:
        ok = not errors
        self._seen_sha256 = digest
        self.last_reload = {"time": _now(), "ok": ok, "reason": reason, "version": self.cache.config.version,
                            "file_sha256": digest if digest != _MISSING else None, "errors": errors}
        self.metrics.reloads.labels("ok" if ok else "failed").inc()
        self.metrics.config_ok.set(1 if ok else 0)
        if ok:
            log.info("config reloaded (%s): version %s", reason, self.cache.config.version)
        else:
            log.error("config rejected (%s), still serving version %s: %s", reason, self.cache.config.version,
                      " | ".join(errors))
        return ok

    async def _watch_file(self) -> None:
        """Reload on every change of the file, for as long as the process runs.

        The directory is watched as given, not the file's resolved target: editors replace
        the file, and a Kubernetes ConfigMap volume swaps its `..data` symlink to a new
        directory and deletes the old one, so anything resolved once goes stale. Each event
        re-reads through the path. A timeout without events re-checks the file as well (some
        filesystems send no events), and a failing watch is restarted."""
        directory = Path(os.path.abspath(self.config_path)).parent
        names = {self.config_path.name, "..data"}
        while not self._stop_watch.is_set():
            try:
                async for _changes in awatch(directory, stop_event=self._stop_watch, debounce=50, step=10,
                                             rust_timeout=WATCH_POLL_MS, yield_on_timeout=True, recursive=False,
                                             ignore_permission_denied=True,
                                             watch_filter=lambda _change, path: Path(path).name in names):
                    await self.reload(FILE_CHANGED)
            except Exception as exc:  # noqa: BLE001 - e.g. the directory itself went away
                log.warning("watching %s failed (%s); retrying", directory, exc)
                await self.reload(FILE_CHANGED)
                try:
                    await asyncio.wait_for(self._stop_watch.wait(), WATCH_POLL_MS / 1000)
                except asyncio.TimeoutError:
                    pass


def _profiles(config: RegionConfig) -> dict[str, Source]:
    """What the token refresher keeps fresh: access tokens per profile, custom backends' own credentials."""
    return {**{name: config.auth.profile(name) for name in config.profiles_in_use()},
            **{f"backend/{b}": _backend_source(config, b) for b in config.backends_in_use()}}


def _backend_source(config: RegionConfig, backend: str) -> Source:
    credential = config.backend_credential(backend)
    if credential.type == "id_token":
        return IdTokenSource(config.auth.profile(config.regions[backend].auth or DEFAULT_PROFILE),
                             config.audience_of(backend))
    return HeaderFileSource(credential.file or "", credential.header, credential.prefix)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
