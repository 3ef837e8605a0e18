"""The `fake-oauth` service of docker-compose.yml's `emulators` profile (local try-out only).

Serves control_plane.lab.fake_oauth.FakeTokenServer (POST /token: a made-up access token per
JWT-bearer grant) and writes a throwaway service-account key whose token_uri points at it,
into the volume the control plane reads. google-auth's real service-account flow then runs
unchanged against it, as in `python -m control_plane demo`. Never use it with real Vertex.

    python fake_oauth.py --listen 0.0.0.0:8090 --token-uri http://fake-oauth:8090/token \
        --key-file /var/lib/vertex-gateway/demo/demo-service-account.json
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from control_plane.lab.fake_oauth import FakeTokenServer, write_service_account_key

log = logging.getLogger("fake-oauth")


async def serve(args: argparse.Namespace) -> None:
    host, _, port = args.listen.rpartition(":")
    server = FakeTokenServer(host=host or "0.0.0.0", port=int(port), expires_in=args.expires_in)
    await server.start()
    key = Path(args.key_file)
    key.parent.mkdir(parents=True, exist_ok=True)
    tmp = key.with_suffix(".tmp")
    write_service_account_key(tmp, args.token_uri)
    tmp.chmod(0o644)  # a throwaway key: readable whatever uid the control plane runs as
    tmp.replace(key)  # atomic: the control plane never reads half a file
    log.info("token endpoint on %s:%d; key %s (token_uri %s)", server.host, server.port, key, args.token_uri)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="0.0.0.0:8090", metavar="HOST:PORT")
    parser.add_argument("--token-uri", required=True, help="how the control plane reaches this server")
    parser.add_argument("--key-file", required=True, help="where to write the service-account key")
    parser.add_argument("--expires-in", type=int, default=3600, help="token lifetime, seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
