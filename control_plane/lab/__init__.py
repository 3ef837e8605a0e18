"""The lab: what runs the gateway without Google, for the demo, the tests and the benchmarks.

A Vertex emulator that fails on command, a plain custom backend, a local OAuth token
endpoint, an Envoy process runner, and `python -m control_plane demo`. Nothing here is on
the production path: `serve` never imports it.
"""
