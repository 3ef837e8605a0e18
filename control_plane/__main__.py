"""python -m control_plane {serve,validate,bootstrap,discover,demo}"""

from __future__ import annotations

import gc

# A build allocates hundreds of thousands of small objects, few of them in cycles; at the
# default threshold (700) the cyclic collector rescans the whole live config over and over
# (measured: 0.9 s of a 3.1 s reload of 1,000 models x 5 regions). Collect far less often,
# from before the imports below (protobuf descriptors, pydantic models: 50 ms of `validate`).
GC_THRESHOLDS = (100_000, 20, 100)
if __name__ == "__main__":
    gc.set_threshold(*GC_THRESHOLDS)

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from .bootstrap import XdsTls, bootstrap, render  # noqa: E402
from .config import ConfigError  # noqa: E402
from .ports import PortInUse, check_ports_free  # noqa: E402
from .yamlsafe import MAX_BYTES, Limits  # noqa: E402


def _serve(args: argparse.Namespace) -> int:
    import asyncio  # here, not at the top: `validate` starts faster without it

    from .app import ControlPlane, PlaintextRefused, ServerTls, StartRefused

    if bool(args.xds_tls_cert) != bool(args.xds_tls_key):
        print("serve: --xds-tls-cert and --xds-tls-key go together", file=sys.stderr)
        return 2
    try:
        admin_token = _admin_token(args)
    except OSError as exc:
        print(f"refusing to start: --admin-token-file {args.admin_token_file}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1

    async def run() -> None:
        check_ports_free((f"{args.xds_host}:{args.xds_port}", "--xds-port"),
                         (f"{args.admin_host}:{args.admin_port}", "--admin-port"))
        plane = ControlPlane(args.config, xds_address=f"{args.xds_host}:{args.xds_port}",
                             admin_address=f"{args.admin_host}:{args.admin_port}",
                             xds_tls=ServerTls(args.xds_tls_cert, args.xds_tls_key, args.xds_tls_client_ca)
                             if args.xds_tls_cert else None,
                             insecure_xds=args.insecure_xds, admin_token=admin_token,
                             max_config_bytes=args.max_config_bytes)
        plane.ads.max_streams = args.max_streams
        await plane.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task] = set()  # referenced until done

        def on_hup() -> None:  # re-read the config and the credential files, refresh tokens now
            task = asyncio.ensure_future(plane.reload("SIGHUP"))
            reloads.add(task)
            task.add_done_callback(reloads.discard)
            plane.tokens.refresh_now(reload_credentials=True)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        await stop.wait()
        await plane.stop()

    try:
        asyncio.run(run())
    except (PlaintextRefused, PortInUse, StartRefused) as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"refusing to start: {len(exc.problems)} problem(s) in the config:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    return 0


def _admin_token(args: argparse.Namespace) -> str | None:
    if args.admin_token_file:
        return Path(args.admin_token_file).read_text().strip() or None
    return os.environ.get("VERTEX_GATEWAY_ADMIN_TOKEN") or None


def _validate(args: argparse.Namespace) -> int:
    from . import loading, trust_stores
    from .build_check import build_every_region

    limits = Limits().scaled(args.max_config_bytes) if args.max_config_bytes else Limits()
    try:  # exactly what `serve` does with the file at start and on every reload
        config = loading.load(Path(args.config), limits).config
        trust = build_every_region(args.config, config,
                                   then=lambda cache: trust_stores.estimate(config, cache.region_clusters()))
    except ConfigError as exc:
        print(f"{args.config}: {len(exc.problems)} problem(s):")
        for problem in exc.problems:
            print(f"  {problem}")
        return 1
    endpoints = sum(len(m.endpoints) or len(m.regions) for m in config.models.values())
    custom = len(config.regions) - len(config.vertex_regions)
    print(f"{args.config}: OK: project {config.project}, {len(config.vertex_regions)} region(s), "
          + (f"{custom} custom backend(s), " if custom else "") +
          f"{len(config.models)} model(s), {endpoints} regional endpoint(s), "
          f"default model {config.default_model}, version {config.version}",
          file=sys.stderr if args.json else sys.stdout)  # --json: stdout is the JSON document alone
    warning = trust_stores.warning(trust)
    if warning:
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    if args.online:  # the Vertex API: every endpoint id exists and has a deployed model (the `vertex` extra)
        from .discover import validate_online_command

        if validate_online_command(args.config, config, api_endpoint=args.api_endpoint,
                                   out=sys.stderr if args.json else sys.stdout):
            return 1
    if args.show or args.against or args.json:
        from .dryrun import show

        return show(args.config, config, against=args.against, as_json=args.json)
    return 0


