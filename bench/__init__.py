"""Benchmarks that run the real stack (Envoy, control plane, Vertex emulators); see docs/BENCHMARKS.md."""
