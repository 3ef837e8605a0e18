"""Refuse a listening port that another process already holds, naming the flag that moves it.

gRPC binds with SO_REUSEPORT, so a second control plane on the same xDS port starts without
an error and the kernel splits new Envoy connections between the two. A probe bind without
SO_REUSEPORT, just before the real bind, fails while anyone listens there.
"""

from __future__ import annotations

import errno
import socket


class PortInUse(OSError):
    """One line for the user: which address, which flag changes it."""


def check_free(address: str, flag: str) -> None:
    """Raise PortInUse if HOST:PORT cannot be bound (port 0 is always free)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return
    host = host.strip("[]") or None
    try:
        candidates = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # the real bind reports an unresolvable host in its own words
    for family, kind, proto, _name, sockaddr in candidates:
        with socket.socket(family, kind, proto) as probe:
            # SO_REUSEADDR (as every server sets): a port with only TIME_WAIT leftovers is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(f"{address} is already in use (another control plane or demo?): "
                                    f"stop it or choose another port with {flag}") from None
                # Anything else (no such address, no IPv6, a privileged port): the real bind reports it.


def check_ports_free(*addresses: tuple[str, str]) -> None:
    """check_free for each (HOST:PORT, flag)."""
    for address, flag in addresses:
        check_free(address, flag)
