"""`python -m control_plane.lab.emulator`: one region's emulator as a process (docker-compose)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl

from .server import VertexEmulator

log = logging.getLogger("control_plane.lab.emulator")  # not __name__: one logger for the emulator


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _endpoint(value: str) -> tuple[str, str]:
    endpoint_id, sep, model = value.partition("=")
    if not sep or not endpoint_id or not model:
        raise argparse.ArgumentTypeError(f"expected ID=MODEL, got {value!r}")
    return endpoint_id, model


async def _serve(args: argparse.Namespace, ssl_context: ssl.SSLContext | None) -> None:
    (host, port), control = args.listen, args.control
    emulator = VertexEmulator(args.region, args.project, dict(args.endpoint),
                              [m for group in args.publisher_model for m in group], host, port,
                              None if control is None else control[1], ssl_context,
                              None if control is None else control[0])
    await emulator.start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    log.info("emulator %s serving %s (control %s)", args.region, emulator.url,
             emulator.control_url if control is not None else "disabled")
    await stop.wait()
    await emulator.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m control_plane.lab.emulator",
                                     description="Local Vertex AI emulator for one region.")
    parser.add_argument("--region", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--endpoint", type=_endpoint, action="append", default=[], metavar="ID=MODEL")
    parser.add_argument("--publisher-model", nargs="+", action="append", default=[], metavar="PUBLISHER/MODEL")
    parser.add_argument("--listen", type=_host_port, default=("127.0.0.1", 0), metavar="HOST:PORT")
    parser.add_argument("--control", type=_host_port, default=None, metavar="HOST:PORT")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    ssl_context = None
    if args.tls_cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            parser.error(f"cannot load --tls-cert/--tls-key: {exc}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(args, ssl_context))

