"""Envoy's walk through the xDS types on a scripted ADS client (control_plane.lab.ads_client),
for the tests that run a whole control plane (tests/test_server.py, tests/test_csds.py)."""

from __future__ import annotations

from control_plane.lab.ads_client import AdsClient
from control_plane.xds_types import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE

from .xds_fakes import cluster_names


async def sync(client: AdsClient) -> dict:
    """Walk the protocol as Envoy does: clusters, their endpoints, listener, routes; ACK each."""
    got = {}
    client.send(CLUSTER_TYPE)
    got[CLUSTER_TYPE] = await client.recv()
    client.ack(got[CLUSTER_TYPE])
    eds_names = [n for n in cluster_names(got[CLUSTER_TYPE]) if "@" in n]
    client.send(ENDPOINT_TYPE, eds_names)
    got[ENDPOINT_TYPE] = await client.recv()
    client.ack(got[ENDPOINT_TYPE], eds_names)
    client.send(LISTENER_TYPE)
    got[LISTENER_TYPE] = await client.recv()
    client.ack(got[LISTENER_TYPE])
    client.send(ROUTE_TYPE, ["vertex"])
    got[ROUTE_TYPE] = await client.recv()
    client.ack(got[ROUTE_TYPE], ["vertex"])
    return got
