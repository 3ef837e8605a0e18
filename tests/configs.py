"""Sample regions.yaml configs the test modules share, as text or as plain data to edit."""

from __future__ import annotations

import copy
from typing import Any

import yaml

# The smallest valid config: two regions failing over to each other, one default model.
BASE_YAML = """\
project: my-project
listener: {port: 8080}
regions:
  us-central1:
    address: 10.128.0.10
    failover: [us-east4]
  us-east4:
    address: 10.150.0.10
    failover: [us-central1]
models:
  housing:
    default: true
    endpoints:
      us-central1: "1234567890"
      us-east4: "9876543210"
"""


def base() -> dict[str, Any]:
    """A fresh, valid config as plain data, for a test to modify."""
    return copy.deepcopy(yaml.safe_load(BASE_YAML))


# Three regions of every kind (TLS, plain, HTTP/2, a hostname) and models of every strategy:
# what the resource-building tests (resources, clients, shapes, reuse, wire) build from.
CONFIG = """
project: p-123
listener: {port: 8080}
regions:
  us-central1:
    address: 10.128.0.10
    failover: [us-east4, europe-west4]
  us-east4:
    address: 10.150.0.10
    port: 8443
    host: vertex.east.internal
    http2: true
    failover: [us-central1]
  europe-west4:
    address: psc.europe.internal
    tls: false
    failover: [us-central1]
models:
  housing:
    default: true
    endpoints: {us-central1: "111", us-east4: "222", europe-west4: "333"}
  churn:
    endpoints: {us-east4: "444"}
  spread:
    strategy: weighted
    weights: {us-central1: 3, us-east4: 1, europe-west4: 0}
    endpoints: {us-central1: "555", us-east4: "666", europe-west4: "777"}
  gemini:
    publisher_model: google/gemini-2.0-flash
    regions: [us-central1, us-east4]
    strategy: least_request
"""

# A `clients:` section to append to CONFIG; JWKS stands for the path of a JWKS file.
CLIENTS = """
clients:
  jwt:
    google: {issuer: "https://accounts.google.com", audiences: ["https://gw.test"], claim: email}
    corp: {issuer: "https://idp.test", audiences: [gw], jwks_file: JWKS}
  allow:
    eu: {identities: [eu@corp.test], regions: [europe-west4]}
    spread-eu: {identities: [s@corp.test], models: [spread], regions: [us-east4]}
    ops: {identities: ["*"], models: [housing, gemini]}
"""

# Two regions on loopback, as data: what the `plane` fixture (conftest.py) serves, with credentials added.
TWO_REGIONS = {
    "project": "p-1",
    "listener": {"port": 8080},
    "regions": {
        "us-central1": {"address": "127.0.0.1", "port": 9001, "tls": False, "failover": ["us-east4"]},
        "us-east4": {"address": "127.0.0.2", "port": 9001, "tls": False, "failover": ["us-central1"]},
    },
    "models": {"housing": {"default": True, "endpoints": {"us-central1": "111", "us-east4": "222"}}},
}
