"""The lab: what runs the gateway without Google, for the demo, the tests and the benchmarks.

A Vertex emulator that fails on command, a plain custom backend, a local OAuth token
endpoint, an Envoy process runner, and `python -m control_plane demo`; and what the tests
and the benchmarks both build on: a whole gateway on 127.0.0.1 (`stack`), a control plane
on a loop thread and waiting with deadlines (`harness`), a ConfigMap-like directory
(`configmap`), a load generator (`loadgen`) and a JWT issuer (`jwt_issuer`). Nothing here
is on the production path: `serve` never imports it.
"""