def _bootstrap(args: argparse.Namespace) -> int:
    tls_files = (args.xds_tls_ca, args.xds_tls_cert, args.xds_tls_key)
    if any(tls_files) and not all(tls_files):
        print("bootstrap: --xds-tls-ca, --xds-tls-cert and --xds-tls-key go together", file=sys.stderr)
        return 2
    xds_tls = XdsTls(*tls_files, server_name=args.xds_tls_server_name) if all(tls_files) else None
    try:
        config = bootstrap(args.region, args.xds_address, node_id=args.node_id, listen=args.listen,
                           admin_address=args.admin_address, delta=args.delta, xds_tls=xds_tls,
                           lazy_cluster_stats=args.lazy_cluster_stats,
                           stats_listen=args.stats_listen)
    except ValueError as exc:
        print(f"bootstrap: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render(config))
    return 0


def _discover(args: argparse.Namespace) -> int:
    from .discover import discover_command

    return discover_command(args)


def _demo(args: argparse.Namespace) -> int:
    from .lab.demo import run_demo

    try:
        return run_demo(args)
    except PortInUse as exc:
        print(f"demo: refusing to start: {exc}", file=sys.stderr)
        return 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of bytes, got {text!r}")
    return value


def _loopback_prefix(text: str) -> str:
    """127.N.N: the demo binds its control plane, emulators and Envoys to addresses under it."""
    parts = text.split(".")
    if len(parts) != 3 or parts[0] != "127" or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise argparse.ArgumentTypeError(f"expected 127.N.N (a /24 of the loopback range), got {text!r}")
    return text


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m control_plane",
                                  description="xDS control plane for a multi-region Vertex AI gateway on Envoy")
    top.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = top.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve xDS to Envoys, watch the config file")
    serve.add_argument("--config", required=True, help="regions.yaml")
    serve.add_argument("--xds-port", type=int, default=18000)
    serve.add_argument("--xds-host", default="127.0.0.1", help="address to bind the xDS port (default loopback)")
    serve.add_argument("--admin-port", type=int, default=18001)
    serve.add_argument("--admin-host", default="127.0.0.1", help="address to bind the admin port")
    serve.add_argument("--xds-tls-cert", metavar="FILE", help="serve xDS over TLS with this certificate")
    serve.add_argument("--xds-tls-key", metavar="FILE")
    serve.add_argument("--xds-tls-client-ca", metavar="FILE",
                       help="require Envoy client certificates signed by this CA (mTLS)")
    serve.add_argument("--admin-token-file", metavar="FILE",
                       help="bearer token the admin endpoints require (needed when not on loopback); "
                            "or set VERTEX_GATEWAY_ADMIN_TOKEN")
    serve.add_argument("--insecure-xds", action="store_true",
                       help="allow plaintext xDS, or TLS without --xds-tls-client-ca, on a non-loopback "
                            "address (logs a warning)")
    serve.add_argument("--max-config-bytes", type=_positive_int, metavar="N",
                       help=f"refuse a config file larger than this (default {MAX_BYTES:,})")
    serve.add_argument("--max-streams", type=_positive_int, metavar="N",
                       help="serve at most N xDS streams (Envoys) on this replica; more are refused with "
                            "RESOURCE_EXHAUSTED and retry, reaching another replica (default: no cap)")
    serve.set_defaults(func=_serve)

    validate = sub.add_parser("validate", help="check a regions.yaml; exit 1 listing every problem")
    validate.add_argument("config")
    validate.add_argument("--show", action="store_true",
                          help="also print what would be pushed per region: resources and versions, "
                               "failover chains, upstream paths")
    validate.add_argument("--against", metavar="OLDFILE",
                          help="with --show (implied): only what changes from OLDFILE, per region")
    validate.add_argument("--json", action="store_true", help="with --show (implied): as JSON on stdout")
    validate.add_argument("--online", action="store_true",
                          help="also ask the Vertex AI API that every endpoint id exists in its region and has a "
                               "deployed model (needs the vertex extra and the config's credentials)")
    validate.add_argument("--api-endpoint", metavar="URL",
                          help="with --online: Vertex API root, {region} substituted "
                               "(default https://{region}-aiplatform.googleapis.com)")
    validate.add_argument("--max-config-bytes", type=_positive_int, metavar="N",
                          help=f"refuse a config file larger than this (default {MAX_BYTES:,})")
    validate.set_defaults(func=_validate)

    boot = sub.add_parser("bootstrap", help="print the Envoy bootstrap for one Envoy")
    boot.add_argument("--region", required=True)
    boot.add_argument("--xds-address", required=True, metavar="HOST:PORT")
    boot.add_argument("--node-id", help="default envoy-REGION")
    boot.add_argument("--listen", metavar="HOST:PORT", help="client listener for this Envoy (default from config)")
    boot.add_argument("--admin-address", default="127.0.0.1:9901", metavar="HOST:PORT")
    boot.add_argument("--delta", action="store_true", help="use Delta xDS (DELTA_GRPC)")
    boot.add_argument("--lazy-cluster-stats", action="store_true",
                      help="make a cluster's traffic stats when first used (large configs: less memory, "
                           "applied faster; a cluster never used has no upstream_rq_*/upstream_cx_* series)")
    boot.add_argument("--stats-listen", metavar="HOST:PORT",
                      help="serve only GET /stats/prometheus here, for scraping (admin stays on loopback)")
    boot.add_argument("--xds-tls-ca", metavar="FILE", help="mTLS to the control plane: CA of its certificate")
    boot.add_argument("--xds-tls-cert", metavar="FILE", help="this Envoy's client certificate")
    boot.add_argument("--xds-tls-key", metavar="FILE", help="this Envoy's client key")
    boot.add_argument("--xds-tls-server-name", metavar="NAME",
                      help="name in the control plane's certificate (default: the --xds-address host)")
    boot.set_defaults(func=_bootstrap)

    discover = sub.add_parser("discover", help="list Vertex endpoints in regions; print or merge a models: section")
    discover.add_argument("--project", help="Vertex project id or number (default: the --write file's project)")
    discover.add_argument("--region", action="append", metavar="REGION",
                          help="a region to list (repeat, or comma-separate; default: the --write file's regions)")
    discover.add_argument("--display-name", metavar="NAME", help="only endpoints with exactly this display name")
    discover.add_argument("--write", metavar="FILE",
                          help="merge the models into this regions.yaml (comments and order kept; every region "
                               "must already be defined there)")
    discover.add_argument("--api-endpoint", metavar="URL",
                          help="Vertex API root, {region} is substituted (default https://{region}-aiplatform.googleapis.com)")
    discover.add_argument("--credentials", default="adc", metavar="adc|service_account:PATH",
                          help="Google credentials for the API calls (default adc)")
    discover.set_defaults(func=_discover)

    demo = sub.add_parser("demo", help="run control plane, Envoys and Vertex emulators locally")
    demo.add_argument("--config", help="regions.yaml for the demo (default: the shipped demo config)")
    demo.add_argument("--loopback-prefix", type=_loopback_prefix, default="127.0.0", metavar="127.0.N",
                      help="bind the demo under this /24 of the loopback range (default 127.0.0)")
    demo.add_argument("--xds-port", type=int, default=18000)
    demo.add_argument("--admin-port", type=int, default=18001)
    demo.add_argument("--keep-config", metavar="PATH",
                      help="on exit, write the demo's regions.yaml as last edited to PATH (without the demo's "
                           "own auth: section), for a later `demo --config PATH`")
    demo.set_defaults(func=_demo)
    return top


def main(argv: list[str] | None = None) -> int:
    gc.set_threshold(*GC_THRESHOLDS)
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every file event at INFO
    code = args.func(args)
    if argv is None and args.func is _validate:  # a process of its own (the command line)
        # It holds every region's built resources: leave without freeing them one object at a
        # time (0.1 s of `validate` at 1,000 models x 5 regions).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
